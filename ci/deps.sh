#!/usr/bin/env bash
# Installs what building and testing blit needs on a fresh Debian bookworm machine.
# Idempotent; installs only what is missing; never upgrades systemd/udev (no rdma-core).
set -euo pipefail
pkgs=(
  pkg-config                # probes libibverbs (rdma-sys) and libhwloc (hwlocality)
  libhwloc-dev              # NUMA topology and thread/memory placement (topology crate)
  libibverbs-dev librdmacm-dev ibverbs-providers libibverbs1  # verbs headers (build) and providers (run)
  libclang1-14 libclang-common-14-dev                          # bindgen (rdma-sys) at build time
  rsync iperf3 perftest     # peers for benchmarks and tests
  util-linux                # setpriv (privilege drops in tests), fincore (page-cache checks, --io), prlimit (descriptor limits in tests)
  mount e2fsprogs           # the RDMA stage's --io direct leg: an ext4 on a loop device
  iproute2 iptables         # network-namespace tests (two hosts, packet loss)
  time                      # /usr/bin/time -v for peak RSS in benchmarks
  strace                    # syscall checks in tests (--fsync) and payload-path measurements
  g++                       # libFuzzer's C++ sources (the cargo-fuzz targets, ci/fuzz.sh)
  perl                      # ci/sim-mutants.sh applies its mutants with perl -0pi
  attr acl                  # getfattr (ci/faults.sh: a kept partial file's journal; cli/tests/meta.rs), getfacl/setfacl (cli/tests/meta.rs)
  chromium fonts-dejavu-core  # ci/metrics-page.sh loads the daemon's status page headless (fonts: a readable screenshot)
  python3                   # ci/metrics-page.sh checks the DOM and the metrics; bench/*.py
  groff-base                # .ci/run checks the generated man pages (groff -ww)
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "ci/deps.sh: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "ci/deps.sh: cargo (Rust 1.90+) is required: https://rustup.rs" >&2; exit 1; }
