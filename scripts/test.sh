#!/usr/bin/env bash
# Set-up, build and run every test: unit tests, openraft's storage suite,
# the cross-process tests under tests/ (real `sluice node` processes) and the
# chaos suite in chaos/tests/chaos_suite/ (network namespaces when run as root).
# Ends with one line "N passed, N failed" summed over every test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# The test-only planted bugs are compiled in (switched off unless SLUICE_PLANTED_BUG is set) so that the chaos
# self-test (chaos/tests/chaos_suite/t81_chaos_self_test.rs) can plant them; build and test with the same features so nothing is rebuilt.
cargo build --workspace --all-targets --features sluice/planted-bugs
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --features sluice/planted-bugs --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log" > "$log.summary"
summary="$(cat "$log.summary")"; rm -f "$log.summary"
echo "$summary"
exit "$status"
