#!/bin/bash
# ropekv-bench against a real ropekv-server on loopback: every scenario runs
# without errors and writes a JSON report of the documented schema
# (client/bench/report.h); echo is refused by a server without
# --enable_echo and the refusals are counted, not hidden.
#   bench_smoke.sh ROPEKV_SERVER ROPEKV_BENCH
set -euo pipefail
server=$1
bench=$2
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

# start_server LOGNAME [FLAGS...]: starts a server and sets $port. It runs in
# this shell (not in a $(...) subshell, whose pid list the trap would never
# see), and setpriv gives it SIGKILL when this script dies, even by SIGKILL
# (ctest's timeout), when the trap cannot run.
start_server() {
  local log=$dir/$1
  shift
  setpriv --pdeathsig KILL -- "$server" --address=127.0.0.1:0 --backend=cpu --memory_bytes=268435456 "$@" \
    > "$log" 2>&1 &
  pids+=($!)
  port=
  for _ in $(seq 100); do
    port=$(grep -o '"port":"[0-9]*"' "$log" | head -1 | grep -o '[0-9][0-9]*' || true)
    if [ -n "$port" ]; then return; fi
    sleep 0.1
  done
  echo "server did not start:" >&2
  cat "$log" >&2
  exit 1
}

start_server server.log --enable_echo
common=(--server=127.0.0.1:$port --warmup_s=0.1 --duration_s=0.4 --layers=2 --q_heads=4 --kv_heads=2 --head_dim=64)
"$bench" "${common[@]}" --scenario=append --chunk_tokens=64,256 --concurrency=1,2 --json="$dir/append.json"
"$bench" "${common[@]}" --scenario=attend --context=300 --batch=1,3 --concurrency=2 --json="$dir/attend.json"
"$bench" "${common[@]}" --scenario=attend --context=300 --rate=50 --poisson --concurrency=2 --json="$dir/open.json"
"$bench" "${common[@]}" --scenario=decode --context=64 --concurrency=3 --json="$dir/decode.json"
"$bench" "${common[@]}" --scenario=echo --echo_of=attend --concurrency=2 --json="$dir/echo_attend.json"
"$bench" "${common[@]}" --scenario=echo --echo_of=append --chunk_tokens=256 --json="$dir/echo_append.json"

start_server plain.log
"$bench" --server=127.0.0.1:$port --warmup_s=0 --duration_s=0.2 --scenario=echo --json="$dir/refused.json"

python3 - "$dir" <<'PY'
import json, sys, os
d = sys.argv[1]
expect_rows = {"append": 4, "attend": 2, "open": 1, "decode": 1, "echo_attend": 1, "echo_append": 1, "refused": 1}
for name, rows in expect_rows.items():
    r = json.load(open(os.path.join(d, name + ".json")))
    assert r["tool"] == "ropekv-bench" and r["schema_version"] == 1, name
    for k in ("server_backend", "server_device", "client_cpus", "commit", "date"):
        assert k in r["environment"], (name, k)
    assert r["environment"]["server_backend"] == "cpu", name
    assert len(r["rows"]) == rows, (name, len(r["rows"]))
    for row in r["rows"]:
        for k in ("p50", "p90", "p99", "p999", "mean", "max"):
            assert k in row["latency_us"], (name, k)
        if name == "refused":
            assert row["ops"] == 0 and row["errors"].get("UNIMPLEMENTED", 0) > 0, row
            continue
        assert row["ops"] > 0 and row["errors"] == {}, (name, row)
        assert row["latency_us"]["p50"] > 0 and row["bytes_per_s"] > 0, (name, row)
    if name == "decode":
        assert abs(r["rows"][0]["calls_per_s"] - 4 * r["rows"][0]["ops_per_s"]) < 1e-6
print("bench smoke: all scenarios ran, reports follow the schema")
PY
