#!/usr/bin/env bash
# The autoscaler's speed and cost on the local Kubernetes with a real Prometheus: burst to new
# workers, queue empty to scaled down, and the operator's CPU and memory with 100 autoscaled
# clusters. Needs kubectl and /usr/bin/prometheus (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p flotilla-operator --bin flotilla-operator --example autoscale_bench
cargo build --release --locked -p flotilla --bin flotilla
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/release/examples/autoscale_bench" "$@"
