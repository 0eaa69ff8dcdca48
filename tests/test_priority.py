"""Priority score, flags and hysteresis on small synthetic tables (mechanics only)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from territoria.errors import DataError
from territoria.models.priority import (
    FlagPolicy, PriorityConfig, flag_priorities, format_history, load_priority_config,
    parse_history, population_factor, priority_table, score_factors, trajectory_component,
    wide_predictions,
)
from territoria.pipelines.prioritise import csv_safe

SIGNS = {"unemployment_rate": 1, "median_income": -1}


def _config(**flags) -> PriorityConfig:
    cfg = load_priority_config()
    cfg = cfg.model_copy(deep=True)
    cfg.trajectory.measures = {"unemployment_rate": 0.5, "median_income": 0.5}
    for k, v in flags.items():
        setattr(cfg.flags, k, v)
    return cfg


def _inputs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    zones = pd.Index([f"{i:05d}" for i in range(n)], name="zone_code")
    index = pd.DataFrame({"deprivation_index": rng.uniform(0, 100, n)}, index=zones)
    rows = []
    for m, scale in (("unemployment_rate", 1.0), ("median_income", 300.0)):
        pred = rng.normal(0, scale, n)
        half = rng.uniform(0.2, 2.0, n) * scale
        rows.append(pd.DataFrame({"zone_code": zones, "target": m, "origin": 2021, "horizon_end": 2024,
                                  "prediction": pred, "low_80": pred - half, "high_80": pred + half,
                                  "low_90": pred - 1.3 * half, "high_90": pred + 1.3 * half}))
    preds = pd.concat(rows, ignore_index=True)
    ident = pd.DataFrame({"zone_name": [f"Z{i}" for i in range(n)], "departement": np.repeat(["01", "02"], n // 2),
                          "epci": np.repeat(["e1", "e2", "e3", "e4"], n // 4)}, index=zones)
    pop = pd.Series(rng.integers(20, 50000, n).astype(float), index=zones)
    return index, preds, ident, pop


def test_score_is_linear_in_each_model_output_so_factors_are_exact():
    index, preds, ident, pop = _inputs()
    cfg = _config()
    table, norms = priority_table(index, preds, ident, pop, cfg, SIGNS)
    # nudging one model's prediction by d moves the score by factor * d (within the clip range)
    comp = table.filter(regex=r"^(z_|certainty_)")
    factors = score_factors(comp, table["population_factor"], cfg, norms, SIGNS)
    d = 1e-3
    bumped = preds.copy()
    sel = bumped["target"] == "median_income"
    bumped.loc[sel, "prediction"] += d
    t2, _ = priority_table(index, bumped, ident, pop, cfg, SIGNS, norms=norms)
    inside = table["z_median_income"].abs() < cfg.trajectory.z_clip - 0.01
    delta = (t2["priority_score"] - table["priority_score"])[inside]
    assert np.allclose(delta, factors["median_income"][inside] * d, rtol=1e-6, atol=1e-9)
    # a fall of income is a worsening: a higher predicted income lowers the score
    assert (factors["median_income"] <= 0).all() and (factors["unemployment_rate"] >= 0).all()


def test_ranks_intervals_and_population_factor():
    index, preds, ident, pop = _inputs()
    cfg = _config()
    t, _ = priority_table(index, preds, ident, pop, cfg, SIGNS)
    assert (t["priority_score_low"] <= t["priority_score"] + 1e-9).all()
    assert (t["priority_score"] <= t["priority_score_high"] + 1e-9).all()
    assert (t["priority_rank_best"] <= t["priority_rank"]).all() and (t["priority_rank"] <= t["priority_rank_worst"]).all()
    assert t["priority_rank"].min() == 1 and t["priority_rank"].max() == len(t)
    assert t.groupby("departement")["priority_rank_department"].max().tolist() == [100, 100]
    f = population_factor(pd.Series([10.0, 500.0, 2000.0, 1e6]), cfg.population)
    assert f.iloc[0] == cfg.population.min_factor and f.iloc[2] == 1.0 and f.iloc[3] == 1.0
    assert f.is_monotonic_increasing


def test_uncertainty_pulls_a_forecast_towards_the_median():
    zones = pd.Index(["a", "b", "c", "d"])
    preds = pd.DataFrame({"zone_code": zones.repeat(1), "target": "unemployment_rate", "horizon_end": 2024,
                          "prediction": [2.0, 2.0, 0.0, -1.0],
                          "low_80": [1.9, -2.0, -0.1, -1.1], "high_80": [2.1, 6.0, 0.1, -0.9]})
    wide = wide_predictions(preds, ["unemployment_rate"])
    cfg = _config()
    cfg.trajectory.measures = {"unemployment_rate": 1.0}
    norms = {"unemployment_rate": {"median": 0.0, "iqr": 1.0}}
    comp = trajectory_component(wide, cfg.trajectory, norms, {"unemployment_rate": 1})
    # same forecast, wider interval: a smaller trajectory term
    assert comp.loc["a", "trajectory_T"] > comp.loc["b", "trajectory_T"] > 0
    assert comp.loc["c", "trajectory_T"] == 0


def _table(scores):
    t = pd.DataFrame({"priority_score": scores}, index=pd.Index([f"z{i}" for i in range(len(scores))]))
    t["priority_rank"] = t["priority_score"].rank(ascending=False, method="min")
    return t


def test_hysteresis_keeps_a_flagged_zone_until_it_clearly_exits():
    policy = FlagPolicy(top_share=0.10, exit_share=0.20, cumulated=False)
    n = 100
    first = _table(np.arange(n, 0, -1.0))  # z0 best ... z99
    f1 = flag_priorities(first, None, policy, 2018)
    assert f1["priority_flag"].sum() == 10 and f1.loc["z9", "priority_flag"]
    prev = f1.reset_index(names="zone_code")[["zone_code", "flag_history"]]
    # z9 slips to rank 15 (inside the exit band), z8 to rank 30 (clearly out)
    scores = np.arange(n, 0, -1.0)
    scores[9], scores[8] = 85.5, 70.5
    f2 = flag_priorities(_table(scores), None, policy, 2021, previous=prev)
    assert f2.loc["z9", "priority_flag"] and f2.loc["z9", "flag_status"] == "retained"
    assert not f2.loc["z8", "priority_flag"] and f2.loc["z8", "flag_status"] == "exited"
    assert f2.loc["z0", "flag_status"] == "continuing"
    newcomers = f2.index[f2["flag_status"] == "new"]
    assert len(newcomers) == 2  # ranks 9 and 10 freed by z8 and z9
    assert parse_history(f2.loc["z9", "flag_history"]) == {2018: True, 2021: True}
    # re-running the same period with its own output is idempotent
    again = flag_priorities(_table(scores), None, policy, 2021,
                            previous=f2.reset_index(names="zone_code")[["zone_code", "flag_history"]])
    pd.testing.assert_frame_equal(again, f2)
    # without hysteresis z9 would have dropped out
    f_none = flag_priorities(_table(scores), None, policy, 2021)
    assert not f_none.loc["z9", "priority_flag"]


def test_cumulated_burdens_flag_outside_the_top_share():
    policy = FlagPolicy(top_share=0.05, exit_share=0.10, cumulated=True)
    t = _table(np.arange(40, 0, -1.0))
    burdens = pd.Series(False, index=t.index)
    burdens["z30"] = True
    f = flag_priorities(t, burdens, policy, 2021)
    assert f.loc["z30", "priority_flag"] and "domains" in f.loc["z30", "flag_reason"]
    assert f["priority_flag"].sum() == 3


def test_history_round_trip_and_bad_policy(tmp_path):
    h = {2021: False, 2018: True}
    assert format_history(h) == "2018:1;2021:0" and parse_history(format_history(h)) == h
    assert parse_history(None) == {} and parse_history("garbage") == {}
    bad = tmp_path / "priority.yml"
    bad.write_text("trajectory: {measures: {population: 1}}\nflags: {top_share: 0.2, exit_share: 0.1}\n")
    with pytest.raises(DataError, match="exit_share"):
        load_priority_config(bad)


def test_csv_cells_that_would_run_as_formulas_are_escaped():
    df = pd.DataFrame({"zone_name": ["=HYPERLINK(\"x\")", "Denain", "+33", "@SUM(A1)"], "n": [1, 2, 3, 4]})
    out = csv_safe(df)
    assert out["zone_name"].tolist() == ["'=HYPERLINK(\"x\")", "Denain", "'+33", "'@SUM(A1)"]
    assert out["n"].tolist() == [1, 2, 3, 4]
