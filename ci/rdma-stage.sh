#!/usr/bin/env bash
# rdma-stage.sh: the RDMA CI stage. Builds blitx-transport-rdma on the host and
# runs its tests for real on Soft-RoCE (rdma_rxe) in throw-away qemu VMs:
#
#   1. host: apt build deps (only if missing), release build of the test
#      binaries and examples/verbs_selftest + examples/rdma_bench; run them on
#      the host, where there is no RDMA: every hardware test (verbs loopback
#      and the transport's conformance suite) must report SKIPPED with a typed
#      reason, the binaries must not need libibverbs (DT_NEEDED guard), and a
#      missing libibverbs must give LibraryMissing.
#   2. one VM (ci/rxe/rxe-vm, rxe0 loopback): all test binaries with
#      BLIT_RDMA_REQUIRE=1 (skipping is a failure there; this runs the
#      transport conformance suite with 1 and 2 QPs), verbs_selftest
#      64 MiB busy-poll and 32 MiB event mode, MemlockTooLow under
#      `ulimit -l 1024` without CAP_IPC_LOCK, and the throughput comparison in
#      one VM run: the transport alone (rdma_bench, 256 MiB of 1 MiB frames,
#      busy-poll and event CQs) and ib_write_bw -s 1048576 -n 256, each with
#      its CPU time.
#   3. two VMs (ci/rxe/rxe-pair, two rxe devices on a private link):
#      verbs_selftest --listen in A, --connect in B (32 MiB), then ib_write_bw
#      A <- B, so local/remote GID, rkey and address cannot be mixed up.
#
# usage: ci/rdma-stage.sh [--out DIR] [--no-pair] [--no-build]
#   --out DIR    logs and summary (default: <cargo target dir>/rdma-stage)
#   --no-pair    skip step 3
#   --no-build   reuse the binaries of the last build
# Exit status: 0 when every check passed. The VMs' guest commands are this
# script again (--guest-loopback, --guest-pair-a, --guest-pair-b).
# Environment: RXE_VM_TIMEOUT (per VM run, default here 300 s) and the other
# RXE_VM_* variables of ci/rxe/rxe-vm; CARGO_TARGET_DIR as usual.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/.." && pwd -P)
SELF=$HERE/rdma-stage.sh
PKG=blitx-transport-rdma
MSG_BYTES=1048576          # selftest slot size = transport chunk = perftest message size
BENCH_MIB=256              # transport benchmark / ib_write_bw volume
log() { echo "[rdma-stage] $*" >&2; }
die() { echo "[rdma-stage] error: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# guest side (runs inside the VMs; the host root is mounted read-only, OUT is
# a --share). Binaries come in through the environment.
# ---------------------------------------------------------------------------
perftest_loopback() {  # SIZE ITERS LOGFILE: server + client on rxe0, retried on clock-calibration failures
  local size=$1 iters=$2 logf=$3 port=18515 attempt
  for attempt in 1 2 3; do
    port=$((port + 1))
    # the server waits for its client forever if the client fails: bound it
    timeout 120 ib_write_bw -d rxe0 -F -p "$port" -s "$size" -n "$iters" > "$logf.server" 2>&1 &
    local spid=$!
    sleep 1
    ib_write_bw -d rxe0 -F -p "$port" -s "$size" -n "$iters" "$RXE_VM_IP" > "$logf" 2>&1
    local crc=$?
    wait "$spid"
    if grep -q "Can't produce a report" "$logf" "$logf.server"; then
      echo "(ib_write_bw: perftest clock calibration failed under TCG, retry $attempt)"
      continue
    fi
    return "$crc"
  done
  return 1
}

busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }

