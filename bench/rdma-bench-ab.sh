#!/usr/bin/env bash
# rdma-bench-ab.sh: A/B of two rdma_bench builds (transport-rdma's example) inside one Soft-RoCE guest: busy-poll
# and event-mode CQs, 256 MiB of 1 MiB frames, base new new base base new per mode. Prints one
# line per run (mode, run, build, MiB/s, process and machine CPU s/GiB).
#
#   cp BASE/rdma_bench DIR/rdma_bench-base; cp NEW/rdma_bench DIR/rdma_bench-new
#   ci/rxe/rxe-vm --share DIR -- bash bench/rdma-bench-ab.sh DIR
set -uo pipefail
out=$1
export BLIT_RDMA_REQUIRE=1
echo "== $(uname -r), $(nproc) vCPU, load $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in busy event; do
  i=0
  for v in base new new base base new; do
    i=$((i + 1))
    "$out/rdma_bench-$v" --total-mib 256 --chunk-kib 1024 --cq-mode "$mode" > "$out/$mode-$i-$v.txt" 2>&1 \
      || echo "FAIL $mode $i $v"
    r=$(grep '^RESULT' "$out/$mode-$i-$v.txt")
    mib=$(echo "$r" | grep -o '"mib_per_s":[0-9.]*' | cut -d: -f2)
    cpu=$(echo "$r" | grep -o '"process_cpu_s_per_gib":[0-9.]*' | cut -d: -f2)
    mcpu=$(echo "$r" | grep -o '"machine_cpu_s_per_gib":[0-9.]*' | cut -d: -f2)
    echo "$mode $i $v MiB/s=$mib process_cpu_s/GiB=$cpu machine_cpu_s/GiB=$mcpu"
  done
done
