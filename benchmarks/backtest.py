"""Model-vs-baseline backtest on the bundled real data.

Run with ``.venv/bin/python benchmarks/backtest.py [--targets a,b] [--scheme region]
[--no-temporal] [--classifier] [--n-jobs 1] [--out DIR] [--features-pickle FILE]``.

Department-blocked cross-validation (5 folds of whole departments), scored on communes of
2,000+ inhabitants (models fitted on communes of 500+ of the training folds), for the key
targets of ``conf/models.yml``: the 2018→2021 census unemployment change, the 2019→2021
median-income change, the 2018→2021 population change; then the temporal backtests (fit on
an earlier transition, score a later one). Prints the model and every baseline on the same
zones, the ratio of the model's Spearman rho to the best baseline's, and how far each key
target is from the issue's quality target. ``--classifier`` also scores the deterioration
classifier (off in ``conf/models.yml``). ``--features-pickle`` reuses a pickled
FeatureBuild (development only); by default the feature stage runs first (about a minute).
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import pandas as pd

from territoria.memory import configure_allocators
from territoria.models.backtest import run_backtest

#: the issue's quality targets (department-blocked CV, communes of 2,000+ inhabitants)
QUALITY = {
    "unemployment_rate_2018_2021": 0.60,
    "median_income_2019_2021": 0.50,
    "population_2018_2021": 0.65,
}
RATIO = 1.3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", default=None, help="comma-separated target names (default: key targets)")
    parser.add_argument("--scheme", default=None, choices=["departement", "region"])
    parser.add_argument("--no-temporal", action="store_true")
    parser.add_argument("--classifier", action="store_true", help="also score the deterioration classifier")
    parser.add_argument("--n-jobs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write metrics.json and the tables here")
    parser.add_argument("--features-pickle", type=Path, default=None)
    args = parser.parse_args()
    configure_allocators()  # as territoria's commands do

    start = time.perf_counter()
    if args.features_pickle is not None:
        fb = pickle.loads(args.features_pickle.read_bytes())
    else:
        from territoria.pipelines.build_features import run_build_features

        fb = run_build_features(out_dir=None)
    t_features = time.perf_counter() - start
    targets = args.targets.split(",") if args.targets else None
    params = {"n_jobs": args.n_jobs} if args.n_jobs else None
    res = run_backtest(fb, targets, scheme=args.scheme, temporal=not args.no_temporal, params=params,
                       classifier=True if args.classifier else None,
                       log=lambda m: print(f"[{time.perf_counter() - start:6.0f} s] {m}", flush=True))
    total = time.perf_counter() - start
    print()
    print(res.table())
    print()
    ratios = res.ratios().set_index("target")
    for name, goal in QUALITY.items():
        if name not in ratios.index:
            continue
        r = ratios.loc[name]
        r = r[r["scheme"].str.startswith("cv_")].iloc[0] if isinstance(r, pd.DataFrame) else r
        ok_sp = r["spearman"] >= goal
        ok_naive = r["ratio_to_best_naive"] >= RATIO
        ok_all = r["ratio_to_best_baseline"] >= RATIO
        print(f"{name:<32} spearman {r['spearman']:.3f} (target {goal:.2f}: {'met' if ok_sp else 'NOT met'}); "
              f"x{r['ratio_to_best_naive']:.2f} best naive ({r['best_naive_baseline']}), "
              f"x{r['ratio_to_best_baseline']:.2f} best baseline incl. ridge ({r['best_baseline']}); "
              f"1.3x: {'met' if ok_all else ('met vs naive only' if ok_naive else 'NOT met')}")
    print(f"\nfeatures {t_features:.0f} s, backtest {total - t_features:.0f} s, total {total:.0f} s")
    if args.out is not None:
        res.write(args.out)
        print(f"outputs in {args.out}")


if __name__ == "__main__":
    main()
