#!/usr/bin/env bash
# Syscall counts (strace -f -c) of a 256 MiB push and pull over loopback, both ends: which calls
# move the payload. Extra arguments are environment settings for both ends, e.g.
#   bench/tcp-syscalls.sh target/release/blit BLIT_TCP_PAYLOAD=sendfile BLIT_TCP_DELIVERY=lent
set -u
B=$1; shift
port=${PORT:-9402}
w=$(mktemp -d /dev/shm/blit-st.XXXXXX)
trap 'pkill -INT -f "blit daemon --listen 127.0.0.1:$port" 2>/dev/null; rm -rf "$w"' EXIT
mkdir -p "$w/src" "$w/root/pulldir"
head -c 268435456 /dev/urandom > "$w/src/f"
cp "$w/src/f" "$w/root/pulldir/f"
for dir in push pull; do
  env "$@" strace -f -c -o "$w/$dir-daemon.txt" "$B" daemon --listen 127.0.0.1:$port --root "$w/root" >/dev/null 2>&1 &
  dp=$!; sleep 2
  if [ $dir = push ]; then
    env "$@" strace -f -c -o "$w/$dir-client.txt" "$B" xfer "$w/src" "blit://127.0.0.1:$port/pushed" --no-progress >/dev/null 2>&1
  else
    env "$@" strace -f -c -o "$w/$dir-client.txt" "$B" xfer "blit://127.0.0.1:$port/pulldir" "$w/pulled" --no-progress >/dev/null 2>&1
  fi
  # SIGINT to the daemon itself (strace does not forward it); it exits after its sessions.
  pkill -INT -f "blit daemon --listen 127.0.0.1:$port"; wait $dp 2>/dev/null
  for side in client daemon; do
    printf "%-5s %-7s " $dir $side
    grep -E " (pread64|pwrite64|sendfile|splice|sendmsg|recvfrom)$" "$w/$dir-$side.txt" | awk '{printf "%s=%s ", $NF, $4}'
    echo
  done
done
