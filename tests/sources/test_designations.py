"""Official designations (ACV, PVD, QPV 2024, ZRR, ANCT zonings 2019) and ONPV QPV statistics.

Real files: published memberships and counts; malformed variants: clear DataError messages.
"""

import logging
import math

import pandas as pd
import pytest

from territoria.errors import DataError
from territoria.features.sources.cog import Cog
from territoria.features.sources.commune_names import NameIndex, match_names, normalise_name
from territoria.features.sources.designations import (
    DESIGNATION_SCHEMA,
    ActionCoeurDeVille,
    AnctZonings2019,
    PetitesVillesDeDemain,
    Qpv2024,
    ZrrClassification,
    commune_locations,
    parse_zrr_rows,
)
from territoria.features.sources.qpv_stats import (
    OnpvQpvDemography,
    OnpvQpvEmployment,
    OnpvQpvIncome,
)

ACV = "designations/action_coeur_de_ville_2018.csv"
PVD = "designations/petites_villes_de_demain_2020-01.csv"
QPV24 = "designations/anct_qpv2024_centroides_par_commune.geojson"
ZRR = "designations/diffusion-zonages-zrr-cog2021.xls"
SUP = "designations/anct_zonages_superposeur_2019.csv"
DEMO21 = "designations/qpv_stats_onpv/DEMO_2021.csv"
IPRO21 = "designations/qpv_stats_onpv/IPRO_2021.csv"
SUP_HEADER = "id,lib,perimetre,nbcom,info1,info2,info3,layer,path\n"


@pytest.fixture(autouse=True)
def _quiet(caplog):
    caplog.set_level(logging.ERROR)


@pytest.fixture(scope="module")
def name_index():
    cog = Cog()
    return NameIndex({y: cog.read_vintage(y) for y in (2021, 2026)})


@pytest.fixture(scope="module")
def locations():
    return commune_locations()


@pytest.fixture(scope="module")
def zonings(name_index, locations):
    adapter = AnctZonings2019(name_index=name_index, locations=locations)
    return adapter, adapter.load()


@pytest.fixture(scope="module")
def zrr():
    adapter = ZrrClassification()
    return adapter, adapter.load()


@pytest.fixture(scope="module")
def zrr_all():
    return ZrrClassification(include_unclassified=True).load()


def _has(df, code, programme):
    return bool(((df.zone_code == code) & (df.programme == programme)).any())


# -- ACV, PVD --------------------------------------------------------------------------------


def test_acv_denain_and_count():
    acv = ActionCoeurDeVille().load()
    assert len(acv) == 245 and acv.zone_code.is_unique
    assert _has(acv, "59172", "ACV")  # Denain
    assert set(acv.columns) == {"zone_code", "programme", "period", "status", "source"}
    assert acv.period.eq(2018).all() and acv.source.eq("acv").all()
    DESIGNATION_SCHEMA.validate(acv)


def test_pvd_small_towns_and_template_row():
    adapter = PetitesVillesDeDemain()
    pvd = adapter.load()
    # 1,607 rows in the file, one of which is the template row '999999 Trifouilly-les-Oies'
    assert len(pvd) == 1606
    assert _has(pvd, "14061", "PVD")  # Souleuvre-en-Bocage
    assert _has(pvd, "23001", "PVD")  # Ahun
    assert not _has(pvd, "59172", "PVD")  # Denain is ACV, not PVD
    assert adapter.problems == ["1 template row(s) dropped (999999 Trifouilly-les-Oies)"]


def test_csv_variants(variant, raw_text):
    text = raw_text(ACV)
    with pytest.raises(
        DataError, match=r"action_coeur_de_ville_2018.csv: column 'insee_com': missing column"
    ):
        ActionCoeurDeVille(variant(ACV, text.replace("insee_com", "code_commune", 1))).load()
    with pytest.raises(DataError, match="wrong separator"):
        ActionCoeurDeVille(variant(ACV, text.replace(",", ";"))).load()
    with pytest.raises(DataError, match="empty file"):
        ActionCoeurDeVille(variant(ACV, "")).load()
    with pytest.raises(DataError, match="header only"):
        ActionCoeurDeVille(variant(ACV, text.splitlines()[0] + "\n")).load()
    lines = text.splitlines()
    with pytest.raises(DataError, match="duplicated code '01004'"):
        ActionCoeurDeVille(variant(ACV, "\n".join([*lines, lines[1]]))).load()
    lines[2] = "1O53" + lines[2][5:]
    with pytest.raises(DataError, match=r"line 3: column 'insee_com': invalid commune code '1O53'"):
        ActionCoeurDeVille(variant(ACV, "\n".join(lines))).load()


