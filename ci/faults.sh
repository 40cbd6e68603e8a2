#!/usr/bin/env bash
# faults.sh: the fault-injection CI stage. Real faults against the release blit
# binary and a real `blit daemon`, each case ending in one line
#   CHECK faults <case> ok|FAIL [detail]
# and a Markdown table of what was tried and seen (docs/reliability.md, "Faults tried").
#
# Cases (all daemons and clients run in network namespaces this script creates:
# "lo" is the loopback of a private namespace, "pair" two namespaces joined by a
# veth pair, 10.99.0.1 = daemon, 10.99.0.2 = client; nothing reaches the host's network):
#   kill-client-push  SIGKILL mid-transfer of a 512 MiB file: the side that writes it (the
#   kill-daemon-push  daemon of a push, the client of a pull) once its temporary file holds
#   kill-client-pull  a seeded 60-85 %, the side that reads it once it has read a seeded
#   kill-daemon-pull  80-92 % (/proc/PID/io). Before the transfer an OLD
#                     file sits at the target path: after the kill it must still be there,
#                     byte for byte, and nothing but blit temporary files (.NAME.*.blit-tmp)
#                     may have appeared; a killed daemon must make the client fail with an
#                     error. Then the daemon is restarted (if killed) and the same command
#                     run again (--wait-lock): exit 0, identical target (cmp), no temporary
#                     file left. Its --json bytes_moved (and bytes_reused, once resume
#                     exists) are recorded; when bytes_reused is present and the target's
#                     temporary file held >= 60 % at the kill, the re-run must move <= 45 %
#                     of the file.
#   link-down         pair, tbf 400mbit on the client's veth, 256 MiB push; the link goes
#                     down for 3 s at a seeded 1-2 s. The push completes identical, or fails
#                     with an error on stderr and the old target intact; a re-run completes.
#   link-down-20s     the same with a 20 s outage, longer than --stall-timeout 5 on both
#                     ends: while the link is still down, the client must fail with exit 30
#                     (stalled) and the daemon end the session (< 10 s after the link went
#                     down); the old file intact, no temporary file.
#   loss-1pct         pair, iptables drops 1 % of the daemon's incoming packets (statistic
#                     match): a 256 MiB file and a 2,000-file tree, both identical.
#   disk-full         daemon root on a 64 MiB tmpfs holding an OLD 10 MiB target file; a
#                     100 MiB push over it must fail naming no space, leave the old file
#                     intact and no temporary file, and the daemon must serve the next push.
#   concurrent-8      8 pushes at once into 8 directories of one daemon (64 MiB + 200 small
#                     files each): all identical.
#   same-dir-2        2 pushes at once into the SAME directory: one succeeds, the other
#                     fails as "being written by another blit transfer" (or both succeed
#                     one after the other); the target equals one source entirely. Then
#                     both again with --wait-lock: both succeed, the target is one source.
#   vm-delay-50ms     (--vm only) ci/netem-stage.sh in the qemu VM pair with netem delay
#                     50ms, no loss: a 64 MiB file and 300 small files pushed and pulled back.
#
# usage: ci/faults.sh [--out DIR] [--cases "a b ..."] [--vm] [--keep]
#   --out DIR     results (faults.md, results.txt, logs/) (default: <target dir>/faults)
#   --cases LIST  run only these cases (names above)
#   --vm          also run vm-delay-50ms (boots two qemu guests: ~1 min with KVM)
#   --keep        keep the work directory under /dev/shm (data, daemon roots)
# Environment:
#   FAULTS_SEED   seed of the kill points and the link-down time (printed; default: from the
#                 clock). Data is random every run; the seed replays the faults.
#   BLIT          blit binary (default <target dir>/release/blit; built when missing)
#   FAULTS_CASE_TIMEOUT  limit per case in s (default 120)
#   FAULTS_TIMEOUT       limit of the whole run in s (default 330; CI's budget for the stage is
#                        6 min): a case gets what is left, cases that find < 20 s left FAIL as not run
#   RXE_VM_TIMEOUT       limit of the VM pair of vm-delay-50ms (default here 240)
#   FAULTS_SELFTEST_CORRUPT=1  damage one byte of a target just before a check of every case
#                        (vm-delay-50ms: NETEM_SELFTEST_CORRUPT): every case must then FAIL
# Needs root (network namespaces, tc, iptables, mount), iproute2, iptables, cmp.
# Exit status:
#   0  every case ok    2  usage    3  missing binary, tool or privilege
#   4  set-up (namespaces, test data)    7  a case failed (see the CHECK lines)
#   130 interrupted
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/.." && pwd -P)
SELF=$HERE/faults.sh
log() { echo "[faults] $*" >&2; }
die() { local rc=$1; shift; echo "[faults] error: $*" >&2; exit "$rc"; }

MIB=1048576
BIG_BYTES=$((512 * MIB))          # the kill cases' file
OLD_BYTES=$((8 * MIB))            # the OLD file at the target path before each kill case

