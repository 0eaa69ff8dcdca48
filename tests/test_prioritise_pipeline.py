"""The prioritisation stage on all communes of the bundled data (small, fast models).

The session's end-to-end run (``main_run`` in conftest: every stage of ``territoria run``
with small LightGBM models) is read here as a user would read its outputs.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from territoria.cli import app
from territoria.pipelines.explain_zone import read_priorities
from territoria.pipelines.prioritise import load_engine, run_scenario

CONTRACT = [
    "zone_code", "zone_name", "level", "department", "epci", "population", "deprivation_index",
    "predicted_change", "predicted_change_low", "predicted_change_high", "priority_score",
    "priority_rank", "priority_flag", "cluster_id", "n_vulnerable_domains", "top_levers", "programmes",
]


@pytest.fixture(scope="module")
def run(main_run):
    return main_run.run_json.parent, main_run.priorities


def test_priorities_cover_every_commune_with_the_contract_columns(run, feature_build):
    out, res = run
    pri = read_priorities(out)
    assert len(pri) == len(feature_build.identity) and pri["zone_code"].is_unique
    assert set(pri["zone_code"]) == set(feature_build.identity.index)
    missing = [c for c in CONTRACT if c not in pri.columns]
    assert not missing, missing
    assert [c for c in pri.columns if c.startswith("domain_")], "domain scores missing"
    scored = pri[pri["priority_score"].notna()]
    assert len(scored) > 0.99 * len(pri)
    assert scored["priority_rank"].is_monotonic_increasing  # sorted by rank
    flagged = pri["priority_flag"].astype(bool)
    assert 0.09 * len(scored) < flagged.sum() < 0.2 * len(scored)
    # every flagged zone says why; zones with a top lever text exist in both languages
    assert (pri.loc[flagged, "flag_reason"].fillna("") != "").all()
    assert pri["top_levers"].str.contains("le score de", na=False).mean() > 0.5  # French by default
    assert pri["top_levers_en"].str.contains("the score by", na=False).mean() > 0.5
    g = gpd.read_file(out / "priorities.gpkg", layer="priorities")
    assert len(g) == len(pri) and g.crs.to_epsg() == 4326
    # the bundled polygons lack 8 communes (see data/SOURCES.md): every other one is drawn
    assert g.geometry.notna().sum() >= len(pri) - 8


def test_shap_contributions_plus_base_equal_the_model_output_for_every_zone(run):
    out, res = run
    ex = pd.read_parquet(out / "explanations.parquet")
    assert set(ex.columns) == {"zone_code", "model", "feature", "domain", "is_lever", "feature_value",
                               "contribution", "base_value", "model_output"}
    g = ex.groupby(["zone_code", "model"])
    total = g["contribution"].sum() + g["base_value"].first()
    assert np.abs(total - g["model_output"].first()).max() < 1e-6
    models = set(ex["model"])
    assert {"unemployment_rate", "median_income", "population", "deprivation_index"} <= models
    # the explained output is the forecast written for the zone
    pri = res.priorities.set_index("zone_code")
    inc = g["model_output"].first().xs("median_income", level="model")
    assert np.allclose(inc.to_numpy(), pri["pred_median_income"].reindex(inc.index).to_numpy())
    idx = g["model_output"].first().xs("deprivation_index", level="model")
    assert np.allclose(idx.to_numpy(), pri["deprivation_index"].reindex(idx.index).to_numpy())
    # domains and lever flags come from the registry
    lever_rows = ex[ex["is_lever"] & (ex["model"] != "deprivation_index")]
    from territoria.registry import DOMAINS

    assert len(lever_rows) and set(lever_rows["domain"]) <= set(DOMAINS)


def test_the_baseline_reuses_the_training_stage_forecasts_only_where_they_fit(run, feature_build):
    out, res = run
    predicted = load_engine(feature_build, out).baseline()
    written = pd.read_parquet(out / "predictions.parquet")
    # in any row order, the written forecasts give the same scoring
    shuffled = written.sample(frac=1.0, random_state=0)
    reused = load_engine(feature_build, out).baseline(forecasts=shuffled)
    pd.testing.assert_frame_equal(reused.predictions, predicted.predictions, check_dtype=False)
    pd.testing.assert_frame_equal(reused.table, predicted.table)
    # they are read, not predicted again: a shifted forecast shows through
    income = written["target"] == "median_income"
    shifted = written.assign(prediction=written["prediction"] + np.where(income, 100.0, 0.0))
    p = load_engine(feature_build, out).baseline(forecasts=shifted).predictions
    moved = p["prediction"].to_numpy() - predicted.predictions["prediction"].to_numpy()
    assert np.allclose(moved[(p["target"] == "median_income").to_numpy()], 100.0)
    assert np.allclose(moved[(p["target"] != "median_income").to_numpy()], 0.0)
    # forecasts from another origin, or missing a zone, are not used: those are predicted
    other = shifted.copy()
    other.loc[income, "origin"] -= 1
    again = load_engine(feature_build, out).baseline(forecasts=other)
    pd.testing.assert_frame_equal(again.predictions, predicted.predictions, check_dtype=False)
    partial = shifted.drop(index=shifted.index[income][0])
    again = load_engine(feature_build, out).baseline(forecasts=partial)
    pd.testing.assert_frame_equal(again.predictions, predicted.predictions, check_dtype=False)


def test_clusters_are_contiguous_and_gaps_match_programmes(run, feature_build):
    out, res = run
    pri = res.priorities.set_index("zone_code")
    graph = feature_build.graph
    in_cluster = pri["cluster_id"].dropna()
    assert len(in_cluster) and pri.loc[in_cluster.index, "priority_flag"].all()
    adj = graph.adjacency.reset_index()
    adj.columns = ["focal", "neighbor", "weight"]
    adj = adj[adj["weight"] > 0]
    same = adj["focal"].map(pri["cluster_id"]).eq(adj["neighbor"].map(pri["cluster_id"]))
    linked = set(adj.loc[same & adj["focal"].isin(in_cluster.index), "focal"])
    assert linked == set(in_cluster.index)  # every member touches another member
    summary = pd.read_csv(out / "clusters.csv")
    assert summary["crosses_department"].any() or summary["crosses_epci"].any()
    gaps = pd.read_csv(out / "coverage_gaps.csv", dtype={"zone_code": str})
    uncovered = gaps[gaps["gap_kind"] == "priority_not_covered"]["zone_code"]
    assert (pri.loc[uncovered, "programmes"].fillna("") == "").all()
    assert pri.loc[uncovered, "priority_flag"].all()


def test_explain_prints_denain_in_french_and_english(run, capsys):
    out, _ = run
    from typer.testing import CliRunner

    fr = CliRunner().invoke(app, ["explain", "59172", "--out", str(out)])
    assert fr.exit_code == 0, fr.output
    assert "Denain" in fr.output and "Rang national" in fr.output and "Principaux leviers" in fr.output
    en = CliRunner().invoke(app, ["explain", "59172", "--out", str(out), "--lang", "en"])
    assert en.exit_code == 0 and "National rank" in en.output and "Top levers" in en.output
    bad = CliRunner().invoke(app, ["explain", "99999", "--out", str(out)])
    assert bad.exit_code != 0


def test_scenario_moves_predictions_the_way_the_model_implies(run, feature_build, tmp_path):
    out, res = run
    engine = load_engine(feature_build, out)
    # the reloaded models (LightGBM text + JSON) reproduce the run's forecasts exactly
    base = engine.baseline()
    pri = res.priorities.set_index("zone_code")
    assert np.allclose(base.table["priority_score"].reindex(pri.index), pri["priority_score"], equal_nan=True)
    from territoria.models.scenarios import load_scenario
    from territoria.registry import load_registry

    f = tmp_path / "s.yml"
    f.write_text("name: unemployment_59\nzones: {departements: ['59']}\n"
                 "changes:\n  - {indicator: unemployment_rate, add: -3}\n", encoding="utf-8")
    sc = load_scenario(f, load_registry(), feature_build.identity)
    table = run_scenario(engine, sc, out)
    inside = table[table["in_scenario"]]
    assert len(inside) == int((feature_build.identity["departement"] == "59").sum())
    assert (out / "scenarios" / "unemployment_59.csv").exists()
    # the direction the model implies: the unemployment model on the design matrix with only
    # the level lowered by 3 points, everything else as in the baseline
    X, M = base.designs["unemployment_rate"]
    level = M.loc[M["transform"] == "level", "feature"]
    level = [c for c in level if M.set_index("feature").loc[c, "indicator"] == "unemployment_rate"]
    Xs = X.loc[inside["zone_code"]].copy()
    Xs[level] -= 3
    model = engine.trained["unemployment_rate"].model
    implied = model.predict(Xs) - model.predict(X.loc[inside["zone_code"]])
    moved = inside["pred_unemployment_rate_after"] - inside["pred_unemployment_rate_before"]
    agree = np.sign(moved.to_numpy()) == np.sign(implied)
    assert agree[np.abs(implied) > 1e-6].mean() > 0.8
    # a lower unemployment level lowers the composite index of the zones
    assert (inside["deprivation_index_after"] <= inside["deprivation_index_before"] + 1e-9).mean() > 0.95


def test_counterfactual_moves_levers_within_bounds_until_the_zone_leaves(run, feature_build):
    out, res = run
    engine = load_engine(feature_build, out)
    base = engine.baseline()
    pri = res.priorities
    zone = pri.loc[pri["priority_flag"].astype(bool) & ~pri["flag_cumulated"].astype(bool), "zone_code"].iloc[-1]
    cf = engine.counterfactual(base, zone)
    assert cf["score"] >= cf["threshold"]  # a listed zone starts above the threshold
    moves = cf["moves"]
    assert len(moves)
    reg = engine.registry
    for r in moves.itertuples():
        ind = reg.indicator(r.indicator)
        assert ind.lever and not ind.third_party
        assert np.sign(r.change) == -ind.sign  # always in the improving direction
        if ind.unit.startswith("%"):
            assert 0 <= r.target <= 100
    if cf["leaves_list"]:
        assert cf["final_score"] < cf["threshold"]
    assert cf["final_score"] < cf["score"]


def test_a_bad_scenario_names_the_problem(feature_build, tmp_path):
    from territoria.errors import DataError
    from territoria.models.scenarios import load_scenario
    from territoria.registry import load_registry

    reg = load_registry()
    cases = {
        "unknown zone": ("zones: {codes: ['00000']}\nchanges: [{indicator: vacancy_rate, add: -2}]", "unknown zone"),
        "context": ("zones: {all: true}\nchanges: [{indicator: median_income, add: 100}]", "not a lever"),
        "unknown indicator": ("zones: {all: true}\nchanges: [{indicator: nope, set: 1}]", "unknown indicator"),
        "two ops": ("zones: {all: true}\nchanges: [{indicator: vacancy_rate, add: 1, set: 2}]", "exactly one"),
        "no zones": ("zones: {}\nchanges: [{indicator: vacancy_rate, add: 1}]", "select zones"),
    }
    for name, (text, message) in cases.items():
        f = tmp_path / f"{name.replace(' ', '_')}.yml"
        f.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=message):
            load_scenario(f, reg, feature_build.identity)


def test_interaction_hints_order_features_as_shap_does(run):
    """The vectorised interaction heuristic ranks partners as
    ``shap.utils.approximate_interactions`` does, on the run's models and designs."""
    import shap

    from territoria.models.explain import approximate_interactions, interaction_scores, tree_contributions

    engine = run[1].engine
    scored = engine.baseline()
    rng = np.random.default_rng(0)
    for measure, trained in sorted(engine.trained.items()):
        X = scored.designs[measure][0]
        rows = np.sort(rng.choice(len(X), size=1000, replace=False))
        phi = tree_contributions(trained.model, X.iloc[rows])[0]
        cols = [c for c in phi.columns if c in X.columns]
        phi_a, X_a = phi[cols].to_numpy(float), X.iloc[rows][cols].to_numpy(float)
        for i in np.argsort(-np.abs(phi_a).mean(axis=0))[:3]:
            scores = interaction_scores(int(i), phi_a, X_a)
            ours = approximate_interactions(int(i), phi_a, X_a)
            theirs = shap.utils.approximate_interactions(int(i), phi_a, X_a)
            # the same leading scores in the same order: features tied on a score (equal
            # values or missing rows, e.g. a file's secret cells) may come in any order in shap's
            np.testing.assert_allclose(scores[theirs[:10]], scores[ours[:10]], rtol=1e-9,
                                       err_msg=f"{measure}: {cols[i]}")


def test_every_model_has_its_shap_figures_drawn_by_the_worker(run):
    """The SHAP summary and three dependence plots of each model, drawn by a worker process
    while the stage went on, are in the run's ``explain`` folder; the plotted features (the
    top 3 of a 2,000-zone sample) are among the 10 most important of all zones."""
    out, res = run
    assert res.timings["workers_wait"] >= 0
    for measure in res.engine.trained:
        imp = pd.read_csv(out / "explain" / f"importance_{measure}.csv")
        assert (out / "explain" / f"shap_summary_{measure}.png").stat().st_size > 10_000
        dependence = sorted(p.name for p in (out / "explain").glob(f"shap_dependence_{measure}_*.png"))
        assert len(dependence) == 3, dependence
        top = imp.sort_values("mean_abs_contribution", ascending=False)["feature"].head(10)
        assert {f"shap_dependence_{measure}_{f}.png" for f in top} >= set(dependence)
