"""BPE adapter on the real files (2009, 2013 crosstabs; 2018 education) and malformed variants."""

import io

import openpyxl
import pytest

from territoria.errors import DataError
from territoria.features.sources.bpe import _CROSSTAB, Bpe

X2013 = "insee/bpe/bpe2013.xlsx"
E2018 = "insee/bpe/bpe18_enseignement.csv"


def _value(df, code, variable, period):
    sel = df[(df.zone_code == code) & (df.variable == variable) & (df.period == period)]
    assert len(sel) == 1, (code, variable, period)
    return sel.value.iloc[0]


@pytest.fixture(scope="module")
def bpe():
    return Bpe().load()


def test_denain_crosstab_counts(bpe):
    # bpe2009.xlsx, row 59172: 31 GPs, 12 pharmacies, 1 maternity, 1 emergency, 1 gendarmerie,
    # 1 post office, 9 nursery + 8 elementary schools, 2 LGT + 3 LP
    assert _value(bpe, "59172", "n_gp", 2009) == 31
    assert _value(bpe, "59172", "n_pharmacy", 2009) == 12
    assert _value(bpe, "59172", "n_maternity", 2009) == 1
    assert _value(bpe, "59172", "n_emergency", 2009) == 1
    assert _value(bpe, "59172", "n_gendarmerie", 2009) == 1
    assert _value(bpe, "59172", "n_post_office", 2009) == 1
    assert _value(bpe, "59172", "n_school_primary", 2009) == 17
    assert _value(bpe, "59172", "n_lycee", 2009) == 5
    # bpe2013.xlsx: 25 GPs; the Gendarmerie cell is empty (zero); one regional station
    assert _value(bpe, "59172", "n_gp", 2013) == 25
    assert _value(bpe, "59172", "n_gendarmerie", 2013) == 0
    assert _value(bpe, "59172", "n_station", 2013) == 1


def test_other_communes_and_2013_only_types(bpe):
    # Saint-Denis 2013: 7 post offices, 74 GPs, 3 regional stations; Auchel 2013: 9 GPs
    assert _value(bpe, "93066", "n_post_office", 2013) == 7
    assert _value(bpe, "93066", "n_gp", 2013) == 74
    assert _value(bpe, "93066", "n_station", 2013) == 3
    assert _value(bpe, "62048", "n_pharmacy", 2013) == 4
    # Souleuvre-en-Bocage (then Le Bény-Bocage) 2009: a gendarmerie and a collège
    assert _value(bpe, "14061", "n_gendarmerie", 2009) == 1
    assert _value(bpe, "14061", "n_college", 2009) == 1
    # stations and postal agencies are not in the 2009 nomenclature
    assert not ((bpe.period == 2009) & bpe.variable.isin(["n_station", "n_postal_agency"])).any()


def test_paris_arrondissements_are_arm_level(bpe):
    sel = bpe[(bpe.zone_code == "75101") & (bpe.period == 2013)]
    assert set(sel.level) == {"arm"}
    assert not (bpe.zone_code == "75056").any()
    assert bpe[bpe.period == 2009].zone_code.nunique() > 34000


def test_2018_education_and_priority_flag(bpe):
    # bpe18_enseignement.csv, Denain: C101 8 (all EP) + C104 7 (6 EP) schools, C201 4 (3 EP),
    # C301 2 + C302 3 lycées (not EP): 17 of 24 flagged establishments in priority education
    assert _value(bpe, "59172", "n_school_primary", 2018) == 15
    assert _value(bpe, "59172", "n_college", 2018) == 4
    assert _value(bpe, "59172", "n_college_priority_education", 2018) == 3
    assert _value(bpe, "59172", "n_school_priority_education", 2018) == 17
    assert _value(bpe, "59172", "share_school_priority_education", 2018) == pytest.approx(100 * 17 / 24)
    # IRIS 59172_0101: 2 nursery + 1 elementary schools, all EP
    iris = bpe[(bpe.zone_code == "591720101") & (bpe.variable == "n_school_primary")]
    assert iris.level.tolist() == ["iris"] and iris.value.tolist() == [3]


# -- crosstab variants: small workbooks built in memory -------------------------------------

def _labels():
    return [label for _, labels in _CROSSTAB.values() for label in labels]


def _xlsx(rows):
    wb = openpyxl.Workbook()
    ws = wb.active
    for row in rows:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _crosstab(data_rows, header=None, titles=()):
    header = header or ["depcom", "Total de nb_equip", *_labels()]
    return _xlsx([*titles, header, *data_rows])


def _row(code, **cells):
    labels = _labels()
    values = [None] * len(labels)
    for label, v in cells.items():
        values[labels.index(label)] = v
    return [code, 1, *values]


def test_small_workbook_with_title_rows_and_total(variant):
    rows = [_row("59172", Pharmacie=12), _row("1001", Pharmacie=1), ["Total général", 2]]
    root = variant(X2013, _crosstab(rows, titles=[["BPE 2013, nombre d'équipements"], [None]]))
    df = Bpe(root).load([2013])
    assert _value(df, "59172", "n_pharmacy", 2013) == 12
    assert _value(df, "01001", "n_gp", 2013) == 0  # empty cell, 4-digit code padded


