"""Harmonisation to the COG 2026 on the real files: merges, conservation, unmapped codes."""

import numpy as np
import pandas as pd
import pytest

from territoria.features.harmonise import code_mapping, harmonise
from territoria.features.sources.cog import Cog
from territoria.features.sources.filosofi import FilosofiCommune
from territoria.registry import load_registry

ARM = r"^(?:751\d\d|6938\d|132\d\d)$"


@pytest.fixture(scope="module")
def cog2026():
    return Cog().read_vintage(2026)


@pytest.fixture(scope="module")
def mapping(cog2026):
    return code_mapping(cog2026)


@pytest.fixture(scope="module")
def filosofi():
    return FilosofiCommune().load([2014, 2021])


@pytest.fixture(scope="module")
def harmonised(filosofi, mapping):
    return harmonise(filosofi, mapping, load_registry(), target_cog=2026)


def _raw(df, codes, variable, period):
    sel = df[df.zone_code.isin(codes) & (df.variable == variable) & (df.period == period)]
    return sel


def _out(res, code, variable, period):
    t = res.table
    return t[(t.zone_code == code) & (t.variable == variable) & (t.period == period)].iloc[0]


def test_souleuvre_rebuilt_from_former_communes(cog2026, mapping, filosofi, harmonised):
    souleuvre = cog2026[(cog2026.code == "14061") & (cog2026.type == "commune-actuelle")].iloc[0]
    former = set(souleuvre.anciens_codes) | {"14061"}
    assert len(souleuvre.anciens_codes) == 21
    assert set(mapping.loc[mapping.old_code.isin(former), "code"]) == {"14061"}
    # Filosofi 2014 is in the COG 2015: the former communes are separate rows
    parts = _raw(filosofi, former, "households_fiscal", 2014)
    assert len(parts) > 1
    row = _out(harmonised, "14061", "households_fiscal", 2014)
    assert row.value == parts.value.sum()
    assert row.n_parts == len(parts)
    # the median of a merged commune is a weighted approximation, flagged as such
    med = _out(harmonised, "14061", "median_income", 2014)
    assert med.approx
    assert parts.shape[0] == med.n_parts or med.n_parts <= parts.shape[0]
    lo = _raw(filosofi, former, "median_income", 2014).value.min()
    hi = _raw(filosofi, former, "median_income", 2014).value.max()
    assert lo <= med.value <= hi


def test_saint_denis_absorbs_pierrefitte(filosofi, harmonised):
    # Filosofi 2021 (COG 2023) still has Pierrefitte-sur-Seine (93059) apart
    sd = _raw(filosofi, ["93066"], "households_fiscal", 2021).value.iloc[0]
    pf = _raw(filosofi, ["93059"], "households_fiscal", 2021).value.iloc[0]
    assert (sd, pf) == (41208, 10276)
    assert _out(harmonised, "93066", "households_fiscal", 2021).value == sd + pf
    assert not (harmonised.table.zone_code == "93059").any()
    # poverty rate: weighted by fiscal persons (106,397 and 30,999 persons; 36 % and 38 %)
    pov = _out(harmonised, "93066", "poverty_rate", 2021)
    assert pov.value == pytest.approx((36 * 106397 + 38 * 30999) / (106397 + 30999))
    assert pov.approx


def test_totals_conserved(filosofi, harmonised):
    for var in ("households_fiscal", "persons_fiscal"):
        for period in (2014, 2021):
            raw = filosofi[(filosofi.variable == var) & (filosofi.period == period)]
            # arrondissements are dropped where the whole commune is also published
            raw = raw[~raw.zone_code.str.match(ARM)]
            out = harmonised.table
            out = out[(out.variable == var) & (out.period == period)]
            assert out.value.sum() == pytest.approx(raw.value.sum(), rel=1e-12)
    assert harmonised.unmapped.empty


def test_unmapped_codes_are_reported_not_dropped(mapping):
    reg = load_registry()
    tidy = pd.DataFrame(
        {
            "zone_code": ["59172", "99999"],
            "level": "commune",
            "cog_year": 2021,
            "period": 2019,
            "variable": "households_fiscal",
            "value": [7352.0, 10.0],
        }
    )
    res = harmonise(tidy, mapping, reg, target_cog=2026)
    assert res.unmapped.zone_code.tolist() == ["99999"]
    assert "1 codes not in the target COG" in res.summary()
    assert res.table.zone_code.tolist() == ["59172"]


def test_arrondissements_summed_when_commune_absent(mapping):
    reg = load_registry()
    tidy = pd.DataFrame(
        {
            "zone_code": ["75101", "75102", "69381", "69123"],
            "level": ["arm", "arm", "arm", "commune"],
            "cog_year": 2021,
            "period": 2019,
            "variable": "households_fiscal",
            "value": [10.0, 20.0, 5.0, 100.0],
        }
    )
    t = harmonise(tidy, mapping, reg, target_cog=2026).table.set_index("zone_code")
    assert t.loc["75056", "value"] == 30.0
    assert t.loc["69123", "value"] == 100.0  # Lyon given whole: its arrondissement is redundant


