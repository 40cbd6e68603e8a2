#!/usr/bin/env bash
# rdma-stage.sh: the RDMA CI stage. Builds blitx-verbs, blitx-transport-rdma
# and blit on the host and runs their tests for real on Soft-RoCE (rdma_rxe) in
# throw-away qemu VMs:
#
#   1. host: apt build deps (only if missing), release build of the test
#      binaries of both crates and examples/rdma_bench, and of blit
#      (blitx-cli); run the tests on the host, where there is no RDMA: every
#      hardware test (the verbs crate's loopback tests and the transport's
#      conformance suite) must report SKIPPED with a typed reason, the
#      binaries must not need libibverbs (DT_NEEDED guard), and a missing
#      libibverbs must give LibraryMissing (rdma_bench exits 77 with it).
#      Generates the blit test tree (a tar in the out dir).
#   2. one VM (ci/rxe/rxe-vm, rxe0 loopback, 2 GiB): all test binaries with
#      BLIT_RDMA_REQUIRE=1 (skipping is a failure there; this runs the verbs
#      loopback tests, among them a 64 MiB busy-poll and an event-mode stream
#      of WRITE_WITH_IMM from posted pool leases, and the transport
#      conformance suite with 1 and 2 QPs), the verbs crate's MemlockTooLow
#      test without CAP_IPC_LOCK, and the throughput comparison in
#      one VM run: the transport alone (rdma_bench, 256 MiB of 1 MiB frames,
#      busy-poll and event CQs) and ib_write_bw -s 1048576 -n 256, each with
#      its CPU time. Then blit end to end in the same boot: `blit daemon` on
#      10.77.0.1:9031, the mixed tree pushed with --transport rdma, pulled
#      back with --transport rdma and pushed with --transport auto (must pick
#      rdma), each copy checked with diff -r --no-dereference and a sorted
#      manifest (type, path, size, mode, owner, mtime in ns, link target; for
#      directories too); --transport rdma against a --no-rdma daemon must exit
#      3 and auto must pick tcp there. Last, the benchmark: a 256 MiB file on
#      /dev/shm pushed by blit over rdma (4M and 1M chunks; 4M once more with
#      --qps 1, with --rdma-frame-checksums and with --rdma-cq event) and tcp,
#      next to ib_write_bw at the same message sizes (4M also with -q 2, as
#      blit uses two QPs by default), with MiB/s, client + daemon CPU
#      and the RDMA counters (WRs/MiB, payload copies) from both sides' logs,
#      and once as a memory session (--mem 256M: generated, verified,
#      discarded), and a memory push and pull at --bwlimit 20M that must land
#      within 5 % of 20 MB/s (paced over rdma). Then --io direct: the file pushed over rdma into an ext4 on
#      a loop device and pulled back into it; no payload copy, nothing of the
#      written files in the page cache (fincore), the bytes equal.
#   3. two VMs (ci/rxe/rxe-pair, two rxe devices on a private link):
#      ib_write_bw A <- B (reference). Then blit: daemon in A (10.77.0.1:9031),
#      B pushes the tree with --transport rdma (A verifies the copy) and pulls
#      it back (B verifies), so local/remote GID, rkey and address cannot be
#      mixed up between two devices.
#
# usage: ci/rdma-stage.sh [--out DIR] [--no-pair] [--no-build] [--no-blit | --blit-only]
#   --out DIR    logs and summary (default: <cargo target dir>/rdma-stage)
#   --no-pair    skip step 3
#   --no-build   reuse the binaries of the last build
#   --no-blit    leave out the blit end-to-end checks and benchmark
#   --blit-only  only the blit parts (build blit, tree, VM checks + benchmark,
#                pair checks); no verbs/transport tests or host checks
# Exit status: 0 when every check passed. The VMs' guest commands are this
# script again (--guest-loopback, --guest-pair-a, --guest-pair-b).
# Environment: RXE_VM_TIMEOUT (per VM run, default here 420 s) and the other
# RXE_VM_* variables of ci/rxe/rxe-vm; CARGO_TARGET_DIR as usual.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/.." && pwd -P)
SELF=$HERE/rdma-stage.sh
PKGS=(-p blitx-verbs -p blitx-transport-rdma)
MSG_BYTES=1048576          # transport chunk = perftest message size
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

# busy_jiffies, perftest_cpu, bench_file, blit_daemon_start (shared with bench/rdma-ab.sh)
# shellcheck source=rxe/guest-bench.sh
. "$HERE/rxe/guest-bench.sh"

# timing: `section NAME` prints "== NAME" and, first, how long the previous section took
SECTION='' SECTION_T=''
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
section() {
  [ -n "$SECTION" ] && echo "   [$SECTION: $(since "$SECTION_T") s]"
  SECTION=$1 SECTION_T=$(now)
  [ -n "$1" ] && echo "== $1"
  return 0
}

# --- blit end to end (guest side) ---------------------------------------------
# The tree comes from the host (blit-tree.tar + blit-tree.manifest in OUT, made by
# gen_tree below); the manifest lists type, path, size, mode, owner, mtime (ns)
# and link target of every entry, directories included (their size is left out:
# it is filesystem-specific).
manifest() {  # DIR
  ( cd "$1" && find . \( -type d -printf 'd %p - %m %U:%G %T@\n' \) \
      -o -printf '%y %p %s %m %U:%G %T@ %l\n' ) | LC_ALL=C sort
}

verify_copy() {  # SRC DST LABEL: contents (diff -r --no-dereference) and metadata (manifest)
  local src=$1 dst=$2 label=$3 rc=0 v=$OUT/verify-$3
  if [ ! -d "$dst" ]; then echo "FAIL: $label: $dst does not exist"; return 1; fi
  if ! diff -r --no-dereference "$src" "$dst" > "$v.diff" 2>&1; then
    echo "FAIL: $label: contents differ (diff -r --no-dereference $src $dst):"; head -20 "$v.diff"; rc=1
  fi
  manifest "$src" > "$v.src-manifest"
  manifest "$dst" > "$v.dst-manifest"
  if ! diff "$v.src-manifest" "$v.dst-manifest" > "$v.manifest-diff"; then
    echo "FAIL: $label: metadata differs (type path size mode owner mtime link; < source, > copy):"
    head -20 "$v.manifest-diff"; rc=1
  fi
  [ "$rc" = 0 ] && echo "ok: $label: $(wc -l < "$v.src-manifest") entries identical (content, type, size, mode, owner, mtime, link)"
  return "$rc"
}

extract_tree() {  # DIR: the host's tree, checked against the host's manifest
  rm -rf "$1" && mkdir -p "$1" && tar -C "$1" -xpf "$OUT/blit-tree.tar" || { echo "FAIL: cannot extract the tree"; return 1; }
  manifest "$1" > "$1.manifest"
  cmp -s "$1.manifest" "$OUT/blit-tree.manifest" \
    || { echo "FAIL: the extracted tree differs from the host's manifest"; diff "$OUT/blit-tree.manifest" "$1.manifest" | head; return 1; }
  echo "tree: $(wc -l < "$1.manifest") entries, $(du -sm "$1" | cut -f1) MiB in $1"
}

strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }
json_str() { sed -n "s/^ *\"$2\": *\"\\([^\"]*\\)\".*/\\1/p" "$1" | head -1; }
json_num() { sed -n "s/^ *\"$2\": *\\([0-9.eE+-]*\\).*/\\1/p" "$1" | head -1; }

blit_xfer() {  # LABEL WANT_TRANSPORT XFER_ARGS...: exit 0, the transport wanted, no file errors
  local label=$1 want=$2 rc; shift 2
  local j=$OUT/blit-$label.json
  RUST_LOG=info NO_COLOR=1 /usr/bin/time -f 'real %e user %U sys %S' -o "$OUT/blit-$label.time" \
    timeout 300 "$STAGE_BLIT" xfer "$@" --json --no-progress > "$j" 2> "$OUT/blit-$label.log"
  rc=$?
  if [ "$rc" != 0 ]; then
    echo "FAIL: $label: blit xfer $* exited $rc"; strip_ansi < "$OUT/blit-$label.log" | tail -8; return 1
  fi
  local got errs
  got=$(json_str "$j" transport) errs=$(json_num "$j" error_count)
  if [ "$got" != "$want" ] || [ "$errs" != 0 ] || ! grep -q '"ok": true' "$j"; then
    echo "FAIL: $label: transport '$got' (wanted $want), error_count '$errs'"; cat "$j"; return 1
  fi
  awk -v l="$label" -v t="$got" -v s="$(json_num "$j" streams)" -v f="$(json_num "$j" files)" \
      -v b="$(json_num "$j" bytes)" -v sec="$(json_num "$j" seconds)" 'BEGIN {
    printf "ok: %s: transport %s (%d stream/QP), %d files, %.1f MiB in %.2f s = %.1f MiB/s\n",
           l, t, s, f, b / 1048576, sec, (sec > 0 ? b / 1048576 / sec : 0) }'
}

blit_paced() {  # LABEL XFER_ARGS...: an rdma transfer at --bwlimit 20M lands within 5 % of 20 MB/s
  local label=$1; shift
  blit_xfer "$label" rdma "$@" --transport rdma --bwlimit 20M || return 1
  local j=$OUT/blit-$label.json
  awk -v l="$label" -v b="$(json_num "$j" bytes_moved)" -v sec="$(json_num "$j" seconds)" 'BEGIN {
    r = (sec > 0 ? b / sec : 0); d = 100 * (r / 20e6 - 1)
    printf "%s: %s: %.2f MB/s at --bwlimit 20M (%+.1f %%)\n", (d < -5 || d > 5 ? "FAIL" : "ok"), l, r / 1e6, d
    exit (d < -5 || d > 5) }'
}

daemon_start() {  # ROOT ADDR LOG [ARGS...]: background blit daemon, DPID; waits for its listener
  # The checks compare owners too: this lab's daemon takes them from its (trusted) clients,
  # which a root daemon only does when told (docs/security.md).
  local root=$1 addr=$2 logf=$3; shift 3
  blit_daemon_start "$STAGE_BLIT" "$root" "$addr" "$logf" --allow-owners "$@"
}
daemon_stop() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; return 0; }
RXE_HW=/sys/class/infiniband/rxe0/ports/1/hw_counters
rxe_hw() { cat "$RXE_HW/completer_retry_err" "$RXE_HW/duplicate_request" 2>/dev/null | xargs; }  # "retries duplicates"
proc_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }  # utime + stime, all threads

counters_of() {  # LOGFILE...: the "RDMA session counters" lines
  cat "$@" 2>/dev/null | strip_ansi | grep 'RDMA session counters'
}

