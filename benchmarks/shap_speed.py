"""How fast TreeSHAP explains a row, against the cost model trees x leaves x depth^2.

Run by hand: ``.venv/bin/python benchmarks/shap_speed.py [--run DIR] [--rows 2000]
[--threads 2]``.

Models. With ``--run DIR`` (default ``out``) holding ``models/<measure>/model.json`` (written by
``territoria run``, :mod:`territoria.models.persist`), the run's saved boosters (regressor,
and hurdle classifier and interval spread model when present) are explained on their own
design matrices rebuilt from the bundled data. Without it, one regressor per key target of
``conf/models.yml`` is trained on the bundled features with the project's defaults.

For each booster, on the same ``--rows`` communes (a fixed sample), it prints the
trees used (best iteration), mean leaves and depth, the cost units sum over trees of
leaves x depth^2, and milliseconds per explained row for:

* ``pred_contrib``: LightGBM's native TreeSHAP, ``booster.predict(X, pred_contrib=True)``
  (the reference for the differences);
* ``territoria``: the project's exact TreeSHAP by leaf-pattern tables
  (:func:`territoria.models.treeshap.tree_shap`, what the project uses), timed after a first
  call that compiles it;
* ``shap.TreeExplainer``: shap's explainer, which for LightGBM calls ``pred_contrib``;
* ``shap (own C++)``: shap's own TreeSHAP (forced by marking the parsed model ``internal``);
* ``fasttreeshap v1 / v2``: Fast TreeSHAP (``fasttreeshap`` or ``fasttreeshap-fixed``) when one
  imports, with ``shortcut=False`` so that its own algorithms run;

with the speed-up against ``pred_contrib`` and the largest absolute difference of the
contributions. Then the cost model: the fitted milliseconds per cost unit, each model's
predicted against measured time, and the time to explain every commune (~35,000) and every
200 m cell (2.3 M). Last, right-sizing: models of several depths and leaf counts trained on
the first design matrix, with their department-blocked held-out R² and SHAP cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

N_COMMUNES = 35_000
N_CELLS = 2_300_000


def tree_stats(booster: lgb.Booster, n_iter: int | None) -> dict:
    """Trees used, mean leaves, mean depth and sum of leaves x depth^2 of a booster."""
    info = booster.dump_model(num_iteration=n_iter or -1)["tree_info"]

    def depth(node) -> int:
        if "leaf_index" in node or "left_child" not in node:
            return 0
        return 1 + max(depth(node["left_child"]), depth(node["right_child"]))

    leaves = np.array([t["num_leaves"] for t in info], dtype=float)
    depths = np.array([depth(t["tree_structure"]) for t in info], dtype=float)
    return {"trees": len(info), "leaves": float(leaves.mean()), "depth": float(depths.mean()),
            "units": float((leaves * depths**2).sum())}


def _timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _fasttreeshap():
    for name in ("fasttreeshap", "fasttreeshap_fixed"):
        try:
            return __import__(name), name
        except Exception:  # noqa: BLE001 - an import that fails for any reason means "not available"
            continue
    return None, None


def compare_methods(name: str, booster: lgb.Booster, X: np.ndarray, n_iter: int | None, threads: int) -> dict:
    """Milliseconds per row and max |difference| of each TreeSHAP implementation."""
    import shap

    n = len(X)
    row = {"model": name, **tree_stats(booster, n_iter), "rows": n}
    t_ref, ref = _timed(lambda: booster.predict(X, pred_contrib=True, num_iteration=n_iter, num_threads=threads))
    row["pred_contrib_ms"] = 1000 * t_ref / n
    phi_ref = ref[:, :-1]
    from territoria.models.treeshap import tree_shap

    tree_shap(booster, X[:10], num_iteration=n_iter, n_jobs=threads)  # compiled (or read from numba's cache)
    t, phi = _timed(lambda: tree_shap(booster, X, num_iteration=n_iter, n_jobs=threads))
    row["territoria_ms"], row["territoria_diff"] = 1000 * t / n, float(np.abs(phi[:, :-1] - phi_ref).max())
    explainer = shap.TreeExplainer(booster)
    t, phi = _timed(lambda: explainer.shap_values(X, tree_limit=n_iter, check_additivity=False))
    row["shap_explainer_ms"], row["shap_explainer_diff"] = 1000 * t / n, float(np.abs(np.asarray(phi) - phi_ref).max())
    own = shap.TreeExplainer(booster)
    own.model.model_type = "internal"  # skip the pred_contrib shortcut: shap's own C++ TreeSHAP
    t, phi = _timed(lambda: own.shap_values(X, tree_limit=n_iter, check_additivity=False))
    row["shap_own_ms"], row["shap_own_diff"] = 1000 * t / n, float(np.abs(np.asarray(phi) - phi_ref).max())
    fts, fts_name = _fasttreeshap()
    for algo in ("v1", "v2"):
        if fts is None:
            row[f"fts_{algo}_ms"] = row[f"fts_{algo}_diff"] = float("nan")
            continue
        try:
            ex = fts.TreeExplainer(booster, algorithm=algo, n_jobs=threads, shortcut=False)
            t, phi = _timed(lambda: ex.shap_values(X, tree_limit=n_iter, check_additivity=False))
            row[f"fts_{algo}_ms"], row[f"fts_{algo}_diff"] = 1000 * t / n, float(np.abs(np.asarray(phi) - phi_ref).max())
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"  {fts_name} {algo} failed on {name}: {type(exc).__name__}: {str(exc)[:200]}")
            row[f"fts_{algo}_ms"] = row[f"fts_{algo}_diff"] = float("nan")
    row["fasttreeshap"] = fts_name or "not installed"
    return row


def run_models(run_dir: Path):
    """(name, booster, design matrix, best iteration) of a run's saved models, or None."""
    folders = sorted(p.parent for p in (run_dir / "models").glob("*/model.json")) if run_dir else []
    if not folders:
        return None, None
    from territoria.models.backtest import FeatureCache, prepare_target
    from territoria.models.persist import load_trained
    from territoria.models.targets import load_model_config
    from territoria.pipelines.build_features import run_build_features

    fb = run_build_features(out_dir=None)
    config, cache = load_model_config(), FeatureCache.of(fb)
    out = []
    for folder in folders:
        trained = load_trained(folder)
        data = prepare_target(fb, trained.spec, config, cache)
        X = data.X[trained.columns]
        m = trained.model
        parts = [("regressor", getattr(m, "regressor_", m)), ("classifier", getattr(m, "classifier_", None)),
                 ("spread", trained.spread_model)]
        for label, est in parts:
            if est is not None:
                # a spread model reads a subset of the design's columns
                cols = list(getattr(est, "feature_names_in_", X.columns))
                out.append((f"{folder.name}/{label}", est.booster_, X[cols], int(est.best_iteration_), data))
    return out, fb


