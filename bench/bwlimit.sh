#!/usr/bin/env bash
# --bwlimit accuracy: one ~2.2 GB file (11 s at 200 MB/s) copied with --bwlimit RATE in process
# (local), pushed and pulled over loopback TCP (buffers and --tcp-zero-copy), and two sessions
# at once against a daemon capped with `blit daemon --bwlimit RATE`. Prints the achieved rate
# next to the requested one. RATE is decimal: 200M = 200,000,000 bytes/s = 200 MB/s, the unit
# --json's throughput_bytes_per_sec is compared in. The issue's bar: within 5 % (190-210 MB/s).
#
# usage: bench/bwlimit.sh [--rate 200M] [--repeat 3] [--dir /dev/shm/blit-bwlimit]
# Needs python3; BLIT defaults to $CARGO_TARGET_DIR/release/blit (or target/release/blit).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=200M; REPEAT=3; BASE=/dev/shm/blit-bwlimit
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --dir) BASE=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
BLIT=${BLIT:-${CARGO_TARGET_DIR:-$PWD/target}/release/blit}
[ -x "$BLIT" ] || { echo "no $BLIT (cargo build --release -p blitx-cli)" >&2; exit 1; }
# The requested rate in bytes/s, parsed like blit does for the plain decimal units.
WANT=$(python3 -c '
import sys, re
m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", sys.argv[1])
if not m: sys.exit("use a decimal rate like 200M for this script")
print(int(float(m[1]) * 10 ** (3 * " KMGT".index(m[2] or " "))))' "$RATE")
SIZE_MB=${SIZE_MB:-$((WANT * 11 / 1000000))} # about 11 s of the rate
mkdir -p "$BASE/src" "$BASE/export"
if [ "$(stat -c %s "$BASE/src/big.bin" 2>/dev/null || echo 0)" != "$((SIZE_MB * 1000000))" ]; then
  head -c "$((SIZE_MB * 1000000))" /dev/urandom > "$BASE/src/big.bin"
fi
DAEMON_PID=""
cleanup() { [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null; rm -rf "${BASE:?}/export" "${BASE:?}"/dst*; }
trap cleanup EXIT
start_daemon() {
  local log=$BASE/daemon.log
  "$BLIT" daemon --root "$BASE/export" --listen 127.0.0.1:0 "$@" 2> "$log" &
  DAEMON_PID=$!
  for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
  ADDR=$(sed -n 's/^blit daemon listening on //p' "$log")
}
stop_daemon() { kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=""; }
report() { # label, bytes, seconds
  python3 -c '
import sys
label, b, s, want = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
got = b / s
print(f"{label:<34} {b/1e6:9.0f} MB {s:7.2f} s {got/1e6:8.1f} MB/s  requested {want/1e6:.1f} MB/s  {100*(got/want-1):+5.1f} %")
' "$1" "$2" "$3" "$WANT"
}
one() { # label, source, target, flags...
  local label=$1 src=$2 dst=$3; shift 3
  local j; j=$("$BLIT" xfer "$src" "$dst" --no-progress --json --bwlimit "$RATE" "$@")
  report "$label" "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_moved"])' <<<"$j")" \
    "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])' <<<"$j")"
}
echo "blit --bwlimit $RATE ($WANT bytes/s), ${SIZE_MB} MB file, $REPEAT runs each"
for r in $(seq "$REPEAT"); do
  rm -rf "$BASE/dst"; one "local (in process) run $r" "$BASE/src" "$BASE/dst"
done
rm -rf "$BASE/dst"
start_daemon
for zc in "" --tcp-zero-copy; do
  for r in $(seq "$REPEAT"); do
    rm -rf "$BASE/export/p"; one "push tcp ${zc:-buffers} run $r" "$BASE/src" "blit://$ADDR/p" $zc
    rm -rf "$BASE/dst"; one "pull tcp ${zc:-buffers} run $r" "blit://$ADDR/p" "$BASE/dst" $zc
  done
done
stop_daemon
rm -rf "$BASE/dst" "$BASE/export/p"
# The daemon's cap, two sessions at once, no client limit: total bytes over the wall time from
# the first start to the last end. Each session moves half the file (a second source of half
# the size) so the pair lasts about as long as one limited run.
mkdir -p "$BASE/half"
[ -e "$BASE/half/half.bin" ] || head -c "$((SIZE_MB * 500000))" "$BASE/src/big.bin" > "$BASE/half/half.bin"
start_daemon --bwlimit "$RATE"
pair() { # label, then two "source target" pairs
  local label=$1 t0 t1 bytes
  t0=$(date +%s.%N)
  "$BLIT" xfer "$2" "$3" --no-progress --json > "$BASE/a.json" &
  local a=$!
  "$BLIT" xfer "$4" "$5" --no-progress --json > "$BASE/b.json"
  wait "$a"
  t1=$(date +%s.%N)
  bytes=$(python3 -c 'import json,sys; print(sum(json.load(open(f))["bytes_moved"] for f in sys.argv[1:]))' "$BASE/a.json" "$BASE/b.json")
  report "$label" "$bytes" "$(python3 -c "print($t1 - $t0)")"
}
for r in $(seq "$REPEAT"); do
  rm -rf "$BASE/export/a" "$BASE/export/b"
  pair "daemon cap: 2 pushes run $r" "$BASE/half" "blit://$ADDR/a" "$BASE/half" "blit://$ADDR/b"
  rm -rf "$BASE/dsta" "$BASE/dstb"
  pair "daemon cap: 2 pulls run $r" "blit://$ADDR/a" "$BASE/dsta" "blit://$ADDR/b" "$BASE/dstb"
done