# ---------------------------------------------------------------------------
# helpers of the cases (run in a child: bash faults.sh --case NAME)
# ---------------------------------------------------------------------------
# check CASE ok|FAIL DETAIL: the one verdict of a case
check() {
  local line="CHECK faults $1 $2${3:+ $3}"
  echo "$line"
  echo "$line" >> "$W/results.txt"
}
# row CASE FAULT INJECTED EXPECTED OBSERVED CHECK: one line of the results table
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$W/rows.tsv"; }
note() { echo "  [$CASE] $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
jnum() { { grep -o "\"$2\": *[0-9.eE+-]*" "$1" 2>/dev/null || true; } | head -1 | sed 's/.*: *//'; }
lasterr() { { grep -v '^[[:space:]]*$' "$1" 2>/dev/null || true; } | tail -1 | cut -c1-200 | tr '\t|' '  '; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", 100 * a / b }'; }

# remember every process started here, for the cleanup (by pid, never by name)
track() { echo "$1" >> "$W/pids"; }
# child_of PID: the (first) child of a `timeout` wrapper, i.e. blit itself
child_of() {
  local p=$1 c n=0
  while [ $n -lt 500 ]; do
    c=$(cut -d' ' -f1 "/proc/$p/task/$p/children" 2>/dev/null || true)
    if [ -n "$c" ]; then echo "$c"; return 0; fi
    kill -0 "$p" 2>/dev/null || return 1
    sleep 0.01; n=$((n + 1))
  done
  return 1
}

# daemon_start NS ADDR ROOT [FLAGS...]: sets DPID (blit) and DWRAP (its timeout wrapper)
DPORT=9100
daemon_start() {
  local ns=$1 addr=$2 root=$3 n=0 host=${2%:*} port=${2##*:}
  shift 3
  ip netns exec "$ns" timeout -s KILL "$CASE_T" "$BLIT" daemon --root "$root" --listen "$addr" \
    --no-rdma --stall-timeout 5 "$@" >> "$LOGS/$CASE-daemon.log" 2>&1 &
  DWRAP=$!; track "$DWRAP"
  DPID=$(child_of "$DWRAP") || { note "daemon did not start (logs/$CASE-daemon.log)"; return 1; }
  track "$DPID"
  until ip netns exec "$ns" bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; do
    n=$((n + 1))
    if [ $n -gt 200 ] || ! kill -0 "$DPID" 2>/dev/null; then
      note "daemon not listening on $addr (logs/$CASE-daemon.log)"; return 1
    fi
    sleep 0.05
  done
}

# xfer NAME NS SECS ARGS...: a blit client, synchronously; sets XRC and XSEC
xfer() {
  local name=$1 ns=$2 secs=$3 t0
  shift 3
  t0=$(now)
  XRC=0
  ip netns exec "$ns" timeout -k 5 "$secs" "$BLIT" xfer --json --no-progress --transport tcp "$@" \
    > "$LOGS/$name.json" 2> "$LOGS/$name.err" || XRC=$?
  XSEC=$(elapsed "$t0")
}
# xfer_bg NAME NS SECS ARGS...: the same in the background; sets CPID (blit) and CWRAP
xfer_bg() {
  local name=$1 ns=$2 secs=$3
  shift 3
  ip netns exec "$ns" timeout -k 5 "$secs" "$BLIT" xfer --json --no-progress --transport tcp "$@" \
    > "$LOGS/$name.json" 2> "$LOGS/$name.err" &
  CWRAP=$!; track "$CWRAP"
  CPID=$(child_of "$CWRAP") || CPID=
  [ -z "$CPID" ] || track "$CPID"
}
# wait_rc PID: its exit status in WRC (not in $(...): a subshell cannot wait for our children);
# stderr off: no "Killed" notices from the shell
wait_rc() { WRC=0; { wait "$1"; } 2>/dev/null || WRC=$?; }

# tmp_bytes DIR NAME: bytes allocated by the largest blit temporary file of NAME in DIR
tmp_bytes() {
  find "$1" -maxdepth 1 -name ".$2.*.blit-tmp" -printf '%b\n' 2>/dev/null \
    | awk 'BEGIN { m = 0 } $1 * 512 > m { m = $1 * 512 } END { print m }'
}
# leftovers DIR: temporary files anywhere below DIR
leftovers() { find "$1" -name '*.blit-tmp' 2>/dev/null | sed "s#^$1/##" | tr '\n' ' '; }
# unkept DIR: temporary files under DIR other than partial files kept for resuming, which a
# session that was given up leaves on purpose: `.NAME.0.N.blit-tmp` (named for no live process)
# with a journal (`user.blit.part`)
unkept() {
  local f
  find "$1" -name '*.blit-tmp' 2>/dev/null | while read -r f; do
    case "$(basename "$f")" in
      .*.0.[0-9]*.blit-tmp)
        getfattr --only-values -n user.blit.part "$f" > /dev/null 2>&1 && continue ;;
    esac
    printf '%s ' "${f#"$1"/}"
  done
}
# only_expected DIR NAME: names in DIR besides NAME and its temporary files
strangers() {
  find "$1" -mindepth 1 ! -name "$2" ! -name ".$2.*.blit-tmp" -printf '%P ' 2>/dev/null
}
same_tree() { diff -r --no-dereference "$1" "$2" > /dev/null 2>&1; }
# selftest FILE: with FAULTS_SELFTEST_CORRUPT=1, damage one byte of FILE (mtime kept) just
# before a check that must then fail: checks the checks
selftest() {
  [ "${FAULTS_SELFTEST_CORRUPT:-0}" = 1 ] && [ -f "$1" ] || return 0
  touch -r "$1" "$W/mtime-ref"
  printf 'X' | dd of="$1" bs=1 seek=1000 conv=notrunc status=none
  touch -r "$W/mtime-ref" "$1"
  note "self-test: damaged one byte of ${1#"$W"/}"
}

# gen_tree DIR N BYTES: N small files of BYTES each (one random stream, split), 10 per mille dirs
gen_small() {
  local dir=$1 n=$2 b=$3
  mkdir -p "$dir"
  head -c $((n * b)) /dev/urandom | (cd "$dir" && split -b "$b" -a 4 -d - f)
}

# the veth pair: daemon namespace A (10.99.0.1), client namespace B (10.99.0.2)
pair_up() {
  ip netns add "$NSA" && ip netns add "$NSB" || return 1
  echo "$NSA $NSB" >> "$W/netns"
  ip link add "$VA" netns "$NSA" type veth peer name "$VB" netns "$NSB" || return 1
  ip -n "$NSA" addr add 10.99.0.1/24 dev "$VA" && ip -n "$NSB" addr add 10.99.0.2/24 dev "$VB" || return 1
  ip -n "$NSA" link set lo up && ip -n "$NSB" link set lo up || return 1
  ip -n "$NSA" link set "$VA" up && ip -n "$NSB" link set "$VB" up
}
pair_down() { ip netns del "$NSA" 2>/dev/null || true; ip netns del "$NSB" 2>/dev/null || true; }
# tcp_retrans NS: TCP segments retransmitted in the namespace so far
tcp_retrans() {
  ip netns exec "$1" awk '/^Tcp:/ { if (!h) { for (k = 2; k <= NF; k++) c[$k] = k; h = 1 }
                                    else { print $c["RetransSegs"]; exit } }' /proc/net/snmp
}

case_cleanup() {
  local p
  exec 2> /dev/null           # the case is over: no "Killed" notices from the shell
  if [ -f "$W/pids" ]; then
    while read -r p; do
      case "$(cat "/proc/$p/comm" 2>/dev/null)" in blit|timeout) kill -9 "$p" 2>/dev/null || true ;; esac
    done < "$W/pids"
    { wait; } 2>/dev/null || true
  fi
  if [ -n "${MNT:-}" ] && mountpoint -q "$MNT"; then umount -l "$MNT" || true; fi
  pair_down
  [ "$KEEP" = 1 ] || rm -rf "${C:?}"
}

