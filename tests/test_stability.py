"""Stability of the priority list (territoria.models.stability): mechanics on small synthetic
inputs, then the real run (``main_run`` in conftest: all communes, small models)."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from territoria.models import stability as stab


def _problem(index, pred=None, half=None, *, top_share=0.1, exit_share=0.15, was=None, groups=None,
             pop_factor=None, certainty=1.0, tail_df=np.inf):
    n = len(index)
    pred = np.zeros(n) if pred is None else np.asarray(pred, float)
    half = np.full(n, 0.5) if half is None else np.asarray(half, float)
    tr = stab.TrajectoryInputs(
        measures=["m"], pred=pred[:, None], half_width=half[:, None], tail_df=np.array([tail_df]),
        certainty=np.full((n, 1), certainty), share=np.array([1.0]), sign=np.array([1.0]),
        median=np.array([0.0]), iqr=np.array([1.0]), z_clip=3.0, level=0.8)
    rule = stab.FlagRule(top_share=top_share, exit_share=exit_share, was_flagged=was)
    zones = pd.Index([f"z{i:03d}" for i in range(n)], name="zone_code")
    return stab.StabilityProblem(zones, stab.IndexInputs.fixed(np.asarray(index, float)), tr,
                                 np.ones(n) if pop_factor is None else pop_factor, 0.6, 0.4, rule, groups)


def test_docstring_examples_run():
    res = doctest.testmod(stab, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted >= 8 and res.failed == 0


def test_far_above_is_always_flagged_far_below_never_and_borderline_in_between():
    rng = np.random.default_rng(3)
    # 5 zones far above, 10 at the threshold competing for the 5 other places, 85 far below
    index = np.r_[np.full(5, 95.0), rng.uniform(49, 51, 10), rng.uniform(2, 20, 85)]
    res = stab.replicate(_problem(index, half=np.full(100, 0.3)), stab.StabilitySettings(replicates=300, seed=1))
    p = res.p_priority.to_numpy()
    assert (p[:5] == 1.0).all()
    assert (p[15:] == 0.0).all()
    assert ((p[5:15] > 0.05) & (p[5:15] < 0.95)).all()
    assert p[5:15].sum() == pytest.approx(5.0)
    assert res.zones["p_top"].iloc[:5].eq(1.0).all()
    # the expected list size is the list size (no cumulated burdens, no hysteresis)
    assert res.replicates["n_flagged"].eq(10).all()
    assert np.isclose(p.sum(), 10.0)


def test_no_perturbation_reproduces_the_run_and_is_perfectly_stable():
    rng = np.random.default_rng(0)
    index = rng.uniform(0, 100, 500)
    pred = rng.normal(0, 1, 500)
    problem = _problem(index, pred)
    S0, _ = stab.baseline_scores(problem)
    expected = 100 * (0.6 * index / 100 + 0.4 * (0.5 + np.clip(pred, -3, 3) / 6))
    assert np.allclose(S0, expected)
    quiet = stab.StabilitySettings(replicates=5, seed=0, trajectory=False, index_weights="none",
                                   indicator_noise=False)
    res = stab.replicate(problem, quiet, baseline_score=expected)
    assert res.summary["reproduces_run"] == {"score": True, "flag": True}
    assert res.replicates["jaccard_top"].eq(1.0).all() and np.allclose(res.replicates["kendall_tau"], 1.0)
    assert set(np.unique(res.p_priority)) == {0.0, 1.0}
    # a different list from the caller is reported, not hidden
    wrong = expected.copy()
    wrong[np.argmax(expected)] = -1.0
    assert stab.replicate(problem, quiet, baseline_score=wrong).summary["reproduces_run"]["score"] is False


def test_seed_reproducible_and_independent_of_the_chunk_size(monkeypatch):
    rng = np.random.default_rng(1)
    problem = _problem(rng.uniform(0, 100, 300), rng.normal(0, 1, 300), np.full(300, 1.5),
                       groups=np.repeat(np.arange(30), 10), tail_df=4.0)
    s = stab.StabilitySettings(replicates=40, seed=7, department_correlation=0.3)
    a = stab.replicate(problem, s)
    b = stab.replicate(problem, s)
    pd.testing.assert_frame_equal(a.zones, b.zones)
    pd.testing.assert_frame_equal(a.replicates, b.replicates)
    monkeypatch.setattr(stab, "CHUNK", 7)
    c = stab.replicate(problem, s)
    pd.testing.assert_frame_equal(a.zones, c.zones)
    d = stab.replicate(problem, stab.StabilitySettings(replicates=40, seed=8, department_correlation=0.3))
    assert not a.zones["p_priority"].equals(d.zones["p_priority"])


def test_interval_draws_have_the_interval_coverage_the_tail_and_the_group_correlation():
    rngs = [np.random.default_rng(s) for s in range(3000)]
    half = np.array([1.0, 3.0] * 200)
    groups = np.repeat(np.arange(40), 10)
    for df in (np.inf, 3.0):
        e = stab.interval_draws(rngs, half, 0.8, df, groups, rho=0.4)
        inside = (np.abs(e) <= half).mean()
        assert abs(inside - 0.8) < 0.01
        # the 90 % interval of the implied t is wider by the t's ratio
        q90 = np.quantile(np.abs(e[:, 0::2]), 0.9)
        ratio = stats.t.ppf(0.95, df) / stats.t.ppf(0.9, df) if np.isfinite(df) else 1.6449 / 1.2816
        assert abs(q90 - ratio) < 0.05
    z = stats.norm.ppf(stats.t.cdf(e / (half / stats.t.ppf(0.9, 3.0)), 3.0))
    same = np.corrcoef(z[:, 0], z[:, 2])[0, 1]  # zones 0 and 2: same group
    other = np.corrcoef(z[:, 0], z[:, 10])[0, 1]  # zones 0 and 10: different groups
    assert abs(same - 0.4) < 0.08 and abs(other) < 0.08
    # no finite interval: no error drawn
    assert np.all(stab.interval_draws(rngs[:3], np.array([np.inf, np.nan]), 0.8, np.inf) == 0)


def test_tail_read_from_the_interval_ratio():
    for df in (1.5, 3.0, 10.0):
        r = stats.t.ppf(0.95, df) / stats.t.ppf(0.9, df)
        assert stab.tail_df_from_ratio(r) == pytest.approx(df, rel=1e-6)
    assert stab.tail_df_from_ratio(1.28) == np.inf  # lighter than normal: normal
    assert stab.tail_df_from_ratio(5.0) == 1.0  # heavier than Cauchy: Cauchy


def test_jaccard_and_kendall_on_known_cases():
    a = np.array([1, 1, 1, 0, 0], bool)
    assert stab.jaccard(a, a) == 1.0
    assert stab.jaccard(a, ~a) == 0.0
    assert stab.jaccard(a, np.array([0, 1, 1, 1, 0], bool)) == pytest.approx(2 / 4)
    assert stab.jaccard(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    x = np.arange(10.0)
    assert stab.kendall_tau(x, x) == pytest.approx(1.0)
    assert stab.kendall_tau(x, -x) == pytest.approx(-1.0)
    # one adjacent swap among 10: 1 discordant pair of 45
    y = x.copy()
    y[[3, 4]] = y[[4, 3]]
    assert stab.kendall_tau(x, y) == pytest.approx((44 - 1) / 45)
    # NaN zones are left out
    assert stab.kendall_tau(np.r_[x, np.nan], np.r_[y, 5.0]) == pytest.approx((44 - 1) / 45)


def test_ranks_and_flag_rule_match_the_run():
    S = np.array([[5.0, 9.0, 9.0, np.nan, 1.0, 7.0]])
    r = stab.ranks_desc(S)[0]
    assert r[[0, 1, 2, 4, 5]].tolist() == [4, 1, 1, 5, 3]
    ref = pd.Series(S[0]).rank(ascending=False, method="min")
    assert np.array_equal(r[[0, 1, 2, 4, 5]], ref.to_numpy()[[0, 1, 2, 4, 5]].astype(int))
    # top 20 % of 5 scored = 1 rank: the two tied zones share it
    rule = stab.FlagRule(top_share=0.2, exit_share=0.8, was_flagged=np.array([1, 0, 0, 0, 1, 1], bool))
    flag, top = stab.flags_of(S, rule)
    assert top[0].tolist() == [False, True, True, False, False, False]
    # hysteresis: zones 0 and 5 were flagged and stay in the top 80 % (4 ranks); zone 4 does not
    assert flag[0].tolist() == [True, True, True, False, False, True]
    assert stab.flags_of(S, rule, hysteresis=False)[0][0].tolist() == top[0].tolist()
    # cumulated burdens flag a zone out of the top, never a zone without a score
    rule_c = stab.FlagRule(top_share=0.2, exit_share=0.6, cumulated=True, cumulated_min_domains=2)
    flag_c, _ = stab.flags_of(S, rule_c, n_vulnerable=np.array([[0, 0, 0, 3, 2, 1]]))
    assert flag_c[0].tolist() == [False, True, True, False, True, False]


def test_combine_domains_matches_the_index():
    from territoria.models.index import DeprivationIndex

    rng = np.random.default_rng(0)
    C = rng.uniform(0, 100, (50, 3))
    C[rng.random((50, 3)) < 0.2] = np.nan
    w = np.array([0.5, 0.3, 0.2])
    idx = DeprivationIndex()
    for rule, cov in (("reweight", 0.5), ("neutral", 0.0), ("drop", 0.0)):
        idx.missing_domain_, idx.min_weight_coverage_ = rule, cov
        idx.transform_, idx.exponential_constant_ = "exponential", 23.0
        expected = idx._combine(C, w)
        got = stab.combine_domains(C, w[None, :], rule, idx.neutral_value(), cov)[0]
        assert np.allclose(got, expected, equal_nan=True)
        got3 = stab.combine_domains(np.stack([C, C]), np.stack([w, w]), rule, idx.neutral_value(), cov)
        assert np.allclose(got3[1], expected, equal_nan=True)


def test_indicator_noise_is_larger_for_small_communes_and_spread_over_domains():
    ref = np.sort(np.random.default_rng(0).normal(size=10000))
    x = np.zeros(3)
    k, c = 400.0, 400.0 * 0.5  # sigma2_between 0.5
    pop = np.array([50.0, 2000.0, 200000.0])
    raw = np.sqrt(c / (pop + k))
    sd = stab.indicator_noise_sd(x, ref, raw)
    assert sd[0] > sd[1] > sd[2] > 0
    assert sd[0] == pytest.approx(raw[0], rel=0.05)  # slope 1 at the centre of a N(0, 1) reference
    # a domain of two indicators with the same noise: sd / sqrt(2); only one available: sd
    d = stab.domain_noise_sd(np.array([[1.0, 1.0], [1.0, 1.0]]), np.array([[True, True], [True, False]]),
                             np.array([1.0, 1.0]))
    assert d.tolist() == pytest.approx([1 / np.sqrt(2), 1.0])


# --------------------------------------------------------------------------- the real run
@pytest.fixture(scope="module")
def run_out(main_run):
    return main_run.run_json.parent


def test_p_priority_in_the_priorities(main_run, run_out):
    pri = pd.read_csv(run_out / "priorities.csv", dtype={"zone_code": str}, low_memory=False)
    cols = list(pri.columns)
    assert cols.index("p_priority") == cols.index("priority_flag") + 1
    p = pri["p_priority"]
    scored = pri["priority_score"].notna()
    assert p[scored].between(0, 1).all() and p[~scored].isna().all()
    flag = pri["priority_flag"].astype(bool)
    assert p[flag].mean() > 0.7 and p[flag].median() >= 0.8
    assert p[~flag & scored].mean() < 0.1
    # the list's size is about what the replicates expect
    assert abs(p.sum() - flag.sum()) < 0.25 * flag.sum()


def test_stability_outputs_are_complete_and_consistent(main_run, run_out):
    audit = run_out / "audit"
    summary = json.loads((audit / "stability.json").read_text(encoding="utf-8"))
    assert summary["reproduces_run"] == {"score": True, "flag": True}
    assert summary["replicates"] == 200 and summary["zones_scored"] > 34000
    for key in ("jaccard_top", "jaccard_flagged", "kendall_tau"):
        d = summary[key]
        assert 0 < d["p05"] <= d["mean"] <= d["p95"] <= 1
    reps = pd.read_csv(audit / "stability_replicates.csv")
    assert len(reps) == 200 and reps["replicate"].tolist() == list(range(1, 201))
    assert reps["kendall_tau"].mean() == pytest.approx(summary["kendall_tau"]["mean"])
    zones = pd.read_csv(audit / "stability_zones.csv", dtype={"zone_code": str})
    pri = main_run.priorities.priorities.set_index("zone_code")
    z = zones.set_index("zone_code")
    assert set(z.index) == set(pri.index)
    assert np.allclose(z["p_priority"], pri["p_priority"].reindex(z.index), equal_nan=True)
    ok = z["rank_p05"].notna()
    assert (z.loc[ok, "rank_p05"] <= z.loc[ok, "rank_median"]).all()
    assert (z.loc[ok, "rank_median"] <= z.loc[ok, "rank_p95"]).all()
    md = (audit / "stability.md").read_text(encoding="utf-8")
    assert "Kendall tau" in md and "Jaccard" in md
    # the training sample: the calibration folds' models as jackknife replicates
    refits = pd.read_csv(audit / "stability_refits.csv")
    assert summary["settings"]["training_sample"] == summary["refits"]["method"] == "folds"
    assert len(refits) == summary["refits"]["refits"] == 3  # the tests' models: 3 folds
    assert refits["jaccard_top"].between(0.3, 1).all() and refits["kendall_tau"].between(0.5, 1).all()
    # a refit moves the list less than all the perturbations together
    assert refits["kendall_tau"].mean() > summary["kendall_tau"]["mean"]
    for m, d in summary["refits"]["forecast_spread"].items():
        assert d["median_sd"] > 0 and 0 < d["sd_to_half_width"] < 2, m
    assert "Training sample" in md and "jackknife" in md
    card = (audit / "model_card.md").read_text(encoding="utf-8")
    assert "## Stability of the list" in card and "stability.md" in card and "jackknife" in card
    timings = json.loads((run_out / "run.json").read_text(encoding="utf-8"))["timings_s"]
    # the step's time is recorded (measured in benchmarks/run_france.py, not asserted here)
    assert timings["prioritise.stability"] > 0


def test_training_sample_replicates_folds_or_bootstrap(main_run, fast_models_conf):
    """The default replicate models are the fold models' jackknife replicates, centred on the
    run's forecasts; models saved without fold models fall back to bootstrap refits, and the
    summary says which were used."""
    import dataclasses

    from territoria.models.bootstrap import fold_replicates
    from territoria.models.targets import load_model_config
    from territoria.pipelines.prioritise import fold_forecasts, stability_audit

    engine = main_run.priorities.engine
    scored = engine.baseline()
    folds = fold_forecasts(engine, scored)
    assert folds.method == "folds" and folds.refits == 3
    for m, measure in enumerate(folds.measures):
        trained = engine.trained[measure]
        X = scored.designs[measure][0]
        np.testing.assert_allclose(folds.predictions[:, :, m].mean(axis=0), trained.model.predict(X), atol=1e-12)
        fold_preds = np.stack([f.predict(X) for f in trained.fold_models])
        np.testing.assert_array_equal(folds.predictions[:, :, m], fold_replicates(trained.model.predict(X), fold_preds))
    settings = stab.StabilitySettings(replicates=4, bootstrap_refits=2)
    engine_without = dataclasses.replace(engine, trained={
        k: dataclasses.replace(v, fold_models=[]) for k, v in engine.trained.items()})
    res = stability_audit(engine_without, scored, settings, model_config=load_model_config(fast_models_conf))
    assert res.summary["refits"]["method"] == "bootstrap" and len(res.refits) == 2
    none = stability_audit(engine, scored, dataclasses.replace(settings, training_sample="none"))
    assert "refits" not in none.summary and not len(none.refits)
