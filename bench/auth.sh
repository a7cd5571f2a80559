#!/usr/bin/env bash
# auth.sh - what identity costs per request: torhaus serving one upstream on three routes, side by
# side in one run: /app under an AuthPolicy with a valid session cookie (OIDC login done once,
# through torhaus, against the test provider tests/rigs/oidc), /api under an AuthPolicy with a
# bearer JWT (client credentials, RS256), and /open with no policy, requested with the same
# cookie or token so that each pair differs only in the policy. Rounds are interleaved (and
# reversed every other round); medians of req/s and of torhaus's CPU time per request are
# reported, with each policy's ratio to /open.
# Goal (issue 5): under 10% fewer requests per second than the same route without a policy.
# Not a test: CI never runs it.
#
# Knobs: ROUNDS=3 DUR=3 CONNS=32 THREADS=1 SKIP_BUILD=1 TORHAUS_BIN KEEP_RUN=1 BASE_PORT=19400
# Layout (2 cores): wrk on cpu0; torhaus (1 thread) and the upstream nginx on cpu1.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/torhaus/target}
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-3}; CONNS=${CONNS:-32}; THREADS=${THREADS:-1}
BASE_PORT=${BASE_PORT:-19400}
for t in nginx wrk node curl jq taskset; do
  command -v $t >/dev/null || { echo "missing $t (scripts/install-deps.sh bench)" >&2; exit 2; }
