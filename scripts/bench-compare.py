#!/usr/bin/env python3
"""Runs `flotilla bench` of two builds alternately and prints each workload's median, min and max.

    cargo build --release -p flotilla --bin flotilla
    scripts/bench-compare.py OLD_FLOTILLA_BINARY target/release/flotilla [ROUNDS] [WORKLOAD...]

The builds take turns (old, new, then new, old, ...) so that a noisy machine weighs on both alike.
Each run's figure is its own median over repeats (`value`); the table gives the median, min and
max of those over the rounds. A workload only one build knows shows "-" for the other.
"""
import collections
import json
import statistics
import subprocess
import sys


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binaries = {"before": sys.argv[1], "after": sys.argv[2]}
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    only = [arg for w in sys.argv[4:] for arg in ("--workload", w)]
    figures = {name: collections.defaultdict(list) for name in binaries}
    failures = collections.Counter()
    units = {}  # in the order the workloads ran
    for i in range(rounds):
        order = list(binaries) if i % 2 == 0 else list(reversed(binaries))
        for name in order:
            run = subprocess.run(
                [binaries[name], "bench", *only], capture_output=True, text=True, timeout=600
            )
            if run.returncode != 0:
                failures[name] += 1
                print(f"{name}: a run failed: {run.stderr.strip()[-300:]}", file=sys.stderr)
                continue
            for line in run.stdout.splitlines():
                d = json.loads(line)
                figures[name][d["workload"]].append(d["value"])
                units[d["workload"]] = d["unit"]

    def spread(xs):
        if not xs:
            return "-"
        return f"{statistics.median(xs):.4g} ({min(xs):.4g}–{max(xs):.4g})"

    print(f"| workload | unit | before: median (min–max) | after: median (min–max) |")
    print("|---|---|---|---|")
    for workload, unit in units.items():
        print(
            f"| {workload} | {unit} | {spread(figures['before'][workload])} "
            f"| {spread(figures['after'][workload])} |"
        )
    for name, count in failures.items():
        print(f"\n{name}: {count} of {rounds} runs failed (left out of the figures)")


if __name__ == "__main__":
    main()