blit_bench() {  # LABEL WANT_TRANSPORT XFER_ARGS...: push /dev/shm/blit-bench (256 MiB) with CPU time and counters
  local label=$1 want=$2 rc=0; shift 2
  local dst=/dev/shm/blit-root/bench-$label res=$OUT/blit-bench-$label.txt dl c0 c1 b0 b1 h0 h1 n
  local src=/dev/shm/blit-bench mem=0 a
  for a in "$@"; do [ "$a" = --mem ] && mem=1 && src=-; done   # generated data, discarded by the daemon
  rm -rf "$dst"
  dl=$(wc -l < "$OUT/blit-daemon.log")
  c0=$(proc_ticks "$DPID") b0=$(busy_jiffies) h0=$(rxe_hw)
  blit_xfer "bench-$label" "$want" "$src" "blit://$RXE_VM_IP:9031/bench-$label" "$@" || rc=1
  if [ "$want" = rdma ]; then  # the daemon logs its counters when its session ends
    for n in $(seq 50); do tail -n +$((dl + 1)) "$OUT/blit-daemon.log" | grep -q 'RDMA session counters' && break; sleep 0.1; done
  fi
  c1=$(proc_ticks "$DPID") b1=$(busy_jiffies) h1=$(rxe_hw)
  if [ "$mem" = 1 ]; then
    [ ! -e "$dst" ] || { echo "FAIL: $label: a memory session created $dst"; rc=1; }
  else
    cmp -s /dev/shm/blit-bench/big.bin "$dst/big.bin" || { echo "FAIL: $label: the copy differs"; rc=1; }
  fi
  { tail -n +$((dl + 1)) "$OUT/blit-daemon.log" | counters_of; counters_of "$OUT/blit-bench-$label.log"; } \
    > "$OUT/blit-bench-$label.counters"
  rm -rf "$dst"
  local j=$OUT/blit-bench-$label.json
  awk -v label="$label" -v bytes="$(json_num "$j" bytes)" -v sec="$(json_num "$j" seconds)" \
      -v dticks=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v jif=$((b1 - b0)) -v rc="$rc" -v h0="$h0" -v h1="$h1" '
    FILENAME ~ /\.time$/ && /^real/ { wall = $2; cuser = $4; csys = $6 }
    FILENAME ~ /\.log$/ && /daemon accepted the session|data plane transport=/ {  # client log timestamps
      split(substr($1, 12, 15), hms, ":"); t = hms[1] * 3600 + hms[2] * 60 + hms[3]
      if ($0 ~ /accepted/) t_acc = t; else t_end = t }
    FILENAME ~ /\.counters$/ {
      sender = 0
      for (i = 1; i <= NF; i++) { split($i, kv, "="); gsub(/"/, "", kv[2]); c[kv[1]] += kv[2]; if (kv[1] == "role") { roles++; sender = (kv[2] == "sender") } }
      for (i = 1; i <= NF; i++) if (sender && $i ~ /^data_mib_per_s=/) { split($i, kv, "="); data = kv[2] }
    }
    END {
      gib = bytes / 1073741824; mib = bytes / 1048576; d = dticks / hz
      wrs = c["wr_write_imm"] + c["wr_send"] + c["wr_recv"]
      printf "RESULT {\"label\":\"%s\",\"ok\":%s,\"bytes\":%d,\"seconds\":%.3f,\"mib_per_s\":%.2f,\"wall_s\":%.2f,", label, (rc == 0 ? "true" : "false"), bytes, sec, (sec > 0 ? mib / sec : 0), wall
      if (t_acc != "" && t_end != "") { dt = t_end - t_acc; if (dt < 0) dt += 86400
        printf "\"after_accept_s\":%.3f,\"mib_per_s_after_accept\":%.2f,", dt, (dt > 0 ? mib / dt : 0) }
      printf "\"client_cpu_s\":%.2f,\"client_user_s\":%.2f,\"daemon_cpu_s\":%.2f,\"process_cpu_s_per_gib\":%.2f,\"machine_cpu_s_per_gib\":%.2f", cuser + csys, cuser, d, (gib > 0 ? (cuser + csys + d) / gib : 0), (gib > 0 ? jif / 100 / gib : 0)
      if (roles) printf ",\"counter_sides\":%d,\"wrs\":%d,\"wrs_per_mib\":%.2f,\"frames\":%d,\"payload_copy_bytes\":%d,\"file_read_bytes\":%d,\"send_waits\":%d,\"credit_messages\":%d", roles, wrs, (mib > 0 ? wrs / mib : 0), c["frames"] / 2, c["payload_copy_bytes"], c["file_read_bytes"], c["send_waits"], c["credit_messages"]
      if (data != "") printf ",\"data_mib_per_s\":%.2f", data  # sender: first data WRITE to finish
      split(h0, x, " "); split(h1, y, " ")
      if (h0 != "" && h1 != "") printf ",\"rxe_retries\":%d,\"rxe_duplicate_packets\":%d", y[1] - x[1], y[2] - x[2]
      printf "}\n"
    }' "$OUT/blit-bench-$label.time" "$OUT/blit-bench-$label.counters" "$OUT/blit-bench-$label.log" > "$res"
  # wrs_per_mib above is per MiB of file data (both sides' WRs); the counters' own payload_bytes include headers
  grep -q '^RESULT {' "$res" || { echo "FAIL: $label: no result"; rc=1; }
  if [ "$want" = rdma ]; then  # both sides' counters, and the transport copies no payload byte
    grep -q '"counter_sides":2,' "$res" || { echo "FAIL: $label: RDMA counters missing from a log"; rc=1; }
    grep -q '"payload_copy_bytes":0,' "$res" || { echo "FAIL: $label: payload bytes were copied"; rc=1; }
  fi
  sed 's/^RESULT //' "$res"
  return "$rc"
}

# --io direct over RDMA into a disk file system (issue 16, item 4): an ext4 on a loop device (its
# image in /dev/shm), a daemon exporting it; push the 256 MiB file with --io direct, then pull
# it back into the same file system. Each way: exit 0, both sides' counters with no payload
# byte copied, the written file absent from the page cache (fincore, before anything reads
# it), and the bytes equal.
guest_direct_io() {
  local rc=0 ip=$RXE_VM_IP mnt=/mnt/blit-disk img=/dev/shm/blit-disk.img d1=$DPID
  section "blit --io direct over rdma into ext4 (loop device): no payload copy, no page cache"
  modprobe loop 2>/dev/null || true
  mkdir -p "$mnt"
  if ! { truncate -s 640M "$img" && mkfs.ext4 -q -F "$img" && mount -o loop "$img" "$mnt"; }; then
    echo "FAIL: direct-io: cannot make the loop ext4"; rm -f "$img"; return 1
  fi
  mkdir -p "$mnt/root"
  daemon_start "$mnt/root" "$ip:9033" "$OUT/blit-daemon-direct.log" || { umount "$mnt"; rm -f "$img"; return 1; }
  check_direct() {  # LABEL FILE LOGS...: copies counted 0 on both sides, FILE not cached, equal
    local label=$1 f=$2 cached copies; shift 2
    copies=$(counters_of "$@" | grep -o 'payload_copy_bytes=[0-9]*' | awk -F= '{n++; s += $2} END {print n "," s}')
    cached=$(fincore --bytes --noheadings --raw --output RES "$f" 2>/dev/null || echo '?')
    echo "$label: counters from ${copies%,*} sides, payload bytes copied ${copies#*,}; $f in the page cache: $cached bytes"
    [ "$copies" = 2,0 ] || { echo "FAIL: $label: counters $copies (want 2 sides, 0 bytes copied)"; rc=1; }
    [ "$cached" = 0 ] || { echo "FAIL: $label: $cached bytes of $f in the page cache"; rc=1; }
    cmp -s /dev/shm/blit-bench/big.bin "$f" || { echo "FAIL: $label: the copy differs"; rc=1; }
  }
  wait_daemon_counters() {  # LINES: the daemon logs its counters as its session ends (up to 10 s)
    local n
    for n in $(seq 100); do
      tail -n +$(($1 + 1)) "$OUT/blit-daemon-direct.log" | grep -q 'RDMA session counters' && return 0
      sleep 0.1
    done
  }
  direct_leg() {  # LABEL SRC DST WRITTEN_FILE: one transfer with --io direct, then the checks
    local label=$1 src=$2 dst=$3 f=$4 dl
    sync; echo 3 > /proc/sys/vm/drop_caches
    dl=$(wc -l < "$OUT/blit-daemon-direct.log")
    blit_xfer "$label" rdma "$src" "$dst" --transport rdma --io direct || { rc=1; return; }
    wait_daemon_counters "$dl"
    tail -n +$((dl + 1)) "$OUT/blit-daemon-direct.log" > "$OUT/blit-daemon-$label.log"
    check_direct "$label" "$f" "$OUT/blit-$label.log" "$OUT/blit-daemon-$label.log"
  }
  direct_leg direct-push /dev/shm/blit-bench "blit://$ip:9033/d" "$mnt/root/d/big.bin"
  direct_leg direct-pull "blit://$ip:9033/d" "$mnt/pulled" "$mnt/pulled/big.bin"
  daemon_stop "$DPID"
  DPID=$d1
  umount "$mnt"; rm -f "$img"
  return "$rc"
}

guest_blit_loopback() {
  local rc=0 ip=$RXE_VM_IP
  section "blit: the test tree into /dev/shm"
  extract_tree /dev/shm/blit-src || return 1
  section "blit: daemon on $ip:9031 (rxe0), push/pull/auto with checks"
  daemon_start /dev/shm/blit-root "$ip:9031" "$OUT/blit-daemon.log" || return 1
  strip_ansi < "$OUT/blit-daemon.log" | grep -E 'RDMA device|listening' | sed 's/^[^ ]* *//'
  blit_xfer push-rdma rdma /dev/shm/blit-src "blit://$ip:9031/push-rdma" --transport rdma \
    && verify_copy /dev/shm/blit-src /dev/shm/blit-root/push-rdma push-rdma || rc=1
  blit_xfer pull-rdma rdma "blit://$ip:9031/push-rdma" /dev/shm/blit-pull-rdma --transport rdma \
    && verify_copy /dev/shm/blit-src /dev/shm/blit-pull-rdma pull-rdma || rc=1
  blit_xfer push-auto rdma /dev/shm/blit-src "blit://$ip:9031/push-auto" --transport auto \
    && verify_copy /dev/shm/blit-src /dev/shm/blit-root/push-auto push-auto || rc=1
  counters_of "$OUT/blit-push-rdma.log" "$OUT/blit-pull-rdma.log" | grep -q . \
    || { echo "FAIL: no RDMA session counters in the client logs"; rc=1; }
  rm -rf /dev/shm/blit-root/push-rdma /dev/shm/blit-root/push-auto /dev/shm/blit-pull-rdma
  section "blit: a --no-rdma daemon: --transport rdma must exit 3, auto must pick tcp"
  local d1=$DPID x
  if daemon_start /dev/shm/blit-root-tcp "$ip:9032" "$OUT/blit-daemon-nordma.log" --no-rdma; then
    RUST_LOG=warn timeout 120 "$STAGE_BLIT" xfer /dev/shm/blit-src/a "blit://$ip:9032/x" --transport rdma --no-progress \
      > "$OUT/blit-nordma-rdma.log" 2>&1
    x=$?
    if [ "$x" = 3 ]; then echo "ok: --transport rdma against a --no-rdma daemon: exit 3: $(tail -1 "$OUT/blit-nordma-rdma.log")"
    else echo "FAIL: --transport rdma against a --no-rdma daemon exited $x, expected 3"; tail -5 "$OUT/blit-nordma-rdma.log"; rc=1; fi
    blit_xfer nordma-auto tcp /dev/shm/blit-src/a "blit://$ip:9032/a" --transport auto \
      && verify_copy /dev/shm/blit-src/a /dev/shm/blit-root-tcp/a nordma-auto || rc=1
    daemon_stop "$DPID"
  else
    rc=1
  fi
  DPID=$d1
  rm -rf /dev/shm/blit-root-tcp

  section "blit benchmark: 256 MiB file on /dev/shm; blit rdma (4M, 1M chunks) and tcp, ib_write_bw (4M, 1M)"
  bench_file /dev/shm/blit-bench/big.bin
  touch -d @1700000000.123456789 /dev/shm/blit-bench/big.bin
  echo "guest load before: $(cat /proc/loadavg)"
  section "ib_write_bw -s 4194304 -n 64 (256 MiB) with CPU time"
  x=$(rxe_hw)
  perftest_cpu 4194304 64 "$OUT/blit-ib_write_bw-4M.txt" 18800 \
    || echo "WARN: ib_write_bw 4M failed (reference only)"
  echo "rxe retries / duplicate packets (all attempts): $x -> $(rxe_hw)"
  section "blit push --transport rdma (chunk 4M, default)"
  blit_bench rdma-4M rdma --transport rdma || rc=1
  # ib_write_bw varies by 10-20% between boots and within one; a second run right after
  # brackets blit's: the 4M ratios below are against the mean of the two.
  section "ib_write_bw -s 4194304 -n 64 again, after blit rdma-4M"
  x=$(rxe_hw)
  perftest_cpu 4194304 64 "$OUT/blit-ib_write_bw-4M-after.txt" 18850 \
    || echo "WARN: ib_write_bw 4M (after) failed (reference only)"
  echo "rxe retries / duplicate packets (all attempts): $x -> $(rxe_hw)"
  # blit stripes over 2 QPs by default; perftest's -q 2 is the like-for-like reference (one
  # thread posts both of its QPs), and blit --qps 1 the one-QP comparison
  section "ib_write_bw -s 4194304 -n 64 -q 2 (two QPs)"
  x=$(rxe_hw)
  perftest_cpu 4194304 64 "$OUT/blit-ib_write_bw-4M-q2.txt" 18870 -q 2 \
    || echo "WARN: ib_write_bw 4M -q 2 failed (reference only)"
  echo "rxe retries / duplicate packets (all attempts): $x -> $(rxe_hw)"
  section "blit push --transport rdma --qps 1 (chunk 4M, one QP)"
  blit_bench rdma-4M-q1 rdma --transport rdma --qps 1 || rc=1
  section "blit push --transport rdma --rdma-frame-checksums (chunk 4M; xxh3 per chunk as over TCP)"
  blit_bench rdma-4M-sum rdma --transport rdma --rdma-frame-checksums || rc=1
  section "blit push --transport rdma --rdma-cq event (chunk 4M; completion channels, no busy-poll)"
  blit_bench rdma-4M-event rdma --transport rdma --rdma-cq event || rc=1
  section "blit push --transport rdma --chunk-size 1M"
  blit_bench rdma-1M rdma --transport rdma --chunk-size 1M || rc=1
  section "ib_write_bw -s 1048576 -n 256 (256 MiB) with CPU time"
  x=$(rxe_hw)
  perftest_cpu 1048576 256 "$OUT/blit-ib_write_bw-1M.txt" 18900 \
    || echo "WARN: ib_write_bw 1M failed (reference only)"
  echo "rxe retries / duplicate packets (all attempts): $x -> $(rxe_hw)"
  section "blit push --transport tcp (chunk 4M, daemon's default streams)"
  blit_bench tcp tcp --transport tcp || rc=1
  section "blit push --transport rdma --mem 256M (generated data, verified and discarded: no file on either side)"
  blit_bench rdma-4M-mem rdma --transport rdma --mem 256M || rc=1
  section "blit --bwlimit 20M over rdma, --mem 256M push and pull (~13 s each): within 5 % of 20 MB/s"
  blit_paced rdma-bwlimit-push --mem 256M - "blit://$RXE_VM_IP:9031/bwlimit" || rc=1
  blit_paced rdma-bwlimit-pull --mem 256M "blit://$RXE_VM_IP:9031/bwlimit" - || rc=1
  echo "guest load after: $(cat /proc/loadavg)"
  section ""
  daemon_stop "$DPID"
  guest_direct_io || rc=1
  rm -rf /dev/shm/blit-bench /dev/shm/blit-root /dev/shm/blit-src
  return "$rc"
}

guest_loopback() {
  set +e -o pipefail
  local out=$1 rc=0 t
  OUT=$out
  export BLIT_RDMA_REQUIRE=1
  echo "== $(uname -r), $(nproc) vCPU, $(awk '/MemTotal/{printf "%d MiB", $2 / 1024}' /proc/meminfo), device ${RXE_VM_DEV:-?}"
  if [ "${STAGE_BLIT_ONLY:-0}" != 1 ]; then
    section "discover"
    "$STAGE_LOOPBACK" --exact discover_lists_ports_gids_and_a_chosen_index --nocapture \
      > "$out/discover.txt" 2>&1 || { echo "FAIL: discover"; rc=1; }
    grep -E '"(name|state|active_mtu|gid|gid_type|chosen_gid_index|netdev)"' "$out/discover.txt"
    for t in $STAGE_TESTS; do
      section "$(basename "$t")"
      "$t" --test-threads=1 2>&1 | tee "$out/$(basename "$t").log" \
        | grep -E '^test |test result|SKIPPED|panicked|MiB/s|conformance rdma' \
        || { echo "FAIL: $(basename "$t")"; rc=1; }
    done
    section "MemlockTooLow: a 16 MiB region under a 1 MiB limit, without CAP_IPC_LOCK"
    setpriv --bounding-set=-ipc_lock --inh-caps=-ipc_lock -- \
        "$STAGE_MEMLOCK" --test-threads=1 --nocapture > "$out/memlock.txt" 2>&1 \
      && grep 'memlock: MemlockTooLow' "$out/memlock.txt" || { cat "$out/memlock.txt"; echo "FAIL: memlock"; rc=1; }
    section "ib_write_bw -s $MSG_BYTES -n 64 (same VM run, reference)"
    if perftest_loopback "$MSG_BYTES" 64 "$out/ib_write_bw-loopback.txt"; then
      grep -E '^ *#bytes|^ *[0-9]+ +[0-9]+ ' "$out/ib_write_bw-loopback.txt"
    else
      echo "WARN: ib_write_bw failed (reference only; see ib_write_bw-loopback.txt)"
    fi
    section "rdma_bench: the transport alone, $BENCH_MIB MiB of $MSG_BYTES-byte frames, busy-poll CQs"
    "$STAGE_BENCH" --total-mib "$BENCH_MIB" --chunk-kib $((MSG_BYTES >> 10)) > "$out/bench-busy.txt" 2>&1 \
      || { echo "FAIL: rdma_bench busy"; rc=1; }
    grep -v '^RESULT' "$out/bench-busy.txt"
    section "rdma_bench: event-mode CQs"
    "$STAGE_BENCH" --total-mib "$BENCH_MIB" --chunk-kib $((MSG_BYTES >> 10)) --cq-mode event \
      > "$out/bench-event.txt" 2>&1 || { echo "FAIL: rdma_bench event"; rc=1; }
    grep -v '^RESULT' "$out/bench-event.txt"
    section "ib_write_bw -s $MSG_BYTES -n $BENCH_MIB with CPU time (same VM run)"
    if perftest_cpu "$MSG_BYTES" "$BENCH_MIB" "$out/ib_write_bw-bench.txt"; then
      grep -E '^ *#bytes|^ *[0-9]+ +[0-9]+ ' "$out/ib_write_bw-bench.txt"
    else
      echo "WARN: ib_write_bw failed (reference only; see ib_write_bw-bench.txt)"
    fi
  fi
  if [ -n "${STAGE_BLIT:-}" ]; then
    guest_blit_loopback || { echo "FAIL: blit end to end (loopback)"; rc=1; }
  fi
  section ""
  return "$rc"
}

pair_blit_a() {  # daemon side, 10.77.0.1
  local rc=0
  section "blit: daemon in A on $RXE_VM_IP:9031"
  extract_tree /dev/shm/blit-src || rc=1
  if daemon_start /dev/shm/blit-root "$RXE_VM_IP:9031" "$OUT/pair-a-blit-daemon.log"; then
    "$HERE/rxe/pair-sync" listen 9031
  else
    "$HERE/rxe/pair-sync" signal port-9031   # let B fail at once
    return 1
  fi
  section "blit: wait for B's push, verify it in A"
  "$HERE/rxe/pair-sync" wait blit-pushed 300 || rc=1
  verify_copy /dev/shm/blit-src /dev/shm/blit-root/push pair-push || rc=1
  "$HERE/rxe/pair-sync" signal blit-push-verified
  section "blit: serve B's pull"
  "$HERE/rxe/pair-sync" wait blit-pulled 300 || rc=1
  daemon_stop "$DPID"
  strip_ansi < "$OUT/pair-a-blit-daemon.log" | grep -E 'session opened|accepted|transport:|RDMA session counters' | sed 's/^[^ ]* *//'
  section ""
  return "$rc"
}

pair_blit_b() {  # client side, 10.77.0.2
  local rc=0
  section "blit: client in B; push to A with --transport rdma"
  extract_tree /dev/shm/blit-src || rc=1
  "$HERE/rxe/pair-sync" peer-listen 9031 || return 1
  blit_xfer pair-push rdma /dev/shm/blit-src "blit://$RXE_PEER_IP:9031/push" --transport rdma || rc=1
  "$HERE/rxe/pair-sync" signal blit-pushed
  "$HERE/rxe/pair-sync" wait blit-push-verified 300 || rc=1
  section "blit: pull back from A with --transport rdma, verify in B"
  blit_xfer pair-pull rdma "blit://$RXE_PEER_IP:9031/push" /dev/shm/blit-pull --transport rdma \
    && verify_copy /dev/shm/blit-src /dev/shm/blit-pull pair-pull || rc=1
  "$HERE/rxe/pair-sync" signal blit-pulled
  counters_of "$OUT/blit-pair-push.log" "$OUT/blit-pair-pull.log" | sed 's/^[^ ]* *//'
  section ""
  return "$rc"
}

guest_pair_a() {  # receiver side, 10.77.0.1
  set +e -o pipefail
  local out=$1 rc=0
  OUT=$out
  export BLIT_RDMA_REQUIRE=1
  if [ "${STAGE_BLIT_ONLY:-0}" != 1 ]; then
    ib_write_bw -d rxe0 -F -p 18700 -s "$MSG_BYTES" -n 32 > "$out/pair-a-ib_write_bw.txt" 2>&1 &
    local pid=$!
    "$HERE/rxe/pair-sync" listen 18700
    wait "$pid" || echo "WARN: ib_write_bw server failed (reference only)"
  fi
  if [ -n "${STAGE_BLIT:-}" ]; then
    pair_blit_a || { echo "FAIL: blit in the pair (A)"; rc=1; }
  fi
  return "$rc"
}

guest_pair_b() {  # sender side, 10.77.0.2
  set +e -o pipefail
  local out=$1 rc=0
  OUT=$out
  export BLIT_RDMA_REQUIRE=1
  if [ "${STAGE_BLIT_ONLY:-0}" != 1 ]; then
    if "$HERE/rxe/pair-sync" peer-listen 18700; then
      ib_write_bw -d rxe0 -F -p 18700 -s "$MSG_BYTES" -n 32 "$RXE_PEER_IP" > "$out/pair-b-ib_write_bw.txt" 2>&1 \
        || echo "WARN: ib_write_bw client failed (reference only)"
      grep -E '^ *#bytes|^ *[0-9]+ +[0-9]+ ' "$out/pair-b-ib_write_bw.txt"
    fi
  fi
  if [ -n "${STAGE_BLIT:-}" ]; then
    pair_blit_b || { echo "FAIL: blit in the pair (B)"; rc=1; }
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
OUT= PAIR=1 BUILD=1 BLIT=1 BLIT_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --no-pair) PAIR=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --no-blit) BLIT=0; shift ;;
    --blit-only) BLIT_ONLY=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
