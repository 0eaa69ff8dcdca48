"""Trajectory models: scikit-learn contract, reproducibility, early stopping, monotone
constraints, the hurdle model, and the target-specific history features (no leakage)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from libpysal.graph import Graph
from sklearn.utils.estimator_checks import parametrize_with_checks

from territoria.models.baselines import RidgeBaseline
from territoria.models.trajectory import (
    DeteriorationClassifier,
    HurdleRegressor,
    SharedBins,
    TrajectoryRegressor,
    history_features,
    monotone_constraints_from_registry,
    select_features,
)
from territoria.registry import load_registry

SMALL = {"n_estimators": 20, "min_child_samples": 2, "n_jobs": 1}

# LightGBM's leaves need `min_child_samples` *rows* and bagging draws rows: a weight of 2 is
# not a duplicated row, and the ridge baseline clips features at quantiles of rows.
_WEIGHT_EQUIVALENCE = "row-based (min_child_samples, bagging, clipping quantiles): a weight is not a duplicated row"


def _expected_failed(estimator):
    return {"check_sample_weight_equivalence_on_dense_data": _WEIGHT_EQUIVALENCE}


@parametrize_with_checks(
    [
        TrajectoryRegressor(**SMALL),
        DeteriorationClassifier(**SMALL),
        HurdleRegressor(regressor=TrajectoryRegressor(**SMALL)),
        RidgeBaseline(),
    ],
    expected_failed_checks=_expected_failed,
)
def test_sklearn_contract(estimator, check):
    check(estimator)


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 5)), columns=[f"x{i}" for i in range(5)])
    y = 2 * X["x0"] - X["x1"] ** 2 + rng.normal(scale=0.5, size=n)
    groups = np.repeat(np.arange(n // 20), 20)
    return X, y.to_numpy(), groups


def test_same_seed_same_predictions():
    X, y, g = _data()
    a = TrajectoryRegressor(random_state=3, n_jobs=1).fit(X, y, groups=g).predict(X)
    b = TrajectoryRegressor(random_state=3, n_jobs=1).fit(X, y, groups=g).predict(X)
    c = TrajectoryRegressor(random_state=4, n_jobs=1).fit(X, y, groups=g).predict(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_early_stopping_on_blocked_split():
    X, y, g = _data()
    m = TrajectoryRegressor(n_estimators=2000, learning_rate=0.2, early_stopping_rounds=10, n_jobs=1)
    m.fit(X, y, groups=g)
    assert m.best_iteration_ < 2000
    assert np.corrcoef(m.predict(X), y)[0, 1] > 0.8
    full = TrajectoryRegressor(n_estimators=50, early_stopping_rounds=None, n_jobs=1).fit(X, y)
    assert full.best_iteration_ == 50


def test_monotone_constraints_hold():
    X, y, g = _data()
    m = TrajectoryRegressor(monotone_constraints={"x1": 1}, n_jobs=1).fit(X, y, groups=g)
    grid = pd.DataFrame(np.zeros((50, 5)), columns=X.columns)
    grid["x1"] = np.linspace(-3, 3, 50)
    assert np.all(np.diff(m.predict(grid)) >= -1e-12)
    with pytest.raises(ValueError, match="unknown features"):
        TrajectoryRegressor(monotone_constraints={"nope": 1}, n_jobs=1).fit(X, y)


def test_monotone_constraints_from_registry():
    reg = load_registry()
    meta = pd.DataFrame({
        "feature": ["poverty_rate", "median_income", "poverty_rate__chg"],
        "indicator": ["poverty_rate", "median_income", "poverty_rate"],
        "transform": ["level", "level", "change"],
    })
    mc = monotone_constraints_from_registry(meta["feature"], meta, reg, target_sign=1)
    # a higher poverty rate is worse, a higher income better; changes are not constrained
    assert mc == {"poverty_rate": 1, "median_income": -1}


def test_classifier_probabilities():
    X, y, g = _data()
    lab = (y > np.quantile(y, 0.9)).astype(int)
    clf = DeteriorationClassifier(n_jobs=1).fit(X, lab, groups=g)
    p = clf.predict_proba(X)
    assert p.shape == (len(y), 2) and np.allclose(p.sum(axis=1), 1)
    assert set(clf.predict(X)) <= {0, 1}


def _structural_zeros(n=2000, seed=1):
    """A change that is zero where ``z > 0.5`` and ``1 + x`` elsewhere."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"z": rng.normal(size=n), "x": rng.normal(size=n)})
    zero = X["z"].to_numpy() > 0.5
    return X, np.where(zero, 0.0, 1.0 + X["x"].to_numpy()), zero