# ---------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------
# kill_case WHO(client|daemon) DIR(push|pull)
kill_case() {
  local who=$1 dir=$2 t0 T src dst url thr at_kill settled rc_first err_first kill_s why=''
  local rc2 moved reused obs ok=ok exp intact
  C=$W/$CASE; mkdir -p "$C/root"
  DPORT=$((DPORT + 1))
  url=blit://127.0.0.1:$DPORT
  head -c "$OLD_BYTES" /dev/urandom > "$C/old.bin"
  if [ "$dir" = push ]; then
    mkdir -p "$C/src" "$C/root/t"
    ln "$W/data/big.bin" "$C/src/big.bin"
    T=$C/root/t src=$C/src dst=$url/t
  else
    mkdir -p "$C/root/s" "$C/pull"
    ln "$W/data/big.bin" "$C/root/s/big.bin"
    T=$C/pull src=$url/s dst=$C/pull
  fi
  cp "$C/old.bin" "$T/big.bin"
  touch -d @1500000000 "$T/big.bin"
  daemon_start "$NSL" "127.0.0.1:$DPORT" "$C/root" || { check "$CASE" FAIL "daemon did not start"; return; }
  # the kill point. The side that READS the file (the client of a push, the daemon of a
  # pull) is killed when it has read a seeded 70-95 % of it (/proc/PID/io rchar): what the
  # target holds lags behind by the buffers in between, so a kill measured at the target
  # could come after the source's last byte, and the survivor could finish the file (80-92 %:
  # the target then holds about 60 % or more, where a resume assertion applies). The
  # side that WRITES it is killed when its temporary file holds a seeded 60-85 %.
  local by=target r0=0 rd='' k v rpid=''
  if [ "$who$dir" = daemonpull ] || [ "$who$dir" = clientpush ]; then
    by=read thr=$((80 + RANDOM % 13))
    if [ "$who" = daemon ]; then
      while read -r k v; do [ "$k" != rchar: ] || r0=$v; done < "/proc/$DPID/io"
    fi
    note "SIGKILL of the $who when it has read $thr % of $((BIG_BYTES / MIB)) MiB"
  else
    thr=$((60 + RANDOM % 26))
    note "SIGKILL of the $who when the target's temporary file holds $thr % of $((BIG_BYTES / MIB)) MiB"
  fi
  t0=$(now)
  xfer_bg "$CASE-1" "$NSL" 60 "$src" "$dst" --stall-timeout 5
  [ -n "$CPID" ] || { check "$CASE" FAIL "client did not start (logs/$CASE-1.err)"; return; }
  if [ "$who" = daemon ]; then rpid=$DPID; else rpid=$CPID; fi
  # poll the temporary file's allocated bytes (it is created at full size, sparse): one
  # fork per round, so the kill lands within a few MiB of the threshold even at GB/s
  local deadline=$((SECONDS + 50)) b
  local -a tf
  while :; do
    at_kill=0
    tf=("$T"/.big.bin.*.blit-tmp)
    if [ -e "${tf[0]}" ]; then
      for b in $(stat -c %b -- "${tf[@]}" 2>/dev/null); do [ $((b * 512)) -le "$at_kill" ] || at_kill=$((b * 512)); done
    fi
    if [ "$by" = read ]; then
      while read -r k v; do [ "$k" != rchar: ] || rd=$((v - r0)); done < "/proc/$rpid/io" 2>/dev/null
      [ "${rd:-0}" -ge $((BIG_BYTES * thr / 100)) ] && break
    else
      [ "$at_kill" -ge $((BIG_BYTES * thr / 100)) ] && break
    fi
    if ! kill -0 "$CPID" 2>/dev/null; then wait_rc "$CWRAP"; why="the transfer ended before the kill point (exit $WRC)"; break; fi
    if [ "$SECONDS" -ge "$deadline" ]; then why="the kill point ($thr %, by $by) was not reached in 50 s"; break; fi
  done
  if [ -n "$why" ]; then
    kill -9 "$CPID" 2>/dev/null || true
    check "$CASE" FAIL "$why (logs/$CASE-1.err)"; row "$CASE" "SIGKILL $who mid-$dir" - - "$why" -; return
  fi
  if [ "$who" = client ]; then kill -9 "$CPID"; else kill -9 "$DPID"; fi
  kill_s=$(elapsed "$t0")
  wait_rc "$CWRAP"; rc_first=$WRC
  [ "$who" = client ] || wait_rc "$DWRAP"
  sleep 0.3                                       # let a surviving side finish its writes
  settled=$(tmp_bytes "$T" big.bin)
  # the target path must hold the old file: the killed side had to supply or write the rest
  selftest "$T/big.bin"
  if cmp -s "$T/big.bin" "$C/old.bin"; then intact=yes
  elif cmp -s "$T/big.bin" "$W/data/big.bin"; then intact="no: it holds the complete new file"
  else intact="NO: neither the old nor the new file"; fi
  err_first=$(lasterr "$LOGS/$CASE-1.err")
  note "killed at $kill_s s, temp $(pct "$at_kill" "$BIG_BYTES") % ($(pct "$settled" "$BIG_BYTES") % kept); client exit $rc_first: $err_first"
  # the old file, and nothing else
  case "$intact" in
    yes) ;;
    no:*) # legitimate only when the poll came late and the reader had read the whole file
          if [ "$by" != read ] || [ "${rd:-0}" -lt "$BIG_BYTES" ]; then
            why="${why}old target file replaced by the new one although the $who, which had to supply or write the rest, was killed; "
          fi ;;
    *) why="${why}old target file not intact after the kill ($intact); " ;;
  esac
  if [ "$rc_first" = 0 ] && [ "$intact" = yes ]; then
    why="${why}the killed run exited 0 but the target holds the old file; "
  fi
  local extra
  extra=$(strangers "$T" big.bin)
  [ -z "$extra" ] || why="${why}unexpected names after the kill: $extra; "
  if [ "$who" = daemon ]; then
    case "$rc_first" in
      0) why="${why}client reported success although the daemon was killed before the end; " ;;
      124|137) why="${why}client hung after the daemon was killed (timeout); " ;;
      *) [ -n "$err_first" ] || why="${why}client failed without a message on stderr; " ;;
    esac
    DPORT=$((DPORT + 1)); url=blit://127.0.0.1:$DPORT
    if [ "$dir" = push ]; then dst=$url/t; else src=$url/s; fi
    daemon_start "$NSL" "127.0.0.1:$DPORT" "$C/root" || { check "$CASE" FAIL "${why}daemon did not restart"; return; }
  else
    # the daemon lives on: it must still be serving
    kill -0 "$DPID" 2>/dev/null || why="${why}daemon died with the client; "
  fi
  xfer "$CASE-2" "$NSL" 90 "$src" "$dst" --stall-timeout 5 --wait-lock
  rc2=$XRC
  moved=$(jnum "$LOGS/$CASE-2.json" bytes_moved)
  reused=$(jnum "$LOGS/$CASE-2.json" bytes_reused)
  if [ "$rc2" != 0 ]; then why="${why}re-run exit $rc2: $(lasterr "$LOGS/$CASE-2.err"); "
  elif ! cmp -s "$T/big.bin" "$W/data/big.bin"; then why="${why}re-run exit 0 but the target differs; "
  fi
  extra=$(leftovers "$T")
  [ -z "$extra" ] || why="${why}temporary files left after the re-run: $extra; "
  if [ -n "$reused" ] && [ "$(pct "$at_kill" "$BIG_BYTES")" -ge 60 ] && [ -n "$moved" ] \
     && [ "$moved" -gt $((BIG_BYTES * 45 / 100)) ]; then
    why="${why}resume: re-run moved $moved bytes (> 45 %) after a kill at $(pct "$at_kill" "$BIG_BYTES") %; "
  fi
  [ "$dir" = push ] && exp="daemon's temp" || exp="client's temp"
  obs="killed at $(pct "$at_kill" "$BIG_BYTES") % in the target's temp${rd:+ ($(pct "$rd" "$BIG_BYTES") % read by the $who)} ($kill_s s), temp kept: $(pct "$settled" "$BIG_BYTES") %; 1st run exit $rc_first"
  [ "$who" = client ] || obs="$obs (\"$err_first\")"
  obs="$obs; old file intact: $intact; re-run exit $rc2 in $XSEC s, bytes_moved ${moved:-?}${reused:+, bytes_reused $reused}"
  [ -z "$why" ] || ok=FAIL
  check "$CASE" "$ok" "${why:+${why%; } | }$obs"
  if [ "$by" = read ]; then exp="kill -9 when the $who has read a seeded 80-92 % of a 512 MiB file (/proc/PID/io rchar)"
  else exp="kill -9 when the $exp of a 512 MiB file holds a seeded 60-85 % (allocated blocks)"; fi
  row "$CASE" "SIGKILL of the $who mid-$dir" "$exp" \
    "old file intact, only .blit-tmp names added; $([ "$who" = daemon ] && echo "client exit != 0 with an error; ")re-run exit 0, identical (cmp), no temp left" "$ok: $obs" "cmp, find, exit codes"
}

