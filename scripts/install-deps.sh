#!/usr/bin/env bash
# Installs the system packages torhaus needs to build, test or benchmark, only those missing.
# Usage: scripts/install-deps.sh build|test|bench
set -euo pipefail
purpose=${1:-test}
packages=(cmake gcc g++ make pkg-config curl openssl ca-certificates)
case "$purpose" in
  build) ;;
  test)
    # Node.js and npm run the test OpenID Provider (tests/rigs/oidc) and playwright-core. Checked
    # by command, not package: a Node.js from another source (which bundles npm) is fine too.
    command -v node >/dev/null || packages+=(nodejs)
    command -v npm >/dev/null || packages+=(npm)
    # prometheus: promtool and a real Prometheus scraping torhaus; chromium: the status page test.
    packages+=(prometheus chromium)
    # The dns/ tests' rigs: knotd (RFC 2136/TSIG) and PowerDNS (HTTP API, sqlite3 backend).
    packages+=(knot pdns-server pdns-backend-sqlite3 sqlite3)
    # The ACME tests: Pebble (Let's Encrypt's test CA) validating DNS-01 at knotd; kdig to debug.
    packages+=(pebble knot-dnsutils)
    ;;
  bench) packages+=(nginx-light haproxy wrk nghttp2-client tcpdump) ;;
  *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
oidc_rig="$(dirname "$0")/../tests/rigs/oidc"
if [ "$purpose" = test ] && [ ! -f "$oidc_rig/node_modules/oidc-provider/package.json" ]; then
  echo "installing the test OpenID Provider (npm ci in tests/rigs/oidc)"
  (cd "$oidc_rig" && npm ci --no-audit --no-fund --loglevel=error)
fi
# playwright-core drives Debian's chromium for the status page test (never its own browser).
browser_dir="$(dirname "$0")/../tests/browser"
if [ "$purpose" = test ] && [ ! -d "$browser_dir/node_modules/playwright-core" ]; then
  echo "installing playwright-core (npm ci in tests/browser)"
  (cd "$browser_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