def test_pvd_only_template_rows(variant, raw_text):
    lines = raw_text(PVD).splitlines()
    template = [ln for ln in lines if "999999" in ln]
    with pytest.raises(DataError, match="no commune rows"):
        PetitesVillesDeDemain(variant(PVD, "\n".join([lines[0], *template]))).load()


# -- QPV 2024 --------------------------------------------------------------------------------


def test_qpv2024_communes():
    adapter = Qpv2024()
    qpv = adapter.load()
    assert len(qpv) == 824
    denain = qpv.set_index("zone_code").loc["59172", "status"]
    assert denain == "QPV codes: QN05950M, QN05954M"
    listed = adapter.qpv_list()
    assert listed.qpv_code.nunique() == 1493
    assert set(listed[listed.zone_code == "59172"].qpv_name) == {"Denain", "Gambetta"}


def test_qpv2024_polygons_incomplete():
    adapter = Qpv2024()
    poly = adapter.polygons()
    assert poly.crs.to_epsg() == 4326 and len(poly) == 692
    assert poly.geometry.is_valid.all()
    assert adapter.problems == ["polygons incomplete: 150 of the 1493 QPV 2024 have no polygon"]


def test_qpv2024_variants(variant, raw_text):
    text = raw_text(QPV24)
    with pytest.raises(DataError, match="invalid QPV code 'QX00103M'"):
        Qpv2024(variant(QPV24, text.replace("QN00103M", "QX00103M", 1))).load()
    with pytest.raises(DataError, match="column 'insee_com': missing column"):
        Qpv2024(variant(QPV24, text.replace('"insee_com"', '"code_insee"'))).load()
    with pytest.raises(DataError, match="empty file"):
        Qpv2024(variant(QPV24, "")).load()
    with pytest.raises(DataError, match="empty file: no features"):
        Qpv2024(variant(QPV24, '{"type": "FeatureCollection", "features": []}')).load()


# -- ZRR -------------------------------------------------------------------------------------


def test_zrr_souleuvre_en_bocage(zrr):
    _, table = zrr
    status = table.set_index("zone_code").status
    # Souleuvre-en-Bocage (14061, merged on 1 January 2016): "C - Classée en ZRR" in the COG 2017 sheet
    assert status["14061"] == "classée"
    # its 21 former communes are not in the COG 2017 sheet (merged before)
    former = Cog().current(2026).set_index("code").loc["14061", "anciens_codes"]
    assert len(former) == 21 and not set(former) & set(table.zone_code)


def test_zrr_counts_and_statuses(zrr, zrr_all):
    _, table = zrr
    assert len(table) == 17976 and table.programme.eq("ZRR").all() and table.period.eq(2017).all()
    counts = table.status.value_counts()
    assert counts["classée"] == 13870 and counts["partiellement classée"] == 20
    assert len(zrr_all) == 35416 and (zrr_all.status == "non classée").sum() == 17440


def test_zrr_cog2021_sheet_truncated(zrr):
    adapter, _ = zrr
    assert any(
        "sheet 'Classement ZRR (COG 2021)' is truncated (2 communes" in p for p in adapter.problems
    )
    with pytest.raises(
        DataError, match=r"sheet 'Classement ZRR \(COG 2021\)' is truncated: 2 communes"
    ):
        adapter.read_sheet(2021)


def test_zrr_not_a_workbook(variant):
    with pytest.raises(
        DataError, match="diffusion-zonages-zrr-cog2021.xls: not a readable .xls workbook"
    ):
        ZrrClassification(variant(ZRR, "CODGEO;LIBGEO\n01001;X\n")).load()
    with pytest.raises(DataError, match="empty file"):
        ZrrClassification(variant(ZRR, b"")).load()


