#!/usr/bin/env bash
# rdma-ab.sh: interleaved A/B runs of blit builds over Soft-RoCE in one VM boot.
#
# Boots one throw-away VM (ci/rxe/rxe-vm, rxe0 loopback, 2 GiB) and in it: makes a
# 256 MiB file of random data on /dev/shm, runs ib_write_bw -s 4194304 -n 64 (with
# -q 1 and -q 2), starts one `blit daemon` (the first variant's binary), pushes the
# file once per variant per round (ROUNDS, default 3), alternating the variants,
# checks every copy with cmp, and runs ib_write_bw again at the end. Prints MiB/s
# of each run (whole session, from --json). One boot compares builds or flags
# under the same lab conditions; the lab moves ±10% between boots.
#
# usage: bench/rdma-ab.sh OUTDIR LABEL=BINARY[:XFER ARGS] ...
#   e.g. bench/rdma-ab.sh /tmp/ab old=/tmp/blit-old new=target/release/blit \
#          "new-1qp=target/release/blit:--qps 1"
#   OUTDIR gets each run's --json and log and the daemon's log. Binaries are
#   copied into OUTDIR first, so a rebuild during the run does not matter.
# Environment: ROUNDS (default 3), XFER_LOG (RUST_LOG of the clients, default
# info), RXE_VM_TIMEOUT (default here 600) and the other variables of ci/rxe/rxe-vm.
set -euo pipefail

if [ "${1:-}" != --guest ]; then
  [ $# -ge 2 ] || { sed -n '2,19p' "$0" >&2; exit 2; }
  HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
  out=$(mkdir -p "$1" && cd "$1" && pwd -P); shift
  specs=()
  for v in "$@"; do
    label=${v%%=*} rest=${v#*=}
    bin=${rest%%:*} args=; [ "$rest" != "$bin" ] && args=${rest#*:}
    [[ "$label" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "bad label '$label' in '$v'" >&2; exit 2; }
    [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
    cp "$bin" "$out/blit-$label"
    specs+=("$label:$out/blit-$label:$args")
  done
  RXE_VM_TIMEOUT=${RXE_VM_TIMEOUT:-600} exec "$HERE/../ci/rxe/rxe-vm" --mem 2048 --share "$out" -- \
    "$HERE/rdma-ab.sh" --guest "$out" "${specs[@]}"
fi

# --- guest side (helpers: ci/rxe/guest-bench.sh) ------------------------------------
shift
out=$1; shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=../ci/rxe/guest-bench.sh
. "$HERE/../ci/rxe/guest-bench.sh"
ip=${RXE_VM_IP%/*}
cd /tmp
bench_file /dev/shm/ab-src/big.bin

ib() {  # NAME PORT [FLAGS...]: one ib_write_bw 4 MiB x 64 on rxe0, prints MiB/s
  local name=$1 log=$out/ib_write_bw-$1.txt; shift
  if perftest_cpu 4194304 64 "$log" "$@" > /dev/null; then
    awk -v f="${*:2}" '$1 ~ /^[0-9]+$/ && NF >= 4 { printf "ib_write_bw %-6s %.1f MiB/s\n", f, $4 / 1.048576; exit }' "$log"
  else
    echo "ib_write_bw ${*:2} failed (reference only; see $log)"
  fi
}

ib before 18600
ib before-q2 18610 -q 2
IFS=: read -r _ daemon_bin _ <<< "$1"
blit_daemon_start "$daemon_bin" /dev/shm/ab-root "$ip:9031" "$out/daemon.log" || exit 1
rc=0
for r in $(seq "${ROUNDS:-3}"); do
  for spec in "$@"; do
    IFS=: read -r label bin args <<< "$spec"
    rm -rf /dev/shm/ab-root/d
    # shellcheck disable=SC2086  # args are words on purpose
    if ! RUST_LOG=${XFER_LOG:-info} NO_COLOR=1 "$bin" xfer /dev/shm/ab-src "blit://$ip:9031/d" \
        --json --no-progress $args > "$out/$label.$r.json" 2> "$out/$label.$r.log"; then
      echo "$label round $r: blit xfer failed"; tail -3 "$out/$label.$r.log"; rc=1; continue
    fi
    cmp -s /dev/shm/ab-src/big.bin /dev/shm/ab-root/d/big.bin || { echo "$label round $r: the copy differs"; rc=1; }
    awk -v l="$label" -v r="$r" -F'[:,]' '/"bytes"/ { b = $2 } /"seconds"/ { s = $2 }
      END { printf "%-12s round %d  %.1f MiB/s (%.3f s)\n", l, r, b / 1048576 / s, s }' "$out/$label.$r.json"
  done
done
ib after 18620
ib after-q2 18630 -q 2
kill "$DPID" 2>/dev/null; wait "$DPID" 2>/dev/null || true
exit "$rc"
