# common.sh - set-up shared by the benchmarks that run torhaus alone (metrics.sh,
# metrics-callgrind.sh, ab.sh); sourced, not run. proxy.sh uses bench.sh's own.

# Exits unless every tool named is on PATH.
require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool: scripts/install-deps.sh bench" >&2; exit 1; }
  done
}

# Makes the run directory RUN (kept with KEEP_RUN=1), changes into it, and kills every pid in
# `pids` on exit.
enter_run_dir() { # name
  RUN=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
  cd "$RUN"
}

bench_cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_RUN:-}" ] || rm -rf "$RUN"
}

# The benchmark certificate (P-256, localhost) for torhaus-subject.sh's HTTPS listener.
make_bench_certificate() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$RUN/key.pem" \
    -out "$RUN/cert.pem" -days 7 -subj /CN=localhost -addext "subjectAltName=DNS:localhost" 2>/dev/null
  export TLS_CERT=$RUN/cert.pem TLS_KEY=$RUN/key.pem
}

# Starts the upstream, an nginx answering every request with BODY, and exports UPSTREAM.
# CPUS pins it (taskset) when given.
start_upstream() { # port [cpus] [body]
  local port=$1 cpus=${2:-} body=${3:-$(head -c 100 /dev/zero | tr '\0' 'x')}
  export UPSTREAM=127.0.0.1:$port
  mkdir -p "$RUN/up"
  cat > "$RUN/up/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $RUN/up/nginx.pid; error_log $RUN/up/error.log error;
events { worker_connections 16384; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path $RUN/up/body; proxy_temp_path $RUN/up/proxy;
  server { listen $UPSTREAM backlog=4096;
    location / { default_type text/plain; return 200 "$body"; } }
}
NGINX
  if [ -n "$cpus" ]; then
    taskset -c "$cpus" nginx -p "$RUN/up" -c "$RUN/up/nginx.conf" & pids+=($!)
  else
    nginx -p "$RUN/up" -c "$RUN/up/nginx.conf" & pids+=($!)
  fi
}

# Waits up to 10 s for a torhaus on PORT to answer; exits with its LOG if it never does.
wait_until_serving() { # port log
  local _
  for _ in $(seq 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "torhaus on port $1 did not start:" >&2
  cat "$2" >&2
  exit 1
}

# CPU time of every thread of a process, in nanoseconds (schedstat: finer than stat's ticks,
# which would be a few percent of a short cell).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }

# Waits for the wrk processes this shell started (not for the servers, which never end).
wait_wrk() { while pgrep -P $$ -x wrk >/dev/null; do sleep 0.1; done; }
