#!/usr/bin/env bash
# Every test of the project. Installs what the tests need first (idempotent), then runs lints,
# the Rust test suites and the Helm chart checks.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== Dockerfile lint and manifest schemas"
python3 tests/validate_manifests.py
echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
if [ -f tests/helm_lint.py ]; then
  echo "== helm lint"
  python3 tests/helm_lint.py
fi
echo "== chart manifests (rendered by Helm, validated against Kubernetes' schemas)"
python3 tests/validate_chart.py
