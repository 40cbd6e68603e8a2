#!/usr/bin/env bash
# A short fuzz run of every decoder of peer input (the cargo-fuzz targets in fuzz/, see
# fuzz/README.md): builds them, writes the seed corpus, runs each target for FUZZ_SECONDS
# (default 45) and fails when any of them crashes, printing the input that caused it.
#
#   bash ci/fuzz.sh                       # every target
#   FUZZ_SECONDS=600 bash ci/fuzz.sh rel_path
#
# The corpus grows in fuzz/corpus/<target> and crashes land in fuzz/artifacts/<target> (both
# ignored by git). FUZZ_SANITIZER=address adds AddressSanitizer (runs about six times slower;
# the decoders are safe Rust, so the default is none: panics, overflow and debug assertions are
# what a short run catches).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-45}
sanitizer=${FUZZ_SANITIZER:-none}
all_targets=(frame_header rel_path control_messages)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

# cargo fuzz passes nightly-only flags (-Z, the sancov passes); the stable toolchain accepts them
# with RUSTC_BOOTSTRAP=1. Only the fuzz build sees it.
export RUSTC_BOOTSTRAP=1
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (into ${CARGO_HOME:-$HOME/.cargo}/bin, kept for the next run)"
  cargo install cargo-fuzz --locked --quiet
fi
cargo fuzz --version

t0=$(date +%s)
cargo fuzz build -s "$sanitizer"
echo "fuzz build: $(( $(date +%s) - t0 )) s"
host=$(rustc -vV | sed -n 's/^host: //p')
"fuzz/target/$host/release/seeds" fuzz/corpus

# Per target: longest input (rel_path must reach past PATH_BYTES_MAX, 4096) and a dictionary
# where there is one (fuzz/<target>.dict).
max_len() { case $1 in rel_path) echo 8192 ;; *) echo 4096 ;; esac; }
dict() { if [ -f "fuzz/$1.dict" ]; then echo "-dict=fuzz/$1.dict"; fi; }

failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/artifacts/$t"
  log="fuzz/artifacts/$t.log"
  echo "--- $t: ${seconds} s"
  # shellcheck disable=SC2046 # dict prints one word or nothing
  if cargo fuzz run -s "$sanitizer" "$t" -- -max_total_time="$seconds" -max_len="$(max_len "$t")" \
    $(dict "$t") -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    # The last status line (cov: edges, ft: features, corp: inputs) and the speed.
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true
    grep -E 'stat::(number_of_executed_units|average_exec_per_sec)' "$log" || true
  else
    failed+=("$t")
    echo "FAIL: $t crashed:"
    grep -E -A3 'panicked at|==ERROR|ERROR: libFuzzer' "$log" | head -n 40 || true
    echo "... the end of its log ($log):"
    tail -n 40 "$log"
    for a in "fuzz/artifacts/$t"/*; do
      [ -f "$a" ] || continue
      echo "input $a ($(stat -c %s "$a") bytes), base64:"
      base64 -w 0 "$a" | head -c 8192
      echo
      od -A x -t x1z "$a" | head -n 32
    done
    echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -s $sanitizer $t fuzz/artifacts/$t/<file>"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${targets[*]} ran ${seconds} s each without a crash"
