#!/usr/bin/env bash
# h1-probe.sh - a design question, not a torhaus benchmark: how near nginx could an HTTP/1.1
# proxy engine of torhaus's own get on the same stack (pingora-core's listener, one tokio
# current-thread runtime, torhaus's allocator)? Runs bench.sh's h1 mode with the probe
# (bench/h1-probe: GET without body, one upstream, a keep-alive pool, the four forwarding
# headers, no routing, metrics or logs) as the subject beside nginx. Compare its ratio with
# torhaus's from proxy.sh. Knobs: as bench.sh (ROUNDS, DUR_H1, ...).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/torhaus/target}
[ "${SKIP_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release --quiet -p h1-probe)
export PROBE_BIN=$CARGO_TARGET_DIR/release/h1-probe
export PROXIES=${PROXIES:-nginx} MODES=h1 SUBJECT_NAME=h1-probe
# Expanded by bench.sh's `bash -c`, where SUBJECT_PORT and UPSTREAM are set.
# shellcheck disable=SC2016
export SUBJECT_CMD='"$PROBE_BIN" 127.0.0.1:$SUBJECT_PORT $UPSTREAM'
export RUN_DIR=${RUN_DIR:-$HERE/run.probe.$(date +%Y%m%d-%H%M%S)}
exec "$HERE/bench.sh"
