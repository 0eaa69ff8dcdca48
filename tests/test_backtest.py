"""Metrics, and one backtest run on the real data: model and baselines on the same folds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from territoria.models import metrics as mx
from territoria.models.backtest import (
    BASELINES,
    MODEL,
    FeatureCache,
    backtest_oof,
    predict_target,
    run_backtest,
    spread_columns,
    train_target,
)
from territoria.models.intervals import predict_spread
from territoria.models.targets import load_model_config
from territoria.models.trajectory import HurdleRegressor, TrajectoryRegressor
from territoria.registry import load_registry

FAST = {"n_estimators": 60, "learning_rate": 0.1, "n_jobs": 1}


# --------------------------------------------------------------------------- metrics
def test_precision_recall_direction_aware():
    y = np.arange(100.0)
    p_up, r_up = mx.precision_recall_at(y, y, sign=1)
    assert (p_up, r_up) == (1.0, 1.0)
    p_down, _ = mx.precision_recall_at(y, y, sign=-1)
    assert p_down == 1.0
    p_wrong, _ = mx.precision_recall_at(y, -y, sign=1)
    assert p_wrong == 0.0


def test_constant_prediction_has_no_ranking():
    y = np.arange(50.0)
    m = mx.regression_metrics(y, np.zeros(50), sign=1)
    assert np.isnan(m["spearman"])
    assert m["precision_at_10"] == pytest.approx(0.1)  # the whole tied set is flagged
    assert m["r2"] < 0


def test_missing_predictions_are_dropped_and_reported():
    y = np.arange(10.0)
    pred = np.where(y < 5, np.nan, y)
    m = mx.regression_metrics(y, pred)
    assert m["n"] == 5 and m["scored_share"] == 0.5 and m["spearman"] == pytest.approx(1.0)


def test_future_level_precision_vs_persistence():
    level = np.arange(100.0)
    y = np.where(np.arange(100) < 10, 1000.0, 0.0)  # the 10 lowest jump to the top
    out = mx.future_level_precision(level, y, y, sign=1)
    assert out["model"] == 1.0 and out["persistence"] == 0.0


def test_calibration():
    rng = np.random.default_rng(0)
    p = rng.random(5000)
    y = (rng.random(5000) < p).astype(float)
    tab = mx.reliability_table(y, p, n_bins=5)
    assert len(tab) == 5 and tab["n"].sum() == 5000
    assert np.allclose(tab["observed"], tab["mean_predicted"], atol=0.05)
    c = mx.classification_metrics(y, p)
    assert c["brier"] < c["brier_base_rate"] and c["ece"] < 0.03 and c["roc_auc"] > 0.7


# --------------------------------------------------------------------------- one real run
@pytest.fixture(scope="module")
def small_config():
    cfg = load_model_config()
    cfg.cv.n_splits = 3
    cfg.intervals.normalised = False
    cfg.train_min_population = 2000  # fewer rows: a faster test
    return cfg


@pytest.fixture(scope="module")
def backtest(feature_build, small_config):
    return run_backtest(feature_build, ["population_2018_2021"], config=small_config, params=FAST,
                        temporal=False, classifier=True)


def test_backtest_scores_model_and_baselines_on_the_same_zones(backtest):
    m = backtest.metrics
    assert set(m.columns) == {"target", "model", "scheme", "metric", "value"}
    cv = m[m["scheme"] == "cv_departement"]
    assert {MODEL, *BASELINES, "lightgbm_classifier"} <= set(cv["model"])
    n = cv[cv["metric"] == "n"].set_index("model")["value"]
    assert n.nunique() == 1 and n.iloc[0] > 4000  # every model on the same zones
    sp = cv[cv["metric"] == "spearman"].set_index("model")["value"]
    assert sp[MODEL] > 0.5 and sp[MODEL] > sp["spatial_lag"]
    assert np.isnan(sp["persistence_zero"])
    cov = cv[cv["metric"].isin(["coverage_80", "coverage_90"])].set_index("metric")["value"]
    assert abs(cov["coverage_80"] - 0.8) < 0.05 and abs(cov["coverage_90"] - 0.9) < 0.05
    groups = set(backtest.coverage["grouping"])
    assert {"all", "size_class", "territory", "density_class"} <= groups


def test_backtest_outputs(backtest, tmp_path):
    text = backtest.table()
    assert "lightgbm" in text and "ridge" in text and "ratio_to_best_baseline" in text
    d = backtest.to_dict()
    json.dumps(d)  # metrics.json-ready
    assert d["metrics"]["population_2018_2021"]["cv_departement"]["lightgbm"]["spearman"] > 0.5
    paths = backtest.write(tmp_path)
    assert json.loads(paths["metrics_json"].read_text())["config"]["scheme"] == "cv_departement"
    pred = pd.read_parquet(paths["predictions"])
    assert {"zone_code", "fold", "y", MODEL, "ridge", "low_80", "high_90"} <= set(pred.columns)
    assert pred["fold"].between(0, 2).all()
    # the metrics' zones (scored), then the smaller communes of the held-out departments, each
    # predicted once by the fold model that never saw it, with the intervals a forecast gets
    scored = pred["scored"].astype(bool)
    n = backtest.metrics.query("model == @MODEL and metric == 'n'")["value"].iloc[0]
    assert scored.sum() == n and (~scored).sum() > 10_000
    assert not pred["zone_code"].duplicated().any()
    small = pred[~scored]
    assert small[[MODEL, "low_80", "high_80", "low_90", "high_90"]].notna().all().all()
    assert (small["low_90"] <= small["low_80"]).all() and (small["low_80"] <= small[MODEL]).all()
    assert small["ridge"].isna().all()  # baselines score the scored zones only
    cov = pd.read_csv(paths["coverage"])
    assert {"grouping", "group"} <= set(cov.columns) and {"territory", "size_class"} <= set(cov["grouping"])


def test_temporal_backtest_and_forecast(feature_build, small_config):
    res = run_backtest(feature_build, ["population_2018_2021"], config=small_config, params=FAST, cv=False)
    tmp = res.metrics[res.metrics["scheme"] == "temporal"]
    assert set(tmp["target"]) == {"population_2018_2021<-population_2013_2018"}
    assert {MODEL, "ridge", "last_trend"} <= set(tmp["model"])

    # as of 2018: fit on 2013 -> 2018, forecast 2018 -> 2021 for every commune
    trained = train_target(feature_build, "population_2013_2018", config=small_config, params=FAST)
    pred = predict_target(feature_build, trained, origin=2018, horizon_end=2021)
    assert list(pred.columns) == ["zone_code", "target", "origin", "horizon_end", "prediction",
                                  "low_80", "high_80", "low_90", "high_90"]
    assert len(pred) == len(feature_build.identity)
    ok = pred["prediction"].notna()
    assert ok.mean() > 0.99
    p = pred[ok]
    assert (p["low_90"] <= p["low_80"]).all() and (p["low_80"] <= p["prediction"]).all()
    assert (p["prediction"] <= p["high_80"]).all() and (p["high_80"] <= p["high_90"]).all()
    # same seed, same predictions (the fitted model predicts the same again; refitting with the
    # same seed is checked on synthetic data in test_trajectory)
    pd.testing.assert_frame_equal(pred, predict_target(feature_build, trained, 2018, 2021))
    assert FeatureCache.of(feature_build) is FeatureCache.of(feature_build)


def test_feature_cache_design_is_design_matrix_computed_once(feature_build):
    from territoria.models.trajectory import design_matrix
    from territoria.registry import load_registry

    registry = load_registry()
    cache = FeatureCache(feature_build)
    F, meta = cache(2018)
    rows = pd.Index(sorted(feature_build.identity.index)[::7], name="zone_code")
    for select in (True, False):
        X, M = cache.design("population", 2018, registry, rows=rows, select=select)
        X0, M0 = design_matrix(F, meta, feature_build.panel, feature_build.graph, feature_build.identity, registry,
                               "population", 2018, rows=rows, select=select)
        pd.testing.assert_frame_equal(X, X0)
        pd.testing.assert_frame_equal(M, M0)
    assert len(cache._designs) == 1  # one full matrix served both
    # the panel's wide table at an origin is built once for the designs that share it
    from territoria.features.build import zone_cube

    assert cache.cube(2018) is cache.cube(2018)
    pd.testing.assert_frame_equal(cache.cube(2018), zone_cube(feature_build.panel, 2018))
    # once the designs are built, what only builds them is released; the designs at the kept
    # period stay
    cache.design("population", 2021, registry)
    cache.release(keep_period=2021)
    assert not cache._cubes and list(cache._cache) == [2021]
    assert [k[:2] for k in cache._designs] == [("population", 2021)]
    cache.release()
    assert not cache._designs
    # the latest max_designs matrices are kept, the least recently used one goes first
    cache.max_designs = 2
    cache.design("median_income", 2019, registry)
    cache.design("population", 2018, registry)
    cache.design("unemployment_rate", 2018, registry)
    assert [k[:2] for k in cache._designs] == [("population", 2018), ("unemployment_rate", 2018)]


def test_feature_cache_does_not_keep_its_build_alive():
    """The build holds its cache; were the cache to hold the build back, both (a gigabyte of
    frames for all communes) would outlive a run until the next full garbage collection."""
    import gc
    import weakref

    class Build:  # what FeatureCache reads of a FeatureBuild
        features = pd.DataFrame({"x": [1.0]}, index=pd.Index(["01001"], name="zone_code"))
        meta = pd.DataFrame()
        reference_period = 2021

    build = Build()
    cache = FeatureCache.of(build)
    assert FeatureCache.of(build) is cache and cache(2021)[0] is Build.features
    alive = weakref.ref(build)
    gc.disable()
    try:
        del build
        assert alive() is None  # freed by reference counting alone
    finally:
        gc.enable()
    with pytest.raises(ReferenceError, match="freed"):
        cache.fb


def test_a_target_is_prepared_once_per_cache_and_kept_for_the_next_stages(feature_build, small_config):
    """The backtest, the final model and the stability refits of a target read the same
    prepared table and design: made once, the same as a fresh preparation, and a change of
    configuration prepares it again."""
    from territoria.models.backtest import prepare_target
    from territoria.registry import load_registry

    registry = load_registry()
    cache = FeatureCache(feature_build)
    spec = small_config.targets["population_2018_2021"]
    with_below = prepare_target(feature_build, spec, small_config, cache, registry, below=True)
    plain = prepare_target(feature_build, spec, small_config, cache, registry)
    assert with_below.below is not None and plain.below is None
    assert plain.X is with_below.X and plain.table is with_below.table  # not prepared twice
    assert prepare_target(feature_build, spec, small_config, cache, registry) is plain
    fresh = prepare_target(feature_build, spec, small_config, FeatureCache(feature_build), registry)
    pd.testing.assert_frame_equal(plain.X, fresh.X)
    pd.testing.assert_frame_equal(plain.table, fresh.table)
    np.testing.assert_array_equal(plain.groups, fresh.groups)
    other = small_config.model_copy(deep=True)
    other.train_min_population = 1000
    more = prepare_target(feature_build, spec, other, cache, registry)
    assert len(more.table) > len(plain.table)
    # the latest max_targets preparations are kept
    for name in ("median_income_2019_2021", "unemployment_rate_2018_2021"):
        prepare_target(feature_build, small_config.targets[name], small_config, cache, registry)
    assert len(cache._targets) == cache.max_targets
    assert prepare_target(feature_build, spec, small_config, cache, registry) is not plain


def test_final_model_reuses_the_backtest_folds_and_gets_the_same_calibration(feature_build, small_config, backtest):
    """The final model's interval calibration needs out-of-fold predictions on the same
    department folds as the backtest's: reused, they give exactly what refitting the folds gives."""
    oof = backtest_oof(backtest, "population_2018_2021", small_config.cv.groups)
    assert oof is not None and oof.notna().all()
    refit = train_target(feature_build, "population_2018_2021", config=small_config, params=FAST)
    reused = train_target(feature_build, "population_2018_2021", config=small_config, params=FAST, oof=oof)
    pd.testing.assert_frame_equal(refit.oof, reused.oof)
    assert refit.conformal.quantiles_ == reused.conformal.quantiles_
    # predictions that do not cover the folds' zones are not used: the folds are refitted
    partial = train_target(feature_build, "population_2018_2021", config=small_config, params=FAST,
                           oof=oof.iloc[1:] * 0.0)
    pd.testing.assert_frame_equal(refit.oof, partial.oof)
    assert backtest_oof(backtest, "population_2018_2021", "region") is None


