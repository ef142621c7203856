#!/usr/bin/env bash
# Installs what building Sluice needs on a fresh Debian/Ubuntu machine:
# clang/libclang (RocksDB's bindings) and protoc (the gRPC APIs).
# Idempotent: does nothing when everything is there.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v clang >/dev/null 2>&1 || need+=(clang)
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  need+=(libclang-dev)
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is missing; install Rust (rustup) first" >&2; exit 1; }

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

# One target dir outside the clone, so a fresh clone reuses the RocksDB build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