perftest_cpu() {  # SIZE ITERS LOGFILE: like perftest_loopback, plus CPU time of both processes
  local size=$1 iters=$2 logf=$3 port=18700 attempt
  for attempt in 1 2 3; do
    port=$((port + 1))
    ( TIMEFORMAT='server real %R user %U sys %S'
      time timeout 120 ib_write_bw -d rxe0 -F -p "$port" -s "$size" -n "$iters" > "$logf.server" 2>&1 ) 2> "$logf.server-time" &
    local spid=$!
    sleep 1
    local b0 b1 crc
    b0=$(busy_jiffies)
    ( TIMEFORMAT='client real %R user %U sys %S'
      time timeout 120 ib_write_bw -d rxe0 -F -p "$port" -s "$size" -n "$iters" "$RXE_VM_IP" > "$logf" 2>&1 ) 2> "$logf.client-time"
    crc=$?
    b1=$(busy_jiffies)
    wait "$spid"
    if grep -q "Can't produce a report" "$logf" "$logf.server"; then
      echo "(ib_write_bw: perftest clock calibration failed under TCG, retry $attempt)"
      continue
    fi
    # process CPU = user + sys of server and client; machine = busy jiffies (USER_HZ 100)
    awk -v mib="$((size * iters >> 20))" -v jif="$((b1 - b0))" '
      /real/ { real[$1] = $3; user += $5; sys += $7 }
      END { gib = mib / 1024
            printf "ib_write_bw CPU: process %.2f s user + %.2f s system (%.2f s/GiB, user %.2f s/GiB), machine %.2f s (%.2f s/GiB); client %.2f s wall\n",
                   user, sys, (user + sys) / gib, user / gib, jif / 100, jif / 100 / gib, real["client"] }' \
      "$logf.server-time" "$logf.client-time" | tee "$logf.cpu"
    return "$crc"
  done
  return 1
}

guest_loopback() {
  set +e -o pipefail
  local out=$1 rc=0 t
  export BLIT_RDMA_REQUIRE=1
  echo "== $(uname -r), $(nproc) vCPU, device ${RXE_VM_DEV:-?}"
  echo "== discover"
  "$STAGE_SELFTEST" --discover > "$out/discover.json" || { echo "FAIL: discover"; rc=1; }
  grep -E '"(name|state|active_mtu|gid|gid_type|chosen_gid_index|netdev)"' "$out/discover.json"
  for t in $STAGE_TESTS; do
    echo "== $(basename "$t")"
    "$t" --test-threads=1 2>&1 | tee "$out/$(basename "$t").log" \
      | grep -E '^test |test result|SKIPPED|panicked|MiB/s|conformance rdma' \
      || { echo "FAIL: $(basename "$t")"; rc=1; }
  done
  echo "== verbs_selftest: 64 MiB, busy-poll CQs, 1 MiB slots, window 8"
  "$STAGE_SELFTEST" --total-mib 64 | tee "$out/selftest-busy.txt" || { echo "FAIL: selftest busy"; rc=1; }
  echo "== verbs_selftest: 32 MiB, event-mode CQs"
  "$STAGE_SELFTEST" --total-mib 32 --cq-mode event | tee "$out/selftest-event.txt" \
    || { echo "FAIL: selftest event"; rc=1; }
  echo "== MemlockTooLow: ulimit -l 1024 without CAP_IPC_LOCK, 16 MiB region"
  ( ulimit -l 1024 && setpriv --bounding-set=-ipc_lock --inh-caps=-ipc_lock -- \
      "$STAGE_SELFTEST" --expect-error memlock-too-low ) | tee "$out/memlock.txt" \
    || { echo "FAIL: memlock"; rc=1; }
  echo "== ib_write_bw -s $MSG_BYTES -n 64 (same VM run, reference)"
  if perftest_loopback "$MSG_BYTES" 64 "$out/ib_write_bw-loopback.txt"; then
    grep -E '^ *#bytes|^ *[0-9]+ +[0-9]+ ' "$out/ib_write_bw-loopback.txt"
  else
    echo "WARN: ib_write_bw failed (reference only; see ib_write_bw-loopback.txt)"
  fi
  echo "== rdma_bench: the transport alone, $BENCH_MIB MiB of $MSG_BYTES-byte frames, busy-poll CQs"
  "$STAGE_BENCH" --total-mib "$BENCH_MIB" --chunk-kib $((MSG_BYTES >> 10)) > "$out/bench-busy.txt" 2>&1 \
    || { echo "FAIL: rdma_bench busy"; rc=1; }
  grep -v '^RESULT' "$out/bench-busy.txt"
  echo "== rdma_bench: event-mode CQs"
  "$STAGE_BENCH" --total-mib "$BENCH_MIB" --chunk-kib $((MSG_BYTES >> 10)) --cq-mode event \
    > "$out/bench-event.txt" 2>&1 || { echo "FAIL: rdma_bench event"; rc=1; }
  grep -v '^RESULT' "$out/bench-event.txt"
  echo "== ib_write_bw -s $MSG_BYTES -n $BENCH_MIB with CPU time (same VM run)"
  if perftest_cpu "$MSG_BYTES" "$BENCH_MIB" "$out/ib_write_bw-bench.txt"; then
    grep -E '^ *#bytes|^ *[0-9]+ +[0-9]+ ' "$out/ib_write_bw-bench.txt"
  else
    echo "WARN: ib_write_bw failed (reference only; see ib_write_bw-bench.txt)"
  fi
  return "$rc"
}

