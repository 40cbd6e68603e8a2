#!/usr/bin/env bash
# The test command named in README.md: installs what is missing, then runs every test.
# Tests that need something this machine lacks (a verbs device, root) print SKIPPED with the
# reason; the RDMA tests run for real in the Soft-RoCE VM stage (ci/rdma-stage.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/deps.sh
cargo test --workspace --locked "$@"
