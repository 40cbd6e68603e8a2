#!/usr/bin/env bash
# Loopback figures for the TCP transport next to iperf3 (see docs in src/lib.rs and the
# crate's examples/tcp_bench.rs). Needs ~4 GiB free in /dev/shm and iperf3 installed.
#
#   transport-tcp/scripts/bench.sh [RUNS]
#
# Prints one line per configuration: median and best of RUNS runs, GB/s (1e9 bytes/s) and
# CPU seconds per GB (user+system of both ends together, from getrusage / time(1)).
set -euo pipefail
RUNS=${1:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-tcp}
DIR=/dev/shm/tcp-bench
SRC=$DIR/src.bin
mkdir -p "$DIR"
[ -s "$SRC" ] || head -c 2147483648 /dev/urandom > "$SRC"
cargo build --release -q --manifest-path "$ROOT/Cargo.toml" -p blitx-transport-tcp --example tcp_bench
B=$CARGO_TARGET_DIR/release/examples/tcp_bench
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

echo "## transport alone (discard), payload buffer (readers pread + xxh3) vs file (sendfile)"
for chunk in 1 4; do
  for streams in 1 2 4; do
    for payload in buffer file; do
      $B transport "$SRC" --streams $streams --chunk-mib $chunk --payload $payload --sink discard --runs "$RUNS" | tail -1
    done
  done
done

echo "## transport only: pool buffers sent as they are (no file read, no hash), discard"
for chunk in 1 4; do
  for streams in 1 2 4; do
    $B transport "$SRC" --streams $streams --chunk-mib $chunk --source mem --sink discard --runs "$RUNS" | tail -1
  done
done

echo "## full receive path: verify checksums, and verify + pwrite into /dev/shm"
for sink in verify shm; do
  for payload in buffer file; do
    $B transport "$SRC" --streams 2 --chunk-mib 4 --payload $payload --sink $sink --runs "$RUNS" | tail -1
  done
done

echo "## receive: pooled buffers + pwrite vs splice socket->pipe->file (sendfile sender)"
for mode in pooled pooled-verify splice; do
  for streams in 1 2; do
    $B receive "$SRC" --streams $streams --chunk-mib 4 --mode $mode --runs "$RUNS" | tail -1
  done
done

echo "## iperf3 on the same loopback (2 GiB, both processes' CPU)"
iperf() {
  local label=$1; shift
  local best=""
  for _ in $(seq "$RUNS"); do
    local port=$((20000 + RANDOM % 20000))
    # timeout: a client that fails to start must not leave the one-shot server waiting forever.
    timeout 60 /usr/bin/time -f "%U %S" -o "$DIR/server.time" iperf3 -s -1 -p $port >/dev/null 2>&1 &
    local spid=$!
    sleep 0.3
    local start=$(date +%s.%N)
    timeout 60 /usr/bin/time -f "%U %S" -o "$DIR/client.time" iperf3 -c 127.0.0.1 -p $port -n 2G "$@" >/dev/null
    local end=$(date +%s.%N)
    wait $spid
    local line
    line=$(awk -v s="$start" -v e="$end" -v c="$(cat "$DIR/client.time")" -v v="$(cat "$DIR/server.time")" 'BEGIN {
      split(c, a, " "); split(v, b, " "); gb = 2147483648 / 1e9; cpu = a[1] + a[2] + b[1] + b[2];
      printf "%.2f GB/s %.3f CPU-s/GB", gb / (e - s), cpu / gb }')
    echo "  run: $line"
    best="$best$line"$'\n'
  done
  echo "$label: $(printf '%s' "$best" | sort -t' ' -k1 -n -r | head -1) (best of $RUNS)"
}
iperf "iperf3 (write)"
iperf "iperf3 -Z (sendfile)" -Z
iperf "iperf3 -l 1M" -l 1M
iperf "iperf3 -Z -l 1M" -Z -l 1M
