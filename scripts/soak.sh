#!/usr/bin/env bash
# Soak test (not part of CI): the release exporter polls 10,000 groups on the fake API for
# SOAK_MINUTES (default 30) while app-wide faults toggle (502s, random errors and hangs, slow
# answers, intermittent 10002, truncated JSON, rate-limit answers) and a few groups change
# attributes. Every SOAK_SAMPLE_SECONDS (10) it samples the exporter's RSS and open file
# descriptors (/proc/PID/status, /proc/PID/fd) and the series in /metrics, and prints a table.
# It fails (exit 1) if the exporter dies, if a group's series goes missing once all are present
# ("lost series"), if it does not exit 0 on SIGTERM, or if it grows: the run is cut in thirds
# (the first is warm-up), and the last third's highest RSS may exceed the middle third's by at
# most SOAK_RSS_GROWTH_PERCENT (3) plus 2 MiB, its most open fds the middle's by at most
# SOAK_FD_GROWTH (8). Runs shorter than 3 minutes are too short to judge growth and fail.
#
#   scripts/soak.sh                         # 30 minutes, 10,000 groups
#   SOAK_MINUTES=5 scripts/soak.sh          # shorter
#   SOAK_SKIP_BUILD=1 scripts/soak.sh       # use target/release as it is
#
# Other knobs: SOAK_GROUPS (10000), SOAK_POLL_INTERVAL (60s), SOAK_RATE_LIMIT (190; the fake
# enforces Tencent's 200/s), SOAK_FAULT_PERIOD_SECONDS (60: a fault for the first half of each
# period, none for the second half), SOAK_BIN_DIR (target/release).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${SOAK_MINUTES:-30}
groups=${SOAK_GROUPS:-10000}
interval=${SOAK_POLL_INTERVAL:-60s}
rate=${SOAK_RATE_LIMIT:-190}
sample=${SOAK_SAMPLE_SECONDS:-10}
period=${SOAK_FAULT_PERIOD_SECONDS:-60}
bin=${SOAK_BIN_DIR:-target/release}
duration=$((minutes * 60))

if [ -z "${SOAK_SKIP_BUILD:-}" ]; then
    cargo build --release --bins
fi

