"""The IRIS level (``territoria run --level iris``) on every IRIS of the bundled data, with
small LightGBM models (accuracy is reported by the run's metrics, not asserted here)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from territoria.cli import app
from territoria.errors import DataError
from territoria.features.iris import COMMUNE_PREFIX, iris_design
from territoria.paths import conf_dir
from territoria.pipelines.iris import (
    IrisFeatures, cross_validate, iris_target, load_iris_config, priority_table, run_iris, transitions_upto,
)
from territoria.pipelines.iris_report import read_iris_contours, write_iris_map


@pytest.fixture(scope="module")
def fast_iris_conf(tmp_path_factory):
    doc = yaml.safe_load((conf_dir() / "iris.yml").read_text(encoding="utf-8"))
    doc["model"].update(n_estimators=40, learning_rate=0.15)
    doc["n_splits"] = 3
    path = tmp_path_factory.mktemp("conf") / "iris_fast.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def iris_run(feature_build, fast_iris_conf, tmp_path_factory):
    out = tmp_path_factory.mktemp("iris_run")
    res = run_iris(feature_build, out, config=fast_iris_conf, lang="fr")
    return res


@pytest.fixture(scope="module")
def iris_features(feature_build, fast_iris_conf):
    return IrisFeatures(feature_build, load_iris_config(fast_iris_conf))


def test_universe_is_the_iris_of_divided_communes(iris_features, feature_build):
    ident = iris_features.identity
    assert len(ident) > 15_000 and ident["zone_code"].is_unique
    assert ident["zone_code"].str.fullmatch(r"\d[\dAB]\d{7}").all()
    assert not ident["zone_code"].str.endswith("0000").any()  # undivided communes stay communes
    assert ident["parent_commune"].isin(feature_build.identity.index).all()
    denain = ident[ident["parent_commune"] == "59172"]
    assert len(denain) >= 5 and denain["zone_name"].str.startswith("Denain – IRIS").all()
    assert (denain["departement"] == "59").all()
    # Paris IRIS are coded by arrondissement and belong to the commune of Paris
    paris = ident[ident["zone_code"].str.startswith("751")]
    assert (paris["parent_commune"] == "75056").all()
    assert paris.loc["751135013", "zone_name"] == "Paris (75113) – IRIS 5013"


def test_features_at_an_origin_use_no_later_data(iris_features):
    F, M = iris_features(2018)
    assert (M["period_to"].dropna() <= 2018).all()
    assert "declared_poverty_rate" not in F.columns  # Filosofi IRIS 2021 is after 2018
    assert {"caf_rsa_share", "caf_rsa_share__chg", "caf_rsa_share__gap_commune"} <= set(F.columns)
    assert any(c.startswith(COMMUNE_PREFIX) for c in F.columns)
    # the gap to the commune's median IRIS is zero at the median, by construction
    f = F.set_index("zone_code")
    gap = f["caf_rsa_share__gap_commune"]
    med = f["caf_rsa_share"].groupby(iris_features.identity["parent_commune"]).transform("median")
    assert np.allclose(gap.dropna(), (f["caf_rsa_share"] - med).dropna())
    # the commune context is the parent commune's own feature
    com = iris_features.fb.features_at(2018)[0].set_index("zone_code")
    code = iris_features.identity.index[0]
    parent = iris_features.identity.at[code, "parent_commune"]
    assert f.at[code, COMMUNE_PREFIX + "unemployment_rate"] == com.at[parent, "unemployment_rate"]


def test_target_keeps_the_run_iris_with_enough_recipients(iris_features, fast_iris_conf):
    cfg = load_iris_config(fast_iris_conf)
    panel = iris_features.fb.panel
    table = iris_target(panel, cfg.target, cfg, iris_features.identity.index)
    assert table.index.isin(iris_features.identity.index).all()
    assert (table["recipients"] >= cfg.min_recipients).all()
    assert np.allclose(table["weight"], np.sqrt(table["recipients"]))
    code = table.index[0]
    rsa = panel[(panel["zone_code"] == code) & (panel["measure"] == "caf_rsa_share")].set_index("period")["value"]
    assert table.at[code, "y"] == pytest.approx(rsa[cfg.target.end] - rsa[cfg.target.origin])


def test_cross_validation_holds_out_whole_departments_and_scores_every_baseline(iris_features, fast_iris_conf):
    cfg = load_iris_config(fast_iris_conf)
    fb = iris_features.fb
    table = iris_target(fb.panel, cfg.target, cfg, iris_features.identity.index)
    table = table[iris_features.identity.loc[table.index, "departement"].isin(["59", "62", "69", "13", "93", "75"])]
    F, M = iris_features(cfg.target.origin)
    X = iris_design(F, M).reindex(table.index)
    groups = iris_features.identity.loc[table.index, "departement"].to_numpy()
    base = pd.DataFrame({"persistence_zero": 0.0}, index=table.index)
    metrics, oof, fold = cross_validate(X, table, groups, cfg, base, sign=1)
    assert set(metrics.index) == {"lightgbm", "ridge", "persistence_zero"}
    assert oof.notna().all().all()
    for dep in np.unique(groups):  # a department is in one fold only
        assert len(set(fold[groups == dep])) == 1
    assert metrics.loc["lightgbm", "spearman"] > 0.1


def test_shap_contributions_plus_base_equal_the_forecast(iris_run):
    ex = pd.read_parquet(iris_run.out_dir / "explanations.parquet")
    g = ex.groupby("zone_code")
    total = g["contribution"].sum() + g["base_value"].first()
    assert np.abs(total - g["model_output"].first()).max() < 1e-6
    pri = iris_run.priorities.set_index("zone_code")
    out = g["model_output"].first()
    assert np.allclose(out, pri.loc[out.index, "pred_caf_rsa_share"])
    assert iris_run.metrics["shap_additivity_max_gap"] < 1e-6


def test_tree_contributions_of_the_saved_booster_match(iris_run):
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(iris_run.out_dir / "model.txt"))
    F = pd.read_parquet(iris_run.out_dir / "forecast_features.parquet")
    M = pd.read_csv(iris_run.out_dir / "forecast_features_meta.csv")
    X = iris_design(F, M).reindex(columns=booster.feature_name())
    X = X[X["caf_rsa_share"].notna()].head(200)
    pri = iris_run.priorities.set_index("zone_code")
    assert np.allclose(booster.predict(X.to_numpy()), pri.loc[X.index, "pred_caf_rsa_share"])


def test_priorities_rank_every_iris_with_an_interval(iris_run):
    pri = iris_run.priorities
    assert pri["zone_code"].is_unique and len(pri) > 15_000
    scored = pri[pri["priority_score"].notna()]
    assert scored["priority_rank"].is_monotonic_increasing
    assert ((scored["priority_score_low"] <= scored["priority_score"] + 1e-9)
            & (scored["priority_score"] <= scored["priority_score_high"] + 1e-9)).all()
    flagged = pri["priority_flag"]
    assert 0.09 * len(scored) < flagged.sum() <= 0.11 * len(scored)
    assert (pri.loc[flagged, "priority_score"].min() >= pri.loc[~flagged, "priority_score"].max())
    # an IRIS without the RSA share at the origin gets no forecast, and its score says so
    no_forecast = pri["pred_caf_rsa_share"].isna() & pri["deprivation_index"].notna()
    assert no_forecast.any() and (pri.loc[no_forecast, "score_basis"] == "index").all()
    width = pri["priority_score_high"] - pri["priority_score_low"]
    assert (width[no_forecast] >= 0.4 * 100 - 1e-6).all()  # the trajectory's whole range
    # levers are named in both languages for forecast IRIS
    fc = pri["pred_caf_rsa_share"].notna()
    assert pri.loc[fc, "top_levers_fr"].str.contains("pts", na=False).mean() > 0.5
    assert pri.loc[fc, "top_levers_en"].str.contains("pts", na=False).mean() > 0.5


def test_metrics_report_backtests_against_baselines(iris_run):
    m = json.loads((iris_run.out_dir / "metrics.json").read_text(encoding="utf-8"))
    models = {r["model"] for r in m["cross_validation"]}
    assert {"lightgbm", "ridge", "persistence_zero", "last_trend", "commune_trend"} <= models
    assert {r["model"] for r in m["temporal_backtest"]} >= {"lightgbm", "persistence_zero", "last_trend"}
    cov = {r["level"]: r["coverage"] for r in m["interval_coverage"] if r["grouping"] == "all"}
    assert abs(cov[0.8] - 0.8) < 0.03 and abs(cov[0.9] - 0.9) < 0.03
    groups = {(r["grouping"], r["group"]) for r in m["interval_coverage"]}
    assert {("territory", "mainland"), ("territory", "overseas"), ("recipients", "<300"),
            ("recipients", "600+")} <= groups
    assert "lightgbm" in (iris_run.out_dir / "backtest_table.txt").read_text(encoding="utf-8")


def test_map_and_cards_cover_the_divided_communes_and_flagged_iris(iris_run):
    folder = iris_run.out_dir
    pri = iris_run.priorities
    text = (folder / "map.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="territoria-data">(.*?)</script>', text, re.S).group(1))
    ranked = pri.dropna(subset=["priority_rank"])
    # one polygon per divided commune, named after its most urgent IRIS
    assert len(data["props"]["code"]) == ranked["parent_commune"].nunique()
    top = ranked.sort_values("priority_rank").drop_duplicates("parent_commune")
    assert set(data["props"]["code"]) == set(top["zone_code"])
    assert any("Denain" in n and "IRIS" in n for n in data["props"]["name"])
    cards = {p.stem for p in (folder / "zones").glob("*.html")}
    assert cards == set(pri.loc[pri["priority_flag"], "zone_code"])
    code = pri.loc[pri["priority_flag"], "zone_code"].iloc[0]
    card = (folder / "zones" / f"{code}.html").read_text(encoding="utf-8")
    assert "Fiche IRIS" in card and "<svg" in card and "INSEE" in card and "CNAF" in card.upper()
    report = (folder / "report.html").read_text(encoding="utf-8")
    assert "Poches cachées par la moyenne communale" in report and f"zones/{code}.html" in report
    assert "Validation croisée par départements" in report


def test_english_cards(iris_run):
    from territoria.pipelines.iris_report import write_iris_cards

    folder = iris_run.out_dir
    pri = iris_run.priorities
    code = pri.loc[pri["priority_flag"], "zone_code"].iloc[0]
    ex = pd.read_parquet(folder / "explanations.parquet")
    M = pd.read_csv(folder / "features_meta.csv")
    F = pd.read_parquet(folder / "features.parquet").set_index("zone_code")
    Mf = pd.read_csv(folder / "forecast_features_meta.csv")
    (path,) = write_iris_cards(pri, ex, M, F, Mf, folder / "en", "en", iris_run.metrics, zones=[code])
    text = path.read_text(encoding="utf-8")
    assert "IRIS card" in text and "Fiche IRIS" not in text and 'lang="en"' in text
    # the indicators are those of the reference period: Filosofi IRIS 2021 included
    assert "Low declared income rate (IRIS)" in text and "2021" in text


def test_iris_contours_draw_every_iris(iris_run, tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    pri = iris_run.priorities
    codes = pri.loc[pri["parent_commune"] == "59172", "zone_code"].tolist()
    # a CONTOURS-IRIS-like layer in Lambert-93 (synthetic squares: the mechanics of the reader)
    gdf = gpd.GeoDataFrame({"CODE_IRIS": codes, "NOM_IRIS": [f"iris {c}" for c in codes]},
                           geometry=[box(720_000 + 500 * i, 7_030_000, 720_400 + 500 * i, 7_030_400)
                                     for i in range(len(codes))], crs="EPSG:2154")
    path = tmp_path / "CONTOURS-IRIS.gpkg"
    gdf.to_file(path, driver="GPKG")
    polys = read_iris_contours(path)
    assert list(polys.index) == codes and 3.0 < polys.iloc[0].centroid.x < 4.0  # WGS84 (Nord)
    out = write_iris_map(pri, tmp_path / "map.html", lang="en", contours=path)
    data = json.loads(re.search(r'id="territoria-data">(.*?)</script>', out.read_text(encoding="utf-8"),
                                re.S).group(1))
    assert sorted(data["props"]["code"]) == sorted(codes)


def test_bad_contours_files_are_named(tmp_path, iris_run):
    import geopandas as gpd
    from shapely.geometry import box

    with pytest.raises(DataError, match="not found"):
        read_iris_contours(tmp_path / "missing.gpkg")
    gpd.GeoDataFrame({"code": ["x"]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:4326").to_file(tmp_path / "a.gpkg")
    with pytest.raises(DataError, match="CODE_IRIS"):
        read_iris_contours(tmp_path / "a.gpkg")
    (tmp_path / "b.gpkg").write_text("not a geopackage", encoding="utf-8")
    with pytest.raises(DataError, match="readable"):
        read_iris_contours(tmp_path / "b.gpkg")
    gpd.GeoDataFrame({"CODE_IRIS": ["000000000"]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:4326").to_file(
        tmp_path / "c.gpkg")
    with pytest.raises(DataError, match="none of the run's IRIS"):
        write_iris_map(iris_run.priorities, tmp_path / "m.html", contours=tmp_path / "c.gpkg")


def test_priority_score_combines_percentiles():
    ident = pd.DataFrame({"parent_commune": ["a", "a", "b", "b"]}, index=["i1", "i2", "i3", "i4"])
    index = pd.DataFrame({"deprivation_index": [10.0, 20.0, 30.0, np.nan]}, index=ident.index)
    fc = pd.DataFrame({"prediction": [4.0, 3.0, 2.0, 1.0], "low_80": [3.0, 2.0, 1.0, 0.0],
                       "high_80": [5.0, 4.0, 3.0, 2.0]}, index=ident.index)
    cfg = load_iris_config()
    out = priority_table(ident, index, fc, sign=1, config=cfg)
    # i1: index percentile 33.3, forecast percentile 100 -> 0.6*33.3 + 0.4*100
    assert out.at["i1", "priority_score"] == pytest.approx(0.6 * 100 / 3 + 0.4 * 100)
    assert out.at["i4", "score_basis"] == "forecast" and out.at["i4", "index_percentile"] != out.at["i4", "index_percentile"]
    assert out.at["i4", "priority_score"] == pytest.approx(0.6 * 50 + 0.4 * 25)
    # i2 (70) before i1 (60) in commune a; i3 (80) before i4 (40) in b
    assert out["rank_in_commune"].tolist() == [2, 1, 1, 2]
    assert out["priority_rank"].tolist() == [3, 2, 1, 4]
    # a falling measure that is better when higher (sign -1) ranks the largest fall first
    out_neg = priority_table(ident, index, fc, sign=-1, config=cfg)
    assert out_neg.at["i4", "trajectory_percentile"] == 100.0


def test_bad_iris_configuration_names_the_file(tmp_path):
    doc = yaml.safe_load((conf_dir() / "iris.yml").read_text(encoding="utf-8"))
    doc["target"]["end"] = 2017
    path = tmp_path / "iris.yml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(DataError, match="iris.yml"):
        load_iris_config(path)


def test_explain_an_iris_from_the_command_line(iris_run):
    out = iris_run.out_dir.parent
    code = iris_run.priorities["zone_code"].iloc[-1]  # not flagged: its card is made on demand
    res = CliRunner().invoke(app, ["explain", code, "--out", str(out), "--html", "--lang", "en"])
    assert res.exit_code == 0, res.output
    assert "Priority score" in res.output and (iris_run.out_dir / "zones" / f"{code}.html").exists()
    res = CliRunner().invoke(app, ["explain", "599990104", "--out", str(out)])
    assert res.exit_code != 0 and "no IRIS '599990104'" in str(res.exception)


def test_manifest_verifies_the_iris_outputs(iris_run, tmp_path):
    import shutil

    from territoria.verify import verify_run

    folder = tmp_path / "iris"
    shutil.copytree(iris_run.out_dir, folder)
    report = verify_run(folder)
    outputs = [c for c in report.checks if c.kind == "output"]
    assert {c.name for c in outputs} >= {"priorities.csv", "map.html", "metrics.json", "model.txt"}
    assert all(c.status == "ok" for c in report.checks)
    (folder / "priorities.csv").write_text("edited", encoding="utf-8")
    bad = {c.name: c.status for c in verify_run(folder).checks if c.status != "ok"}
    assert bad == {"priorities.csv": "modified"}


def test_unknown_level_is_a_one_line_error():
    res = CliRunner().invoke(app, ["run", "--level", "grid"])
    assert res.exit_code != 0
    assert "unknown level 'grid'" in str(res.exception) or "unknown level" in res.output


def test_as_of_moves_the_target_back_before_the_reference(iris_features, fast_iris_conf):
    cfg = load_iris_config(fast_iris_conf)
    panel = iris_features.fb.panel
    assert transitions_upto(cfg, panel, 2021) == (cfg.target, cfg.temporal_fit)
    target, fit = transitions_upto(cfg, panel, 2019)
    assert (target.origin, target.end) == (2017, 2019)
    assert fit is None  # CNAF files start in 2016: no 2015 -> 2017 transition
    with pytest.raises(DataError, match="no two vintages"):
        transitions_upto(cfg, panel, 2017)
    # a data folder without the CNAF files: the error names the configuration and the measure
    no_caf = panel[panel["source"] != "caf_iris"]
    with pytest.raises(DataError, match="iris.yml.*caf_rsa_share"):
        transitions_upto(cfg, no_caf, 2021)


def test_run_record_and_mlflow_champion(iris_run):
    from territoria.models.tracking import load_champion

    record = json.loads((iris_run.out_dir / "iris_run.json").read_text(encoding="utf-8"))
    assert record["level"] == "iris" and record["mlflow_run"] and record["data_files"]
    assert {"features", "backtest", "train", "prioritise", "write", "mlflow"} <= set(record["timings_s"])
    champion = load_champion("territoria-iris-caf_rsa_share", out_dir=iris_run.out_dir.parent)
    assert champion.run_id == record["mlflow_run"]
