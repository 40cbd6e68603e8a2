#!/usr/bin/env bash
# netem-stage.sh: the WAN-emulation CI stage. Pushes and pulls a small tree with
# blit between two qemu VMs (ci/rxe/rxe-pair) whose link has netem delay and
# loss in both directions, and checks every copy byte for byte and by metadata.
#
#   1. host: build blit (release) if the binary is missing; generate the test
#      tree (a few 4-16 MiB files, a few hundred small files, odd modes and
#      mtimes, a symlink, an empty file and directory) plus its reference
#      manifests (sha256 of every file; type, path, size, mode, mtime).
#   2. VM pair (A = 10.77.0.1, B = 10.77.0.2, link rxenet0, MTU 9000): both
#      guests copy the tree into their tmpfs and check it against the manifests.
#      A serves its tmpfs with `blit daemon --listen 10.77.0.1:9031`.
#      Baseline (no netem): B pushes the tree once per stream count.
#      Then both guests `modprobe sch_netem` and
#      `tc qdisc add dev rxenet0 root netem delay 2ms loss 0.5%`, B pushes the
#      tree once per stream count (default 1 4 8) to a new path each time and
#      pulls one copy back; one more push repeats the first stream count with
#      --tcp-buffer 4M. All transfers use --transport tcp --json.
#   3. A checks every pushed copy, B the pulled one: `diff -r` against the
#      guest's verified copy of the tree, and the metadata manifest
#      (`find -printf`: type, path, size, mode, mtime in ns, owner) must match.
#   4. summary table: per transfer seconds, MB/s (10^6 B/s), speed-up over one
#      stream, the sender's TCP retransmits and netem drops, CPU busy % of both
#      guests' vCPUs; RTT (ping B -> A) with and without netem.
#
# usage: ci/netem-stage.sh [--out DIR] [--streams "1 4 8"] [--no-baseline] [--keep-data]
#   --out DIR        results, logs and the test tree (default: <target dir>/netem-stage);
#                    shared read-write with both guests
#   --streams LIST   stream counts of the pushes (default "1 4 8"; the first is the
#                    reference of the speed-up column)
#   --no-baseline    skip the pushes without netem
#   --keep-data      keep the generated test tree afterwards
# Environment:
#   RXE_VM_TIMEOUT      deadline of the whole VM pair run in s (default here 300)
#   NETEM_STEP_TIMEOUT  limit per guest step (one transfer, one verification) in s (default 120)
#   NETEM_BUILD_TIMEOUT limit of the cargo build in s, only when the binary is missing (default 1800)
#   NETEM_DELAY, NETEM_LOSS   netem parameters, each direction (default 2ms, 0.5%; NETEM_LOSS set
#                       but empty: delay only, as ci/faults.sh --vm uses it)
#   NETEM_LARGE_MIB     sizes of the large files in MiB (default "4 8 12 16")
#   NETEM_SMALL_FILES   number of small files, 0-64 KiB each (default 300)
#   NETEM_PULL_STREAMS  streams of the pull (default 4)
#   NETEM_TCP_BUFFER    one more netem push with the first stream count and --tcp-buffer SIZE
#                       (default 4M; empty: skip), to compare with blit's default socket buffers
#   NETEM_VM_MEM        MiB per guest (default 1024; tmpfs is half of it)
#   NETEM_SELFTEST_CORRUPT=1  damage the first pushed copy before it is checked (must exit 8)
#   BLIT                blit binary (default <target dir>/release/blit; built when missing)
#   CARGO_TARGET_DIR and the RXE_VM_* variables of ci/rxe/rxe-vm as usual.
# Exit status:
#   0  every copy verified        2  usage               3  build / binary missing
#   4  test data generation       5  VM pair or guest infrastructure (boot failure,
#                                    a guest step that did not run, a guest crash)
#   6  netem setup (modprobe, tc) 7  a blit transfer failed or timed out (or the daemon)
#   8  a copy differs (content or metadata)
#   124 RXE_VM_TIMEOUT ran out    130 interrupted
# When several things failed, the lowest of 5..8 is returned. The guests run this
# script again (--guest-a, --guest-b); their configuration comes in NETEM_* variables.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/.." && pwd -P)
SELF=$HERE/netem-stage.sh
SYNC=$HERE/rxe/pair-sync
PORT=9031
log() { echo "[netem-stage] $*" >&2; }
die() { local rc=$1; shift; echo "[netem-stage] error: $*" >&2; exit "$rc"; }

