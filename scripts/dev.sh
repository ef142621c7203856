#!/usr/bin/env bash
# Set-up, build and run Sluice in dev mode. Extra arguments go to `sluice dev`
# (e.g. `scripts/dev.sh --nodes 3`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# The same build as scripts/test.sh, so both reuse one RocksDB build.
cargo build --workspace --all-targets
exec "$CARGO_TARGET_DIR/debug/sluice" dev "$@"
