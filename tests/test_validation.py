"""Spatially blocked folds, the blocked early-stopping split and the temporal backtest helper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from territoria.models.trajectory import TrajectoryRegressor
from territoria.models.validation import (
    SpatialGroupKFold,
    cross_val_predict_groups,
    group_validation_split,
    temporal_backtest,
)


def _groups(seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 60, size=40)
    return np.repeat([f"d{i:02d}" for i in range(40)], sizes)


def test_folds_hold_whole_groups_and_cover_every_row_once():
    g = _groups()
    cv = SpatialGroupKFold(n_splits=5, seed=1)
    seen = np.zeros(len(g), int)
    sizes = []
    for tr, te in cv.split(np.zeros((len(g), 1)), groups=g):
        assert set(g[tr]).isdisjoint(g[te])
        seen[te] += 1
        sizes.append(len(te))
    assert (seen == 1).all()
    assert max(sizes) - min(sizes) <= 60  # greedy balancing: within one group's size
    assert cv.get_n_splits() == 5


def test_folds_are_deterministic_and_seeded():
    g = _groups()
    a = [te.tolist() for _, te in SpatialGroupKFold(5, seed=7).split(None, groups=g)]
    b = [te.tolist() for _, te in SpatialGroupKFold(5, seed=7).split(None, groups=g)]
    c = [te.tolist() for _, te in SpatialGroupKFold(5, seed=8).split(None, groups=g)]
    assert a == b and a != c


def test_folds_need_groups_and_enough_of_them():
    with pytest.raises(ValueError, match="needs groups"):
        list(SpatialGroupKFold(3).split(np.zeros((10, 1))))
    with pytest.raises(ValueError, match="cannot make"):
        list(SpatialGroupKFold(3).split(np.zeros((4, 1)), groups=["a", "a", "b", "b"]))


def test_region_blocking_on_real_identity(feature_build):
    ident = feature_build.identity
    regions = ident["region"].astype(str).to_numpy()
    for tr, te in SpatialGroupKFold(5).split(None, groups=regions):
        assert set(regions[tr]).isdisjoint(regions[te])
        # departments are nested in regions: blocked too
        deps = ident["departement"].to_numpy()
        assert set(deps[tr]).isdisjoint(deps[te])


def test_group_validation_split():
    g = _groups()
    tr, va = group_validation_split(g, 0.2, seed=0)
    assert set(g[tr]).isdisjoint(g[va])
    assert 0.15 < len(va) / len(g) < 0.35
    tr2, va2 = group_validation_split(np.array(["a"] * 10 + ["b"] * 10), 0.2)
    assert len(va2) == 4  # fewer than 3 groups: a random row split


def test_cross_val_predict_groups_out_of_fold():
    rng = np.random.default_rng(0)
    g = _groups()
    X = pd.DataFrame({"x": rng.normal(size=len(g))})
    y = 3 * X["x"] + rng.normal(scale=0.1, size=len(g))
    pred, fold = cross_val_predict_groups(TrajectoryRegressor(n_estimators=50, n_jobs=1), X, y, g,
                                          SpatialGroupKFold(4))
    assert np.isfinite(pred).all() and set(fold) == {0, 1, 2, 3}
    assert np.corrcoef(pred, y)[0, 1] > 0.95


def test_temporal_backtest_rescales_to_the_scored_horizon():
    rng = np.random.default_rng(0)
    X0 = pd.DataFrame({"x": rng.normal(size=500)})
    y0 = pd.Series(2.0 * X0["x"])  # a 2-year change
    X1 = pd.DataFrame({"x": rng.normal(size=300)}, index=[f"z{i}" for i in range(300)])
    y1 = pd.Series(3.0 * X1["x"], index=X1.index)  # the same trend over 3 years
    pred, score = temporal_backtest(
        TrajectoryRegressor(n_estimators=100, n_jobs=1), (X0, y0, None), (X1, y1), scale=3 / 2,
        score_fn=lambda a, b: float(np.mean(np.abs(a - b))),
    )
    assert list(pred.index) == list(y1.index)
    assert score < 0.3
