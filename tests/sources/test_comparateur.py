"""Comparateur de territoires adapters on the real files: published values and malformed variants."""

import io
import math
import zipfile

import pytest

from territoria.errors import DataError
from territoria.features.sources.comparateur import Comparateur, ComparateurCommunes2024
from territoria.paths import bundled_data_dir, resolve_data_file

ZIP = "insee/comparateur/base_cc_comparateur_csv.zip"
MEMBER = "base_cc_comparateur.CSV"
EXTRACT = "insee/comparateur/communes_2024_extract.csv"


def _value(df, code, variable, period, level=None):
    sel = df[(df.zone_code == code) & (df.variable == variable) & (df.period == period)]
    if level is not None:
        sel = sel[sel.level == level]
    assert len(sel) == 1, (code, variable, period)
    return sel.value.iloc[0]


def _member_lines(n=None):
    with zipfile.ZipFile(resolve_data_file(bundled_data_dir(), ZIP)) as zf:
        lines = zf.read(MEMBER).decode("utf-8").splitlines()
    return lines if n is None else lines[:n]


def _zip(text, member=MEMBER):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, text)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cc():
    return Comparateur().load()


@pytest.fixture(scope="module")
def cc2024():
    return ComparateurCommunes2024().load()


# --- January 2022 edition (zip) ---------------------------------------------------------------


def test_auchel_2018_unemployment_from_the_published_counts(cc):
    # base_cc_comparateur.CSV, Auchel (62048): P18_CHOM1564 = 1017.3785621518,
    # P18_ACT1564 = 3977.31326804374 (weighted census counts, not integers)
    unemployed = _value(cc, "62048", "unemployed_15_64", 2018)
    actives = _value(cc, "62048", "actives_15_64", 2018)
    assert unemployed == pytest.approx(1017.3785621518)
    assert actives == pytest.approx(3977.31326804374)
    assert 100 * unemployed / actives == pytest.approx(25.5796, abs=1e-4)


def test_two_census_periods_and_other_counts(cc):
    # Auchel: P18_POP 10399, P13_POP 10863, ETTOT18 170; Denain P18_LOGVAC 1259.61928525421
    assert _value(cc, "62048", "population", 2018) == 10399
    assert _value(cc, "62048", "population", 2013) == 10863
    assert _value(cc, "62048", "establishments", 2018) == 170
    assert _value(cc, "59172", "vacant_dwellings", 2018) == pytest.approx(1259.61928525421)
    assert _value(cc, "59172", "area_km2", 2018) == _value(cc, "59172", "area_km2", 2013) == 11.52
    assert set(cc.period.unique()) == {2013, 2018, 2020}
    assert cc.cog_year.eq(2021).all()


def test_arrondissements_and_whole_cities(cc):
    assert _value(cc, "75101", "population", 2018, level="arm") == 16093
    assert _value(cc, "75056", "population", 2018, level="commune") == 2175601
    assert cc[cc.level == "arm"].zone_code.nunique() == 45


def test_blank_cells_are_missing(cc):
    # Mayotte has no census counts in this edition; 14666 has no 2013 jobs
    assert math.isnan(_value(cc, "97601", "population", 2018))
    assert _value(cc, "97601", "births", 2020) == 162
    assert math.isnan(_value(cc, "14666", "jobs", 2013))


def test_zip_missing_column(variant):
    lines = _member_lines(50)
    lines[0] = lines[0].replace("P18_LOGVAC", "P18_LOGVACANTS")
    root = variant(ZIP, _zip("\n".join(lines)))
    with pytest.raises(DataError, match=r"base_cc_comparateur.CSV: column 'P18_LOGVAC': missing column"):
        Comparateur(root).load()


def test_zip_wrong_member_separator_empty_and_header_only(variant):
    lines = _member_lines(50)
    with pytest.raises(DataError, match="has no member 'base_cc_comparateur.CSV'"):
        Comparateur(variant(ZIP, _zip("\n".join(lines), member="other.csv"))).load()
    with pytest.raises(DataError, match="wrong separator"):
        Comparateur(variant(ZIP, _zip("\n".join(lines).replace(";", ",")))).load()
    with pytest.raises(DataError, match="empty file"):
        Comparateur(variant(ZIP, _zip(""))).load()
    with pytest.raises(DataError, match="header only"):
        Comparateur(variant(ZIP, _zip(lines[0] + "\n"))).load()
    with pytest.raises(DataError, match="not a valid zip archive"):
        Comparateur(variant(ZIP, "\n".join(lines))).load()


def test_zip_duplicated_codes(variant):
    lines = _member_lines(50)
    with pytest.raises(DataError, match="duplicated code '01001'"):
        Comparateur(variant(ZIP, _zip("\n".join([*lines, lines[1]])))).load()