def test_accents_folded_between_vintages(variant):
    header = ["INSEECOM", "Total", *[lab.replace("École", "Ecole") for lab in _labels()]]
    root = variant(X2013, _crosstab([_row("59172", **{"École élémentaire": 8})], header=header))
    assert _value(Bpe(root).load([2013]), "59172", "n_school_primary", 2013) == 8


def test_missing_or_renamed_type(variant):
    header = ["depcom", "Total", *[lab.replace("Pharmacie", "Pharmacies") for lab in _labels()]]
    root = variant(X2013, _crosstab([_row("59172")], header=header))
    with pytest.raises(DataError, match=r"bpe2013.xlsx: column 'Pharmacie': missing column \(renamed"):
        Bpe(root).load([2013])


def test_no_header_empty_and_not_a_workbook(variant):
    with pytest.raises(DataError, match="no header row found"):
        Bpe(variant(X2013, _xlsx([["some title"], ["59172", 1]]))).load([2013])
    with pytest.raises(DataError, match="header only"):
        Bpe(variant(X2013, _crosstab([]))).load([2013])
    with pytest.raises(DataError, match="empty file"):
        Bpe(variant(X2013, b"")).load([2013])
    with pytest.raises(DataError, match="not a valid Excel workbook"):
        Bpe(variant(X2013, "depcom;Pharmacie\n59172;12\n")).load([2013])


def test_crosstab_duplicates_garbage_and_range(variant):
    with pytest.raises(DataError, match="duplicated code '59172'"):
        Bpe(variant(X2013, _crosstab([_row("59172"), _row("59172")]))).load([2013])
    rows = [_row("59172"), _row("62048", Pharmacie="abc")]
    with pytest.raises(DataError, match=r"line 3: column 'Pharmacie': non-numeric value 'abc'"):
        Bpe(variant(X2013, _crosstab(rows))).load([2013])
    rows = [_row("59172", Maternité=-1)]
    with pytest.raises(DataError, match=r"line 2: column 'Maternité': value -1(.0)? outside"):
        Bpe(variant(X2013, _crosstab(rows))).load([2013])
    rows = [_row("59172", Urgences=1.5)]
    with pytest.raises(DataError, match="column 'Urgences': not a whole number"):
        Bpe(variant(X2013, _crosstab(rows))).load([2013])
    rows = [_row("59172"), _row("591X2")]
    with pytest.raises(DataError, match=r"line 3: column 'depcom': invalid commune code '591X2'"):
        Bpe(variant(X2013, _crosstab(rows))).load([2013])


# -- 2018 education CSV variants --------------------------------------------------------------

def test_education_missing_column_and_separator(variant, raw_text):
    text = raw_text(E2018)
    with pytest.raises(DataError, match=r"bpe18_enseignement.csv: column 'EP': missing column"):
        Bpe(variant(E2018, text.replace(";EP;", ";EDUC_PRIO;", 1))).load([2018])
    with pytest.raises(DataError, match="wrong separator"):
        Bpe(variant(E2018, text.replace(";", ","))).load([2018])


def test_education_empty_header_only_duplicates(variant, raw_text):
    lines = raw_text(E2018).splitlines()
    with pytest.raises(DataError, match="empty file"):
        Bpe(variant(E2018, "")).load([2018])
    with pytest.raises(DataError, match="header only"):
        Bpe(variant(E2018, lines[0] + "\n")).load([2018])
    with pytest.raises(DataError, match=r"line 3: duplicated row for 01004_0102 C101"):
        Bpe(variant(E2018, "\n".join([lines[0], lines[2], lines[2]]))).load([2018])


def test_education_garbage_flags_and_codes(variant, raw_text):
    lines = raw_text(E2018).splitlines()[:6]
    bad = lines.copy()
    bad[2] = bad[2][: bad[2].rindex(";")] + ";deux"
    with pytest.raises(DataError, match=r"line 3: column 'NB_EQUIP': non-numeric value 'deux'"):
        Bpe(variant(E2018, "\n".join(bad))).load([2018])
    bad = lines.copy()
    bad[3] = bad[3].replace(";0;PU;", ";Y;PU;")
    with pytest.raises(DataError, match=r"line 4: column 'EP': priority-education flag is not 0, 1 or X"):
        Bpe(variant(E2018, "\n".join(bad))).load([2018])
    bad = lines.copy()
    bad[2] = bad[2].replace("01004_0102", "01005_0102")
    with pytest.raises(DataError, match=r"line 3: column 'DCIRIS': invalid IRIS code"):
        Bpe(variant(E2018, "\n".join(bad))).load([2018])
    bad = lines.copy()
    bad[1] = bad[1].replace(";2018;", ";2019;")
    with pytest.raises(DataError, match=r"line 2: column 'AN': year is not 2018"):
        Bpe(variant(E2018, "\n".join(bad))).load([2018])
