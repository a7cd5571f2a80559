#!/usr/bin/env bash
# Installs the system packages torhaus needs to build, test or benchmark, only those missing.
# Usage: scripts/install-deps.sh build|test|bench
set -euo pipefail
purpose=${1:-test}
packages=(cmake gcc g++ make pkg-config curl openssl ca-certificates)
case "$purpose" in
  build) ;;
  test) packages+=(knot pdns-server pdns-backend-sqlite3 sqlite3) ;;  # dns/tests rigs: knotd (RFC 2136/TSIG), PowerDNS API
  bench) packages+=(nginx-light haproxy wrk nghttp2-client) ;;
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
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
