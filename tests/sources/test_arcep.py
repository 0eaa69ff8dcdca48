"""ARCEP adapters on the real files (FttH per commune, mobile sites) and malformed variants."""

import pytest

from territoria.errors import DataError
from territoria.features.sources.arcep import ArcepFtth, ArcepMobileSites

DEPLOY = "arcep/arcep_ftth_communes_T3-2017_T1-2018.csv"
INFOS = "arcep/arcep_ftth_communes_infos_T1-2018.csv"
SITES = "arcep/2018_01_Sites_mobiles_2G_3G_4G_France_metropolitaine_L93.csv"


def _value(df, code, variable, period):
    sel = df[(df.zone_code == code) & (df.variable == variable) & (df.period == period)]
    assert len(sel) == 1, (code, variable, period)
    return sel.value.iloc[0]


@pytest.fixture(scope="module")
def ftth():
    return ArcepFtth().load()


@pytest.fixture(scope="module")
def sites():
    return ArcepMobileSites().load()


def test_saint_denis_connectable_premises_and_rate(ftth):
    # deployment file, 93066: T3 2017 8049, T4 2017 10712, T1 2018 11571 connectable, class 10
    assert _value(ftth, "93066", "ftth_connectable", 2017) == 10712  # last quarter of 2017
    assert _value(ftth, "93066", "ftth_connectable", 2018) == 11571
    assert _value(ftth, "93066", "ftth_coverage_class", 2018) == 10
    # infos file: 46 202 dwellings + 3 299 establishments (no-break-space thousands)
    assert _value(ftth, "93066", "ftth_premises", 2018) == 49501
    assert _value(ftth, "93066", "ftth_coverage_rate", 2018) == pytest.approx(100 * 11571 / 49501)
    assert not ((ftth.period == 2017) & (ftth.variable == "ftth_coverage_rate")).any()


def test_thousands_dash_and_cap(ftth):
    # Paris: ' 1 362 182    ' dwellings; Aast 64001: ' -    ' establishments (none)
    assert _value(ftth, "75056", "ftth_dwellings", 2018) == 1362182
    assert _value(ftth, "64001", "ftth_establishments", 2018) == 0
    # Denain and Auchel: no FttH yet in T1 2018; Auchel has 4 894 dwellings
    assert _value(ftth, "59172", "ftth_coverage_rate", 2018) == 0
    assert _value(ftth, "62048", "ftth_dwellings", 2018) == 4894
    # Marnoz 39315: 599 connectable for 212 premises -> capped at 100 %
    assert _value(ftth, "39315", "ftth_coverage_rate", 2018) == 100
    assert ftth.zone_code.nunique() > 35000


def _deploy_lines(raw_text, n=12):
    return raw_text(DEPLOY).splitlines()[:n]


def test_missing_column_and_separator(variant, copy_bundled, raw_text):
    copy_bundled(INFOS)
    lines = _deploy_lines(raw_text)
    lines[4] = lines[4].replace("Champ", "Type")
    with pytest.raises(DataError, match=r"arcep_ftth_communes_T3-2017_T1-2018.csv: column 'Champ': missing column"):
        ArcepFtth(variant(DEPLOY, "\n".join(lines))).load([2018])
    text = "\n".join(_deploy_lines(raw_text)).replace(",", ";")
    with pytest.raises(DataError, match="wrong separator"):
        ArcepFtth(variant(DEPLOY, text)).load([2018])
    lines = _deploy_lines(raw_text)
    lines[4] = lines[4].replace("T1 2018", "T1 2019")
    with pytest.raises(DataError, match=r"column 'T4 2018': no quarter column of 2018"):
        ArcepFtth(variant(DEPLOY, "\n".join(lines))).load([2018])


def test_empty_header_only_duplicates(variant, copy_bundled, raw_text):
    copy_bundled(INFOS)
    lines = _deploy_lines(raw_text)
    with pytest.raises(DataError, match="empty file"):
        ArcepFtth(variant(DEPLOY, "")).load([2018])
    with pytest.raises(DataError, match="header only"):
        ArcepFtth(variant(DEPLOY, "\n".join(lines[:5]))).load([2018])
    with pytest.raises(DataError, match="duplicated code '01001'"):
        ArcepFtth(variant(DEPLOY, "\n".join([*lines, lines[5], lines[6]]))).load([2018])


def test_garbage_class_and_row_kind(variant, copy_bundled, raw_text):
    copy_bundled(INFOS)
    lines = _deploy_lines(raw_text)
    lines[9] = "01004,Locaux Raccordables,1460,1793,n/a"
    with pytest.raises(DataError, match=r"line 10: column 'T1 2018': non-numeric value 'n/a'"):
        ArcepFtth(variant(DEPLOY, "\n".join(lines))).load([2018])
    lines = _deploy_lines(raw_text)
    lines[10] = "01004,Catégorie,10,10,30"
    with pytest.raises(DataError, match=r"line 11: column 'T1 2018': unknown coverage class 30"):
        ArcepFtth(variant(DEPLOY, "\n".join(lines))).load([2018])
    lines = _deploy_lines(raw_text)
    lines[10] = "01004,Prises,10,10,25"
    with pytest.raises(DataError, match=r"line 11: column 'Champ': unknown row kind 'Prises'"):
        ArcepFtth(variant(DEPLOY, "\n".join(lines))).load([2018])


