"""Forecast as of 2018, checked against what happened 2018→2021.

Run with ``.venv/bin/python benchmarks/as_of.py [--as-of 2018] [--end 2021] [--out DIR]
[--as-of-build stage|derived]``.

1. a full feature build (all vintages) gives the observed 2018→2021 changes;
2. the as-of feature build: ``run_build_features(as_of=2018)`` (``stage``, default), or the
   full build restricted to panel periods <= 2018 with its features rebuilt at 2018
   (``derived``: ``features_at(2018)``, only data dated <= 2018). The benchmark stops with a
   message when the stage's panel lacks measures that the full panel holds at periods
   <= 2018 (files published after 2018 that carry earlier periods, such as the census
   series, must not be dropped);
3. the training stage ``run_train(..., as_of=2018, backtest=False)`` into a temporary folder
   (or ``--out``): each key target's measure is trained on its latest transition ending by
   2018 (income 2016→2018, population 2013→2018) and forecast from 2018;
4. for each forecast measure, on communes of at least ``min_population`` inhabitants in 2018
   (``conf/models.yml``): Spearman rho, MAE and precision@10 % of the forecast, the
   empirical coverage and mean width of its 80 % and 90 % intervals, and the same figures
   (coverage aside) for the no-change persistence, the last trend and the spatial lag
   computed from the as-of panel; then the model's ratios to the best baseline.

``predictions.parquet`` holds changes over each trained target's own horizon (income:
2018→2020, population: 2018→2023); they are rescaled to 2018→2021 the way
:func:`~territoria.models.backtest.predict_target` rescales horizons (linearly, intervals too).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from territoria.memory import configure_allocators
from territoria.models import metrics as mx
from territoria.models.baselines import baseline_predictions
from territoria.models.targets import TargetSpec, load_model_config, target_table
from territoria.pipelines.build_features import run_build_features
from territoria.pipelines.train import run_train

BASELINES = ("persistence_zero", "last_trend", "spatial_lag")


def compare(predictions: pd.DataFrame, trained_specs: dict[str, TargetSpec], fb_as_of, panel_full,
            end: int, config) -> pd.DataFrame:
    """One row per (measure, model): Spearman, MAE, precision@10 %, interval coverage, n.

    ``trained_specs`` maps a forecast measure to the spec it was trained on (its ``relative``
    flag defines the observed change).
    """
    rows = []
    for measure, pred in predictions.groupby("target"):
        origin = int(pred["origin"].iloc[0])
        trained = trained_specs[measure]
        spec = TargetSpec(name=f"{measure}_{origin}_{end}", measure=measure, origin=origin, end=end,
                          relative=trained.relative, min_population=config.min_population)
        truth = target_table(panel_full, spec, config)  # communes >= min_population in 2018
        pred = pred.set_index("zone_code")
        scale = (end - origin) / (pred["horizon_end"] - origin)
        cols = ["prediction", "low_80", "high_80", "low_90", "high_90"]
        fc = pred[cols].mul(scale, axis=0).reindex(truth.index)
        ok = fc["prediction"].notna()
        y, sign, fc = truth.loc[ok, "y"].to_numpy(), int(truth["sign"].iloc[0]), fc[ok]
        idx = truth.index[ok]
        models = {"lightgbm": fc["prediction"].to_numpy()}
        base = baseline_predictions(fb_as_of.panel, spec, fb_as_of.graph, idx)
        models.update({b: base[b].to_numpy() for b in BASELINES})
        for name, p in models.items():
            m = mx.regression_metrics(y, p, sign)
            row = {"measure": measure, "trained_on": trained.name, "forecast": f"{origin}→{end}",
                   "model": name, "spearman": m["spearman"], "mae": m["mae"],
                   "precision_at_10": m["precision_at_10"], "n": int(np.isfinite(p).sum())}
            if name == "lightgbm":
                for lvl in ("80", "90"):
                    lo, hi = fc[f"low_{lvl}"].to_numpy(), fc[f"high_{lvl}"].to_numpy()
                    row[f"coverage_{lvl}"] = float(np.mean((y >= lo) & (y <= hi)))
                    row[f"width_{lvl}"] = float(np.mean(hi - lo))
            rows.append(row)
    return pd.DataFrame(rows)


def ratios(table: pd.DataFrame) -> pd.DataFrame:
    """The model's Spearman over the best baseline's, and its MAE over the lowest baseline MAE."""
    out = []
    for measure, g in table.groupby("measure"):
        g = g.set_index("model")
        base = g.drop(index="lightgbm")
        sp, mae = base["spearman"].dropna(), base["mae"].dropna()
        out.append({
            "measure": measure,
            "best_baseline_spearman": sp.idxmax() if len(sp) else None,
            "spearman_ratio": g.at["lightgbm", "spearman"] / sp.max() if len(sp) and sp.max() > 0 else np.nan,
            "best_baseline_mae": mae.idxmin() if len(mae) else None,
            "mae_ratio": g.at["lightgbm", "mae"] / mae.min() if len(mae) else np.nan,
        })
    return pd.DataFrame(out)


def derived_as_of_build(full, as_of: int):
    """The full build restricted to panel periods <= ``as_of``, features rebuilt at ``as_of``."""
    fb = dataclasses.replace(full, panel=full.panel[full.panel["period"] <= as_of].reset_index(drop=True),
                             reference_period=as_of, out_dir=None)
    features, meta = fb.features_at(as_of)
    return dataclasses.replace(fb, features=features, meta=meta)


def missing_measures(fb, full, as_of: int) -> list[str]:
    """Measures the full panel holds at periods <= ``as_of`` that ``fb``'s panel lacks."""
    before = full.panel.loc[full.panel["period"] <= as_of, "measure"].unique()
    return sorted(set(before) - set(fb.panel["measure"].unique()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--as-of", type=int, default=2018)
    parser.add_argument("--end", type=int, default=2021, help="year of the observed outcome")
    parser.add_argument("--out", type=Path, default=None, help="keep the training outputs here")
    parser.add_argument("--as-of-build", choices=["stage", "derived"], default="stage")
    args = parser.parse_args()
    configure_allocators()  # as territoria's commands do

    start = time.perf_counter()

    def stamp(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    config = load_model_config()
    stamp("full feature build (observed outcomes)")
    full = run_build_features(out_dir=None)
    stamp(f"as-of {args.as_of} feature build ({args.as_of_build})")
    if args.as_of_build == "stage":
        fb_as_of = run_build_features(out_dir=None, as_of=args.as_of)
        missing = missing_measures(fb_as_of, full, args.as_of)
        if missing:
            sys.exit(f"the as-of {args.as_of} feature stage lacks {len(missing)} measures the full panel "
                     f"holds at periods <= {args.as_of}: {', '.join(missing)} (use --as-of-build derived)")
    else:
        fb_as_of = derived_as_of_build(full, args.as_of)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        stamp(f"training as of {args.as_of} into {out}")
        t0 = time.perf_counter()
        res = run_train(fb_as_of, out, as_of=args.as_of, backtest=False)
        t_train = time.perf_counter() - t0
        predictions = pd.read_parquet(out / "predictions.parquet")
    trained = {m.spec.measure: m.spec for m in res.models.values()}
    stamp("comparing")
    table = compare(predictions, trained, fb_as_of, full.panel, args.end, config)

    print()
    for measure, spec in trained.items():
        h = int(predictions.loc[predictions["target"] == measure, "horizon_end"].iloc[0]) - args.as_of
        print(f"{measure}: trained on {spec.name}, forecast {args.as_of}→{args.as_of + h} rescaled to "
              f"{args.as_of}→{args.end}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        print()
        print(ratios(table).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\ntraining {t_train:.0f} s, total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
