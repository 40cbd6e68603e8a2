#!/usr/bin/env bash
# Push then pull a tree through a fresh loopback daemon; prints both wall times.
# usage: bench/tree-pushpull.sh BLIT TREE_PARENT TREE_NAME [LABEL]
#   The daemon exports TREE_PARENT; the push copies TREE_PARENT/TREE_NAME to TREE_PARENT/pushed,
#   the pull copies it back to a scratch directory on the same file system as /dev/shm.
# Interleave builds (ABBA) and take medians: docs/benchmarks.md, "Data path (issue 16)".
set -u
B=$1; parent=$2; name=$3; label=${4:-$B}
port=${PORT:-9401}
scratch=$(mktemp -d /dev/shm/blit-pp.XXXXXX)
"$B" daemon --listen 127.0.0.1:$port --root "$parent" >/dev/null 2>&1 &
dp=$!
trap 'kill $dp 2>/dev/null; rm -rf "$scratch" "$parent/pushed"' EXIT
sleep 0.5
rm -rf "$parent/pushed"
s=$(date +%s.%N); "$B" xfer "$parent/$name" "blit://127.0.0.1:$port/pushed" --no-progress >/dev/null; rc1=$?; e=$(date +%s.%N)
push=$(echo "$e - $s" | bc)
s=$(date +%s.%N); "$B" xfer "blit://127.0.0.1:$port/$name" "$scratch/pulled" --no-progress >/dev/null; rc2=$?; e=$(date +%s.%N)
pull=$(echo "$e - $s" | bc)
echo "$label push $push s (exit $rc1) pull $pull s (exit $rc2)"
