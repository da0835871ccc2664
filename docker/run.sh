#!/usr/bin/env bash
# Installs what is missing, builds ropekv (CUDA backend when nvcc is found)
# and runs the server on 127.0.0.1:50051 in the foreground (Ctrl-C stops it
# cleanly). Profiles persist in build/data. Extra arguments go to
# ropekv-server (see --help).
#   usage: docker/run.sh [ropekv-server flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
docker/install-deps.sh
docker/build.sh default
mkdir -p build/data
exec build/default/service/ropekv-server --address=127.0.0.1:50051 \
  --data_dir=build/data --metrics_port=9464 "$@"
