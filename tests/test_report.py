"""The report stage on a tiny run folder of real communes (department 59).

The run folder is built here (identity and polygons from the bundled IGN geometries, the
priorities and other outputs made up but consistent), so the test depends neither on a full
run nor on anything outside the repository.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from territoria.digest import FileDigests, file_sha256
from territoria.pipelines import report as rep

N = 30
DOMAINS = ("economic", "residential", "services")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import geopandas as gpd

    from territoria.features.sources.geometries import CommuneGeometries

    out = tmp_path_factory.mktemp("run")
    g = CommuneGeometries().load()
    g = g[g["zone_code"].str.startswith("59") & g.geometry.notna()].sort_values("zone_code").head(N)
    codes = g["zone_code"].tolist()
    rng = np.random.default_rng(0)
    score = np.sort(rng.uniform(20, 70, N))[::-1]
    flag = np.arange(N) < 8
    status = np.where(flag, "new", "")
    status[1] = "continuing"
    status[8] = "exited"
    pri = pd.DataFrame({
        "zone_code": codes, "zone_name": g["name"].tolist(), "level": "commune", "department": "59",
        "epci": np.where(np.arange(N) < 15, "200000001", "200000002"), "epci_name": "CA Test",
        "region": "32", "population": g["population"].fillna(500).to_numpy(float), "reference_period": 2021,
        "deprivation_index": score + 5, "index_rank": np.arange(1, N + 1), "index_decile": 10,
        **{f"domain_{d}": rng.normal(0, 1, N) for d in DOMAINS},
        "pred_unemployment_rate": rng.normal(0, 1, N), "pred_unemployment_rate_low": -2.0,
        "pred_unemployment_rate_high": 2.0, "pred_unemployment_rate_end": 2024.0,
        "trajectory_T": rng.normal(0, 1, N), "population_factor": 1.0,
        "priority_score": score, "priority_score_low": score - 4, "priority_score_high": score + 4,
        "priority_rank": np.arange(1, N + 1), "priority_rank_department": np.arange(1, N + 1),
        "priority_rank_epci": np.r_[np.arange(1, 16), np.arange(1, 16)],
        "priority_rank_best": np.maximum(1, np.arange(1, N + 1) - 3), "priority_rank_worst": np.arange(1, N + 1) + 3,
        "priority_flag": flag, "flag_status": status, "flag_reason": np.where(flag, "top 10%", ""),
        "flag_history": np.where(flag, "2018:1;2021:1", "2021:0"),
        "diagnostic_reasons_fr": "cumul de fragilités", "diagnostic_reasons_en": "cumulated burdens",
        "cluster_id": np.where(np.arange(N) < 5, "C0001", ""),
        "top_levers": "Taux de chômage (12 %) augmente le score de 2,1",
        "top_levers_en": "Unemployment rate (12%) raises the score by 2.1",
        "QPV2024": np.arange(N) % 5 == 0, "ZRR": np.arange(N) % 7 == 0, "ACV": False, "PVD": np.arange(N) == 3,
    })
    pri["programmes"] = [", ".join(p for p in rep.PROGRAMMES if r[p]) for _, r in pri.iterrows()]
    pri.to_csv(out / "priorities.csv", index=False)
    gpd.GeoDataFrame(pri[["zone_code", "zone_name", "priority_score"]], geometry=g.geometry.to_numpy(),
                     crs="EPSG:4326").to_file(out / "priorities.gpkg", layer="priorities", driver="GPKG")
    panel = []
    for m, base, src in (("unemployment_rate", 10, "comparateur"), ("median_income", 20000, "filosofi_commune"),
                         ("population", 1000, "comparateur")):
        for p in (2013, 2018, 2021):
            panel.append(pd.DataFrame({"zone_code": codes, "level": "commune", "period": p, "measure": m,
                                       "value": base * rng.uniform(0.8, 1.2, N), "source": src}))
    pd.concat(panel).to_parquet(out / "panel.parquet", index=False)
    pd.DataFrame({"zone_code": codes, "unemployment_rate__nbr_mean": rng.uniform(8, 12, N)}).to_parquet(
        out / "features.parquet", index=False)
    pd.DataFrame({"feature": ["unemployment_rate", "median_income"], "indicator": ["unemployment_rate", "median_income"],
                  "domain": "economic", "is_lever": [True, False], "transform": "level", "period_from": [2018, 2021],
                  "period_to": [2021, 2021], "label_en": ["u", "m"], "label_fr": ["u", "m"]}).to_csv(
        out / "features_meta.csv", index=False)
    pts = []
    for ind, lever, loc in (("unemployment_rate", True, False), ("median_income", False, False),
                            ("poverty_rate", True, False), ("unemployment_rate", False, True)):
        pts.append(pd.DataFrame({"zone_code": codes, "indicator": ind, "is_location": loc, "domain": "economic",
                                 "points": rng.normal(1, 2, N), "is_lever": lever}))
    pd.concat(pts).to_parquet(out / "score_points.parquet", index=False)
    pd.DataFrame({"cluster_id": ["C0001"], "n_zones": [5], "population": [12000.0], "n_departements": [2],
                  "departements": ["59, 62"], "n_epcis": [2], "epcis": ["200000001, 200000002"], "n_regions": [1],
                  "regions": ["32"], "crosses_epci": [True], "crosses_department": [True],
                  "crosses_region": [False]}).to_csv(out / "clusters.csv", index=False)
    gaps = pri.loc[[2, 4, 20], ["zone_code", "zone_name", "department", "programmes", "deprivation_index",
                                "index_decile", "priority_rank"]]
    gaps.insert(3, "gap_kind", ["priority_not_covered", "priority_not_covered", "programme_not_deprived"])
    gaps.to_csv(out / "coverage_gaps.csv", index=False)
    (out / "data_report.json").write_text(json.dumps({"files": {"cog/communes_cog2026.json.gz": "ab" * 32}}))
    (out / "priority_policy.json").write_text(json.dumps({
        "period": 2021, "policy": {"weights": {"level": 0.6, "trajectory": 0.4}, "flags": {"top_share": 0.1},
                                   "trajectory": {"z_clip": 3.0, "measures": {"unemployment_rate": 1.0}}}}))
    return out


@pytest.fixture(scope="module")
def reports(run_dir):
    """The stage run in French then in English: (paths, texts by language)."""
    texts, timings = {}, {}
    for lang in ("en", "fr"):
        paths = rep.run_report(run_dir, lang=lang, timings=timings)
        pri = pd.read_csv(run_dir / "priorities.csv", dtype={"zone_code": str})
        code = pri.loc[pri["priority_flag"], "zone_code"].iloc[0]
        texts[lang] = {"report": (run_dir / "report.html").read_text(encoding="utf-8"),
                       "card": (run_dir / "zones" / f"{code}.html").read_text(encoding="utf-8"),
                       "map": (run_dir / "map.html").read_text(encoding="utf-8")}
    return paths, texts


def test_map_has_every_zone(run_dir, reports):
    paths, _ = reports
    text = paths["map"].read_text(encoding="utf-8")
    pri = pd.read_csv(run_dir / "priorities.csv", dtype={"zone_code": str})
    data = json.loads(re.search(r'id="territoria-data">(.*?)</script>', text, re.S).group(1))
    assert data["props"]["code"] == pri["zone_code"].tolist()
    for code in pri["zone_code"]:
        assert f'"{code}"' in text
    assert {"QPV2024", "ZRR", "ACV", "PVD"} <= set(data["programmes"])
    assert {v["key"] for v in data["vars"]} == {"priority_score", *(f"domain_{d}" for d in DOMAINS)}
    assert paths["map"].stat().st_size < 5e6
    # opens without network: Leaflet inlined, no external script or style sheet
    assert "L.map(" in text or "L.map (" in text
    assert not re.search(r'<script[^>]+src="https?:', text) and not re.search(r'<link[^>]+href="https?:', text)


def test_quantile_classes_are_mapclassify_quantiles(run_dir):
    """The map's classes are mapclassify's ``Quantiles`` (computed without importing it)."""
    import mapclassify

    pri = pd.read_csv(run_dir / "priorities.csv", dtype={"zone_code": str})
    for col in ("priority_score", "deprivation_index", "domain_economic"):
        v = pd.to_numeric(pri[col], errors="coerce").to_numpy(float)
        ok = np.isfinite(v)
        for k in (5, 7):
            cls, bins = rep.quantile_classes(v, k)
            q = mapclassify.Quantiles(v[ok], k=k)
            np.testing.assert_array_equal(cls[ok], q.yb)
            np.testing.assert_allclose(bins, q.bins, rtol=1e-12)
            assert (cls[~ok] == -1).all()
    # ties merge classes as mapclassify does
    cls, bins = rep.quantile_classes(np.r_[np.zeros(90), np.arange(1.0, 11.0)], 5)
    assert bins.tolist() == [0.0, 10.0] and cls.tolist() == [0] * 90 + [1] * 10


def test_cards_written_by_the_worker_process_are_the_cards_written_here(run_dir, reports, monkeypatch, tmp_path):
    """Above CARD_WORKER_FROM flagged zones, a spawned process writes most cards while the
    stage writes the rest: the same files, a card of a zone no longer flagged removed, and the
    lineage counts them."""
    import shutil
    import warnings

    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    rep.run_report(out, lang="fr")  # in this process: 8 cards, under the threshold
    here = {p.name: p.read_bytes() for p in (out / "zones").glob("*.html")}
    (out / "zones" / "00000.html").write_text("a card of a zone no longer flagged", encoding="utf-8")
    monkeypatch.setattr(rep, "CARD_WORKER_FROM", 0)
    timings = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the worker did not fail over to this process
        rep.run_report(out, lang="fr", timings=timings)
    # the worker's own time: it wrote its share (6 of 8)
    assert timings["n_cards"] == len(here) == 8 and timings["cards_worker"] > 0
    assert not (out / "zones" / "00000.html").exists()
    assert {p.name: p.read_bytes() for p in (out / "zones").glob("*.html")} == here
    lineage = json.loads((out / "audit" / "lineage.json").read_text(encoding="utf-8"))
    assert lineage["zone_cards"]["count"] == 8


def test_cards_started_before_the_report_are_the_cards_it_writes(run_dir, reports, monkeypatch, tmp_path):
    """The main job starts the card worker as soon as the priorities are written
    (``start_cards``), with the cards' series taken from the panel in memory (``panel_series``,
    the rows ``read_series`` reads); the report then writes the same cards, and refuses a job
    started for other zones."""
    import shutil
    import warnings

    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    here = {p.name: p.read_bytes() for p in (run_dir / "zones").glob("*.html")}
    shutil.rmtree(out / "zones")
    monkeypatch.setattr(rep, "CARD_WORKER_FROM", 0)
    pri = pd.read_csv(out / "priorities.csv", dtype={"zone_code": str})
    flagged = pri.loc[pri["priority_flag"], "zone_code"].tolist()
    with pytest.raises(ValueError, match="priorities.csv"):
        rep.run_report(out, lang="fr", cards=rep.start_cards(out, "fr", flagged[1:]))
    timings = {}
    series = rep.panel_series(pd.read_parquet(out / "panel.parquet"))
    pd.testing.assert_frame_equal(series, rep.read_series(out), check_exact=True)
    assert len(series)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the worker did not fail over to this process
        job = rep.start_cards(out, "fr", flagged, series=series)
        assert job.worker is not None and len(job.here) < len(flagged)
        rep.run_report(out, lang="fr", timings=timings, cards=job)
    assert timings["n_cards"] == len(here) and timings["cards_worker"] > 0
    assert {p.name: p.read_bytes() for p in (out / "zones").glob("*.html")} == here


def test_geometry_encoding_round_trip():
    import shapely

    geoms = np.array([shapely.box(2.1, 50.1, 2.2, 50.3), None,
                      shapely.MultiPolygon([shapely.box(3, 49, 3.1, 49.1), shapely.box(4, 48, 4.2, 48.2)])], dtype=object)
    enc = rep.encode_geometries(geoms)
    xy = np.cumsum(np.asarray(enc["c"]).reshape(-1, 2), axis=0) / enc["s"]
    g, p, r = enc["g"], enc["p"], enc["r"]
    assert list(g) == [0, 1, 1, 3]  # the missing geometry has no polygon
    ring = xy[r[p[g[0]]]:r[p[g[0]] + 1]]
    assert len(ring) == 4  # closing point dropped
    assert np.allclose(np.r_[ring, ring[:1]], shapely.get_coordinates(shapely.get_exterior_ring(geoms[0])))


def test_one_card_per_flagged_zone(run_dir, reports):
    pri = pd.read_csv(run_dir / "priorities.csv", dtype={"zone_code": str})
    flagged = set(pri.loc[pri["priority_flag"], "zone_code"])
    cards = {p.stem for p in (run_dir / "zones").glob("*.html")}
    assert cards == flagged
    card = (run_dir / "zones" / f"{sorted(flagged)[0]}.html").read_text(encoding="utf-8")
    assert "<svg" in card and "<script" not in card and "http" not in card.split("</head>")[0]


def test_languages_differ(reports):
    _, texts = reports
    assert "Score de priorité" in texts["fr"]["card"] and "Priority score" in texts["en"]["card"]
    assert "Rapport de priorisation" in texts["fr"]["report"] and "Prioritisation report" in texts["en"]["report"]
    assert 'lang="fr"' in texts["fr"]["card"] and 'lang="en"' in texts["en"]["card"]
    assert "Programmes qui couvrent" in texts["fr"]["card"] and "Programmes covering" in texts["en"]["card"]
    # producer and vintage of the figures are named
    assert "INSEE" in texts["fr"]["card"] and "2021" in texts["fr"]["card"]


def test_report_lists_gaps_changes_and_clusters(run_dir, reports):
    _, texts = reports
    html = texts["fr"]["report"]
    gaps = pd.read_csv(run_dir / "coverage_gaps.csv", dtype={"zone_code": str})
    for code in gaps["zone_code"]:
        assert code in html
    assert "C0001" in html and "59, 62" in html
    assert "sorties de la liste" in html and "nouvelles" in html


def test_report_shows_populations_not_python_objects(run_dir, reports):
    """``{{ r.pop }}`` reads the context's "pop" key, not the dict's ``pop`` method (whose
    repr the report once showed in place of every population)."""
    _, texts = reports
    for lang, pages in texts.items():
        for name, html in pages.items():
            assert "built-in method" not in html and "object at 0x" not in html, (lang, name)
    html = texts["fr"]["report"]
    pri = pd.read_csv(run_dir / "priorities.csv", dtype={"zone_code": str})
    assert rep.fmt_int(pri.loc[pri["priority_flag"], "population"].sum(), "fr") in html
    assert rep.fmt_int(12000.0, "fr") in html  # the cluster's


def test_audit_files_and_lineage(run_dir, reports):
    paths, _ = reports
    audit = run_dir / "audit"
    for name in ("model_card.md", "weights.csv", "sensitivity.csv", "lineage.json"):
        assert (audit / name).exists(), name
    card = (audit / "model_card.md").read_text(encoding="utf-8")
    assert "Not run" in card and "ab" * 32 in card
    lin = json.loads((audit / "lineage.json").read_text(encoding="utf-8"))
    assert lin["run_outputs"] and lin["report_outputs"]
    for section in ("run_outputs", "report_outputs"):
        for rel, entry in lin[section].items():
            assert file_sha256(run_dir / rel) == entry["sha256"], rel
    assert "map.html" in lin["report_outputs"] and "priorities.csv" in lin["run_outputs"]
    # a run's digests keep what the lineage hashed, for the main job's manifest
    digests = FileDigests()
    written = {k: v for k, v in paths.items() if k != "lineage"}  # as when the lineage was made
    again = rep.lineage(rep.load_run(run_dir), written, digests)
    assert again["run_outputs"] == lin["run_outputs"] and again["report_outputs"] == lin["report_outputs"]
    n_cards = len(list((run_dir / "zones").glob("*.html")))
    assert len(digests) == len(lin["run_outputs"]) + len(lin["report_outputs"]) + n_cards
    assert lin["zone_cards"]["count"] == 8
    assert lin["packages"]["pandas"]
    sens = pd.read_csv(audit / "sensitivity.csv")
    assert sens.loc[sens["is_run"], "jaccard_top"].iloc[0] == pytest.approx(1.0)
    for fig in ("priority_map.png", "domains.png"):
        assert (run_dir / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_card_on_demand_for_any_zone(run_dir, reports):
    pri = pd.read_csv(run_dir / "priorities.csv", dtype={"zone_code": str})
    code = pri.loc[~pri["priority_flag"], "zone_code"].iloc[-1]
    html = rep.zone_card_html(run_dir, code, lang="en")
    assert code in html and "Priority zone" in html
    from territoria.errors import DataError

    with pytest.raises(DataError):
        rep.zone_card_html(run_dir, "00000")


def test_department_means_are_population_weighted():
    pri = pd.DataFrame({"zone_code": ["a", "b", "c"], "department": ["01", "01", "02"],
                        "population": [100.0, 300.0, 50.0]})
    series = pd.DataFrame({"zone_code": ["a", "b", "c", "a", "b"], "period": [2021] * 5,
                           "measure": ["unemployment_rate"] * 3 + ["population"] * 2,
                           "value": [10.0, 20.0, 5.0, 100.0, 300.0], "source": "x"})
    d = rep.department_means(series, pri).set_index(["department", "measure"])["value"]
    assert d[("01", "unemployment_rate")] == pytest.approx(17.5)
    assert d[("02", "unemployment_rate")] == pytest.approx(5.0)
    assert d[("01", "population")] == pytest.approx(400.0)  # counts are summed


def test_year_labels_of_the_small_charts_do_not_overlap():
    # income has six vintages 2014-2021: consecutive years are closer than a label is wide
    years = [2014, 2015, 2016, 2018, 2019, 2021]
    c = rep.line_chart(years, [1.0, 2, 3, 4, 5, 6], years, [2.0] * 6, None, 2021)
    xs = [x for x, _ in c["ticks"]]
    assert [p for _, p in c["ticks"]][0] == 2014 and c["ticks"][-1][1] == 2021
    assert min(np.diff(xs)) >= 30
    assert xs[-1] + 12 <= c["width"]  # the last label, centred on its tick, is not cut
    two = rep.line_chart([2018, 2021], [1.0, 2.0], [2018, 2021], [1.5, 1.7], 1.6, 2021)
    assert [p for _, p in two["ticks"]] == [2018, 2021]


def test_a_run_without_flagged_zones_gets_its_report_and_no_cards(run_dir, tmp_path):
    """A policy can flag no zone (a strict threshold, a small area): the map, the report and
    the audit are written, the cards folder holds no card, and no parquet filter on an empty
    list of codes fails (Arrow cannot type an empty list)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    pri = pd.read_csv(out / "priorities.csv", dtype={"zone_code": str})
    pri["priority_flag"] = False
    pri.to_csv(out / "priorities.csv", index=False)
    timings = {}
    paths = rep.run_report(out, lang="en", timings=timings)
    assert timings["n_cards"] == 0 and not list((out / "zones").glob("*.html"))
    assert paths["map"].exists() and paths["report"].exists() and paths["model_card"].exists()
    assert rep.read_points(out, []).empty and rep.read_neighbours(out, []).empty and rep.read_series(out, []).empty


def test_simplified_polygons_are_valid_and_within_the_tolerance(run_dir):
    """The map's polygons: one per zone in the order asked (None for a zone without polygon),
    valid, non-empty and near the commune's outline (Douglas-Peucker bounds each dropped
    vertex's distance to the simplified line, not the Hausdorff distance: within twice the
    tolerance)."""
    import pyogrio
    import shapely

    codes = pd.Series(["59999", *pd.read_csv(run_dir / "priorities.csv", dtype={"zone_code": str})["zone_code"]])
    simple = rep.simplified_geometries(run_dir, codes, tolerance=0.002)
    g = pyogrio.read_dataframe(run_dir / "priorities.gpkg", layer="priorities", columns=["zone_code"])
    orig = dict(zip(g["zone_code"], g.geometry))
    assert simple[0] is None and len(simple) == len(codes)
    for code, s in zip(codes[1:], simple[1:]):
        assert s is not None and shapely.is_valid(s) and not s.is_empty
        assert shapely.get_num_coordinates(s) <= shapely.get_num_coordinates(orig[code])
        assert shapely.hausdorff_distance(s, orig[code]) <= 2 * 0.002