guest_pair_a() {  # receiver side, 10.77.0.1
  set +e -o pipefail
  local out=$1 rc=0
  export BLIT_RDMA_REQUIRE=1
  "$STAGE_SELFTEST" --listen 18600 --total-mib 32 > "$out/pair-a-selftest.txt" 2>&1 &
  local pid=$!
  "$HERE/rxe/pair-sync" listen 18600
  wait "$pid" || rc=1
  cat "$out/pair-a-selftest.txt"
  ib_write_bw -d rxe0 -F -p 18700 -s "$MSG_BYTES" -n 32 > "$out/pair-a-ib_write_bw.txt" 2>&1 &
  pid=$!
  "$HERE/rxe/pair-sync" listen 18700
  wait "$pid" || echo "WARN: ib_write_bw server failed (reference only)"
  return "$rc"
}

guest_pair_b() {  # sender side, 10.77.0.2
  set +e -o pipefail
  local out=$1 rc=0
  export BLIT_RDMA_REQUIRE=1
  "$HERE/rxe/pair-sync" peer-listen 18600 \
    && "$STAGE_SELFTEST" --connect "$RXE_PEER_IP:18600" --total-mib 32 2>&1 | tee "$out/pair-b-selftest.txt" \
    || rc=1
  if "$HERE/rxe/pair-sync" peer-listen 18700; then
    ib_write_bw -d rxe0 -F -p 18700 -s "$MSG_BYTES" -n 32 "$RXE_PEER_IP" > "$out/pair-b-ib_write_bw.txt" 2>&1 \
      || echo "WARN: ib_write_bw client failed (reference only)"
    grep -E '^ *#bytes|^ *[0-9]+ +[0-9]+ ' "$out/pair-b-ib_write_bw.txt"
  fi
  return "$rc"
}

case "${1:-}" in
  --guest-loopback) guest_loopback "$2"; exit $? ;;
  --guest-pair-a) guest_pair_a "$2"; exit $? ;;
  --guest-pair-b) guest_pair_b "$2"; exit $? ;;
esac

# ---------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------
OUT= PAIR=1 BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --no-pair) PAIR=0; shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
export RXE_VM_TIMEOUT=${RXE_VM_TIMEOUT:-420}
T0=$(date +%s)

# build dependencies (bindgen needs libclang + clang's headers; rdma-sys probes
# libibverbs and librdmacm with pkg-config). Never removes a package.
need=()
for p in libibverbs-dev librdmacm-dev libclang1-14 libclang-common-14-dev pkg-config; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  log "apt-get install ${need[*]}"
  $SUDO apt-get update -qq
  if $SUDO apt-get install -s --no-install-recommends "${need[@]}" | grep -q '^Remv '; then
    die "installing ${need[*]} would remove packages; install them by hand"
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

cd "$ROOT"
TARGET_DIR=$(cargo metadata --no-deps --format-version 1 | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
OUT=${OUT:-$TARGET_DIR/rdma-stage}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd -P)
LIST=$OUT/binaries.txt
if [ "$BUILD" = 1 ]; then
  log "building $PKG (release): tests and examples"
  cargo build --release -p "$PKG" --examples --message-format=json 2>"$OUT/build.log" \
    | grep -oE '"executable":"[^"]*(verbs_selftest|rdma_bench)"' | cut -d'"' -f4 > "$LIST.example" \
    || { tail -30 "$OUT/build.log" >&2; die "build failed"; }
  cargo test --release -p "$PKG" --no-run --message-format=json 2>>"$OUT/build.log" \
    | grep '"test":true' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 > "$LIST.tests" \
    || { tail -30 "$OUT/build.log" >&2; die "test build failed"; }
  cat "$LIST.example" "$LIST.tests" > "$LIST"
