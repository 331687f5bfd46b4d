#!/usr/bin/env python3
"""The mean of col2 of the seed article's CSV with Polars, for comparison with
`flotilla bench --workload csv_mean` on the same file (written there, in
$TMPDIR/flotilla-bench/large_data_10m.csv). Prints the median, fastest and slowest of 5 runs.

    pip install polars && python3 scripts/polars_csv_mean.py [PATH]
"""
import os
import statistics
import sys
import tempfile
import time

import polars as pl

path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    tempfile.gettempdir(), "flotilla-bench", "large_data_10m.csv")
times = []
for _ in range(5):
    start = time.perf_counter()
    mean = pl.scan_csv(path).select(pl.col("col2").mean()).collect().item()
    times.append(time.perf_counter() - start)
    assert mean == 9_999_999.0, mean
print(f'{{"workload": "polars_csv_mean", "value": {statistics.median(times):.4f}, '
      f'"unit": "s", "min": {min(times):.4f}, "max": {max(times):.4f}, "runs": 5, '
      f'"threads": {pl.thread_pool_size()}, "polars": "{pl.__version__}"}}')