# ---------------------------------------------------------------------------
# shared helpers (host and guests)
# ---------------------------------------------------------------------------
# manifest DIR [owner]: one sorted line per entry; directory sizes are left out
# (they depend on the file system), symlinks show their target.
manifest() {
  local own=
  [ "${2:-}" = owner ] && own=' %U:%G'
  (cd "$1" && find . \( -type d -printf "d %P %m %T@$own\n" \) \
      -o \( -type f -printf "f %P %s %m %T@$own\n" \) \
      -o \( -type l -printf "l %P -> %l$own\n" \) \
      -o -printf "? %P %y\n") | LC_ALL=C sort
}

# ---------------------------------------------------------------------------
# guest side: runs inside the VMs. OUT (= NETEM_OUT) is a --share, D the pair
# dir (flags), results go to $OUT/res/{A,B}.txt as lines
#   CHECK <category> <name> ok|FAIL [detail]     (category: stage netem xfer verify)
#   XFER <name> <streams> <rc> <wall_s>          (B)
#   SNAP <side> <name> <start|end> <busy> <idle> <outsegs> <retrans> <drops> <rtos> <tlps>
#   (A: written by a watcher of the mark files B drops in $OUT/marks, acknowledged with ack-*)
#   RTT <phase> <min/avg/max>, QDISC <side> <tc qdisc show line>
# ---------------------------------------------------------------------------
g_init() {
  set +e -u -o pipefail
  OUT=$NETEM_OUT D=$RXE_PAIR_DIR ROLE=$RXE_PAIR_ROLE
  RES=$OUT/res/$ROLE.txt
  STEP=$NETEM_STEP_TIMEOUT
  mkdir -p "$OUT/res"
  : > "$RES"
}
rec() { echo "$*" >> "$RES"; }
check() {  # CATEGORY NAME ok|FAIL [DETAIL...]
  rec "CHECK $*"
  echo "$1 $2: $3${4:+ (${*:4})}"
}
# snap NAME start|end: CPU time of the vCPU(s), TCP segments out / retransmitted,
# packets netem dropped on rxenet0
snap() {
  local u n s i w q sq st rest tcp rto drops
  read -r _ u n s i w q sq st rest < /proc/stat
  tcp=$(awk '/^Tcp:/ { if (!h) { for (k = 2; k <= NF; k++) c[$k] = k; h = 1 }
                       else { print $c["OutSegs"], $c["RetransSegs"]; exit } }' /proc/net/snmp)
  rto=$(awk '/^TcpExt:/ { if (!h) { for (k = 2; k <= NF; k++) c[$k] = k; h = 1 }
                          else { print $c["TCPTimeouts"] + 0, $c["TCPLossProbes"] + 0; exit } }' /proc/net/netstat)
  drops=$(tc -s qdisc show dev rxenet0 | awk '/dropped/ { for (k = 1; k < NF; k++) if ($k == "(dropped") { sub(",", "", $(k+1)); s += $(k+1) } }
                                              END { print s + 0 }')
  rec "SNAP $ROLE $1 $2 $((u + n + s + q + sq + st)) $((i + w)) ${tcp:-0 0} $drops ${rto:-0 0}"
}
g_wait() { "$SYNC" wait "$@"; }        # NAME SECS
g_flag() { "$SYNC" signal "$1"; }

# stage DIR: copy the shared tree into tmpfs and check it against the host manifests
g_stage() {
  local dst=$1
  if ! timeout "$STEP" cp -a "$OUT/src" "$dst"; then check stage "$ROLE-copy" FAIL "cp -a from the share"; return 1; fi
  if ! (cd "$dst" && timeout "$STEP" sha256sum --quiet -c "$OUT/src.sha256") > "$OUT/res/stage-$ROLE.err" 2>&1; then
    check stage "$ROLE-copy" FAIL "sha256 of the guest's copy (res/stage-$ROLE.err)"; return 1
  fi
  manifest "$dst" > /tmp/stage.meta
  if ! diff /tmp/stage.meta "$OUT/src.meta" > "$OUT/res/stage-$ROLE.diff"; then
    check stage "$ROLE-copy" FAIL "metadata of the guest's copy (res/stage-$ROLE.diff)"; return 1
  fi
  manifest "$dst" owner > "/tmp/ref.meta"
  check stage "$ROLE-copy" ok
}

# verify NAME COPY REF: byte for byte (diff -r) and metadata incl. owner
g_verify() {
  local name=$1 copy=$2 ref=$3 why=
  if [ ! -d "$copy" ]; then check verify "$name" FAIL "missing: $copy"; return 1; fi
  timeout "$STEP" diff -r --no-dereference "$ref" "$copy" > "$OUT/res/verify-$name.diff" 2>&1 || why="content differs"
  manifest "$copy" owner > "/tmp/copy-$name.meta"
  if ! diff /tmp/ref.meta "/tmp/copy-$name.meta" >> "$OUT/res/verify-$name.diff" 2>&1; then
    why="${why:+$why, }metadata differs"
  fi
  if [ -n "$why" ]; then
    check verify "$name" FAIL "$why (res/verify-$name.diff)"; head -20 "$OUT/res/verify-$name.diff"; return 1
  fi
  rm -f "$OUT/res/verify-$name.diff" "/tmp/copy-$name.meta"
  check verify "$name" ok "$(find "$copy" -type f | wc -l) files"
}

g_netem() {
  local err
  local -a spec=(delay "$NETEM_DELAY")
  [ -z "$NETEM_LOSS" ] || spec+=(loss "$NETEM_LOSS")
  if ! err=$(timeout "$STEP" tc qdisc add dev rxenet0 root netem "${spec[@]}" 2>&1); then
    check netem "$ROLE" FAIL "tc qdisc add dev rxenet0 root netem ${spec[*]}: $(echo "$err" | head -2 | xargs)"
    return 1
  fi
  local q
  q=$(tc qdisc show dev rxenet0 | head -1)
  rec "QDISC $ROLE $q"
  echo "tc qdisc show dev rxenet0: $q"
  case "$q" in
    *netem*delay*loss*) check netem "$ROLE" ok ;;
    *netem*delay*) if [ -z "$NETEM_LOSS" ]; then check netem "$ROLE" ok
                   else check netem "$ROLE" FAIL "no loss in the netem qdisc on rxenet0: $q"; return 1; fi ;;
    *) check netem "$ROLE" FAIL "no netem qdisc on rxenet0: $q"; return 1 ;;
  esac
}