[ "$BLIT" = 1 ] || [ "$BLIT_ONLY" = 0 ] || die "--no-blit and --blit-only exclude each other"
export RXE_VM_TIMEOUT=${RXE_VM_TIMEOUT:-420}
T0=$(date +%s)
STEP='' STEP_T0=$T0 STEPS=()
step() {  # NAME: log the time the previous host step took, start NAME
  local t; t=$(date +%s)
  if [ -n "$STEP" ]; then STEPS+=("$(printf '%4d s  %s' $((t - STEP_T0)) "$STEP")"); log "[$STEP: $((t - STEP_T0)) s]"; fi
  STEP=$1 STEP_T0=$t
  [ -z "$1" ] || log "$1"
}

# build dependencies (bindgen needs libclang + clang's headers; rdma-sys probes
# libibverbs and librdmacm with pkg-config). Never removes a package.
step "host: build dependencies"
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
if [ "$BUILD" = 1 ] && [ "$BLIT_ONLY" = 0 ]; then
  step "host: build ${PKGS[*]} (release): tests and examples"
  cargo build --release "${PKGS[@]}" --examples --message-format=json 2>"$OUT/build.log" \
    | grep -oE '"executable":"[^"]*/rdma_bench"' | cut -d'"' -f4 > "$LIST.example" \
    || { tail -30 "$OUT/build.log" >&2; die "build failed"; }
  cargo test --release "${PKGS[@]}" --no-run --message-format=json 2>>"$OUT/build.log" \
    | grep '"test":true' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 > "$LIST.tests" \
    || { tail -30 "$OUT/build.log" >&2; die "test build failed"; }
  cat "$LIST.example" "$LIST.tests" > "$LIST"
