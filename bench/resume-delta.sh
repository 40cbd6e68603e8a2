#!/usr/bin/env bash
# resume-delta.sh: issue 18's measurements, one run of each, printed as Markdown rows.
#
#   resume: a SIZE file pushed to a `blit daemon`; the client (then, separately, the daemon) is
#           SIGKILLed once the target's journal records KILL_AT % of the file; the same command
#           again: bytes moved and reused (`--json`), the copy compared with `cmp`.
#   delta:  the target holds an old copy; the source has it with 1 % of its 4 KiB blocks
#           rewritten at scattered places and 64 bytes inserted near the start
#           (bench/mutate.py): `--delta on` against `--delta off`, bytes and seconds; and
#           rsync's own delta (`rsync --no-whole-file` to an rsync daemon) on the same files.
#
# usage: bench/resume-delta.sh [--size MiB] [--transport tcp|rdma] [--addr IP] [--cap RATE]
#                              [--no-rsync] [--no-resume] [--out DIR]
#   --cap RATE   run the daemon (and rsync's) in a network namespace joined by a veth pair whose
#                client side is capped with `tc tbf rate RATE` (e.g. 1gbit; the host has no
#                netem, tbf needs none); without it, the daemon listens on --addr (127.0.0.1)
#   BLIT         the blit binary (default target/release/blit)
#   DATA         where the files live (default /dev/shm/blit-rd)
set -euo pipefail
cd "$(dirname "$0")/.."
size=2048 transport=tcp addr=127.0.0.1 cap="" rsync=1 resume=1 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --transport) transport=$2; shift 2 ;;
    --addr) addr=$2; shift 2 ;;
    --cap) cap=$2; shift 2 ;;
    --no-rsync) rsync=0; shift ;;
    --no-resume) resume=0; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: see the header of $0" >&2; exit 2 ;;
  esac
done
BLIT=$(realpath "${BLIT:-target/release/blit}")
D=${DATA:-/dev/shm/blit-rd}
KILL_AT=${KILL_AT:-60}
port=9039
ns=""
rm -rf "$D"
mkdir -p "$D/src" "$D/root"
cleanup() {
  [ -n "${dpid:-}" ] && kill "$dpid" 2>/dev/null || true
  [ -n "${rpid:-}" ] && kill "$rpid" 2>/dev/null || true
  if [ -n "$ns" ]; then ip netns del "$ns" 2>/dev/null || true; fi
  rm -rf "$D"
}
trap cleanup EXIT
if [ -n "$cap" ]; then
  ns=blitrd$$
  ip netns add "$ns"
  ip link add "v$$a" type veth peer name "v$$b"
  ip link set "v$$b" netns "$ns"
  ip addr add 10.98.0.2/24 dev "v$$a"; ip link set "v$$a" up
  ip netns exec "$ns" ip addr add 10.98.0.1/24 dev "v$$b"
  ip netns exec "$ns" ip link set "v$$b" up; ip netns exec "$ns" ip link set lo up
  tc qdisc add dev "v$$a" root tbf rate "$cap" burst 256kb latency 50ms
  addr=10.98.0.1
fi
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(' '.join(str(d.get(k,0)) for k in sys.argv[2:]))" "$@"; }
start_daemon() {
  # `ip netns exec` execs blit: $! is the daemon's pid either way (a shell function would
  # put a subshell in between)
  if [ -n "$ns" ]; then
    ip netns exec "$ns" "$BLIT" daemon --root "$D/root" --listen "$addr:$port" > "$D/daemon.log" 2>&1 &
  else
    "$BLIT" daemon --root "$D/root" --listen "$addr:$port" > "$D/daemon.log" 2>&1 &
  fi
  dpid=$!
  for _ in $(seq 100); do grep -q listening "$D/daemon.log" 2>/dev/null && return; sleep 0.05; done
  echo "the daemon did not start:" >&2; cat "$D/daemon.log" >&2; exit 4
}
url="blit://$addr:$port/x"
tgt=x   # the target directory under the daemon root
xfer() { "$BLIT" xfer --no-progress --json --wait-lock --transport "$transport" "$@"; }
# journaled [WANT PID]: bytes the journal of the temporary file under $D/root/$tgt records; with
# WANT and PID, waits (polling every 2 ms) until it records WANT bytes or PID is gone
journaled() {
  python3 - "$D/root/$tgt" "${1:-0}" "${2:-0}" <<'EOF'
import os, struct, sys, time
def recorded(d):
    best = 0
    try:
        names = os.listdir(d)
    except OSError:
        return 0
    for n in names:
        if not n.endswith(".blit-tmp"):
            continue
        try:
            j = os.getxattr(os.path.join(d, n), "user.blit.part")
        except OSError:
            continue
        chunk = struct.unpack_from("<I", j, 4)[0]
        at = 38 + struct.unpack_from("<H", j, 36)[0]
        count = struct.unpack_from("<I", j, at)[0]
        runs = [struct.unpack_from("<QQ", j, at + 4 + 16 * i) for i in range(count)]
        best = max(best, sum(n for _, n in runs) * chunk)
    return best
want, pid = int(sys.argv[2]), int(sys.argv[3])
while pid and recorded(sys.argv[1]) < want and os.path.exists(f"/proc/{pid}"):
    time.sleep(0.002)
if pid and not os.path.exists(f"/proc/{pid}"):
    print(f"the client ({pid}) ended before its target's journal recorded {want} bytes",
          file=sys.stderr)
print(recorded(sys.argv[1]))
EOF
}

