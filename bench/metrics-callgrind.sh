#!/usr/bin/env bash
# metrics-callgrind.sh - the cost of metrics and access logs in instructions, which unlike
# req/s does not depend on what else the machine runs: torhaus (release build, same route table
# as bench.sh via torhaus-subject.sh) runs under `valgrind --tool=callgrind` for each variant of
# metrics.sh (off, metrics, full) and serves N, then 2N keep-alive requests from curl; the
# difference between the two runs' instruction totals, divided by N, is the instructions per
# request without start-up and shutdown.
# Usage: SKIP_BUILD=1 bench/metrics-callgrind.sh      Knobs: N=2000 TORHAUS_BIN BASE_PORT=18600
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
N=${N:-2000}
BASE_PORT=${BASE_PORT:-18600}
export ROUTES=${ROUTES:-100}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/torhaus/target}
if [ -z "${TORHAUS_BIN:-}" ]; then
  [ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && cargo build --release --quiet --bin torhaus)
  TORHAUS_BIN=$CARGO_TARGET_DIR/release/torhaus
fi
# shellcheck source=bench/common.sh
. "$HERE/common.sh"
require_tools valgrind nginx curl openssl
enter_run_dir torhaus-callgrind
make_bench_certificate
export WORKERS=1
start_upstream "$BASE_PORT" "" ok
cat > valgrind-torhaus <<SH
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=\$CALLGRIND_OUT "$TORHAUS_BIN" "\$@"
SH
chmod +x valgrind-torhaus

instructions() { # variant requests
  local v=$1 n=$2 port=$((BASE_PORT + 10)) args
  case $v in
    off) args="--no-request-metrics --admin-bind off" ;;
    metrics) args="--admin-bind 127.0.0.1:$((BASE_PORT + 2))" ;;
    full) args="--admin-bind 127.0.0.1:$((BASE_PORT + 2)) --access-log $RUN/access.log" ;;
  esac
  mkdir -p "$RUN/$v-$n"
  (cd "$RUN/$v-$n" && CALLGRIND_OUT=$RUN/$v-$n/callgrind.out TORHAUS_BIN=$RUN/valgrind-torhaus \
    SUBJECT_PORT=$port SUBJECT_TLS_PORT=$((port + 1)) TORHAUS_ARGS="$args --grace-period 1s" \
    CONFIG_DIR=$RUN/$v-$n/config STATE_DIR=$RUN/$v-$n/state \
    exec "$HERE/torhaus-subject.sh" > "$RUN/$v-$n/log" 2>&1) &
  local pid=$!
  for _ in $(seq 600); do curl -fs -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  curl -fs -o /dev/null "http://127.0.0.1:$port/[1-$n]"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  awk '/^(summary|totals):/ {print $2; exit}' "$RUN/$v-$n/callgrind.out"
}
# Inclusive instructions of the functions that do nothing but observability work: unlike the
# totals, these do not move with how often the runtime happened to park between requests. Only
# each function's main entry (the one naming the binary) counts: the entries callgrind adds for
# code inlined from other files are already inside it.
OWN_FUNCTIONS='metrics::Observer::finish|metrics::Observer::note_end|metrics::Observer::note_arrival|metrics::render_request_fields|access_log::write_lines'
own_instructions() { # callgrind.out
  callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$1" 2>/dev/null |
    awk -v pat="$OWN_FUNCTIONS" '$0 ~ pat && /\[\// && $0 !~ /=>|>  / {gsub(",", "", $1); sum += $1} END {print sum + 0}'
}
echo "instructions per request (callgrind, $ROUTES routes, keep-alive HTTP/1.1, N=$N):"
declare -A per own
for v in ${VARIANTS:-off metrics full}; do
  one=$(instructions "$v" "$N"); two=$(instructions "$v" $((2 * N)))
  per[$v]=$(( (two - one) / N ))
  own[$v]=$(( ($(own_instructions "$RUN/$v-$((2 * N))/callgrind.out") - $(own_instructions "$RUN/$v-$N/callgrind.out")) / N ))
  printf '  %-8s %8d   of which metrics and access log functions %6d\n' "$v" "${per[$v]}" "${own[$v]}"
done
[ -n "${per[off]:-}" ] || exit 0 # ratios need the `off` variant
for v in ${VARIANTS:-off metrics full}; do
  [ "$v" = off ] && continue
  awk -v a="${per[$v]}" -v b="${per[off]}" -v o="${own[$v]}" -v v="$v" 'BEGIN {
    printf "  %s / off = %.3f (%+.1f%%); its own functions: %.1f%% of off\n", v, a / b, (a / b - 1) * 100, o / b * 100}'
done
