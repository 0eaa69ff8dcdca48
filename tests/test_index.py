"""Composite deprivation index: orientation, IMD transform, weights, missing data, real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from territoria.errors import DataError
from territoria.models.index import (
    DeprivationIndex,
    exponential_transform,
    index_for_period,
    index_trajectory,
    load_index_config,
    rank_and_decile,
    weight_sensitivity,
)
from territoria.registry import DOMAINS, load_registry


def _zones(n: int) -> pd.Index:
    return pd.Index([f"{i:05d}" for i in range(n)], name="zone_code")


def _synthetic(n: int = 500, seed: int = 0) -> pd.DataFrame:
    """Economic (median income: higher is better; poverty rate: higher is worse) and
    education (school IPS: higher is better) indicators of n zones."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "median_income": rng.normal(22000, 3000, n),
            "poverty_rate": rng.normal(14, 5, n),
            "school_ips_mean": rng.normal(104, 12, n),
        },
        index=_zones(n),
    )


TWO_DOMAINS = {"economic": 0.5, "education": 0.5}


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("normalisation", ["rank_normal", "robust_z"])
@pytest.mark.parametrize("transform", ["exponential", "none"])
def test_worse_values_give_a_higher_index(normalisation, transform):
    X = _synthetic()
    idx = DeprivationIndex(
        weights=TWO_DOMAINS, normalisation=normalisation, transform=transform
    ).fit(X)
    base = idx.transform(X)
    worse = X.copy()
    worse["median_income"] -= 2000  # higher is better: lower is worse
    worse["poverty_rate"] += 5  # higher is worse
    worse["school_ips_mean"] -= 10
    after = idx.transform(worse)
    assert (after["deprivation_index"] >= base["deprivation_index"] - 1e-9).all()
    assert (after["deprivation_index"] > base["deprivation_index"]).mean() > 0.95
    assert (after["domain_economic"] > base["domain_economic"]).all()
    # the poorest zone (lowest income, highest poverty, lowest IPS) is ranked first
    extreme = X.copy()
    extreme.loc["00000"] = [10000, 60, 60]
    out = idx.transform(extreme)
    assert out.loc["00000", "index_rank"] == 1 and out.loc["00000", "index_decile"] == 10


def test_indicators_come_from_the_registry_only():
    """Identity columns, derived features and designations never enter the index."""
    X = _synthetic().assign(
        zone_name="x",
        departement="59",
        is_qpv=1.0,
        zrr=1.0,
        median_income__chg=1.0,
        poverty_rate__gap_nbr=3.0,
        population=1000.0,
    )
    idx = DeprivationIndex(weights=TWO_DOMAINS).fit(X)
    assert sorted(idx.indicators_.index) == ["median_income", "poverty_rate", "school_ips_mean"]


def test_third_party_indicators_are_excluded_by_default():
    reg = load_registry().model_copy(deep=True)
    reg.indicators["poverty_rate"].third_party = True
    X = _synthetic()
    assert (
        "poverty_rate"
        not in DeprivationIndex(weights=TWO_DOMAINS, registry=reg).fit(X).indicators_.index
    )
    with_tp = DeprivationIndex(weights=TWO_DOMAINS, registry=reg, include_third_party=True).fit(X)
    assert "poverty_rate" in with_tp.indicators_.index


# --------------------------------------------------------------------------- IMD transform


def test_exponential_transform_range():
    r = np.array([1e-9, 0.5, 0.9, 1.0])
    x = exponential_transform(r)
    assert x[0] == pytest.approx(0, abs=1e-6) and x[-1] == pytest.approx(100)
    assert x[2] == pytest.approx(50.4, abs=0.2)  # the worst decile spans 50-100
    assert np.all(np.diff(x) > 0)


def test_one_very_bad_domain_is_not_cancelled_by_a_good_one():
    """Zone A: the worst economy of all but the best schools; zone B: somewhat bad on both.

    Summing normal scores, A's good domain cancels its bad one and B looks worse; with the
    IMD exponential transform A stays the more deprived.
    """
    X = _synthetic(n=1000, seed=1)[["median_income", "school_ips_mean"]]
    X.loc["A"] = [X["median_income"].min() - 1000, X["school_ips_mean"].max() + 5]
    X.loc["B"] = [X["median_income"].quantile(0.25), X["school_ips_mean"].quantile(0.25)]
    linear = DeprivationIndex(weights=TWO_DOMAINS, transform="none").fit_transform(X)
    expo = DeprivationIndex(weights=TWO_DOMAINS, transform="exponential").fit_transform(X)
    assert linear.loc["B", "deprivation_index"] > linear.loc["A", "deprivation_index"]
    assert expo.loc["A", "deprivation_index"] > expo.loc["B", "deprivation_index"]
    assert expo.loc["A", "domain_economic_exp"] > 95


