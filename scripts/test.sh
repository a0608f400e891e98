#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need (Prometheus' promtool,
# Alertmanager's amtool, blackbox_exporter from Debian; the npm UserSig reference library and
# the Kubernetes schema validator are fetched by the tests that use them), then checks
# formatting and lints, then runs every test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# Every test target (benches are compiled by clippy above, and run by scripts/bench.sh).
cargo test --locked --no-fail-fast --lib --bins --tests --examples -- --test-threads="${TEST_THREADS:-4}"
