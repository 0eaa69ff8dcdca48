"""Filosofi adapters on the real files: published values and malformed variants."""

import math

import pytest

from territoria.errors import DataError
from territoria.features.sources.filosofi import FilosofiCommune, FilosofiIris

F2019 = "insee/filosofi/cc_filosofi_2019_COM.CSV"
F2021 = "insee/filosofi/cc_filosofi_2021_COM.csv"


def _value(df, code, variable, period):
    sel = df[(df.zone_code == code) & (df.variable == variable) & (df.period == period)]
    assert len(sel) == 1, (code, variable, period)
    return sel.value.iloc[0]


@pytest.fixture(scope="module")
def filosofi():
    return FilosofiCommune().load()


def test_denain_2019_published_values(filosofi):
    # INSEE Filosofi 2019, Denain (59172): median 14,320 EUR, poverty rate 42 %
    assert _value(filosofi, "59172", "median_income", 2019) == 14320
    assert _value(filosofi, "59172", "poverty_rate", 2019) == 42
    assert _value(filosofi, "59172", "households_fiscal", 2019) == 7352


def test_2021_decimal_commas_and_s_secret(filosofi):
    assert _value(filosofi, "59172", "share_activity_income", 2021) == pytest.approx(57.9)
    # 01001 is secret ('s') for the poverty rate in 2021, published for the median
    assert math.isnan(_value(filosofi, "01001", "poverty_rate", 2021))
    assert _value(filosofi, "01001", "median_income", 2021) == 25820


def test_2019_empty_secret_cells_are_missing(filosofi):
    assert math.isnan(_value(filosofi, "01001", "poverty_rate", 2019))


def test_disp_format_2014_median(filosofi):
    # 2014 file: decimal comma median for Ambérieu-en-Bugey
    assert _value(filosofi, "01004", "median_income", 2014) == pytest.approx(19756.1)
    assert set(filosofi.period.unique()) == {2014, 2015, 2016, 2018, 2019, 2021}


def test_iris_declared_income_not_mixed_with_disposable():
    iris = FilosofiIris().load()
    assert iris.level.eq("iris").all()
    assert iris.variable.str.startswith("declared_").all()
    assert iris.zone_code.nunique() > 15000


def test_missing_column_is_named(variant, raw_text):
    text = raw_text(F2019).replace("MED19", "MEDIANE19", 1)
    with pytest.raises(DataError, match=r"cc_filosofi_2019_COM.CSV: column 'MED19': missing column"):
        FilosofiCommune(variant(F2019, text)).load([2019])


def test_wrong_separator(variant, raw_text):
    text = raw_text(F2019).replace(";", ",")
    with pytest.raises(DataError, match="wrong separator"):
        FilosofiCommune(variant(F2019, text)).load([2019])


def test_latin1_file_is_read(variant, raw_text):
    text = raw_text("insee/filosofi/FILO2014_DISP_COM.csv")
    root = variant("insee/filosofi/FILO2014_DISP_COM.csv", text.encode("cp1252"))
    df = FilosofiCommune(root).load([2014])
    assert _value(df, "01004", "median_income", 2014) == pytest.approx(19756.1)


def test_empty_and_header_only(variant, raw_text):
    with pytest.raises(DataError, match="empty file"):
        FilosofiCommune(variant(F2021, "")).load([2021])
    header = raw_text(F2021).splitlines()[0] + "\n"
    with pytest.raises(DataError, match="header only"):
        FilosofiCommune(variant(F2021, header)).load([2021])


def test_duplicated_codes(variant, raw_text):
    lines = raw_text(F2021).splitlines()
    with pytest.raises(DataError, match="duplicated code '01001'"):
        FilosofiCommune(variant(F2021, "\n".join([*lines, lines[1]]))).load([2021])


def test_garbage_and_out_of_range(variant, raw_text):
    lines = raw_text(F2019).splitlines()
    lines[3] = lines[3].replace("20510", "abc", 1)
    with pytest.raises(DataError, match=r"line 4: column 'MED19': non-numeric value 'abc'"):
        FilosofiCommune(variant(F2019, "\n".join(lines))).load([2019])
    lines = raw_text(F2019).splitlines()
    cells = lines[3].split(";")
    cells[5] = "180"  # TP6019: a poverty rate of 180 %
    lines[3] = ";".join(cells)
    with pytest.raises(DataError, match=r"column 'TP6019': value 180.0 outside"):
        FilosofiCommune(variant(F2019, "\n".join(lines))).load([2019])
