#!/bin/sh
# Runs the benchmark (issue 5): the criterion micro-benchmarks of the hot paths, then the
# end-to-end workloads against the fake Tencent Chat API and blackbox_exporter, printing a
# table per workload. Not part of CI's test command: benchmarks measure, tests assert.
#
#   scripts/bench.sh                 # everything (about 12 minutes on 2 cores, after the build)
#   scripts/bench.sh --only w2,w3    # some end-to-end workloads (w1..w4; w4 includes w5)
#   BENCH_MICRO=0 scripts/bench.sh   # skip the criterion benchmarks
#   BENCH_E2E=0 scripts/bench.sh     # only the criterion benchmarks
#
# Arguments are passed to scripts/bench_e2e.py (see its --help: rates, windows, group counts).
# Needs: cargo, python3, prometheus-blackbox-exporter (scripts/install-test-deps.sh installs it).
# Figures and what limits them: BENCHMARKS.md.
set -eu
cd "$(dirname "$0")/.."

cargo build --release --bins --example usersig --example loadgen

if [ "${BENCH_MICRO:-1}" != 0 ]; then
    cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3
fi

if [ "${BENCH_E2E:-1}" != 0 ]; then
    command -v prometheus-blackbox-exporter >/dev/null 2>&1 || [ -x /usr/bin/prometheus-blackbox-exporter ] || {
        echo "bench: prometheus-blackbox-exporter missing: run scripts/install-test-deps.sh" >&2
        exit 1
    }
    python3 scripts/bench_e2e.py --json target/bench-e2e.json "$@"
fi
