#!/usr/bin/env bash
# Builds the libFuzzer targets (preset fuzz: clang, ASan + UBSan) and runs
# each for SECONDS seconds (default 10) starting from its committed seed
# corpus (tests/fuzz/corpus/<target>; run on a copy, so the repo is not
# changed). Fails on any crash, leak, sanitizer report, timeout or
# out-of-memory; prints executions and coverage per target.
#   usage: docker/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
cmake --preset fuzz > /dev/null
targets=(fuzz_safetensors fuzz_profile fuzz_request fuzz_packed_record fuzz_service)
cmake --build --preset fuzz -j "$(nproc)" --target "${targets[@]}"  # the fuzzers only
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts=$PWD/build/fuzz/artifacts  # reproducers of failures are kept here
mkdir -p "$artifacts"
for target in "${targets[@]}"; do
  mkdir -p "$work/$target"
  cp tests/fuzz/corpus/"$target"/* "$work/$target/"
  log="$work/$target.log"
  if ! (cd "$work" && "$OLDPWD/build/fuzz/tests/fuzz/$target" -max_total_time="$seconds" -rss_limit_mb=2048 \
          -timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts/$target-" "$work/$target" > "$log" 2>&1); then
    tail -40 "$log"
    echo "fuzz: $target FAILED (reproducer under $artifacts)" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  echo "fuzz: $target: $runs executions in ${seconds}s, coverage $cov edges, 0 crashes"
done
