# guest-bench.sh: shell functions for benchmarks inside the rxe VMs (ci/rxe/rxe-vm),
# sourced by ci/rdma-stage.sh and bench/rdma-ab.sh. Uses $RXE_VM_IP (the guest's
# address, set by rxe-vm) and the device rxe0.

busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }

perftest_cpu() {  # SIZE ITERS LOGFILE [PORT [FLAGS...]]: ib_write_bw server + client on rxe0, retried on
  # perftest clock-calibration failures, with the CPU time of both processes (LOGFILE.cpu)
  local size=$1 iters=$2 logf=$3 port=${4:-18700} attempt
  shift 3; [ $# -gt 0 ] && shift  # FLAGS (e.g. -q 2) go to both ends
  for attempt in 1 2 3; do
    port=$((port + 1))
    ( TIMEFORMAT='server real %R user %U sys %S'
      time timeout 120 ib_write_bw -d rxe0 -F -p "$port" -s "$size" -n "$iters" "$@" > "$logf.server" 2>&1 ) 2> "$logf.server-time" &
    local spid=$!
    sleep 1
    local b0 b1 crc
    b0=$(busy_jiffies)
    ( TIMEFORMAT='client real %R user %U sys %S'
      time timeout 120 ib_write_bw -d rxe0 -F -p "$port" -s "$size" -n "$iters" "$@" "$RXE_VM_IP" > "$logf" 2>&1 ) 2> "$logf.client-time"
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

bench_file() {  # PATH: 256 MiB of random data (16 MiB from /dev/urandom, 16 times), then warm-up
  mkdir -p "$(dirname "$1")"
  head -c 16M /dev/urandom > "$1.part"
  for _ in $(seq 16); do cat "$1.part"; done > "$1"
  rm -f "$1.part"
  # The first touch of guest RAM makes qemu fault in host memory, which made whichever
  # run came first ~7% slower: touch and free 640 MiB before measuring.
  head -c 640M /dev/zero > "$1.warm" && rm -f "$1.warm"
}

blit_daemon_start() {  # BLIT ROOT ADDR LOG [ARGS...]: background blit daemon, DPID; waits for its listener
  local bin=$1 root=$2 addr=$3 logf=$4 n=1200; shift 4
  mkdir -p "$root"
  RUST_LOG=info NO_COLOR=1 "$bin" daemon --root "$root" --listen "$addr" "$@" > "$logf" 2>&1 &
  DPID=$!
  until ss -Hltn "sport = :${addr##*:}" | grep -q .; do
    kill -0 "$DPID" 2>/dev/null || { echo "FAIL: blit daemon exited:"; sed 's/\x1b\[[0-9;]*m//g' "$logf" | tail; return 1; }
    n=$((n - 1)); [ "$n" -gt 0 ] || { echo "FAIL: blit daemon not listening on $addr"; return 1; }
    sleep 0.1
  done
}