def test_zrr_sheet_parsing_errors():
    title = [
        ["Champ : France entière", "", "", ""],
        ["", "", "", ""],
        ["Code Insee", "Libellé", "", ""],
    ]
    header = ["CODGEO", "LIBGEO", "ZRR_SIMP", "ZONAGE_ZRR"]
    good = ["01001", "L'Abergement-Clémenciat", "NC - Non classée", "NC - Non classée"]
    ok = parse_zrr_rows(
        [*title, header, good, [1002.0, "X", "C - Classée en ZRR", "C - Classée en ZRR"]], "z.xls"
    )
    assert ok.zone_code.tolist() == ["01001", "01002"] and ok.code.tolist() == ["NC", "C"]
    with pytest.raises(DataError, match="column 'ZONAGE_ZRR': missing column"):
        parse_zrr_rows([*title, header[:3], good[:3]], "z.xls")
    with pytest.raises(DataError, match="no header row with CODGEO"):
        parse_zrr_rows(title, "z.xls")
    with pytest.raises(DataError, match="header only"):
        parse_zrr_rows([*title, header], "z.xls")
    with pytest.raises(DataError, match="duplicated code '01001'"):
        parse_zrr_rows([*title, header, good, good], "z.xls")
    bad = ["01004", "Ambérieu-en-Bugey", "NC - Non classée", "Z - Zone inconnue"]
    with pytest.raises(DataError, match=r"line 6: column 'ZONAGE_ZRR': unknown ZRR classification"):
        parse_zrr_rows([*title, header, good, bad], "z.xls")


# -- ANCT zonings catalogue 2019 (names only) ------------------------------------------------


def test_name_normalisation():
    assert normalise_name("St-Étienne-du-Rouvray") == "saint etienne du rouvray"
    assert normalise_name("Vand½uvre-lès-Nancy") == normalise_name("Vandœuvre-lès-Nancy")
    assert normalise_name("SAINTE-MARIE-AUX-MINES") == normalise_name("Ste Marie aux Mines")
    assert normalise_name("L'Haÿ-les-Roses") == normalise_name("L’Hay les Roses")


def test_zonings_match_rate_and_report(zonings):
    adapter, table = zonings
    s = adapter.summary_.set_index("programme")
    assert s.loc["ZRR", "rows"] == 17726 and s.loc["ZRR", "matched"] >= 17700
    assert s.loc["AFR", "matched"] >= 5030 and s.loc["ZFU", "matched"] == 145
    # every row is either matched, a duplicate (ACV pairs listed once per commune) or reported
    assert (
        (s["matched"] + s["duplicates"] + s["unmatched"])
        .drop(["BER", "BUD"])
        .equals(s["rows"].drop(["BER", "BUD"]))
    )
    assert len(adapter.unmatched_) == s["unmatched"].sum() <= 30
    assert {"programme", "id", "name", "reason", "candidates"} == set(adapter.unmatched_.columns)
    reasons = adapter.unmatched_.set_index("id").reason
    assert reasons["cb_044"] == "homonyms: 8 candidates"  # AMI centres-bourgs 'Saint-Pierre'
    assert (
        reasons["ZRR01306"] == "no commune of that name in the COG"
    )  # Saint-Gineis-en-Coiron, merged
    assert any("names not matched" in p for p in adapter.problems)
    DESIGNATION_SCHEMA.validate(table)


def test_zonings_names_resolved(zonings):
    _, t = zonings
    assert _has(t, "72181", "ZFU")  # 'Mans': Le Mans, article dropped by the catalogue
    assert _has(t, "54547", "ZFU")  # 'Vand½uvre-lès-Nancy' (mojibake of Vandœuvre)
    assert _has(t, "02141", "AFR")  # 'Capelle' in the Aisne is La Capelle, not Capelle (59)
    assert _has(t, "25346", "ZRR") and _has(
        t, "25347", "ZRR"
    )  # Longeville and La Longeville, both listed
    assert _has(t, "17465", "ZRR") and _has(t, "17464", "ZRR")  # 'Vergne' (La Vergne) and 'Vergné'
    assert _has(t, "97407", "ACV")  # 'Le Port' (Réunion, not Ariège): by the row's polygon
    assert _has(t, "81065", "ACV") and not _has(t, "02142", "ACV")  # Castres - Mazamet
    assert _has(t, "59172", "BUD")  # Denain in the mining basin perimeter
    s = t[t.programme.isin(["BER", "BUD"])].groupby("programme").size()
    assert abs(s["BER"] - 404) <= 5 and abs(s["BUD"] - 159) <= 3  # catalogue counts: 348 + 56, 159