def test_hurdle_learns_structural_zeros():
    X, y, zero = _structural_zeros()
    h = HurdleRegressor(regressor=TrajectoryRegressor(n_jobs=1),
                        classifier=DeteriorationClassifier(n_jobs=1)).fit(X, y, structural_zero=zero)
    p = h.predict(X)
    assert np.abs(p[zero]).mean() < 0.2
    assert np.corrcoef(p[~zero], y[~zero])[0, 1] > 0.9
    plain = HurdleRegressor(regressor=TrajectoryRegressor(n_jobs=1)).fit(X, y)
    assert plain.classifier_ is None


def test_shared_bins_give_the_fresh_fit_on_the_same_rows():
    # without early stopping a fresh fit bins exactly the rows it trains on: on all the rows,
    # the shared bins must hand LightGBM the same data, labels and weights
    X, y, g = _data()
    w = np.random.default_rng(2).uniform(0.5, 2.0, len(y))
    params = {"n_estimators": 30, "early_stopping_rounds": None, "n_jobs": 1, "max_bin": 31}
    fresh = TrajectoryRegressor(**params).fit(X, y, sample_weight=w)
    shared = TrajectoryRegressor(**params).fit(X, y, sample_weight=w, bins=SharedBins(X, fresh).take(np.arange(len(y))))
    np.testing.assert_array_equal(shared.predict(X), fresh.predict(X))
    assert shared.booster_.feature_name() == list(X.columns)


def test_shared_bins_keep_labels_with_rows_in_any_order():
    X, y, g = _data()
    params = {"n_estimators": 30, "early_stopping_rounds": None, "n_jobs": 1, "subsample": 1.0}
    model = TrajectoryRegressor(**params)
    bins = SharedBins(X, model)
    perm = np.random.default_rng(3).permutation(len(y))[:400]
    on_bins = TrajectoryRegressor(**params).fit(X.iloc[perm], y[perm], bins=bins.take(perm))
    sorted_rows = np.sort(perm)
    reference = TrajectoryRegressor(**params).fit(X.iloc[sorted_rows], y[sorted_rows], bins=bins.take(sorted_rows))
    np.testing.assert_allclose(on_bins.predict(X), reference.predict(X), atol=1e-9)
    mask = np.zeros(len(y), bool)
    mask[sorted_rows] = True
    by_mask = TrajectoryRegressor(**params).fit(X[mask], y[mask], bins=bins.take(mask))
    np.testing.assert_array_equal(by_mask.predict(X), reference.predict(X))


def test_a_fold_fit_on_shared_bins_never_sees_held_out_outcomes():
    X, y, g = _data()
    model = TrajectoryRegressor(n_jobs=1)
    bins = SharedBins(X, model)
    train = np.flatnonzero(g % 5 != 0)
    first = TrajectoryRegressor(n_jobs=1).fit(X.iloc[train], y[train], groups=g[train], bins=bins.take(train))
    y_other = y.copy()
    y_other[g % 5 == 0] = 1e6  # held-out outcomes changed
    bins_other = SharedBins(X, model)
    second = TrajectoryRegressor(n_jobs=1).fit(X.iloc[train], y_other[train], groups=g[train],
                                               bins=bins_other.take(train))
    np.testing.assert_array_equal(first.predict(X), second.predict(X))
    assert first.best_iteration_ < 400  # early stopping ran on the blocked split of the shared bins