done
[ -d "$ROOT/tests/rigs/oidc/node_modules/oidc-provider" ] || (cd "$ROOT/tests/rigs/oidc" && npm ci --no-audit --no-fund --loglevel=error)
if [ -z "${TORHAUS_BIN:-}" ]; then
  [ "${SKIP_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release --bin torhaus)
  TORHAUS_BIN=$CARGO_TARGET_DIR/release/torhaus
fi

RUN=$(mktemp -d /tmp/torhaus-auth-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP_RUN:-0}" = 1 ]; then echo "run directory kept: $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
UP_PORT=$BASE_PORT; OP_PORT=$((BASE_PORT + 1)); GW_PORT=$((BASE_PORT + 2)); ADMIN_PORT=$((BASE_PORT + 3))
GW=http://127.0.0.1:$GW_PORT
ISSUER=http://127.0.0.1:$OP_PORT/application/o/gateway/

wait_http() { # url what
  for _ in $(seq 1 150); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "$2 did not answer at $1" >&2; exit 1
}

# Upstream: nginx answering 200 with a 100-byte body.
mkdir -p "$RUN/up"
cat > "$RUN/up/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $RUN/up/nginx.pid; error_log $RUN/up/error.log error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "$(head -c 100 /dev/zero | tr '\0' x)"; } } }
EOF
taskset -c 1 nginx -p "$RUN/up" -c "$RUN/up/nginx.conf" & PIDS+=($!)

# The provider, knowing torhaus's callback; tokens live an hour so nothing refreshes mid-run.
(cd "$ROOT/tests/rigs/oidc" && OP_PORT=$OP_PORT OP_HOST=127.0.0.1 OP_AT_TTL=3600 OP_ID_TTL=3600 \
  OP_JWKS_FILE="$RUN/jwks.json" OP_REDIRECT_URIS="$GW/oauth2/callback" \
  exec taskset -c 0 node op.mjs > "$RUN/op.log" 2>&1) & PIDS+=($!)
wait_http "${ISSUER}.well-known/openid-configuration" "the OpenID Provider"

mkdir -p "$RUN/config"
cat > "$RUN/config/bench.yaml" <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: torhaus}
spec: {controllerName: torhaus.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: bench}
spec:
  gatewayClassName: torhaus
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: up, namespace: bench}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: up, namespace: bench, labels: {kubernetes.io/service-name: up}}
addressType: IPv4
ports: [{name: http, port: $UP_PORT}]
endpoints: [{addresses: ["127.0.0.1"]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: open, namespace: bench}
spec:
  parentRefs: [{name: edge}]
  rules: [{matches: [{path: {type: PathPrefix, value: /open}}], backendRefs: [{name: up, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: bench}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: up, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: bench}
spec:
  parentRefs: [{name: edge}]
  rules: [{matches: [{path: {type: PathPrefix, value: /api}}], backendRefs: [{name: up, port: 80}]}]
---
apiVersion: v1
kind: Secret
metadata: {name: oidc, namespace: bench}
stringData: {client-secret: gateway-secret, session-key: 0123456789abcdef0123456789abcdef}
---
apiVersion: torhaus.dev/v1alpha1
kind: AuthPolicy
metadata: {name: sso, namespace: bench}
spec:
  targetRefs: [{kind: HTTPRoute, name: app}]
  oidc: {issuer: "$ISSUER", clientID: gateway, clientSecretRef: {name: oidc, key: client-secret}}
  session: {keySecretRefs: [{name: oidc, key: session-key}]}
  identityHeaders: {preset: authentik}
---
apiVersion: torhaus.dev/v1alpha1
kind: AuthPolicy
metadata: {name: api, namespace: bench}
spec:
  targetRefs: [{kind: HTTPRoute, name: api}]
  jwt: {issuers: [{issuer: "$ISSUER", audiences: [gateway], algorithms: [RS256]}]}
  identityHeaders: {preset: authentik}
EOF
"$TORHAUS_BIN" check --config "$RUN/config" > "$RUN/check.txt" || { cat "$RUN/check.txt"; exit 1; }
taskset -c 1 "$TORHAUS_BIN" run --config "$RUN/config" --state-dir "$RUN/state" --threads 1 \
  --port-map "80:$GW_PORT" --admin-bind "127.0.0.1:$ADMIN_PORT" > "$RUN/torhaus.log" 2>&1 & PIDS+=($!)
TORHAUS_PID=$!
TICK_US=$((1000000 / $(getconf CLK_TCK)))
wait_http "$GW/open" "torhaus"

# One login through torhaus, as a browser does it, with curl: the session cookie for /app.
JAR=$RUN/cookies
loc() { { grep -i '^location:' || true; } | tr -d '\r' | sed 's/^[Ll]ocation: //'; }
L=$(curl -sS -o /dev/null -D - -c "$JAR" -b "$JAR" -H 'Accept: text/html' "$GW/app" | loc)
L=$(curl -sS -o /dev/null -D - -c "$JAR" -b "$JAR" "$L" | loc)                       # authorize -> interaction
L=$(curl -sS -o /dev/null -D - -c "$JAR" -b "$JAR" -X POST "http://127.0.0.1:$OP_PORT$L/login" \
  --data-urlencode username=alice --data-urlencode password=alice | loc)             # -> resume
L=$(curl -sS -o /dev/null -D - -c "$JAR" -b "$JAR" "$L" | loc)                       # -> torhaus callback
curl -sS -o /dev/null -c "$JAR" -b "$JAR" "$L"                                        # session cookie set
COOKIE=$(awk '$6 ~ /^torhaus_session/ {printf "%s%s=%s", sep, $6, $7; sep="; "}' "$JAR")
[ -n "$COOKIE" ] || { echo "login through torhaus failed; torhaus log:" >&2; tail -20 "$RUN/torhaus.log" >&2; exit 1; }
TOKEN=$(curl -fsS -u api-client:api-secret "${ISSUER}token" -d grant_type=client_credentials -d scope=api:read | jq -r .access_token)
for check in "open|" "app|Cookie: $COOKIE" "api|Authorization: Bearer $TOKEN"; do
  path=${check%%|*}; header=${check#*|}
  code=$(curl -s -o /dev/null -w '%{http_code}' ${header:+-H "$header"} "$GW/$path")
  [ "$code" = 200 ] || { echo "/$path answers $code, not 200" >&2; exit 1; }
done

# torhaus's CPU time (user + system) in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$TORHAUS_PID/stat"; }

run_wrk() { # name header -> "req/s cpu-us-per-request"
  local out before after
  before=$(cpu_ticks)
  if [ -n "$2" ]; then
    out=$(taskset -c 0 wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" -H "$2" "$GW/$1/x" 2>&1)
  else
    out=$(taskset -c 0 wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" "$GW/$1/x" 2>&1)
  fi
  after=$(cpu_ticks)
  if grep -q "Non-2xx" <<<"$out"; then echo "/$1: non-2xx answers during the run:" >&2; echo "$out" >&2; exit 1; fi
  awk -v ticks=$((after - before)) -v tick_us="$TICK_US" '
    / requests in / {n = $1}
    /Requests\/sec/ {rps = $2}
    END {printf "%s %.1f\n", rps, ticks * tick_us / n}' <<<"$out"
}
declare -A RPS CPU
# Each policy is compared with /open carrying the same credential header, so the request sizes
# are the same and only the policy's work (and the identity headers it adds) differs.
header_of() {
  case $1 in
    open-cookie|app) echo "Cookie: $COOKIE" ;;
    open-bearer|api) echo "Authorization: Bearer $TOKEN" ;;
  esac
}
path_of() { case $1 in open-*) echo open ;; *) echo "$1" ;; esac; }
order=(open-cookie app open-bearer api)
for r in $(seq 1 "$ROUNDS"); do
  [ $((r % 2)) = 0 ] && list=(api open-bearer app open-cookie) || list=("${order[@]}")
  for name in "${list[@]}"; do
    read -r rps cpu <<<"$(run_wrk "$(path_of "$name")" "$(header_of "$name")")"
    RPS[$name]="${RPS[$name]:-} $rps"; CPU[$name]="${CPU[$name]:-} $cpu"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-34s %9s %7s %14s %7s   %s\n' "route (same request headers per pair)" "req/s" "ratio" "CPU us/request" "ratio" "req/s per round"
for pair in "open-cookie app" "open-bearer api"; do
  read -r base name <<<"$pair"
  b=$(median <<<"${RPS[$base]}"); bc=$(median <<<"${CPU[$base]}")
  for row in "$base" "$name"; do
    m=$(median <<<"${RPS[$row]}"); c=$(median <<<"${CPU[$row]}")
    label=$(case $row in
      open-cookie) echo "no policy, with the cookie";; app) echo "session cookie policy (/app)";;
      open-bearer) echo "no policy, with the bearer token";; api) echo "bearer JWT RS256 policy (/api)";; esac)
    printf '%-34s %9.0f %7.3f %14.1f %7.3f   %s\n' "$label" "$m" "$(awk -v a="$m" -v b="$b" 'BEGIN {print a/b}')" \
      "$c" "$(awk -v a="$c" -v b="$bc" 'BEGIN {print a/b}')" "${RPS[$row]# }"
  done
done
echo "goal: ratio >= 0.90 for both policies (issue 5); cookie ${#COOKIE} bytes; torhaus $("$TORHAUS_BIN" --version 2>/dev/null || echo '?')"
