#!/usr/bin/env bash
# A/B of two blit builds on the commands whose figures docs/benchmarks.md keeps: the
# 55,001-entry small-file tree (local copy, local no-op, push, push no-op) and one large file
# (local copy, push over TCP with 4 streams), on /dev/shm, interleaved A B B A per round.
# Prints one line per run (build, case, wall s, client+daemon CPU s) and the medians.
#
#   bash bench/ab.sh BLIT_A BLIT_B [ROUNDS=2] [LARGE_MIB=4096]
set -euo pipefail
A=$1 B=$2 ROUNDS=${3:-2} LARGE_MIB=${4:-4096}
W=${W:-/dev/shm/blit-ab}
rm -rf "$W"; mkdir -p "$W/src/small" "$W/src/large"
# 5,000 directories × 10 files of 4 KiB (the tree of the earlier small-file rows).
python3 - "$W/src/small" <<'EOF'
import os, sys
root = sys.argv[1]
block = os.urandom(4096)
for d in range(5000):
    p = os.path.join(root, f"d{d:04}")
    os.mkdir(p)
    for f in range(10):
        with open(os.path.join(p, f"f{f}"), "wb") as fh:
            fh.write(block)
EOF
head -c $((LARGE_MIB << 20)) /dev/urandom > "$W/src/large/big.bin"

cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime+stime in ticks
TCK=$(getconf CLK_TCK)

run() { # build-label blit case
  local label=$1 blit=$2 case=$3 root="$W/root-$1" t0 t1 c0 c1 d0 d1 start end
  mkdir -p "$root"
  "$blit" daemon --root "$root" --listen 127.0.0.1:0 2> "$W/daemon-$label.log" &
  local dpid=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$W/daemon-$label.log" 2>/dev/null && break; sleep 0.05; done
  local addr; addr=$(sed -n 's/^blit daemon listening on //p' "$W/daemon-$label.log" | head -1)
  local cmd
  case $case in
    local-small) rm -rf "$W/dst"; cmd=("$blit" xfer --no-progress "$W/src/small" "$W/dst") ;;
    noop-small) cmd=("$blit" xfer --no-progress "$W/src/small" "$W/dst") ;;
    push-small) rm -rf "$root/small"; cmd=("$blit" xfer --no-progress --transport tcp "$W/src/small" "blit://$addr/small") ;;
    pushnoop-small) cmd=("$blit" xfer --no-progress --transport tcp "$W/src/small" "blit://$addr/small") ;;
    local-large) rm -rf "$W/dstl"; cmd=("$blit" xfer --no-progress "$W/src/large" "$W/dstl") ;;
    push-large) rm -rf "$root/large"; cmd=("$blit" xfer --no-progress --transport tcp --streams 4 "$W/src/large" "blit://$addr/large") ;;
  esac
  d0=$(cpu_of $dpid)
  start=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$W/time" "${cmd[@]}" > /dev/null 2> "$W/err" || { cat "$W/err"; exit 1; }
  end=$(date +%s.%N)
  d1=$(cpu_of $dpid)
  kill $dpid; wait $dpid 2>/dev/null || true
  local ccpu; ccpu=$(awk '{print $1 + $2}' "$W/time")
  awk -v l="$label" -v c="$case" -v s="$start" -v e="$end" -v cc="$ccpu" -v d=$((d1 - d0)) -v t="$TCK" \
    'BEGIN { printf "%s %s %.3f %.2f\n", l, c, e - s, cc + d / t }' | tee -a "$W/results"
}

: > "$W/results"
cases=(local-small noop-small push-small pushnoop-small local-large push-large)
for r in $(seq 1 "$ROUNDS"); do
  for c in "${cases[@]}"; do
    run A "$A" "$c"; run B "$B" "$c"; run B "$B" "$c"; run A "$A" "$c"
  done
done
echo "medians (case, A wall, B wall, B/A, A cpu, B cpu):"
python3 - "$W/results" <<'EOF'
import sys, statistics as st, collections
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    l, c, w, cpu = line.split()
    d[(l, c)].append((float(w), float(cpu)))
for c in ["local-small", "noop-small", "push-small", "pushnoop-small", "local-large", "push-large"]:
    a, b = d[("A", c)], d[("B", c)]
    aw, bw = st.median(x[0] for x in a), st.median(x[0] for x in b)
    ac, bc = st.median(x[1] for x in a), st.median(x[1] for x in b)
    print(f"{c:15} {aw:7.3f} {bw:7.3f} {bw/aw:5.2f}x  cpu {ac:6.2f} {bc:6.2f} ({len(a)} runs each)")
EOF