work=$(mktemp -d)
fake_pid=""
exporter_pid=""
cleanup() {
    [ -n "$exporter_pid" ] && kill "$exporter_pid" 2>/dev/null || true
    [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    if [ -n "${SOAK_KEEP:-}" ]; then echo "soak: files kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# Not a real secret: the fake and the exporter share it through the environment.
export TIMATTR_SOAK_KEY="soak-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
prefix='@TGS#soak'
faults=(
    '{http_status: 502}'
    '{flaky: {p_error: 0.2, p_timeout: 0.01}}'
    '{latency: 300ms}'
    '{intermittent: {code: 10002, every: 4}}'
    'truncated_json'
    '{intermittent: {code: 60007, every: 50}}'
)
fault_at() { # fault name in effect at second $1 of the run
    local t=$1
    local p=$((t / period)) within=$((t % period))
    if [ "$within" -lt $((period / 2)) ]; then
        echo "${faults[$((p % ${#faults[@]}))]}"
    else
        echo "-"
    fi
}

{
    echo "apps:"
    echo "  - sdkappid: 1400000001"
    echo "    identifier: administrator"
    echo "    secret_key_env: TIMATTR_SOAK_KEY"
    echo "    generate:"
    echo "      - {count: $groups, prefix: \"$prefix\", attrs: 4, value_bytes: 16, type: Public}"
    echo "events:"
    for g in 0 1 2 3 4; do
        echo "  - {every: 15s, group: \"$prefix$g\", modify_attrs: {round: \"{n}\"}}"
    done
    t=0
    while [ "$t" -lt "$duration" ]; do
        f=$(fault_at "$t")
        echo "  - {at: ${t}s, fault: $f}"
        echo "  - {at: $((t + period / 2))s, clear_fault: true}"
        t=$((t + period))
    done
} >"$work/scenario.yml"

{
    echo "poll_interval: $interval"
    echo "state_file: state.json"
    echo "apps:"
    echo "  - sdkappid: 1400000001"
    echo "    endpoint: http://127.0.0.1:FAKE_PORT/"
    echo "    identifier: administrator"
    echo "    secret_key_env: TIMATTR_SOAK_KEY"
    echo "    rate_limit: $rate"
    echo "    max_concurrency: 32"
    echo "    timeout: 5s"
    echo "    groups:"
    for ((i = 0; i < groups; i++)); do echo "      - \"$prefix$i\""; done
} >"$work/timattr.yml.in"

"$bin/timattr_fake_api" --scenario "$work/scenario.yml" --listen 127.0.0.1:0 \
    >"$work/fake.out" 2>"$work/fake.log" &
fake_pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$work/fake.out" 2>/dev/null && break; sleep 0.1; done
fake_port=$(sed -n 's/^listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/fake.out")
[ -n "$fake_port" ] || { echo "soak: the fake API did not start" >&2; cat "$work/fake.log" >&2; exit 1; }
sed "s/FAKE_PORT/$fake_port/" "$work/timattr.yml.in" >"$work/timattr.yml"

"$bin/timattr_exporter" --config.file="$work/timattr.yml" --web.listen-address=127.0.0.1:0 \
    2>"$work/exporter.log" &
exporter_pid=$!
for _ in $(seq 100); do grep -q 'listen_address=' "$work/exporter.log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.*listen_address=\([0-9.:]*\).*/\1/p' "$work/exporter.log" | head -1)
[ -n "$addr" ] || { echo "soak: the exporter did not start" >&2; cat "$work/exporter.log" >&2; exit 1; }
echo "soak: $groups groups every $interval at $rate/s for $minutes min; fake :$fake_port, exporter $addr (pid $exporter_pid)"

metric() { # value of the first sample of family $1 whose labels include all of $2...
    local name=$1
    shift
    awk -v name="$name" -v want="$*" '
        index($0, name "{") == 1 || index($0, name " ") == 1 {
            n = split(want, w, " ")
            for (i = 1; i <= n; i++) if (index($0, w[i]) == 0) next
            print $NF
            exit
        }' "$work/metrics"
}

start=$(date +%s)
lost=0
complete=0
rss_min="" rss_max=0 fd_max=0 samples=0 rss_first_complete=""
: >"$work/samples" # elapsed rss_kib fds, one line per sample
printf '%6s %8s %5s %7s %7s %8s %7s %7s %9s %9s  %s\n' \
    elapsed rss_MiB fds threads series groups healthy failed lag_s requests fault
while :; do
    now=$(date +%s)
    elapsed=$((now - start))
    [ "$elapsed" -le "$duration" ] || break
    if ! kill -0 "$exporter_pid" 2>/dev/null; then
        echo "soak: the exporter died" >&2
        tail -20 "$work/exporter.log" >&2
        exit 1
    fi
    rss_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$exporter_pid/status")
    threads=$(awk '/^Threads:/ { print $2 }' "/proc/$exporter_pid/status")
    fds=$(find "/proc/$exporter_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    curl -sf "http://$addr/metrics" -o "$work/metrics" || : >"$work/metrics"
    series=$(grep -c '^timattr_group_up{' "$work/metrics" || true)
    gauge=$(metric timattr_groups)
    healthy=$(metric timattr_groups_by_error_code 'error_code="0"')
    failed=$(metric timattr_groups_by_error_code 'error_code="-1"')
    lag=$(metric timattr_poll_lag_seconds)
    requests=$(metric timattr_api_requests_total 'api="get_group_attr"')
    rss_mib=$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')
    if [ "$series" -ge "$groups" ]; then
        [ "$complete" = 1 ] || rss_first_complete=$rss_mib
        complete=1
    elif [ "$complete" = 1 ]; then
        lost=$((lost + 1))
        echo "soak: LOST SERIES: $series of $groups groups in /metrics" >&2
    fi
    samples=$((samples + 1))
    [ -z "$rss_min" ] || [ "$rss_kib" -lt "$rss_min" ] && rss_min=$rss_kib
    [ "$rss_kib" -gt "$rss_max" ] && rss_max=$rss_kib
    [ "$fds" -gt "$fd_max" ] && fd_max=$fds
    echo "$elapsed $rss_kib $fds" >>"$work/samples"
    printf '%6s %8s %5s %7s %7s %8s %7s %7s %9.3f %9s  %s\n' \
        "$elapsed" "$rss_mib" "$fds" "$threads" "$series" "${gauge:--}" "${healthy:--}" \
        "${failed:-0}" "${lag:-0}" "${requests:-0}" "$(fault_at "$elapsed")"
    sleep "$sample"
done

kill -TERM "$exporter_pid"
code=0
wait "$exporter_pid" || code=$?
exporter_pid=""
changes=$(grep -c 'attributes changed' "$work/exporter.log" || true)
echo
echo "soak: $samples samples over $minutes min"
echo "soak: RSS min $(awk -v k="$rss_min" 'BEGIN{printf "%.1f", k/1024}') MiB, max $(awk -v k="$rss_max" 'BEGIN{printf "%.1f", k/1024}') MiB (${rss_first_complete:-?} MiB when every group was first present); open fds max $fd_max"
echo "soak: change log lines: $changes; lost-series samples: $lost; exit code on SIGTERM: $code"
[ -s "$work/state.json" ] && echo "soak: state file $(wc -c <"$work/state.json") bytes"
if [ "$complete" != 1 ]; then
    echo "soak: FAIL: never saw all $groups groups in /metrics" >&2
    exit 1
fi
growth_pct=${SOAK_RSS_GROWTH_PERCENT:-3}
fd_growth=${SOAK_FD_GROWTH:-8}
growth=$(awk -v d="$duration" -v pct="$growth_pct" -v fdg="$fd_growth" '
    $1 >= d / 3 && $1 < 2 * d / 3 { if ($2 > mr) mr = $2; if ($3 > mf) mf = $3; m++ }
    $1 >= 2 * d / 3 { if ($2 > lr) lr = $2; if ($3 > lf) lf = $3; l++ }
    END {
        if (d < 180 || m == 0 || l == 0) { print "FAIL too short to judge growth"; exit }
        verdict = (lr > mr * (1 + pct / 100) + 2048 || lf > mf + fdg) ? "FAIL" : "ok"
        printf "%s RSS max %.1f MiB in the middle third, %.1f MiB in the last; fds max %d, %d\n",
            verdict, mr / 1024, lr / 1024, mf, lf
    }' "$work/samples")
echo "soak: growth after warm-up: ${growth#* }"
if [ "$lost" -gt 0 ] || [ "$code" -ne 0 ] || [ "${growth%% *}" != ok ]; then
    echo "soak: FAIL" >&2
    exit 1
fi
echo "soak: OK"
