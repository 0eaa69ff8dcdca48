"""NEET adapter on the real file: published values and malformed variants."""

import math

import pytest

from territoria.errors import DataError
from territoria.features.sources.neet import Neet

NEET = "social/neet_communes_2008_2013_2018.csv"


def _value(df, code, period):
    sel = df[(df.zone_code == code) & (df.period == period)]
    assert len(sel) == 1, (code, period)
    return sel.value.iloc[0]


@pytest.fixture(scope="module")
def neet():
    return Neet().load()


def test_published_values(neet):
    # neet_communes_2008_2013_2018.csv: "62048;Auchel;2018;34,70", "59172;Denain;2018;36,60",
    # "62048;Auchel;2008;33,80", "93066;Saint-Denis;2013;25,60"
    assert _value(neet, "62048", 2018) == pytest.approx(34.7)
    assert _value(neet, "59172", 2018) == pytest.approx(36.6)
    assert _value(neet, "62048", 2008) == pytest.approx(33.8)
    assert _value(neet, "93066", 2013) == pytest.approx(25.6)


def test_three_periods_one_variable(neet):
    assert set(neet.period.unique()) == {2008, 2013, 2018}
    assert neet.variable.eq("neet_rate").all()
    assert neet.cog_year.eq(2021).all()
    assert neet.groupby("period").zone_code.nunique().eq(34965).all()


def test_empty_cells_are_missing(neet):
    assert math.isnan(_value(neet, "97601", 2018))  # Mayotte: not published


def _lines(raw_text, n=40):
    return raw_text(NEET).splitlines()[:n]


def test_missing_column_and_wrong_separator(variant, raw_text):
    lines = _lines(raw_text)
    renamed = [lines[0].replace("part_non_inseres", "part_neet"), *lines[1:]]
    with pytest.raises(DataError, match=r"neet_communes_2008_2013_2018.csv: column 'part_non_inseres': missing"):
        Neet(variant(NEET, "\n".join(renamed))).load()
    tabbed = [ln.replace(";", "\t") for ln in lines]
    with pytest.raises(DataError, match="wrong separator: the header is split by tab"):
        Neet(variant(NEET, "\n".join(tabbed))).load()


def test_empty_and_header_only(variant, raw_text):
    with pytest.raises(DataError, match="empty file"):
        Neet(variant(NEET, "")).load()
    with pytest.raises(DataError, match="header only"):
        Neet(variant(NEET, _lines(raw_text)[0] + "\n")).load()


def test_duplicated_commune_year(variant, raw_text):
    lines = _lines(raw_text)
    with pytest.raises(DataError, match=r"line 41: column 'codgeo': duplicated code '01001' for year 2008"):
        Neet(variant(NEET, "\n".join([*lines, lines[1]]))).load()


def test_garbage_out_of_range_and_unknown_year(variant, raw_text):
    lines = _lines(raw_text)
    bad = [*lines[:4], lines[4].rsplit(";", 1)[0] + ";n.a.", *lines[5:]]
    with pytest.raises(DataError, match=r"line 5: column 'part_non_inseres': non-numeric value 'n.a.'"):
        Neet(variant(NEET, "\n".join(bad))).load()
    bad = [*lines[:4], lines[4].rsplit(";", 1)[0] + ";142,50", *lines[5:]]
    with pytest.raises(DataError, match=r"line 5: column 'part_non_inseres': value 142.5 outside"):
        Neet(variant(NEET, "\n".join(bad))).load()
    bad = [*lines[:4], lines[4].replace(";2008;", ";2011;"), *lines[5:]]
    with pytest.raises(DataError, match=r"line 5: column 'an': unexpected census year '2011'"):
        Neet(variant(NEET, "\n".join(bad))).load()
    bad = [*lines[:4], "1A001" + lines[4][5:], *lines[5:]]
    with pytest.raises(DataError, match=r"line 5: column 'codgeo': invalid commune code '1A001'"):
        Neet(variant(NEET, "\n".join(bad))).load()
