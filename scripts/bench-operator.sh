#!/usr/bin/env bash
# The operator's speed and size against the fake API server: apply-to-pods time and memory with
# 100 clusters. Needs kubectl on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p flotilla-operator --bin flotilla-operator --example operator_bench
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/release/examples/operator_bench"
# Jobs: apply → driver running, a job with its own cluster → Succeeded, memory with 200 jobs. The
# kubelet runs the release `flotilla` binary for every pod.
cargo build --release --locked -p flotilla --bin flotilla -p flotilla-operator --example job_bench
"$target_dir/release/examples/job_bench"
