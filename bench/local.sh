#!/usr/bin/env bash
# Local copy benchmark (issue: foundation): blit xfer against cp -a, tar | tar and rsync -a,
# measured in one run on tmpfs. Prints a Markdown table (median of --repeat runs, with wall
# time, CPU time and peak RSS from /usr/bin/time) and writes raw rows to $OUT/local.csv.
#
# usage: bench/local.sh [--repeat N] [--dir DIR] [--million] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=3; BASE=/dev/shm/blit-bench; MILLION=0; KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT=$2; shift 2 ;;
    --dir) BASE=$2; shift 2 ;;
    --million) MILLION=1; shift ;;
    --keep) KEEP=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/bench-out}; mkdir -p "$OUT" "$BASE"
BLIT=${BLIT:-$PWD/target/release/blit}
[ -x "$BLIT" ] || cargo build --release --locked -p blitx-cli
command -v rsync >/dev/null || { echo "rsync missing (apt-get install rsync)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time missing (apt-get install time)" >&2; exit 1; }
CSV=$OUT/local.csv
echo "dataset,tool,run,wall_s,user_s,sys_s,maxrss_kb" > "$CSV"

gen() { # name, generator args...
  local name=$1; shift
  if [ ! -e "$BASE/$name/.done" ]; then
    rm -rf "${BASE:?}/$name"; mkdir -p "$BASE/$name"
    python3 bench/gen.py "$1" "$BASE/$name" "${@:2}"
    touch "$BASE/$name/.done"
  fi
}
gen large large $((2 << 30))
gen small small 100000 100 4096
gen mixed mixed 1000 1024 $((64 << 20)) 3
[ "$MILLION" = 1 ] && gen million small 1000000 1000 1024

# measure DATASET TOOL RUN COMMAND...: runs COMMAND under /usr/bin/time, appends a CSV row.
measure() {
  local ds=$1 tool=$2 run=$3; shift 3
  local tf; tf=$(mktemp)
  /usr/bin/time -f "%e,%U,%S,%M" -o "$tf" "$@" >/dev/null 2>"$OUT/last-stderr" || {
    echo "FAILED: $tool on $ds:" >&2; cat "$OUT/last-stderr" >&2; rm -f "$tf"; return 1; }
  echo "$ds,$tool,$run,$(tail -1 "$tf")" >> "$CSV"
  rm -f "$tf"
}

T=$BASE/target
one_round() { # dataset run
  local ds=$1 run=$2 src=$BASE/$1
  rm -rf "$T"; mkdir -p "$T"; measure "$ds" "cp -a" "$run" cp -a "$src/." "$T/"
  rm -rf "$T"; mkdir -p "$T"; measure "$ds" "tar|tar" "$run" sh -c "tar -C '$src' -cf - . | tar -C '$T' -xf -"
  rm -rf "$T"; measure "$ds" "rsync -a" "$run" rsync -a "$src/" "$T/"
  rm -rf "$T"; measure "$ds" "blit" "$run" "$BLIT" xfer --no-progress "$src" "$T"
}
noop_round() { # dataset run: re-runs against an up-to-date target
  local ds=$1 run=$2 src=$BASE/$1
  measure "$ds-noop" "rsync -a" "$run" rsync -a "$src/" "$T/"
  measure "$ds-noop" "blit" "$run" "$BLIT" xfer --no-progress "$src" "$T"
}

for run in $(seq 1 "$REPEAT"); do
  for ds in large small mixed; do one_round "$ds" "$run"; done
  rm -rf "$T"; "$BLIT" xfer --no-progress "$BASE/small" "$T" 2>/dev/null
  noop_round small "$run"
  if [ "$MILLION" = 1 ]; then
    rm -rf "$T"; measure million blit "$run" "$BLIT" xfer --no-progress "$BASE/million" "$T"
  fi
done
rm -rf "$T"
[ "$KEEP" = 1 ] || true

python3 bench/table.py "$CSV"
