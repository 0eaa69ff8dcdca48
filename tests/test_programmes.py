"""Programme coverage at the target COG (territoria.models.programmes)."""

from __future__ import annotations

import pandas as pd
import pytest

from territoria.errors import DataError
from territoria.models.programmes import (
    GAP_COLUMNS,
    REQUIRED_PROGRAMMES,
    TABLE_COLUMNS,
    coverage_gaps,
    programme_table,
    programmes_by_zone,
    to_target_cog,
)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return programme_table()


# --------------------------------------------------------------------------- real data


def test_table_in_target_universe(table, feature_build):
    assert list(table.columns) == TABLE_COLUMNS
    assert set(table["programme"]) == set(REQUIRED_PROGRAMMES)
    assert set(table["zone_code"]) <= set(feature_build.identity.index)
    assert not table.duplicated(["zone_code", "programme"]).any()
    counts = table["programme"].value_counts()
    # every designated code kept: QPV 824 communes, ACV 245, PVD 1,606 (+4 re-established
    # communes of 15141), ZRR 17,976 classified codes of the COG 2017 merged into fewer
    assert counts["QPV2024"] == 824 and counts["ACV"] == 245
    assert counts["PVD"] >= 1606 and 17000 < counts["ZRR"] < 17976
    assert table.attrs["dropped"] == []


def test_known_communes(table):
    denain = set(table.loc[table["zone_code"] == "59172", "programme"])
    assert denain == {"QPV2024", "ACV"}
    row = table[(table["zone_code"] == "59172") & (table["programme"] == "QPV2024")].iloc[0]
    assert row["status"].startswith("QPV codes: QN059")
    souleuvre = table[(table["zone_code"] == "14061") & (table["programme"] == "ZRR")]
    assert souleuvre["status"].tolist() == ["classée"]


def test_merged_and_split_communes(table):
    zrr = table[table["programme"] == "ZRR"].set_index("zone_code")
    # 02018 absorbed 02301 and 02434 after 2017: all three classified, full coverage
    assert zrr.loc["02018", "source_codes"] == "02018, 02301, 02434"
    assert zrr.loc["02018", "n_parts"] == 3 and not zrr.loc["02018", "partial"]
    # new code of a merged commune (Conques-en-Rouergue 12218, from 12076 ...)
    assert "12076" in zrr.loc["12218", "source_codes"]
    # partly classified merged communes say so
    partial = zrr[zrr["partial"]]
    assert len(partial) > 0
    assert partial["status"].str.startswith("partiellement (").all()
    assert (partial["n_parts"] < partial["n_former"]).all()
    # communes re-established out of Neussargues en Pinatelle (15141) inherit its ZRR
    for code in ("15031", "15035", "15047", "15171"):
        assert zrr.loc[code, "inherited_from"] == "15141"
    # Saint-Denis carries Pierrefitte's QPV in the 2024 file: not partial
    qpv = table[table["programme"] == "QPV2024"].set_index("zone_code")
    assert not qpv.loc["93066", "partial"]


def test_coverage_gaps_consistent(table, feature_build):
    from territoria.models.index import DeprivationIndex

    feats = feature_build.features
    idx = DeprivationIndex().fit_transform(feats)
    ident = feature_build.identity
    flags = programmes_by_zone(table, ident)
    pr = ident[["zone_code", "zone_name", "departement"]].join(
        idx[["deprivation_index", "index_rank", "index_decile"]]
    ).join(flags)
    pr["priority_flag"] = pr["index_decile"] == 10
    gaps = coverage_gaps(pr)
    assert list(gaps.columns) == GAP_COLUMNS
    kinds = gaps.groupby("gap_kind")
    nc = kinds.get_group("priority_not_covered").set_index("zone_code")
    nd = kinds.get_group("programme_not_deprived").set_index("zone_code")
    assert len(nc) > 0 and len(nd) > 0
    assert (flags.loc[nc.index, list(REQUIRED_PROGRAMMES)].sum(axis=1) == 0).all()
    assert (nc["programmes"] == "").all() and (nc["index_decile"] == 10).all()
    assert (flags.loc[nd.index, "n_programmes"] >= 1).all()
    assert (nd["index_decile"] <= 5).all() and (nd["programmes"] != "").all()
    assert (nd["programmes"] == flags.loc[nd.index, "programmes"]).all()
    # Denain (QPV 2024, ACV) is covered: never a gap of the first kind
    assert "59172" not in nc.index
    # every uncovered priority zone is listed
    expected = pr[pr["priority_flag"] & (pr["n_programmes"] == 0)].index
    assert set(nc.index) == set(expected)


# --------------------------------------------------------------------------- synthetic


def _cog() -> pd.DataFrame:
    rows = [
        # 10001 absorbed 10002 and 10003 (10002 delegated)
        ("10001", "commune-actuelle", None, ["10002", "10003"]),
        ("10002", "commune-deleguee", "10001", []),
        ("10004", "commune-actuelle", None, []),
        # 10006 re-established out of 10005 after the snapshot
        ("10005", "commune-actuelle", None, []),
        ("10006", "commune-actuelle", None, []),
        ("97501", "commune-actuelle", None, []),
    ]
    return pd.DataFrame(rows, columns=["code", "type", "parent", "anciens_codes"])


def _snapshot() -> pd.DataFrame:
    rows = [
        ("10001", "commune-actuelle", None, []),
        ("10002", "commune-actuelle", None, []),
        ("10003", "commune-actuelle", None, []),
        ("10004", "commune-actuelle", None, []),
        ("10005", "commune-actuelle", None, ["10006"]),
        ("10006", "commune-deleguee", "10005", []),
        ("97501", "commune-actuelle", None, []),
    ]
    return pd.DataFrame(rows, columns=["code", "type", "parent", "anciens_codes"])