# case_link_down DOWN_S MUST_FAIL(0|1): with MUST_FAIL the outage outlasts --stall-timeout 5,
# so the push must fail with exit 30 (stalled)
case_link_down() {
  local down_s=$1 must_fail=$2 t0 rc why='' ok=ok obs down_at f=256 n=0 exp
  C=$W/$CASE; mkdir -p "$C/src" "$C/root/t"
  pair_up || { check "$CASE" FAIL "veth pair set-up failed"; return; }
  head -c $((f * MIB)) /dev/urandom > "$C/src/big.bin"
  head -c "$OLD_BYTES" /dev/urandom > "$C/old.bin"; cp "$C/old.bin" "$C/root/t/big.bin"
  ip netns exec "$NSB" tc qdisc add dev "$VB" root tbf rate 400mbit burst 256kb latency 50ms \
    || { check "$CASE" FAIL "tc tbf on $VB failed"; return; }
  daemon_start "$NSA" 10.99.0.1:9031 "$C/root" || { check "$CASE" FAIL "daemon did not start"; return; }
  down_at=$(awk -v r=$((RANDOM % 100)) 'BEGIN { printf "%.2f", 1 + r / 100 }')
  t0=$(now)
  xfer_bg "$CASE-1" "$NSB" 60 "$C/src" blit://10.99.0.1:9031/t --stall-timeout 5 --idle-timeout 10
  sleep "$down_at"
  note "link $VB down at $down_at s for $down_s s"
  # while the link is down: when does the client give up (if it does)?
  local tdown c_end='' d_end='' lim=$((5 + 5))
  tdown=$(now)
  ip -n "$NSB" link set dev "$VB" down
  while [ "$(elapsed "$tdown" | tr -d .)" -lt "${down_s}00" ]; do
    if [ -z "$c_end" ] && ! kill -0 "$CPID" 2>/dev/null; then c_end=$(elapsed "$tdown"); fi
    sleep 0.1
  done
  ip -n "$NSB" link set dev "$VB" up
  wait_rc "$CWRAP"; rc=$WRC
  local wall; wall=$(elapsed "$t0")
  [ -n "$c_end" ] || c_end="$(elapsed "$tdown") (after the link came back)"
  # the daemon's verdict on the session, from its log's timestamp
  d_end=$(awk '/session failed/ { print $1; exit }' "$LOGS/$CASE-daemon.log")
  [ -z "$d_end" ] || d_end=$(awk -v a="$tdown" -v b="$(date -d "$d_end" +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  if [ "$must_fail" = 1 ]; then
    case "$c_end" in
      *after*) why="${why}the client was still running ${down_s} s after the link went down (--stall-timeout 5, --idle-timeout 10): it ended only when the link came back; " ;;
      *) [ "${c_end%.*}" -lt "$lim" ] || why="${why}the client ended ${c_end} s after the link went down (stall timeout 5 s); " ;;
    esac
    if [ -z "$d_end" ]; then why="${why}the daemon logged no failed session; "
    elif [ "$(awk -v d="$d_end" -v l="$lim" 'BEGIN { print (d < l) }')" != 1 ]; then
      why="${why}the daemon ended the session ${d_end} s after the link went down (its --stall-timeout 5); "
    fi
  fi
  if [ "$rc" = 0 ]; then
    if cmp -s "$C/src/big.bin" "$C/root/t/big.bin"; then obs="completed identical in $wall s"
    else why="exit 0 but the target differs; "; obs="exit 0, target differs"; fi
  else
    obs="failed: exit $rc, ${c_end%% *} s after the link went down (\"$(lasterr "$LOGS/$CASE-1.err")\")${d_end:+; the daemon ended the session after $d_end s}"
    case "$rc" in 124|137) why="client hung (timeout); " ;; esac
    [ -n "$(lasterr "$LOGS/$CASE-1.err")" ] || why="${why}failed without a message; "
    cmp -s "$C/old.bin" "$C/root/t/big.bin" || why="${why}old target file not intact; "
    # the daemon ends its half on its own stall timeout (5 s): its temporary file becomes a
    # partial file kept for resuming (the re-run below takes it over), never anything else
    while [ -n "$(unkept "$C/root")" ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n + 1)); done
    [ -z "$(unkept "$C/root")" ] || why="${why}the failed push left temporary files: $(unkept "$C/root"); "
  fi
  if [ "$must_fail" = 1 ] && [ "$rc" != 30 ]; then
    why="${why}a ${down_s} s outage with --stall-timeout 5 must end in exit 30 (stalled), got $rc; "
  fi
  ip netns exec "$NSB" tc qdisc del dev "$VB" root || true
  xfer "$CASE-2" "$NSB" 90 "$C/src" blit://10.99.0.1:9031/t --stall-timeout 5 --wait-lock
  selftest "$C/root/t/big.bin"
  if [ "$XRC" != 0 ]; then why="${why}re-run exit $XRC: $(lasterr "$LOGS/$CASE-2.err"); "
  elif ! cmp -s "$C/src/big.bin" "$C/root/t/big.bin"; then why="${why}re-run target differs; "; fi
  [ -z "$(leftovers "$C/root")" ] || why="${why}temporary files left: $(leftovers "$C/root"); "
  kill -0 "$DPID" 2>/dev/null || why="${why}daemon died; "
  obs="$obs; re-run exit $XRC in $XSEC s"
  [ -z "$why" ] || ok=FAIL
  check "$CASE" "$ok" "${why:+${why%; } | }$obs"
  if [ "$must_fail" = 1 ]; then
    exp="client exit 30 (stalled) with an error and the daemon's session ended, both < 10 s after the link went down (stall timeouts 5 s); old file intact, no temp left; re-run identical"
  else
    exp="completes identical, or fails with an error and the old file intact; re-run identical"
  fi
  row "$CASE" "link down ${down_s} s, then up" "veth pair, tbf 400mbit, 256 MiB push; \`ip link set dev VETH down\` at a seeded 1-2 s; --stall-timeout 5" \
    "$exp" "$ok: $obs" "cmp, find, exit codes, stderr"
}

