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

# --- guest side ------------------------------------------------------------------
shift
out=$1; shift
ip=${RXE_VM_IP%/*}
cd /tmp
mkdir -p /dev/shm/ab-src /dev/shm/ab-root
head -c 16M /dev/urandom > /dev/shm/ab-part
for _ in $(seq 16); do cat /dev/shm/ab-part; done > /dev/shm/ab-src/big.bin
rm -f /dev/shm/ab-part
# the first touch of guest RAM is slow under TCG: touch and free it before measuring
head -c 640M /dev/zero > /dev/shm/ab-warm && rm -f /dev/shm/ab-warm

ib() {  # PORT [FLAGS...]: one ib_write_bw 4 MiB x 64 on rxe0, prints MiB/s
  local port=$1 srv; shift
  timeout 120 ib_write_bw -d rxe0 -F -p "$port" -s 4194304 -n 64 "$@" > /dev/null 2>&1 &
  srv=$!
  sleep 1
  timeout 120 ib_write_bw -d rxe0 -F -p "$port" -s 4194304 -n 64 "$@" "$ip" 2>&1 \
    | awk -v f="$*" '/^ *4194304/ { printf "ib_write_bw %-6s %.1f MiB/s\n", f, $4 / 1.048576 }' \
    || echo "ib_write_bw $* failed (reference only)"
  wait "$srv" || true
}

ib 18601
ib 18602 -q 2
IFS=: read -r _ daemon_bin _ <<< "$1"
RUST_LOG=info NO_COLOR=1 "$daemon_bin" daemon --root /dev/shm/ab-root --listen "$ip:9031" \
  > "$out/daemon.log" 2>&1 &
dpid=$!
until ss -Hltn "sport = :9031" | grep -q .; do
  kill -0 "$dpid" 2>/dev/null || { echo "blit daemon exited:"; tail "$out/daemon.log"; exit 1; }
  sleep 0.1
done
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
ib 18603
ib 18604 -q 2
kill "$dpid" 2>/dev/null; wait "$dpid" 2>/dev/null || true
exit "$rc"