def test_zonings_zrr_consistent_with_official_file(zonings, zrr_all):
    _, t = zonings
    official = zrr_all.set_index("zone_code").status
    status = t[t.programme == "ZRR"].zone_code.map(official)
    assert status.notna().all()
    assert (status != "non classée").mean() > 0.999
    # the catalogue labels the fully classified communes "Partiellement classée"
    souleuvre = t[(t.zone_code == "14061") & (t.programme == "ZRR")].status.iloc[0]
    assert souleuvre == "Partiellement classée" and official["14061"] == "classée"


def test_zonings_unknown_name_reported(variant, name_index):
    rows = [
        'ZRR00001,Brénod,Commune,"1",Partiellement classée,,,zrr zonage,x',
        'ZRR00002,Trifouillis-les-Oies,Commune,"1",Partiellement classée,,,zrr zonage,x',
        'ZRR00003,Champdor-Corcelles,Commune,"1",Partiellement classée,,,zrr zonage,x',
        'ZFU001,Mans,commune,"1",Présence d\'au moins une ZFU,,,zfu zonage,x',
        'cb_001,Saint-Pierre,Commune,"1",,,,amicb zonage,x',
    ]
    adapter = AnctZonings2019(
        variant(SUP, SUP_HEADER + "\n".join(rows) + "\n"),
        name_index=name_index,
        locations=pd.DataFrame({"zone_code": [], "zone_type": [], "geometry": []}),
    )
    out = adapter.load()
    assert set(out.zone_code) == {"01060", "01080", "72181"}  # Brénod, Champdor-Corcelles, Le Mans
    lost = adapter.unmatched_.set_index("name")
    assert lost.loc["Trifouillis-les-Oies", "reason"] == "no commune of that name in the COG"
    assert lost.loc["Saint-Pierre", "reason"].startswith("homonyms")
    assert adapter.summary_.set_index("programme").loc["ZRR", "unmatched"] == 1
    assert any("no rows for AFR" in p for p in adapter.problems)


def test_zonings_variants(variant, raw_text, name_index):
    text = raw_text(SUP)
    with pytest.raises(DataError, match="column 'layer': missing column"):
        AnctZonings2019(
            variant(SUP, text.replace(",layer,", ",couche,", 1)), name_index=name_index
        ).load()
    with pytest.raises(DataError, match="header only"):
        AnctZonings2019(variant(SUP, SUP_HEADER), name_index=name_index).load()
    with pytest.raises(DataError, match="no commune zoning layer"):
        AnctZonings2019(
            variant(SUP, SUP_HEADER + 'CV001,CC X,epci,"3",,,,cv zonage,x\n'), name_index=name_index
        ).load()


def test_match_names_department_order(name_index):
    rows = pd.DataFrame(
        {"name": ["Abergement-Clémenciat", "Capelle", "Abbécourt", "Capelle", "Aulnoye-Aymeries"]}
    )
    matched, lost = match_names(
        rows, name_index, ordered_by_departement=True, articles_dropped=True
    )
    # the first 'Capelle' sits among Ain/Aisne rows: La Capelle (02); the second among Nord rows: Capelle (59)
    assert matched.zone_code.tolist() == ["01001", "02141", "02001", "59127", "59033"]
    assert lost.empty


def test_perimeters(zonings):
    adapter, _ = zonings
    zrr_p = adapter.perimeters("ZRR")
    assert len(zrr_p) == 1 and zrr_p.crs.to_epsg() == 4326 and zrr_p.n_communes.iloc[0] == 17726
    assert len(adapter.perimeters("ZFU")) == 145
    assert len(adapter.perimeters("BER")) == 2
    qpv = adapter.perimeters("QPV2015")
    assert len(qpv) == 1 and qpv.geometry.is_valid.all()
    with pytest.raises(DataError, match="no perimeter for 'CV'"):
        adapter.perimeters("CV")


# -- ONPV statistics per QPV -----------------------------------------------------------------


@pytest.fixture(scope="module")
def demography():
    return OnpvQpvDemography().load()


def _value(df, code, variable, period):
    sel = df[(df.zone_code == code) & (df.variable == variable) & (df.period == period)]
    assert len(sel) == 1, (code, variable, period)
    return sel.value.iloc[0]