case_loss() {
  local why='' ok=ok r0 r1 d f=256 s1 s2
  C=$W/$CASE; mkdir -p "$C/src/f" "$C/root"
  pair_up || { check "$CASE" FAIL "veth pair set-up failed"; return; }
  # one MSS per packet: with segmentation offload a veth carries 64 KiB super-packets, and
  # 1 % of those is not 1 % of the wire's packets
  ip -n "$NSA" link set dev "$VA" gso_max_segs 1 && ip -n "$NSB" link set dev "$VB" gso_max_segs 1 \
    || { check "$CASE" FAIL "ip link set gso_max_segs 1 failed"; return; }
  head -c $((f * MIB)) /dev/urandom > "$C/src/f/big.bin"
  for d in 0 1 2 3 4 5 6 7 8 9; do gen_small "$C/src/tree/d$d" 200 6000; done
  ip netns exec "$NSA" iptables -A INPUT -m statistic --mode random --probability 0.01 -j DROP \
    || { check "$CASE" FAIL "iptables statistic rule failed"; return; }
  daemon_start "$NSA" 10.99.0.1:9031 "$C/root" || { check "$CASE" FAIL "daemon did not start"; return; }
  r0=$(tcp_retrans "$NSB")
  xfer "$CASE-file" "$NSB" 120 "$C/src/f" blit://10.99.0.1:9031/f --stall-timeout 10
  s1=$XSEC
  selftest "$C/root/f/big.bin"
  if [ "$XRC" != 0 ]; then why="file push exit $XRC: $(lasterr "$LOGS/$CASE-file.err"); "
  elif ! cmp -s "$C/src/f/big.bin" "$C/root/f/big.bin"; then why="file push target differs; "; fi
  xfer "$CASE-tree" "$NSB" 120 "$C/src/tree" blit://10.99.0.1:9031/tree --stall-timeout 10
  s2=$XSEC
  if [ "$XRC" != 0 ]; then why="${why}tree push exit $XRC: $(lasterr "$LOGS/$CASE-tree.err"); "
  elif ! same_tree "$C/src/tree" "$C/root/tree"; then why="${why}tree push target differs; "; fi
  r1=$(tcp_retrans "$NSB")
  d=$(ip netns exec "$NSA" iptables -L INPUT -v -n -x | awk '/statistic/ { print $1; exit }')
  local obs="256 MiB in $s1 s, 2,000 files in $s2 s; $d packets dropped, $((r1 - r0)) TCP segments retransmitted by the client"
  [ -z "$(leftovers "$C/root")" ] || why="${why}temporary files left: $(leftovers "$C/root"); "
  [ -z "$why" ] || ok=FAIL
  check "$CASE" "$ok" "${why:+${why%; } | }$obs"
  row "$CASE" "1 % packet loss" "veth pair (gso_max_segs 1: one MSS per packet); \`iptables -A INPUT -m statistic --mode random --probability 0.01 -j DROP\` in the daemon's namespace" \
    "both pushes exit 0, identical" "$ok: $obs" "cmp, diff -r"
}

