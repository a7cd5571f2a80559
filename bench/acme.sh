#!/usr/bin/env bash
# acme.sh - ACME benchmark on loopback: Pebble (Let's Encrypt's test CA) validating DNS-01 at
# knotd (RFC 2136 + TSIG), torhaus in standalone mode.
#
# 1. Time to certificate: a new hostname (listener + Secret) is written into the config
#    directory; the clock stops when an HTTPS client trusting Pebble's root completes a
#    handshake for that name against torhaus. Goal: < 5 s. Repeated NEW_NAMES times.
# 2. Idle cost of managed certificates: two torhaus processes side by side on the same 500
#    HTTPS listeners (MANAGED), one with the Gateways opted in to an Issuer (500 managed
#    certificates, already issued: the store is pre-seeded with valid Secrets) and one without
#    (plain Secrets in the config directory). Prints CPU seconds used over IDLE_SECONDS and
#    RSS of each, and their ratio.
#
# Prereqs: apt-get install pebble knot openssl curl (scripts/install-deps.sh test).
# Knobs (env): TORHAUS_BIN (default: the release build, else the debug build, of
#   $CARGO_TARGET_DIR or ~/.cache/torhaus/target) NEW_NAMES=5 MANAGED=500 IDLE_SECONDS=30
#   BASE_PORT=19400 KEEP_RUN=1 (keep the run directory)
set -euo pipefail

TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/torhaus/target}
if [[ -z ${TORHAUS_BIN:-} ]]; then
  if [[ -x $TARGET/release/torhaus ]]; then TORHAUS_BIN=$TARGET/release/torhaus
  else TORHAUS_BIN=$TARGET/debug/torhaus; fi
fi
[[ -x $TORHAUS_BIN ]] || { echo "no torhaus binary at $TORHAUS_BIN (cargo build --release --bin torhaus)" >&2; exit 2; }
for tool in pebble knotd openssl curl; do
  command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || { echo "missing $tool: scripts/install-deps.sh test" >&2; exit 2; }
done
KNOTD=$(command -v knotd || echo /usr/sbin/knotd)
NEW_NAMES=${NEW_NAMES:-5}; MANAGED=${MANAGED:-500}; IDLE_SECONDS=${IDLE_SECONDS:-30}
BASE_PORT=${BASE_PORT:-19400}
DNS_PORT=$BASE_PORT; ACME_PORT=$((BASE_PORT + 1)); MGMT_PORT=$((BASE_PORT + 2))
HTTPS_A=$((BASE_PORT + 10)); HTTPS_B=$((BASE_PORT + 11)); HTTPS_C=$((BASE_PORT + 12))
ADMIN_A=$((BASE_PORT + 20)); ADMIN_B=$((BASE_PORT + 21)); ADMIN_C=$((BASE_PORT + 22))
ZONE=example.test
TSIG_NAME=torhaus-key.
TSIG_SECRET=dG9yaGF1cy10ZXN0LXRzaWctc2VjcmV0LTMyYnl0ZXMh
RUN=$(mktemp -d "${TMPDIR:-/tmp}/torhaus-bench-acme.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -z ${KEEP_RUN:-} ]]; then rm -rf "$RUN"; else echo "run directory kept: $RUN"; fi
}
trap cleanup EXIT

now_ms() { date +%s%3N; }

# --- knotd: the zone, TSIG-signed updates -----------------------------------------------------
mkdir -p "$RUN/knot"
cat > "$RUN/knot/$ZONE.zone" <<EOF
\$ORIGIN $ZONE.
\$TTL 60
@ SOA ns1 hostmaster 1 60 60 600 60
@ NS ns1
ns1 A 127.0.0.1
EOF
cat > "$RUN/knot/knot.conf" <<EOF
server:
  rundir: $RUN/knot
  listen: 127.0.0.1@$DNS_PORT
database:
  storage: $RUN/knot
key:
  - id: $TSIG_NAME
    algorithm: hmac-sha256
    secret: $TSIG_SECRET
acl:
  - id: torhaus
    key: $TSIG_NAME
    action: update
zone:
  - domain: $ZONE
    storage: $RUN/knot
    file: $ZONE.zone
    acl: torhaus
EOF
"$KNOTD" -c "$RUN/knot/knot.conf" > "$RUN/knot/knotd.log" 2>&1 & PIDS+=($!)

# --- Pebble with its own TLS certificate --------------------------------------------------------
mkdir -p "$RUN/pebble"
(
  cd "$RUN/pebble"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
    -days 2 -subj /CN=bench-pebble-ca 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out req.csr \
    -subj /CN=localhost 2>/dev/null
  echo "subjectAltName=DNS:localhost,IP:127.0.0.1" > ext.cnf
  openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 \
    -extfile ext.cnf 2>/dev/null
)
cat > "$RUN/pebble/pebble.json" <<EOF
{"pebble": {"listenAddress": "127.0.0.1:$ACME_PORT", "managementListenAddress": "127.0.0.1:$MGMT_PORT",
 "certificate": "$RUN/pebble/cert.pem", "privateKey": "$RUN/pebble/key.pem",
 "httpPort": $((BASE_PORT + 3)), "tlsPort": $((BASE_PORT + 4)), "ocspResponderURL": "",
 "externalAccountBindingRequired": false}}
