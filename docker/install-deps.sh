#!/usr/bin/env bash
# Installs, with apt, exactly the Debian packages ropekv needs that are
# missing; does nothing when all are present. Used by the README's commands,
# .ci/run and the Dockerfile. Safe to run again.
#   usage: docker/install-deps.sh [--for-tests]
# --for-tests adds what only the tests need: Node.js and npm for the
# Kubernetes manifest check (docker/k8s/validate.sh), when npm is missing.
set -euo pipefail

packages=(
  g++ cmake ninja-build pkg-config          # toolchain
  libabsl-dev                               # Status/StatusOr, flags, strings, mutexes
  libprotobuf-dev protobuf-compiler         # the wire contract and profile files
  libgrpc++-dev protobuf-compiler-grpc      # the service and client
  nlohmann-json3-dev                        # safetensors headers (JSON)
  zlib1g-dev                                # CRC-32 of profile files
  prometheus-cpp-dev                        # /metrics endpoint
  libgtest-dev libgmock-dev                 # tests
  libbenchmark-dev                          # benchmark programs
  clang libclang-rt-14-dev                  # libFuzzer targets (tests/fuzz)
)

# Checked by command, not package: Node.js may come from another repository.
if [ "${1:-}" = "--for-tests" ] && ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