fi
if [ "$BUILD" = 1 ] && [ "$BLIT" = 1 ]; then
  step "host: build blit (blitx-cli, release)"
  cargo build --release -p blitx-cli --message-format=json 2>"$OUT/build-blit.log" \
    | grep -oE '"executable":"[^"]*/blit"' | cut -d'"' -f4 > "$OUT/blit-binary.txt" \
    || { cargo build --release -p blitx-cli 2>&1 | grep -A8 -E '^(error|warning: unused)' | head -40 >&2; die "blit build failed"; }
fi
if [ "$BLIT_ONLY" = 0 ]; then
  [ -s "$LIST" ] || die "no binaries listed in $LIST (run without --no-build)"
  STAGE_BENCH=$(grep '/rdma_bench$' "$LIST" | head -1)
  STAGE_LOOPBACK=$(grep '/loopback-[0-9a-f]*$' "$LIST" | head -1)
  STAGE_MEMLOCK=$(grep '/memlock-[0-9a-f]*$' "$LIST" | head -1)
  STAGE_TESTS=$(grep -vE '/rdma_bench$' "$LIST" | xargs)
  [ -x "$STAGE_BENCH" ] || die "rdma_bench not built"
  [ -x "$STAGE_LOOPBACK" ] || die "the verbs loopback tests were not built"
  [ -x "$STAGE_MEMLOCK" ] || die "the verbs memlock test was not built"
  export STAGE_BENCH STAGE_LOOPBACK STAGE_MEMLOCK STAGE_TESTS
  log "binaries: $(xargs -n1 basename < "$LIST" | xargs)"