# A: daemon on 10.77.0.1, watches B's transfer marks for CPU/TCP snapshots,
# verifies the copies when B is done
guest_a() {
  g_init
  trap 'g_flag a-done' EXIT
  local root=/tmp/blit-root dpid spid n rc=0
  modprobe sch_netem 2>&1 || { check netem A-module FAIL "modprobe sch_netem"; return 6; }
  g_stage /tmp/ref || return 5
  mkdir -p "$root"
  # --allow-owners: the checks compare owners, which a root daemon takes from clients only
  # when told (docs/security.md).
  timeout "${RXE_VM_TIMEOUT:-300}" "$BLIT" daemon --root "$root" --listen "$RXE_VM_IP:$PORT" \
    --allow-owners > "$OUT/res/daemon.log" 2>&1 &
  dpid=$!
  if ! "$SYNC" listen "$PORT"; then check xfer daemon FAIL "nothing listens on $PORT (res/daemon.log)"; return 7; fi
  check xfer daemon ok "pid $dpid on $RXE_VM_IP:$PORT"
  # the marks B drops around each transfer: snapshot this side too
  (
    RES=$OUT/res/A-snap.txt; : > "$RES"
    declare -A seen
    while [ ! -e "$D/b-done" ]; do
      for f in "$OUT"/marks/mark-*; do
        if [ ! -e "$f" ] || [ -n "${seen[$f]:-}" ]; then continue; fi
        seen[$f]=1
        m=${f##*/mark-}
        snap "${m#*-}" "${m%%-*}"
        : > "$OUT/marks/ack-$m"
      done
      sleep 0.2
    done
  ) &
  spid=$!
  # baseline done (or B gone): check and drop the baseline copies, then netem
  until [ -e "$D/baseline-done" ] || [ -e "$D/b-done" ]; do sleep 0.2; done
  for n in $NETEM_STREAMS; do
    [ "$NETEM_BASELINE" = 1 ] || break
    [ -e "$OUT/marks/ok-base-push-s$n" ] || continue    # failed or never ran: B reported it
    g_verify "base-push-s$n" "$root/base-s$n" /tmp/ref || rc=8
    rm -rf "${root:?}/base-s$n"
  done
  if [ ! -e "$D/b-done" ]; then g_netem || rc=6; fi
  g_flag netem-A
  until [ -e "$D/b-done" ]; do sleep 0.2; done
  wait "$spid"
  kill "$dpid" 2>/dev/null; wait "$dpid" 2>/dev/null
  if [ "${NETEM_SELFTEST_CORRUPT:-0}" = 1 ] && [ -e "$OUT/marks/ok-netem-push-s${NETEM_STREAMS%% *}" ]; then
    # check the checker: one byte, one mtime
    n=${NETEM_STREAMS%% *}
    echo "self-test: corrupting netem-s$n (one byte of a large file, the mtime of one-byte)"
    f=$(find "$root/netem-s$n/large" -type f | head -1)
    touch -r "$f" /tmp/mtime-ref
    printf 'X' | dd of="$f" bs=1 seek=1000 conv=notrunc status=none
    touch -r /tmp/mtime-ref "$f"          # content only: keep its mtime
    touch -d @0 "$root/netem-s$n/one-byte"
  fi
  for n in $NETEM_STREAMS; do
    [ -e "$OUT/marks/ok-netem-push-s$n" ] || continue
    g_verify "netem-push-s$n" "$root/netem-s$n" /tmp/ref || { [ "$rc" = 0 ] && rc=8; }
  done
  n=${NETEM_STREAMS%% *}
  if [ -e "$OUT/marks/ok-netem-pushbuf-s$n" ]; then
    g_verify "netem-pushbuf-s$n" "$root/netem-buf-s$n" /tmp/ref || { [ "$rc" = 0 ] && rc=8; }
  fi
  echo "tc -s qdisc show dev rxenet0:"; tc -s qdisc show dev rxenet0
  return "$rc"
}

# B: the client, 10.77.0.2
b_mark() {  # start-NAME | end-NAME: let A (and the host) take their snapshots
  local n=100
  : > "$OUT/marks/mark-$1"
  while [ ! -e "$OUT/marks/ack-$1" ] && [ $n -gt 0 ]; do n=$((n - 1)); sleep 0.1; done
  [ $n -gt 0 ] || echo "(A did not acknowledge mark $1 within 10 s; its snapshot is late)"
}
b_xfer() {  # NAME STREAMS SOURCE TARGET [EXTRA BLIT ARGS...]
  local name=$1 t0 t1 rc
  snap "$name" start; b_mark "start-$name"
  t0=$(date +%s.%N)
  timeout -k 5 "$STEP" "$BLIT" xfer "$3" "$4" --streams "$2" --transport tcp --json --no-progress "${@:5}" \
    > "$OUT/res/$name.json" 2> "$OUT/res/$name.err"
  rc=$?
  t1=$(date +%s.%N)
  b_mark "end-$name"; snap "$name" end
  rec "XFER $name $2 $rc $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
  if [ "$rc" = 0 ] && grep -q '"ok": true' "$OUT/res/$name.json"; then
    : > "$OUT/marks/ok-$name"
    check xfer "$name" ok "$(grep -o '"seconds": [0-9.]*' "$OUT/res/$name.json")"
  else
    case "$rc" in
      124) rc="124: timed out after ${STEP}s" ;;
      137) rc="137: timed out after ${STEP}s and still running 5 s after SIGTERM, killed" ;;
    esac
    check xfer "$name" FAIL "exit $rc (res/$name.err)"; tail -5 "$OUT/res/$name.err"; return 1
  fi
}
b_rtt() {  # PHASE
  local r
  r=$(busybox ping -q -c 10 -i 0.2 "$RXE_PEER_IP" 2>&1 | sed -n 's#.*min/avg/max = \([0-9./]*\).*#\1#p')
  rec "RTT $1 ${r:--}"
  echo "ping B -> A ($1): min/avg/max ${r:--} ms"
}
guest_b() {
  g_init
  trap 'g_flag b-done; "$SYNC" wait a-done "$STEP" >/dev/null 2>&1' EXIT
  local remote=blit://$RXE_PEER_IP:$PORT n rc=0
  modprobe sch_netem 2>&1 || { check netem B-module FAIL "modprobe sch_netem"; return 6; }
  g_stage /tmp/src || return 5
  "$SYNC" peer-listen "$PORT" "$STEP" || { check xfer connect FAIL "daemon in A not listening"; return 7; }
  if [ "$NETEM_BASELINE" = 1 ]; then
    b_rtt base
    for n in $NETEM_STREAMS; do b_xfer "base-push-s$n" "$n" /tmp/src "$remote/base-s$n" || rc=7; done
  fi
  g_flag baseline-done
  g_netem || return 6
  g_wait netem-A "$STEP" || { check netem A-ready FAIL "A did not set up netem"; return 6; }
  b_rtt netem
  for n in $NETEM_STREAMS; do b_xfer "netem-push-s$n" "$n" /tmp/src "$remote/netem-s$n" || rc=7; done
  if [ -n "$NETEM_TCP_BUFFER" ]; then   # the same push with explicit socket buffers (set before the SYN)
    n=${NETEM_STREAMS%% *}
    b_xfer "netem-pushbuf-s$n" "$n" /tmp/src "$remote/netem-buf-s$n" --tcp-buffer "$NETEM_TCP_BUFFER" || rc=7
  fi
  # pull back the first copy that was pushed completely
  local from=
  for n in $NETEM_STREAMS; do [ -e "$OUT/marks/ok-netem-push-s$n" ] && { from=netem-s$n; break; }; done
  if [ -z "$from" ]; then
    echo "no complete copy on A: pull not run"
  elif b_xfer "netem-pull-s$NETEM_PULL_STREAMS" "$NETEM_PULL_STREAMS" "$remote/$from" /tmp/pull; then
    g_verify "netem-pull-s$NETEM_PULL_STREAMS" /tmp/pull /tmp/src || { [ "$rc" = 0 ] && rc=8; }
  else
    rc=7
  fi
  echo "tc -s qdisc show dev rxenet0:"; tc -s qdisc show dev rxenet0
  return "$rc"
}

