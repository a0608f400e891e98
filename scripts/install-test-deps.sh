#!/bin/sh
# Installs the external tools the test suites run for real: promtool (golden /metrics lint),
# prometheus, alertmanager/amtool and the blackbox exporter (end-to-end tests). Idempotent: does
# nothing when every tool is already on PATH. Debian/Ubuntu only (apt-get); needs root or sudo.
set -eu

missing=""
for tool in promtool amtool prometheus alertmanager prometheus-blackbox-exporter; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -z "$missing" ]; then
    echo "install-test-deps: all tools present"
    exit 0
fi
echo "install-test-deps: missing:$missing"

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install-test-deps: need root (or sudo) to run apt-get" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Other jobs on a shared machine may hold the dpkg lock: wait for it rather than fail.
LOCK_WAIT="-o DPkg::Lock::Timeout=900"
$SUDO apt-get $LOCK_WAIT update
$SUDO apt-get $LOCK_WAIT install -y --no-install-recommends \
    prometheus prometheus-alertmanager prometheus-blackbox-exporter

# Debian ships Alertmanager's daemon as `prometheus-alertmanager`: give it its upstream name too,
# so tests can call `alertmanager` whichever way it was installed.
if ! command -v alertmanager >/dev/null 2>&1 && command -v prometheus-alertmanager >/dev/null 2>&1; then
    $SUDO ln -sf "$(command -v prometheus-alertmanager)" /usr/local/bin/alertmanager
fi

for tool in promtool amtool prometheus alertmanager prometheus-blackbox-exporter; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-test-deps: $tool still missing after install" >&2
        exit 1
    fi
done
echo "install-test-deps: done"
