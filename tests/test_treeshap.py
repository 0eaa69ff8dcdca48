"""Exact TreeSHAP by leaf-pattern tables: the values of LightGBM's pred_contrib, or pred_contrib itself."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from territoria.models import treeshap
from territoria.models.treeshap import Unsupported, contributions, tree_shap


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    X[rng.random(n) < 0.15, 1] = np.nan
    X[rng.random(n) < 0.25, 2] = 0.0
    X[:, 3] = rng.integers(0, 4, size=n)  # ties on the thresholds
    X[rng.random(n) < 0.05, 2] = 1e-36       # LightGBM reads |x| <= 1e-35 as 0
    y = 2 * X[:, 0] + np.nan_to_num(X[:, 1]) * X[:, 3] - (X[:, 2] == 0) + rng.normal(scale=0.3, size=n)
    return X, y


def _booster(X, y, rounds=40, **params):
    base = {"objective": "regression", "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1, "seed": 1,
            "deterministic": True, "num_threads": 1}
    return lgb.train({**base, **params}, lgb.Dataset(X, y), num_boost_round=rounds)


def _assert_same(phi, expected):
    assert phi.shape == expected.shape
    np.testing.assert_allclose(phi, expected, rtol=0, atol=1e-10 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("params", [
    {},                                     # NaN as missing, default directions learnt
    {"zero_as_missing": True},              # missing_type Zero: 0 and NaN take the default side
    {"use_missing": False},                 # missing_type None: NaN read as 0
    {"max_depth": 3, "num_leaves": 8},
    {"objective": "huber", "learning_rate": 0.3},
])
def test_tree_shap_is_pred_contrib(params):
    X, y = _data()
    booster = _booster(X, y, **params)
    _assert_same(tree_shap(booster, X), booster.predict(X, pred_contrib=True))
    # rows the trees never saw, missing values included
    Z, _ = _data(n=200, seed=5)
    _assert_same(tree_shap(booster, Z), booster.predict(Z, pred_contrib=True))
    # values exactly on a split's threshold go left
    on = np.repeat(X[:50], 1, axis=0)
    for i, (feature, threshold) in enumerate(_thresholds(booster)[:50]):
        on[i, feature] = threshold
    _assert_same(tree_shap(booster, on), booster.predict(on, pred_contrib=True))


def _thresholds(booster) -> list[tuple[int, float]]:
    out, stack = [], [t["tree_structure"] for t in booster.dump_model()["tree_info"]]
    while stack:
        node = stack.pop()
        if "split_index" in node:
            out.append((node["split_feature"], node["threshold"]))
            stack += [node["left_child"], node["right_child"]]
    return out


def test_tree_shap_of_a_binary_model_is_on_the_raw_score():
    X, y = _data()
    booster = _booster(X, (y > np.median(y)).astype(float), objective="binary")
    _assert_same(tree_shap(booster, X), booster.predict(X, pred_contrib=True))


def test_tree_shap_reads_num_iteration_as_predict_does():
    X, y = _data()
    booster = _booster(X, y)
    booster.best_iteration = 12  # as early stopping leaves it: predict(num_iteration=None) uses 12 trees
    for n in (None, 3, booster.current_iteration(), -1, 0):
        _assert_same(tree_shap(booster, X, num_iteration=n), booster.predict(X, pred_contrib=True, num_iteration=n))


def test_single_leaf_trees_only_move_the_base_value():
    X, y = _data(n=60)
    booster = _booster(X, y, rounds=5, min_data_in_leaf=100)  # no split possible
    phi = tree_shap(booster, X)
    assert np.all(phi[:, :-1] == 0)
    _assert_same(phi, booster.predict(X, pred_contrib=True))


def test_threads_share_the_rows_without_changing_a_value():
    X, y = _data(n=3000)
    booster = _booster(X, y)
    np.testing.assert_array_equal(tree_shap(booster, X, n_jobs=1), tree_shap(booster, X, n_jobs=3))


def test_trees_the_tables_do_not_serve_are_explained_by_pred_contrib(monkeypatch):
    X, y = _data()
    labels = np.digitize(y, np.quantile(y, [0.33, 0.66]))
    multi = _booster(X, labels, rounds=10, objective="multiclass", num_class=3)
    with pytest.raises(Unsupported, match="one tree per iteration"):
        tree_shap(multi, X)
    np.testing.assert_array_equal(contributions(multi, X), multi.predict(X, pred_contrib=True))

    cats = X.copy()
    cats[:, 3] = np.abs(cats[:, 3])
    categorical = lgb.train({"objective": "regression", "verbose": -1, "min_data_per_group": 5, "cat_smooth": 1},
                            lgb.Dataset(cats, y + 3 * (cats[:, 3] == 2), categorical_feature=[3]),
                            num_boost_round=10)
    with pytest.raises(Unsupported, match="categorical"):
        tree_shap(categorical, cats)
    np.testing.assert_array_equal(contributions(categorical, cats), categorical.predict(cats, pred_contrib=True))

    booster = _booster(X, y)
    monkeypatch.setattr(treeshap, "MAX_PATH_FEATURES", 2)  # paths longer than the tables serve
    with pytest.raises(Unsupported, match="distinct features"):
        tree_shap(booster, X)
    np.testing.assert_array_equal(contributions(booster, X), booster.predict(X, pred_contrib=True))


def test_tree_shap_of_the_trajectory_model_on_the_real_design(feature_build):
    """The project's model with its default parameters (depth 8, 31 leaves, 63 bins, early
    stopping) on the real design matrix of population change: the same values as LightGBM."""
    from territoria.models.backtest import FeatureCache
    from territoria.models.targets import load_model_config
    from territoria.models.trajectory import TrajectoryRegressor
    from territoria.registry import load_registry

    X, _ = FeatureCache.of(feature_build).design("population", 2018, load_registry())
    panel = feature_build.panel
    pop = panel[panel["measure"] == "population"].pivot_table(index="zone_code", columns="period", values="value")
    y = (pop[2021] / pop[2018] - 1).reindex(X.index)
    ok = (y.notna() & pop[2018].reindex(X.index).gt(2000)).to_numpy()
    groups = feature_build.identity["departement"].reindex(X.index).astype(str).to_numpy()
    model = TrajectoryRegressor(**load_model_config().model).fit(X[ok], y[ok].to_numpy(), groups=groups[ok])
    booster, n = model.booster_, model.best_iteration_
    values = X.to_numpy(float)  # every commune, the zones it was not fitted on included
    _assert_same(tree_shap(booster, values, num_iteration=n),
                 booster.predict(values, pred_contrib=True, num_iteration=n))
    assert isinstance(X, pd.DataFrame) and len(values) > 30_000
