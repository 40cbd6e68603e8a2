#!/usr/bin/env bash
# The README's "main job": builds blit and runs `blit bench --quick` on loopback (it generates its
# own datasets under /dev/shm and removes them afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/deps.sh
cargo build --release --locked -p blitx-cli
echo "== blit bench --quick"
exec ./target/release/blit bench --quick "$@"
