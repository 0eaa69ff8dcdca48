"""Bootstrap refits of the trajectory models (territoria.models.bootstrap) and their use in
the stability audit: mechanics on small synthetic data."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from territoria.models import bootstrap as boot
from territoria.models import stability as stab


def test_docstring_examples_run():
    res = doctest.testmod(boot, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted >= 4 and res.failed == 0


def test_department_bootstrap_draws_whole_departments_with_replacement():
    groups = np.repeat([f"{d:02d}" for d in range(30)], np.arange(1, 31))
    rng = np.random.default_rng(7)
    draws = [boot.department_bootstrap(groups, rng) for _ in range(200)]
    for mult in draws:
        # every zone of a department has its department's multiplicity
        per_dep = pd.Series(mult).groupby(groups).nunique()
        assert per_dep.eq(1).all()
        # as many departments drawn as there are
        assert pd.Series(mult).groupby(groups).first().sum() == 30
    # about 1 - 1/e of the departments enter a sample
    share_in = np.mean([(pd.Series(m).groupby(groups).first() > 0).mean() for m in draws])
    assert share_in == pytest.approx(1 - np.exp(-1), abs=0.03)
    again = boot.department_bootstrap(groups, np.random.default_rng(7))
    assert np.array_equal(again, draws[0])


def _linear_data(n_dep: int, per_dep: int, seed: int):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_dep).astype(str), per_dep)
    x = rng.normal(size=len(groups))
    # a department effect the model cannot see: errors shared within a department
    y = 2.0 * x + rng.normal(scale=1.0, size=n_dep)[groups.astype(int)] + rng.normal(scale=0.2, size=len(x))
    return pd.DataFrame({"x": x}), y, groups


def _fit(m, X, y, w, g, rows):
    return m.fit(X, y, sample_weight=w)


def test_refits_spread_shrinks_with_more_departments_and_centres_on_the_full_fit():
    grid = pd.DataFrame({"x": [-2.0, 0.0, 2.0]})
    spreads = {}
    for n_dep in (8, 128):
        X, y, g = _linear_data(n_dep, 20, seed=n_dep)
        p = boot.refit_predictions(LinearRegression(), X, y, np.ones(len(y)), g, grid, refits=200,
                                   rng=np.random.default_rng(0), fit=_fit)
        assert p.shape == (200, 3)
        full = LinearRegression().fit(X, y).predict(grid)
        assert np.allclose(p.mean(axis=0), full, atol=4 * p.std(axis=0).max() / np.sqrt(200) + 1e-9)
        spreads[n_dep] = p.std(axis=0).mean()
    # the department effects average out over more departments: sqrt(128 / 8) = 4 times less
    assert spreads[8] > 2.5 * spreads[128] > 0


def test_bootstrap_forecasts_stack_measures_and_are_reproducible():
    X, y, g = _linear_data(20, 10, seed=1)
    Xf = pd.DataFrame({"x": [0.0, 1.0]}, index=pd.Index(["a", "b"], name="zone_code"))
    targets = {"m1": (LinearRegression(), X, y, np.ones(len(y)), g, Xf, _fit),
               "m2": (LinearRegression(), X, -y, np.ones(len(y)), g, Xf, _fit)}
    a = boot.bootstrap_forecasts(targets, refits=5, seed=3)
    b = boot.bootstrap_forecasts(targets, refits=5, seed=3)
    assert a.predictions.shape == (5, 2, 2) and a.refits == 5 and list(a.zones) == ["a", "b"]
    assert np.array_equal(a.predictions, b.predictions)
    # each measure has its own stream: neither the other measures nor their order matter
    only_m2 = boot.bootstrap_forecasts({"m2": targets["m2"]}, refits=5, seed=3)
    assert np.array_equal(only_m2.predictions[:, :, 0], a.predictions[:, :, 1])
    swapped = boot.bootstrap_forecasts({"m2": targets["m2"], "m1": targets["m1"]}, refits=5, seed=3)
    assert np.array_equal(swapped.predictions[:, :, ::-1], a.predictions)
    assert not np.array_equal(a.predictions[:, :, 0], -a.predictions[:, :, 1])  # m2 = -y: other draws
    assert a.spread().shape == (2, 2) and (a.spread().to_numpy() > 0).all()
    bad = dict(targets, m2=(LinearRegression(), X, y, np.ones(len(y)), g, Xf.iloc[::-1], _fit))
    with pytest.raises(ValueError, match="forecast rows differ"):
        boot.bootstrap_forecasts(bad, refits=2, seed=3)


def _problem(index, pred, refit_pred=None, top_share=0.2):
    n = len(index)
    tr = stab.TrajectoryInputs(
        measures=["m"], pred=np.asarray(pred, float)[:, None], half_width=np.full((n, 1), 0.5),
        tail_df=np.array([np.inf]), certainty=np.ones((n, 1)), share=np.array([1.0]), sign=np.array([1.0]),
        median=np.array([0.0]), iqr=np.array([1.0]), z_clip=3.0, level=0.8, refit_pred=refit_pred)
    zones = pd.Index([f"z{i}" for i in range(n)], name="zone_code")
    return stab.StabilityProblem(zones, stab.IndexInputs.fixed(np.asarray(index, float)), tr, np.ones(n), 0.6,
                                 0.4, stab.FlagRule(top_share=top_share, exit_share=top_share))


ALONE = dict(trajectory=False, index_weights="none", indicator_noise=False)


def test_p_priority_is_the_share_of_refits_that_flag_the_zone():
    # 10 zones, the top 2 flagged: zone 0 always, zones 1 and 2 compete through their forecast
    index = np.array([90.0, 60, 60, 10, 10, 10, 10, 10, 10, 10])
    pred = np.array([0.0, 0.1, 0.0, 0, 0, 0, 0, 0, 0, 0])
    refits = np.repeat(pred[None, :, None], 4, axis=0)
    refits[1:, 1, 0], refits[1:, 2, 0] = 0.0, 0.1  # three refits of four prefer zone 2
    res = stab.replicate(_problem(index, pred, refits), stab.StabilitySettings(replicates=40, seed=0, **ALONE))
    assert res.p_priority.tolist()[:3] == [1.0, 0.25, 0.75]
    assert res.summary["refits"]["refits"] == 4
    r = res.refits
    assert len(r) == 4 and r["jaccard_flagged"].tolist() == [1.0, 1 / 3, 1 / 3, 1 / 3]
    assert r.loc[0, "kendall_tau"] == pytest.approx(1.0)
    spread = res.summary["refits"]["forecast_spread"]["m"]
    assert spread["median_half_width"] == 0.5 and spread["median_sd"] == 0.0  # 8 of 10 zones never move
    assert "Training sample" in stab.to_markdown(res)


def test_refits_equal_to_the_run_change_nothing():
    rng = np.random.default_rng(5)
    index, pred = rng.uniform(0, 100, 300), rng.normal(0, 1, 300)
    settings = stab.StabilitySettings(replicates=50, seed=4)
    plain = stab.replicate(_problem(index, pred), settings)
    same = stab.replicate(_problem(index, pred, np.repeat(pred[None, :, None], 5, axis=0)), settings)
    assert np.array_equal(plain.p_priority.to_numpy(), same.p_priority.to_numpy())
    pd.testing.assert_frame_equal(plain.replicates, same.replicates)
    assert same.refits["jaccard_top"].eq(1.0).all() and "refits" not in plain.summary
    # the unperturbed baseline is the run's, never a refit's
    assert same.summary["reproduces_run"] == {"score": True, "flag": True}


def test_refits_are_aligned_to_the_run_zones_and_measures():
    fc = boot.BootstrapForecasts(["other", "m"], pd.Index(["a", "b", "c"]),
                                 np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2), seed=0)
    arr = stab.align_refits(fc, pd.Index(["b", "a", "x"]), ["m"])
    assert arr.shape == (2, 3, 1)
    assert arr[:, :2, 0].tolist() == [[3.0, 1.0], [9.0, 7.0]] and np.isnan(arr[:, 2, 0]).all()
    with pytest.raises(ValueError, match="lack the measures"):
        stab.align_refits(fc, pd.Index(["a"]), ["m", "absent"])
    tr = stab.TrajectoryInputs(measures=["m"], pred=np.array([[0.0], [0.0], [np.nan]]), half_width=np.ones((3, 1)),
                               tail_df=np.array([np.inf]), certainty=np.ones((3, 1)), share=np.ones(1),
                               sign=np.ones(1), median=np.zeros(1), iqr=np.ones(1), z_clip=3.0, level=0.8,
                               refit_pred=arr)
    # replicate r starts from refit r mod 2; a zone the run does not forecast stays without
    c = tr.centre(0, np.array([0, 1, 2]))
    assert c[:, :2].tolist() == [[3.0, 1.0], [9.0, 7.0], [3.0, 1.0]] and np.isnan(c[:, 2]).all()
    assert tr.centre(0, None).shape == (1, 3)
