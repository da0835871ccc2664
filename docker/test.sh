#!/usr/bin/env bash
# Installs what is missing, builds and runs every test. The CUDA backend is
# built when nvcc is found (its tests skip without a device); then the
# CPU-only configuration is built under AddressSanitizer and
# UndefinedBehaviorSanitizer and every test runs again there (so that
# configuration cannot rot either); then the libFuzzer targets run briefly;
# then the Kubernetes manifests are validated; then the container's install and
# library-collection steps run and the collected server must start. Last, and
# also when a step failed, no server the run started may still be alive
# (docker/leftover-servers.sh).
#   usage: docker/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
docker/install-deps.sh --for-tests
jobs=$(nproc)

# Everything this run starts inherits the marker; at the end, passed or
# failed, no ropekv-server that carries it may still be alive.
export ROPEKV_TEST_RUN="test-$(date +%s)-$$"
stage=$(mktemp -d)
finish() {
  local status=$?
  rm -rf "$stage"
  docker/leftover-servers.sh "$ROPEKV_TEST_RUN" || status=1
  exit "$status"
}
trap finish EXIT

docker/build.sh default
ctest --preset default -j "$jobs"

docker/build.sh asan
ctest --preset asan -j "$jobs"

# Every decoder of untrusted input under libFuzzer, a few seconds each.
docker/fuzz.sh 10

# The Kubernetes manifests against the API's schemas.
docker/k8s/validate.sh

# The Dockerfile's steps (Docker itself cannot run here).
cmake --install build/default --prefix "$stage" --component runtime
docker/collect-runtime.sh "$stage"
LD_LIBRARY_PATH="$stage/lib" "$stage/bin/ropekv-server" --address=127.0.0.1:0 --data_dir="$stage/data" &
server=$!
sleep 2
kill -TERM "$server"
wait "$server"
echo "container steps: installed server started and stopped cleanly"
