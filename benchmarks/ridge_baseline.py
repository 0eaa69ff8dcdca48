"""The ridge baseline's fit against scikit-learn's pipeline, on the real design matrices.

Run by hand: ``.venv/bin/python benchmarks/ridge_baseline.py [--repeats N]``.

The backtest fits the ridge baseline once per fold and target (15 fits, plus 4 for the
temporal pairs). For each key target of ``conf/models.yml``, on its real design matrix (all
communes of the bundled data, the training zones of the backtest), with 20 % of the
departments held out: the wall time of :class:`~territoria.models.baselines.RidgeBaseline`
(one eigendecomposition for every penalty) and of scikit-learn's steps
(:func:`~territoria.models.baselines.sklearn_ridge_reference`: ``SimpleImputer``,
``StandardScaler``, ``RidgeCV(gcv_mode="svd")``), best of ``--repeats``, their ratio, the
penalties each chose and the largest difference of their held-out predictions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from shap_speed import _timed  # noqa: E402  (best of n runs, and the last result)


def main() -> None:
    import numpy as np

    from territoria.models.backtest import FeatureCache, prepare_target
    from territoria.models.baselines import RidgeBaseline, sklearn_ridge_reference
    from territoria.models.targets import load_model_config
    from territoria.pipelines.build_features import run_build_features
    from territoria.registry import load_registry

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from territoria.memory import configure_allocators

    configure_allocators()  # as territoria's commands do
    fb = run_build_features(out_dir=None)
    config = load_model_config()
    cache, registry = FeatureCache.of(fb), load_registry()
    print(f"{'target':<30} {'rows':>6} {'cols':>5} {'ours (s)':>9} {'sklearn (s)':>12} {'ratio':>6}"
          f" {'alpha ours/sklearn':>22} {'max |diff|':>11} {'pred. sd':>9}")
    for spec in config.key_targets():
        data = prepare_target(fb, spec, config, cache, registry)
        X, y, w = data.X.to_numpy(float), data.table["y"].to_numpy(float), data.table["weight"].to_numpy(float)
        deps = np.unique(data.groups)
        held = np.isin(data.groups, np.random.default_rng(config.seed).choice(deps, size=len(deps) // 5,
                                                                            replace=False))
        train, test = ~held, held

        def ours():
            m = RidgeBaseline().fit(X[train], y[train], sample_weight=w[train])
            return m.alpha_, m.predict(X[test])

        def theirs():
            alpha, predict = sklearn_ridge_reference(X[train], y[train], w[train])
            return alpha, predict(X[test])

        t_ours, (a_ours, p_ours) = _timed(ours, args.repeats)
        t_ref, (a_ref, p_ref) = _timed(theirs, args.repeats)
        print(f"{spec.name:<30} {int(train.sum()):>6} {X.shape[1]:>5} {t_ours:>9.3f} {t_ref:>12.3f}"
              f" {t_ours / t_ref:>6.2f} {f'{a_ours:g} / {a_ref:g}':>22} {np.abs(p_ours - p_ref).max():>11.1e}"
              f" {p_ref.std():>9.3g}")


if __name__ == "__main__":
    main()
