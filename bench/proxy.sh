#!/usr/bin/env bash
# proxy.sh - torhaus against nginx and HAProxy, side by side and interleaved, with a real route
# table (ROUTES HTTPRoutes in torhaus, the same number of host routes in nginx and HAProxy; the
# measured traffic hits the catch-all route). Modes: h1 (wrk keep-alive), h2 (h2load over
# TLS 1.3), hs (a new TLS connection per request). Reports req/s, p50, p99, CPU us/request,
# RSS and ratios to nginx; see README.md. Not a test: CI never runs it.
#
# Knobs: everything bench.sh reads (ROUNDS, DUR_*, MODES, LAYOUT, ...), plus ROUTES=100,
#   SKIP_BUILD=1 (use the existing release binary), TORHAUS_BIN (use this binary instead).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/torhaus/target}
export ROUTES=${ROUTES:-100}

if [ -z "${TORHAUS_BIN:-}" ]; then
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release --bin torhaus)
  fi
  TORHAUS_BIN=$CARGO_TARGET_DIR/release/torhaus
fi
[ -x "$TORHAUS_BIN" ] || { echo "no torhaus binary at $TORHAUS_BIN" >&2; exit 2; }
export TORHAUS_BIN

export PROXIES=${PROXIES:-"nginx haproxy"}
export EXTRA_ROUTES=$((ROUTES - 1))
export SUBJECT_NAME=torhaus
export SUBJECT_CMD="$HERE/torhaus-subject.sh"
export RUN_DIR=${RUN_DIR:-$HERE/run.$(date +%Y%m%d-%H%M%S)}
exec "$HERE/bench.sh"
