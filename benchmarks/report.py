"""Timings and sizes of the report stage (``territoria report``) on a finished run.

Run with ``.venv/bin/python benchmarks/report.py OUT_DIR [--lang fr|en] [--matplotlib-cards 20]``.
Writes the report outputs INTO ``OUT_DIR`` (use a copy of a run), then prints the seconds spent
per output and the size of each output. ``--matplotlib-cards N`` also times N per-zone
matplotlib SVG charts, to compare with the template-built inline SVG of the cards.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from territoria.pipelines.report import run_report


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def matplotlib_cost(n: int) -> float:
    """Seconds per zone to draw the card's charts (6 small lines + 2 bar charts) with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t0 = time.perf_counter()
    for _ in range(n):
        fig, axes = plt.subplots(2, 4, figsize=(10, 4))
        for ax in axes.ravel()[:6]:
            ax.plot([2014, 2016, 2018, 2021], np.random.rand(4))
            ax.plot([2014, 2016, 2018, 2021], np.random.rand(4), "--")
        axes[1, 2].barh(range(6), np.random.randn(6))
        axes[1, 3].barh(range(14), np.random.randn(14))
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        plt.close(fig)
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--lang", default="fr")
    parser.add_argument("--matplotlib-cards", type=int, default=0)
    args = parser.parse_args()
    timings: dict = {}
    t0 = time.perf_counter()
    paths = run_report(args.out_dir, lang=args.lang, timings=timings)
    total = time.perf_counter() - t0
    print(f"report stage on {args.out_dir}: {total:.1f} s")
    for k, v in timings.items():
        print(f"  {k:<16} {v:8.2f}" + ("" if k.startswith("n_") else " s"))
    if timings.get("n_cards"):
        print(f"  per card         {1000 * timings['cards'] / timings['n_cards']:8.2f} ms")
    print("sizes:")
    for k, p in paths.items():
        print(f"  {k:<16} {_size(Path(p)) / 1e6:8.2f} MB  {p}")
    if args.matplotlib_cards:
        per = matplotlib_cost(args.matplotlib_cards)
        n = timings.get("n_cards", 0)
        print(f"matplotlib SVG charts: {1000 * per:.0f} ms per zone, i.e. {per * n:.0f} s for {n} cards")


if __name__ == "__main__":
    main()