EOF
PEBBLE_VA_NOSLEEP=1 PEBBLE_AUTHZREUSE=0 PEBBLE_WFE_NONCEREJECT=0 \
  pebble -config "$RUN/pebble/pebble.json" -dnsserver "127.0.0.1:$DNS_PORT" > "$RUN/pebble/pebble.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do
  curl -sf --cacert "$RUN/pebble/ca.pem" "https://localhost:$MGMT_PORT/roots/0" -o "$RUN/pebble/root.pem" && break
  sleep 0.1
done
[[ -s $RUN/pebble/root.pem ]] || { echo "pebble did not start:"; cat "$RUN/pebble/pebble.log"; exit 1; }

# --- manifests -------------------------------------------------------------------------------------
CA_INDENTED=$(sed 's/^/      /' "$RUN/pebble/ca.pem")
common() {  # the GatewayClass, the Issuer and its TSIG Secret
  cat <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: torhaus}
spec: {controllerName: torhaus.dev/gateway-controller}
---
apiVersion: torhaus.dev/v1alpha1
kind: Issuer
metadata: {name: pebble, namespace: bench}
spec:
  acme:
    server: https://localhost:$ACME_PORT/dir
    privateKeySecretRef: {name: pebble-account}
    caBundle: |
$CA_INDENTED
    dns01:
      rfc2136:
        nameserver: 127.0.0.1:$DNS_PORT
        tsigKeyName: $TSIG_NAME
        tsigSecretRef: {name: tsig, key: secret}
---
apiVersion: v1
kind: Secret
metadata: {name: tsig, namespace: bench}
stringData: {secret: "$TSIG_SECRET"}
EOF
}
# gateway NAME ANNOTATE(yes|no) HOST... : one HTTPS listener per host, Secret <label>-tls
gateway() {
  local name=$1 annotate=$2; shift 2
  echo "---"
  echo "apiVersion: gateway.networking.k8s.io/v1"
  echo "kind: Gateway"
  echo "metadata:"
  echo "  name: $name"
  echo "  namespace: bench"
  [[ $annotate == yes ]] && echo "  annotations: {torhaus.dev/issuer: pebble}"
  echo "spec:"
  echo "  gatewayClassName: torhaus"
  echo "  listeners:"
  local host
  for host in "$@"; do
    echo "    - {name: ${host%%.*}, port: 443, protocol: HTTPS, hostname: $host, tls: {certificateRefs: [{name: ${host%%.*}-tls}]}}"
  done
}

start_torhaus() {  # NAME CONFIG STATE HTTPS_PORT ADMIN_PORT; sets STARTED to the pid
  "$TORHAUS_BIN" run --config "$2" --state-dir "$3" --threads 1 --port-map "443:$4" \
    --admin-bind "127.0.0.1:$5" --acme-dns-resolver "127.0.0.1:$DNS_PORT" --acme-dns-port "$DNS_PORT" \
    > "$RUN/$1.log" 2>&1 &
  STARTED=$!
  PIDS+=("$STARTED")
}

served() {  # HOST HTTPS_PORT: true when torhaus serves a Pebble certificate for HOST
  curl -s -o /dev/null --max-time 2 --cacert "$RUN/pebble/root.pem" \
    --resolve "$1:$2:127.0.0.1" "https://$1:$2/"
}

# --- 1. time from a new hostname to a valid certificate served ---------------------------------------
mkdir -p "$RUN/a/config" "$RUN/a/state"
hosts=("app0.$ZONE")
{ common; gateway edge yes "${hosts[@]}"; } > "$RUN/a/config/bench.yaml"
start_torhaus a "$RUN/a/config" "$RUN/a/state" "$HTTPS_A" "$ADMIN_A"
for _ in $(seq 300); do served "app0.$ZONE" "$HTTPS_A" && break; sleep 0.1; done
served "app0.$ZONE" "$HTTPS_A" || { echo "first certificate not served:"; tail -20 "$RUN/a.log"; exit 1; }
times=()
for i in $(seq 1 "$NEW_NAMES"); do
  hosts+=("app$i.$ZONE")
  { common; gateway edge yes "${hosts[@]}"; } > "$RUN/a/config/.bench.yaml.tmp"
  start=$(now_ms)
  mv "$RUN/a/config/.bench.yaml.tmp" "$RUN/a/config/bench.yaml"
  ok=
  while (( $(now_ms) - start < 30000 )); do
    if served "app$i.$ZONE" "$HTTPS_A"; then ok=1; break; fi
    sleep 0.05
  done
  [[ -n $ok ]] || { echo "app$i.$ZONE not served within 30 s"; tail -20 "$RUN/a.log"; exit 1; }
  times+=($(( $(now_ms) - start )))