def test_premises_file_errors(variant, copy_bundled, raw_text):
    copy_bundled(DEPLOY)
    lines = raw_text(INFOS).splitlines()[:20]
    bad = lines.copy()
    bad[4] = bad[4].replace("Logements", "Logement")
    with pytest.raises(DataError, match=r"arcep_ftth_communes_infos_T1-2018.csv: column 'Logements': missing column \(renamed"):
        ArcepFtth(variant(INFOS, "\n".join(bad))).load([2018])
    bad = lines.copy()
    bad[6] = bad[6].replace(" 152    ", " cent    ", 1)
    with pytest.raises(DataError, match=r"line 7: column 'Logements': non-numeric value 'cent'"):
        ArcepFtth(variant(INFOS, "\n".join(bad))).load([2018])
    bad = lines.copy()
    bad[6] = bad[6].replace(" 152    ", " -152    ", 1)
    with pytest.raises(DataError, match=r"line 7: column 'Logements': value -152(.0)? outside"):
        ArcepFtth(variant(INFOS, "\n".join(bad))).load([2018])


def test_2017_needs_no_premises_file(copy_bundled):
    root = copy_bundled(DEPLOY)
    df = ArcepFtth(root).load([2017])
    assert _value(df, "01004", "ftth_connectable", 2017) == 1793  # T4 2017 of Ambérieu
    with pytest.raises(DataError, match="arcep_ftth_communes_infos_T1-2018.csv: file not found"):
        ArcepFtth(root).load([2018])


# -- mobile sites -----------------------------------------------------------------------------

def test_sites_reprojected_and_merged(sites):
    assert str(sites.crs) == "EPSG:4326"
    assert sites.point_id.is_unique
    # first line '20801;102980;6847973;1;1;0': an Orange 2G/3G site on Ouessant
    first = sites[sites.point_id == "20801_102980_6847973"].iloc[0]
    assert first.operator == "Orange" and first.has_2g and first.has_3g and not first.has_4g
    assert first.geometry.x == pytest.approx(-5.0889, abs=1e-3)
    assert first.geometry.y == pytest.approx(48.4566, abs=1e-3)
    # lines 72719-72720 repeat a Bouygues site, with 4G on the second: merged, 4G kept
    assert sites[sites.point_id == "20820_1006022_6471312"].has_4g.tolist() == [True]
    # 77,147 rows: one without coordinates ('#N/A') dropped, 469 repeated sites merged
    assert len(sites) == 76678
    xmin, ymin, xmax, ymax = sites.total_bounds
    assert -5.2 < xmin and xmax < 9.6 and 41.3 < ymin and ymax < 51.2


def _site_lines(raw_text):
    return raw_text(SITES).splitlines()[:8]


def test_sites_swapped_or_degrees(variant, raw_text):
    lines = _site_lines(raw_text)
    lines[3] = "20820;6848664;103114;1;1;1"
    with pytest.raises(DataError, match=r"line 4: column 'X': X and Y are swapped"):
        ArcepMobileSites(variant(SITES, "\n".join(lines))).load()
    lines = _site_lines(raw_text)
    lines[2] = "20810;-4.98;48.44;1;1;0"
    with pytest.raises(DataError, match=r"line 3: column 'X': .*look like degrees: wrong CRS"):
        ArcepMobileSites(variant(SITES, "\n".join(lines))).load()
    lines = _site_lines(raw_text)
    lines[2] = "20810;2103113;6848661;1;1;0"
    with pytest.raises(DataError, match=r"line 3: column 'X': .*outside the Lambert-93 extent"):
        ArcepMobileSites(variant(SITES, "\n".join(lines))).load()


def test_sites_malformed(variant, raw_text):
    lines = _site_lines(raw_text)
    with pytest.raises(DataError, match=r"column '4G': missing column"):
        ArcepMobileSites(variant(SITES, "\n".join(lines).replace(";4G", ";LTE", 1))).load()
    with pytest.raises(DataError, match="wrong separator"):
        ArcepMobileSites(variant(SITES, "\n".join(lines).replace(";", ","))).load()
    with pytest.raises(DataError, match="empty file"):
        ArcepMobileSites(variant(SITES, "")).load()
    with pytest.raises(DataError, match="header only"):
        ArcepMobileSites(variant(SITES, lines[0])).load()
    bad = lines.copy()
    bad[5] = "20801;11x635;6799938;1;1;0"
    with pytest.raises(DataError, match=r"line 6: column 'X': non-numeric value '11x635'"):
        ArcepMobileSites(variant(SITES, "\n".join(bad))).load()
    bad = lines.copy()
    bad[5] = "20801;115635;6799938;1;2;0"
    with pytest.raises(DataError, match=r"line 6: column '3G': technology flag is not 0 or 1"):
        ArcepMobileSites(variant(SITES, "\n".join(bad))).load()
    bad = lines.copy()
    bad[5] = "Orange;115635;6799938;1;1;0"
    with pytest.raises(DataError, match=r"line 6: column 'Operateur': not a French operator code"):
        ArcepMobileSites(variant(SITES, "\n".join(bad))).load()
    bad = lines.copy()
    bad[5] = "20801;115635;#N/A;1;1;0"
    with pytest.raises(DataError, match=r"line 6: column 'Y': coordinate missing"):
        ArcepMobileSites(variant(SITES, "\n".join(bad))).load()
