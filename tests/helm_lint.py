#!/usr/bin/env python3
"""Lints charts/flotilla with Helm's own Go library, through the helm-sdkpy bindings.

Helm's lint renders every template with the chart's values and checks the result (YAML syntax,
object metadata, Chart.yaml, values). The bindings lint a chart directory with the values in its
values.yaml only, so each set of values below is linted on a temporary copy of the chart with
those values merged into values.yaml. A first check makes sure the linter really renders
templates: a copy with a broken template must fail.

Setup:  pip install --ignore-requires-python helm-sdkpy
Run:    python3 tests/helm_lint.py
Exits non-zero when any variant has a lint warning or error.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

try:
    import helm_sdkpy
except ImportError:
    sys.exit("helm-sdkpy is missing: pip install --ignore-requires-python helm-sdkpy")

CHART = Path(__file__).resolve().parent.parent / "charts" / "flotilla"

# Helm's support.Severity values.
SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
FAILING_SEVERITY = 2

# Values overlays, each linted on its own copy of the chart.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "watched namespaces, Prometheus, ServiceMonitor, two replicas": {
        "replicaCount": 2,
        "watchNamespaces": ["science", "analytics"],
        "prometheus": {"url": "http://prometheus-operated.monitoring:9090"},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "headPodMonitor": {"enabled": True, "interval": "2s", "labels": {"release": "prometheus"}},
        "leaderElection": {"leaseName": "flotilla-operator-lock"},
        "podAnnotations": {"example.com/note": "lint"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "registry"}],
    },
    "existing service account, no leader election": {
        "serviceAccount": {"create": False, "name": "flotilla-operator"},
        "leaderElection": {"enabled": False},
        "image": {"repository": "registry.example/flotilla", "tag": "1.2.3"},
        "fullnameOverride": "flotilla-operator",
    },
}


def merge(base: Any, overlay: Any) -> Any:
    """Deep-merges overlay into a copy of base (maps merge, everything else is replaced)."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = copy.deepcopy(base)
        for key, value in overlay.items():
            merged[key] = merge(base.get(key), value)
        return merged
    return copy.deepcopy(overlay)


def lint(chart_dir: Path) -> list[dict[str, Any]]:
    """Helm's lint messages for a chart directory."""
    config = helm_sdkpy.Configuration(namespace="flotilla-system")
    result = asyncio.run(helm_sdkpy.Lint(config).run(str(chart_dir)))
    return result.get("Messages") or []


def lint_variant(work: Path, name: str, overlay: dict[str, Any], extra: dict[str, str] | None = None) -> list[str]:
    """Lints a copy of the chart with overlay merged into its values; returns failing messages."""
    chart = work / name.replace(" ", "_").replace(",", "")
    shutil.copytree(CHART, chart)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (chart / "values.yaml").write_text(yaml.safe_dump(merge(values, overlay), sort_keys=False))
    for path, text in (extra or {}).items():
        (chart / path).write_text(text)
    failures = []
    for message in lint(chart):
        severity = message.get("Severity", 0)
        line = f"{SEVERITY.get(severity, severity)} {message.get('Path', '?')}"
        if severity >= FAILING_SEVERITY:
            failures.append(line)
        else:
            print(f"    note: {line}")
    return failures


def main() -> int:
    if not (CHART / "Chart.yaml").is_file():
        print(f"no chart at {CHART}", file=sys.stderr)
        return 1
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="flotilla-helm-lint-") as tmp:
        work = Path(tmp)

        # The linter must render templates, or every check below would pass vacuously.
        broken = lint_variant(
            work,
            "self-check",
            {},
            {"templates/broken.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n data: [\n"},
        )
        if any("templates/broken.yaml" in line for line in broken):
            print("ok   self-check: a broken template is reported")
            passed += 1
        else:
            print("FAIL self-check: Helm's lint did not report a broken template")
            failed += 1

        for name, overlay in VARIANTS.items():
            failures = lint_variant(work, name, overlay)
            if failures:
                failed += 1
                print(f"FAIL {name}")
                for line in failures:
                    print(f"    {line}  (run `helm lint` on the chart for the message)")
            else:
                passed += 1
                print(f"ok   {name}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