def test_qpv_demography_values(demography):
    assert set(demography.level) == {"qpv"} and set(demography.cog_year) == {2015}
    assert sorted(demography.period.unique()) == [2017, 2018, 2019, 2020, 2021, 2022]
    # Grande Reyssouze Terre des Fleurs (Bourg-en-Bresse): 6,056 inhabitants (RP 2013), 6,490 (RP 2018)
    assert _value(demography, "QP001001", "qpv_population", 2017) == 6056
    assert (
        _value(demography, "QP001001", "qpv_population", 2020) == 6056
    )  # 2020 file: plain numbers
    assert _value(demography, "QP001001", "qpv_population", 2022) == 6490
    assert _value(demography, "QP001001", "qpv_share_foreigners", 2017) == pytest.approx(15.4)
    # secret cells are blank: missing values
    assert math.isnan(_value(demography, "QP001002", "qpv_share_large_households", 2021))
    assert "Ensemble" not in set(demography.zone_code)
    assert demography[demography.period == 2022].zone_code.nunique() == 1400


def test_qpv_income_and_employment():
    income = OnpvQpvIncome().load([2017, 2022])
    assert _value(income, "QP001001", "qpv_poverty_rate", 2017) == pytest.approx(38.6)
    assert _value(income, "QP001001", "qpv_median_disposable_income", 2017) == 13501
    assert _value(income, "QP001001", "qpv_median_disposable_income", 2022) == 14180
    emp = OnpvQpvEmployment().load([2020, 2021])
    # the share of precarious jobs (TX_TOT_EPREC, to 2020) becomes limited-duration jobs (TX_TOT_EDLIM)
    assert _value(emp, "QP001001", "qpv_share_precarious_jobs", 2020) == pytest.approx(29.0)
    assert _value(emp, "QP001001", "qpv_share_precarious_jobs", 2021) == pytest.approx(28.2)
    assert _value(emp, "QP001001", "qpv_employment_rate", 2021) == pytest.approx(43.3)


def test_qpv_registry_entries():
    from territoria.registry import load_registry

    reg = load_registry()
    for cls in (OnpvQpvDemography, OnpvQpvEmployment, OnpvQpvIncome):
        declared = {v.name for v in reg.for_source(cls.name)}
        assert declared == set(cls.VARIABLES), cls.name
    assert reg.variable("qpv_poverty_rate").weight == "qpv_population"
    assert reg.variable("qpv_population").kind == "count"


def test_qpv_communes_by_name(name_index):
    communes = OnpvQpvDemography().qpv_communes(2022, name_index=name_index)
    centre = communes[
        communes.zone_code == "QP059050"
    ]  # 'Centre' QPV: Denain, Douchy-les-Mines, Lourches
    assert centre.commune_code.tolist() == ["59172", "59179", "59361"]
    assert communes.commune_code.notna().mean() > 0.99


def test_qpv_stats_variants(variant, raw_text):
    text = raw_text(DEMO21)
    with pytest.raises(DataError, match="DEMO_2021.csv: column 'POP_MUN': missing column"):
        OnpvQpvDemography(variant(DEMO21, text.replace("POP_MUN", "POPULATION", 1))).load([2021])
    with pytest.raises(DataError, match="wrong separator"):
        OnpvQpvDemography(variant(DEMO21, text.replace(";", ","))).load([2021])
    lines = text.splitlines()
    with pytest.raises(DataError, match="duplicated code 'QP001001'"):
        OnpvQpvDemography(variant(DEMO21, "\n".join([*lines, lines[1]]))).load([2021])
    bad = lines.copy()
    bad[1] = bad[1].replace("QP001001", "QPV01001", 1)
    with pytest.raises(DataError, match=r"line 2: column 'CODGEO': invalid QPV code 'QPV01001'"):
        OnpvQpvDemography(variant(DEMO21, "\n".join(bad))).load([2021])
    bad = lines.copy()
    cells = bad[2].split(";")
    cells[2] = "n/a"  # POP_MUN ('1\u202f926', thin-space thousands separator)
    bad[2] = ";".join(cells)
    with pytest.raises(DataError, match=r"line 3: column 'POP_MUN': non-numeric value 'n/a'"):
        OnpvQpvDemography(variant(DEMO21, "\n".join(bad))).load([2021])
    with pytest.raises(DataError, match="header only"):
        OnpvQpvEmployment(variant(IPRO21, raw_text(IPRO21).splitlines()[0] + "\n")).load([2021])
    only_total = raw_text("designations/qpv_stats_onpv/DEMO_2017.csv").splitlines()[:2]
    with pytest.raises(DataError, match="no QPV rows"):
        OnpvQpvDemography(
            variant("designations/qpv_stats_onpv/DEMO_2017.csv", "\n".join(only_total))
        ).load([2017])