# --------------------------------------------------------------------------- weights


def test_configured_weights_are_valid_and_used():
    cfg = load_index_config()
    weights = cfg.domain_weights()
    assert sum(weights.values()) == pytest.approx(1.0)
    assert set(weights) <= set(DOMAINS)
    for d in cfg.domains.values():
        assert len(d.rationale) > 40
    for w in cfg.indicators.values():
        assert w.rationale
    X = _synthetic().assign(
        vacancy_rate=8.0, dist_gp=3.0, ftth_coverage_rate=0.0, irep_exposure=0.1, population=800.0
    )
    idx = DeprivationIndex().fit(X)
    positive = {d: w for d, w in weights.items() if w > 0}
    assert idx.weights_.to_dict() == pytest.approx(positive)
    table = idx.describe()
    assert table["effective_weight"].sum() == pytest.approx(1.0)
    assert (table["domain_rationale"].str.len() > 40).all()


def _conf(tmp_path, domains: str, extra: str = "") -> str:
    path = tmp_path / "index.yml"
    path.write_text(f"domains:\n{domains}{extra}", encoding="utf-8")
    return path


def test_weights_must_sum_to_one(tmp_path):
    path = _conf(
        tmp_path,
        "  economic: {weight: 0.5, rationale: income and work matter}\n"
        "  education: {weight: 0.4, rationale: skills matter a lot}\n",
    )
    with pytest.raises(DataError, match=r"index.yml: domain weights sum to 0.9, not 1"):
        load_index_config(path)
    with pytest.raises(DataError, match="sum to"):
        DeprivationIndex(weights={"economic": 0.7, "education": 0.2}).fit(_synthetic())


def test_unknown_domain_is_a_data_error(tmp_path):
    path = _conf(
        tmp_path,
        "  economic: {weight: 0.5, rationale: income and work matter}\n"
        "  health: {weight: 0.5, rationale: no such domain here}\n",
    )
    with pytest.raises(DataError, match="unknown domain 'health'"):
        load_index_config(path)
    with pytest.raises(DataError, match="unknown domain 'crime'"):
        DeprivationIndex(weights={"economic": 0.5, "crime": 0.5}).fit(_synthetic())


def test_unknown_or_unscored_indicator_weight_is_a_data_error(tmp_path):
    domains = "  economic: {weight: 1.0, rationale: income and work matter}\n"
    with pytest.raises(DataError, match="unknown indicator 'nope'"):
        load_index_config(
            _conf(tmp_path, domains, "indicators:\n  nope: {weight: 1, rationale: why not}\n")
        )
    with pytest.raises(DataError, match="'population' is not scored"):
        load_index_config(
            _conf(
                tmp_path, domains, "indicators:\n  population: {weight: 1, rationale: its size}\n"
            )
        )
    with pytest.raises(DataError, match="index.yml: domains.economic.rationale"):
        load_index_config(_conf(tmp_path, "  economic: {weight: 1.0}\n"))


# --------------------------------------------------------------------------- missing data


def test_missing_indicators_and_domains():
    X = _synthetic(n=300)
    X.loc["00001", "poverty_rate"] = np.nan  # one indicator missing: mean of the other
    X.loc["00002", ["median_income", "poverty_rate"]] = np.nan  # a whole domain missing
    X.loc["00003", :] = np.nan  # nothing known
    out = DeprivationIndex(weights=TWO_DOMAINS).fit(X).transform(X)
    assert out.loc[
        "00000", ["coverage_economic", "coverage_education", "n_indicators"]
    ].tolist() == [2, 1, 3]
    assert out.loc["00001", "coverage_economic"] == 1 and np.isfinite(
        out.loc["00001", "deprivation_index"]
    )
    # reweight: the zone's index is its education domain alone (weight coverage 0.5 >= 0.5)
    assert out.loc["00002", "weight_coverage"] == pytest.approx(0.5)
    assert out.loc["00002", "deprivation_index"] == pytest.approx(
        out.loc["00002", "domain_education_exp"]
    )
    assert np.isnan(out.loc["00003", "deprivation_index"]) and pd.isna(
        out.loc["00003", "index_decile"]
    )
    strict = DeprivationIndex(weights=TWO_DOMAINS, min_weight_coverage=0.6).fit(X).transform(X)
    assert np.isnan(strict.loc["00002", "deprivation_index"])
    drop = DeprivationIndex(weights=TWO_DOMAINS, missing_domain="drop").fit(X).transform(X)
    assert np.isnan(drop.loc["00002", "deprivation_index"])
    neutral_idx = DeprivationIndex(weights=TWO_DOMAINS, missing_domain="neutral").fit(X)
    neutral = neutral_idx.transform(X)
    expected = 0.5 * out.loc["00002", "domain_education_exp"] + 0.5 * neutral_idx.neutral_value()
    assert neutral.loc["00002", "deprivation_index"] == pytest.approx(expected)


