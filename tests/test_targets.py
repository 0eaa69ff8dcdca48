"""Trajectory targets, their configuration, and the no-leakage rule on the real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from territoria.errors import DataError
from territoria.models.backtest import FeatureCache
from territoria.models.targets import (
    ModelConfig,
    change_target,
    deteriorating,
    load_model_config,
    repeated_survey_mask,
    sample_weights,
    target_table,
)
from territoria.models.trajectory import design_matrix
from territoria.registry import load_registry


def _panel(rows):
    df = pd.DataFrame(rows, columns=["zone_code", "measure", "period", "value"])
    df["level"] = "commune"
    return df


def test_change_target_absolute_and_relative():
    p = _panel([("a", "population", 2018, 100.0), ("a", "population", 2021, 110.0),
                ("b", "population", 2018, 200.0), ("b", "population", 2021, 190.0),
                ("c", "population", 2021, 50.0)])
    assert change_target(p, "population", 2018, 2021).to_dict() == {"a": 10.0, "b": -10.0}
    rel = change_target(p, "population", 2018, 2021, relative=True)
    assert rel.round(6).to_dict() == {"a": 10.0, "b": -5.0}  # c has no 2018 value: left out
    with pytest.raises(DataError, match="no vintage 2015"):
        change_target(p, "population", 2015, 2021)


def test_deteriorating_follows_the_direction():
    v = pd.Series(np.arange(20.0), index=[f"z{i}" for i in range(20)])
    worse_up = deteriorating(v, sign=1, quantile=0.1)
    worse_down = deteriorating(v, sign=-1, quantile=0.1)
    assert worse_up[worse_up].index.tolist() == ["z18", "z19"]
    assert worse_down[worse_down].index.tolist() == ["z0", "z1"]


def test_repeated_survey_mask_needs_both_rates_unchanged():
    rows = []
    for z, (u0, u1, a0, a1) in {"same": (10, 10.05, 70, 70.1), "moved": (10, 8, 70, 71),
                                "half": (10, 10.0, 70, 72)}.items():
        rows += [(z, "unemployment_rate", 2018, u0), (z, "unemployment_rate", 2021, u1),
                 (z, "activity_rate", 2018, a0), (z, "activity_rate", 2021, a1)]
    m = repeated_survey_mask(_panel(rows), 2018, 2021, tolerance=0.15)
    assert m.to_dict() == {"half": False, "moved": False, "same": True}


def test_sample_weights():
    pop = pd.Series([100.0, 10000.0])
    assert sample_weights(pop).tolist() == [10.0, 100.0]
    assert sample_weights(pop, "none").tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        sample_weights(pop, "cube")


def test_model_config_is_valid_and_has_the_key_targets():
    cfg = load_model_config()
    keys = {s.name for s in cfg.key_targets()}
    assert keys == {"unemployment_rate_2018_2021", "median_income_2019_2021", "population_2018_2021"}
    assert cfg.targets["population_2018_2021"].relative
    assert all(s.min_population == cfg.min_population for s in cfg.targets.values())
    pairs = {(p.fit, p.score) for p in cfg.temporal_backtests}
    assert ("population_2013_2018", "population_2018_2021") in pairs


def test_model_config_rejects_a_backtest_that_overlaps(tmp_path):
    doc = {"targets": {"a": {"measure": "x", "origin": 2016, "end": 2019},
                       "b": {"measure": "x", "origin": 2018, "end": 2021}},
           "temporal_backtests": [{"fit": "a", "score": "b"}]}
    path = tmp_path / "models.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(DataError, match="must end at or before"):
        load_model_config(path)
    with pytest.raises(ValueError):
        ModelConfig.model_validate({"targets": {"c": {"measure": "x", "origin": 2021, "end": 2018}}})


# --------------------------------------------------------------------------- real data
def test_key_targets_on_the_real_panel(feature_build):
    cfg = load_model_config()
    panel = feature_build.panel
    for spec in cfg.key_targets():
        t = target_table(panel, spec, cfg)
        assert len(t) > 4000, spec.name
        assert (t["population"] >= 2000).all()
        assert t["deteriorating"].mean() == pytest.approx(0.10, abs=0.01)
    # census unemployment: both vintages exist, from two editions of the comparateur
    src = panel[(panel["measure"] == "unemployment_rate") & (panel["level"] == "commune")]
    assert src.groupby("period")["source"].first().to_dict() == {2018: "comparateur", 2021: "comparateur_2024"}
    # the rolling-survey artefact: many small communes repeat their 2018 rates, large ones never
    unemp = target_table(panel, cfg.targets["unemployment_rate_2018_2021"], cfg)
    small = unemp["population"] < 10000
    assert 0.3 < unemp.loc[small, "repeated_survey"].mean() < 0.6
    assert unemp.loc[unemp["population"] >= 20000, "repeated_survey"].mean() < 0.02
    dropped = target_table(panel, cfg.targets["unemployment_rate_2018_2021_resurveyed"], cfg)
    assert not dropped["repeated_survey"].any() and len(dropped) < len(unemp)


def test_no_feature_dated_after_the_origin(feature_build):
    """The no-leakage rule: every column of a target's design matrix reads data <= origin."""
    cfg = load_model_config()
    spec = cfg.targets["unemployment_rate_2018_2021"]
    features, meta = FeatureCache.of(feature_build)(spec.origin)
    assert (features["reference_period"] == spec.origin).all()
    X, M = design_matrix(features, meta, feature_build.panel, feature_build.graph,
                         feature_build.identity, load_registry(), spec.measure, spec.origin)
    assert list(M["feature"]) == list(X.columns)
    assert M["period_to"].notna().all(), M.loc[M["period_to"].isna(), "feature"].tolist()
    assert (M["period_to"] <= spec.origin).all(), M.loc[M["period_to"] > spec.origin, "feature"].tolist()
    # the target's end vintage is in the panel, yet nothing of it reaches the features
    assert spec.end in set(feature_build.panel.loc[feature_build.panel["measure"] == spec.measure, "period"])


def test_history_of_every_target_is_dated_at_or_before_its_origin(feature_build):
    """The panel history of every configured target (cheap: no feature matrix rebuilt)."""
    from territoria.models.trajectory import history_features

    fb = feature_build
    by_origin = {s.origin: s for s in load_model_config().targets.values()}  # one per origin
    for origin, spec in sorted(by_origin.items()):
        X, M = history_features(fb.panel, spec.measure, origin, fb.graph, fb.identity, load_registry())
        assert (M["period_to"] <= origin).all(), spec.name
        assert list(M["feature"]) == list(X.columns)
