#!/usr/bin/env bash
# Mutation check of the simulator. Each mutant breaks one rule of blitx_session::target (the
# code that decides when a file is committed and what a failed file reports); the simulator
# must catch every one within the CI seed budget — a simulator that passes a broken session
# proves nothing. The file is restored on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
file=session/src/target.rs
seeds=${SIM_SEEDS:-200000}
sim=${CARGO_TARGET_DIR:-target}/release/blit-sim
backup=$(mktemp)
cp "$file" "$backup"
trap 'cp "$backup" "$file"; rm -f "$backup"' EXIT

# name | perl substitution applied to the whole file (-0: multi-line)
mutants=(
  'commits a file with a missing chunk|s/ \|\| !f\.chunks\.is_complete\(\)//'
  'commits while a write into the file still runs|s/ \|\| f\.writing_now > 0 \{/ {/'
  'keeps the temporary file of a file that failed its checksum|s/(Written::Mismatch => \{\n\s*f\.phase = Phase::Failed;\n)\s*steps\.push\(Step::Discard \{ id: h\.file_id, shell: f\.shell\.clone\(\) \}\);\n/$1/'
  'reopens a file whose checksum failed when the source vouches for it|s/(if let Some\(offset_bytes\) = f\.mismatch\.take\(\) \{\n)/$1            f.phase = Phase::Open;\n/'
)

failed=0
for m in "${mutants[@]}"; do
  name=${m%%|*}
  expr=${m#*|}
  cp "$backup" "$file"
  perl -0pi -e "$expr" "$file"
  if cmp -s "$backup" "$file"; then
    echo "sim-mutants: the mutant '$name' did not apply (the code changed): update ci/sim-mutants.sh" >&2
    failed=1
    continue
  fi
  cargo build --release --locked -q -p blitx-sim
  if out=$("$sim" --seeds "$seeds" 2>&1); then
    echo "sim-mutants: NOT CAUGHT in $seeds seeds: a session that $name" >&2
    failed=1
  else
    echo "sim-mutants: caught a session that $name: $(echo "$out" | head -1)"
  fi
done
cp "$backup" "$file"

# Mutants of blitx_session::source::Reading (the source's verdict on each chunked file it
# reads); the same rule: the simulator must catch every one.
source_file=session/src/source.rs
source_backup=$(mktemp)
cp "$source_file" "$source_backup"
trap 'cp "$backup" "$file"; cp "$source_backup" "$source_file"; rm -f "$backup" "$source_backup"' EXIT
source_mutants=(
  'vouches for a file one of whose reads failed|s/if let Some\(e\) = f\.failure\.take\(\) \{/if let Some(e) = f.failure.take().filter(|_| false) {/'
  'vouches for a file without looking at it again|s/f\.stage = Stage::Checking;\n(\s*)steps\.push\(Step::Check\(id\)\);/self.files.remove(&id);\n$1steps.push(Step::Read(id));/'
  'compares only the size of a file read against its listing|s/now\.size_bytes != listed\.size_bytes \|\| now\.mtime != listed\.mtime/now.size_bytes != listed.size_bytes/'
)
for m in "${source_mutants[@]}"; do
  name=${m%%|*}
  expr=${m#*|}
  cp "$source_backup" "$source_file"
  perl -0pi -e "$expr" "$source_file"
  if cmp -s "$source_backup" "$source_file"; then
    echo "sim-mutants: the mutant '$name' did not apply (the code changed): update ci/sim-mutants.sh" >&2
    failed=1
    continue
  fi
  cargo build --release --locked -q -p blitx-sim
  if out=$("$sim" --seeds "$seeds" 2>&1); then
    echo "sim-mutants: NOT CAUGHT in $seeds seeds: a source that $name" >&2
    failed=1
  else
    echo "sim-mutants: caught a source that $name: $(echo "$out" | head -1)"
  fi
done
cp "$source_backup" "$source_file"
cargo build --release --locked -q -p blitx-sim
exit $failed
