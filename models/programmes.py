"""Official programme coverage per commune at the target COG, and where it misses priorities.

**Designations are never model inputs.** QPV, ZRR, Action Cœur de Ville and Petites Villes de
Demain are the outcome of past policy: they are read here only to be *compared* with the
engine's outputs (which priority zones no programme covers, which covered zones the index
does not find deprived). No feature, index or model reads this module.

Programmes (adapters of :mod:`territoria.features.sources.designations`):

========  ==========================================  ===============  ==========
code      programme                                   designation      COG year
========  ==========================================  ===============  ==========
QPV2024   communes with a QPV of the 2024 generation  2024             2024
ZRR       rural revitalisation zones (2017, am. 2018)  2017             2017
ACV       Action Cœur de Ville                        2018             2018
PVD       Petites Villes de Demain                    2020             2020
========  ==========================================  ===============  ==========

With ``include_anct_2019=True`` the ANCT 2019 zonings catalogue adds AFR, ZFU, ZRD, BER and
BUD as *context* (matched by commune name, see :class:`~.designations.AnctZonings2019`; its
ACV, ZRR and QPV 2015 layers are left out: the official lists above supersede them). They
are off by default because name matching leaves some rows unmatched.

Conversion to the target COG (:func:`to_target_cog`)
----------------------------------------------------
Each designated code is mapped to its commune of the target COG with
:func:`~territoria.features.harmonise.code_mapping` (``anciensCodes``, delegated and
associated communes):

* **merged communes**: a commune of the target COG is covered when *any* of its former
  communes was designated. ``n_former`` counts its former communes that existed at the
  designation's date, ``n_parts`` those designated; when ``n_parts < n_former`` the row is
  ``partial`` and its ``status`` reads ``partiellement (k/n communes fusionnées) : …``.
  The communes existing at the designation's date are known exactly for the ZRR (the
  classification lists every commune of the COG 2017, classified or not); for ACV (2018)
  and PVD (2020) they are approximated by the bundled COG 2021 (its current communes plus
  the designated codes): a merger between the designation and 2021 is not seen (the merged
  commune counts as fully covered). Designations in a COG later than 2021 (the QPV 2024
  file names the communes of 2025: Saint-Denis 93066 carries the QPV of
  Pierrefitte-sur-Seine, merged into it in 2025) are taken as naming whole communes of the
  target COG, so they are never partial through a merger. In the bundled data no ACV, PVD
  or QPV code changed between its designation and 2026; 20 ZRR and 7 PVD communes are
  partial;
* **split communes** (communes re-established after a merger, e.g. 15031 Celles out of
  Neussargues en Pinatelle 15141): the re-established commune inherits the designation of
  the commune it belonged to in the COG 2021 (``inherited_from``), for designations dated
  at or before 2021 and when it was not a commune of its own at the designation's date.
  Later designations (QPV 2024) are assumed to name the communes as they were then;
* codes that no commune of the target COG absorbs, and communes outside the study
  (overseas collectivities), are not kept; they are listed in ``.attrs["dropped"]``
  (``code programme reason`` strings), never dropped silently.

Functions: :func:`programme_table` (loads and converts), :func:`programmes_by_zone` (one
boolean per programme), :func:`coverage_gaps` (priority zones without programme, programme
zones the index does not find deprived).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.features.harmonise import code_mapping

log = logging.getLogger(__name__)

#: The four programmes always reported, in display order.
REQUIRED_PROGRAMMES: tuple[str, ...] = ("QPV2024", "ZRR", "ACV", "PVD")
#: Context zonings of the ANCT 2019 catalogue (``include_anct_2019=True``).
ANCT_PROGRAMMES: tuple[str, ...] = ("AFR", "ZFU", "ZRD", "BER", "BUD")
#: Display labels of the programme codes.
PROGRAMME_LABELS: dict[str, str] = {
    "QPV2024": "QPV 2024",
    "ZRR": "ZRR",
    "ACV": "ACV",
    "PVD": "PVD",
    "AFR": "AFR",
    "ZFU": "ZFU",
    "ZRD": "ZRD",
    "BER": "BER",
    "BUD": "BUD",
}
_ORDER = {p: i for i, p in enumerate(REQUIRED_PROGRAMMES + ANCT_PROGRAMMES)}

#: Columns of :func:`programme_table`.
TABLE_COLUMNS = [
    "zone_code",
    "programme",
    "status",
    "vintage",
    "partial",
    "n_parts",
    "n_former",
    "inherited_from",
    "source_codes",
    "source",
]

#: Columns of :func:`coverage_gaps`.
GAP_COLUMNS = [
    "zone_code",
    "zone_name",
    "department",
    "gap_kind",
    "programmes",
    "deprivation_index",
    "index_decile",
    "priority_rank",
]

#: COG year of the intermediate snapshot used for split communes and former communes.
SNAPSHOT_COG = 2021


# --------------------------------------------------------------------------- conversion


def _current_codes(cog: pd.DataFrame) -> pd.Index:
    return pd.Index(cog.loc[cog["type"] == "commune-actuelle", "code"].astype(str).unique())


def to_target_cog(
    designations: pd.DataFrame,
    cog: pd.DataFrame,
    *,
    universes: dict[str, Iterable[str]] | None = None,
    snapshot: pd.DataFrame | None = None,
    snapshot_year: int = SNAPSHOT_COG,
    keep: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Convert designation rows to the COG of ``cog`` (see the module docstring).

    Parameters
    ----------
    designations : DataFrame
        ``zone_code, programme, period, status, source`` and ``cog_year`` (COG year of the
        codes; the designation's ``period`` when absent), one row per designated code.
    cog : DataFrame
        The target COG (:class:`~territoria.features.sources.cog.Cog` table).
    universes : dict programme → codes, optional
        Every commune code that existed at the designation's date (e.g. the whole COG 2017
        sheet of the ZRR file). Otherwise: the snapshot's current communes plus the
        designated codes (or the target COG's current communes without a snapshot).
    snapshot : DataFrame, optional
        An intermediate COG (2021): composition of merged communes for split communes.
    keep : codes, optional
        Target communes kept (the study's universe); others go to ``attrs["dropped"]``.

    Returns
    -------
    DataFrame with :data:`TABLE_COLUMNS`, one row per (zone_code, programme), sorted by
    programme (display order) then zone code.

    Examples
    --------
    >>> cog = pd.DataFrame({"code": ["10001", "10002", "10003"],
    ...     "type": ["commune-actuelle", "commune-deleguee", "commune-actuelle"],
    ...     "parent": [None, "10001", None], "anciens_codes": [["10002"], [], []]})
    >>> des = pd.DataFrame({"zone_code": ["10002"], "programme": ["ZRR"], "period": [2017],
    ...     "status": ["classée"], "source": ["zrr"]})
    >>> out = to_target_cog(des, cog, universes={"ZRR": ["10001", "10002", "10003"]})
    >>> out[["zone_code", "partial", "n_parts", "n_former", "status"]].values.tolist()
    [['10001', True, 1, 2, 'partiellement (1/2 communes fusionnées) : classée']]
    """
    des = designations.copy()
    if "cog_year" not in des:
        des["cog_year"] = des["period"]
    des["zone_code"] = des["zone_code"].astype(str)
    des = des.drop_duplicates(["zone_code", "programme"]).reset_index(drop=True)
    mapping = code_mapping(cog).set_index("old_code")["code"]
    current = _current_codes(cog)
    snap_map = snap_current = None
    if snapshot is not None:
        snap_map = code_mapping(snapshot).set_index("old_code")["code"]
        snap_current = _current_codes(snapshot)
    dropped: list[str] = []

    des["target"] = des["zone_code"].map(mapping)
    lost = des["target"].isna()
    dropped += [
        f"{c} {p} not in the target COG"
        for c, p in zip(des.loc[lost, "zone_code"], des.loc[lost, "programme"])
    ]
    des = des[~lost]

    frames = []
    for programme, part in des.groupby("programme", sort=False):
        # communes that existed at the designation's date
        year = int(part["cog_year"].max())
        if universes is not None and programme in universes:
            uni = pd.Index(pd.Series(list(universes[programme]), dtype=str).unique())
        elif snap_current is not None and year <= snapshot_year:
            uni = snap_current
        else:
            uni = current
        uni = uni.union(pd.Index(part["zone_code"].unique()))
        n_former = pd.Series(uni.map(mapping), index=uni).dropna().value_counts()
        g = part.groupby("target", sort=True)
        merged = pd.DataFrame(
            {
                "n_parts": g.size(),
                "statuses": g["status"].first(),
                "source_codes": g["zone_code"].first(),
                "vintage": g["period"].max(),
                "source": g["source"].first(),
            }
        )
        # a merged commune joins its former communes' statuses and codes (a Python
        # aggregation, only where there are several: most targets have one designated row)
        several = merged.index[merged["n_parts"] > 1]
        if len(several):
            m = part[part["target"].isin(several)].groupby("target", sort=True)
            merged.loc[several, "statuses"] = m["status"].agg(lambda s: "; ".join(dict.fromkeys(s)))
            merged.loc[several, "source_codes"] = m["zone_code"].agg(lambda s: ", ".join(sorted(s)))
        merged["n_former"] = np.maximum(
            n_former.reindex(merged.index).fillna(0).astype(int), merged["n_parts"]
        )
        merged["partial"] = merged["n_parts"] < merged["n_former"]
        merged["status"] = merged["statuses"].where(
            ~merged["partial"],
            "partiellement ("
            + merged["n_parts"].astype(str)
            + "/"
            + merged["n_former"].astype(str)
            + " communes fusionnées) : "
            + merged["statuses"],
        )
        merged["inherited_from"] = None
        merged = merged.rename_axis("zone_code").reset_index()
        merged["programme"] = programme
        frames.append(merged)

        # re-established communes inherit the designation of the commune they belonged to
        if snap_map is None or year > snapshot_year:
            continue
        children = current.difference(snap_current).difference(uni)
        parent = pd.Series(children.map(snap_map), index=children).dropna()
        # a new code of a merged commune (its parent absorbed by it) is no re-establishment
        parent = parent[(parent != parent.index) & (parent.map(mapping) != parent.index)]
        if parent.empty:
            continue
        des_parent = part.assign(parent=part["zone_code"].map(snap_map)).dropna(subset=["parent"])
        des_parent = des_parent.drop_duplicates("parent").set_index("parent")
        parent = parent[parent.isin(des_parent.index)]
        if parent.empty:
            continue
        src = des_parent.loc[parent.to_numpy()]
        heirs = pd.DataFrame(
            {
                "zone_code": parent.index.to_numpy(),
                "n_parts": 1,
                "n_former": 1,
                "partial": False,
                "status": (
                    src["status"].to_numpy()
                    + " (héritée de la commune "
                    + parent.to_numpy().astype(object)
                    + " avant rétablissement)"
                ),
                "source_codes": src["zone_code"].to_numpy(),
                "vintage": src["period"].to_numpy(),
                "source": src["source"].to_numpy(),
                "inherited_from": parent.to_numpy(),
                "programme": programme,
            }
        )
        heirs = heirs[~heirs["zone_code"].isin(merged["zone_code"])]
        frames.append(heirs)

    if frames:
        out = pd.concat(frames, ignore_index=True)
    else:
        out = pd.DataFrame(columns=TABLE_COLUMNS)
    if keep is not None:
        keep = pd.Index(pd.Series(list(keep), dtype=str))
        outside = ~out["zone_code"].isin(keep)
        dropped += [
            f"{c} {p} outside the study's communes"
            for c, p in zip(out.loc[outside, "zone_code"], out.loc[outside, "programme"])
        ]
        out = out[~outside]
    out = out[TABLE_COLUMNS].copy()
    out["vintage"] = out["vintage"].astype("int64")
    out["n_parts"] = out["n_parts"].astype("int64")
    out["n_former"] = out["n_former"].astype("int64")
    out["partial"] = out["partial"].astype(bool)
    out["inherited_from"] = out["inherited_from"].astype(object).where(
        out["inherited_from"].notna(), None
    )
    order = out["programme"].map(_ORDER).fillna(len(_ORDER))
    out = (
        out.assign(_o=order)
        .sort_values(["_o", "zone_code"], kind="stable")
        .drop(columns="_o")
        .reset_index(drop=True)
    )
    if dropped:
        log.info("programme table: %d designations not kept", len(dropped))
    out.attrs["dropped"] = dropped
    return out


