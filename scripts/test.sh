#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need (Prometheus' promtool,
# Alertmanager's amtool, blackbox_exporter, node and npm from Debian, cargo-audit from
# crates.io; the npm UserSig reference library and the Kubernetes schema validator are fetched
# by the tests that use them), then checks formatting, lints and known-vulnerable
# dependencies, then runs every test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

# Known vulnerabilities in Cargo.lock, offline (this machine reaches package registries, not
# GitHub), against the RustSec advisory-db snapshot beside the repository
# (`../shared/advisory-db`; ADVISORY_DB overrides it; SECURITY.md says how to refresh it). A
# vulnerability fails the run; `--stale` because a snapshot ages by design.
advisory_db="${ADVISORY_DB:-$(pwd)/../shared/advisory-db}"
if [ ! -d "$advisory_db/crates" ]; then
    echo "test.sh: no RustSec advisory-db at $advisory_db (expected a snapshot with crates/;" >&2
    echo "test.sh: see SECURITY.md, 'Dependencies', or set ADVISORY_DB)" >&2
    exit 1
fi
cargo audit --no-fetch --stale --db "$advisory_db"
# Every test target (benches are compiled by clippy above, and run by scripts/bench.sh).
cargo test --locked --no-fail-fast --lib --bins --tests --examples -- --test-threads="${TEST_THREADS:-4}"
