#!/usr/bin/env python3
"""Renders charts/flotilla with Helm's own library and validates every rendered manifest.

Helm's Go library (through the helm-sdkpy bindings) renders the chart; the bindings offer no
client-only render (no `helm template`, no dry run), so each set of values is installed for
real, with `wait` off, into the project's fake Kubernetes API server (tests/testenv, started
here on 127.0.0.1), and the release's manifest, as Helm rendered it, is validated:
- built-in kinds strictly (unknown fields refused) against the Kubernetes OpenAPI schemas PyPI
  `kubernetes-validate` ships, and this project's kinds (`flotilla.dev`) against the generated
  CRD schema, both as tests/validate_manifests.py does for the examples;
- the Prometheus Operator's `PodMonitor` and `ServiceMonitor` against the typed models of PyPI
  `cloudcoil-models-prometheus-operator` (generated from that operator's CRDs), strictly: a field
  the model does not know is refused.
The CRDs the chart ships (charts/flotilla/crds) are validated as CustomResourceDefinitions too.

The fake API server serves the Prometheus Operator's two kinds (as bare CRDs) only when a
variant asks for them, so the chart's `.Capabilities.APIVersions.Has` checks are exercised both
ways. A first check makes sure the validation really reads what Helm rendered: a copy of the
chart with a misspelt Deployment field must fail.

Setup:  scripts/setup.sh (helm-sdkpy, kubernetes-validate, cloudcoil-models-prometheus-operator)
Run:    python3 tests/validate_chart.py   (builds the fake API server with cargo if needed)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helm_lint import merge  # noqa: E402
from validate_manifests import crd_schemas, validate_document  # noqa: E402

try:
    import helm_sdkpy
    from cloudcoil.models.prometheus_operator import v1 as monitoring
except ImportError as error:
    sys.exit(f"{error.name} is missing: run scripts/setup.sh")

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "flotilla"
MONITORING = "monitoring.coreos.com/v1"

# Values overlays; each is rendered and validated on its own. `monitoring`: whether the API
# server offers the Prometheus Operator's kinds.
VARIANTS: list[tuple[str, dict[str, Any], bool]] = [
    ("defaults", {}, False),
    (
        "Prometheus URL set",
        {"prometheus": {"url": "http://prometheus-operated.monitoring:9090"}},
        False,
    ),
    (
        "headPodMonitor and serviceMonitor on",
        {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "headPodMonitor": {"enabled": True, "interval": "2s", "labels": {"release": "prometheus"}},
        },
        True,
    ),
    (
        "headPodMonitor on without the Prometheus Operator (scrape annotations instead)",
        {"headPodMonitor": {"enabled": True}},
        False,
    ),
    (
        "watched namespaces, two replicas",
        {
            "replicaCount": 2,
            "watchNamespaces": ["science", "analytics"],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
            "imagePullSecrets": [{"name": "registry"}],
        },
        False,
    ),
    (
        "existing service account, no leader election",
        {"serviceAccount": {"create": False, "name": "flotilla-operator"}, "leaderElection": {"enabled": False}},
        False,
    ),
]

# Bare CRDs for the Prometheus Operator's kinds: they make the kinds exist for Helm's
# capability checks; the models above do the validating.
MONITORING_CRDS = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }
    for plural, kind in [("podmonitors", "PodMonitor"), ("servicemonitors", "ServiceMonitor")]
]


def fake_apiserver() -> Path:
    """The fake API server program, built by cargo if it is not yet."""
    out = subprocess.run(
        [
            "cargo", "build", "--quiet", "--locked", "-p", "flotilla-testenv",
            "--bin", "flotilla-fake-apiserver", "--message-format=json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.exit(f"building the fake API server failed:\n{out.stderr}")
    for line in out.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable"):
            if Path(message["executable"]).name == "flotilla-fake-apiserver":
                return Path(message["executable"])
    sys.exit("cargo built no flotilla-fake-apiserver")


def kubectl_apply(kubeconfig: Path, docs: list[dict[str, Any]]) -> None:
    subprocess.run(
        ["kubectl", "apply", "-f", "-"],
        input=yaml.safe_dump_all(docs),
        text=True,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        check=True,
        capture_output=True,
    )


def validate_monitor(doc: dict[str, Any], where: str) -> list[str]:
    """Problems of a PodMonitor or ServiceMonitor: refused by its model, or fields it ignores."""
    model = {"PodMonitor": monitoring.PodMonitor, "ServiceMonitor": monitoring.ServiceMonitor}.get(doc.get("kind"))
    if model is None:
        return [f"{where}: {doc.get('kind')} {doc.get('apiVersion')}: nothing could check it"]
    try:
        parsed = model.model_validate(doc)
    except Exception as error:  # pydantic's ValidationError, with every problem in its text
        return [f"{where}: {error}"]
    kept = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    return [f"{where}: {path}: unknown field" for path in dropped(doc, kept)]


def dropped(given: Any, kept: Any, path: str = "") -> list[str]:
    """Paths present in `given` and absent from `kept` (what a model ignored)."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return []
        out = []
        for key, value in given.items():
            where = f"{path}.{key}" if path else key
            if key not in kept:
                out.append(where)
            else:
                out += dropped(value, kept[key], where)
        return out
    if isinstance(given, list) and isinstance(kept, list):
        return [p for i, (g, k) in enumerate(zip(given, kept)) for p in dropped(g, k, f"{path}[{i}]")]
    return []