@pytest.fixture(scope="module")
def normalised_config(small_config):
    cfg = small_config.model_copy(deep=True)
    cfg.intervals.normalised = True
    return cfg


def test_final_model_reuses_the_fold_models_and_the_spread_model(feature_build, normalised_config):
    """With normalised intervals, the backtest fits the spread model on every zone with an
    out-of-fold prediction, as the final calibration does: the final model takes it, and the
    fold models, instead of refitting them, and gets the same intervals."""
    from territoria.models.backtest import backtest_folds

    name = "unemployment_rate_2018_2021"  # a hurdle model: regressor and classifier per fold
    result = run_backtest(feature_build, [name], config=normalised_config, params=FAST, temporal=False)
    # conf/models.yml leaves the deterioration classifier, which no stage deploys, out of the backtest
    assert not normalised_config.cv.deterioration_classifier
    assert "lightgbm_classifier" not in set(result.metrics["model"]) and not len(result.reliability)
    # the worst-decile label the auditors' error rates read is there without the classifier
    scored = result.predictions[result.predictions["scored"]]
    assert "prob_deteriorating" not in scored and scored["deteriorating"].notna().all()
    assert abs(scored["deteriorating"].astype(bool).mean() - normalised_config.deteriorating_quantile) < 0.01
    assert result.config["deterioration_classifier"] is False
    folds = backtest_folds(result, name, normalised_config.cv.groups)
    assert len(folds.models) == normalised_config.cv.n_splits and folds.spread.index.equals(folds.oof.index)
    assert backtest_folds(result, name, "region") is None
    refit = train_target(feature_build, name, config=normalised_config, params=FAST)
    reused = train_target(feature_build, name, config=normalised_config, params=FAST, folds=folds)
    assert reused.spread_model is folds.spread_model and reused.fold_models == folds.models
    pd.testing.assert_frame_equal(refit.oof, reused.oof)
    assert refit.conformal.quantiles_ == reused.conformal.quantiles_
    assert refit.spread_floor == reused.spread_floor
    data_X = FeatureCache.of(feature_build).design("unemployment_rate", 2018, load_registry(),
                                                   select=False)[0].reindex(columns=refit.columns).iloc[:300]
    # the spread model reads the columns of most gain in the fold models, found again the same
    spread_cols = list(reused.spread_model.feature_names_in_)
    assert len(spread_cols) == min(normalised_config.intervals.spread_features, len(refit.columns))
    assert spread_cols == list(refit.spread_model.feature_names_in_)
    assert spread_cols == [c for c in refit.columns if c in set(spread_cols)]
    np.testing.assert_array_equal(predict_spread(refit.spread_model, data_X, 0.0),
                                  predict_spread(reused.spread_model, data_X, 0.0))
    for a, b in zip(refit.fold_models, reused.fold_models, strict=True):
        np.testing.assert_array_equal(a.predict(data_X), b.predict(data_X))
    # the scored zones' intervals in the backtest use the spreads the final model calibrates on
    p = result.predictions[result.predictions["scored"]]
    assert p["low_80"].notna().all() and (p["high_80"] > p["low_80"]).all()


