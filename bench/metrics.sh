#!/usr/bin/env bash
# metrics.sh - what per-request metrics and access logs cost: the same torhaus binary and route
# table (torhaus-subject.sh, ROUTES=100) run three ways side by side, measured interleaved:
#   off      --no-request-metrics                      (no per-request series, no access log)
#   metrics  the default                               (per-request series, admin listener)
#   full     metrics + --access-log FILE               (one JSON line per request to a file)
# Load: wrk keep-alive HTTP/1.1 against the catch-all route; upstream: nginx `return 200`.
# Layout as bench.sh's split: wrk on cpu0, torhaus and the upstream on cpu1.
# Rounds go A B C, then C B A, ...; the table shows medians of req/s and of the proxy's CPU
# microseconds per request (from /proc/PID/stat), and each variant's ratio to `off`.
# Goal (issue 6): metrics and access logs cost under 3% of requests per second.
#
# Usage: bench/metrics.sh                    # builds torhaus --release first
#        SKIP_BUILD=1 ROUNDS=7 DUR=5 bench/metrics.sh
# Knobs: TORHAUS_BIN ROUNDS=5 DUR=4 WARM=1 CONNS=64 THREADS=2 ROUTES=100 BASE_PORT=18500 KEEP_RUN=1
#        TOGETHER=1 (load the three variants at the same time, see cells_together)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
ROUNDS=${ROUNDS:-5}; DUR=${DUR:-4}; WARM=${WARM:-1}; CONNS=${CONNS:-64}; THREADS=${THREADS:-2}
export ROUTES=${ROUTES:-100}
BASE_PORT=${BASE_PORT:-18500}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/torhaus/target}
if [ -z "${TORHAUS_BIN:-}" ]; then
  if [ -z "${SKIP_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release --quiet --bin torhaus)
  fi
  TORHAUS_BIN=$CARGO_TARGET_DIR/release/torhaus
fi
export TORHAUS_BIN
# shellcheck source=bench/common.sh
. "$HERE/common.sh"
require_tools wrk nginx openssl taskset curl
enter_run_dir torhaus-metrics-bench
make_bench_certificate
export WORKERS=1
start_upstream "$BASE_PORT" 1

variants=(off metrics full)
declare -A PORT PID
i=1
for v in "${variants[@]}"; do
  PORT[$v]=$((BASE_PORT + 10 * i)); i=$((i + 1))
  admin=127.0.0.1:$((PORT[$v] + 2))
  case $v in
    off) args="--no-request-metrics --admin-bind off" ;;
    metrics) args="--admin-bind $admin" ;;
    full) args="--admin-bind $admin --access-log ${ACCESS_LOG:-$RUN/access-full.log}" ;;
  esac
  mkdir -p "$v"
  (cd "$v" && SUBJECT_PORT=${PORT[$v]} SUBJECT_TLS_PORT=$((PORT[$v] + 1)) TORHAUS_ARGS=$args \
    CONFIG_DIR=$RUN/$v/config STATE_DIR=$RUN/$v/state \
    exec taskset -c 1 "$HERE/torhaus-subject.sh" > "$RUN/$v/log" 2>&1) & PID[$v]=$!; pids+=("${PID[$v]}")