fi
[ -s "$LIST" ] || die "no binaries listed in $LIST (run without --no-build)"
STAGE_SELFTEST=$(grep '/verbs_selftest$' "$LIST" | head -1)
STAGE_BENCH=$(grep '/rdma_bench$' "$LIST" | head -1)
STAGE_TESTS=$(grep -vE '/(verbs_selftest|rdma_bench)$' "$LIST" | xargs)
[ -x "$STAGE_SELFTEST" ] || die "verbs_selftest not built"
[ -x "$STAGE_BENCH" ] || die "rdma_bench not built"
export STAGE_SELFTEST STAGE_BENCH STAGE_TESTS
log "binaries: $(xargs -n1 basename < "$LIST" | xargs)"

FAILS=()
fail() { FAILS+=("$1"); log "FAIL: $1"; }

# --- 1. host: no RDMA here, so typed skips; no libibverbs in DT_NEEDED -----
log "host: tests without RDMA (expect typed SKIPPED)"
for t in $STAGE_TESTS; do
  env -u BLIT_RDMA_REQUIRE "$t" --test-threads=1 --nocapture > "$OUT/host-$(basename "$t").log" 2>&1 \
    || fail "host: $(basename "$t")"
done
if ls /sys/class/infiniband_verbs >/dev/null 2>&1; then
  log "host has RDMA devices; skipping the host no-RDMA checks"
else
  grep -h 'SKIPPED' "$OUT"/host-loopback-*.log | head -3 >&2 || true
  grep -q 'SKIPPED: no usable RDMA device: .*\[Unsupported' "$OUT"/host-loopback-*.log \
    || fail "host: loopback tests did not report a typed skip"
  [ "$(grep -c 'SKIPPED: no usable RDMA device: .*\[Unsupported' "$OUT"/host-conformance_rdma-*.log)" -ge 2 ] \
    || fail "host: the transport conformance tests did not report a typed skip"
  set +e
  env -u BLIT_RDMA_REQUIRE "$STAGE_BENCH" > "$OUT/host-bench.txt" 2>&1; rc=$?
  set -e
  [ "$rc" = 77 ] && grep -q 'SKIPPED: .*\[Unsupported' "$OUT/host-bench.txt" \
    || fail "host: rdma_bench should exit 77 with the reason (got $rc)"
  set +e
  env -u BLIT_RDMA_REQUIRE "$STAGE_SELFTEST" > "$OUT/host-selftest.txt" 2>&1; rc=$?
  set -e
  cat "$OUT/host-selftest.txt" >&2
  [ "$rc" = 77 ] && grep -q 'SKIPPED: .*\[Unsupported\]' "$OUT/host-selftest.txt" \
    || fail "host: verbs_selftest should exit 77 with the reason (got $rc)"
fi
BLIT_RDMA_LIBIBVERBS=/nonexistent/libibverbs.so.1 "$STAGE_SELFTEST" --expect-error unavailable \
  > "$OUT/host-library-missing.txt" 2>&1 || fail "host: missing libibverbs is not a typed error"
grep -q 'cannot load /nonexistent/libibverbs.so.1' "$OUT/host-library-missing.txt" \
  || fail "host: LibraryMissing message"
# the real thing: libibverbs.so.1 unreadable (bind-mounted over with /dev/null
# in a private mount namespace); needs root for unshare -m
LIBV=$(readlink -f "$(ldconfig -p | awk '/libibverbs\.so\.1 /{print $NF; exit}')" 2>/dev/null || true)
if [ "$(id -u)" = 0 ] && [ -n "$LIBV" ] && unshare -m true 2>/dev/null; then
  set +e
  unshare -m sh -c 'mount --bind /dev/null "$1" && shift && exec "$@"' sh "$LIBV" \
    env -u BLIT_RDMA_REQUIRE "$STAGE_SELFTEST" > "$OUT/host-no-libibverbs.txt" 2>&1; rc=$?
  set -e
  cat "$OUT/host-no-libibverbs.txt" >&2
  [ "$rc" = 77 ] && grep -q '\[LibraryMissing\]' "$OUT/host-no-libibverbs.txt" \
    || fail "host: verbs_selftest with libibverbs hidden should skip with LibraryMissing (got $rc)"
else
  log "not checked: hiding libibverbs needs root, unshare -m and an installed libibverbs.so.1"
fi
for b in $(cat "$LIST"); do
  if readelf -d "$b" | grep -E 'NEEDED.*(ibverbs|rdmacm)'; then fail "host: $(basename "$b") needs libibverbs"; fi
done

