#!/usr/bin/env bash
# The README's "main job": builds blit and runs it on loopback with generated data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/deps.sh
cargo build --release --locked -p blitx-cli
BLIT=$PWD/target/release/blit
base=/dev/shm; [ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/blit-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "== generating a demo tree in $work/src"
mkdir -p "$work/src"
for d in $(seq 1 20); do
  mkdir -p "$work/src/dir$d"
  for f in $(seq 1 200); do printf 'file %s/%s\n' "$d" "$f" > "$work/src/dir$d/f$f.txt"; done
done
head -c 256M /dev/urandom > "$work/src/large.bin"
if "$BLIT" --help | grep -q '^  bench'; then
  echo "== blit bench --quick"
  "$BLIT" bench --quick
else
  echo "== blit xfer (local)"
  "$BLIT" xfer "$work/src" "$work/dst"
  diff -r "$work/src" "$work/dst" && echo "== copy verified with diff -r"
  echo "== second run (nothing to copy)"
  "$BLIT" xfer "$work/src" "$work/dst"
fi