case "${1:-}" in
  --guest-a) guest_a; exit $? ;;
  --guest-b) guest_b; exit $? ;;
esac

# ---------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit "${1:-2}"; }
OUT='' STREAMS="1 4 8" BASELINE=1 KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || usage >&2; OUT=$2; shift 2 ;;
    --streams) [ $# -ge 2 ] || usage >&2; STREAMS=$2; shift 2 ;;
    --no-baseline) BASELINE=0; shift ;;
    --keep-data) KEEP=1; shift ;;
    -h|--help) usage 0 ;;
    *) log "unknown option $1"; usage >&2 ;;
  esac
done
STREAMS=$(echo "$STREAMS" | tr ',' ' ' | xargs)
for n in $STREAMS ${NETEM_PULL_STREAMS:-4}; do [[ "$n" =~ ^[1-9][0-9]*$ ]] || die 2 "bad stream count '$n'"; done
[ -n "$STREAMS" ] || die 2 "--streams needs at least one count"
export RXE_VM_TIMEOUT=${RXE_VM_TIMEOUT:-300}
export NETEM_STEP_TIMEOUT=${NETEM_STEP_TIMEOUT:-120}
export NETEM_DELAY=${NETEM_DELAY:-2ms} NETEM_LOSS=${NETEM_LOSS-0.5%}
export NETEM_PULL_STREAMS=${NETEM_PULL_STREAMS:-4} NETEM_TCP_BUFFER=${NETEM_TCP_BUFFER-4M}
export NETEM_STREAMS=$STREAMS NETEM_BASELINE=$BASELINE
LARGE_MIB=${NETEM_LARGE_MIB:-4 8 12 16}
SMALL_FILES=${NETEM_SMALL_FILES:-300}
VM_MEM=${NETEM_VM_MEM:-1024}
for v in "$RXE_VM_TIMEOUT" "$NETEM_STEP_TIMEOUT" "$SMALL_FILES" "$VM_MEM" $LARGE_MIB; do
  [[ "$v" =~ ^[0-9]+$ ]] || die 2 "not a number: '$v' (RXE_VM_TIMEOUT, NETEM_STEP_TIMEOUT, NETEM_SMALL_FILES, NETEM_VM_MEM, NETEM_LARGE_MIB)"
