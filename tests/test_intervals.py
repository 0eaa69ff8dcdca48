"""Conformal intervals: coverage on synthetic data with known noise, overall and by group."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from territoria.models.intervals import (
    SplitConformal,
    conformal_quantile,
    coverage_table,
    cross_conformal_intervals,
    fit_spread_model,
    zone_groups,
)
from territoria.models.trajectory import TrajectoryRegressor
from territoria.models.validation import SpatialGroupKFold, cross_val_predict_groups

FAST = {"n_estimators": 150, "n_jobs": 1}


@pytest.fixture(scope="module")
def synthetic():
    """y = f(x) + noise whose scale is known: 0.5 in 'calm' zones, 2.0 in 'noisy' ones."""
    rng = np.random.default_rng(42)
    n = 4000
    X = pd.DataFrame({"x0": rng.uniform(-2, 2, n), "x1": rng.uniform(-2, 2, n), "noisy": rng.random(n) < 0.3})
    X["noisy"] = X["noisy"].astype(float)
    sigma = np.where(X["noisy"] > 0, 2.0, 0.5)
    y = np.sin(X["x0"]) * 3 + X["x1"] + rng.normal(size=n) * sigma
    groups = np.repeat(np.arange(80), n // 80)
    rng.shuffle(groups)
    pred, fold = cross_val_predict_groups(TrajectoryRegressor(**FAST), X, y, groups, SpatialGroupKFold(5))
    return X, y.to_numpy(), groups, pred, fold


def _cov(y, iv, sfx):
    return float(np.mean((y >= iv[f"low_{sfx}"]) & (y <= iv[f"high_{sfx}"])))


def test_conformal_quantile_finite_sample():
    s = np.arange(1, 10, dtype=float)  # n = 9
    assert conformal_quantile(s, 0.8) == 8.0  # ceil(10 * 0.8) = 8th smallest
    assert conformal_quantile(s, 0.95) == np.inf  # ceil(10 * 0.95) = 10 > n
    assert np.isnan(conformal_quantile([], 0.9))


def test_absolute_intervals_reach_nominal_coverage(synthetic):
    X, y, groups, pred, fold = synthetic
    iv = cross_conformal_intervals(y, pred, fold, (0.8, 0.9))
    assert abs(_cov(y, iv, "80") - 0.80) < 0.03
    assert abs(_cov(y, iv, "90") - 0.90) < 0.03


def test_normalised_intervals_adapt_to_the_noise(synthetic):
    X, y, groups, pred, fold = synthetic
    spread, model, floor = fit_spread_model(X, np.abs(y - pred), groups, fold, params=FAST)
    iv = cross_conformal_intervals(y, pred, fold, (0.8, 0.9), spread=spread)
    assert abs(_cov(y, iv, "80") - 0.80) < 0.03
    assert abs(_cov(y, iv, "90") - 0.90) < 0.03
    noisy = X["noisy"].to_numpy() > 0
    width = (iv["high_90"] - iv["low_90"]).to_numpy()
    assert width[noisy].mean() > 2.5 * width[~noisy].mean()
    # by group, coverage stays near nominal where absolute intervals would not
    for m in (noisy, ~noisy):
        assert abs(_cov(y[m], iv[m], "90") - 0.90) < 0.05
    absolute = cross_conformal_intervals(y, pred, fold, (0.9,))
    assert _cov(y[noisy], absolute[noisy], "90") < 0.85
    assert floor > 0 and model.predict(X.iloc[:5]).shape == (5,)


def test_split_conformal_applies_to_new_predictions(synthetic):
    X, y, groups, pred, fold = synthetic
    sc = SplitConformal((0.8, 0.9)).fit(y, pred)
    iv = sc.predict_interval(np.zeros(3))
    assert list(iv.columns) == ["low_80", "high_80", "low_90", "high_90"]
    assert (iv["high_90"] > iv["high_80"]).all() and (iv["low_90"] < iv["low_80"]).all()
    with pytest.raises(ValueError, match="spread"):
        SplitConformal((0.8,)).fit(y, pred, spread=np.ones_like(y)).predict_interval(np.zeros(3))


def test_coverage_table_by_group():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    iv = pd.DataFrame({"low_80": [-1, 0, 5, 2], "high_80": [1, 2, 6, 4]})
    groups = zone_groups(pd.Series([100, 3000, 10000, 50000]), density=pd.Series([10, 500, 20, 4000]),
                         zone=pd.Series(["metro", "metro", "drom", "metro"]))
    assert groups["size_class"].tolist() == ["<2k", "2k-5k", "5k-20k", "20k+"]
    assert groups["density_class"].tolist() == ["rural", "urban", "rural", "urban"]
    assert groups["territory"].tolist() == ["mainland", "mainland", "overseas", "mainland"]
    tab = coverage_table(y, iv, groups)
    overall = tab[tab["grouping"] == "all"].iloc[0]
    assert overall["coverage"] == 0.75 and overall["n"] == 4
    over = tab[(tab["grouping"] == "territory") & (tab["group"] == "overseas")].iloc[0]
    assert over["coverage"] == 0.0
