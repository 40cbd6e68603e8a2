#!/usr/bin/env bash
# numa-stage.sh: the NUMA placement CI stage. Boots one qemu guest with two NUMA nodes
# (ci/rxe/rxe-vm --cpus 4 --numa 2 --mem 2048: CPUs 0-1 and 1 GiB on node 0, CPUs 2-3 and
# 1 GiB on node 1) and checks, while blit moves data, that every worker thread sits on ONE CPU
# of the chosen node and every buffer pool's pages are on that node (docs/numa.md).
#
#   1. host: build blit (release) if the binary is missing.
#   2. guest: `blit daemon --numa node=1` on 10.77.0.1 (rxe0 available, so the daemon also
#      registers its shared RDMA ring at start), then with `--threads 2 --streams 2`:
#        tcp-push   client --numa node=1 pushes a 128 MiB file over TCP
#        tcp-pull   ... and pulls it back
#        rdma-push  the same push over RDMA (Soft-RoCE rxe0)
#        off-push   client and a second daemon with --numa off (the negative control: nothing
#                   may be pinned to one CPU, no pool bound)
#      The TCP transfers run with `tc qdisc add dev lo root netem rate 200mbit` so that they last
#      a few seconds whatever the machine. Both processes log at debug for blitx_topology: each
#      worker reports "pinned worker role=... tid=... cpu=..." from inside the thread, each pool
#      "bound buffer pool ... addr=0x...". Mid-transfer (once both sides reported their
#      workers) the guest samples /proc/PID/task/*/{comm,status} (Cpus_allowed_list) and
#      /proc/PID/numa_maps of both processes, and checks:
#        - every worker blit reported is in the sample with Cpus_allowed_list = its one CPU,
#          and that CPU is on node 1 (2 or 3); the expected workers of each side are there
#          (readers/writers 2 each, TCP streams 2 each, the RDMA poller/credit/sender);
#        - every thread whose name says worker (blit-reader, blit-writer, blit-tcp-*, rdma-recv-*,
#          rdma-send-*) is on one CPU of node 1, the thread that started them on node 1's CPUs;
#        - each pool mapping reported bound has policy prefer:1 (hwloc Bind = MPOL_PREFERRED or
#          PREFERRED_MANY) and all its resident pages on N1 (N1=.. and no N0=..);
#        - the daemon's RDMA ring (registered at start, before any session) likewise;
#        - with --numa off: no thread on a single CPU, no pool bound, policy default.
#      Every copy is compared with the source (cmp).
#   3. host: prints the evidence (thread table and numa_maps lines) and the checks.
#
# usage: ci/numa-stage.sh [--out DIR]
#   --out DIR   logs and evidence (default: <target dir>/numa-stage); shared with the guest
# Environment: BLIT (default <target dir>/release/blit; built when missing), RXE_VM_TIMEOUT
# (default here 240 s), NUMA_STEP_TIMEOUT (per transfer, default 60 s), NUMA_FILE_MIB (128).
# Exit status: 0 all checks passed; 1 a check failed; 3 build; 5 the VM did not boot or the
# guest script did not finish; 124 RXE_VM_TIMEOUT.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/.." && pwd -P)
SELF=$HERE/numa-stage.sh
log() { echo "[numa-stage] $*" >&2; }
die() { local rc=$1; shift; echo "[numa-stage] error: $*" >&2; exit "$rc"; }

# ---------------------------------------------------------------------------
# guest side
# ---------------------------------------------------------------------------
NODE=1
g_init() {
  set +e -u -o pipefail
  OUT=$NUMA_OUT BLIT=$NUMA_BLIT STEP=$NUMA_STEP_TIMEOUT
  RES=$OUT/checks.txt EVID=$OUT/evidence.txt
  : > "$RES"; : > "$EVID"
  W=/tmp/numa; mkdir -p "$W/src" "$W/root" "$W/root-off" "$W/pulled"
  NODE_CPUS=$(cat /sys/devices/system/node/node$NODE/cpulist 2>/dev/null)
  FAILS=0
}
check() {  # NAME ok|FAIL [DETAIL...]
  echo "CHECK $*" >> "$RES"
  echo "$1: $2${3:+ (${*:3})}"
  [ "$2" = ok ] || FAILS=$((FAILS + 1))
}
ev() { echo "$*" >> "$EVID"; }