done
T0=$(date +%s)
secs() { echo $(( $(date +%s) - T0 )); }

# --- 1. blit ---------------------------------------------------------------------
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
BLIT=${BLIT:-$TARGET_DIR/release/blit}
OUT=${OUT:-$TARGET_DIR/netem-stage}
mkdir -p "$OUT" || die 2 "cannot create $OUT"
OUT=$(cd "$OUT" && pwd -P)
[[ "$OUT" =~ [[:space:],] ]] && die 2 "--out may not contain blanks or commas (9p share): $OUT"
if [ ! -x "$BLIT" ]; then
  log "building blit (release): cargo build --release -p blitx-cli"
  timeout "${NETEM_BUILD_TIMEOUT:-1800}" cargo build --release -p blitx-cli > "$OUT/build.log" 2>&1 \
    || { tail -30 "$OUT/build.log" >&2; die 3 "cargo build failed or timed out (log: $OUT/build.log)"; }
fi
[ -x "$BLIT" ] || die 3 "no blit binary at $BLIT"
BLIT=$(cd "$(dirname "$BLIT")" && pwd -P)/$(basename "$BLIT")
export BLIT NETEM_OUT=$OUT
BLIT_ID="$BLIT ($("$BLIT" --version 2>/dev/null || echo '?'), sha256 $(sha256sum "$BLIT" | cut -c1-12), built $(date -u -r "$BLIT" +%Y-%m-%dT%H:%M:%SZ))"
log "binary $BLIT_ID"