def load_designations(
    data_dir: Path | str | None = None, *, include_anct_2019: bool = False
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Designation rows of the programmes (with ``cog_year``) and the ZRR's 2017 universe."""
    from territoria.features.sources.designations import (
        ActionCoeurDeVille,
        AnctZonings2019,
        PetitesVillesDeDemain,
        Qpv2024,
        ZrrClassification,
    )

    frames = []
    for cls in (Qpv2024, ActionCoeurDeVille, PetitesVillesDeDemain):
        src = cls(data_dir)
        df = src.load()
        frames.append(df.assign(cog_year=df["period"].map(src.cog_years).fillna(df["period"])))
    zrr_src = ZrrClassification(data_dir, include_unclassified=True)
    zrr_all = zrr_src.load()
    universes = {"ZRR": zrr_all["zone_code"].astype(str).tolist()}
    zrr = zrr_all[zrr_all["status"] != "non classée"]
    frames.append(zrr.assign(cog_year=zrr["period"].map(zrr_src.cog_years).fillna(zrr["period"])))
    if include_anct_2019:
        src = AnctZonings2019(data_dir)
        df = src.load()
        df = df[df["programme"].isin(ANCT_PROGRAMMES)]
        frames.append(df.assign(cog_year=df["period"].map(src.cog_years).fillna(df["period"])))
    des = pd.concat(frames, ignore_index=True)
    des["cog_year"] = des["cog_year"].astype("int64")
    return des, universes


def programme_table(
    data_dir: Path | str | None = None,
    cog: pd.DataFrame | None = None,
    target_cog: int = 2026,
    *,
    snapshot: pd.DataFrame | None = None,
    include_anct_2019: bool = False,
    universe: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Programme coverage of every commune of the target COG: one row per (zone_code, programme).

    Reads the designation files of ``data_dir`` (bundled data by default), converts them to
    the COG ``target_cog`` (``cog``: that COG's table, read from the data folder otherwise)
    as described in the module docstring, and keeps the communes of the study (mainland and
    overseas departments; ``universe`` to give another list).

    Columns: ``zone_code`` (target COG), ``programme`` (QPV2024, ZRR, ACV, PVD, and the ANCT
    2019 zonings with ``include_anct_2019``), ``status`` (the source's words, ``partiellement
    (k/n communes fusionnées) : …`` for merged communes only partly designated), ``vintage``
    (year of the designation), ``partial``, ``n_parts``, ``n_former``, ``inherited_from``
    (commune a re-established commune inherited the designation from), ``source_codes``
    (designated codes in the source's COG), ``source`` (adapter). ``attrs["dropped"]`` lists
    the designations not kept.

    Examples
    --------
    >>> table = programme_table()                                      # doctest: +SKIP
    >>> table[table.zone_code == "59172"].programme.tolist()           # doctest: +SKIP
    ['QPV2024', 'ACV']
    """
    from territoria.features.panel import commune_universe
    from territoria.features.sources.cog import Cog

    cog_src = Cog(data_dir)
    if cog is None:
        cog = cog_src.read_vintage(target_cog)
    if snapshot is None and SNAPSHOT_COG in cog_src.files and SNAPSHOT_COG != target_cog:
        try:
            snapshot = cog_src.read_vintage(SNAPSHOT_COG)
        except DataError as exc:  # no snapshot: no split inheritance, universe = target COG
            log.warning("no COG %s snapshot (%s)", SNAPSHOT_COG, exc)
            snapshot = None
    des, universes = load_designations(data_dir, include_anct_2019=include_anct_2019)
    keep = universe if universe is not None else commune_universe(cog)["code"].astype(str)
    out = to_target_cog(des, cog, universes=universes, snapshot=snapshot, keep=keep)
    out.attrs["target_cog"] = int(target_cog)
    return out


# --------------------------------------------------------------------------- per zone


def _zone_index(zones) -> pd.Index:
    if isinstance(zones, pd.DataFrame):
        codes = zones["zone_code"] if "zone_code" in zones.columns else zones.index.to_series()
    elif isinstance(zones, pd.Index):
        codes = zones.to_series()
    else:
        codes = pd.Series(list(zones))
    return pd.Index(codes.astype(str).to_numpy(), name="zone_code")


def programme_text(flags: pd.DataFrame, programmes: Sequence[str]) -> pd.Series:
    """``"QPV 2024, ZRR"``-style text of boolean programme columns ("" when none), vectorised."""
    text = pd.Series("", index=flags.index, dtype=object)
    for p in programmes:
        on = flags[p].fillna(False).astype(bool).to_numpy()
        label = PROGRAMME_LABELS.get(p, p)
        text = pd.Series(
            np.where(on, np.where(text == "", label, text + ", " + label), text),
            index=flags.index,
            dtype=object,
        )
    return text


def programmes_by_zone(table: pd.DataFrame, zones) -> pd.DataFrame:
    """One boolean column per programme for each zone, and their ``programmes`` text.

    ``zones``: codes, an Index, or a frame with a ``zone_code`` column (its index otherwise).
    Columns: ``QPV2024, ZRR, ACV, PVD`` (always, in this order), then any other programme
    of the table (ANCT 2019 zonings), then ``programmes`` (``"QPV 2024, ZRR"``, ``""`` when
    none) and ``n_programmes``. A partly covered merged commune counts as covered.

    Examples
    --------
    >>> t = pd.DataFrame({"zone_code": ["59172", "59172", "01001"],
    ...                   "programme": ["ACV", "QPV2024", "ZRR"]})
    >>> programmes_by_zone(t, ["59172", "75056"]).programmes.tolist()
    ['QPV 2024, ACV', '']
    """
    idx = _zone_index(zones)
    present = [p for p in pd.unique(table["programme"]) if p not in REQUIRED_PROGRAMMES]
    programmes = list(REQUIRED_PROGRAMMES) + sorted(present, key=lambda p: (_ORDER.get(p, 99), p))
    codes = table["zone_code"].astype(str)
    out = pd.DataFrame(index=idx)
    for p in programmes:
        out[p] = idx.isin(codes[table["programme"] == p].to_numpy())
    out["programmes"] = programme_text(out, programmes)
    out["n_programmes"] = out[programmes].sum(axis=1).astype("int64")
    return out


# --------------------------------------------------------------------------- gaps


def coverage_gaps(
    priorities: pd.DataFrame,
    *,
    max_decile_not_deprived: int = 5,
    programmes: Sequence[str] = REQUIRED_PROGRAMMES,
) -> pd.DataFrame:
    """Where official programmes and the engine's priorities disagree.

    Two kinds of rows (``gap_kind``):

    * ``priority_not_covered``: zones with ``priority_flag`` true that none of ``programmes``
      covers (sorted by ``priority_rank``);
    * ``programme_not_deprived``: zones in at least one of ``programmes`` whose
      ``index_decile`` is ``<= max_decile_not_deprived`` (default 5: not in the more deprived
      half; decile 10 = most deprived 10 %). Zones without an index are not judged.
      Sorted by decile then index (least deprived first).

    Parameters
    ----------
    priorities : DataFrame
        ``zone_code``, ``priority_flag``, ``deprivation_index``, ``index_decile``, one
        boolean column per programme (as made by :func:`programmes_by_zone`); optional
        ``zone_name``, ``departement``/``department``, ``priority_rank`` (``index_rank``
        otherwise), ``programmes`` (rebuilt from the booleans when absent).

    Returns
    -------
    DataFrame with :data:`GAP_COLUMNS`.
    """
    if not 1 <= int(max_decile_not_deprived) <= 10:
        raise DataError(
            "coverage_gaps",
            f"max_decile_not_deprived must be in 1..10, got {max_decile_not_deprived}",
        )
    df = priorities.reset_index(drop="zone_code" in priorities.columns)
    if "zone_code" not in df.columns:
        df = df.rename(columns={df.columns[0]: "zone_code"})
    required = ["zone_code", "priority_flag", "deprivation_index", "index_decile", *programmes]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError("priorities", f"missing columns {missing}", column=missing[0])
    if df["zone_code"].duplicated().any():
        dup = df.loc[df["zone_code"].duplicated(), "zone_code"].iloc[0]
        raise DataError("priorities", f"duplicated zone {dup!r}", column="zone_code")
    covered_by = df[list(programmes)].fillna(False).astype(bool)
    any_programme = covered_by.any(axis=1)
    text = programme_text(covered_by, programmes)
    if "department" not in df.columns:
        df["department"] = df["departement"] if "departement" in df.columns else None
    if "zone_name" not in df.columns:
        df["zone_name"] = None
    if "priority_rank" not in df.columns:
        df["priority_rank"] = df["index_rank"] if "index_rank" in df.columns else pd.NA
    base = df.assign(programmes=text)
    flag = base["priority_flag"].fillna(False).astype(bool)
    decile = pd.to_numeric(base["index_decile"], errors="coerce")

    not_covered = base[flag & ~any_programme].assign(gap_kind="priority_not_covered")
    not_covered = not_covered.assign(
        _k1=pd.to_numeric(not_covered["priority_rank"], errors="coerce"),
        _k2=-not_covered["deprivation_index"].astype(float),
    ).sort_values(["_k1", "_k2", "zone_code"], na_position="last", kind="stable")

    not_deprived = base[any_programme & decile.notna() & (decile <= max_decile_not_deprived)]
    not_deprived = not_deprived.assign(
        gap_kind="programme_not_deprived",
        _k1=pd.to_numeric(not_deprived["index_decile"], errors="coerce"),
        _k2=not_deprived["deprivation_index"].astype(float),
    ).sort_values(["_k1", "_k2", "zone_code"], kind="stable")

    out = pd.concat([not_covered, not_deprived], ignore_index=True)[GAP_COLUMNS]
    out["index_decile"] = out["index_decile"].astype("Int64")
    out["priority_rank"] = pd.to_numeric(out["priority_rank"], errors="coerce").astype("Int64")
    out["deprivation_index"] = out["deprivation_index"].astype(float)
    out.attrs["max_decile_not_deprived"] = int(max_decile_not_deprived)
    out.attrs["programmes"] = list(programmes)
    return out
