"""The training stage end to end on the real feature build: index, forecasts, MLflow champion."""

import numpy as np
import pandas as pd
import pytest

from territoria.models.targets import load_model_config
from territoria.models.tracking import load_champion
from territoria.pipelines.train import run_train, training_specs


def test_training_targets_respect_as_of():
    config = load_model_config()
    as_2018 = {s.measure: (s.origin, s.end) for s in training_specs(config, 2018)}
    # as of 2018: income trained on 2016 -> 2018, population on 2013 -> 2018, nothing later
    assert as_2018["median_income"] == (2016, 2018)
    assert as_2018["population"] == (2013, 2018)
    assert all(end <= 2018 for _, end in as_2018.values())
    as_2021 = {s.measure: (s.origin, s.end) for s in training_specs(config, 2021)}
    assert as_2021["unemployment_rate"] == (2018, 2021)


@pytest.fixture(scope="module")
def trained(feature_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    return out, run_train(feature_build, out, backtest=False, measures=["population"])


def test_forecasts_for_every_commune_with_nested_intervals(trained, feature_build):
    out, res = trained
    pred = pd.read_parquet(out / "predictions.parquet")
    assert list(pred.columns) == [
        "zone_code", "target", "origin", "horizon_end", "prediction",
        "low_80", "high_80", "low_90", "high_90",
    ]
    assert set(pred.zone_code) == set(feature_build.features.zone_code)
    assert (pred.origin == 2021).all() and (pred.horizon_end == 2024).all()
    ok = pred.dropna(subset=["prediction"])
    assert len(ok) > 0.95 * len(pred)
    assert (ok.low_90 <= ok.low_80 + 1e-9).all() and (ok.low_80 <= ok.prediction + 1e-9).all()
    assert (ok.prediction <= ok.high_80 + 1e-9).all() and (ok.high_80 <= ok.high_90 + 1e-9).all()


def test_index_written_with_domains_and_weights(trained):
    out, res = trained
    index = pd.read_parquet(out / "index.parquet")
    assert {"zone_code", "deprivation_index", "index_rank", "index_decile", "domain_economic"} <= set(index.columns)
    assert index.set_index("zone_code").loc["59172", "index_decile"] == 10  # Denain
    weights = pd.read_csv(out / "index_weights.csv")
    assert len(weights) > 0


def test_champion_registered_and_loadable(trained, feature_build):
    from territoria.models.backtest import FeatureCache
    from territoria.pipelines.train import _design_rows

    out, res = trained
    assert list(res.run_ids) == ["population_2018_2021"]
    model = res.models["population_2018_2021"]
    X = _design_rows(feature_build, model, FeatureCache.of(feature_build))
    champion = load_champion("territoria-population", out_dir=out)
    np.testing.assert_allclose(champion.predict(X), model.booster().predict(X.to_numpy(float)), rtol=1e-9)


def test_run_carries_shap_of_a_seeded_sample_of_training_zones(trained, feature_build, tmp_path):
    from mlflow.tracking import MlflowClient

    from territoria.models.backtest import FeatureCache
    from territoria.models.tracking import default_tracking_uri
    from territoria.pipelines.train import SHAP_LOG_ZONES, _design_rows

    out, res = trained
    model = res.models["population_2018_2021"]
    client = MlflowClient(tracking_uri=default_tracking_uri(out))
    path = client.download_artifacts(res.run_ids["population_2018_2021"], "shap/shap_values.parquet", str(tmp_path))
    shap = pd.read_parquet(path).set_index("zone_code")
    training_zones = set(model.oof["zone_code"])
    assert len(training_zones) > SHAP_LOG_ZONES
    assert len(shap) == SHAP_LOG_ZONES and shap.index.is_unique and set(shap.index) <= training_zones
    assert shap.index.is_monotonic_increasing
    assert list(shap.columns) == [*model.columns, "base_value"]
    # the logged contributions of each sampled zone add up to the champion's prediction
    X = _design_rows(feature_build, model, FeatureCache.of(feature_build)).loc[shap.index]
    total = shap.sum(axis=1)
    np.testing.assert_allclose(total, model.booster().predict(X.to_numpy(float)), rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- as of 2018
@pytest.fixture(scope="module")
def trained_as_of_2018(feature_build, fast_models_conf, tmp_path_factory):
    """A build as of 2018 (panel up to 2018, features at 2018) and the training stage on it.

    Derived from the session's full build: the data ``run_build_features(as_of=2018)`` is meant
    to hold, for the cost of one feature matrix instead of a second feature stage.
    """
    import dataclasses

    fb = dataclasses.replace(feature_build, panel=feature_build.panel[feature_build.panel["period"] <= 2018],
                             reference_period=2018, out_dir=None)
    features, meta = fb.features_at(2018)
    fb = dataclasses.replace(fb, features=features, meta=meta)
    out = tmp_path_factory.mktemp("train_2018")
    return fb, out, run_train(fb, out, as_of=2018, backtest=False, measures=["population"],
                              config=load_model_config(fast_models_conf))


def test_as_of_trains_on_targets_ending_by_then_and_forecasts_from_it(trained_as_of_2018):
    from territoria.models.targets import change_target

    fb, out, res = trained_as_of_2018
    assert fb.panel["period"].max() == 2018
    # the latest population transition that ended by 2018, nothing later
    assert list(res.run_ids) == ["population_2013_2018"]
    spec = res.models["population_2013_2018"].spec
    assert (spec.origin, spec.end) == (2013, 2018)
    oof = res.models["population_2013_2018"].oof.set_index("zone_code")
    observed = change_target(fb.panel, "population", 2013, 2018, relative=True)
    np.testing.assert_allclose(oof["y"], observed.reindex(oof.index), rtol=1e-12)
    # forecasts from 2018 over the trained horizon (five years), for every commune
    pred = pd.read_parquet(out / "predictions.parquet")
    assert set(pred.target) == {"population"}
    assert (pred.origin == 2018).all() and (pred.horizon_end == 2018 + spec.horizon).all()
    assert set(pred.zone_code) == set(fb.features.zone_code)
    assert pred["prediction"].notna().mean() > 0.95
