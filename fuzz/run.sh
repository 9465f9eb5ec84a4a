#!/usr/bin/env bash
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
# Runs every fuzz target (or the ones named) for SECONDS each (default 60) with bounded
# memory: a panic, a single allocation above 256 MiB, a resident size above 512 MiB or
# one input taking over a minute is a crash. Exits non-zero when any target crashed
# (the input is kept in fuzz/artifacts/<target>/).
# Needs a nightly toolchain and cargo-fuzz; without nightly it skips, successfully.
#
# The committed seeds (fuzz/corpus/<target>) are only read; what the fuzzer learns goes
# to fuzz/target/corpus/<target>, which later runs start from.
set -uo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "nightly toolchain not available: fuzzing skipped"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed (cargo install --locked cargo-fuzz)" >&2
  exit 1
fi
cargo +nightly fuzz build || exit 1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
failed=()
for target in "${targets[@]}"; do
  work="target/corpus/$target"
  log="target/fuzz-$target.log"
  mkdir -p "$work" "corpus/$target"
  echo "== $target: ${seconds}s"
  if cargo +nightly fuzz run "$target" "$work" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=256 -timeout=60 \
    -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done )' "$log"
    echo "corpus: $(find "$work" -type f | wc -l) inputs"
  else
    tail -n 60 "$log"
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzzing: no crashes"