def test_missing_parts_and_no_weights():
    reg = load_registry()
    mapping = pd.DataFrame({"old_code": ["A", "B", "C"], "code": ["A", "A", "C"]})
    tidy = pd.DataFrame(
        {
            "zone_code": ["A", "B", "A", "B", "C"],
            "level": "commune",
            "cog_year": 2015,
            "period": 2014,
            "variable": ["median_income", "median_income", "households_fiscal", "households_fiscal", "median_income"],
            "value": [10.0, 20.0, 1.0, np.nan, 30.0],
        }
    )
    t = harmonise(tidy, mapping, reg, target_cog=2026).table
    med = t[(t.zone_code == "A") & (t.variable == "median_income")].iloc[0]
    # B has no household count: only A's weight is usable
    assert med.value == 10.0 and med.approx and med.n_parts == 2
    hh = t[(t.zone_code == "A") & (t.variable == "households_fiscal")].iloc[0]
    assert hh.value == 1.0 and hh.n_parts == 2


def test_weight_from_another_source_at_nearest_period():
    reg = load_registry()
    mapping = pd.DataFrame({"old_code": ["A", "B"], "code": ["A", "A"]})
    tidy = pd.DataFrame(
        {
            "zone_code": ["A", "B"], "level": "commune", "cog_year": 2021, "period": 2013,
            "variable": "neet_rate", "value": [10.0, 40.0],
        }
    )
    census = pd.DataFrame(
        {
            "zone_code": ["A", "B", "A", "B"], "level": "commune", "cog_year": 2021,
            "period": [2016, 2016, 2008, 2008], "variable": "population",
            "value": [300.0, 100.0, 100.0, 300.0],
        }
    )
    t = harmonise(tidy, mapping, reg, target_cog=2026, weights=census).table
    # the census of 2016 is nearer to 2013 than that of 2008: weights 300 and 100
    assert t.value.iloc[0] == pytest.approx((10 * 300 + 40 * 100) / 400)
    assert t.approx.iloc[0]
    t = harmonise(tidy, mapping, reg, target_cog=2026, weights=census[census.period == 2008]).table
    assert t.value.iloc[0] == pytest.approx((10 * 100 + 40 * 300) / 400)


def test_souleuvre_rebuilt_in_bpe_2009_and_2013(cog2026, mapping):
    from territoria.features.sources.bpe import Bpe

    bpe = Bpe().load([2009, 2013])
    souleuvre = cog2026[(cog2026.code == "14061") & (cog2026.type == "commune-actuelle")].iloc[0]
    former = set(souleuvre.anciens_codes) | {"14061"}
    res = harmonise(bpe, mapping, load_registry(), target_cog=2026)
    for period in (2009, 2013):
        parts = _raw(bpe, former, "n_school_primary", period)
        # BPE of each year is in its own COG: the 2016 merger's former communes are apart
        assert len(parts) >= 15
        row = _out(res, "14061", "n_school_primary", period)
        assert row.value == parts.value.sum() and row.n_parts == len(parts)


def _two_sources(filosofi):
    """Filosofi's rows of two departments (one of them Corsica's), split by variable into two
    tables, as if from two sources."""
    rows = filosofi[filosofi.zone_code.str[:2].isin(["59", "2A"])]
    variables = sorted(rows.variable.unique())
    return {"a": rows[rows.variable.isin(variables[::2])].reset_index(drop=True),
            "b": rows[rows.variable.isin(variables[1::2])].reset_index(drop=True)}


def test_build_panel_consumes_its_tables_and_codes_its_keys(filosofi, cog2026):
    """``consume=True`` frees the caller's tables as they are harmonised and gives the same
    panel; its level, measure and source are categorical, their categories sorted and used."""
    import weakref

    from territoria.features.panel import build_panel, panel_codes

    registry = load_registry()
    reference, _ = build_panel(_two_sources(filosofi), cog2026, registry, target_cog=2026)
    tables = _two_sources(filosofi)
    freed = [weakref.ref(t) for t in tables.values()]
    panel, _ = build_panel(tables, cog2026, registry, target_cog=2026, consume=True)
    assert tables == {} and all(ref() is None for ref in freed)
    pd.testing.assert_frame_equal(panel, reference)
    assert panel.zone_code.str.startswith("2A").any()
    for column in ("level", "measure", "source"):
        values = panel[column]
        assert isinstance(values.dtype, pd.CategoricalDtype)
        assert list(values.cat.categories) == sorted(set(values.astype(str)))
    assert set(panel.source) == {"a", "b"}
    # the panel's codes read the categorical columns as the string ones
    codes = panel_codes(panel)
    strings = panel.astype({c: "str" for c in ("level", "measure", "source")})
    other = panel_codes(strings)
    assert list(codes.measures) == list(other.measures) and codes.measures.dtype == other.measures.dtype
    np.testing.assert_array_equal(codes.measure, other.measure)
    np.testing.assert_array_equal(codes.level, other.level)
