"""Diagnostic flags and their reasons (territoria.models.diagnostics)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from territoria.errors import DataError
from territoria.models.diagnostics import (
    FLAGS,
    DiagnosticsConfig,
    diagnostic_flags,
    load_diagnostics_config,
)
from territoria.paths import conf_dir

N = 40


def _config(**changes) -> dict:
    cfg = {
        "cumulated": {"worst_share": 0.10, "min_domains": 3},
        "pocket": {"min_spread_points": 25, "min_pockets": 1},
        "isolated": {
            "indicators": ["poverty_rate", "median_income"],
            "groups": ["departement", "epci"],
            "match": "all",
            "top_share": 0.05,
            "min_population": 500,
        },
        "contrast": {"indicators": ["ftth_coverage_rate"], "top_share": 0.05, "min_population": 0},
        "services_retreat": {
            "min_distance_km": 2.0,
            "services": {
                "gp": {"count": "n_gp", "distance": "dist_gp",
                       "label_fr": "médecin généraliste", "label_en": "GP"},
            },
        },
    }
    for key, value in changes.items():
        cfg[key].update(value)
    return cfg


def _frames():
    """40 zones with ordinary values; zone Z00 is planted in every diagnostic."""
    rng = np.random.default_rng(0)
    codes = [f"Z{i:02d}" for i in range(N)]
    f = pd.DataFrame({"zone_code": codes, "population": 1000.0})
    f["iris_poverty_max"] = 20.0 + rng.uniform(0, 5, N)
    f["iris_poverty_spread"] = rng.uniform(0, 10, N)
    f["iris_pockets"] = 0.0
    f.loc[0, ["iris_poverty_max", "iris_poverty_spread", "iris_pockets"]] = [42.0, 26.0, 2.0]
    # worse than department AND EPCI on poverty (higher is worse)
    f["poverty_rate"] = 12.0 + rng.uniform(-1, 1, N)
    f["poverty_rate__gap_dep"] = rng.uniform(-2, 2, N)
    f["poverty_rate__gap_epci"] = rng.uniform(-2, 2, N)
    f.loc[0, ["poverty_rate", "poverty_rate__gap_dep", "poverty_rate__gap_epci"]] = [30.0, 15.0, 12.0]
    # zone Z01: far worse than its department but not than its EPCI
    f.loc[1, ["poverty_rate__gap_dep", "poverty_rate__gap_epci"]] = [14.0, 0.0]
    # median income (higher is better): a big POSITIVE gap is favourable, never a flag
    f["median_income"] = 21000.0
    f["median_income__gap_dep"] = rng.uniform(-100, 100, N)
    f["median_income__gap_epci"] = rng.uniform(-100, 100, N)
    f.loc[2, ["median_income__gap_dep", "median_income__gap_epci"]] = [9000.0, 9000.0]
    # fibre far below the neighbours (higher is better: negative gap is unfavourable)
    f["ftth_coverage_rate"] = 60.0
    f["ftth_coverage_rate__gap_nbr"] = rng.uniform(-3, 3, N)
    f.loc[0, ["ftth_coverage_rate", "ftth_coverage_rate__gap_nbr"]] = [0.0, -70.0]
    # GP: Z00 lost its last one, nearest now 6.25 km; Z03 lost one of two; Z04 lost its last
    # one but another is 1 km away
    f["n_gp"] = 1.0
    f["n_gp__chg"] = 0.0
    f["dist_gp"] = 0.0
    f.loc[0, ["n_gp", "n_gp__chg", "dist_gp"]] = [0.0, -1.0, 6.25]
    f.loc[3, ["n_gp", "n_gp__chg", "dist_gp"]] = [1.0, -1.0, 0.0]
    f.loc[4, ["n_gp", "n_gp__chg", "dist_gp"]] = [0.0, -1.0, 1.0]
    # a small commune with a huge gap is not judged (min_population 500)
    f.loc[5, ["population", "poverty_rate__gap_dep", "poverty_rate__gap_epci"]] = [80.0, 40.0, 40.0]

    meta = pd.DataFrame(
        {
            "feature": ["poverty_rate", "n_gp__chg"],
            "indicator": ["poverty_rate", "n_gp"],
            "label_fr": ["Taux de pauvreté", "Médecins omnipraticiens (évolution)"],
            "label_en": ["Poverty rate", "General practitioners (change)"],
            "period_from": [2021.0, 2009.0],
            "period_to": [2021.0, 2013.0],
        }
    )
    # domain scores: Z00 worst in 3 domains, Z06 worst in 2; the _exp columns are ignored
    dom = pd.DataFrame(index=pd.Index(codes, name="zone_code"))
    for d in ("economic", "education", "services", "digital"):
        dom[f"domain_{d}"] = np.linspace(-1, 1, N)[rng.permutation(N)] * 0.5
        dom[f"domain_{d}_exp"] = 99.0
    dom.loc["Z00", ["domain_economic", "domain_education", "domain_services"]] = 3.0
    dom.loc["Z06", ["domain_economic", "domain_digital"]] = 3.0
    dom.loc["Z07", "domain_digital"] = np.nan
    return f, meta, dom


def test_default_config_loads():
    cfg = load_diagnostics_config()
    assert isinstance(cfg, DiagnosticsConfig)
    assert cfg.cumulated.min_domains >= 2 and 0 < cfg.isolated.top_share <= 0.5
    assert "ftth_coverage_rate" in cfg.contrast.indicators


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("isolated", "top_share", 1.5, "isolated.top_share"),
        ("cumulated", "worst_share", 0, "cumulated.worst_share"),
        ("cumulated", "min_domains", 0, "cumulated.min_domains"),
        ("pocket", "min_spread_points", -5, "pocket.min_spread_points"),
        ("isolated", "match", "some", "isolated.match"),
        ("contrast", "indicators", ["no_such_indicator"], "unknown indicator 'no_such_indicator'"),
        ("contrast", "typo_key", 1, "contrast.typo_key"),
    ],
)
def test_bad_config_rejected(tmp_path, section, key, value, words):
    doc = yaml.safe_load((conf_dir() / "diagnostics.yml").read_text(encoding="utf-8"))
    doc[section][key] = value
    path = tmp_path / "diagnostics.yml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(DataError, match="diagnostics.yml") as err:
        load_diagnostics_config(path)
    assert words in str(err.value)
    # the same check applies to a mapping given directly
    if section != "contrast" or key != "indicators":
        with pytest.raises(DataError, match=section):
            diagnostic_flags(*_frames(), config=doc)


def test_planted_zone_gets_every_flag_and_reason():
    f, meta, dom = _frames()
    out = diagnostic_flags(f, meta, dom, config=_config())
    assert list(out.index) == f["zone_code"].tolist()
    z = out.loc["Z00"]
    assert all(z[c] for c in FLAGS) and z["n_flags"] == 5
    fr, en = z["diagnostic_reasons_fr"], z["diagnostic_reasons_en"]
    assert "poche de pauvreté : un IRIS à 42 % de bas revenus contre 16 % pour l'IRIS médian" in fr
    assert "pocket of poverty: one IRIS at 42 % low income against 16 %" in en
    assert "isolement : taux de pauvreté 30,0 % contre 15,0 % dans le département et 18,0 % dans l'EPCI" in fr
    assert "isolated: poverty rate 30.0 % against 15.0 % in the department and 18.0 % in the EPCI" in en
    assert "couverture en fibre (FttH) 0,0 % contre 70,0 % en moyenne chez les communes voisines" in fr
    assert "FttH coverage rate 0.0 % against 70.0 %" in en
    assert "plus de médecin généraliste (2009→2013, désormais à 6,2 km)" in fr or \
        "désormais à 6,3 km" in fr
    assert "no GP left (2009→2013, nearest now" in en
    assert "cumul de fragilités : 3 domaines" in fr and "(economic, education, services)" in en
    assert fr.count(" ; ") == 4 and en.count("; ") == 4


def test_flags_only_where_planted():
    f, meta, dom = _frames()
    out = diagnostic_flags(f, meta, dom, config=_config())
    assert out.index[out["flag_pocket"]].tolist() == ["Z00"]
    # Z01 is far from its department only: not isolated with match "all", isolated with "any"
    assert "Z00" in out.index[out["flag_isolated"]] and "Z01" not in out.index[out["flag_isolated"]]
    anyof = diagnostic_flags(f, meta, dom, config=_config(isolated={"match": "any"}))
    assert {"Z00", "Z01"} <= set(anyof.index[anyof["flag_isolated"]])
    assert "Z05" not in anyof.index[anyof["flag_isolated"]]  # 80 inhabitants: not judged
    assert "Z02" not in anyof.index[anyof["flag_isolated"]]  # richer than its surroundings
    # top 5 % of 40 zones: the planted zone and at most one ordinary zone
    contrast = out.index[out["flag_contrast"]].tolist()
    assert contrast[0] == "Z00" and len(contrast) <= 2
    # lost one GP of two (Z03) or the last one with another 1 km away (Z04): no retreat
    assert out.index[out["flag_services_retreat"]].tolist() == ["Z00"]
    quiet = out.drop(index="Z00")
    assert (quiet["diagnostic_reasons_fr"][quiet["n_flags"] == 0] == "").all()
    assert (quiet["diagnostic_reasons_en"][quiet["n_flags"] > 0] != "").all()


def test_n_vulnerable_domains_counts():
    f, meta, dom = _frames()
    out = diagnostic_flags(f, meta, dom, config=_config())
    expected = pd.Series(0, index=dom.index)
    for d in ("economic", "education", "services", "digital"):
        s = dom[f"domain_{d}"]
        expected += (s >= np.quantile(s.dropna(), 0.9)).astype(int)
    assert (out["n_vulnerable_domains"] == expected.reindex(out.index)).all()
    assert out.loc["Z00", "n_vulnerable_domains"] >= 3
    assert out.loc["Z06", "n_vulnerable_domains"] >= 2
    assert out["flag_cumulated"].equals(out["n_vulnerable_domains"] >= 3)
    stricter = diagnostic_flags(f, meta, dom, config=_config(cumulated={"min_domains": 4}))
    assert stricter["flag_cumulated"].sum() <= out["flag_cumulated"].sum()
    assert out.loc["Z06", "vulnerable_domains"].startswith("economic")


def test_missing_features_skipped_with_warning():
    f, meta, dom = _frames()
    with pytest.warns(UserWarning, match="iris_poverty_spread"):
        out = diagnostic_flags(f.drop(columns=["iris_poverty_spread"]), meta, dom, config=_config())
    assert not out["flag_pocket"].any()
    assert "iris_poverty_spread" in out.attrs["skipped"]


def test_real_feature_matrix(feature_build):
    from territoria.models.index import DeprivationIndex

    feats, meta = feature_build.features, feature_build.meta
    scores = DeprivationIndex().fit_transform(feats)
    out = diagnostic_flags(feats, meta, scores)
    assert out.attrs["skipped"] == []
    assert len(out) == len(feats) and list(out.index) == feats["zone_code"].tolist()
    n_domains = len([c for c in scores.columns if c.startswith("domain_") and not c.endswith("_exp")])
    assert out["n_vulnerable_domains"].between(0, n_domains).all()
    has = out["n_flags"] > 0
    assert (out.loc[has, "diagnostic_reasons_fr"] != "").all()
    assert (out.loc[~has, "diagnostic_reasons_en"] == "").all()
    for c in FLAGS:
        # every flag is raised somewhere and stays a minority of the communes
        assert 0 < out[c].sum() < 0.1 * len(out), c
    pocket = out["flag_pocket"]
    assert (feats.set_index("zone_code").loc[pocket, "iris_poverty_spread"] >= 25).all()


def test_docstring_examples():
    import doctest

    import territoria.models.diagnostics as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