def render(config_path: Path, chart: Path, release: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The documents Helm renders for `chart` with `values`, installed as `release`."""
    config = helm_sdkpy.Configuration(namespace=release, kubeconfig=str(config_path))
    result = asyncio.run(
        helm_sdkpy.Install(config).run(
            release, str(chart), values=values, wait=False, create_namespace=True, timeout=60
        )
    )
    manifest = result.get("manifest") or ""
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def validate_all(docs: list[dict[str, Any]], label: str, crds: dict) -> list[str]:
    problems = []
    for index, doc in enumerate(docs):
        where = f"{label}#{index} {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion") == MONITORING:
            problems += validate_monitor(doc, where)
        else:
            problems += validate_document(doc, where, crds)
    return problems


def main() -> int:
    program = fake_apiserver()
    crds = crd_schemas()
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="flotilla-chart-") as tmp:
        work = Path(tmp)
        kubeconfig = work / "kubeconfig"
        server = subprocess.Popen(
            [str(program), "--kubeconfig-out", str(kubeconfig)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            server.stdout.readline()  # its URL, once it serves
            # The namespaces a variant watches, as a cluster would have them.
            kubectl_apply(kubeconfig, [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
                for name in ("science", "analytics")
            ])
            # The chart's own CRDs, as files.
            for path in sorted((CHART / "crds").glob("*.yaml")):
                problems = validate_all(list(filter(None, yaml.safe_load_all(path.read_text()))), str(path.relative_to(ROOT)), crds)
                passed, failed = report(f"chart CRDs {path.name}", problems, passed, failed)

            # The validation must read what Helm rendered: a misspelt field fails.
            broken = work / "broken"
            shutil.copytree(CHART, broken)
            deployment = broken / "templates" / "deployment.yaml"
            deployment.write_text(deployment.read_text().replace("replicas:", "replicaz:", 1))
            problems = validate_all(render(kubeconfig, broken, "self-check", {}), "self-check", crds)
            if any("replicaz" in p for p in problems):
                print("ok   self-check: a misspelt field in a rendered template is reported")
                passed += 1
            else:
                print(f"FAIL self-check: the misspelt Deployment field was not reported: {problems}")
                failed += 1

            monitoring_served = False
            for index, (name, overlay, wants_monitoring) in enumerate(VARIANTS):
                if wants_monitoring != monitoring_served:
                    # Helm reads the server's kinds afresh for each install.
                    verb = "apply" if wants_monitoring else "delete"
                    subprocess.run(
                        ["kubectl", verb, "-f", "-"],
                        input=yaml.safe_dump_all(MONITORING_CRDS),
                        text=True,
                        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                        check=True,
                        capture_output=True,
                    )
                    monitoring_served = wants_monitoring
                values = yaml.safe_load((CHART / "values.yaml").read_text())
                docs = render(kubeconfig, CHART, f"variant-{index}", merge(values, overlay))
                kinds = sorted({d.get("kind", "?") for d in docs})
                problems = validate_all(docs, name, crds)
                if wants_monitoring and not {"PodMonitor", "ServiceMonitor"} <= set(kinds):
                    problems.append(f"{name}: no PodMonitor and ServiceMonitor rendered: {kinds}")
                passed, failed = report(f"{name}: {len(docs)} documents ({', '.join(kinds)})", problems, passed, failed)
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def report(name: str, problems: list[str], passed: int, failed: int) -> tuple[int, int]:
    if problems:
        print(f"FAIL {name}")
        for problem in problems:
            print(f"    {problem}")
        return passed, failed + 1
    print(f"ok   {name}")
    return passed + 1, failed


if __name__ == "__main__":
    sys.exit(main())
