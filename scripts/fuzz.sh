#!/usr/bin/env bash
# Long fuzzing runs, by hand (docs/security.md): each target for SECONDS (default 3600, one CPU-hour), in
# release, seeded from the clock; new inputs are kept in fuzz/corpus/TARGET, findings in fuzz/corpus/TARGET-findings.
# CI runs only the smoke (fuzz/tests/smoke.rs).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-3600}"
shift || true
targets=("${@:-cesql event}")
cargo build --release -p sluice-fuzz --bin sluice-fuzz
bin="${CARGO_TARGET_DIR:-target}/release/sluice-fuzz"
status=0
for target in ${targets[@]}; do
  "$bin" --target "$target" --seconds "$seconds" --seed "$(date +%s)" || status=$?
done
exit "$status"
