#!/usr/bin/env bash
# Installs (or upgrades to) the Gateway API CRDs torhaus is built against: the standard channel of
# kubernetes-sigs/gateway-api, pinned to the release whose types the gateway-api crate (0.22)
# generates. Server-side apply, because the CRDs are too large for the last-applied annotation.
# Then waits until the API server serves them.
# Usage: deploy/gateway-api-crds.sh [--print-url]   (uses kubectl's current context)
set -euo pipefail
# The pinned release; deploy/README.md, the README and scripts/cluster-test.sh follow this line.
GATEWAY_API_VERSION=v1.5.1
url="https://github.com/kubernetes-sigs/gateway-api/releases/download/${GATEWAY_API_VERSION}/standard-install.yaml"
if [ "${1:-}" = "--print-url" ]; then
  echo "$url"
  exit 0
fi
kubectl apply --server-side --force-conflicts -f "$url"
for crd in gatewayclasses gateways httproutes referencegrants grpcroutes; do
  kubectl wait --for=condition=Established --timeout=60s "crd/${crd}.gateway.networking.k8s.io"
done