# --- 2. test tree ------------------------------------------------------------------
gen_tree() {
  local src=$1 i d s f
  RANDOM=4242                      # the same sizes, modes and mtimes every run
  mkdir -p "$src/large" "$src/empty-dir" "$src/deep/a/b/c"
  for s in $LARGE_MIB; do
    head -c $((s * 1048576)) /dev/urandom > "$src/large/file-${s}MiB.bin"
  done
  for ((i = 0; i < SMALL_FILES; i++)); do
    d=$src/small/d$((i % 12)); [ $((i % 25)) = 3 ] && d=$src/deep/a/b/c
    mkdir -p "$d"
    f=$d/f$i.dat
    s=$(( (RANDOM * 32768 + RANDOM) % 65537 ))
    head -c "$s" /dev/urandom > "$f"
    [ $((i % 7)) = 0 ] && chmod 600 "$f"
    [ $((i % 11)) = 0 ] && chmod 755 "$f"
    touch -d "@$((1600000000 + RANDOM * 97)).$(printf '%09d' $((RANDOM * 30517)))" "$f"
  done
  : > "$src/empty-file"
  printf 'x' > "$src/one-byte"
  ln -s "large/file-${LARGE_MIB%% *}MiB.bin" "$src/link-to-large"
  ln -s ../missing "$src/deep/dangling-link"
  chmod 750 "$src/deep/a"; chmod 700 "$src/deep/a/b/c"; chmod 640 "$src/one-byte"
  # directory mtimes last, deepest first
  find "$src" -depth -type d -print0 | while IFS= read -r -d '' d; do
    touch -d "@$((1650000000 + RANDOM)).123456789" "$d"
  done
}
log "generating the test tree in $OUT/src (large: $LARGE_MIB MiB; $SMALL_FILES small files)"
rm -rf "$OUT/src" "$OUT/res" "$OUT/src.sha256" "$OUT/src.meta"
mkdir -p "$OUT/src" "$OUT/res"
set +e; ( set -e; gen_tree "$OUT/src" ); rc=$?; set -e
[ "$rc" = 0 ] || die 4 "test tree generation failed (exit $rc)"
(cd "$OUT/src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) > "$OUT/src.sha256" \
  || die 4 "sha256 of the test tree"
manifest "$OUT/src" > "$OUT/src.meta" || die 4 "manifest of the test tree"
DATA_BYTES=$(find "$OUT/src" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
DATA_FILES=$(find "$OUT/src" -type f | wc -l)
log "test tree: $DATA_FILES files, $(awk -v b="$DATA_BYTES" 'BEGIN { printf "%.1f", b / 1e6 }') MB ($(secs) s)"

cleanup() { [ "$KEEP" = 1 ] || rm -rf "$OUT/src"; }
trap cleanup EXIT

# --- 3. the VM pair ------------------------------------------------------------------
log "VM pair: A = daemon on 10.77.0.1:$PORT, B = client; streams: $STREAMS (pull: $NETEM_PULL_STREAMS);" \
    "netem delay $NETEM_DELAY${NETEM_LOSS:+ loss $NETEM_LOSS}; baseline $([ "$BASELINE" = 1 ] && echo on || echo off);" \
    "RXE_VM_TIMEOUT=${RXE_VM_TIMEOUT}s, NETEM_STEP_TIMEOUT=${NETEM_STEP_TIMEOUT}s"
# host CPU around each transfer (B drops mark files into $OUT/marks): the two
# guests' qemu processes (found by the share path on their command line) against
# everything else on this machine, which competes for the same cores
host_snap() {  # NAME start|end
  local u n s i w q sq st f pid qj=0 rest
  read -r _ u n s i w q sq st rest < /proc/stat
  # shellcheck disable=SC2013  # one /proc/PID/cmdline path per line
  for f in $(grep -lzF -- "path=$OUT," /proc/[0-9]*/cmdline 2>/dev/null); do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    read -r rest < "/proc/$pid/stat" 2>/dev/null || continue
    case "$rest" in *"(qemu-system"*) ;; *) continue ;; esac
    rest=${rest##*) }
    qj=$((qj + $(echo "$rest" | awk '{ print $12 + $13 }')))
  done
  echo "SNAP H $1 $2 $((u + n + s + q + sq + st)) $((i + w)) $qj" >> "$OUT/res/host-snap.txt"
}
host_sampler() {
  local f m
  declare -A hseen
  while [ ! -e "$OUT/marks/stop" ]; do
    for f in "$OUT"/marks/mark-*; do
      if [ ! -e "$f" ] || [ -n "${hseen[$f]:-}" ]; then continue; fi
      hseen[$f]=1; m=${f##*/mark-}
      host_snap "${m#*-}" "${m%%-*}"
    done
    sleep 0.2
  done
}
rm -rf "$OUT/marks"; mkdir -p "$OUT/marks"; : > "$OUT/res/host-snap.txt"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
host_sampler &
SAMPLER=$!
set +e
"$HERE/rxe/rxe-pair" --share "$OUT" --mem "$VM_MEM" -- bash "$SELF" --guest-a -- bash "$SELF" --guest-b \
  2>&1 | tee "$OUT/pair.log"
PAIR_RC=${PIPESTATUS[0]}
: > "$OUT/marks/stop"; wait "$SAMPLER"
set -e
log "VM pair finished with exit $PAIR_RC ($(secs) s)"

# --- 4. judge and summarize -----------------------------------------------------------
cat "$OUT/res/A.txt" "$OUT/res/A-snap.txt" "$OUT/res/B.txt" "$OUT/res/host-snap.txt" > "$OUT/results.txt" 2>/dev/null || true
R=$OUT/results.txt
FAILS=() CODE=0 MISSING=()
fail() {  # CODE MESSAGE
  FAILS+=("$2"); log "FAIL: $2"
  if [ "$CODE" = 0 ] || [ "$1" -lt "$CODE" ]; then CODE=$1; fi
}
# every expected check must be there and ok
expect() {  # CATEGORY NAME CODE
  local line
  line=$(grep -m1 "^CHECK $1 $2 " "$R" || true)
  if [ -z "$line" ]; then MISSING+=("$1 $2")
  elif [ "$(echo "$line" | cut -d' ' -f4)" != ok ]; then fail "$3" "$1 $2: ${line#"CHECK $1 $2 "}"
  fi
}
case "$PAIR_RC" in
  124) fail 124 "RXE_VM_TIMEOUT (${RXE_VM_TIMEOUT}s) ran out" ;;
  125) fail 5 "a VM could not boot (rxe-pair exit 125; see $OUT/pair.log)" ;;
  130) fail 130 "interrupted" ;;
