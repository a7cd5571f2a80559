#!/usr/bin/env bash
# Runs every test of torhaus, first installing what the tests need. This is the README's test
# command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/torhaus/target}
export CARGO_TERM_COLOR=never
scripts/install-deps.sh test

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== build"
# The end-to-end tests run the real binary, so it must exist before they start.
cargo build --workspace --bins --quiet

echo "== tests"
# A failing test must not stop the script here (set -e): the deploy checks still run and the
# totals are still printed; the exit status says whether anything failed.
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "${TMPDIR:-/tmp}/torhaus-test.log" || status=$?
echo "== deploy: chart, manifests, Dockerfile, scripts (scripts/deploy-test.sh)"
scripts/deploy-test.sh 2>&1 | tee -a "${TMPDIR:-/tmp}/torhaus-test.log" || status=1
passed=$(grep -Eo '[0-9]+ passed' "${TMPDIR:-/tmp}/torhaus-test.log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "${TMPDIR:-/tmp}/torhaus-test.log" | awk '{s+=$1} END {print s+0}')
ignored=$(grep -Eo '[0-9]+ ignored' "${TMPDIR:-/tmp}/torhaus-test.log" | awk '{s+=$1} END {print s+0}')
echo "total: $passed passed, $failed failed, $ignored skipped"
exit "$status"