case_disk_full() {
  local why='' ok=ok n=0 obs err
  C=$W/$CASE; MNT=$C/full; mkdir -p "$C/src" "$C/small" "$MNT"
  mount -t tmpfs -o size=64m blit-faults "$MNT" || { check "$CASE" FAIL "mount tmpfs failed"; return; }
  mkdir -p "$MNT/t"
  head -c $((100 * MIB)) /dev/urandom > "$C/src/big.bin"
  head -c $((10 * MIB)) /dev/urandom > "$C/old.bin"; cp "$C/old.bin" "$MNT/t/big.bin"
  head -c "$MIB" /dev/urandom > "$C/small/after.bin"
  DPORT=$((DPORT + 1))
  daemon_start "$NSL" "127.0.0.1:$DPORT" "$MNT" || { check "$CASE" FAIL "daemon did not start"; return; }
  xfer "$CASE-1" "$NSL" 60 "$C/src" "blit://127.0.0.1:$DPORT/t" --stall-timeout 5
  err=$(lasterr "$LOGS/$CASE-1.err")
  obs="exit $XRC in $XSEC s (\"$err\")"
  if [ "$XRC" = 0 ]; then why="the push reported success on a full disk; "
  elif ! grep -Eqi 'no space|ENOSPC|space left|disk full' "$LOGS/$CASE-1.err" "$LOGS/$CASE-1.json"; then
    why="the error does not name the cause (no space); "
  fi
  selftest "$MNT/t/big.bin"
  cmp -s "$MNT/t/big.bin" "$C/old.bin" || why="${why}old target file not intact; "
  # the daemon may remove its temporary file just after the client heard the error
  while [ -n "$(leftovers "$MNT")" ] && [ $n -lt 40 ]; do sleep 0.05; n=$((n + 1)); done
  if [ -n "$(leftovers "$MNT")" ]; then
    why="${why}temporary files left: $(leftovers "$MNT") ($(df -h --output=used "$MNT" | tail -1 | xargs) used); "
    find "$MNT" -name '*.blit-tmp' -delete               # free the space for the next check
  fi
  kill -0 "$DPID" 2>/dev/null || why="${why}daemon died; "
  xfer "$CASE-2" "$NSL" 30 "$C/small" "blit://127.0.0.1:$DPORT/after" --stall-timeout 5
  if [ "$XRC" != 0 ]; then why="${why}next push exit $XRC: $(lasterr "$LOGS/$CASE-2.err"); "
  elif ! same_tree "$C/small" "$MNT/after"; then why="${why}next push differs; "; fi
  obs="$obs; old file intact: $(cmp -s "$MNT/t/big.bin" "$C/old.bin" && echo yes || echo no); next 1 MiB push exit $XRC"
  [ -z "$why" ] || ok=FAIL
  check "$CASE" "$ok" "${why:+${why%; } | }$obs"
  row "$CASE" "target disk full" "daemon root on a 64 MiB tmpfs holding an OLD 10 MiB file; 100 MiB push over it" \
    "exit != 0 naming no space; old file intact; no .blit-tmp; the daemon serves the next push" "$ok: $obs" "grep stderr, cmp, find, exit codes"
}

case_concurrent() {
  local i why='' ok=ok t0 rc
  local -a wraps
  C=$W/$CASE; mkdir -p "$C/root"
  for i in 1 2 3 4 5 6 7 8; do
    mkdir -p "$C/src$i"
    head -c $((64 * MIB)) /dev/urandom > "$C/src$i/big.bin"
    gen_small "$C/src$i/small" 200 4000
  done
  DPORT=$((DPORT + 1))
  daemon_start "$NSL" "127.0.0.1:$DPORT" "$C/root" || { check "$CASE" FAIL "daemon did not start"; return; }
  t0=$(now)
  for i in 1 2 3 4 5 6 7 8; do
    xfer_bg "$CASE-$i" "$NSL" 120 "$C/src$i" "blit://127.0.0.1:$DPORT/s$i" --stall-timeout 10
    wraps[i]=$CWRAP
  done
  for i in 1 2 3 4 5 6 7 8; do
    wait_rc "${wraps[i]}"; rc=$WRC
    [ "$i" != 1 ] || selftest "$C/root/s1/big.bin"
    if [ "$rc" != 0 ]; then why="${why}session $i exit $rc: $(lasterr "$LOGS/$CASE-$i.err"); "
    elif ! same_tree "$C/src$i" "$C/root/s$i"; then why="${why}session $i differs; "; fi
  done
  local wall; wall=$(elapsed "$t0")
  [ -z "$(leftovers "$C/root")" ] || why="${why}temporary files left: $(leftovers "$C/root"); "
  local obs="8 × (64 MiB + 200 files) in $wall s"
  [ -z "$why" ] || ok=FAIL
  check "$CASE" "$ok" "${why:+${why%; } | }$obs"
  row "$CASE" "8 concurrent sessions" "8 pushes at once into 8 directories of one daemon, each 64 MiB + 200 files" \
    "all exit 0, all identical (diff -r)" "$ok: $obs" "diff -r, exit codes"
}