def _des(codes, programme="ZRR", period=2017, status="classée"):
    return pd.DataFrame(
        {
            "zone_code": codes,
            "programme": programme,
            "period": period,
            "status": status,
            "source": programme.lower(),
        }
    )


def test_to_target_cog_merges_partial_split_and_drops():
    des = pd.concat(
        [
            _des(["10002", "10005", "99999"]),
            _des(["10002", "10003"], programme="ACV", period=2018, status="lauréate"),
            _des(["97501"], programme="PVD", period=2020, status="lauréate"),
        ],
        ignore_index=True,
    )
    out = to_target_cog(des, _cog(), snapshot=_snapshot(), keep=["10001", "10004", "10005", "10006"])
    by = out.set_index(["programme", "zone_code"])
    # ZRR: 10001 covered through 10002 only (10001 and 10003 existed): partial 1/3
    z = by.loc[("ZRR", "10001")]
    assert z["partial"] and (z["n_parts"], z["n_former"]) == (1, 3)
    assert z["status"] == "partiellement (1/3 communes fusionnées) : classée"
    # ACV: 2 of 3 former communes
    assert by.loc[("ACV", "10001"), "n_parts"] == 2 and by.loc[("ACV", "10001"), "partial"]
    # the re-established 10006 inherits 10005's ZRR, 10005 keeps it
    assert by.loc[("ZRR", "10006"), "inherited_from"] == "10005"
    assert by.loc[("ZRR", "10006"), "status"].startswith("classée (héritée de la commune 10005")
    assert by.loc[("ZRR", "10005"), "inherited_from"] is None
    # unknown code and a commune outside the study are reported, not kept
    assert ("PVD", "97501") not in by.index
    assert any(d.startswith("99999 ZRR") for d in out.attrs["dropped"])
    assert any(d.startswith("97501 PVD") for d in out.attrs["dropped"])
    # display order: QPV2024, ZRR, ACV, PVD
    assert out["programme"].tolist() == ["ZRR", "ZRR", "ZRR", "ACV"]


def test_to_target_cog_exact_universe_and_late_designations():
    des = _des(["10001", "10002", "10003"])
    out = to_target_cog(des, _cog(), universes={"ZRR": ["10001", "10002", "10003", "10004"]})
    row = out.iloc[0]
    assert (row["zone_code"], row["n_parts"], row["n_former"], row["partial"]) == (
        "10001", 3, 3, False
    )
    # a designation later than the snapshot names whole target communes: never partial,
    # no inheritance
    late = _des(["10001", "10005"], programme="QPV2024", period=2024, status="QPV codes: QN10001M")
    out = to_target_cog(late.assign(cog_year=2025), _cog(), snapshot=_snapshot())
    assert not out["partial"].any() and out["inherited_from"].isna().all()
    assert sorted(out["zone_code"]) == ["10001", "10005"]


def test_programmes_by_zone_columns_and_text():
    t = pd.DataFrame(
        {
            "zone_code": ["A", "A", "B", "C", "C"],
            "programme": ["PVD", "QPV2024", "ZRR", "ZRR", "AFR"],
        }
    )
    out = programmes_by_zone(t, pd.DataFrame({"zone_code": ["C", "A", "B", "D"]}))
    assert list(out.columns) == [
        "QPV2024", "ZRR", "ACV", "PVD", "AFR", "programmes", "n_programmes"
    ]
    assert list(out.index) == ["C", "A", "B", "D"]
    assert out["programmes"].tolist() == ["ZRR, AFR", "QPV 2024, PVD", "ZRR", ""]
    assert out["n_programmes"].tolist() == [2, 2, 1, 0]
    assert out["ACV"].dtype == bool and not out["ACV"].any()


def test_coverage_gaps_synthetic():
    pr = pd.DataFrame(
        {
            "zone_code": ["a", "b", "c", "d", "e"],
            "zone_name": ["A", "B", "C", "D", "E"],
            "departement": ["01", "01", "02", "02", "03"],
            "priority_flag": [True, True, False, False, False],
            "deprivation_index": [90.0, 80.0, 10.0, 30.0, None],
            "index_decile": [10, 10, 1, 6, None],
            "index_rank": [1, 2, 5, 3, None],
            "QPV2024": [False, True, False, False, False],
            "ZRR": [False, False, True, True, True],
            "ACV": False,
            "PVD": [False, False, True, False, False],
        }
    )
    gaps = coverage_gaps(pr)
    assert gaps[["zone_code", "gap_kind", "programmes"]].values.tolist() == [
        ["a", "priority_not_covered", ""],
        ["c", "programme_not_deprived", "ZRR, PVD"],
    ]
    assert gaps["department"].tolist() == ["01", "02"]
    assert gaps["priority_rank"].tolist() == [1, 5]
    # a looser threshold takes d (decile 6) too; e has no index and is never judged
    assert coverage_gaps(pr, max_decile_not_deprived=6)["zone_code"].tolist() == ["a", "c", "d"]
    with pytest.raises(DataError, match="max_decile_not_deprived"):
        coverage_gaps(pr, max_decile_not_deprived=0)
    with pytest.raises(DataError, match="missing columns"):
        coverage_gaps(pr.drop(columns="PVD"))


def test_docstring_examples():
    import doctest

    import territoria.models.programmes as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