def test_zones_without_residents_get_no_index():
    X = _synthetic(n=200).assign(population=500.0)
    X.loc["00005", "population"] = 0
    out = DeprivationIndex(weights=TWO_DOMAINS).fit(X).transform(X)
    assert np.isnan(out.loc["00005", "deprivation_index"])
    assert out["index_rank"].max() == 199


def test_small_zones_are_shrunk_towards_their_department():
    """A village of 20 people with an extreme unemployment rate is pulled towards its
    department; a town of 20,000 with the same rate keeps it."""
    rng = np.random.default_rng(3)
    n = 2000
    pop = np.exp(rng.uniform(np.log(20), np.log(50000), n))
    true = rng.normal(9, 2, n)
    X = pd.DataFrame(
        {
            "unemployment_rate": np.clip(true + rng.normal(0, 1, n) * 30 / np.sqrt(pop), 0, 100),
            "population": pop,
            "departement": rng.choice(["01", "02", "03"], n),
        },
        index=_zones(n),
    )
    X.loc["00000", ["unemployment_rate", "population"]] = [40.0, 20]
    X.loc["00001", ["unemployment_rate", "population"]] = [40.0, 20000]
    idx = DeprivationIndex(weights={"economic": 1.0}).fit(X)
    assert 50 < idx.shrinkage_["unemployment_rate"].k < 5000
    out = idx.transform(X)
    assert out.loc["00001", "index_rank"] < out.loc["00000", "index_rank"]
    off = DeprivationIndex(weights={"economic": 1.0}, shrinkage=False).fit(X).transform(X)
    assert off.loc["00000", "deprivation_index"] == pytest.approx(
        off.loc["00001", "deprivation_index"]
    )


# --------------------------------------------------------------------------- determinism


def test_deterministic_and_independent_of_row_order():
    X = _synthetic(n=400)
    a = DeprivationIndex(weights=TWO_DOMAINS).fit_transform(X)
    b = DeprivationIndex(weights=TWO_DOMAINS).fit_transform(X)
    pd.testing.assert_frame_equal(a, b)
    shuffled = X.sample(frac=1.0, random_state=5)
    c = DeprivationIndex(weights=TWO_DOMAINS).fit_transform(shuffled).loc[a.index]
    pd.testing.assert_frame_equal(a, c)


def test_a_scoring_normalises_once_and_never_reuses_another_matrix():
    X = _synthetic(n=400)
    idx = DeprivationIndex(weights=TWO_DOMAINS).fit(X)
    z = idx.normalise(X)
    assert idx.reuse_normalised(X, z) is z
    pd.testing.assert_frame_equal(idx.transform(X, z), idx.transform(X))
    # the normalised indicators of other zones (or of another order) are not taken for X's
    other = idx.normalise(X.iloc[::-1])
    assert idx.reuse_normalised(X, other) is not other
    pd.testing.assert_frame_equal(idx.transform(X, other), idx.transform(X))
    pd.testing.assert_frame_equal(idx.transform(X, z.iloc[:10]), idx.transform(X))


def test_rank_and_decile_conventions():
    s = pd.Series([5.0, 1.0, np.nan, 3.0, 3.0], index=list("abcde"))
    rank, decile = rank_and_decile(s)
    assert rank.tolist()[:2] == [1, 4] and pd.isna(rank["c"])
    assert rank["d"] == 2 and rank["e"] == 3  # ties broken by zone code
    assert decile["a"] == 8 and decile["b"] == 1  # 4 zones: rank 1 is in the top 25 %
    rank, decile = rank_and_decile(
        pd.Series(np.arange(20.0), index=[f"z{i:02d}" for i in range(20)])
    )
    assert decile["z19"] == 10 and decile["z18"] == 10 and decile["z17"] == 9 and decile["z00"] == 1
    assert (decile.value_counts() == 2).all()