fi
STAGE_BLIT=
if [ "$BLIT" = 1 ]; then
  STAGE_BLIT=$(head -1 "$OUT/blit-binary.txt" 2>/dev/null || true)
  [ -n "$STAGE_BLIT" ] || STAGE_BLIT=$TARGET_DIR/release/blit   # --no-build into a new --out dir
  [ -x "$STAGE_BLIT" ] || die "blit not built (run without --no-build)"
  log "blit: $STAGE_BLIT"
fi
export STAGE_BLIT STAGE_BLIT_ONLY=$BLIT_ONLY

FAILS=()
fail() { FAILS+=("$1"); log "FAIL: $1"; }

# --- 1. host: no RDMA here, so typed skips; no libibverbs in DT_NEEDED -----
if [ "$BLIT_ONLY" = 0 ]; then
step "host: tests without RDMA (expect typed SKIPPED)"
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
  grep -q 'memlock: SKIPPED: no usable RDMA device: .*\[Unsupported' "$OUT"/host-memlock-*.log \
    || fail "host: the memlock test did not report a typed skip"
fi
set +e
BLIT_RDMA_LIBIBVERBS=/nonexistent/libibverbs.so.1 env -u BLIT_RDMA_REQUIRE "$STAGE_BENCH" \
  > "$OUT/host-library-missing.txt" 2>&1; rc=$?
set -e
[ "$rc" = 77 ] && grep -q '\[LibraryMissing' "$OUT/host-library-missing.txt" \
  || fail "host: missing libibverbs is not a typed error (rdma_bench exit $rc)"
grep -q 'cannot load /nonexistent/libibverbs.so.1' "$OUT/host-library-missing.txt" \
  || fail "host: LibraryMissing message"
# the real thing: libibverbs.so.1 unreadable (bind-mounted over with /dev/null
# in a private mount namespace); needs root for unshare -m
LIBV=$(readlink -f "$(ldconfig -p | awk '/libibverbs\.so\.1 /{print $NF; exit}')" 2>/dev/null || true)
if [ "$(id -u)" = 0 ] && [ -n "$LIBV" ] && unshare -m true 2>/dev/null; then
  set +e
  unshare -m sh -c 'mount --bind /dev/null "$1" && shift && exec "$@"' sh "$LIBV" \
    env -u BLIT_RDMA_REQUIRE "$STAGE_BENCH" > "$OUT/host-no-libibverbs.txt" 2>&1; rc=$?
  set -e
  cat "$OUT/host-no-libibverbs.txt" >&2
  [ "$rc" = 77 ] && grep -q '\[LibraryMissing' "$OUT/host-no-libibverbs.txt" \
    || fail "host: rdma_bench with libibverbs hidden should skip with LibraryMissing (got $rc)"
else
  log "not checked: hiding libibverbs needs root, unshare -m and an installed libibverbs.so.1"
fi
for b in $(cat "$LIST"); do
  if readelf -d "$b" | grep -E 'NEEDED.*(ibverbs|rdmacm)'; then fail "host: $(basename "$b") needs libibverbs"; fi
