"""Right-sizing the trajectory models: accuracy against training and SHAP time, in one run.

Run by hand: ``.venv/bin/python benchmarks/right_size.py [--candidates JSON]``.

For each candidate set of LightGBM parameters (overrides of ``conf/models.yml``'s ``model``;
the first candidate is the reference: by default the trees of unbounded depth that the
defaults used before they were capped at depth 8), on the bundled real data:

* the department-blocked backtest of the key targets (``run_backtest`` without the temporal
  pairs): LightGBM's Spearman rho per target, the 80 % interval coverage, and its wall time;
* the final models (``train_target``, calibrated on refitted folds) and the SHAP values
  (LightGBM ``pred_contrib``) of every commune at each target's origin: wall time of each.

Every time is printed with its ratio to the reference candidate, and each Spearman with its
difference to the reference's. These are the three costs of the main job that grow with the
model's size (the backtest, the final models, explaining every zone); the stability step's
bootstrap refits grow like the final models.
"""

from __future__ import annotations

import argparse
import json
import time

DEFAULT_CANDIDATES = {
    "unbounded depth": {"max_depth": -1},
    "defaults (depth 8)": {},
    "depth 6, lr 0.1": {"max_depth": 6, "learning_rate": 0.1, "n_estimators": 200, "early_stopping_rounds": 20},
    "colsample 0.5": {"colsample_bytree": 0.5},
}


def measure(fb, config, features, params: dict) -> dict:
    from territoria.models.backtest import run_backtest, train_target
    from territoria.registry import load_registry

    t0 = time.perf_counter()
    res = run_backtest(fb, None, config=config, params=params, features=features, temporal=False)
    backtest_s = time.perf_counter() - t0
    m = res.metrics[res.metrics["model"] == "lightgbm"]
    spearman = m[m["metric"] == "spearman"].set_index("target")["value"].to_dict()
    coverage = m[m["metric"] == "coverage_80"].set_index("target")["value"].to_dict()
    train_s = shap_s = 0.0
    trees = {}
    for spec in config.key_targets():
        t0 = time.perf_counter()
        trained = train_target(fb, spec, config, params=params, features=features)
        train_s += time.perf_counter() - t0
        X, _ = features.design(spec.measure, spec.origin, load_registry(), select=False)
        X = X.reindex(columns=trained.columns).to_numpy(float)
        booster = trained.booster()
        t0 = time.perf_counter()
        booster.predict(X, pred_contrib=True)
        shap_s += time.perf_counter() - t0
        trees[spec.name] = booster.current_iteration()
    return {"backtest_s": backtest_s, "train_s": train_s, "shap_s": shap_s, "spearman": spearman,
            "coverage_80": coverage, "trees": trees}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=None,
                        help='JSON {name: {lightgbm parameter: value}}; the first is the reference')
    args = parser.parse_args()
    from territoria.memory import configure_allocators

    configure_allocators()  # as territoria's commands do
    candidates = json.loads(args.candidates) if args.candidates else DEFAULT_CANDIDATES

    from territoria.models.backtest import FeatureCache
    from territoria.models.targets import load_model_config
    from territoria.pipelines.build_features import run_build_features

    fb = run_build_features(out_dir=None)
    config = load_model_config()
    features = FeatureCache.of(fb)
    ref = None
    for name, params in candidates.items():
        r = measure(fb, config, features, params)
        ref = ref or r
        print(f"\n== {name}: {json.dumps(params)}")
        for key in ("backtest_s", "train_s", "shap_s"):
            print(f"  {key:<11} {r[key]:7.1f} s  ({r[key] / ref[key]:.2f} x the reference)")
        for target, rho in r["spearman"].items():
            print(f"  {target:<32} Spearman {rho:.4f} ({rho - ref['spearman'][target]:+.4f}), "
                  f"coverage 80 % {r['coverage_80'].get(target, float('nan')):.3f}, "
                  f"final model {r['trees'][target]} trees")
        total = r["backtest_s"] + r["train_s"] + r["shap_s"]
        ref_total = ref["backtest_s"] + ref["train_s"] + ref["shap_s"]
        print(f"  three costs together {total:.1f} s ({total / ref_total:.2f} x)", flush=True)


if __name__ == "__main__":
    main()
