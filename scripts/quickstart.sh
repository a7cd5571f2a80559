#!/usr/bin/env bash
# Runs torhaus on examples/quickstart/ with nothing else installed: builds torhaus and a small
# echo backend, starts the backend on 127.0.0.1:9080, and serves the Gateway's :80 and :443 on
# 8080 and 8443 (no root needed). Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/torhaus/target}
scripts/install-deps.sh build
cargo build --release --quiet --bin torhaus -p torhaus --bin torhaus-echo -p torhaus-tests
bin=$CARGO_TARGET_DIR/release
state=${TORHAUS_STATE_DIR:-$HOME/.local/share/torhaus}

"$bin/torhaus-echo" --listen 127.0.0.1:9080 --pod quickstart-echo --namespace default &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null' EXIT

cat <<MSG
torhaus is starting. In another terminal:
  curl -i http://localhost:8080/hello
  curl -i --cacert <("$bin/torhaus" ca export --state-dir "$state") https://localhost:8443/hello
  "$bin/torhaus" check --config examples/quickstart
MSG
"$bin/torhaus" run --config examples/quickstart --port-map 80:8080,443:8443 --state-dir "$state"
