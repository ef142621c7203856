#!/usr/bin/env bash
# One command for the side-by-side benchmark (docs/benchmarks.md):
#   scripts/bench.sh [--release] [--smoke] [--seconds-per-step N] [--json OUT]
# Installs nats-server and rabbitmq-server if missing, builds (dev profile, or release with --release),
# and runs `sluice-bench --mode compare`, which starts and stops every process itself (loopback only).
set -euo pipefail
cd "$(dirname "$0")/.."
release=0
args=()
for arg in "$@"; do
  case "$arg" in
    --release) release=1 ;;
    *) args+=("$arg") ;;
  esac
done
missing=()
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null || missing+=(nats-server)
[ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi
if [ "$release" -eq 1 ]; then
  # The same packages as the release builds of docs/reliability.md, so one release build serves both.
  target="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
  CARGO_TARGET_DIR="$target" cargo build --release -p sluice -p sluice-bench -p sluice-tests -p sluice-chaos --bins
  profile="$target/release"
else
  target="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
  CARGO_TARGET_DIR="$target" cargo build --workspace --all-targets
  profile="$target/debug"
fi
export SLUICE_BIN="${SLUICE_BIN:-$profile/sluice}"
echo "sluice: $SLUICE_BIN"
# The run bounds itself (probe budgets, per-system budget); the outer timeout is a last resort.
exec timeout 3600 "$profile/sluice-bench" --mode compare "${args[@]}"
