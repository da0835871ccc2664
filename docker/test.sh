#!/usr/bin/env bash
# Installs what is missing, builds and runs every test. The CUDA backend is
# built when nvcc is found (its tests skip without a device); then the
# CPU-only configuration is built and tested too, so it cannot rot.
#   usage: docker/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
docker/install-deps.sh
jobs=$(nproc)

cmake --preset default
cmake --build --preset default -j "$jobs"
ctest --preset default -j "$jobs"

if grep -q '^ROPEKV_WITH_CUDA:INTERNAL=ON' build/default/CMakeCache.txt 2>/dev/null; then
  cmake --preset cpu
  cmake --build --preset cpu -j "$jobs"
  ctest --preset cpu -j "$jobs"
fi