def test_spread_columns_are_those_the_fold_models_gain_most_on():
    """The spread model reads the columns of most gain (summed over the folds and over both
    parts of a hurdle model), kept in the design's order; all of them when none is dropped."""
    rng = np.random.default_rng(0)
    cols = [f"x{i}" for i in range(8)]
    X = pd.DataFrame(rng.normal(size=(600, 8)), columns=cols)
    y = 3 * X["x5"] + X["x2"] + rng.normal(scale=0.1, size=600)
    zero = (X["x7"] > 0.8).to_numpy()  # the classifier of a hurdle model learns x7
    reg = TrajectoryRegressor(n_estimators=40, early_stopping_rounds=None)
    models = [reg.fit(X, y), HurdleRegressor(regressor=reg).fit(X, y, structural_zero=zero)]
    assert spread_columns(models[:1], cols, 2) == ["x2", "x5"]
    assert spread_columns(models, cols, 3) == ["x2", "x5", "x7"]
    assert spread_columns(models, cols, None) == cols == spread_columns(models, cols, 8)
    with pytest.raises(ValueError, match="7 columns"):
        spread_columns(models, cols[:7], 3)


def test_spread_predictions_read_the_spread_models_columns():
    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(300, 4)), columns=["a", "b", "c", "d"])
    model = TrajectoryRegressor(n_estimators=20, early_stopping_rounds=None).fit(X[["b", "d"]], np.abs(X["d"]))
    np.testing.assert_array_equal(predict_spread(model, X, 0.0), model.predict(X[["b", "d"]]))
    assert (predict_spread(model, X, 0.5) >= 0.5).all()


