#!/usr/bin/env bash
# Set-up, build and run every test: unit tests, openraft's storage suite and
# the cross-process tests under tests/ (real `sluice node` processes).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast "$@"
