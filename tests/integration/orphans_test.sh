#!/bin/bash
# No test leaves a ropekv-server behind: not when it fails, not when it is
# killed (ctest's timeout sends SIGKILL, so no trap or destructor runs).
# Each case runs under its own ROPEKV_TEST_RUN marker and is then checked
# by docker/leftover-servers.sh, which must also catch a real leftover.
#   orphans_test.sh ROPEKV_SERVER CLUSTER_TEST SOURCE_DIR
set -euo pipefail
server=$1
cluster_test=$2
src=$3
leftover=$src/docker/leftover-servers.sh
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
base="orphans-$$-$(date +%s)"

servers_of() {  # count of live ropekv-server processes carrying marker $1
  local n=0 env pid exe
  for env in /proc/[0-9]*/environ; do
    pid=${env#/proc/}; pid=${pid%/environ}
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    [ "$(basename "${exe:-none}")" = ropekv-server ] || continue
    if tr '\0' '\n' < "$env" 2>/dev/null | grep -qx "ROPEKV_TEST_RUN=$1"; then n=$((n + 1)); fi
  done
  echo "$n"
}
wait_for_servers() {  # marker count: until that many are up (10 s)
  for _ in $(seq 100); do
    [ "$(servers_of "$1")" -ge "$2" ] && return 0
    sleep 0.1
  done
  echo "FAIL: $2 server(s) of $1 never started" >&2
  exit 1
}
expect_none_left() {  # marker what: the servers go within 5 s, the check agrees
  for _ in $(seq 50); do
    [ "$(servers_of "$1")" -eq 0 ] && break
    sleep 0.1
  done
  if ! "$leftover" "$1"; then
    echo "FAIL: $2 left servers behind" >&2
    exit 1
  fi
  echo "ok: $2"
}

# The check itself finds a server that escaped (started in a new session,
# with no parent-death signal) and ends it.
ROPEKV_TEST_RUN=$base-escaped setsid "$server" --address=127.0.0.1:0 --backend=cpu \
  --memory_bytes=16777216 > "$dir/escaped.log" 2>&1 < /dev/null &
disown $!
wait_for_servers "$base-escaped" 1
if "$leftover" "$base-escaped" 2> "$dir/check.log"; then
  echo "FAIL: leftover-servers.sh missed a live server" >&2
  exit 1
fi
grep -q "outlived their tests" "$dir/check.log"
[ "$(servers_of "$base-escaped")" -eq 0 ] || { sleep 1; [ "$(servers_of "$base-escaped")" -eq 0 ]; }
echo "ok: the check reports and ends a leftover server"

# bench_smoke.sh failing right after its first server started.
if ROPEKV_TEST_RUN=$base-failed bash "$src/tests/integration/bench_smoke.sh" "$server" /bin/false \
     > "$dir/failed.log" 2>&1; then
  echo "FAIL: bench_smoke.sh with a failing bench passed" >&2
  exit 1
fi
expect_none_left "$base-failed" "bench_smoke.sh that failed"

# bench_smoke.sh killed by SIGKILL while its server runs.
printf '#!/bin/sh\nexec setpriv --pdeathsig KILL sleep 60\n' > "$dir/slow-bench"
chmod +x "$dir/slow-bench"
ROPEKV_TEST_RUN=$base-killed bash "$src/tests/integration/bench_smoke.sh" "$server" "$dir/slow-bench" \
  > "$dir/killed.log" 2>&1 &
smoke=$!
wait_for_servers "$base-killed" 1
kill -KILL "$smoke"
wait "$smoke" 2>/dev/null || true
expect_none_left "$base-killed" "bench_smoke.sh killed by SIGKILL"

# The cluster test (three server processes) killed by SIGKILL mid-test.
ROPEKV_TEST_RUN=$base-cluster "$cluster_test" --gtest_filter='ClusterTest.*' --gtest_repeat=50 \
  > "$dir/cluster.log" 2>&1 &
cluster=$!
wait_for_servers "$base-cluster" 3
kill -KILL "$cluster"
wait "$cluster" 2>/dev/null || true
expect_none_left "$base-cluster" "cluster_test killed by SIGKILL"