def test_a_saved_model_loads_with_its_fold_models(feature_build, normalised_config, tmp_path):
    from territoria.errors import DataError
    from territoria.models.persist import load_trained, save_trained

    name = "unemployment_rate_2018_2021"
    trained = train_target(feature_build, name, config=normalised_config, params=FAST)
    X = FeatureCache.of(feature_build).design("unemployment_rate", 2021, load_registry(),
                                              select=False)[0].reindex(columns=trained.columns).iloc[:500]
    save_trained(trained, tmp_path / "m")
    loaded = load_trained(tmp_path / "m")
    assert len(loaded.fold_models) == len(trained.fold_models) == normalised_config.cv.n_splits
    np.testing.assert_array_equal(loaded.model.predict(X), trained.model.predict(X))
    for a, b in zip(trained.fold_models, loaded.fold_models, strict=True):
        np.testing.assert_array_equal(a.predict(X), b.predict(X))
    # saved again with fewer folds: the extra fold files go, the rest still loads
    trained.fold_models = trained.fold_models[:2]
    save_trained(trained, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").glob("fold*")) == [
        "fold1_classifier.txt", "fold1_regressor.txt", "fold2_classifier.txt", "fold2_regressor.txt"]
    assert len(load_trained(tmp_path / "m").fold_models) == 2
    with open(tmp_path / "m" / "fold2_regressor.txt", "a", encoding="utf-8") as fh:
        fh.write("\n")
    with pytest.raises(DataError, match="SHA-256"):
        load_trained(tmp_path / "m")