echo "generating a $size MiB file and its changed copy in $D" >&2
head -c "$((size << 20))" /dev/urandom > "$D/old"
python3 bench/mutate.py "$D/old" "$D/src/big" 18
bytes=$(stat -c %s "$D/src/big")
start_daemon
echo "| measurement | bytes moved | bytes reused | signature bytes | seconds | identical |"
echo "|---|---|---|---|---|---|"

# --- resume: SIGKILL of the client, then of the daemon, at KILL_AT % journaled
for who in ${RESUME_CASES:-client daemon}; do
  [ "$resume" = 1 ] || break
  # a fresh daemon for each case: the last one's session may still be ending (over RDMA a
  # killed peer is noticed at the stall timeout)
  kill "$dpid" 2>/dev/null || true; wait "$dpid" 2>/dev/null || true; start_daemon
  tgt=x-$who; url="blit://$addr:$port/$tgt"   # a directory of its own
  # blit itself in the background ($! of a shell function would be a subshell's pid)
  "$BLIT" xfer --no-progress --json --wait-lock --transport "$transport" "$D/src" "$url" \
    > "$D/first.json" 2> "$D/first.err" &
  cpid=$!
  at=$(journaled "$((bytes * KILL_AT / 100))" "$cpid")
  if [ "$who" = client ]; then kill -9 "$cpid" 2>/dev/null || true; wait "$cpid" 2>/dev/null || true
  else kill -9 "$dpid"; wait "$dpid" 2>/dev/null || true; wait "$cpid" 2>/dev/null || true; start_daemon; fi
  sleep 0.5
  [ "$at" -gt 0 ] || {
    echo "the first run was not interrupted:" >&2; tail -3 "$D/first.err" >&2
    ls -la "$D/root/$tgt" >&2 2>/dev/null; cat "$D/first.json" >&2 2>/dev/null | head -5; tail -3 "$D/daemon.log" >&2
  }
  xfer "$D/src" "$url" > "$D/again.json"
  read -r moved reused secs <<< "$(json "$D/again.json" bytes_moved bytes_reused seconds)"
  same=$(cmp -s "$D/src/big" "$D/root/$tgt/big" && echo yes || echo NO)
  echo "| resume after SIGKILL of the $who at $((at * 100 / bytes)) % journaled ($transport): the re-run | $moved ($((moved * 100 / bytes)) %) | $reused | 0 | $secs | $same |"
  rm -rf "$D/root/$tgt"
done

tgt=x; url="blit://$addr:$port/x"
# --- delta: the old copy on the target, --delta on against --delta off
for mode in on off; do
  rm -rf "$D/root/x"; mkdir -p "$D/root/x"
  cp "$D/old" "$D/root/x/big"; touch -d 2020-01-01 "$D/root/x/big"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  xfer --delta "$mode" "$D/src" "$url" > "$D/delta.json"
  read -r moved sig secs <<< "$(json "$D/delta.json" bytes_moved signature_bytes seconds)"
  same=$(cmp -s "$D/src/big" "$D/root/x/big" && echo yes || echo NO)
  echo "| --delta $mode ($transport${cap:+, link capped at $cap}) | $moved ($(python3 -c "print(f'{($moved+$sig)*100/$bytes:.2f}')") % with the signature) | 0 | $sig | $secs | $same |"
done

# --- rsync's delta on the same files (an rsync daemon; its own statistics)
if [ "$rsync" = 1 ] && command -v rsync > /dev/null; then
  rm -rf "$D/root/x"   # room on tmpfs for rsync's copy and its temporary file
  mkdir -p "$D/rs"
  cp "$D/old" "$D/rs/big"; touch -d 2020-01-01 "$D/rs/big"
  cat > "$D/rsyncd.conf" <<EOF
port = 8739
use chroot = false
[x]
path = $D/rs
read only = false
uid = root
gid = root
EOF
  if [ -n "$ns" ]; then
    ip netns exec "$ns" rsync --daemon --no-detach --config "$D/rsyncd.conf" --address "$addr" &
  else
    rsync --daemon --no-detach --config "$D/rsyncd.conf" --address "$addr" &
  fi
  rpid=$!
  sleep 0.5
  t0=$(date +%s.%N)
  rsync -a --no-whole-file --stats "$D/src/big" "rsync://$addr:8739/x/big" > "$D/rsync.txt"
  t1=$(date +%s.%N)
  sent=$(awk -F': ' '/Total bytes sent/ {gsub(",","",$2); print $2}' "$D/rsync.txt")
  recv=$(awk -F': ' '/Total bytes received/ {gsub(",","",$2); print $2}' "$D/rsync.txt")
  same=$(cmp -s "$D/src/big" "$D/rs/big" && echo yes || echo NO)
  echo "| rsync --no-whole-file to an rsync daemon${cap:+ (link capped at $cap)} | $sent sent ($((sent * 100 / bytes)) %), $recv received | 0 | (in received) | $(python3 -c "print(f'{$t1-$t0:.2f}')") | $same |"
fi
[ -n "$out" ] && mkdir -p "$out" && cp "$D"/*.json "$out"/ 2>/dev/null || true
