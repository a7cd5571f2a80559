#!/usr/bin/env bash
# scale.sh - torhaus at scale: 5,000 HTTPRoutes and 50,000 endpoints (issue 3's scale benchmark).
#
# Writes a configuration directory with ROUTES HTTPRoutes, each with its own Service and an
# EndpointSlice of ENDPOINTS endpoints (addresses that are never contacted), starts the release
# torhaus in standalone mode on it and reports:
#   - the time from start to the first snapshot serving (/readyz turns 200, then a route answers);
#   - resident memory once serving (VmRSS) and its peak (VmHWM);
#   - the time from one object change (one HTTPRoute file rewritten) to the change serving,
#     CHANGES times, as median and maximum.
# The changed route carries a RequestRedirect whose hostname the benchmark rewrites, so the
# change is observed from the outside (the Location header) without any backend.
#
# Not a test: CI never runs it. Usage:
#   bench/scale.sh                    # builds torhaus --release first
#   SKIP_BUILD=1 ROUTES=10000 bench/scale.sh
#   TORHAUS_LOG=debug KEEP_LOG=/tmp/scale.log bench/scale.sh   # keep torhaus's log (timings)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/torhaus/target}
ROUTES=${ROUTES:-5000}
ENDPOINTS=${ENDPOINTS:-10}
CHANGES=${CHANGES:-20}
PORT=${PORT:-18480}
ADMIN=${ADMIN:-127.0.0.1:19481}

if [ -z "${TORHAUS_BIN:-}" ]; then
  if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --bin torhaus --quiet
  fi
  TORHAUS_BIN=$CARGO_TARGET_DIR/release/torhaus
fi
[ -x "$TORHAUS_BIN" ] || { echo "no torhaus binary at $TORHAUS_BIN" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/torhaus-scale.XXXXXX")
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "${KEEP_LOG:-}" ]; then cp "$work/torhaus.log" "$KEEP_LOG" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/config/routes" "$work/state"

python3 - "$work/config" "$ROUTES" "$ENDPOINTS" <<'PY'
import json, os, sys
config, routes, endpoints = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def dump(path, docs):
    # JSON is YAML: one document per line keeps generation fast and the files exact.
    with open(path, "w") as f:
        f.write("\n---\n".join(json.dumps(d) for d in docs))
dump(os.path.join(config, "00-gateway.yaml"), [
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
     "metadata": {"name": "torhaus"}, "spec": {"controllerName": "torhaus.dev/gateway-controller"}},
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
     "metadata": {"name": "edge", "namespace": "infra"},
     "spec": {"gatewayClassName": "torhaus", "listeners": [
         {"name": "http", "port": 80, "protocol": "HTTP",
          "allowedRoutes": {"namespaces": {"from": "All"}}}]}},
])
docs = []
for i in range(routes):
    ns, name = f"team-{i % 50}", f"app-{i}"
    docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                 "spec": {"ports": [{"name": "http", "port": 80}]}})
    docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": f"{name}-1", "namespace": ns,
                              "labels": {"kubernetes.io/service-name": name}},
                 "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                 "endpoints": [{"addresses": [f"10.{i // 250 % 250}.{i % 250}.{e}"],
                                "conditions": {"ready": True}} for e in range(endpoints)]})
    if i == 0:
        continue  # app-0's route is the one the benchmark rewrites, in its own file
    docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                 "metadata": {"name": name, "namespace": ns},
                 "spec": {"parentRefs": [{"name": "edge", "namespace": "infra"}],
                          "hostnames": [f"{name}.scale.example"],
                          "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": f"/api/{i}"}}],
                                     "backendRefs": [{"name": name, "port": 80}]},
                                    {"backendRefs": [{"name": name, "port": 80}]}]}})
dump(os.path.join(config, "routes", "all.yaml"), docs)
PY

changed_route() {
  cat > "$work/config/routes/.app-0.tmp" <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app-0, namespace: team-0}
spec:
  parentRefs: [{name: edge, namespace: infra}]
  hostnames: [app-0.scale.example]
  rules:
    - filters:
        - type: RequestRedirect
          requestRedirect: {hostname: "v$1.scale.example", statusCode: 302}
YAML
  # Renamed into place so the watcher never reads half a file.
  mv "$work/config/routes/.app-0.tmp" "$work/config/routes/app-0.yaml"
}
changed_route 0

now_ms() { date +%s%3N; }
location() {
  curl -s -o /dev/null -w '%{redirect_url}' -H 'Host: app-0.scale.example' "http://127.0.0.1:$PORT/" || true
}

objects=$((ROUTES * 3 + 2))
echo "torhaus scale: $ROUTES HTTPRoutes, $((ROUTES * ENDPOINTS)) endpoints, $objects objects"
start=$(now_ms)
"$TORHAUS_BIN" run --config "$work/config" --state-dir "$work/state" \
  --port-map "80:$PORT" --admin-bind "$ADMIN" --threads 2 2>"$work/torhaus.log" &
pid=$!

deadline=$(( $(now_ms) + 300000 ))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/readyz" || true)" = 200 ]; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/torhaus.log" >&2; exit 1; }
  [ "$(now_ms)" -lt "$deadline" ] || { echo "not ready after 300 s" >&2; exit 1; }
  sleep 0.05
done
ready=$(now_ms)
until [ "$(location)" = "http://v0.scale.example:$PORT/" ] || [ "$(location)" = "http://v0.scale.example/" ]; do
  [ "$(now_ms)" -lt "$deadline" ] || { echo "route app-0 never served" >&2; exit 1; }
  sleep 0.05
done
served=$(now_ms)
rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")

latencies=()
for n in $(seq 1 "$CHANGES"); do
  t0=$(now_ms)
  changed_route "$n"
  deadline=$((t0 + 30000))
  while :; do
    loc=$(location)
    case "$loc" in "http://v$n.scale.example"*) break ;; esac
    [ "$(now_ms)" -lt "$deadline" ] || { echo "change $n not served within 30 s (Location: $loc)" >&2; exit 1; }
    sleep 0.01
  done
  latencies+=($(( $(now_ms) - t0 )))
done
hwm_kib=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
rss_after_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
sorted=$(printf '%s\n' "${latencies[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
max=$(echo "$sorted" | tail -1)

printf '%-44s %s\n' "start to ready (/readyz 200)" "$((ready - start)) ms"
printf '%-44s %s\n' "start to the first route answering" "$((served - start)) ms"
printf '%-44s %s\n' "RSS when first serving" "$((rss_kib / 1024)) MiB"
printf '%-44s %s\n' "RSS after $CHANGES changes / peak (VmHWM)" "$((rss_after_kib / 1024)) MiB / $((hwm_kib / 1024)) MiB"
printf '%-44s %s\n' "one HTTPRoute changed to serving: median" "$median ms"
printf '%-44s %s\n' "one HTTPRoute changed to serving: max" "$max ms"