done
fi
if [ "$BLIT" = 1 ] && readelf -d "$STAGE_BLIT" | grep -E 'NEEDED.*(ibverbs|rdmacm)'; then
  fail "host: blit needs libibverbs (it must dlopen it)"
fi

# --- the blit test tree: generated here, extracted in every guest ---------------
gen_tree() {  # DIR: ~54 MiB: 4 files of 4-16 MiB (one not chunk-aligned), 300 small files of
  # 0-64 KiB (some empty) in nested dirs, an empty file and dir, three symlinks (to a file,
  # to a dir, dangling), a read-only dir, a file owned by 1234:5678, varied modes, ns mtimes
  local d=$1 i sz f t pool dirs modes
  rm -rf "$d"; mkdir -p "$d"
  mkdir -p "$d/big" "$d/a/b/c/d" "$d/e/f" "$d/sp ace/x" "$d/empty-dir" "$d/g" "$d/ro"
  head -c $((4 << 20)) /dev/urandom > "$d/big/four-mib"
  head -c $((9 << 20 | 12345)) /dev/urandom > "$d/big/nine-mib-odd"
  head -c $((16 << 20)) /dev/urandom > "$d/big/sixteen-mib"
  head -c $((5 << 20)) /dev/urandom > "$d/e/f/five-mib"
  pool=$d/.pool; head -c $((2 << 20)) /dev/urandom > "$pool"
  dirs=(. a a/b a/b/c a/b/c/d e e/f "sp ace" "sp ace/x" g ro)
  modes=(644 600 640 755 444 664 700 604)
  for i in $(seq 0 299); do
    sz=$(( (i * 7919 + 13) % 65537 ))
    [ $((i % 50)) = 7 ] && sz=0
    f="$d/${dirs[$((i % ${#dirs[@]}))]}/small-$i.dat"
    if [ "$sz" = 0 ]; then : > "$f"   # (tail -c 0 would not read its input: SIGPIPE)
    else head -c $(( (i * 4099) % (1 << 20) + sz )) "$pool" | tail -c "$sz" > "$f"; fi
    chmod "${modes[$((i % ${#modes[@]}))]}" "$f"
    touch -d "@$((1600000000 + i * 3607)).$(printf '%09d' $(( (i * 123456791) % 1000000000 )))" "$f"
  done
  rm -f "$pool"
  : > "$d/a/empty"; chmod 600 "$d/a/empty"
  echo owned > "$d/e/owned"; chown 1234:5678 "$d/e/owned" 2>/dev/null || true
  chmod 755 "$d/big/four-mib"; chmod 400 "$d/big/sixteen-mib"
  ln -s ../big/four-mib "$d/a/link-to-four-mib"
  ln -s "sp ace/x" "$d/link-to-dir"
  ln -s does/not/exist "$d/g/dangling"
  t=1650000000
  for f in "$d"/big/* "$d/e/f/five-mib" "$d/a/empty" "$d/e/owned"; do
    t=$((t + 86413)); touch -d "@$t.$(printf '%09d' $((t % 999999937)))" "$f"
  done
  touch -h -d @1660000000.111111111 "$d/a/link-to-four-mib"
  touch -h -d @1660000001.222222222 "$d/link-to-dir"
  touch -h -d @1660000002.333333333 "$d/g/dangling"
  chmod 750 "$d/a/b"; chmod 700 "$d/e/f"; chmod 775 "$d/sp ace"; chmod 711 "$d/g"; chmod 555 "$d/ro"
  i=0   # directory mtimes last, deepest first, the root included
  find "$d" -depth -type d > "$d.dirs"
  while IFS= read -r f; do
    i=$((i + 1)); touch -d "@$((1670000000 + i * 977)).$(printf '%09d' $((i * 98765431 % 1000000000)))" "$f"
  done < "$d.dirs"
  rm -f "$d.dirs"
}
manifest() {  # same as the guest's
  ( cd "$1" && find . \( -type d -printf 'd %p - %m %U:%G %T@\n' \) \
      -o -printf '%y %p %s %m %U:%G %T@ %l\n' ) | LC_ALL=C sort
}
if [ "$BLIT" = 1 ]; then
  step "host: blit test tree"
  gen_tree "$OUT/blit-tree"
  manifest "$OUT/blit-tree" > "$OUT/blit-tree.manifest"
  tar --format=posix -C "$OUT/blit-tree" -cf "$OUT/blit-tree.tar" .
  log "tree: $(wc -l < "$OUT/blit-tree.manifest") entries, $(du -sm "$OUT/blit-tree" | cut -f1) MiB"
  chmod -R u+w "$OUT/blit-tree"; rm -rf "$OUT/blit-tree"
fi

LOADS=()
hostload() { LOADS+=("$(printf '%-8s %s' "$1" "$(cut -d' ' -f1-3 /proc/loadavg)")"); log "host load $1: $(cat /proc/loadavg)"; }

# --- 2. one VM: rxe0 loopback ------------------------------------------------
VMMEM=()
[ "$BLIT" = 1 ] && VMMEM=(--mem 2048)   # /dev/shm (half of it) holds the 256 MiB file twice
what=(); [ "$BLIT_ONLY" = 0 ] && what+=("tests, memlock, ib_write_bw"); [ "$BLIT" = 1 ] && what+=("blit checks + benchmark")
step "VM: rxe0 loopback ($(IFS=';'; echo "${what[*]}" | sed 's/;/; /g'))"
hostload "vm start"
rm -f "$OUT"/blit-*.json "$OUT"/blit-*.log "$OUT"/blit-*.time "$OUT"/blit-bench-* "$OUT"/blit-ib_write_bw-* "$OUT"/verify-*
set +e
"$HERE/rxe/rxe-vm" "${VMMEM[@]}" --share "$OUT" -- "$SELF" --guest-loopback "$OUT" 2>&1 | tee "$OUT/loopback.log"
rc=${PIPESTATUS[0]}
set -e
hostload "vm end"
[ "$rc" = 0 ] || fail "VM loopback (exit $rc)"

# --- 3. two VMs: distinct devices ---------------------------------------------
if [ "$PAIR" = 1 ]; then
  step "VM pair: A 10.77.0.1 (server), B 10.77.0.2 (client)"
  hostload "pair start"
  rm -f "$OUT"/verify-pair-*
  set +e
  "$HERE/rxe/rxe-pair" --share "$OUT" -- "$SELF" --guest-pair-a "$OUT" -- "$SELF" --guest-pair-b "$OUT" \
    2>&1 | tee "$OUT/pair.log"
  rc=${PIPESTATUS[0]}
  set -e
  hostload "pair end"
  [ "$rc" = 0 ] || fail "VM pair (exit $rc)"
fi
step ""

# --- summary -------------------------------------------------------------------
bench() { grep -h '^RESULT ' "$1" 2>/dev/null | grep -o "\"$2\":[0-9.]*" | head -1 | cut -d: -f2; }
pbw() { awk '$1 ~ /^[0-9]+$/ && NF >= 4 {print $4; exit}' "$1" 2>/dev/null; }
fmt() { if [ -n "$1" ]; then printf '%.1f' "$1"; else printf -- '-'; fi; }
ibref() {  # SIZE: ib_write_bw MiB/s for the ratios (4M: the mean of the runs before and after)
  local a b; a=$(pbw "$OUT/blit-ib_write_bw-$1.txt"); b=$(pbw "$OUT/blit-ib_write_bw-$1-after.txt")
  if [ -n "$a" ] && [ -n "$b" ]; then awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", (a + b) / 2 }'; else printf '%s' "$a"; fi
}
fmt2() { if [ -n "$1" ]; then printf '%.2f' "$1"; else printf -- '-'; fi; }
pcpu() { grep -o '(\([0-9.]*\) s/GiB' "$1" 2>/dev/null | head -1 | tr -d '(' | cut -d' ' -f1; }   # ib_write_bw process CPU s/GiB
mcpu() { grep -o 'machine [0-9.]* s ([0-9.]* s/GiB' "$1" 2>/dev/null | head -1 | sed 's/.*(//; s/ .*//'; }   # ... machine
ratio() { if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; else printf -- '-'; fi; }
xmibs() { local j=$OUT/blit-$1.json; [ -s "$j" ] && awk -v b="$(json_num "$j" bytes)" -v s="$(json_num "$j" seconds)" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s }'; }
json_num() { sed -n "s/^ *\"$2\": *\\([0-9.eE+-]*\\).*/\\1/p" "$1" | head -1; }
{
  echo "RDMA stage summary ($(date -u +%Y-%m-%dT%H:%MZ), $(($(date +%s) - T0)) s wall)"
  echo "throughput in MiB/s (2^20, perftest's MB/sec); Soft-RoCE under qemu"
  if [ "$BLIT_ONLY" = 0 ]; then
    echo "message size $MSG_BYTES bytes"
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
      printf '%-34s %10s\n' "pair ib_write_bw (B -> A, same run)" "$(fmt "$(pbw "$OUT/pair-b-ib_write_bw.txt")")"
    fi
  fi
  if [ "$BLIT" = 1 ]; then
    echo "blit end to end (mixed tree, $(wc -l < "$OUT/blit-tree.manifest") entries; MiB/s from --json, setup included):"
    for c in push-rdma pull-rdma push-auto nordma-auto; do
      v=$OUT/verify-$c.manifest-diff
      printf '  %-32s %-5s %8s MiB/s  verified: %s\n' "loopback $c" "$(sed -n 's/^ *"transport": *"\([a-z]*\)".*/\1/p' "$OUT/blit-$c.json" 2>/dev/null | head -1)" \
        "$(fmt "$(xmibs "$c")")" "$([ -f "$v" ] && [ ! -s "$v" ] && ! [ -s "$OUT/verify-$c.diff" ] && echo yes || echo NO)"
    done
    if [ "$PAIR" = 1 ]; then
      for c in pair-push pair-pull; do
        v=$OUT/verify-$c.manifest-diff
        printf '  %-32s %-5s %8s MiB/s  verified: %s\n' "$([ "$c" = pair-push ] && echo 'pair push (B -> A)' || echo 'pair pull (A -> B)')" "$(sed -n 's/^ *"transport": *"\([a-z]*\)".*/\1/p' "$OUT/blit-$c.json" 2>/dev/null | head -1)" \
          "$(fmt "$(xmibs "$c")")" "$([ -f "$v" ] && [ ! -s "$v" ] && ! [ -s "$OUT/verify-$c.diff" ] && echo yes || echo NO)"
      done
    fi
    echo "blit benchmark, 256 MiB file on /dev/shm, one VM run; MiB/s from --json (whole session) and from the"
    echo "daemon's accept to the end; CPU s/GiB = client + daemon process user+sys (ib_write_bw: both processes),"
    echo "machine = busy time of all vCPUs; WRs/MiB and copies (payload bytes) from both sides' RDMA counters;"
    echo "data = the sender's data phase alone (first data WRITE posted to finish), as ib_write_bw counts its own:"
    printf '  %-19s %7s %9s %6s %10s %8s %8s %7s %6s %8s %6s %7s\n' run MiB/s "(accept)" "vs ib" "CPU s/GiB" machine WRs/MiB copies waits "rxe retr" data "vs ib"
    for r in rdma-4M:4M rdma-4M-q1:4M rdma-4M-sum:4M rdma-4M-event:4M rdma-1M:1M tcp: rdma-4M-mem:4M; do
      l=${r%%:*} sz=${r#*:} f=$OUT/blit-bench-${r%%:*}.txt
      ib=; [ -n "$sz" ] && ib=$(ibref "$sz")
      data=$(bench "$f" data_mib_per_s || true)
      printf '  %-19s %7s %9s %6s %10s %8s %8s %7s %6s %8s %6s %7s\n' "blit $l" "$(fmt "$(bench "$f" mib_per_s)")" \
        "$(fmt "$(bench "$f" mib_per_s_after_accept)")" \
        "$(ratio "$(bench "$f" mib_per_s)" "$ib")" "$(fmt "$(bench "$f" process_cpu_s_per_gib)")" \
        "$(fmt "$(bench "$f" machine_cpu_s_per_gib)")" "$(fmt2 "$(bench "$f" wrs_per_mib)")" \
        "$(bench "$f" payload_copy_bytes || true)" "$(bench "$f" send_waits || true)" "$(bench "$f" rxe_retries || true)" \
        "$(fmt "$data")" "$(ratio "$data" "$ib")"
    done
    for sz in 4M 4M-after 4M-q2 1M; do
      printf '  %-19s %7s %9s %6s %10s %8s\n' "ib_write_bw ${sz/-after/ (2)}" "$(fmt "$(pbw "$OUT/blit-ib_write_bw-$sz.txt")")" "" "" \
        "$(fmt "$(pcpu "$OUT/blit-ib_write_bw-$sz.txt.cpu")")" "$(fmt "$(mcpu "$OUT/blit-ib_write_bw-$sz.txt.cpu")")"
    done
    echo "  (vs ib: 4M rows against the mean of ib_write_bw 4M before and after blit rdma-4M: $(fmt "$(ibref 4M)") MiB/s)"
    grep -h '^guest load' "$OUT/loopback.log" 2>/dev/null | sed 's/^/  /'
  fi
  echo "host load averages (1/5/15 min):"; printf '  %s\n' "${LOADS[@]}"
  echo "step times:"; printf '  %s\n' "${STEPS[@]}"
  if [ ${#FAILS[@]} -eq 0 ]; then echo "PASS"; else printf 'FAIL: %s\n' "${FAILS[@]}"; fi
} | tee "$OUT/summary.txt"
[ ${#FAILS[@]} -eq 0 ]
