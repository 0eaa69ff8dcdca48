"""How the grid pipeline scales: features + train + SHAP for every cell, local vs Dask.

Run by hand: ``.venv/bin/python benchmarks/scale.py [--sizes 35000 500000 2300000]
[--engines local dask] [--workers 2]``. For each size, a SYNTHETIC grid
(:mod:`territoria.features.synthetic_grid`, not real data) is drawn once and written to a
temporary parquet file; each (size, engine) case then runs ``territoria.pipelines.grid.run_grid``
in a fresh subprocess (so that one case's memory does not inflate the next), with the model of
``conf/grid.yml``: the local engine with 2 LightGBM threads, the Dask engine on a LocalCluster
of ``--workers`` single-thread worker processes.

Printed per case: wall time of each stage (input read and validation, features, training,
SHAP, assembly), total, rows per second, peak memory (resident set of the process and all its
children — the Dask workers and nanny — sampled every 0.2 s with psutil, summed), the
held-out R², the ratio of the total to the 10-minute target and of the peak to the 8 GB
target; then the cost growth exponent (slope of log time against log rows between
successive sizes, and over all of them: 1.0 is linear) and the Dask/local ratios. The load
average of the machine is printed at each case: on a shared machine every figure depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TARGET_S = 600.0
TARGET_BYTES = 8 * 1024**3


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def one_case(input_file: str, engine: str, workers: int) -> dict:
    """Run one case in this process and return its figures (called in a subprocess)."""
    import psutil

    from territoria.pipelines.grid import run_grid

    proc = psutil.Process()
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(proc))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    with tempfile.TemporaryDirectory(prefix="scale-out-") as out:
        start = time.perf_counter()
        res = run_grid(out, input_path=input_file, engine=engine, n_workers=workers, threads=2)
        wall = time.perf_counter() - start
    stop.set()
    th.join()
    peak[0] = max(peak[0], _tree_rss(proc))
    return {"engine": engine, "rows": res.n_cells, "partitions": res.n_partitions, "wall_s": wall,
            "timings": res.timings, "peak_bytes": peak[0], "r2": res.metrics["holdout"].get("r2"),
            "spearman": res.metrics["holdout"].get("spearman"), "gap": res.max_additivity_gap,
            "load": os.getloadavg()[0], "predictions_file": _save_predictions(input_file, engine, res.predictions)}


def _save_predictions(input_file: str, engine: str, pred) -> str:
    path = f"{input_file}.{engine}.npy"
    np.save(path, pred)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[35_000, 500_000, 2_300_000])
    parser.add_argument("--engines", nargs="+", default=["local", "dask"], choices=["local", "dask"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--one", nargs=2, metavar=("INPUT", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_case(args.one[0], args.one[1], args.workers)))
        return

    from territoria.features.synthetic_grid import generate_grid

    print(f"machine: {os.cpu_count()} cores, {_mem_gb():.0f} GB; Python {sys.version.split()[0]}; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print("grid: SYNTHETIC (territoria.features.synthetic_grid), model of conf/grid.yml")
    results = []
    with tempfile.TemporaryDirectory(prefix="scale-in-") as tmp:
        _run_all(args, tmp, results, generate_grid)
        _print_summary(results, args.sizes)


def _run_all(args, tmp: str, results: list, generate_grid) -> None:
    for n in args.sizes:
        t = time.perf_counter()
        cells = generate_grid(n, seed=args.seed)
        path = Path(tmp) / f"grid_{n}.parquet"
        cells.to_parquet(path, index=False)
        del cells
        print(f"\n{n:,} cells drawn in {time.perf_counter() - t:.1f} s (not counted below)", flush=True)
        for engine in args.engines:
            cmd = [sys.executable, __file__, "--one", str(path), engine, "--workers", str(args.workers)]
            # as `territoria grid` does: OpenMP threads that sleep, not spin, while they wait
            env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                print(f"  {engine}: FAILED\n{done.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(r)
            _print_case(r)


def _mem_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 1024**3


def _print_case(r: dict) -> None:
    t = r["timings"]
    work = t["total"] - t.get("input", 0.0)
    stages = ", ".join(f"{k} {t[k]:.1f}" for k in ("input", "cluster", "features", "train", "shap", "assemble") if k in t)
    print(f"  {r['engine']:<5} {r['rows']:>9,} rows, {r['partitions']} partitions | {stages} s | "
          f"all but input {work:.1f} s ({r['rows'] / work:,.0f} rows/s) | total {t['total']:.1f} s "
          f"= {t['total'] / TARGET_S:.2f} x 10 min | peak {r['peak_bytes'] / 1024**3:.2f} GB "
          f"= {r['peak_bytes'] / TARGET_BYTES:.2f} x 8 GB | held-out R2 {r['r2']:.3f} | "
          f"SHAP gap {r['gap']:.1e} | load {r['load']:.1f}", flush=True)


def _print_summary(results: list[dict], sizes: list[int]) -> None:
    print("\ncost growth (exponent b of time ~ rows^b; 1.0 = linear):")
    for engine in ("local", "dask"):
        rs = sorted((r for r in results if r["engine"] == engine), key=lambda r: r["rows"])
        if len(rs) < 2:
            continue
        x = np.log([r["rows"] for r in rs])
        for stage in ("features", "train", "shap", "total"):
            y = np.log([r["timings"][stage] for r in rs])
            steps = ", ".join(f"{rs[i]['rows']:,}->{rs[i + 1]['rows']:,}: {(y[i + 1] - y[i]) / (x[i + 1] - x[i]):.2f}"
                              for i in range(len(rs) - 1))
            print(f"  {engine:<5} {stage:<8} overall {np.polyfit(x, y, 1)[0]:.2f} ({steps})")
        ref = rs[0]
        for r in rs[1:]:
            print(f"  {engine:<5} {r['rows']:,} rows: {r['rows'] / ref['rows']:.1f}x the rows of the "
                  f"{ref['rows']:,} reference, {r['timings']['total'] / ref['timings']['total']:.1f}x its time, "
                  f"{r['peak_bytes'] / ref['peak_bytes']:.1f}x its peak memory")
    print("\ndask / local:")
    for n in sizes:
        pair = {r["engine"]: r for r in results if r["rows"] == n}
        if {"local", "dask"} <= set(pair):
            a, b = pair["local"], pair["dask"]
            from scipy.stats import spearmanr

            pa, pb = np.load(a["predictions_file"]), np.load(b["predictions_file"])
            print(f"  {n:,} rows: time {b['timings']['total'] / a['timings']['total']:.2f}x, "
                  f"peak memory {b['peak_bytes'] / a['peak_bytes']:.2f}x, held-out R2 {a['r2']:.3f} vs {b['r2']:.3f}; "
                  f"predictions: Spearman {spearmanr(pa, pb).statistic:.4f}, mean |diff| {np.abs(pa - pb).mean():.4f}")


if __name__ == "__main__":
    main()
