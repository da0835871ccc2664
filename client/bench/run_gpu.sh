#!/bin/bash
# The H200 figures of client/bench/RESULTS.md: ropekv-server (CUDA backend)
# and ropekv-bench on the same host over loopback, each real scenario next
# to the echo of the same payloads.
#   run_gpu.sh OUT_DIR   (ropekv-server and ropekv-bench on PATH)
set -euo pipefail
out=$1
mkdir -p "$out"
ropekv-server --address=127.0.0.1:50090 --backend=cuda --enable_echo \
  --memory_bytes=$((48 << 30)) --max_message_bytes=$((256 << 20)) > "$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid' EXIT
sleep 3
b() { local name=$1; shift; ropekv-bench --server=127.0.0.1:50090 --warmup_s=1 --duration_s=4 --channels=8 \
        --json="$out/h200-$name.json" "$@" 2>&1 | tee "$out/h200-$name.txt"; }
b echo-append --scenario=echo --echo_of=append --chunk_tokens=1024,4096,16384 --concurrency=1,4
b append --scenario=append --chunk_tokens=1024,4096,16384 --concurrency=1,4 --session_tokens=262144
b echo-attend --scenario=echo --echo_of=attend --concurrency=1
b attend --scenario=attend --context=32768 --concurrency=1,8
b decode --scenario=decode --context=4096 --concurrency=1,64 --duration_s=6
