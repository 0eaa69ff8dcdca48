"""The main job on all communes: wall time per stage and peak memory, against the targets.

Run with ``.venv/bin/python benchmarks/run_france.py [--data DIR] [--out DIR] [--no-rerun]``.

1. ``territoria run`` from nothing (``run_main`` on a new output folder: empty source cache,
   models trained, every zone explained, map, cards, report and audit written);
2. unless ``--no-rerun``, the same command again on the same folder, as a planner re-running
   an unchanged setup does: sources come from the cache and the champion models are reused.

For each run: the time of each stage and of its main steps (from ``run.json``; the first
run's total includes importing the pipeline, as ``territoria run`` does), the peak
resident memory within each stage (sampled every 0.1 s), the total, the peak resident memory
of this process, and the ratios to the targets of issue 6 on this
2-core machine (60 s, 3 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

TARGET_S = 60.0
TARGET_GB = 3.0
STAGES = ("features", "train", "prioritise", "report")


def _peak_gb() -> float:
    """Peak resident memory so far of this process, in GB (the source-parsing workers, ~1 GB
    each, are not added: ``RUSAGE_CHILDREN`` would also count the parent's pages in every
    forked helper such as ``git``, so it says nothing about them)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class RssSampler:
    """Resident memory of this process sampled every ``interval`` seconds in a thread, to
    tell which stage sets the peak (``ru_maxrss`` only gives the peak itself)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        with open("/proc/self/statm", encoding="ascii") as statm:
            while not self._stop.is_set():
                statm.seek(0)
                rss = int(statm.read().split()[1]) * self._page / 1024**3
                self.samples.append((time.perf_counter(), rss))
                self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_by_stage(self, timings: dict[str, float]) -> dict[str, float]:
        """Peak RSS (GB) within each stage, the stages taken back to back from the start."""
        out, t = {}, self.start
        for stage in STAGES:
            end = t + timings.get(stage, 0.0)
            inside = [rss for ts, rss in self.samples if t <= ts <= end]
            out[stage] = max(inside) if inside else float("nan")
            t = end
        return out


def _report(label: str, wall: float, out: Path, rss: RssSampler, imports: float = 0.0) -> None:
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    timings = run["timings_s"]
    peaks = rss.peak_by_stage(timings)
    own = _peak_gb()
    print(f"\n{label}: {run['zones']:,} zones, {run['priority_zones']:,} flagged, training {run['training']}")
    for stage in STAGES:
        steps = {k.split(".", 1)[1]: v for k, v in timings.items()
                 if k.startswith(f"{stage}.") and not k.split(".", 1)[1].startswith("n_")}  # n_: counts
        detail = ", ".join(f"{k} {v:.1f}" for k, v in sorted(steps.items(), key=lambda kv: -kv[1])[:5])
        print(f"  {stage:<11} {timings.get(stage, float('nan')):7.1f} s   peak {peaks[stage]:.2f} GB   {detail}")
    if imports:
        print(f"  imports     {imports:7.1f} s")
    print(f"  total       {wall:7.1f} s   (target {TARGET_S:.0f} s: ratio {wall / TARGET_S:.2f})")
    print(f"  peak memory {own:7.2f} GB  (target {TARGET_GB:.0f} GB: ratio {own / TARGET_GB:.2f})")


def main() -> None:
    # imported here: the workers re-import this script; timed, and counted in the first
    # run's total, as `territoria run` pays it (which starts the workers' fork server first)
    start = time.perf_counter()
    from territoria.cli import prepare_long_job
    from territoria.workers import start_fork_server

    prepare_long_job()
    start_fork_server()
    from territoria.pipelines.main import run_main
    imports = time.perf_counter() - start

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one)")
    parser.add_argument("--no-rerun", action="store_true", help="skip the second, reusing run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        labels = ["run 1"] + ([] if args.no_rerun else ["run 2, same folder"])
        for label in labels:
            with RssSampler() as rss:
                start = time.perf_counter()
                run_main(out, data_dir=args.data)
                wall = time.perf_counter() - start
            _report(label, wall + imports, out, rss, imports)
            imports = 0.0

if __name__ == "__main__":
    main()