# --- 2. one VM: rxe0 loopback ------------------------------------------------
log "VM: rxe0 loopback (tests, selftests, memlock, ib_write_bw)"
set +e
"$HERE/rxe/rxe-vm" --share "$OUT" -- "$SELF" --guest-loopback "$OUT" 2>&1 | tee "$OUT/loopback.log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || fail "VM loopback (exit $rc)"

# --- 3. two VMs: distinct devices ---------------------------------------------
if [ "$PAIR" = 1 ]; then
  log "VM pair: receiver in A (10.77.0.1), sender in B (10.77.0.2)"
  set +e
  "$HERE/rxe/rxe-pair" --share "$OUT" -- "$SELF" --guest-pair-a "$OUT" -- "$SELF" --guest-pair-b "$OUT" \
    2>&1 | tee "$OUT/pair.log"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" = 0 ] || fail "VM pair (exit $rc)"
  grep -q 'two devices' "$OUT/pair-b-selftest.txt" 2>/dev/null || fail "pair: GIDs were not distinct"
fi

# --- summary -------------------------------------------------------------------
mibs() { grep -h "^RESULT .*\"role\":\"$2\"" "$1" 2>/dev/null | grep -o '"mib_per_s":[0-9.]*' | cut -d: -f2 | head -1; }
bench() { grep -h '^RESULT ' "$1" 2>/dev/null | grep -o "\"$2\":[0-9.]*" | head -1 | cut -d: -f2; }
pbw() { awk '$1 ~ /^[0-9]+$/ && NF >= 4 {print $4; exit}' "$1" 2>/dev/null; }
fmt() { if [ -n "$1" ]; then printf '%.1f' "$1"; else printf -- '-'; fi; }
{
  echo "RDMA stage summary ($(date -u +%Y-%m-%dT%H:%MZ), $(($(date +%s) - T0)) s wall)"
  echo "throughput in MiB/s (2^20, perftest's MB/sec); message size $MSG_BYTES bytes; Soft-RoCE under qemu"
  printf '%-34s %10s\n' "loopback selftest, busy-poll" "$(fmt "$(mibs "$OUT/selftest-busy.txt" sender)")"
  printf '%-34s %10s\n' "loopback selftest, event mode" "$(fmt "$(mibs "$OUT/selftest-event.txt" sender)")"
  printf '%-34s %10s\n' "loopback ib_write_bw (same VM)" "$(fmt "$(pbw "$OUT/ib_write_bw-loopback.txt")")"
  echo "transport alone vs ib_write_bw, $BENCH_MIB MiB of $MSG_BYTES-byte messages, same VM run:"
  for m in busy event; do
    printf '%-34s %10s MiB/s  CPU s/GiB: process %s (user %s), machine %s\n' \
      "  rdma_bench $m" "$(fmt "$(bench "$OUT/bench-$m.txt" mib_per_s)")" \
      "$(fmt "$(bench "$OUT/bench-$m.txt" process_cpu_s_per_gib)")" \
      "$(fmt "$(bench "$OUT/bench-$m.txt" process_user_cpu_s_per_gib)")" \
      "$(fmt "$(bench "$OUT/bench-$m.txt" machine_cpu_s_per_gib)")"
  done
  printf '%-34s %10s MiB/s  %s\n' "  ib_write_bw" "$(fmt "$(pbw "$OUT/ib_write_bw-bench.txt")")" \
    "$(cat "$OUT/ib_write_bw-bench.txt.cpu" 2>/dev/null || echo '-')"
  printf '%-34s %10s WRs/MiB, %s payload bytes copied\n' "  rdma_bench busy-poll counters" \
    "$(fmt "$(bench "$OUT/bench-busy.txt" wrs_per_mib)")" \
    "$(grep -o '"payload_copy_bytes":[0-9]*' "$OUT/bench-busy.txt" 2>/dev/null | awk -F: '{s += $2} END {print NR ? s : "-"}')"
  if [ "$PAIR" = 1 ]; then
    printf '%-34s %10s\n' "pair selftest (B -> A)" "$(fmt "$(mibs "$OUT/pair-b-selftest.txt" sender)")"
    printf '%-34s %10s\n' "pair ib_write_bw (B -> A, same run)" "$(fmt "$(pbw "$OUT/pair-b-ib_write_bw.txt")")"
  fi
  if [ ${#FAILS[@]} -eq 0 ]; then echo "PASS"; else printf 'FAIL: %s\n' "${FAILS[@]}"; fi
} | tee "$OUT/summary.txt"
[ ${#FAILS[@]} -eq 0 ]