def test_sensitivity_on_synthetic_data():
    X = _synthetic(n=1000)
    idx = DeprivationIndex(weights=TWO_DOMAINS).fit(X)
    none = weight_sensitivity(X, n_draws=10, seed=0, index=idx, spread=0.0)
    assert none.summary["mean_jaccard"] == pytest.approx(1.0)
    assert none.summary["share_stable_90"] == pytest.approx(1.0)
    r1 = weight_sensitivity(X, n_draws=40, seed=1, index=idx)
    r2 = weight_sensitivity(X, n_draws=40, seed=1, index=idx)
    assert r1.summary == r2.summary
    assert 0 < r1.summary["mean_jaccard"] <= 1
    assert np.allclose(r1.draws[["economic", "education"]].sum(axis=1), 1.0)
    d = weight_sensitivity(X, n_draws=40, seed=1, index=idx, method="dirichlet")
    assert 0 < d.summary["mean_jaccard"] <= 1


# --------------------------------------------------------------------------- real data

CASES = {
    "59172": "Denain",
    "62048": "Auchel",
    "14061": "Souleuvre en Bocage",
    "93066": "Saint-Denis",
}


@pytest.fixture(scope="module")
def national(feature_build):
    idx = DeprivationIndex().fit(feature_build.features)
    return idx, idx.transform(feature_build.features)


def test_real_data_index_is_complete_and_balanced(national, feature_build):
    idx, out = national
    assert len(out) == len(feature_build.features)
    assert out["deprivation_index"].notna().mean() > 0.99
    counts = out["index_decile"].value_counts()
    assert counts.max() - counts.min() <= 1
    assert set(idx.domains_) == {
        "economic",
        "education",
        "services",
        "residential",
        "environment",
        "digital",
    }
    assert out["deprivation_index"].dropna().between(0, 100).all()


def test_denain_is_in_the_worst_decile_nationally(national):
    _, out = national
    assert out.loc["59172", "index_decile"] == 10  # rank ~40 of 34,845 communes
    assert out.loc["59172", "domain_economic_exp"] > 90
    # the other known cases: Auchel and Saint-Denis among the most deprived, the rural
    # commune nouvelle of Souleuvre-en-Bocage in the middle, Neuilly-sur-Seine among the least
    assert out.loc["62048", "index_decile"] == 10
    assert out.loc["93066", "index_decile"] == 10
    assert 3 <= out.loc["14061", "index_decile"] <= 7
    assert out.loc["92051", "index_decile"] <= 3


def test_real_data_sensitivity(national, feature_build):
    idx, _ = national
    res = weight_sensitivity(feature_build.features, n_draws=50, seed=0, index=idx)
    s = res.summary
    assert 0.6 < s["mean_jaccard"] <= 1.0
    assert 0.5 < s["share_stable_90"] <= 1.0
    assert s["n_top"] == s["n_zones"] // 10  # the zones of decile 10
    assert res.zones["p_top_decile"].between(0, 1).all()
    assert res.zones.loc["59172", "p_top_decile"] == 1.0


def test_index_for_period_uses_latest_vintages_up_to_t(feature_build):
    reg = load_registry()
    with pytest.warns(UserWarning, match="no indicator for weighted domain"):
        out = index_for_period(feature_build.panel, reg, 2016)
    vint = out.attrs["vintages"]
    assert vint and all(v <= 2016 for v in vint.values())
    assert vint["median_income"] == 2016 and vint["neet_rate"] == 2013
    assert (out["period"] == 2016).all()
    assert out.loc["59172", "index_decile"] == 10


def test_index_trajectory_on_common_indicators(feature_build):
    reg = load_registry()
    with pytest.warns(UserWarning):
        traj = index_trajectory(feature_build.panel, reg, [2016, 2021])
    v = traj.attrs["vintages"]
    assert set(v[2016]) == set(v[2021])
    assert v[2021]["median_income"] == 2021
    denain = traj[traj["zone_code"] == "59172"].set_index("period")
    assert denain.loc[2016, "index_decile"] == 10 and denain.loc[2021, "index_decile"] == 10
