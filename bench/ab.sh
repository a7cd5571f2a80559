#!/usr/bin/env bash
# ab.sh - two torhaus builds against each other: the same route table (torhaus-subject.sh) and
# flags, loaded at the same time in every round (each by its own wrk on the load core, both
# proxies and the upstream on the proxy core), so that both see the same machine conditions.
# Prints median req/s and CPU microseconds per request of each, and B/A per round.
# Use it to judge a change to torhaus itself; proxy.sh compares torhaus with its peers.
#
# Usage: A=/path/to/old/torhaus B=/path/to/new/torhaus bench/ab.sh
# Knobs: ROUNDS=10 DUR=3 WARM=1 CONNS=64 ROUTES=100 BASE_PORT=18700 KEEP_RUN=1
#        ARGS="--admin-bind off" (flags for both; default: the admin listener on, as deployed)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
: "${A:?set A to the first torhaus binary}" "${B:?set B to the second torhaus binary}"
ROUNDS=${ROUNDS:-10}; DUR=${DUR:-3}; WARM=${WARM:-1}; CONNS=${CONNS:-64}
export ROUTES=${ROUTES:-100}
BASE_PORT=${BASE_PORT:-18700}
# shellcheck source=bench/common.sh
. "$HERE/common.sh"
require_tools wrk nginx openssl taskset curl python3
enter_run_dir torhaus-ab
make_bench_certificate
export WORKERS=1
start_upstream "$BASE_PORT" 1

declare -A PORT PID BIN=([a]=$A [b]=$B)
i=1
for v in a b; do
  PORT[$v]=$((BASE_PORT + 10 * i)); i=$((i + 1))
  args=${ARGS:-"--admin-bind 127.0.0.1:$((PORT[$v] + 2))"}
  mkdir -p "$v"
  (cd "$v" && TORHAUS_BIN=${BIN[$v]} SUBJECT_PORT=${PORT[$v]} SUBJECT_TLS_PORT=$((PORT[$v] + 1)) \
    TORHAUS_ARGS=$args CONFIG_DIR=$RUN/$v/config STATE_DIR=$RUN/$v/state \
    exec taskset -c 1 "$HERE/torhaus-subject.sh" > "$RUN/$v/log" 2>&1) & PID[$v]=$!; pids+=("${PID[$v]}")
done
for v in a b; do wait_until_serving "${PORT[$v]}" "$RUN/$v/log"; done

: > results.csv
for round in $(seq "$ROUNDS"); do
  # The start order alternates, so neither build always gets a head start.
  if [ $((round % 2)) -eq 1 ]; then order=(a b); else order=(b a); fi
  for v in "${order[@]}"; do
    taskset -c 0 wrk -t1 -c"$CONNS" -d"${WARM}s" "http://127.0.0.1:${PORT[$v]}/" >/dev/null 2>&1 &
  done
  wait_wrk
  declare -A before after
  for v in a b; do before[$v]=$(cpu_ns "${PID[$v]}"); done
  for v in "${order[@]}"; do
    taskset -c 0 wrk -t1 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:${PORT[$v]}/" > "$RUN/wrk-$v.out" &
  done
  wait_wrk
  for v in a b; do after[$v]=$(cpu_ns "${PID[$v]}"); done
  for v in a b; do
    requests=$(awk '/requests in/ {print $1}' "$RUN/wrk-$v.out")
    rps=$(awk '/Requests\/sec/ {print $2}' "$RUN/wrk-$v.out")
    cpu_us=$(awk -v t=$((after[$v] - before[$v])) -v n="$requests" 'BEGIN {printf "%.2f", t / 1e3 / n}')
    echo "$v,$round,$rps,$cpu_us" >> results.csv
    printf '  round %d %s %10.0f req/s %7s us/req\n' "$round" "$v" "$rps" "$cpu_us"
  done
done

echo
echo "A = $A"
echo "B = $B"
echo "$ROUTES routes, $ROUNDS rounds of ${DUR}s, wrk -c$CONNS each, both loaded at once; medians:"
python3 - "$RUN/results.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
cell = {(r[0], r[1]): (float(r[2]), float(r[3])) for r in rows}
rounds = sorted({r[1] for r in rows}, key=int)
for v in ("a", "b"):
    rps = statistics.median(cell[(v, n)][0] for n in rounds)
    cpu = statistics.median(cell[(v, n)][1] for n in rounds)
    print(f"  {v.upper()}  {rps:10.0f} req/s  {cpu:8.2f} CPU us/req")
for i, what in ((0, "req/s"), (1, "CPU us/req")):
    ratios = sorted(cell[("b", n)][i] / cell[("a", n)][i] for n in rounds)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"  B/A {what:<10} per round: median {statistics.median(ratios):.3f}, "
          f"quartiles {q[0]:.3f}..{q[2]:.3f}, range {ratios[0]:.3f}..{ratios[-1]:.3f}")
PY
