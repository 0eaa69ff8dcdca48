"""Third-party census shares: values of the real files, tiny-zone rule and malformed variants."""

import io
import math

import pandas as pd
import pytest
import yaml

from territoria.errors import DataError
from territoria.features.sources.census_derived import CensusDerivedCommunes, CensusDerivedIris
from territoria.paths import bundled_data_dir, resolve_data_file
from territoria.paths import conf_dir
from territoria.registry import Indicator, Variable

IRIS62 = "insee/census_derived/agg_iris_62.parquet"
COMM = "insee/census_derived/agg_commARM_5Khab.parquet"


def _value(df, code, variable, period, level=None):
    sel = df[(df.zone_code == code) & (df.variable == variable) & (df.period == period)]
    if level is not None:
        sel = sel[sel.level == level]
    assert len(sel) == 1, (code, variable, period)
    return sel.value.iloc[0]


def _frame(relative):
    return pd.read_parquet(resolve_data_file(bundled_data_dir(), relative))


def _parquet(df):
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


@pytest.fixture(scope="module")
def iris():
    return CensusDerivedIris().load([59, 62])


@pytest.fixture(scope="module")
def communes():
    return CensusDerivedCommunes().load()


def test_iris_values(iris):
    # agg_iris_59.parquet, IRIS 591720101 (Denain): soc_txchom_1564_22 = 25.81,
    # log_vac_pct_22 = 6.36, P22_POP = 2549; agg_iris_62.parquet 620480101 (Auchel)
    # dmv_75p_pct_22 = 12.82
    assert _value(iris, "591720101", "cd_unemployment_rate", 2022) == 25.81
    assert _value(iris, "591720101", "cd_vacancy_rate", 2022) == 6.36
    assert _value(iris, "591720101", "cd_population", 2022) == 2549
    assert _value(iris, "620480101", "cd_share_75_plus", 2022) == 12.82
    assert set(iris.period.unique()) == {2011, 2016, 2022}
    assert iris.level.eq("iris").all()


def test_shares_above_100_in_tiny_zones_are_missing(iris):
    # Capecure (621600102, 8 inhabitants in 2022): unemployment 119.76 % in the file
    assert math.isnan(_value(iris, "621600102", "cd_unemployment_rate", 2022))
    shares = iris[~iris.variable.isin(["cd_ageing_index", "cd_population"])]
    assert shares.value.max() <= 100


def test_commune_values(communes):
    # agg_commARM_5Khab.parquet: Denain log_vac_pct_22 = 12.04, Auchel soc_txchom_1564_22 = 23.83,
    # Paris 1er (75101) dmv_iv_ind_22 = 131.59
    assert _value(communes, "59172", "cd_vacancy_rate", 2022) == 12.04
    assert _value(communes, "62048", "cd_unemployment_rate", 2022) == 23.83
    assert _value(communes, "75101", "cd_ageing_index", 2022, level="arm") == 131.59
    assert "00FR" not in set(communes.zone_code)
    assert communes.cog_year.eq(2025).all()


def test_everything_is_flagged_third_party(iris, communes):
    # this source's registry file alone (the merged registry is checked elsewhere)
    doc = yaml.safe_load((conf_dir() / "indicators" / "census_derived.yml").read_text(encoding="utf-8"))
    variables = {v.name: v for v in map(Variable.model_validate, doc["variables"])}
    indicators = [Indicator.model_validate(i) for i in doc["indicators"]]
    assert CensusDerivedIris.third_party and CensusDerivedCommunes.third_party
    for name in set(iris.variable) | set(communes.variable):
        var = variables[name]
        assert var.third_party and var.label_en.endswith("(third-party estimate)")
    assert indicators and all(i.third_party and i.label_en.endswith("(third-party estimate)")
                              for i in indicators)


def test_missing_column(variant):
    df = _frame(IRIS62).rename(columns={"soc_txchom_1564_22": "txchom_22"})
    with pytest.raises(DataError, match=r"agg_iris_62.parquet: column 'soc_txchom_1564_22': missing"):
        CensusDerivedIris(variant(IRIS62, _parquet(df))).load([62])


def test_not_parquet_empty_and_missing(variant, tmp_path):
    with pytest.raises(DataError, match="not a readable parquet file"):
        CensusDerivedIris(variant(IRIS62, "code;COM\n620010000;62001\n")).load([62])
    with pytest.raises(DataError, match="empty table"):
        CensusDerivedIris(variant(IRIS62, _parquet(_frame(IRIS62).iloc[:0]))).load([62])
    with pytest.raises(DataError, match="file not found"):
        CensusDerivedIris(tmp_path / "nowhere").load([62])


def test_duplicated_and_foreign_codes(variant):
    df = _frame(IRIS62)
    with pytest.raises(DataError, match=r"column 'code': duplicated code '620010000'"):
        CensusDerivedIris(variant(IRIS62, _parquet(pd.concat([df, df.iloc[:1]])))).load([62])
    df = _frame(IRIS62)
    df.loc[3, "code"] = "590010000"
    with pytest.raises(DataError, match=r"line 4: column 'code': IRIS '590010000' is not in department 62"):
        CensusDerivedIris(variant(IRIS62, _parquet(df))).load([62])


def test_garbage_and_out_of_range(variant):
    df = _frame(COMM)
    df["log_vac_pct_22"] = df["log_vac_pct_22"].astype(str)
    df.loc[5, "log_vac_pct_22"] = "abc"
    with pytest.raises(DataError, match=r"line 6: column 'log_vac_pct_22': non-numeric value 'abc'"):
        CensusDerivedCommunes(variant(COMM, _parquet(df))).load()
    df = _frame(COMM)
    df.loc[5, "soc_txchom_1564_22"] = 180.0  # a commune of 5,000+ inhabitants: not noise
    with pytest.raises(DataError, match=r"line 6: column 'soc_txchom_1564_22': value 180.0 outside"):
        CensusDerivedCommunes(variant(COMM, _parquet(df))).load()
    df = _frame(COMM)
    df.loc[5, "dmv_75p_pct_22"] = -3.0
    with pytest.raises(DataError, match=r"line 6: column 'dmv_75p_pct_22': value -3.0 outside"):
        CensusDerivedCommunes(variant(COMM, _parquet(df))).load()
