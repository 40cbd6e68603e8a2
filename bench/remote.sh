#!/usr/bin/env bash
# Remote (loopback) benchmark for the control plane + TCP transport: blit push to a blit
# daemon against local cp / tar | tar and an rsync daemon, plus iperf3 (-Z and plain) on the
# same loopback for the link's own cost. One run measures all peers; CPU seconds per GB count
# both ends (client via /usr/bin/time, daemons via /proc/<pid>/stat deltas).
#
# usage: bench/remote.sh [--repeat N] [--dir DIR] [--streams N]
# Datasets are shared with bench/local.sh (generated on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=3; BASE=/dev/shm/blit-bench; STREAMS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT=$2; shift 2 ;;
    --dir) BASE=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/bench-out}; mkdir -p "$OUT" "$BASE"
BLIT=${BLIT:-$PWD/target/release/blit}
[ -x "$BLIT" ] || cargo build --release --locked -p blitx-cli
for t in rsync iperf3; do command -v $t >/dev/null || { echo "$t missing (apt-get install $t)" >&2; exit 1; }; done
gen() {
  local name=$1; shift
  if [ ! -e "$BASE/$name/.done" ]; then
    rm -rf "${BASE:?}/$name"; mkdir -p "$BASE/$name"
    python3 bench/gen.py "$1" "$BASE/$name" "${@:2}"; touch "$BASE/$name/.done"
  fi
}
gen large large $((2 << 30))
gen small small 100000 100 4096

CSV=$OUT/remote.csv
echo "dataset,tool,run,wall_s,user_s,sys_s,maxrss_kb" > "$CSV"
CPU_CSV=$OUT/remote-cpu.csv
echo "dataset,tool,run,bytes,client_cpu_s,server_cpu_s" > "$CPU_CSV"
HZ=$(getconf CLK_TCK)
# utime+stime of the daemon and of its reaped children (rsync forks one per connection).
proc_cpu() { awk -v hz="$HZ" '{printf "%.3f", ($14+$15+$16+$17)/hz}' "/proc/$1/stat"; }

ROOT=$BASE/remote-root; RROOT=$BASE/rsync-root
rm -rf "$ROOT" "$RROOT"; mkdir -p "$ROOT" "$RROOT"
"$BLIT" daemon --root "$ROOT" --listen 127.0.0.1:0 2> "$OUT/daemon.log" &
BPID=$!
for _ in $(seq 1 100); do grep -q "listening on" "$OUT/daemon.log" 2>/dev/null && break; sleep 0.05; done
BADDR=$(sed -n 's/^blit daemon listening on //p' "$OUT/daemon.log" | head -1)
RPORT=$((20000 + RANDOM % 20000))
cat > "$OUT/rsyncd.conf" <<CONF
use chroot = no
[bench]
path = $RROOT
read only = no
uid = root
gid = root
CONF
rsync --daemon --no-detach --address 127.0.0.1 --port "$RPORT" --config "$OUT/rsyncd.conf" &
RPID=$!
trap 'kill $BPID $RPID 2>/dev/null || true' EXIT
sleep 0.5

measure() { # dataset tool run bytes server_pid|- COMMAND...
  local ds=$1 tool=$2 run=$3 bytes=$4 spid=$5; shift 5
  local tf; tf=$(mktemp); local s0=0 s1=0
  [ "$spid" != - ] && s0=$(proc_cpu "$spid")
  /usr/bin/time -f "%e,%U,%S,%M" -o "$tf" "$@" >/dev/null 2>"$OUT/last-stderr" || {
    echo "FAILED: $tool on $ds" >&2; cat "$OUT/last-stderr" >&2; rm -f "$tf"; return 1; }
  [ "$spid" != - ] && s1=$(proc_cpu "$spid")
  local row; row=$(tail -1 "$tf"); rm -f "$tf"
  echo "$ds,$tool,$run,$row" >> "$CSV"
  local u s; u=$(echo "$row" | cut -d, -f2); s=$(echo "$row" | cut -d, -f3)
  echo "$ds,$tool,$run,$bytes,$(awk -v a="$u" -v b="$s" 'BEGIN{print a+b}'),$(awk -v a="$s1" -v b="$s0" 'BEGIN{print a-b}')" >> "$CPU_CSV"
}