def trained_models():
    """One regressor per key target, trained on the bundled features with the defaults."""
    from territoria.models.backtest import FeatureCache, prepare_target
    from territoria.models.targets import load_model_config
    from territoria.models.trajectory import TrajectoryRegressor
    from territoria.pipelines.build_features import run_build_features

    fb = run_build_features(out_dir=None)
    config, cache = load_model_config(), FeatureCache.of(fb)
    out = []
    for spec in config.key_targets():
        data = prepare_target(fb, spec, config, cache)
        y = data.table["y"].to_numpy()
        m = TrajectoryRegressor(**config.model).fit(data.X, y, sample_weight=data.table["weight"].to_numpy(),
                                                    groups=data.groups)
        out.append((f"{spec.measure} (trained here)", m.booster_, data.X, int(m.best_iteration_), data))
    return out, fb


def right_sizing(data, threads: int, rows: np.ndarray) -> pd.DataFrame:
    """Held-out R2 (20 % of departments) and SHAP cost of models of several sizes."""
    from territoria.models.trajectory import TrajectoryRegressor

    X, y, groups = data.X, data.table["y"].to_numpy(), data.groups
    ok = np.isfinite(y)
    deps = np.unique(groups[ok])
    held = np.isin(groups, np.random.default_rng(0).choice(deps, max(1, len(deps) // 5), replace=False))
    tr, te = ok & ~held, ok & held
    out = []
    for trees, leaves, depth in ((400, 63, -1), (400, 31, -1), (200, 31, 6), (200, 15, 4), (100, 15, 4), (300, 7, 3)):
        m = TrajectoryRegressor(n_estimators=trees, num_leaves=leaves, max_depth=depth, n_jobs=threads)
        m.fit(X[tr], y[tr], groups=groups[tr])
        pred = m.predict(X[te])
        r2 = 1 - ((y[te] - pred) ** 2).sum() / ((y[te] - y[te].mean()) ** 2).sum()
        Xs = X.iloc[rows].to_numpy(float)
        t, _ = _timed(lambda: m.booster_.predict(Xs, pred_contrib=True, num_iteration=m.best_iteration_,
                                                 num_threads=threads))
        st = tree_stats(m.booster_, m.best_iteration_)
        out.append({"n_estimators": trees, "num_leaves": leaves, "max_depth": depth,
                    "trees_used": st["trees"], "mean_depth": round(st["depth"], 1), "units": st["units"],
                    "ms_per_row": 1000 * t / len(rows), "heldout_r2": r2})
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=Path("out"), help="run folder with models/ (default out)")
    parser.add_argument("--rows", type=int, default=2000, help="rows explained per model (a fixed sample)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; Python {sys.version.split()[0]}; LightGBM {lgb.__version__}; "
          f"load average at start {os.getloadavg()[0]:.1f}; {args.threads} threads")
    t0 = time.perf_counter()
    models, _ = run_models(args.run) if args.run and args.run.exists() else (None, None)
    if models:
        print(f"models: the saved models of {args.run}/models (explained on their own design matrices)")
    else:
        print(f"no saved models in {args.run}/models: training one regressor per key target on the bundled features")
        models, _ = trained_models()
    print(f"(models and design matrices ready in {time.perf_counter() - t0:.0f} s)")
    rows_list = []
    for name, booster, X, n_iter, _data in models:
        rows = np.random.default_rng(0).choice(len(X), min(args.rows, len(X)), replace=False)
        Xs = X.iloc[np.sort(rows)].to_numpy(dtype=float)
        r = compare_methods(name, booster, Xs, n_iter, args.threads)
        rows_list.append(r)
        print(f"  {name}: {r['trees']} trees, {r['leaves']:.1f} leaves, depth {r['depth']:.1f}, "
              f"{r['units']:,.0f} units: pred_contrib {r['pred_contrib_ms']:.3f} ms/row", flush=True)
    df = pd.DataFrame(rows_list)
    pd.set_option("display.width", 250)
    print("\nms per explained row (speed-up against pred_contrib; max |difference| of the contributions):")
    for r in df.itertuples():
        parts = [f"pred_contrib {r.pred_contrib_ms:.3f}"]
        for label, ms, diff in (("territoria", r.territoria_ms, r.territoria_diff),
                                ("shap.TreeExplainer", r.shap_explainer_ms, r.shap_explainer_diff),
                                ("shap own C++", r.shap_own_ms, r.shap_own_diff),
                                ("fasttreeshap v1", r.fts_v1_ms, r.fts_v1_diff),
                                ("fasttreeshap v2", r.fts_v2_ms, r.fts_v2_diff)):
            if np.isfinite(ms):
                parts.append(f"{label} {ms:.3f} ({r.pred_contrib_ms / ms:.2f}x, diff {diff:.1e})")
        print(f"  {r.model}: " + "; ".join(parts))
    print(f"  fasttreeshap: {df['fasttreeshap'].iloc[0]}")
    c = float(np.median(df["pred_contrib_ms"] / df["units"]))
    print(f"\ncost model: pred_contrib ms/row = {c * 1e6:.2f} ns x sum over trees of leaves x depth^2 "
          f"(median over the models; {args.threads} threads)")
    for r in df.itertuples():
        print(f"  {r.model}: predicted {c * r.units:.3f} ms, measured {r.pred_contrib_ms:.3f} ms "
              f"(ratio {r.pred_contrib_ms / (c * r.units):.2f}); every commune {r.pred_contrib_ms * N_COMMUNES / 1000:.1f} s, "
              f"every 200 m cell {r.pred_contrib_ms * N_CELLS / 60_000:.1f} min")
    print(f"  all models together: every commune {df['pred_contrib_ms'].sum() * N_COMMUNES / 1000:.1f} s")
    name, booster, X, n_iter, data = models[0]
    rows = np.sort(np.random.default_rng(0).choice(len(X), min(args.rows, len(X)), replace=False))
    print(f"\nright-sizing on the design matrix of {name} ({len(X):,} rows; held-out: 20 % of departments):")
    rs = right_sizing(data, args.threads, rows)
    base = rs.iloc[0]
    rs["cost_vs_first"] = rs["ms_per_row"] / base["ms_per_row"]
    rs["cells_2.3M_min"] = rs["ms_per_row"] * N_CELLS / 60_000
    print(rs.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