# in_node CPU: is CPU in node 1's cpulist (a range list such as 2-3)?
in_node() {
  local c=$1 part lo hi
  for part in ${NODE_CPUS//,/ }; do
    lo=${part%-*} hi=${part#*-}
    [ "$c" -ge "$lo" ] && [ "$c" -le "$hi" ] && return 0
  done
  return 1
}

# sample NAME PID: one line per thread "tid comm cpus" and the numa_maps. One awk over every
# thread's status file: a fork per thread takes long enough under TCG for threads to end
# while they are being sampled.
sample() {
  local name=$1 pid=$2
  awk '/^Name:/ { n = $2 } /^Pid:/ { p = $2 } /^Cpus_allowed_list:/ { print p, n, $2 }' \
    /proc/"$pid"/task/*/status > "$W/$name.threads" 2>/dev/null
  cat /proc/"$pid"/numa_maps > "$W/$name.numa_maps" 2>/dev/null
}

# wait_pinned LOG N: until LOG has N "pinned worker" lines (or the step times out)
wait_pinned() {
  local logf=$1 n=$2 i
  for ((i = 0; i < STEP * 10; i++)); do
    [ "$(grep -c 'pinned worker' "$logf" 2>/dev/null)" -ge "$n" ] && return 0
    sleep 0.1
  done
  return 1
}

# verify_side NAME LOG POOL-LOG EXPECTED_ROLES...: workers reported in LOG against the sample,
# then the pools POOL-LOG reported bound (a daemon's whole log: its RDMA ring predates sessions)
verify_side() {
  local name=$1 logf=$2 pool_log=$3; shift 3
  local threads=$W/$name.threads maps=$W/$name.numa_maps bad= role tid cpu line seen
  ev "== $name: what blit reported"
  grep -h 'placement:\|pinned worker\|bound buffer pool' "$logf" | sed 's/^[^ ]*Z */   /' >> "$EVID"
  ev "== $name: threads sampled mid-transfer (tid comm Cpus_allowed_list)"
  while read -r line; do ev "   $line"; done < "$threads"
  # 1. what blit reported, against /proc (a file, not <(...): the guest has no /dev/fd)
  local reported=$W/$name.reported checked=0
  sed -n 's/.*pinned worker role="\([a-z-]*\)" tid=\([0-9]*\) cpu=\([0-9]*\).*/\1 \2 \3/p' "$logf" > "$reported"
  while read -r role tid cpu; do
    checked=$((checked + 1))
    seen=$(awk -v t="$tid" '$1 == t { print $3 }' "$threads")
    if [ "$seen" != "$cpu" ]; then bad+=" $role/$tid: reported CPU $cpu, /proc says '${seen:-gone}';"
    elif ! in_node "$cpu"; then bad+=" $role/$tid on CPU $cpu, not node $NODE;"; fi
  done < "$reported"
  [ "$checked" = "$(grep -c 'pinned worker' "$logf")" ] || bad+=" only $checked pinned-worker lines parsed;"
  for role in "$@"; do
    local want=${role#*=} r=${role%=*} got
    got=$(grep -c "pinned worker role=\"$r\"" "$logf")
    [ "$got" -ge "$want" ] || bad+=" $got $r workers reported, want $want;"
  done
  # 2. every thread named as a worker is on one CPU of the node
  while read -r tid comm cpus; do
    case "$comm" in
      blit-reader|blit-writer|blit-tcp-*|rdma-recv-*|rdma-send-*)
        if [[ ! "$cpus" =~ ^[0-9]+$ ]] || ! in_node "$cpus"; then bad+=" thread $tid $comm on CPUs $cpus;"; fi ;;
    esac
  done < "$threads"
  [ -z "$bad" ] && check "$name-threads" ok "$(grep -c 'pinned worker' "$logf") workers on one CPU of node $NODE ($NODE_CPUS)" \
                || check "$name-threads" FAIL "$bad"
  # 3. pools
  verify_pools "$name" "$pool_log" "$maps" "pool"
}

# verify_pools NAME LOG MAPS WHAT: every "bound buffer pool" mapping of LOG still mapped in MAPS
# must prefer node 1 and hold its resident pages there
verify_pools() {
  local name=$1 logf=$2 maps=$3 what=$4 addr line bad= n=0
  ev "== $name: numa_maps of the bound pools"
  # unique: a later session's pool may be mapped where an earlier one was
  for addr in $(sed -n 's/.*bound buffer pool.*addr=0x\([0-9a-f]*\).*/\1/p' "$logf" | sort -u); do
    line=$(grep "^$addr " "$maps") || continue    # an earlier session's pool, unmapped by now
    n=$((n + 1))
    ev "   $line"
    [[ "$line" =~ \ prefer(\ \(many\))?:$NODE\  ]] || bad+=" $addr: policy is not prefer:$NODE;"
    [[ "$line" =~ \ N$NODE=[0-9]+ ]] || bad+=" $addr: no pages on N$NODE;"
    [[ "$line" =~ \ N[02-9]=[0-9]+ ]] && bad+=" $addr: pages on another node;"
  done
  [ "$n" -gt 0 ] || bad+=" no bound $what mapping found in numa_maps;"
  [ -z "$bad" ] && check "$name-$what" ok "$n mapping(s): prefer:$NODE, pages on N$NODE only" \
                || check "$name-$what" FAIL "$bad"
}

# transfer NAME SOURCE TARGET EXPECTED-CLIENT-WORKERS EXPECTED-DAEMON-WORKERS [XFER ARGS...]
transfer() {
  local name=$1 src=$2 dst=$3 cw=$4 dw=$5; shift 5
  local clog=$W/$name.client.log dcount cpid dog
  dcount=$(grep -c 'pinned worker' "$W/daemon.log")
  RUST_LOG=info,blitx_topology=debug "$BLIT" xfer --no-progress --threads 2 \
    --streams 2 "$@" "$src" "$dst" > "$clog" 2>&1 &
  cpid=$!   # blit itself (not a `timeout` wrapper): its /proc is what is sampled
  (sleep "$STEP"; kill "$cpid" 2>/dev/null) & dog=$!
  # both sides reported their workers; give the data a moment to touch the pools
  if ! wait_pinned "$clog" "$cw" || ! wait_pinned "$W/daemon.log" $((dcount + dw)); then
    check "$name-started" FAIL "workers not reported in ${STEP}s (log: $clog)"
  fi
  sleep 0.5
  sample "$name-client" "$cpid"
  sample "$name-daemon" "$DPID"
  # the daemon's log lines of this session only
  tail -n +"$(( $(grep -n "session opened" "$W/daemon.log" | tail -1 | cut -d: -f1) ))" \
    "$W/daemon.log" > "$W/$name.daemon.log"
  wait "$cpid"; local rc=$?
  kill "$dog" 2>/dev/null; wait "$dog" 2>/dev/null
  [ "$rc" = 0 ] && check "$name-xfer" ok || { check "$name-xfer" FAIL "exit $rc"; tail -5 "$clog"; }
}

g_main() {
  g_init
  echo "guest: $(nproc) CPUs; node0 $(cat /sys/devices/system/node/node0/cpulist), node1 $NODE_CPUS"
  if [ "$NODE_CPUS" = 2-3 ]; then check guest-nodes ok "node 1 = CPUs 2-3"
  else check guest-nodes FAIL "node 1 CPUs '$NODE_CPUS'"; fi
  local mib=${NUMA_FILE_MIB:-128}
  head -c 1M /dev/urandom > "$W/chunk"
  for ((i = 0; i < mib; i++)); do cat "$W/chunk"; done > "$W/src/big"
  echo small > "$W/src/small"

  RUST_LOG=info,blitx_topology=debug "$BLIT" daemon --root "$W/root" --listen "$RXE_VM_IP:9031" \
    --threads 2 --numa node=$NODE > "$W/daemon.log" 2>&1 &
  DPID=$!
  for ((i = 0; i < 300; i++)); do grep -q "listening on" "$W/daemon.log" && break; sleep 0.1; done
  grep -q "listening on" "$W/daemon.log" || { check daemon FAIL "not listening"; tail "$W/daemon.log"; return; }
  # The shared RDMA ring is registered before any session: bound to node 1 already.
  sample daemon-idle "$DPID"
  grep -h "RDMA ring placement\|registered ahead" "$W/daemon.log" | sed 's/^/  daemon: /'
  verify_pools daemon-idle "$W/daemon.log" "$W/daemon-idle.numa_maps" rdma-ring

  modprobe sch_netem && tc qdisc add dev lo root netem rate 200mbit \
    || check netem FAIL "cannot rate-limit lo; the TCP transfers may end before they are sampled"
  local url=blit://$RXE_VM_IP:9031
  transfer tcp-push "$W/src/" "$url/tcp" 4 4 --numa node=$NODE --transport tcp
  verify_side tcp-push-client "$W/tcp-push.client.log" "$W/tcp-push.client.log" reader=2 tcp-send=2
  verify_side tcp-push-daemon "$W/tcp-push.daemon.log" "$W/daemon.log" writer=2 tcp-recv=2
  cmp "$W/src/big" "$W/root/tcp/big" && check tcp-push-copy ok || check tcp-push-copy FAIL "differs"

  transfer tcp-pull "$url/tcp" "$W/pulled" 4 4 --numa node=$NODE --transport tcp
  verify_side tcp-pull-client "$W/tcp-pull.client.log" "$W/tcp-pull.client.log" writer=2 tcp-recv=2
  verify_side tcp-pull-daemon "$W/tcp-pull.daemon.log" "$W/daemon.log" reader=2 tcp-send=2
  cmp "$W/src/big" "$W/pulled/big" && check tcp-pull-copy ok || check tcp-pull-copy FAIL "differs"
  tc qdisc del dev lo root 2>/dev/null

  transfer rdma-push "$W/src/" "$url/rdma" 3 4 --numa node=$NODE --transport rdma
  verify_side rdma-push-client "$W/rdma-push.client.log" "$W/rdma-push.client.log" reader=2 rdma-send=1
  verify_side rdma-push-daemon "$W/rdma-push.daemon.log" "$W/daemon.log" writer=2 rdma-recv=1 rdma-credit=1
  cmp "$W/src/big" "$W/root/rdma/big" && check rdma-push-copy ok || check rdma-push-copy FAIL "differs"
  kill "$DPID"; wait "$DPID" 2>/dev/null

  # The negative control: --numa off on both sides pins and binds nothing.
  RUST_LOG=info,blitx_topology=debug "$BLIT" daemon --root "$W/root-off" --listen "$RXE_VM_IP:9032" \
    --threads 2 --numa off --no-rdma > "$W/daemon.log" 2>&1 &
  DPID=$!
  for ((i = 0; i < 300; i++)); do grep -q "listening on" "$W/daemon.log" && break; sleep 0.1; done
  modprobe sch_netem && tc qdisc add dev lo root netem rate 200mbit
  RUST_LOG=info,blitx_topology=debug "$BLIT" xfer --no-progress --threads 2 \
    --streams 2 --numa off --transport tcp "$W/src/" "blit://$RXE_VM_IP:9032/off" > "$W/off.client.log" 2>&1 &
  local cpid=$! single= dog
  (sleep "$STEP"; kill "$cpid" 2>/dev/null) & dog=$!
  # no worker reports itself under --numa off: wait for both sides' workers to exist
  for ((i = 0; i < STEP * 10; i++)); do
    grep -q blit-reader /proc/"$cpid"/task/*/comm 2>/dev/null \
      && grep -q blit-writer /proc/"$DPID"/task/*/comm 2>/dev/null && break
    sleep 0.1
  done
  sleep 0.5
  sample off-client "$cpid"; sample off-daemon "$DPID"
  wait "$cpid"; local rc=$?
  kill "$dog" 2>/dev/null; wait "$dog" 2>/dev/null
  tc qdisc del dev lo root 2>/dev/null
  kill "$DPID"; wait "$DPID" 2>/dev/null
  ev "== off: threads (tid comm Cpus_allowed_list)"
  cat "$W/off-client.threads" "$W/off-daemon.threads" | sed 's/^/   /' >> "$EVID"
  single=$(awk '$3 ~ /^[0-9]+$/ { printf " %s/%s", $2, $3 }' "$W/off-client.threads" "$W/off-daemon.threads")
  local workers
  workers=$(grep -c 'blit-reader\|blit-writer\|blit-tcp' "$W/off-client.threads" "$W/off-daemon.threads" | awk -F: '{ s += $2 } END { print s }')
  if [ "$rc" = 0 ] && [ -z "$single" ] && [ "$workers" -ge 4 ] \
     && ! grep -q 'pinned worker\|bound buffer pool' "$W/off.client.log" "$W/daemon.log"; then
    check off ok "$workers workers sampled, none on a single CPU, no pool bound"
  else
    check off FAIL "rc $rc; single-CPU threads:${single:- none}; $workers workers sampled"
  fi
  cp "$W"/*.log "$OUT/logs/" 2>/dev/null
  echo "DONE $FAILS" >> "$RES"
}

if [ "${1:-}" = --guest ]; then
  g_main
  exit 0
fi

# ---------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------
OUT=
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    *) die 2 "usage: ci/numa-stage.sh [--out DIR]" ;;
  esac
done
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$TARGET_DIR/numa-stage}
rm -rf "$OUT"; mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd -P)
BLIT=${BLIT:-$TARGET_DIR/release/blit}
if [ ! -x "$BLIT" ]; then
  log "building blit (release): cargo build --release -p blitx-cli"
  (cd "$ROOT" && timeout "${NUMA_BUILD_TIMEOUT:-1800}" cargo build --release -p blitx-cli) \
    > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log" >&2; die 3 "cargo build failed (log: $OUT/build.log)"; }
fi
BLIT=$(cd "$(dirname "$BLIT")" && pwd -P)/$(basename "$BLIT")

start=$(date +%s)
set +e
NUMA_OUT=$OUT NUMA_BLIT=$BLIT NUMA_STEP_TIMEOUT=${NUMA_STEP_TIMEOUT:-60} \
  RXE_VM_TIMEOUT=${RXE_VM_TIMEOUT:-240} \
  "$HERE/rxe/rxe-vm" --cpus 4 --numa 2 --mem 2048 --share "$OUT" -- bash "$SELF" --guest \
  2>&1 | tee "$OUT/guest.log"
vm=${PIPESTATUS[0]}
set -e
log "guest run: exit $vm after $(( $(date +%s) - start )) s"
echo; echo "evidence (mid-transfer samples; Cpus_allowed_list per thread, numa_maps of the pools):"
cat "$OUT/evidence.txt" 2>/dev/null
echo; echo "checks:"; grep '^CHECK' "$OUT/checks.txt" 2>/dev/null | sed 's/^CHECK /  /'
[ "$vm" = 124 ] && die 124 "RXE_VM_TIMEOUT ran out"
grep -q '^DONE ' "$OUT/checks.txt" 2>/dev/null || die 5 "the guest did not finish (exit $vm; log: $OUT/guest.log)"
fails=$(sed -n 's/^DONE //p' "$OUT/checks.txt")
[ "$fails" = 0 ] || die 1 "$fails NUMA check(s) failed (logs: $OUT/logs)"
log "all NUMA checks passed"
