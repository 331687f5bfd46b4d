#!/usr/bin/env bash
# The main job: the seed article's examples, each on a local cluster, and one on a cluster of
# processes started with `flotilla up` whose workers run the example's own program.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

cargo build --release -p flotilla --bin flotilla --examples
bin="$target/release"

for example in square counter pi array_mean dataframe_mean delayed csv_mean dask_to_ray; do
  echo "== $example (local cluster in the driver's process)"
  "$bin/examples/$example"
done

echo "== cluster (flotilla up: a head and 2 worker processes running the example's own program)"
export FLOTILLA_STATE_DIR
FLOTILLA_STATE_DIR="$(mktemp -d)"
trap '"$bin/flotilla" down >/dev/null; rm -rf "$FLOTILLA_STATE_DIR"' EXIT
up_output="$("$bin/flotilla" up --workers 2 --port 0 --worker-bin "$bin/examples/cluster")"
echo "$up_output"
eval "$(echo "$up_output" | sed -n 's/^ *export /export /p')"
"$bin/flotilla" status
"$bin/examples/cluster"
