#!/usr/bin/env bash
# Fails when ropekv-server processes started by one test run are still
# alive, and ends them (so they cannot accumulate on a machine kept between
# runs). A run marks everything it starts by exporting ROPEKV_TEST_RUN
# (docker/test.sh does); every process it starts inherits the variable, so
# the check finds exactly that run's servers and never an unrelated one.
#   usage: docker/leftover-servers.sh MARKER
set -euo pipefail
marker=${1:?usage: docker/leftover-servers.sh MARKER}
found=()
for env in /proc/[0-9]*/environ; do
  pid=${env#/proc/}
  pid=${pid%/environ}
  [ "$pid" = "$$" ] && continue
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  [ "$(basename "${exe:-none}")" = "ropekv-server" ] || continue
  if tr '\0' '\n' < "$env" 2>/dev/null | grep -qx "ROPEKV_TEST_RUN=$marker"; then
    found+=("$pid")
  fi
done
if [ ${#found[@]} -eq 0 ]; then
  echo "leftover-servers: no ropekv-server of run $marker is alive"
  exit 0
fi
echo "leftover-servers: ${#found[@]} ropekv-server process(es) of run $marker outlived their tests:" >&2
for pid in "${found[@]}"; do
  echo "  pid $pid (parent $(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || echo '?')): $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" >&2
done
kill -KILL "${found[@]}" 2>/dev/null || true
exit 1
