#!/usr/bin/env bash
# End-to-end test of torhaus on a real Kubernetes cluster (kind), the way a user installs it:
#   1. creates a kind cluster whose node maps its ports 80/443 to HTTP_PORT/HTTPS_PORT here;
#   2. builds the image from the Dockerfile and loads it into the node;
#   3. installs the pinned Gateway API CRDs (deploy/gateway-api-crds.sh) and the Helm chart;
#   4. applies the k3s walkthrough's example (deploy/examples/k3s) with a fresh TLS Secret and
#      curls its HTTPRoute over https (and the http→https redirect);
#   5. runs torhaus's own `#[ignore = "needs cluster"]` tests of the k8s crate against it;
#   6. runs the upstream Gateway API conformance suite at the pinned release with its documented
#      flags, and writes its report.
#
# Needs: docker (a running daemon), kind, kubectl, helm, go, git, curl, openssl, cargo.
# Not runnable on the development machines (no container engine there): run it on a workstation
# or a CI runner with Docker. Knobs (environment):
#   CLUSTER_NAME=torhaus-test  KEEP_CLUSTER=0 (1 keeps it afterwards)  REUSE_CLUSTER=0
#   HTTP_PORT=8080 HTTPS_PORT=8443   CONFORMANCE=1   CLUSTER_TESTS=1
#   SUPPORTED_FEATURES=<comma list>  SKIP_TESTS=<comma list of conformance test names>
#   IMPLEMENTATION_URL, IMPLEMENTATION_CONTACT (named in the conformance report)
#   OUT=<directory for logs and the conformance report, default a temp dir>
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