# same_dir_round LABEL [--wait-lock]: two pushes at once into one directory; sets RWHY, ROBS
same_dir_round() {
  local label=$1 i rc w1 w2 eq='' n_ok=0
  shift
  local -a rcs
  xfer_bg "$CASE-$label-x" "$NSL" 90 "$C/x" "blit://127.0.0.1:$DPORT/t" --stall-timeout 10 "$@"; w1=$CWRAP
  xfer_bg "$CASE-$label-y" "$NSL" 90 "$C/y" "blit://127.0.0.1:$DPORT/t" --stall-timeout 10 "$@"; w2=$CWRAP
  wait_rc "$w1"; rcs[1]=$WRC; wait_rc "$w2"; rcs[2]=$WRC
  for i in 1 2; do
    local who=x; [ $i = 2 ] && who=y
    rc=${rcs[i]}
    if [ "$rc" = 0 ]; then n_ok=$((n_ok + 1))
    elif [ $# -gt 0 ]; then RWHY="${RWHY}$label: push $who with --wait-lock exit $rc: $(lasterr "$LOGS/$CASE-$label-$who.err"); "
    elif ! grep -q 'being written by another' "$LOGS/$CASE-$label-$who.err"; then
      RWHY="${RWHY}$label: push $who exit $rc without the busy error: $(lasterr "$LOGS/$CASE-$label-$who.err"); "
    fi
  done
  [ "$n_ok" -ge 1 ] || RWHY="${RWHY}$label: neither push succeeded; "
  selftest "$C/root/t/big.bin"
  same_tree "$C/x" "$C/root/t" && eq=x
  same_tree "$C/y" "$C/root/t" && eq=y
  [ -n "$eq" ] || RWHY="${RWHY}$label: the target equals neither source (mixed); "
  [ -z "$(leftovers "$C/root")" ] || RWHY="${RWHY}$label: temporary files left: $(leftovers "$C/root"); "
  ROBS="${ROBS}$label: exits ${rcs[1]}/${rcs[2]}, target = source ${eq:-none}; "
}
case_same_dir() {
  local ok=ok s
  C=$W/$CASE; mkdir -p "$C/root"
  for s in x y; do
    mkdir -p "$C/$s"
    head -c $((128 * MIB)) /dev/urandom > "$C/$s/big.bin"
    gen_small "$C/$s/small" 100 5000
  done
  DPORT=$((DPORT + 1))
  daemon_start "$NSL" "127.0.0.1:$DPORT" "$C/root" || { check "$CASE" FAIL "daemon did not start"; return; }
  RWHY='' ROBS=
  same_dir_round nowait
  rm -rf "${C:?}/root/t"
  same_dir_round wait --wait-lock
  [ -z "$RWHY" ] || ok=FAIL
  check "$CASE" "$ok" "${RWHY:+${RWHY%; } | }${ROBS%; }"
  row "$CASE" "2 concurrent pushes into one directory" "two 128 MiB + 100-file trees pushed at once to the same path; then again with --wait-lock" \
    "one exit 0, the other 'being written by another blit transfer' (or both, serialized); with --wait-lock both 0; target = one source entirely" \
    "$ok: ${ROBS%; }" "diff -r against both sources, stderr"
}

run_case() {
  case "$CASE" in
    kill-client-push) kill_case client push ;;
    kill-daemon-push) kill_case daemon push ;;
    kill-client-pull) kill_case client pull ;;
    kill-daemon-pull) kill_case daemon pull ;;
    link-down) case_link_down 3 0 ;;
    link-down-20s) case_link_down 20 1 ;;
    loss-1pct) case_loss ;;
    disk-full) case_disk_full ;;
    concurrent-8) case_concurrent ;;
    same-dir-2) case_same_dir ;;
    *) echo "unknown case $CASE" >&2; return 2 ;;
  esac
}

if [ "${1:-}" = --case ]; then
  set -u -o pipefail
  CASE=$2 C=$W/$2 MNT=
  NSA=fza-$FZ_ID NSB=fzb-$FZ_ID VA=fzva$FZ_ID VB=fzvb$FZ_ID
  RANDOM=$FZ_CASE_SEED
  trap case_cleanup EXIT
  trap 'exit 143' TERM
  run_case
  exit 0
fi

# ---------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit "${1:-2}"; }
ALL_CASES="kill-client-push kill-daemon-push kill-client-pull kill-daemon-pull link-down link-down-20s loss-1pct disk-full concurrent-8 same-dir-2"
OUT='' CASES=$ALL_CASES VM=0 KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || usage >&2; OUT=$2; shift 2 ;;
    --cases) [ $# -ge 2 ] || usage >&2; CASES=$(echo "$2" | tr ',' ' '); shift 2 ;;
    --vm) VM=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage 0 ;;
    *) log "unknown option $1"; usage >&2 ;;
  esac
done
for c in $CASES; do
  case " $ALL_CASES vm-delay-50ms " in *" $c "*) ;; *) die 2 "unknown case '$c' (cases: $ALL_CASES vm-delay-50ms)" ;; esac
done
[ "$VM" = 1 ] && case " $CASES " in *" vm-delay-50ms "*) ;; *) CASES="$CASES vm-delay-50ms" ;; esac
[ "$(id -u)" = 0 ] || die 3 "needs root (network namespaces, tc, iptables, mount)"
for t in ip tc iptables timeout cmp diff split mountpoint getfattr; do
  command -v "$t" > /dev/null || die 3 "missing tool: $t"
done
SEED=${FAULTS_SEED:-$(( $(date +%s%N) % 1000000 ))}
[[ "$SEED" =~ ^[0-9]+$ ]] || die 2 "FAULTS_SEED must be a number"
CASE_T=${FAULTS_CASE_TIMEOUT:-120} TOTAL_T=${FAULTS_TIMEOUT:-330}
[[ "$CASE_T" =~ ^[0-9]+$ ]] && [[ "$TOTAL_T" =~ ^[0-9]+$ ]] || die 2 "FAULTS_CASE_TIMEOUT and FAULTS_TIMEOUT must be numbers"

cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
BLIT=${BLIT:-$TARGET_DIR/release/blit}
OUT=${OUT:-$TARGET_DIR/faults}
mkdir -p "$OUT" || die 2 "cannot create $OUT"
OUT=$(cd "$OUT" && pwd -P)
if [ ! -x "$BLIT" ]; then
  log "building blit (release): cargo build --release -p blitx-cli"
  timeout "${FAULTS_BUILD_TIMEOUT:-1800}" cargo build --release --locked -p blitx-cli > "$OUT/build.log" 2>&1 \
    || { tail -30 "$OUT/build.log" >&2; die 3 "cargo build failed or timed out (log: $OUT/build.log)"; }
fi
[ -x "$BLIT" ] || die 3 "no blit binary at $BLIT"
BLIT=$(cd "$(dirname "$BLIT")" && pwd -P)/$(basename "$BLIT")
BLIT_ID="$BLIT ($("$BLIT" --version 2>/dev/null || echo '?'), sha256 $(sha256sum "$BLIT" | cut -c1-12))"