def test_zip_garbage_and_negative_count(variant):
    lines = _member_lines(50)
    cells = lines[3].split(";")
    cells[1] = "n/a"  # P18_POP
    lines[3] = ";".join(cells)
    with pytest.raises(DataError, match=r"line 4: column 'P18_POP': non-numeric value 'n/a'"):
        Comparateur(variant(ZIP, _zip("\n".join(lines)))).load()
    lines = _member_lines(50)
    cells = lines[3].split(";")
    cells[13] = "-12"  # P18_RP_PROP
    lines[3] = ";".join(cells)
    with pytest.raises(DataError, match=r"line 4: column 'P18_RP_PROP': value -12.0 outside"):
        Comparateur(variant(ZIP, _zip("\n".join(lines)))).load()


def test_zip_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        Comparateur(tmp_path).load()


# --- June 2024 extract ------------------------------------------------------------------------


def test_extract_published_values(cc2024):
    # communes_2024_extract.csv: Denain population_2021 = 20640; Auchel
    # pop_15_64_chomage_2021 = 912, pop_15_64_active_2021 = 3883
    assert _value(cc2024, "59172", "population", 2021) == 20640
    assert _value(cc2024, "59172", "population", 2015) == 19920
    assert _value(cc2024, "62048", "unemployed_15_64", 2021) == 912
    assert _value(cc2024, "62048", "actives_15_64", 2021) == 3883
    assert _value(cc2024, "62048", "births", 2022) == 129
    assert cc2024.cog_year.eq(2024).all()


def test_extract_deduplicates_postal_codes_and_delegated_communes(cc2024):
    # Saint-Denis has two postal-code rows; Souleuvre-en-Bocage two COM and two COMD rows
    assert _value(cc2024, "93066", "population", 2021) == 113942
    assert _value(cc2024, "14061", "population", 2021) == 8745
    assert not cc2024.duplicated(["zone_code", "level", "period", "variable"]).any()


def test_extract_arrondissements_and_mayotte(cc2024):
    assert _value(cc2024, "13201", "population", 2021, level="arm") == 39436
    assert cc2024[cc2024.level == "arm"].zone_code.nunique() == 45
    # Mayotte's census counts are published as 0: missing, births kept
    assert math.isnan(_value(cc2024, "97601", "population", 2021))
    assert _value(cc2024, "97601", "births", 2022) == 163


def _extract_lines(raw_text, n=60):
    return raw_text(EXTRACT).splitlines()[:n]


def test_extract_disagreeing_duplicates_are_rejected(variant, raw_text):
    lines = _extract_lines(raw_text)
    twin = lines[1].split(",")
    twin[11] = "999"  # population_2021 of a second 01001 row
    with pytest.raises(DataError, match=r"line 61: column 'population_2021': duplicated code '01001' with different"):
        ComparateurCommunes2024(variant(EXTRACT, "\n".join([*lines, ",".join(twin)]))).load()
    # identical duplicates are the format's intent: kept once
    df = ComparateurCommunes2024(variant(EXTRACT, "\n".join([*lines, lines[1]]))).load()
    assert _value(df, "01001", "population", 2021) == 832


def test_extract_malformed(variant, raw_text):
    lines = _extract_lines(raw_text)
    renamed = [lines[0].replace("pop_15_64_chomage_2021", "chomeurs_2021"), *lines[1:]]
    with pytest.raises(DataError, match=r"communes_2024_extract.csv: column 'pop_15_64_chomage_2021': missing"):
        ComparateurCommunes2024(variant(EXTRACT, "\n".join(renamed))).load()
    with pytest.raises(DataError, match="wrong separator"):
        ComparateurCommunes2024(variant(EXTRACT, "\n".join(lines).replace(",", ";"))).load()
    with pytest.raises(DataError, match="empty file"):
        ComparateurCommunes2024(variant(EXTRACT, "")).load()
    with pytest.raises(DataError, match="header only"):
        ComparateurCommunes2024(variant(EXTRACT, lines[0] + "\n")).load()
    bad = list(lines)
    cells = bad[5].split(",")
    cells[12] = "beaucoup"  # population_2015
    bad[5] = ",".join(cells)
    with pytest.raises(DataError, match=r"line 6: column 'population_2015': non-numeric value 'beaucoup'"):
        ComparateurCommunes2024(variant(EXTRACT, "\n".join(bad))).load()
    bad = list(lines)
    cells = bad[5].split(",")
    cells[6] = "XYZ"  # commune_type
    bad[5] = ",".join(cells)
    with pytest.raises(DataError, match=r"line 6: column 'commune_type': unknown commune type 'XYZ'"):
        ComparateurCommunes2024(variant(EXTRACT, "\n".join(bad))).load()
