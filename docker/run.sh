#!/usr/bin/env bash
# Installs what is missing, builds ropekv (CUDA backend when nvcc is found)
# and runs it: today the planner, which turns calibration activations into a
# compression profile and prints its plan and bytes per token.
#   usage: docker/run.sh [CALIBRATION.safetensors] [ropekv-plan flags...]
# Default input: $ROPEKV_DATA_DIR/moonshine-tiny-qkv.safetensors
# (ROPEKV_DATA_DIR defaults to ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
docker/install-deps.sh
cmake --preset default
cmake --build --preset default -j "$(nproc)" --target ropekv-plan

input=${1:-${ROPEKV_DATA_DIR:-../shared/data}/moonshine-tiny-qkv.safetensors}
shift || true
mkdir -p build/profiles
exec build/default/planner/ropekv-plan --calibration="$input" \
  --out=build/profiles/"$(basename "${input%.*}")".profile "$@"