def test_shared_bins_refuse_a_model_or_rows_they_were_not_made_for():
    X, y, g = _data()
    bins = SharedBins(X, TrajectoryRegressor(max_bin=63, n_jobs=1))
    with pytest.raises(ValueError, match="max_bin"):
        TrajectoryRegressor(max_bin=255, n_jobs=1).fit(X, y, bins=bins)
    with pytest.raises(ValueError, match="hold 600 rows, the fit got 100"):
        TrajectoryRegressor(max_bin=63, n_jobs=1).fit(X.iloc[:100], y[:100], bins=bins)
    with pytest.raises(ValueError, match="other features"):
        TrajectoryRegressor(max_bin=63, n_jobs=1).fit(X.rename(columns={"x0": "other"}), y, bins=bins)
    unnamed = SharedBins(X.to_numpy(), TrajectoryRegressor(max_bin=63, n_jobs=1))
    with pytest.raises(ValueError, match="other features"):
        TrajectoryRegressor(max_bin=63, n_jobs=1).fit(X.to_numpy()[:, :4], y, bins=unnamed)


def test_hurdle_on_shared_bins_fits_both_parts():
    X, y, zero = _structural_zeros()
    h = HurdleRegressor(regressor=TrajectoryRegressor(n_jobs=1), classifier=DeteriorationClassifier(n_jobs=1))
    h.fit(X, y, structural_zero=zero, bins=SharedBins(X, TrajectoryRegressor(n_jobs=1)))
    p = h.predict(X)
    assert np.abs(p[zero]).mean() < 0.2
    assert np.corrcoef(p[~zero], y[~zero])[0, 1] > 0.9
    assert h.regressor_.booster_.num_trees() > 0 and h.classifier_.booster_.num_trees() > 0


def test_hurdle_parts_fitted_at_once_give_the_same_model():
    # with two threads the two parts are fitted side by side on one thread each: the same trees
    # as one after the other, and the model then predicts with its two threads
    from territoria.models.trajectory import fits_at_once

    if fits_at_once(2, 2) < 2:
        pytest.skip("one core: the parts are fitted one after the other")
    X, y, zero = _structural_zeros()
    fits = {}
    for n_jobs in (1, 2):
        h = HurdleRegressor(regressor=TrajectoryRegressor(n_jobs=n_jobs), classifier=DeteriorationClassifier(n_jobs=n_jobs))
        fits[n_jobs] = h.fit(X, y, structural_zero=zero, bins=SharedBins(X, TrajectoryRegressor(n_jobs=1)))
    np.testing.assert_array_equal(fits[1].predict(X), fits[2].predict(X))
    for part in (fits[2].regressor_, fits[2].classifier_):
        assert "[num_threads: 1]" in part.booster_.model_to_string() and part.n_jobs == 2
    assert fits[2].regressor_.booster_.model_to_string().split("parameters:")[0] == \
        fits[1].regressor_.booster_.model_to_string().split("parameters:")[0]
    # a plain array too, each part binning its own rows
    A = X.to_numpy()
    plain = {n: HurdleRegressor(regressor=TrajectoryRegressor(n_jobs=n), classifier=DeteriorationClassifier(n_jobs=n))
             .fit(A, y, structural_zero=zero).predict(A) for n in (1, 2)}
    np.testing.assert_array_equal(plain[1], plain[2])


