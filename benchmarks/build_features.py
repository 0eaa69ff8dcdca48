"""Wall time and peak memory of the full-France feature build (panel + feature matrix).

Run with ``.venv/bin/python benchmarks/build_features.py [--data DIR]``. Prints the time of
each stage, the total, the peak resident memory, and the ratio to the 30 s target on this
2-core machine. Nothing is written (the build runs in memory, outputs skipped), then a
second run writes the outputs to a temporary folder to time the writing too.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from territoria.pipelines.build_features import run_build_features

TARGET_S = 30.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        res = run_build_features(data_dir=args.data, out_dir=Path(tmp))
        total = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"communes: {len(res.features):,}  features: {len(res.meta)}  panel rows: {len(res.panel):,}")
    for stage, secs in res.timings.items():
        print(f"  {stage:<10} {secs:7.2f} s")
    print(f"total        {total:7.2f} s   (target {TARGET_S:.0f} s: ratio {total / TARGET_S:.2f})")
    print(f"peak memory  {peak_mb:7.0f} MB")


if __name__ == "__main__":
    main()
