#!/bin/sh
# Installs the external tools the test command runs for real: promtool (golden /metrics lint),
# prometheus, alertmanager/amtool and the blackbox exporter (end-to-end tests), node and npm
# (the UserSig check against Tencent's npm library), and cargo-audit (known-vulnerable
# dependencies). Idempotent: installs only what is missing from PATH. The apt part is
# Debian/Ubuntu only and needs root or sudo; cargo-audit goes to ~/.cargo/bin.
set -eu

APT_TOOLS="promtool amtool prometheus alertmanager prometheus-blackbox-exporter"

packages=""
for tool in $APT_TOOLS; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        packages="prometheus prometheus-alertmanager prometheus-blackbox-exporter"
        break
    fi
done
# Debian's npm depends on Debian's nodejs: ask for both only when node itself is missing, so a
# node from elsewhere (NodeSource ships npm inside nodejs) is left alone.
if ! command -v node >/dev/null 2>&1; then
    packages="$packages nodejs npm"
elif ! command -v npm >/dev/null 2>&1; then
    packages="$packages npm"
fi

if [ -n "$packages" ]; then
    echo "install-test-deps: installing:$packages"
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
    # shellcheck disable=SC2086 # a list of package names
    $SUDO apt-get $LOCK_WAIT install -y --no-install-recommends $packages

    # Debian ships Alertmanager's daemon as `prometheus-alertmanager`: give it its upstream name
    # too, so tests can call `alertmanager` whichever way it was installed.
    if ! command -v alertmanager >/dev/null 2>&1 && command -v prometheus-alertmanager >/dev/null 2>&1; then
        $SUDO ln -sf "$(command -v prometheus-alertmanager)" /usr/local/bin/alertmanager
    fi
fi

if ! cargo audit --version >/dev/null 2>&1; then
    echo "install-test-deps: installing cargo-audit"
    cargo install --locked cargo-audit
fi

for tool in $APT_TOOLS node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-test-deps: $tool still missing after install" >&2
        exit 1
    fi
done
if ! cargo audit --version >/dev/null 2>&1; then
    echo "install-test-deps: cargo-audit still missing after install (is ~/.cargo/bin on PATH?)" >&2
    exit 1
fi
echo "install-test-deps: all tools present"