# --------------------------------------------------------------------------- ridge baseline
def test_ridge_baseline_is_sklearn_ridgecv_on_the_real_design(feature_build):
    from territoria.models.baselines import RidgeBaseline, sklearn_ridge_reference
    from territoria.registry import load_registry

    X, _ = FeatureCache.of(feature_build).design("median_income", 2019, load_registry())
    panel = feature_build.panel
    inc = panel[(panel["measure"] == "median_income")].pivot_table(index="zone_code", columns="period",
                                                                     values="value")
    y = (inc[2021] - inc[2019]).reindex(X.index)
    ok = y.notna().to_numpy()
    X, y = X[ok], y[ok].to_numpy()
    rng = np.random.default_rng(0)
    w = rng.uniform(1.0, 30.0, size=len(y))
    train = rng.random(len(y)) < 0.7
    alpha, reference = sklearn_ridge_reference(X[train], y[train], w[train])
    model = RidgeBaseline().fit(X[train], y[train], sample_weight=w[train])
    assert model.alpha_ == alpha
    expected = reference(X[~train])
    np.testing.assert_allclose(model.predict(X[~train]), expected, rtol=0, atol=1e-8 * np.abs(expected).max())


def test_ridge_baseline_handles_empty_constant_and_gappy_columns_like_sklearn():
    from territoria.models.baselines import RidgeBaseline, sklearn_ridge_reference

    rng = np.random.default_rng(1)
    n = 400
    X = rng.normal(size=(n, 5))
    X[:, 1] = 3.0                        # constant
    X[:, 2] = np.nan                     # empty: imputed with 0, kept
    X[rng.random(n) < 0.3, 3] = np.nan   # gappy: median and a missing indicator
    y = X[:, 0] - 2 * np.nan_to_num(X[:, 3]) + rng.normal(scale=0.3, size=n)
    w = rng.uniform(0.5, 2.0, size=n)
    alpha, reference = sklearn_ridge_reference(X, y, w)
    model = RidgeBaseline().fit(X, y, sample_weight=w)
    assert model.alpha_ == alpha
    Z = rng.normal(size=(50, 5))
    Z[::3, 0] = np.nan                   # missing where training had none: imputed, no indicator
    np.testing.assert_allclose(model.predict(Z), reference(Z), atol=1e-9)
    np.testing.assert_allclose(RidgeBaseline().fit(X, y).predict(Z), sklearn_ridge_reference(X, y, None)[1](Z), atol=1e-9)


