#!/usr/bin/env python3
"""Validate the Kubernetes manifests offline, strictly, against JSON schemas.

Built-in kinds (StatefulSet, Service, ...) are checked with kubernetes-validate's bundled
schemas in strict mode (an unknown or misspelt field fails) for the oldest and the newest
Kubernetes release we claim to support. Kinds it does not know (the Prometheus Operator's
ServiceMonitor and PodMonitor, kustomize's Kustomization) are checked against the schemas in
scripts/k8s-schemas/. A kind with no schema anywhere fails: nothing passes unchecked.

Run it through scripts/validate-k8s.sh, which provides kubernetes-validate in a venv.
Usage: validate_k8s.py [DIR_OR_FILE ...]   (default: deploy/kubernetes)
"""

import json
import pathlib
import re
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

# Oldest and newest releases the manifests must fit: 1.29 is the oldest release still
# maintained by the big managed offerings; the newest is the latest schema bundled.
KUBERNETES_VERSIONS = ["1.29.0", kv.latest_version()]

REPO = pathlib.Path(__file__).resolve().parent.parent
LOCAL_SCHEMAS = REPO / "scripts" / "k8s-schemas"


def local_schema_path(doc):
    """Name a local schema the way kubernetes-validate names its own: kind-group-version."""
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    return LOCAL_SCHEMAS / f"{doc['kind'].lower()}-{api_version}.json"


def check(doc):
    """Return a list of problems with one document (empty when it is valid)."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (needs apiVersion and kind)"]
    schema_path = local_schema_path(doc)
    if schema_path.exists():
        schema = json.loads(schema_path.read_text())
        validator = jsonschema.Draft202012Validator(schema)
        return [
            f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            f" (schema {schema_path.name})"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        ]
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "<root>"
            problems.append(f"Kubernetes {e.version}: {path}: {e.message}")
        except kv.SchemaNotFoundError:
            problems.append(
                f"no schema for {doc['apiVersion']} {doc['kind']} in kubernetes-validate"
                f" {version} nor in {schema_path.relative_to(REPO)}"
            )
    return problems


def manifest_files(args):
    files = []
    for arg in args:
        path = pathlib.Path(arg)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            files.append(path)
    return files


def main(argv):
    files = manifest_files(argv or [str(REPO / "deploy" / "kubernetes")])
    passed = failed = 0
    for path in files:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as e:
            print(f"FAIL {path}: cannot read YAML: {e}")
            failed += 1
            continue
        if not docs:
            print(f"FAIL {path}: no YAML document")
            failed += 1
        for doc in docs:
            name = doc.get("metadata", {}).get("name", "") if isinstance(doc, dict) else ""
            what = f"{path} {doc.get('kind', '?') if isinstance(doc, dict) else '?'}/{name}"
            problems = check(doc)
            if problems:
                failed += 1
                print(f"FAIL {what}")
                for problem in problems:
                    print(f"  {problem}")
            else:
                passed += 1
                print(f"PASS {what}")
    if passed + failed == 0:
        print("FAIL: no manifest found")
        failed = 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
