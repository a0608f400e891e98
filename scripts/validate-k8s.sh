#!/usr/bin/env bash
# Validate deploy/kubernetes offline (no cluster): every manifest against the Kubernetes JSON
# schemas bundled with PyPI's kubernetes-validate, strictly, and the Prometheus Operator and
# kustomize kinds against scripts/k8s-schemas/. See scripts/validate_k8s.py.
#
# kubernetes-validate is installed once into a venv under target/ (pip needs PyPI the first
# time only). Any failure to install is an error, never a skip.
# Usage: scripts/validate-k8s.sh [DIR_OR_FILE ...]   (default: deploy/kubernetes)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kv_version=1.37.0
venv="${TIMATTR_K8S_VENV:-$repo/target/k8s-validate-venv}"

mkdir -p "$(dirname "$venv")"
# Several test threads may call this at once: one of them installs, the others wait.
exec 9>"$venv.lock"
flock 9
if ! "$venv/bin/python" -c "
import sys
from kubernetes_validate.version import __version__
sys.exit(__version__ != '$kv_version')" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$kv_version"
fi
flock -u 9

exec "$venv/bin/python" "$repo/scripts/validate_k8s.py" "$@"