done
for v in "${variants[@]}"; do wait_until_serving "${PORT[$v]}" "$RUN/$v/log"; done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
: > results.csv
cell() { # variant round
  local v=$1 pid=${PID[$1]} port=${PORT[$1]}
  taskset -c 0 wrk -t"$THREADS" -c"$CONNS" -d"${WARM}s" "http://127.0.0.1:$port/" >/dev/null 2>&1
  local before; before=$(ticks "$pid")
  local out; out=$(taskset -c 0 wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:$port/")
  local after; after=$(ticks "$pid")
  local requests; requests=$(echo "$out" | awk '/requests in/ {print $1}')
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local cpu_us; cpu_us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$requests" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
  echo "$v,$2,$rps,$cpu_us" >> results.csv
  printf '  round %d %-8s %10.0f req/s %7s us/req\n' "$2" "$v" "$rps" "$cpu_us"
}
# TOGETHER=1: the three variants are loaded at the same time, each by its own wrk, so every
# round measures them under the same machine conditions (steal time, frequency, neighbours);
# they share the proxy core, and CPU microseconds per request compare their efficiency.
cells_together() { # round
  local v out i before=() after=() order=()
  # The start order rotates from round to round, so no variant always gets a head start.
  for i in 0 1 2; do order+=("${variants[$(( (i + $1) % 3 ))]}"); done
  for v in "${order[@]}"; do
    taskset -c 0 wrk -t1 -c"$CONNS" -d"${WARM}s" "http://127.0.0.1:${PORT[$v]}/" >/dev/null 2>&1 &
  done
  wait_wrk
  for v in "${variants[@]}"; do before+=("$(cpu_ns "${PID[$v]}")"); done
  for v in "${order[@]}"; do
    taskset -c 0 wrk -t1 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:${PORT[$v]}/" > "$RUN/wrk-$v.out" &
  done
  wait_wrk
  for v in "${variants[@]}"; do after+=("$(cpu_ns "${PID[$v]}")"); done
  i=0
  for v in "${variants[@]}"; do
    out=$(cat "$RUN/wrk-$v.out")
    local requests; requests=$(echo "$out" | awk '/requests in/ {print $1}')
    local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    local cpu_us; cpu_us=$(awk -v t=$((after[i] - before[i])) -v n="$requests" 'BEGIN {printf "%.2f", t / 1e3 / n}')
    echo "$v,$1,$rps,$cpu_us" >> results.csv
    printf '  round %d %-8s %10.0f req/s %7s us/req (together)\n' "$1" "$v" "$rps" "$cpu_us"
    i=$((i + 1))
  done
}
for round in $(seq "$ROUNDS"); do
  if [ -n "${TOGETHER:-}" ]; then cells_together "$round"; continue; fi
  if [ $((round % 2)) -eq 1 ]; then order=("${variants[@]}"); else order=(full metrics off); fi
  for v in "${order[@]}"; do cell "$v" "$round"; done
done

echo
echo "torhaus $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null), $ROUTES routes, $ROUNDS rounds of ${DUR}s, wrk -c$CONNS, medians:"
python3 - "$RUN/results.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
med = {}
for v in ("off", "metrics", "full"):
    rps = statistics.median(float(r[2]) for r in rows if r[0] == v)
    cpu = statistics.median(float(r[3]) for r in rows if r[0] == v)
    med[v] = (rps, cpu)
print(f"{'variant':<9}{'req/s':>10}{'ratio':>8}{'CPU us/req':>12}{'ratio':>8}")
for v, (rps, cpu) in med.items():
    print(f"{v:<9}{rps:>10.0f}{rps / med['off'][0]:>8.3f}{cpu:>12.2f}{cpu / med['off'][1]:>8.3f}")
loss = 1 - med["full"][0] / med["off"][0]
print(f"metrics + access log cost {loss * 100:.1f}% of req/s (goal: under 3%)")
# Paired by round: each round measures the variants back to back, so slow swings of the
# machine (steal time, frequency) cancel out of their ratio.
rounds = sorted({r[1] for r in rows}, key=int)
cell = {(r[0], r[1]): float(r[2]) for r in rows}
for v in ("metrics", "full"):
    ratios = sorted(cell[(v, n)] / cell[("off", n)] for n in rounds)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"{v} / off per round: median {statistics.median(ratios):.3f}, "
          f"quartiles {q[0]:.3f}..{q[2]:.3f}, range {ratios[0]:.3f}..{ratios[-1]:.3f}")
PY
lines=$(wc -l < "${ACCESS_LOG:-$RUN/access-full.log}" 2>/dev/null || echo "?")
echo "access log lines written by 'full': $lines"