CLUSTER_NAME=${CLUSTER_NAME:-torhaus-test}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
REUSE_CLUSTER=${REUSE_CLUSTER:-0}
HTTP_PORT=${HTTP_PORT:-8080}
HTTPS_PORT=${HTTPS_PORT:-8443}
CONFORMANCE=${CONFORMANCE:-1}
CLUSTER_TESTS=${CLUSTER_TESTS:-1}
IMAGE=torhaus:cluster-test
HOST=whoami.home.arpa
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/torhaus-cluster-test.XXXXXX")}
# The Gateway API features torhaus implements (pkg/features of the pinned release). Extended
# features not listed are skipped by the suite, not failed.
SUPPORTED_FEATURES=${SUPPORTED_FEATURES:-Gateway,HTTPRoute,ReferenceGrant,GatewayPort8080,GatewayHTTPListenerIsolation,HTTPRouteQueryParamMatching,HTTPRouteMethodMatching,HTTPRouteResponseHeaderModification,HTTPRouteBackendRequestHeaderModification,HTTPRoutePortRedirect,HTTPRouteSchemeRedirect,HTTPRoutePathRedirect,HTTPRouteHostRewrite,HTTPRoutePathRewrite,HTTPRouteRequestMirror,HTTPRouteRequestMultipleMirrors,HTTPRouteRequestPercentageMirror,HTTPRouteRequestTimeout,HTTPRouteBackendTimeout,HTTPRouteParentRefPort,HTTPRouteBackendProtocolH2C,HTTPRouteBackendProtocolWebSocket,HTTPRoute303RedirectStatusCode,HTTPRoute307RedirectStatusCode,HTTPRoute308RedirectStatusCode}
SKIP_TESTS=${SKIP_TESTS:-}
# Who the conformance report names (set them to your fork's when you submit a report).
IMPLEMENTATION_URL=${IMPLEMENTATION_URL:-https://torhaus.dev}
IMPLEMENTATION_CONTACT=${IMPLEMENTATION_CONTACT:-torhaus maintainers}
GATEWAY_API_VERSION=$(sed -n 's/^GATEWAY_API_VERSION=//p' deploy/gateway-api-crds.sh)
TORHAUS_VERSION=$(sed -n 's/^appVersion: "\(.*\)"$/\1/p' charts/torhaus/Chart.yaml)

log() { printf '== %s\n' "$*"; }
die() { printf 'cluster-test: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm curl openssl git; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
[ "$CONFORMANCE" = 0 ] || command -v go >/dev/null || die "go is required for the conformance suite (or CONFORMANCE=0)"
docker info >/dev/null 2>&1 || die "docker has no running daemon"
[ -n "$GATEWAY_API_VERSION" ] || die "no GATEWAY_API_VERSION in deploy/gateway-api-crds.sh"

export KUBECONFIG="$OUT/kubeconfig"
cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    log "failed; torhaus logs and objects in $OUT"
    kubectl -n torhaus logs daemonset/torhaus --all-containers --tail=-1 >"$OUT/torhaus.log" 2>&1 || true
    kubectl get gatewayclass,gateway,httproute -A -o yaml >"$OUT/gateway-api-objects.yaml" 2>&1 || true
  fi
  if [ "$KEEP_CLUSTER" = 0 ]; then
    kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
  else
    log "cluster $CLUSTER_NAME kept; KUBECONFIG=$KUBECONFIG"
  fi
  exit "$status"
}
trap cleanup EXIT

log "cluster $CLUSTER_NAME (kind), ports 80/443 on localhost:$HTTP_PORT/$HTTPS_PORT; output in $OUT"
if [ "$REUSE_CLUSTER" = 1 ] && kind get clusters | grep -qx "$CLUSTER_NAME"; then
  kind export kubeconfig --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG"
else
  kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
  cat >"$OUT/kind.yaml" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    # torhaus binds the node's ports 80/443 (host network); publish them on this machine.
    extraPortMappings:
      - { containerPort: 80, hostPort: $HTTP_PORT, listenAddress: "127.0.0.1" }
      - { containerPort: 443, hostPort: $HTTPS_PORT, listenAddress: "127.0.0.1" }
EOF
  kind create cluster --name "$CLUSTER_NAME" --config "$OUT/kind.yaml" --kubeconfig "$KUBECONFIG" --wait 120s
fi

log "image $IMAGE"
docker build --tag "$IMAGE" "$root"
kind load docker-image "$IMAGE" --name "$CLUSTER_NAME"

log "Gateway API CRDs $GATEWAY_API_VERSION"
deploy/gateway-api-crds.sh

log "helm install"
helm upgrade --install torhaus charts/torhaus --namespace torhaus --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE#*:}" --set image.pullPolicy=Never \
  --wait --timeout 5m
kubectl wait gatewayclass/torhaus --for=condition=Accepted --timeout=120s

log "example: whoami behind https://$HOST/"
kubectl apply -f deploy/examples/k3s/whoami.yaml
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
  -keyout "$OUT/whoami.key" -out "$OUT/whoami.crt" -subj "/CN=$HOST" \
  -addext "subjectAltName=DNS:$HOST" 2>/dev/null
kubectl -n default create secret tls whoami-tls --cert "$OUT/whoami.crt" --key "$OUT/whoami.key" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f deploy/examples/k3s/gateway.yaml
kubectl -n default rollout status deployment/whoami --timeout=180s
kubectl -n default wait gateway/home --for=condition=Programmed --timeout=120s
for route in whoami whoami-https-redirect; do
  kubectl -n default wait "httproute/$route" --timeout=120s \
    --for=jsonpath='{.status.parents[0].conditions[?(@.type=="Accepted")].status}'=True
done

# Status is written once the routes are served, but the endpoints may still be settling: retry
# the request until it answers or the deadline passes.
deadline=$((SECONDS + 120))
until body=$(curl --fail --silent --show-error --max-time 5 --cacert "$OUT/whoami.crt" \
    --resolve "$HOST:$HTTPS_PORT:127.0.0.1" "https://$HOST:$HTTPS_PORT/cluster-test"); do
  [ "$SECONDS" -lt "$deadline" ] || die "https://$HOST/ did not answer within 120 s"
  sleep 2
done
grep -q "GET /cluster-test" <<<"$body" || die "unexpected answer from whoami: $body"
log "https answered: $(head -n 1 <<<"$body")"
redirect=$(curl --silent --output /dev/null --write-out '%{http_code} %{redirect_url}' \
  --resolve "$HOST:$HTTP_PORT:127.0.0.1" "http://$HOST:$HTTP_PORT/x")
[ "$redirect" = "301 https://$HOST/x" ] || die "http did not redirect to https: $redirect"
log "http redirects: $redirect"

if [ "$CLUSTER_TESTS" = 1 ]; then
  log "torhaus's cluster tests (#[ignore = \"needs cluster\"])"
  command -v cargo >/dev/null || die "cargo is required for the cluster tests (or CLUSTER_TESTS=0)"
  cargo test -p torhaus-k8s -- --ignored 2>&1 | tee "$OUT/cluster-tests.log"
fi

if [ "$CONFORMANCE" = 1 ]; then
  log "Gateway API conformance $GATEWAY_API_VERSION (profile GATEWAY-HTTP)"
  suite="$OUT/gateway-api"
  git clone --quiet --depth 1 --branch "$GATEWAY_API_VERSION" \
    https://github.com/kubernetes-sigs/gateway-api "$suite"
  (
    cd "$suite"
    go test ./conformance -run TestConformance -v -timeout 90m -args \
      --gateway-class=torhaus \
      --supported-features="$SUPPORTED_FEATURES" \
      --skip-tests="$SKIP_TESTS" \
      --conformance-profiles=GATEWAY-HTTP \
      --organization=torhaus \
      --project=torhaus \
      --url="$IMPLEMENTATION_URL" \
      --version="$TORHAUS_VERSION" \
      --contact="$IMPLEMENTATION_CONTACT" \
      --mode=default \
      --report-output="$OUT/conformance-report.yaml"
  ) 2>&1 | tee "$OUT/conformance.log"
  log "conformance report: $OUT/conformance-report.yaml"
fi
log "passed"
