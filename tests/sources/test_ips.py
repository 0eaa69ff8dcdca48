"""IPS adapters on the real files: commune means of published school values, malformed variants."""

import math

import pytest

from territoria.errors import DataError
from territoria.features.sources.ips import IpsColleges, IpsEcoles

ECOLES = "social/fr-en-ips_ecoles_2022.csv"
COLLEGES = "social/fr-en-ips_colleges_2022.csv"


def _value(df, code, variable):
    sel = df[(df.zone_code == code) & (df.variable == variable)]
    assert len(sel) == 1, (code, variable)
    return sel.value.iloc[0]


@pytest.fixture(scope="module")
def ecoles():
    return IpsEcoles().load()


@pytest.fixture(scope="module")
def colleges():
    return IpsColleges().load()


def test_auchel_primary_schools_mean(ecoles):
    # fr-en-ips_ecoles_2022.csv, the six schools of Auchel (62048):
    # 82.2, 74.3, 74.1, 79.8, 66.1, 72.9 -> simple mean 74.9
    assert _value(ecoles, "62048", "schools_with_ips") == 6
    assert _value(ecoles, "62048", "school_ips_mean") == pytest.approx(74.9)
    assert ecoles.period.eq(2021).all()  # school year 2021-2022


def test_colleges_means(colleges):
    # fr-en-ips_colleges_2022.csv: Auchel COLLEGE LAVOISIER 82.1, COLLEGE SEVIGNE 73.3;
    # Souleuvre-en-Bocage (14061) COLLEGE VAL DE SOULEUVRE 93.8
    assert _value(colleges, "62048", "college_ips_mean") == pytest.approx(77.7)
    assert _value(colleges, "14061", "college_ips_mean") == pytest.approx(93.8)
    assert _value(colleges, "14061", "colleges_with_ips") == 1


def test_arrondissements_and_blank_ips(ecoles, colleges):
    assert set(ecoles[ecoles.zone_code.str.startswith("751")].level) == {"arm"}
    assert ecoles[ecoles.level == "arm"].zone_code.nunique() == 45
    # five collèges have no IPS: counted out of the mean, not zero
    assert colleges[colleges.variable == "college_ips_mean"].value.min() > 40
    assert not math.isnan(_value(colleges, "93066", "college_ips_mean"))


def _lines(raw_text, relative=COLLEGES, n=40):
    return raw_text(relative).splitlines()[:n]


def test_missing_column_and_wrong_separator(variant, raw_text):
    lines = _lines(raw_text)
    renamed = [lines[0].replace("Code INSEE de la commune", "Commune"), *lines[1:]]
    with pytest.raises(DataError, match=r"fr-en-ips_colleges_2022.csv: column 'Code INSEE de la commune': missing"):
        IpsColleges(variant(COLLEGES, "\n".join(renamed))).load()
    with pytest.raises(DataError, match="wrong separator"):
        IpsColleges(variant(COLLEGES, "\n".join(lines).replace(";", ","))).load()


def test_empty_and_header_only(variant, raw_text):
    with pytest.raises(DataError, match="empty file"):
        IpsEcoles(variant(ECOLES, "")).load()
    with pytest.raises(DataError, match="header only"):
        IpsEcoles(variant(ECOLES, _lines(raw_text, ECOLES)[0] + "\n")).load()


def test_duplicated_school(variant, raw_text):
    lines = _lines(raw_text)
    with pytest.raises(DataError, match=r"column 'UAI': duplicated code '0010024W'"):
        IpsColleges(variant(COLLEGES, "\n".join([*lines, lines[1]]))).load()


def test_garbage_out_of_range_and_mixed_years(variant, raw_text):
    lines = _lines(raw_text)
    bad = [*lines[:3], lines[3].rsplit(";", 1)[0] + ";élevé", *lines[4:]]
    with pytest.raises(DataError, match=r"line 4: column 'IPS': non-numeric value 'élevé'"):
        IpsColleges(variant(COLLEGES, "\n".join(bad))).load()
    bad = [*lines[:3], lines[3].rsplit(";", 1)[0] + ";999", *lines[4:]]
    with pytest.raises(DataError, match=r"line 4: column 'IPS': value 999.0 outside"):
        IpsColleges(variant(COLLEGES, "\n".join(bad))).load()
    bad = [*lines[:3], lines[3].replace("2021-2022", "2022-2023", 1), *lines[4:]]
    with pytest.raises(DataError, match=r"column 'Rentrée scolaire': expected one school year"):
        IpsColleges(variant(COLLEGES, "\n".join(bad))).load()