done
mapfile -t sorted < <(printf '%s\n' "${times[@]}" | sort -n)
median=${sorted[$(( ${#sorted[@]} / 2 ))]}
max=${sorted[-1]}

# --- 2. idle cost of MANAGED managed certificates, side by side with the same listeners unmanaged ----
bulk_hosts=()
for i in $(seq 1 "$MANAGED"); do bulk_hosts+=("b$i.$ZONE"); done
mkdir -p "$RUN/b/config" "$RUN/b/state/acme/secrets/bench" "$RUN/c/config" "$RUN/c/state" "$RUN/certs"
openssl ecparam -name prime256v1 -genkey -noout -out "$RUN/certs/key.pem" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$RUN/certs/key.pem" -out "$RUN/certs/key8.pem"
python3 - "$RUN" "$MANAGED" "$ZONE" <<'EOF'
import json, subprocess, sys, os
run, count, zone = sys.argv[1], int(sys.argv[2]), sys.argv[3]
key = open(f"{run}/certs/key8.pem").read()
unmanaged = []
for i in range(1, count + 1):
    host = f"b{i}.{zone}"
    cert = subprocess.run(
        ["openssl", "req", "-x509", "-key", f"{run}/certs/key8.pem", "-days", "90", "-subj", f"/CN={host}",
         "-addext", f"subjectAltName=DNS:{host}"], capture_output=True, text=True, check=True).stdout
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": f"b{i}-tls", "namespace": "bench"},
              "stringData": {"tls.crt": cert, "tls.key": key}}
    # Managed: the certificate is already in the ACME store (as if issued earlier).
    with open(f"{run}/b/state/acme/secrets/bench/b{i}-tls.json", "w") as f:
        json.dump(secret, f)
    unmanaged.append(secret)
with open(f"{run}/c/config/secrets.yaml", "w") as f:
    f.write("\n---\n".join(json.dumps(s) for s in unmanaged))
EOF
chunk=50
for ((start = 0; start < MANAGED; start += chunk)); do
  slice=("${bulk_hosts[@]:start:chunk}")
  gateway "bulk$start" yes "${slice[@]}" >> "$RUN/b/config/gateways.yaml"
  gateway "bulk$start" no "${slice[@]}" >> "$RUN/c/config/gateways.yaml"
done
common > "$RUN/b/config/common.yaml"
common > "$RUN/c/config/common.yaml"
start_torhaus managed "$RUN/b/config" "$RUN/b/state" "$HTTPS_B" "$ADMIN_B"; pid_b=$STARTED
start_torhaus unmanaged "$RUN/c/config" "$RUN/c/state" "$HTTPS_C" "$ADMIN_C"; pid_c=$STARTED
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$ADMIN_B/readyz" >/dev/null && curl -sf "http://127.0.0.1:$ADMIN_C/readyz" >/dev/null && break
  sleep 0.1
done
# Settle: the managed process loads 500 stored certificates and asks the CA for renewal info once.
sleep 5
orders_before=$(grep -c "POST /order-plz" "$RUN/pebble/pebble.log" || true)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)
b0=$(cpu "$pid_b"); c0=$(cpu "$pid_c")
sleep "$IDLE_SECONDS"
b1=$(cpu "$pid_b"); c1=$(cpu "$pid_c")
orders_after=$(grep -c "POST /order-plz" "$RUN/pebble/pebble.log" || true)
rss_b=$(rss_kib "$pid_b"); rss_c=$(rss_kib "$pid_c")
managed_count=$(curl -s "http://127.0.0.1:$ADMIN_B/debug/config" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for c in d.get("acmeCertificates", []) if c["state"] == "valid"))')

echo "== ACME on loopback (Pebble + knotd), torhaus: $TORHAUS_BIN"
echo "time from a new hostname to its certificate served (n=$NEW_NAMES): median ${median} ms, max ${max} ms (goal < 5000 ms): ${times[*]}"
printf "idle over %s s with %s HTTPS listeners (%s managed certificates valid, %s orders while idle):\n" \
  "$IDLE_SECONDS" "$MANAGED" "$managed_count" "$((orders_after - orders_before))"
printf "  %-28s cpu %6.2f s  rss %7.1f MiB\n" "managed (ACME lifecycle)" \
  "$(echo "($b1 - $b0) / $hz" | bc -l)" "$(echo "$rss_b / 1024" | bc -l)"
printf "  %-28s cpu %6.2f s  rss %7.1f MiB\n" "unmanaged (plain Secrets)" \
  "$(echo "($c1 - $c0) / $hz" | bc -l)" "$(echo "$rss_c / 1024" | bc -l)"
printf "  ratio managed/unmanaged: cpu %s, rss %.2f\n" \
  "$( (( c1 - c0 > 0 )) && echo "scale=2; ($b1 - $b0) / ($c1 - $c0)" | bc -l || echo "n/a (unmanaged used 0 ticks)")" \
  "$(echo "$rss_b / $rss_c" | bc -l)"
