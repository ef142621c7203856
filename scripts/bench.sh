#!/usr/bin/env bash
# One command for every figure of the performance targets (docs/benchmarks.md):
#   scripts/bench.sh [--release] [--compare-only] [--smoke] [--seconds-per-step N] [--systems a,b]
# Installs nats-server and rabbitmq-server if missing, builds (dev profile, or release with --release), and
# runs, one after the other (each starts and stops every process itself, loopback only):
#   sluice-bench --mode compare   Sluice beside NATS JetStream, RabbitMQ and the machine's limits
#   sluice-bench --mode backlog   BACKLOG_EVENTS (10 M) held by a paused Trigger: memory, disk, drain rate
#   sluice-bench --mode steady    3 nodes at half their max for STEADY_SECONDS (600): latency and RSS plot, once
#                                 with one event per request and once with producers sending batches of 64
#   sluice-chaos --faults kill    FAILOVER_DURATION (10m) of kill -9s, most of them of a partition leader, under
#                                 producers: write unavailability after each leader kill, and every safety check
# Results go to BENCH_OUT (./bench-results): compare.json, steady.csv, steady.svg, steady-batched.csv,
# steady-batched.svg, failover.txt, failover.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
release=0
compare_only=0
args=()
for arg in "$@"; do
  case "$arg" in
    --release) release=1 ;;
    --compare-only|--smoke) compare_only=1; [ "$arg" = --smoke ] && args+=("$arg") ;;
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
bench="$profile/sluice-bench"
# Each mode bounds itself (probe budgets, per-system budget, drain budget); the timeouts are a last resort.
if [ "$compare_only" -eq 1 ]; then
  exec timeout 3600 "$bench" --mode compare "${args[@]}"
fi
out="${BENCH_OUT:-bench-results}"
mkdir -p "$out"
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
timeout 3600 "$bench" --mode compare --json "$out/compare.json" "${args[@]}"
echo "== backlog: ${BACKLOG_EVENTS:-10000000} events held by a paused Trigger, then drained"
timeout 7200 "$bench" --mode backlog --events "${BACKLOG_EVENTS:-10000000}" --partitions 4 --concurrency 16 \
  --records-per-append 64 --seconds 10
echo "== steady: 3 nodes at half of their max, one event per request, ${STEADY_SECONDS:-600} s"
timeout 3600 "$bench" --mode steady --nodes 3 --partitions 2 --rate-from "$out/compare.json" \
  --seconds "${STEADY_SECONDS:-600}" --csv "$out/steady.csv" --plot "$out/steady.svg"
echo "== steady: 3 nodes at half of their max, batches of 64, ${STEADY_SECONDS:-600} s"
timeout 3600 "$bench" --mode steady --nodes 3 --partitions 2 --rate-from "$out/compare.json" \
  --records-per-append 64 --seconds "${STEADY_SECONDS:-600}" --csv "$out/steady-batched.csv" \
  --plot "$out/steady-batched.svg"
echo "== failover: ${FAILOVER_DURATION:-10m} of kill -9s (sluice-chaos; network namespaces as root, else loopback)"
timeout 3600 "$profile/sluice-chaos" --duration "${FAILOVER_DURATION:-10m}" --faults kill --seed "${FAILOVER_SEED:-1}" \
  --sluice-bin "$SLUICE_BIN" --history "$out/failover.jsonl" 2>&1 | tee "$out/failover.txt"
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