def test_map_folds_keeps_the_order_and_gives_a_leftover_fold_every_thread():
    from territoria.models.backtest import map_folds

    assert map_folds(lambda k, n_jobs: (k, n_jobs), [0, 1, 2, 3, 4], 2) == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 2)]
    assert map_folds(lambda k, n_jobs: (k, n_jobs), [0, 1], 1) == [(0, None), (1, None)]


def test_folds_fitted_two_at_a_time_give_the_same_models(feature_build, normalised_config, monkeypatch):
    """With two LightGBM threads on two cores, the folds and the spread model's fits run two
    at a time on one thread each (a fold left over on both): the same predictions, intervals
    and metrics as one fit at a time, and the final model reuses them as before."""
    from territoria.models.backtest import backtest_folds, fold_threads

    if fold_threads({"n_jobs": 2}, normalised_config.cv.n_splits) < 2:
        pytest.skip("one core: the folds are fitted one at a time")
    name = "unemployment_rate_2018_2021"  # a hurdle model: regressor and classifier per fold
    one = run_backtest(feature_build, [name], config=normalised_config, params=FAST, temporal=False)
    two = run_backtest(feature_build, [name], config=normalised_config, params={**FAST, "n_jobs": 2},
                       temporal=False)
    pd.testing.assert_frame_equal(one.predictions, two.predictions)
    pd.testing.assert_frame_equal(one.metrics, two.metrics)
    folds = backtest_folds(two, name, normalised_config.cv.groups)
    # three folds here (hurdle models): two fitted at once on one thread each; the one left over
    # gets both threads, and its hurdle fits its two parts at once, one thread each, as LightGBM
    # saved; all of them forecast later (the stability audit) with the two threads
    for m in folds.models:
        parts = (m.regressor_, m.classifier_)
        assert all("[num_threads: 1]" in part.booster_.model_to_string() for part in parts)
        assert {part.n_jobs for part in parts} == {2}
    import territoria.models.trajectory as trajectory

    built = []
    binned = trajectory.SharedBins.__init__
    monkeypatch.setattr(trajectory.SharedBins, "__init__", lambda self, *a, **k: built.append(1) or binned(self, *a, **k))
    reused = train_target(feature_build, name, config=normalised_config, params={**FAST, "n_jobs": 2}, folds=folds)
    assert reused.fold_models == folds.models  # the final model's calibration reuses them
    assert not built  # and it fits on the cross-validation's bins
    assert "[num_threads: 1]" in reused.model.classifier_.booster_.model_to_string()  # parts at once
    # another number of bins is another binning
    train_target(feature_build, name, config=normalised_config, params={**FAST, "max_bin": 31}, folds=folds)
    assert built == [1]
