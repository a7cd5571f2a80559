#!/usr/bin/env bash
# torhaus-subject.sh - bench.sh's SUBJECT_CMD for torhaus: writes a Gateway API config directory
# (one Gateway with an HTTP and an HTTPS listener, ROUTES HTTPRoutes of which the last is the
# hostname-less catch-all that the benchmark traffic hits, the upstream as Service +
# EndpointSlice, the benchmark certificate as a kubernetes.io/tls Secret) and execs torhaus.
# Environment from bench.sh: SUBJECT_PORT SUBJECT_TLS_PORT UPSTREAM TLS_CERT TLS_KEY WORKERS.
# Own knobs: TORHAUS_BIN (required), ROUTES=100, CONFIG_DIR (default: ./torhaus-config),
# TORHAUS_ARGS (extra flags, word-split; default none: the admin listener binds 127.0.0.1:9901).
set -euo pipefail
: "${TORHAUS_BIN:?set TORHAUS_BIN}" "${SUBJECT_PORT:?}" "${SUBJECT_TLS_PORT:?}" "${UPSTREAM:?}"
: "${TLS_CERT:?}" "${TLS_KEY:?}"
ROUTES=${ROUTES:-100}
CONFIG_DIR=${CONFIG_DIR:-$PWD/torhaus-config}
STATE_DIR=${STATE_DIR:-$PWD/torhaus-state}
mkdir -p "$CONFIG_DIR" "$STATE_DIR"
up_host=${UPSTREAM%:*}; up_port=${UPSTREAM##*:}

cat > "$CONFIG_DIR/00-gateway.yaml" <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: torhaus}
spec: {controllerName: torhaus.dev/gateway-controller}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: bench}
spec:
  gatewayClassName: torhaus
  listeners:
    - {name: http, port: 80, protocol: HTTP}
    - name: https
      port: 443
      protocol: HTTPS
      tls:
        mode: Terminate
        certificateRefs: [{kind: Secret, name: bench-cert}]
---
apiVersion: v1
kind: Secret
metadata: {name: bench-cert, namespace: bench}
type: kubernetes.io/tls
data:
  tls.crt: $(base64 -w0 "$TLS_CERT")
  tls.key: $(base64 -w0 "$TLS_KEY")
---
apiVersion: v1
kind: Service
metadata: {name: up, namespace: bench}
spec:
  ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: up-1
  namespace: bench
  labels: {kubernetes.io/service-name: up}
addressType: IPv4
ports: [{name: http, port: $up_port}]
endpoints: [{addresses: ["$up_host"], conditions: {ready: true}}]
YAML

{
  for i in $(seq $((ROUTES - 1))); do
    cat <<YAML
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app-$i, namespace: bench}
spec:
  parentRefs: [{name: edge}]
  hostnames: ["app-$i.bench.example"]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: X-Route, value: api-$i}]}
      backendRefs: [{name: up, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /static}}, {path: {type: Exact, value: /health}}]
      backendRefs: [{name: up, port: 8080}]
YAML
  done
  cat <<YAML
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: catch-all, namespace: bench}
spec:
  parentRefs: [{name: edge}]
  rules:
    - backendRefs: [{name: up, port: 8080}]
YAML
} > "$CONFIG_DIR/10-routes.yaml"

# As the container image runs it (see the Dockerfile); set it to 2 for mimalloc's default.
export MIMALLOC_ARENA_EAGER_COMMIT=${MIMALLOC_ARENA_EAGER_COMMIT:-0}
# shellcheck disable=SC2086 # TORHAUS_ARGS is a list of flags, split on purpose
exec "$TORHAUS_BIN" run --config "$CONFIG_DIR" --state-dir "$STATE_DIR" \
  --port-map "80:$SUBJECT_PORT,443:$SUBJECT_TLS_PORT" --threads "${WORKERS:-1}" --log-format json \
  ${TORHAUS_ARGS:-}
