"""Wall time and peak memory of the full-France feature build (panel + feature matrix).

Run with ``.venv/bin/python benchmarks/build_features.py [--data DIR]``. Runs the stage
twice in a temporary output folder: cold (empty source cache: the official files are
parsed, in parallel worker processes) then warm (sources read from the cache). Prints the
time of each stage, the totals, the ratio to the 30 s target on this 2-core machine and the
peak resident memory of this process and of the workers. ``graph`` is the time of the
thread that builds the spatial weights while the panel is harmonised, not a
stage of its own: ``graph_wait`` is what the harmonising then waited for it.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from territoria.memory import configure_allocators, release_free_memory

TARGET_S = 30.0


def main() -> None:
    # imported here, not at the top: the worker processes that parse the sources start by
    # importing this script (spawn), and must not pay for the whole pipeline's imports
    # (libpysal, scikit-learn: ~3 s each), which `territoria features` does not make them pay
    from territoria.pipelines.build_features import run_build_features

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    configure_allocators()  # as territoria's commands do
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("cold", "warm"):
            # the warm build as a rerun's new process makes it: without the cold one's memory
            res = None
            release_free_memory()
            start = time.perf_counter()
            res = run_build_features(data_dir=args.data, out_dir=Path(tmp))
            runs[label] = (time.perf_counter() - start, res.timings)
    print(f"communes: {len(res.features):,}  features: {len(res.meta)}  panel rows: {len(res.panel):,}")
    print(f"  {'stage':<10} {'cold':>9} {'warm':>9}")
    for stage in runs["cold"][1]:
        print(f"  {stage:<10} {runs['cold'][1][stage]:7.2f} s {runs['warm'][1].get(stage, float('nan')):7.2f} s")
    for label, (total, _) in runs.items():
        print(f"total {label}   {total:7.2f} s   (target {TARGET_S:.0f} s: ratio {total / TARGET_S:.2f})")
    main_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory  {main_mb:7.0f} MB (workers: {workers_mb:.0f} MB each at most)")


if __name__ == "__main__":
    main()
