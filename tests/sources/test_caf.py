"""CAF adapter on the real files: published values, year layouts and malformed variants."""

import math

import pytest

from territoria.errors import DataError
from territoria.features.sources.caf import CafIris

F2016 = "social/data_CAF_2016_IRIS.csv"
F2019 = "social/data_CAF_2019_IRIS.csv"


def _value(df, code, variable, period):
    sel = df[(df.zone_code == code) & (df.variable == variable) & (df.period == period)]
    assert len(sel) == 1, (code, variable, period)
    return sel.value.iloc[0]


@pytest.fixture(scope="module")
def caf():
    return CafIris().load([2016, 2019])


def test_denain_published_counts(caf):
    # data_CAF_2016_IRIS.csv, IRIS 591720101 (Denain, faubourg du château):
    # A=759, PERCOU="1 997" (narrow no-break space), ARSAS=209, APRES100=198
    assert _value(caf, "591720101", "caf_recipients", 2016) == 759
    assert _value(caf, "591720101", "caf_covered_persons", 2016) == 1997
    assert _value(caf, "591720101", "caf_rsa", 2016) == 209
    assert _value(caf, "591720101", "caf_benefit_dependent_100", 2016) == 198
    # data_CAF_2019_IRIS.csv (codes-only layout): A=823, ARSAS=215, AAL=531
    assert _value(caf, "591720101", "caf_recipients", 2019) == 823
    assert _value(caf, "591720101", "caf_rsa", 2019) == 215
    assert _value(caf, "591720101", "caf_housing_aid", 2019) == 531


def test_stable_names_across_layouts(caf):
    v2016 = set(caf[caf.period == 2016].variable)
    v2019 = set(caf[caf.period == 2019].variable)
    assert v2016 - v2019 == {"caf_benefit_dependent_50", "caf_benefit_dependent_100"}
    assert v2019 < v2016
    assert caf.level.eq("iris").all()
    assert dict(caf.groupby("period").cog_year.first()) == {2016: 2015, 2019: 2020}


def test_blank_cells_are_secret(caf):
    # 024080102 has NOTE=5 and no published count in 2019
    assert math.isnan(_value(caf, "024080102", "caf_recipients", 2019))
    assert math.isnan(_value(caf, "024080102", "caf_rsa", 2019))
    assert _value(caf, "591720101", "caf_young_non_students", 2016) == 38  # A_NETUD_24


def _lines(raw_text, relative=F2019, n=40):
    return raw_text(relative).splitlines()[:n]


def test_missing_column_and_wrong_separator(variant, raw_text):
    lines = _lines(raw_text)
    renamed = [lines[0].replace("ARSAS", "ARSA"), *lines[1:]]
    with pytest.raises(DataError, match=r"data_CAF_2019_IRIS.csv: column 'ARSAS': missing column \(renamed\? found 'ARSA'\)"):
        CafIris(variant(F2019, "\n".join(renamed))).load([2019])
    with pytest.raises(DataError, match="wrong separator"):
        CafIris(variant(F2019, "\n".join(lines).replace(";", ","))).load([2019])


def test_empty_and_header_only(variant, raw_text):
    with pytest.raises(DataError, match="empty file"):
        CafIris(variant(F2019, "")).load([2019])
    with pytest.raises(DataError, match="header only"):
        CafIris(variant(F2019, _lines(raw_text)[0] + "\n")).load([2019])


def test_duplicated_and_invalid_iris(variant, raw_text):
    lines = _lines(raw_text)
    with pytest.raises(DataError, match=r"column 'CODGEO': duplicated code '010040101'"):
        CafIris(variant(F2019, "\n".join([*lines, lines[1]]))).load([2019])
    bad = [*lines[:2], "01004" + lines[2][9:], *lines[3:]]
    with pytest.raises(DataError, match=r"line 3: column 'CODGEO': invalid IRIS code '01004'"):
        CafIris(variant(F2019, "\n".join(bad))).load([2019])


def test_garbage_negative_and_shifted_columns(variant, raw_text):
    lines = _lines(raw_text)
    header = lines[0].split(";")

    def with_cell(column, value, row=3):
        out = list(lines)
        cells = out[row].split(";")
        cells[header.index(column)] = value
        out[row] = ";".join(cells)
        return "\n".join(out)

    with pytest.raises(DataError, match=r"line 4: column 'AAL': non-numeric value 'beaucoup'"):
        CafIris(variant(F2019, with_cell("AAL", "beaucoup"))).load([2019])
    with pytest.raises(DataError, match=r"line 4: column 'A': value -5.0 outside"):
        CafIris(variant(F2019, with_cell("A", "-5"))).load([2019])
    with pytest.raises(DataError, match=r"line 4: column 'ARSAS': 5000 recipients of ARSAS exceed all recipients"):
        CafIris(variant(F2019, with_cell("ARSAS", "5000"))).load([2019])


def test_thin_space_thousands_are_read(variant, raw_text):
    # the 2016 layout writes 2,256 as "2\u202f256" (row 010040102, PERCOU)
    lines = _lines(raw_text, F2016)
    df = CafIris(variant(F2016, "\n".join(lines))).load([2016])
    assert _value(df, "010040102", "caf_covered_persons", 2016) == 2256