esac
# failures the guests reported beyond the expected list (module, daemon, ...)
while read -r _ cat name _; do
  case "$cat" in stage) c=5 ;; netem) c=6 ;; xfer) c=7 ;; verify) c=8 ;; *) c=5 ;; esac
  case "$name" in A|B|A-copy|B-copy|*push*|*pull*) continue ;; esac   # covered by expect below
  fail "$c" "$cat $name: $(grep -m1 "^CHECK $cat $name " "$R" | cut -d' ' -f5-)"
done < <(grep '^CHECK [a-z]* [^ ]* FAIL' "$R" 2>/dev/null || true)
if [ "$PAIR_RC" != 124 ] && [ "$PAIR_RC" != 125 ] && [ "$PAIR_RC" != 130 ]; then
  expect stage A-copy 5; expect stage B-copy 5
  expect netem A 6; expect netem B 6
  for n in $STREAMS; do
    if [ "$BASELINE" = 1 ]; then expect xfer "base-push-s$n" 7; expect verify "base-push-s$n" 8; fi
    expect xfer "netem-push-s$n" 7; expect verify "netem-push-s$n" 8
  done
  if [ -n "$NETEM_TCP_BUFFER" ]; then
    expect xfer "netem-pushbuf-s${STREAMS%% *}" 7; expect verify "netem-pushbuf-s${STREAMS%% *}" 8
  fi
  expect xfer "netem-pull-s$NETEM_PULL_STREAMS" 7; expect verify "netem-pull-s$NETEM_PULL_STREAMS" 8
fi
# steps that never ran: an infrastructure problem unless an earlier failure explains them
if [ "${#MISSING[@]}" -gt 0 ]; then
  if [ "${#FAILS[@]}" = 0 ]; then fail 5 "did not run: ${MISSING[*]}"
  else FAILS+=("(after that, did not run: ${MISSING[*]})"); fi
fi
if [ "${#FAILS[@]}" = 0 ] && [ "$PAIR_RC" != 0 ]; then fail 5 "guest command exited $PAIR_RC without a failed check"; fi