def test_select_features_drops_constant_empty_and_duplicates():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    X = pd.DataFrame({"a": a, "a_copy": 3 * a + 1, "const": 1.0, "empty": np.nan, "b": rng.normal(size=200)})
    assert select_features(X) == ["a", "b"]
    # a chain: b duplicates a and is dropped; c duplicates b but not a, so it stays
    c = a + rng.normal(scale=0.6, size=200)
    b = (a + c) / 2
    X = pd.DataFrame({"a": a, "b": b, "c": c})
    corr = X.rank().corr().abs()
    assert corr.loc["a", "b"] > 0.9 and corr.loc["b", "c"] > 0.9 and corr.loc["a", "c"] < 0.9
    assert select_features(X, corr_threshold=0.9) == ["a", "c"]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_average_ranks_are_dataframe_rank_with_missing_at_the_mean_rank(threads):
    from territoria.models.trajectory import _average_ranks

    rng = np.random.default_rng(2)
    X = pd.DataFrame({
        "ties": rng.integers(0, 5, size=300).astype(float),      # many ties: averaged
        "gappy": np.where(rng.random(300) < 0.4, np.nan, rng.normal(size=300)),
        "smooth": rng.normal(size=300),
        "one_value": np.where(rng.random(300) < 0.5, np.nan, 2.0),
    })
    expected = X.rank()
    expected = expected.fillna(expected.mean())
    np.testing.assert_array_equal(_average_ranks(X.to_numpy(), threads=threads), expected.to_numpy())
    ranks, distinct = _average_ranks(X.to_numpy(), distinct=True, threads=threads)
    np.testing.assert_array_equal(ranks, expected.to_numpy())
    np.testing.assert_array_equal(distinct, X.nunique().to_numpy())
    # no column, no row
    assert _average_ranks(np.zeros((5, 0)), threads=threads).shape == (5, 0)
    ranks, distinct = _average_ranks(np.zeros((0, 3)), distinct=True, threads=threads)
    assert ranks.shape == (0, 3) and distinct.tolist() == [0, 0, 0]


# --------------------------------------------------------------------------- history features
def _toy_panel():
    zones = ["01001", "01002", "01003", "01004"]
    rows = []
    for z_i, z in enumerate(zones):
        for p, v in {2014: 100, 2016: 110, 2018: 120, 2021: 999}.items():
            rows.append((z, "median_income", p, float(v + z_i)))
        for p, v in {2013: 1000, 2018: 1100, 2021: 5000}.items():
            rows.append((z, "population", p, float(v * (z_i + 1))))
    df = pd.DataFrame(rows, columns=["zone_code", "measure", "period", "value"])
    df["level"] = "commune"
    ident = pd.DataFrame({"zone_code": zones, "departement": ["01", "01", "02", "02"]}, index=zones)
    graph = Graph.from_arrays(zones, zones[1:] + zones[:1], [1.0] * 4)
    return df, ident, graph


def test_history_features_lags_and_no_future_values():
    panel, ident, graph = _toy_panel()
    reg = load_registry()
    X, meta = history_features(panel, "median_income", 2018, graph, ident, reg)
    assert (meta["period_to"] <= 2018).all()
    assert X.loc["01001", "hist__median_income__lag1"] == pytest.approx(5.0)  # (120-110)/2
    assert X.loc["01001", "hist__median_income__lag2"] == pytest.approx(5.0)
    assert X.loc["01002", "hist__population__lag1"] == pytest.approx(2.0)  # +10 % over 5 years
    # values dated after the origin never change the features
    changed = panel.copy()
    changed.loc[changed["period"] > 2018, "value"] *= -7
    X2, _ = history_features(changed, "median_income", 2018, graph, ident, reg)
    pd.testing.assert_frame_equal(X, X2)


def test_shared_bins_serve_models_of_any_number_of_threads():
    """The bins do not depend on LightGBM's threads: a fold fitted on one thread uses the
    target's bins and grows the trees a two-thread fit grows (the backtest fits two folds at
    a time on one thread each)."""
    X, y, g = _data()
    bins = SharedBins(X, TrajectoryRegressor(n_jobs=2))
    rows = np.flatnonzero(g % 5 != 0)
    one = TrajectoryRegressor(n_jobs=1).fit(X.iloc[rows], y[rows], groups=g[rows], bins=bins.take(rows))
    two = TrajectoryRegressor(n_jobs=2).fit(X.iloc[rows], y[rows], groups=g[rows], bins=bins.take(rows))
    np.testing.assert_array_equal(one.predict(X), two.predict(X))
