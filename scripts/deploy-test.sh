#!/usr/bin/env bash
# Checks the install artifacts (charts/torhaus, deploy/, Dockerfile, the cluster script) without a
# cluster: helm lint and rendering, strict schema validation, the RBAC and security properties,
# the k3s example through `torhaus check`, hadolint and shellcheck. See deploy/test/check_deploy.py.
# Installs its tools from PyPI into a virtualenv outside the clone.
# Usage: scripts/deploy-test.sh [--update]   (--update rewrites deploy/torhaus.yaml from the chart)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TORHAUS_DEPLOY_VENV:-$HOME/.cache/torhaus/deploy-venv}
requirements=deploy/test/requirements.txt
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Reinstall only when the pinned requirements change.
if ! cmp -s "$requirements" "$stamp"; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
fi
exec "$venv/bin/python" deploy/test/check_deploy.py "$@"