jnum() { { grep -o "\"$2\": *[0-9.eE+-]*" "$1" 2>/dev/null || true; } | head -1 | sed 's/.*: *//'; }
snapd() {  # SIDE NAME -> "busy% retrans outsegs drops rtos" from the start/end snapshots
  awk -v side="$1" -v name="$2" '$1 == "SNAP" && $2 == side && $3 == name { v[$4] = $0 }
    END { if (!("start" in v) || !("end" in v)) { print "- - - - - -"; exit }
          split(v["start"], a, " "); split(v["end"], b, " ")
          busy = b[5] - a[5]; idle = b[6] - a[6]
          printf "%s %d %d %d %d/%d\n", (busy + idle > 0 ? sprintf("%.0f", 100 * busy / (busy + idle)) : "-"),
                 b[8] - a[8], b[7] - a[7], b[9] - a[9], b[10] - a[10], b[11] - a[11] }' "$R"
}
row() {  # LABEL NAME STREAMS REF_SECONDS
  local j=$OUT/res/$2.json sec bytes mbs wall up sb sa snd
  sec=$(jnum "$j" seconds); bytes=$(jnum "$j" bytes)
  wall=$(awk -v n="$2" '$1 == "XFER" && $2 == n { print $5 }' "$R")
  if [ -z "$sec" ] || [ -z "$bytes" ]; then
    printf '%-11s %7s %8s %8s %8s %8s %8s\n' "$1" "$3" - - - - "${wall:--}"; return
  fi
  mbs=$(awk -v b="$bytes" -v s="$sec" 'BEGIN { printf "%.1f", b / s / 1e6 }')
  up=$(awk -v r="${4:-}" -v s="$sec" 'BEGIN { if (r == "") print "-"; else printf "%.2fx", r / s }')
  read -r sb rb ob db tb <<< "$(snapd B "$2")"
  read -r sa ra oa da ta <<< "$(snapd A "$2")"
  hc=$(awk -v name="$2" -v ncpu="$NCPU" '$1 == "SNAP" && $2 == "H" && $3 == name { v[$4] = $0 }
    END { if (!("start" in v) || !("end" in v)) { print "-"; exit }
          split(v["start"], a, " "); split(v["end"], b, " ")
          busy = b[5] - a[5]; t = busy + b[6] - a[6]; qj = b[7] - a[7]
          if (t <= 0) { print "-"; exit }
          printf "%.1f+%.1f/%d\n", ncpu * qj / t, ncpu * busy / t - ncpu * qj / t, ncpu }' "$R")
  case "$2" in *pull*) snd="$oa $ra $ta $da" ;; *) snd="$ob $rb $tb $db" ;; esac
  printf '%-11s %7s %8.1f %8.2f %8s %8s %8s %6s %6s %12s   %s\n' "$1" "$3" \
    "$(awk -v b="$bytes" 'BEGIN { print b / 1e6 }')" "$sec" "$mbs" "$up" "${wall:--}" "$sb" "$sa" "$hc" "$snd"
}
first=${STREAMS%% *}
NCPU=$(nproc)
{
  set +e   # a missing result must not cut the table short
  echo "netem stage summary ($(date -u +%Y-%m-%dT%H:%MZ), $(secs) s wall; $DATA_FILES files, $DATA_BYTES bytes)"
  echo "blit: $BLIT_ID"
  echo "link: 10.77.0.2 (B, client) <-> 10.77.0.1 (A, daemon), rxenet0 MTU ${RXE_VM_MTU:-9000}, qemu TCG, 1 vCPU per guest"
  grep '^QDISC' "$R" 2>/dev/null | sed 's/^QDISC \(.\) /  qdisc \1: /' || true
  awk '$1 == "RTT" { printf "  ping B -> A, %s: min/avg/max %s ms\n", ($2 == "base" ? "no netem" : "netem"), $3 }' "$R" 2>/dev/null
  echo "MB/s = 10^6 bytes/s of file data, seconds from blit --json; wall = the blit process on B;"
  echo "cpu% = vCPU busy during the transfer (B client, A daemon); segs retr rto/tlp drops = TCP segments"
  echo "sent, retransmitted, retransmit timeouts / tail loss probes, netem drops on the sending side (B for"
  echo "pushes, A for the pull); host-cores = cores busy on this host during the transfer: the two qemus +"
  echo "everything else / cores (load average before the VMs: $LOAD0)"
  printf '%-11s %7s %8s %8s %8s %8s %8s %6s %6s %12s   %s\n' run streams MB seconds MB/s speed-up wall cpu%B cpu%A host-cores "segs retr rto/tlp drops"
  for phase in base netem; do
    [ "$phase" = base ] && [ "$BASELINE" = 0 ] && continue
    ref=$(jnum "$OUT/res/$phase-push-s$first.json" seconds)
    for n in $STREAMS; do row "$phase push" "$phase-push-s$n" "$n" "$ref"; done
  done
  if [ -n "$NETEM_TCP_BUFFER" ]; then
    row "netem buf" "netem-pushbuf-s$first" "$first" "$(jnum "$OUT/res/netem-push-s$first.json" seconds)"
  fi
  row "netem pull" "netem-pull-s$NETEM_PULL_STREAMS" "$NETEM_PULL_STREAMS" ""
  echo "speed-up = seconds with $first stream(s) / seconds with N streams, same phase"
  [ -n "$NETEM_TCP_BUFFER" ] && echo "netem buf = the $first-stream netem push again with --tcp-buffer $NETEM_TCP_BUFFER (buffers set before the SYN)"
  grep '^CHECK verify' "$R" 2>/dev/null | awk '{ $1 = $2 = ""; sub(/^  /, ""); print "  verify " $0 }'
  if [ ${#FAILS[@]} -eq 0 ]; then echo "PASS: every copy verified"; else printf 'FAIL: %s\n' "${FAILS[@]}"; fi
} | tee "$OUT/summary.txt"
[ ${#FAILS[@]} -eq 0 ] || { log "exit $CODE (results: $OUT)"; exit "$CODE"; }
