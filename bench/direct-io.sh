#!/usr/bin/env bash
# Direct vs buffered file I/O on a disk file system (issue 16, item 4), next to dd oflag=direct.
#
# usage: bench/direct-io.sh BLIT [SIZE_MIB [ROUNDS [DIR]]]
#   SIZE_MIB  file size (default 8192: 8 GiB)        ROUNDS  ABBA rounds (default 3)
#   DIR       a directory on the disk under test (default /var/tmp/blit-dio; not tmpfs)
#
# The source file lives on /dev/shm (memory) so the disk only writes. Each round runs, in ABBA
# order: fio (4 MiB direct writes through io_uring, 16 in flight: the disk's limit), dd
# (if=the source, oflag=direct, bs=4M: one request in flight), blit local copy --io direct and --io buffered,
# and a push to a loopback daemon whose root is on DIR with --io direct and --io buffered. Before
# each run: sync and drop the page cache (root). For each run it prints:
#   wall     seconds until the command returned
#   durable  seconds until the data was on the disk (the command, then `sync`)
#   cpu      CPU seconds of the processes (client + daemon; dd itself) per GB written
#   sys_cpu  CPU seconds of the whole machine per GB (kernel writeback and io_uring workers
#            included: the buffered path's page-cache flush runs in kworkers, not in blit)
#   cached   MiB of the written file in the page cache afterwards (fincore)
# Quote medians; never run it while anything else heavy runs (docs/benchmarking.md).
set -euo pipefail
B=$1; MIB=${2:-8192}; ROUNDS=${3:-3}; DIR=${4:-/var/tmp/blit-dio}
port=${PORT:-9417}
[ "$(stat -f -c %T "$(dirname "$DIR")")" != tmpfs ] || { echo "DIR must be on a disk" >&2; exit 2; }
mkdir -p "$DIR/export"
src=/dev/shm/blit-dio-src
mkdir -p "$src"
if [ "$(stat -c %s "$src/big" 2>/dev/null || echo 0)" != $((MIB << 20)) ]; then
  head -c $((MIB << 20)) /dev/urandom > "$src/big"
fi
"$B" daemon --listen 127.0.0.1:$port --root "$DIR/export" >/dev/null 2>&1 &
dp=$!
trap 'kill $dp 2>/dev/null; rm -rf "$DIR"' EXIT
sleep 0.5
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }      # utime + stime of a process
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }  # user nice system irq softirq
gb=$(echo "$MIB * 1048576 / 1000000000" | bc -l)

one() {  # LABEL OUTFILE CMD...
  local label=$1 out=$2; shift 2
  rm -rf "$DIR/export/p" "$DIR/local" "$DIR/dd.out" "$DIR/fio.out"
  sync; echo 3 > /proc/sys/vm/drop_caches
  local d0 b0 t0 t1 t2 b1 d1 tf
  tf=$(mktemp)
  d0=$(ticks $dp); b0=$(busy); t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$tf" "$@" >/dev/null 2>&1
  t1=$(date +%s.%N); sync; t2=$(date +%s.%N)
  b1=$(busy); d1=$(ticks $dp)
  local own; own=$(awk '{print $1 + $2}' "$tf"); rm -f "$tf"
  local cached; cached=$(fincore --bytes --noheadings --raw --output RES "$out" | awk '{print $1 / 1048576}')
  printf '%-16s wall %6.2f s  durable %6.2f s  %5.2f GB/s durable  cpu %5.3f s/GB  sys_cpu %5.3f s/GB  cached %6.0f MiB\n' \
    "$label" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t0" | bc)" "$(echo "$gb / ($t2 - $t0)" | bc -l)" \
    "$(echo "($own + ($d1 - $d0) / $hz) / $gb" | bc -l)" "$(echo "($b1 - $b0) / $hz / $gb" | bc -l)" "$cached"
}

FIO=(fio --name=w --filename="$DIR/fio.out" --rw=write --bs=4M --size=${MIB}M --direct=1
     --ioengine=io_uring --iodepth=16)
run_all() {
  one fio "$DIR/fio.out" "${FIO[@]}"
  one dd "$DIR/dd.out" dd if="$src/big" of="$DIR/dd.out" bs=4M oflag=direct
  one local-direct "$DIR/local/big" "$B" xfer "$src" "$DIR/local" --no-progress --io direct
  one local-buffered "$DIR/local/big" "$B" xfer "$src" "$DIR/local" --no-progress --io buffered
  one push-direct "$DIR/export/p/big" "$B" xfer "$src" "blit://127.0.0.1:$port/p" --no-progress --io direct
  one push-buffered "$DIR/export/p/big" "$B" xfer "$src" "blit://127.0.0.1:$port/p" --no-progress --io buffered
}
run_rev() {
  one push-buffered "$DIR/export/p/big" "$B" xfer "$src" "blit://127.0.0.1:$port/p" --no-progress --io buffered
  one push-direct "$DIR/export/p/big" "$B" xfer "$src" "blit://127.0.0.1:$port/p" --no-progress --io direct
  one local-buffered "$DIR/local/big" "$B" xfer "$src" "$DIR/local" --no-progress --io buffered
  one local-direct "$DIR/local/big" "$B" xfer "$src" "$DIR/local" --no-progress --io direct
  one dd "$DIR/dd.out" dd if="$src/big" of="$DIR/dd.out" bs=4M oflag=direct
  one fio "$DIR/fio.out" "${FIO[@]}"
}
for r in $(seq "$ROUNDS"); do
  echo "# round $r"
  if [ $((r % 2)) = 1 ]; then run_all; else run_rev; fi
done
