"""The main job on all communes: wall time per stage and peak memory, against the targets.

Run with ``.venv/bin/python benchmarks/run_france.py [--data DIR] [--out DIR] [--no-rerun]``.

1. ``territoria run`` from nothing (``run_main`` on a new output folder: empty source cache,
   models trained, every zone explained, map, cards, report and audit written);
2. unless ``--no-rerun``, the same command again on the same folder, as a planner re-running
   an unchanged setup does: sources come from the cache and the champion models are reused.

For each run: the time of each stage and of its main steps (from ``run.json``; the first
run's total includes importing the pipeline, as ``territoria run`` does), the job's memory
within each stage, the total, and the ratios to the targets of issue 6 on this 2-core
machine (60 s, 3 GB).

The job's memory is that of all its processes, sampled every 0.1 s: the resident size of
this one plus the proportional set sizes of the workers' fork server and the worker
processes (source parsing, MLflow logging, figures, zone cards; PSS, from Linux's
``smaps_rollup``: a page shared by several processes, such as the modules a forked worker
shares with the fork server, is counted once in the sum). The peak resident memory of this
process alone (``ru_maxrss``) is printed too. GB here are 1024³ bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 60.0
TARGET_GB = 3.0
STAGES = ("features", "train", "prioritise", "report")


def _peak_gb() -> float:
    """Peak resident memory so far of this process alone, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _descendants(pid: int) -> list[int]:
    """``pid`` and the processes it started, recursively (Linux's ``/proc/PID/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children", encoding="ascii") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:  # ended meanwhile
            continue
    return out


def _pss_gb(pid: int) -> float:
    """Proportional set size of ``pid`` in GB (0 if it ended)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def _rss_gb(pid: int) -> float:
    """Resident size of ``pid`` in GB (0 if it ended)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3
    except OSError:
        return 0.0


def _sample_memory(owner: int, interval: float) -> None:
    """The sampler process: every ``interval`` seconds, the resident size of ``owner`` plus
    the PSS of its descendants (this process left out), until its standard input closes; then
    one ``time GB`` line per sample (``time.monotonic``, the same clock in every process)."""
    me, samples = os.getpid(), []
    while not select.select([sys.stdin], [], [], interval)[0]:
        others = sum(_pss_gb(p) for p in _descendants(owner) if p not in (me, owner))
        samples.append((time.monotonic(), _rss_gb(owner) + others))
    sys.stdout.write("".join(f"{t} {gb}\n" for t, gb in samples))


class MemorySampler:
    """Memory of this process and its descendants, sampled every ``interval`` seconds, to
    give the job's peak and tell which stage sets it: this process's resident size plus the
    PSS of the others. This process's PSS would be at most its resident size (a little less:
    its library pages are shared with the workers); reading it walks the process's page
    tables, which at this rate slowed its training by 3 s. The sampling runs in a process of
    its own, out of this one's GIL. Where ``smaps_rollup`` is missing (not Linux), the peak is
    this process's resident size from ``ru_maxrss``."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.available = os.path.exists(f"/proc/{os.getpid()}/smaps_rollup")

    def __enter__(self) -> MemorySampler:
        self.start = time.monotonic()
        self._process = (subprocess.Popen([sys.executable, __file__, "--sample-memory-of", str(os.getpid()),
                                           "--interval", str(self.interval)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                         if self.available else None)
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            out, _ = self._process.communicate("")  # closing its input stops it
            self.samples = [(float(t), float(gb)) for t, gb in (line.split() for line in out.splitlines())]

    @property
    def peak(self) -> float:
        return max((gb for _, gb in self.samples), default=float("nan")) if self.available else _peak_gb()

    def peak_by_stage(self, timings: dict[str, float]) -> dict[str, float]:
        """Peak memory (GB) within each stage, the stages taken back to back from the start."""
        out, t = {}, self.start
        for stage in STAGES:
            end = t + timings.get(stage, 0.0)
            inside = [rss for ts, rss in self.samples if t <= ts <= end]
            out[stage] = max(inside) if inside else float("nan")
            t = end
        return out


def _report(label: str, wall: float, out: Path, memory: MemorySampler, imports: float = 0.0) -> None:
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    timings = run["timings_s"]
    peaks = memory.peak_by_stage(timings)
    print(f"\n{label}: {run['zones']:,} zones, {run['priority_zones']:,} flagged, training {run['training']}")
    for stage in STAGES:
        steps = {k.split(".", 1)[1]: v for k, v in timings.items()
                 if k.startswith(f"{stage}.") and not k.split(".", 1)[1].startswith("n_")}  # n_: counts
        detail = ", ".join(f"{k} {v:.1f}" for k, v in sorted(steps.items(), key=lambda kv: -kv[1])[:5])
        print(f"  {stage:<11} {timings.get(stage, float('nan')):7.1f} s   peak {peaks[stage]:.2f} GB   {detail}")
    if imports:
        print(f"  imports     {imports:7.1f} s")
    print(f"  total       {wall:7.1f} s   (target {TARGET_S:.0f} s: ratio {wall / TARGET_S:.2f})")
    what = "all processes" if memory.available else "this process"
    print(f"  peak memory {memory.peak:7.2f} GB  ({what}; target {TARGET_GB:.0f} GB: ratio {memory.peak / TARGET_GB:.2f})")
    print(f"  this process's peak resident memory so far: {_peak_gb():.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one)")
    parser.add_argument("--no-rerun", action="store_true", help="skip the second, reusing run")
    parser.add_argument("--sample-memory-of", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=0.1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sample_memory_of is not None:  # the sampler process (MemorySampler)
        _sample_memory(args.sample_memory_of, args.interval)
        return
    # imported here: the workers re-import this script; timed, and counted in the first
    # run's total, as `territoria run` pays it (which starts the workers' fork server first)
    start = time.perf_counter()
    from territoria.cli import prepare_long_job
    from territoria.workers import start_fork_server

    prepare_long_job()
    start_fork_server()
    from territoria.pipelines.main import run_main
    imports = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        labels = ["run 1"] + ([] if args.no_rerun else ["run 2, same folder"])
        for label in labels:
            with MemorySampler() as memory:
                start = time.perf_counter()
                run_main(out, data_dir=args.data)
                wall = time.perf_counter() - start
            _report(label, wall + imports, out, memory, imports)
            imports = 0.0

if __name__ == "__main__":
    main()
