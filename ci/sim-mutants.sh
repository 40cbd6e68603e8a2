#!/usr/bin/env bash
# Mutation check of the simulator. Each mutant breaks one rule of blitx_session::target (the
# code that decides when a file is committed and what a failed file reports); the simulator
# must catch every one within the CI seed budget — a simulator that passes a broken session
# proves nothing. The file is restored on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
file=session/src/target.rs
seeds=${SIM_SEEDS:-200000}
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
  if out=$("${CARGO_TARGET_DIR:-target}"/release/blit-sim --seeds "$seeds" 2>&1); then
    echo "sim-mutants: NOT CAUGHT in $seeds seeds: a session that $name" >&2
    failed=1
  else
    echo "sim-mutants: caught a session that $name: $(echo "$out" | head -1)"
  fi
done
# Mutants of blitx_session::plan (the target's planning: hard links, --mirror deletions).
plan_file=session/src/plan.rs
plan_backup=$(mktemp)
cp "$plan_file" "$plan_backup"
trap 'cp "$backup" "$file"; cp "$plan_backup" "$plan_file"; rm -f "$backup" "$plan_backup"' EXIT
cp "$backup" "$file"
plan_mutants=(
  'deletes, under --mirror, names the source still lists|s/scan\.source_names\.contains\(n\)/false/; s/self\.source_names\.contains\(name\)/false/'
  'makes a hard link to a leader that was not committed|s/if matches!\(l, Leader::Needed\(id\) if not_done\.contains\(id\)\) \{/if false {/'
  'deletes, under --mirror, after a session with errors|s/if failures > 0 \{/if failures > 0 \&\& false {/'
  'forgets the names of a listing'"'"'s earlier parts (and deletes them under --mirror)|s/if self\.mirror \{\n(\s*)open\.source_names/if self.mirror \&\& last_part {\n$1open.source_names/'
)
for m in "${plan_mutants[@]}"; do
  name=${m%%|*}
  expr=${m#*|}
  cp "$plan_backup" "$plan_file"
  perl -0pi -e "$expr" "$plan_file"
  if cmp -s "$plan_backup" "$plan_file"; then
    echo "sim-mutants: the mutant '$name' did not apply (the code changed): update ci/sim-mutants.sh" >&2
    failed=1
    continue
  fi
  cargo build --release --locked -q -p blitx-sim
  if out=$("${CARGO_TARGET_DIR:-target}"/release/blit-sim --seeds "$seeds" 2>&1); then
    echo "sim-mutants: NOT CAUGHT in $seeds seeds: a planner that $name" >&2
    failed=1
  else
    echo "sim-mutants: caught a planner that $name: $(echo "$out" | head -1)"
  fi
done
cp "$plan_backup" "$plan_file"

cp "$backup" "$file"
cargo build --release --locked -q -p blitx-sim
exit $failed
