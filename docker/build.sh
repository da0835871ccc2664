#!/usr/bin/env bash
# Configures and builds one CMake preset; with a second argument, installs
# the programs (ropekv-server, ropekv-cli, ropekv-plan) under that prefix.
# The Dockerfile's build stage runs exactly this.
#   usage: docker/build.sh PRESET [INSTALL_PREFIX]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:?usage: docker/build.sh PRESET [INSTALL_PREFIX]}
cmake --preset "$preset"
cmake --build --preset "$preset" -j "$(nproc)"
if [ $# -ge 2 ]; then
  cmake --install "build/$preset" --prefix "$2" --component runtime
fi
