#!/usr/bin/env bash
# Validates the Kubernetes manifests against the API's schemas with the
# npm package kubernetes-models (pinned in validate/package-lock.json).
#   docker/k8s/validate.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "validate.sh: needs node and npm (docker/install-deps.sh installs them)" >&2
  exit 1
fi
(cd "$here/validate" && npm ci --no-audit --no-fund --loglevel=error)
node "$here/validate/validate.mjs" "$here"/*.yaml