STREAM_ARGS=(); [ -n "$STREAMS" ] && STREAM_ARGS=(--streams "$STREAMS")
LARGE_BYTES=$(stat -c %s "$BASE/large/large.bin")
SMALL_BYTES=$(du -sb --apparent-size "$BASE/small" | cut -f1)
T=$BASE/local-target
for run in $(seq 1 "$REPEAT"); do
  rm -rf "$T"; mkdir -p "$T"; measure push-large "cp (local)" "$run" "$LARGE_BYTES" - cp -a "$BASE/large/large.bin" "$T/"
  rm -rf "$ROOT/large"; measure push-large "blit tcp" "$run" "$LARGE_BYTES" "$BPID" "$BLIT" xfer --no-progress --transport tcp "${STREAM_ARGS[@]}" "$BASE/large" "blit://$BADDR/large"
  rm -rf "$RROOT/large"; measure push-large "rsync daemon" "$run" "$LARGE_BYTES" "$RPID" rsync -a "$BASE/large/" "rsync://127.0.0.1:$RPORT/bench/large/"
  rm -rf "$T"; mkdir -p "$T"; measure push-small "tar|tar (local)" "$run" "$SMALL_BYTES" - sh -c "tar -C '$BASE/small' -cf - . | tar -C '$T' -xf -"
  rm -rf "$ROOT/small"; measure push-small "blit tcp" "$run" "$SMALL_BYTES" "$BPID" "$BLIT" xfer --no-progress --transport tcp "${STREAM_ARGS[@]}" "$BASE/small" "blit://$BADDR/small"
  rm -rf "$RROOT/small"; measure push-small "rsync daemon" "$run" "$SMALL_BYTES" "$RPID" rsync -a "$BASE/small/" "rsync://127.0.0.1:$RPORT/bench/small/"
done
rm -rf "$T" "$ROOT/large" "$ROOT/small" "$RROOT/large" "$RROOT/small"

# iperf3 on the same loopback: 2 GiB, plain and zero-copy; CPU from its own accounting.
IPERF=$OUT/iperf3.csv; echo "mode,run,gbytes_per_s,cpu_s_per_gb" > "$IPERF"
for run in $(seq 1 "$REPEAT"); do
  for mode in plain zerocopy; do
    iperf3 -s -1 -p 5299 >/dev/null 2>&1 & IP=$!; sleep 0.3
    flag=""; [ "$mode" = zerocopy ] && flag=-Z
    iperf3 -c 127.0.0.1 -p 5299 $flag -n 2G -J > "$OUT/iperf3-$mode.json"
    wait $IP || true
    python3 - "$OUT/iperf3-$mode.json" "$mode" "$run" >> "$IPERF" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
end = j["end"]; secs = end["sum_received"]["seconds"]; gb = end["sum_received"]["bytes"] / 1e9
cpu = end["cpu_utilization_percent"]
cpu_s = (cpu["host_total"] + cpu["remote_total"]) / 100 * secs
print(f"{sys.argv[2]},{sys.argv[3]},{gb / secs:.2f},{cpu_s / gb:.2f}")
PY
  done
done

python3 bench/table.py "$CSV"
echo
python3 - "$CPU_CSV" "$IPERF" <<'PY'
import csv, statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for r in csv.DictReader(open(sys.argv[1])):
    gb = int(r["bytes"]) / 1e9
    rows[(r["dataset"], r["tool"])].append((float(r["client_cpu_s"]) / gb, float(r["server_cpu_s"]) / gb))
print("| dataset | tool | client CPU s/GB | server CPU s/GB | total CPU s/GB |")
print("|---|---|---|---|---|")
for (ds, tool), v in rows.items():
    c = statistics.median(x[0] for x in v); s = statistics.median(x[1] for x in v)
    print(f"| {ds} | {tool} | {c:.2f} | {s:.2f} | {c + s:.2f} |")
ip = defaultdict(list)
for r in csv.DictReader(open(sys.argv[2])):
    ip[r["mode"]].append((float(r["gbytes_per_s"]), float(r["cpu_s_per_gb"])))
for mode, v in ip.items():
    print(f"| iperf3 {mode} (2 GiB) | GB/s {statistics.median(x[0] for x in v):.2f} | | | {statistics.median(x[1] for x in v):.2f} |")
PY