W=$(mktemp -d /dev/shm/blit-faults.XXXXXX)
LOGS=$OUT/logs
FZ_ID=$$
NSL=fzl-$FZ_ID
rm -rf "$LOGS" "$OUT/results.txt" "$OUT/faults.md"; mkdir -p "$LOGS" "$W/data"
: > "$W/results.txt"; : > "$W/rows.tsv"; : > "$W/pids"; : > "$W/netns"
export W LOGS BLIT NSL FZ_ID KEEP CASE_T
T0=$(date +%s)
cleanup() {
  local p ns
  while read -r p; do
    case "$(cat "/proc/$p/comm" 2>/dev/null)" in blit|timeout) kill -9 "$p" 2>/dev/null || true ;; esac
  done < "$W/pids"
  for ns in "$NSL" $(cat "$W/netns"); do ip netns del "$ns" 2>/dev/null || true; done
  { grep -F " $W/" /proc/mounts || true; } | cut -d' ' -f2 | while read -r p; do umount -l "$p" || true; done
  [ "$KEEP" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

case "$CASES" in
  "$ALL_CASES"|"$ALL_CASES vm-delay-50ms") sel=; [ "$VM" = 0 ] || sel=" --vm" ;;
  *) sel=" --cases \"$CASES\"" ;;
esac
log "seed $SEED (replay: FAULTS_SEED=$SEED bash ci/faults.sh$sel); cases: $CASES"
log "binary $BLIT_ID; work dir $W; results $OUT"
ip netns add "$NSL" && ip -n "$NSL" link set lo up || die 4 "cannot create network namespace $NSL"
case " $CASES " in
  *" kill-"*) head -c "$BIG_BYTES" /dev/urandom > "$W/data/big.bin" || die 4 "test data" ;;
esac

i=0
for CASE in $CASES; do
  i=$((i + 1))
  t=$(date +%s.%N)
  left=$((T0 + TOTAL_T - $(date +%s)))
  if [ "$left" -lt 20 ]; then
    check "$CASE" FAIL "not run: FAULTS_TIMEOUT (${TOTAL_T}s) ran out"
    row "$CASE" - - - "FAIL: not run (FAULTS_TIMEOUT)" -
    printf '%s\t-\n' "$CASE" >> "$W/secs.tsv"
    continue
  fi
  if [ "$CASE" = vm-delay-50ms ]; then
    vm_t=${RXE_VM_TIMEOUT:-240}; [ "$vm_t" -le $((left - 15)) ] || vm_t=$((left - 15))
    # netem exists only in the lab guests (the host kernel has none): the netem stage's
    # own VM pair, configured for this case
    set +e
    NETEM_SELFTEST_CORRUPT=${FAULTS_SELFTEST_CORRUPT:-0} NETEM_DELAY=50ms NETEM_LOSS='' NETEM_LARGE_MIB=64 NETEM_SMALL_FILES=300 NETEM_TCP_BUFFER='' \
      NETEM_PULL_STREAMS=4 RXE_VM_TIMEOUT=$vm_t timeout -k 5 $((vm_t + 10)) \
      bash "$HERE/netem-stage.sh" --out "$OUT/vm-delay-50ms" --streams 4 --no-baseline > "$LOGS/vm-delay-50ms.log" 2>&1
    rc=$?
    set -e
    s=$(awk '/^  ping B -> A, netem/ { print "RTT " $(NF - 1) " ms (min/avg/max)" }
             /^netem (push|pull) / { print $2 " " $5 " s (" $6 " MB/s, " $(NF - 2) " retransmitted)" }' \
      "$OUT/vm-delay-50ms/summary.txt" 2>/dev/null | paste -sd ';' | sed 's/;/; /g')
    if [ "$rc" = 0 ]; then st=ok; else st=FAIL; fi
    check "$CASE" "$st" "netem-stage exit $rc${s:+: $s} (logs/vm-delay-50ms.log)"
    row "$CASE" "50 ms delay" "qemu VM pair (ci/netem-stage.sh), \`tc qdisc add dev rxenet0 root netem delay 50ms\` on both guests" \
      "a 64 MiB file + 300 small files pushed and pulled back identical" "$st: exit $rc${s:+, $s}" "netem-stage: diff -r and metadata manifests"
  else
    set +e
    lim=$CASE_T; [ "$lim" -le $((left - 5)) ] || lim=$((left - 5))
    FZ_CASE_SEED=$((SEED + i)) CASE_T=$lim timeout -k 5 "$lim" bash "$SELF" --case "$CASE"
    rc=$?
    set -e
    if ! grep -q "^CHECK faults $CASE " "$W/results.txt"; then
      case "$rc" in
        124|137) check "$CASE" FAIL "the case ran past ${lim}s (FAULTS_CASE_TIMEOUT, FAULTS_TIMEOUT) and was stopped" ;;
        *) check "$CASE" FAIL "the case ended (exit $rc) without a verdict" ;;
      esac
      row "$CASE" - - - "FAIL: no verdict (exit $rc)" -
    fi
  fi
  printf '%s\t%s\n' "$CASE" "$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" >> "$W/secs.tsv"
done

# --- the table --------------------------------------------------------------------
FAILS=$(grep -c ' FAIL' "$W/results.txt" || true)
cp "$W/results.txt" "$OUT/results.txt"
{
  echo "ci/faults.sh, $(date -u +%Y-%m-%dT%H:%MZ), seed $SEED, $(( $(date +%s) - T0 )) s; $(nproc) cores"
  echo "blit: $BLIT_ID"
  echo
  echo "| case | fault | how it is injected | expected | observed | enforced by | s |"
  echo "|---|---|---|---|---|---|---|"
  while IFS=$'\t' read -r c f h e o k; do
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$c" "$f" "$h" "$e" "$o" "$k" \
      "$(awk -F'\t' -v c="$c" '$1 == c { print $2 }' "$W/secs.tsv")"
  done < "$W/rows.tsv"
  echo
  if [ "$FAILS" = 0 ]; then echo "PASS: every case ok"; else echo "FAIL: $FAILS case(s) failed"; fi
} > "$OUT/faults.md"
cat "$OUT/faults.md"
log "$(grep -c . "$W/results.txt") cases, $FAILS failed, $(( $(date +%s) - T0 )) s (results: $OUT)"
[ "$FAILS" = 0 ] || exit 7
