#!/usr/bin/env bash
# Mutation check of the simulator. Each mutant breaks one rule of the session core
# (blitx_session: the target's per-file fate, the source's verdict on each file it reads, the
# target's planning: hard links, --mirror deletions; resuming: journals, offers, Same frames,
# the read-back check); the
# simulator must catch every one within the CI seed budget — a simulator that passes a broken
# session proves nothing. Every mutated file is restored on exit, whatever happens. Built in
# the dev profile (opt-level 1, what the test stage already built): a mutant rebuilds two
# crates in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${SIM_SEEDS:-200000}
sim=${CARGO_TARGET_DIR:-target}/debug/blit-sim
saved=$(mktemp -d)
files=(session/src/target.rs session/src/source.rs session/src/plan.rs session/src/resume.rs)
for f in "${files[@]}"; do cp "$f" "$saved/${f//\//_}"; done
restore() { for f in "${files[@]}"; do cp "$saved/${f//\//_}" "$f"; done; }
trap 'restore; rm -rf "$saved"' EXIT

# file | what a session with the mutant does | perl substitution applied to the whole file
# (-0: multi-line)
mutants=(
  # blitx_session::target::Receiving: when a file is committed, what a failed file reports
  'session/src/target.rs|commits a file with a missing chunk|s/ \|\| !f\.chunks\.is_complete\(\)//'
  'session/src/target.rs|commits while a write into the file still runs|s/ \|\| f\.writing_now > 0 \{/ {/'
  'session/src/target.rs|keeps the temporary file of a file that failed its checksum|s/(Written::Mismatch => \{\n\s*f\.phase = Phase::Failed;\n)\s*steps\.push\(Step::Discard \{ id: h\.file_id, shell: f\.shell\.clone\(\) \}\);\n/$1/'
  'session/src/target.rs|reopens a file whose checksum failed when the source vouches for it|s/(if let Some\(offset_bytes\) = f\.mismatch\.take\(\) \{\n)/$1            f.phase = Phase::Open;\n/'
  # blitx_session::source::Reading: the source's verdict on each chunked file it reads
  'session/src/source.rs|vouches for a file one of whose reads failed|s/if let Some\(e\) = f\.failure\.take\(\) \{/if let Some(e) = f.failure.take().filter(|_| false) {/'
  'session/src/source.rs|vouches for a file without looking at it again|s/f\.stage = Stage::Checking;\n(\s*)steps\.push\(Step::Check\(id\)\);/self.files.remove(&id);\n$1steps.push(Step::Read(id));/'
  'session/src/source.rs|compares only the size of a file read against its listing|s/now\.size_bytes != listed\.size_bytes \|\| now\.mtime != listed\.mtime/now.size_bytes != listed.size_bytes/'
  # blitx_session::plan::Planning: the target's planning (hard links, --mirror deletions)
  'session/src/plan.rs|deletes, under --mirror, names the source still lists|s/scan\.source_names\.contains\(n\)/false/; s/self\.source_names\.contains\(name\)/false/'
  'session/src/plan.rs|makes a hard link to a leader that was not committed|s/if matches!\(l, Leader::Needed\(id\) if not_done\.contains\(id\)\) \{/if false {/'
  'session/src/plan.rs|deletes, under --mirror, after a session with errors|s/if failures > 0 \{/if failures > 0 \&\& false {/'
  # blitx_session::target and ::resume: resuming interrupted files
  'session/src/target.rs|admits a Same frame whatever hash it carries|s/\.is_ok_and\(\|at\| r\.offered\[at\]\.1 == h\.checksum\)/.is_ok()/'
  'session/src/target.rs|commits a resumed file without reading it back|s/let verify = f\.resumed\.as_mut\(\)\.map\(\|r\| std::mem::take\(\&mut r\.hashes\)\);/let verify = f.resumed.as_mut().map(|_| Vec::new()).filter(|_| false);/'
  'session/src/target.rs|keeps the partial file of a file it gave up (a checksum failure)|s/\&\& f\.phase == Phase::Open\n(\s*)\&\& f\.writing_now == 0;/\&\& f.writing_now == 0;/'
  'session/src/resume.rs|accepts offers past the end of the file (the source)|s/if i < next \|\| i >= total \{/if i < next || (i >= total \&\& false) {/'
  'session/src/resume.rs|takes over a partial file whose source changed behind the same size|s/if self\.size_bytes != size_bytes \|\| self\.mtime != mtime \{/if self.size_bytes != size_bytes || (self.mtime != mtime \&\& false) {/'
  'session/src/plan.rs|forgets the names of a listing'"'"'s earlier parts (and deletes them under --mirror)|s/if self\.mirror \{\n(\s*)open\.source_names/if self.mirror \&\& last_part {\n$1open.source_names/'
)

failed=0
for m in "${mutants[@]}"; do
  file=${m%%|*}
  rest=${m#*|}
  name=${rest%%|*}
  expr=${rest#*|}
  restore
  perl -0pi -e "$expr" "$file"
  if cmp -s "$saved/${file//\//_}" "$file"; then
    echo "sim-mutants: the mutant '$name' did not apply (the code changed): update ci/sim-mutants.sh" >&2
    failed=1
    continue
  fi
  cargo build --locked -q -p blitx-sim
  if out=$("$sim" --seeds "$seeds" 2>&1); then
    echo "sim-mutants: NOT CAUGHT in $seeds seeds: a session that $name ($file)" >&2
    failed=1
  else
    echo "sim-mutants: caught a session that $name ($file): $(echo "$out" | head -1)"
  fi
done
restore
cargo build --locked -q -p blitx-sim
exit $failed
