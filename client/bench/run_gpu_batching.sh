#!/bin/bash
# Attend batching window on and off on the H200 (client/bench/RESULTS.md):
# the same decode and attend loads against a server started without and
# with --attend_batch_window.
#   run_gpu_batching.sh OUT_DIR WINDOW   (e.g. 200us; binaries on PATH)
set -euo pipefail
out=$1
window=$2
mkdir -p "$out"
for w in 0 "$window"; do
  ropekv-server --address=127.0.0.1:50091 --backend=cuda --enable_echo --attend_batch_window="$w" \
    --memory_bytes=$((48 << 30)) > "$out/server-window-$w.log" 2>&1 &
  pid=$!
  sleep 3
  b() { local name=$1; shift; ropekv-bench --server=127.0.0.1:50091 --warmup_s=1 --duration_s=4 --channels=8 \
          --json="$out/h200-window-$w-$name.json" "$@" 2>&1 | grep -v '^filled' | tee "$out/h200-window-$w-$name.txt"; }
  b decode --scenario=decode --context=4096 --concurrency=64
  b attend --scenario=attend --context=32768 --concurrency=1,8
  kill $pid
  wait $pid || true
done
