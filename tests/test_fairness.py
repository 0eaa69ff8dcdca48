"""Fairness audit by territory group (territoria.models.fairness): group metrics on a table
checked by hand, findings against the tolerances, then the real run (``main_run``)."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pandas as pd
import pytest

from territoria.models import fairness as fair
from territoria.models.priority import FairnessAudit


def test_docstring_examples_run():
    res = doctest.testmod(fair, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted >= 5 and res.failed == 0


def test_groups_from_codes_population_density_and_qpv():
    g = fair.territory_groups(["97101", "97611", "75056", "01001", "2A004", "13055"],
                              [50000, 2500, 2100000, 300, np.nan, 870000], [700, 290, 20000, 12, 40, np.nan],
                              [True, False, True, False, False, True], size_breaks=[2000, 5000, 20000])
    assert g["territory"].tolist() == ["overseas", "overseas", "mainland", "mainland", "mainland", "mainland"]
    assert g["density_class"].tolist() == ["urban", "rural", "urban", "rural", "rural", "unknown"]
    assert g["size_class"].tolist() == ["20k+", "2k-5k", "20k+", "<2k", "unknown", "20k+"]
    assert g["qpv"].tolist() == ["with QPV", "without QPV", "with QPV", "without QPV", "without QPV", "with QPV"]
    assert fair.size_labels([500, 2000]) == ["<500", "500-2k", "2k+"]


def _oof():
    # two groups of 4 zones; by hand: A errors +1, -1, +1, -1 (MAE 1, bias 0), B errors +2 x4 (MAE 2, bias 2)
    y = np.array([0.0, 1, 2, 3, 0, 1, 2, 3])
    pred = y + np.array([1, -1, 1, -1, 2, 2, 2, 2.0])
    low = pred - 1.5
    high = pred + 1.5
    return pd.DataFrame({"zone_code": [f"z{i}" for i in range(8)], "target": "unemployment_rate_2018_2021",
                         "scheme": "cv_departement", "y": y, "lightgbm": pred, "low_80": low, "high_80": high})


def test_error_by_group_by_hand():
    groups = pd.DataFrame({"territory": ["A"] * 4 + ["B"] * 4}, index=pd.Index([f"z{i}" for i in range(8)]))
    e = fair.error_by_group(_oof(), groups, {"unemployment_rate": 1, "median_income": -1})
    e = e.set_index(["grouping", "group"])
    assert e.loc[("all", "all"), "mae"] == pytest.approx(1.5)
    assert e.loc[("territory", "A"), "mae"] == pytest.approx(1.0)
    assert e.loc[("territory", "B"), "mae"] == pytest.approx(2.0)
    assert e.loc[("territory", "B"), "bias"] == pytest.approx(2.0)
    assert e.loc[("territory", "B"), "bias_worsening"] == pytest.approx(2.0)  # unemployment: higher = worse
    assert e.loc[("territory", "A"), "bias"] == pytest.approx(0.0)
    assert e.loc[("territory", "B"), "mae_ratio"] == pytest.approx(2.0 / 1.5)
    # intervals ±1.5: A's errors of 1 are covered, B's errors of 2 are not
    assert e.loc[("territory", "A"), "coverage_80"] == 1.0 and e.loc[("territory", "B"), "coverage_80"] == 0.0
    assert e.loc[("territory", "A"), "spearman"] == pytest.approx(1 - 6 * 4 / (4 * 15))  # ranks 2,1,4,3 vs 1,2,3,4
    assert e.loc[("territory", "B"), "spearman"] == pytest.approx(1.0)
    assert (e["measure"] == "unemployment_rate").all()
    # income: higher is better, so a positive bias is less worsening than observed
    inc = _oof().assign(target="median_income_2019_2021")
    e2 = fair.error_by_group(inc, groups, {"median_income": -1}).set_index(["grouping", "group"])
    assert e2.loc[("territory", "B"), "bias_worsening"] == pytest.approx(-2.0)


def test_flag_rates_by_hand():
    pri = pd.DataFrame({"zone_code": [f"z{i}" for i in range(10)],
                        "priority_score": [1.0] * 9 + [np.nan],
                        "priority_flag": [True, True, False, False, False, True, False, False, False, False],
                        "index_decile": [10, 10, 9, 1, 2, 10, 3, 4, 5, 10],
                        "p_priority": [1.0, 0.8, 0.2, 0, 0, 0.5, 0, 0, 0, np.nan]})
    groups = pd.DataFrame({"qpv": ["with QPV"] * 3 + ["without QPV"] * 7}, index=pri["zone_code"])
    f = fair.flag_rates(pri, groups).set_index(["grouping", "group"])
    # the unscored zone z9 is left out: 9 zones, 3 flagged, 3 in decile 10
    assert f.loc[("all", "all"), "n"] == 9 and f.loc[("all", "all"), "flag_rate"] == pytest.approx(3 / 9)
    w = f.loc[("qpv", "with QPV")]
    assert w["n"] == 3 and w["flag_rate"] == pytest.approx(2 / 3) and w["flag_rate_ratio"] == pytest.approx(2.0)
    assert w["need_rate"] == pytest.approx(2 / 3) and w["need_ratio"] == pytest.approx(2.0)
    assert w["flag_need_ratio"] == pytest.approx(1.0)
    assert w["mean_p_priority"] == pytest.approx(2.0 / 3)
    assert w["mean_p_priority_flagged"] == pytest.approx(0.9) and w["share_flagged_stable"] == pytest.approx(0.5)
    wo = f.loc[("qpv", "without QPV")]
    assert wo["n"] == 6 and wo["flag_rate"] == pytest.approx(1 / 6) and wo["flag_rate_ratio"] == pytest.approx(0.5)


def test_findings_report_what_is_beyond_the_tolerances_and_only_that():
    tol = FairnessAudit(min_group_size=1, coverage_shortfall=0.05, mae_ratio=1.2, bias_share_of_mae=0.5)
    groups = pd.DataFrame({"territory": ["A"] * 4 + ["B"] * 4}, index=pd.Index([f"z{i}" for i in range(8)]))
    errors = fair.error_by_group(_oof(), groups, {"unemployment_rate": 1})
    flags = pd.DataFrame([
        {"grouping": "all", "group": "all", "n": 100, "n_flagged": 10, "flag_rate": 0.1, "flag_rate_ratio": 1.0,
         "need_rate": 0.1, "need_ratio": 1.0, "flag_need_ratio": 1.0, "mean_p_priority_flagged": 0.9},
        # flagged 3x as often and 3x as needy: explained, not a finding
        {"grouping": "qpv", "group": "with QPV", "n": 50, "n_flagged": 15, "flag_rate": 0.3, "flag_rate_ratio": 3.0,
         "need_rate": 0.3, "need_ratio": 3.0, "flag_need_ratio": 1.0, "mean_p_priority_flagged": 0.85},
        # flagged 4x less but as needy as the rest: a finding; its flags are also less certain
        {"grouping": "size_class", "group": "<2k", "n": 50, "n_flagged": 40, "flag_rate": 0.025,
         "flag_rate_ratio": 0.25, "need_rate": 0.1, "need_ratio": 1.0, "flag_need_ratio": 0.25,
         "mean_p_priority_flagged": 0.6},
    ])
    found = fair.findings(errors, flags, tol)
    kinds = sorted((f["kind"], f["group"]) for f in found)
    assert kinds == [("bias", "B"), ("coverage", "B"), ("flag_rate", "<2k"), ("mae", "B"), ("p_priority", "<2k")]
    assert all(f["text"] for f in found)
    explained = fair.explained_flag_disparities(flags, tol)
    assert explained["group"].tolist() == ["with QPV"]
    # groups below min_group_size make no finding
    assert fair.findings(errors, flags, FairnessAudit(min_group_size=1000)) == []
    # a group of which less than half has an out-of-fold prediction is a finding
    un = pd.DataFrame([{"grouping": "size_class", "group": "<2k", "n_zones": 40, "n_with_oof": 19},
                       {"grouping": "size_class", "group": "2k-5k", "n_zones": 40, "n_with_oof": 20}])
    found = fair.findings(None, None, tol, un)
    assert [(f["kind"], f["group"]) for f in found] == [("unmeasured", "<2k")]
    assert found[0]["value"] == pytest.approx(19 / 40)


def test_intraclass_correlation_known_cases():
    g = np.repeat(np.arange(50), 10)
    assert fair.intraclass_correlation(np.repeat(np.arange(50.0), 10), g) == pytest.approx(1.0)
    noise = np.random.default_rng(0).normal(size=500)
    assert fair.intraclass_correlation(noise, g) < 0.05


# --------------------------------------------------------------------------- the real run
@pytest.fixture(scope="module")
def audit(main_run):
    out = main_run.run_json.parent / "audit"
    return out, json.loads((out / "fairness.json").read_text(encoding="utf-8"))


def test_fairness_outputs_have_every_group(main_run, audit):
    folder, doc = audit
    for name in ("fairness.md", "fairness.json", "fairness_errors.csv", "fairness_flags.csv"):
        assert (folder / name).exists(), name
    assert set(doc["groups"]) == {"density_class", "territory", "size_class", "qpv"}
    assert set(doc["groups"]["territory"]) == {"mainland", "overseas"}
    assert set(doc["groups"]["density_class"]) >= {"urban", "rural"}
    assert set(doc["groups"]["qpv"]) == {"with QPV", "without QPV"}
    assert set(doc["groups"]["size_class"]) >= {"<500", "500-2k", "2k-5k", "5k-20k", "20k+"}
    assert sum(doc["groups"]["territory"].values()) == 34875
    flags = pd.read_csv(folder / "fairness_flags.csv")
    pairs = set(zip(flags["grouping"], flags["group"]))
    for grouping, groups in doc["groups"].items():
        assert {(grouping, g) for g in groups} <= pairs
    pri = main_run.priorities.priorities
    allrow = flags[flags["grouping"] == "all"].iloc[0]
    assert allrow["n_flagged"] == int(pri["priority_flag"].sum())
    assert allrow["mean_p_priority"] == pytest.approx(pri["p_priority"].mean(), rel=1e-5)  # CSV: 6 digits
    errors = pd.read_csv(folder / "fairness_errors.csv")
    assert set(errors["target"]) == {"unemployment_rate_2018_2021", "median_income_2019_2021", "population_2018_2021"}
    # the overall coverage is the one the backtest wrote
    cov = pd.read_csv(main_run.run_json.parent / "interval_coverage_by_group.csv")
    cov = cov[(cov["grouping"] == "all") & (cov["level"] == 0.8)].set_index("target")["coverage"]
    e_all = errors[errors["grouping"] == "all"].set_index("target")["coverage_80"]
    assert np.allclose(e_all.reindex(cov.index), cov)


def test_findings_are_listed_in_the_markdown_and_the_model_card(main_run, audit):
    folder, doc = audit
    md = (folder / "fairness.md").read_text(encoding="utf-8")
    card = (folder / "model_card.md").read_text(encoding="utf-8")
    assert f"## Findings ({doc['n_findings']})" in md
    assert "## Fairness by territory group" in card and "fairness.md" in card
    assert f"{doc['n_findings']} finding(s)" in card
    for f in doc["findings"]:
        assert f["text"] in md and f["text"] in card
    # the backtest's headline leaves out communes under 2,000 inhabitants, but the fold models
    # predict them too: their error is measured, and no size class is left unmeasured
    errors = pd.read_csv(folder / "fairness_errors.csv")
    small = errors[(errors["grouping"] == "size_class") & errors["group"].isin(["<500", "500-2k"])]
    assert len(small) == 2 * errors["target"].nunique() and (small["n"] > 1000).all()
    assert small["mae"].notna().all() and small["coverage_80"].notna().all()
    assert not any(f["kind"] == "unmeasured" and f["grouping"] == "size_class" for f in doc["findings"])
    # noisier small communes: the model's error there is larger than the headline's
    pop = small[small["target"] == "population_2018_2021"].set_index("group")["mae_ratio"]
    assert pop["<500"] > 1.0
    lin = json.loads((folder / "lineage.json").read_text(encoding="utf-8"))
    assert "audit/fairness.json" in lin["report_outputs"] and "audit/stability.json" in lin["report_outputs"]


def test_audit_settings_are_validated_with_one_line_errors(tmp_path):
    import yaml

    from territoria.errors import DataError
    from territoria.models.priority import load_priority_config
    from territoria.paths import conf_dir

    doc = yaml.safe_load((conf_dir() / "priority.yml").read_text(encoding="utf-8"))
    cfg = load_priority_config()
    assert cfg.audit.stability.replicates == 200 and cfg.audit.fairness.flag_rate_ratio == (0.5, 2.0)
    for section, key, value in (("fairness", "flag_rate_ratio", [1.5, 2.0]), ("fairness", "size_breaks", [5000, 2000]),
                                ("stability", "department_correlation", 1.0), ("stability", "unknown", 1)):
        bad = yaml.safe_load(yaml.safe_dump(doc))
        bad["audit"][section][key] = value
        path = tmp_path / "priority.yml"
        path.write_text(yaml.safe_dump(bad), encoding="utf-8")
        with pytest.raises(DataError, match=f"audit.{section}.{key}"):
            load_priority_config(path)
