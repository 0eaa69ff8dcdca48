"""Convert tidy tables between COG years (communes that merged, codes that changed).

The COG's ``anciensCodes`` tell which former codes a current commune absorbed; delegated and
associated communes point to their ``chefLieu``; municipal arrondissements to their commune.
Converting a tidy table to a target COG year then follows the registry's aggregation rules:

* ``count`` variables are summed;
* rates with a ``numerator`` and ``denominator`` in the registry are recomputed from the
  summed counts;
* other rates, means and indices are weighted by their registry ``weight`` (households for
  income, actives for unemployment, population otherwise);
* medians and deciles of merged communes are weighted means of the parts: an approximation,
  flagged ``approx`` in the output.

Codes that cannot be mapped are returned in a report, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.registry import Registry

#: Columns of a harmonised table: the tidy columns plus how each value was obtained.
HARMONISED_COLUMNS = [
    "zone_code", "level", "cog_year", "period", "variable", "value", "n_parts", "approx",
]


def code_mapping(cog: pd.DataFrame, *, include_arrondissements: bool = True) -> pd.DataFrame:
    """Table ``old_code -> code`` of the target COG, from a :class:`~.sources.cog.Cog` table.

    Every current commune maps to itself and absorbs its ``anciens_codes``; delegated and
    associated communes map to their parent. A current code always wins over a former code.

    Examples
    --------
    >>> cog = pd.DataFrame({
    ...     "code": ["14061", "14018"], "type": ["commune-actuelle", "commune-deleguee"],
    ...     "parent": [None, "14061"], "anciens_codes": [["14018", "14052"], []]})
    >>> code_mapping(cog).sort_values("old_code").values.tolist()
    [['14018', '14061'], ['14052', '14061'], ['14061', '14061']]
    """
    current = cog[cog["type"] == "commune-actuelle"]
    own = pd.DataFrame({"old_code": current["code"], "code": current["code"], "rank": 0})
    former = current[["code", "anciens_codes"]].explode("anciens_codes").dropna()
    former = pd.DataFrame({"old_code": former["anciens_codes"], "code": former["code"], "rank": 1})
    kinds = ["commune-deleguee", "commune-associee"]
    if include_arrondissements:
        kinds.append("arrondissement-municipal")
    sub = cog[cog["type"].isin(kinds) & cog["parent"].notna()]
    sub = pd.DataFrame({"old_code": sub["code"], "code": sub["parent"], "rank": 2})
    allmap = pd.concat([own, former, sub], ignore_index=True)
    allmap = allmap.sort_values(["old_code", "rank"], kind="stable")
    return allmap.drop_duplicates("old_code")[["old_code", "code"]].reset_index(drop=True)


@dataclass
class HarmonisationResult:
    """A harmonised table and the codes that could not be mapped."""

    table: pd.DataFrame
    unmapped: pd.DataFrame

    def summary(self) -> str:
        if self.unmapped.empty:
            return "all codes mapped"
        n = self.unmapped["zone_code"].nunique()
        shown = ", ".join(sorted(self.unmapped["zone_code"].unique())[:5])
        return f"{n} codes not in the target COG (e.g. {shown})"


def harmonise(
    tidy: pd.DataFrame,
    mapping: pd.DataFrame,
    registry: Registry,
    *,
    target_cog: int,
    weights: pd.DataFrame | None = None,
) -> HarmonisationResult:
    """Convert a tidy commune table to the COG of ``mapping`` (see :func:`code_mapping`).

    Parameters
    ----------
    tidy : DataFrame
        ``zone_code, level, cog_year, period, variable, value`` (commune or arrondissement
        rows; other levels pass through unchanged).
    mapping : DataFrame
        ``old_code, code`` of the target COG.
    registry : Registry
        Gives each variable's kind, weight, numerator and denominator.
    target_cog : int
        COG year written in the output.
    weights : DataFrame, optional
        Tidy count variables of other sources (e.g. census population), used at the nearest
        period when a variable's weight is not in ``tidy`` itself.

    Returns
    -------
    HarmonisationResult
        ``table`` with :data:`HARMONISED_COLUMNS`, ``unmapped`` rows (with their variable and
        period) that no code of the target COG absorbs.
    """
    unknown = sorted(set(tidy["variable"].unique()) - set(registry.variables))
    if unknown:
        raise DataError("conf/indicators", f"variables not in the registry: {unknown[:5]}")
    # Work on integer codes of zones and variables: string columns of millions of rows make
    # every take, comparison and merge slow.
    tidy = tidy.reset_index(drop=True)
    zone_id, zones = pd.factorize(tidy["zone_code"])
    var_id, variables = pd.factorize(tidy["variable"])
    period = tidy["period"].to_numpy("int64")
    is_com = tidy["level"].isin(["commune", "arm"]).to_numpy(bool)

    zones = pd.Index(zones, dtype=object)
    keep = is_com & ~_redundant_arrondissements(zones, zone_id, period, var_id)
    lookup = mapping.drop_duplicates("old_code").set_index("old_code")["code"]
    new_of_zone = lookup.reindex(zones).to_numpy(object)
    new_zone = new_of_zone[zone_id]
    mapped = keep & pd.notna(new_zone)
    unmapped = tidy[keep & ~mapped].reset_index(drop=True)

    rows = np.flatnonzero(mapped)
    new_id, new_codes = pd.factorize(new_zone[rows])
    key = (new_id.astype("int64") * 10_000 + period[rows]) * 10_000 + var_id[rows]
    group, _ = pd.factorize(key)
    size = np.bincount(group)[group]
    single = rows[size == 1]
    values = tidy["value"].to_numpy(float)
    parts = [
        pd.DataFrame(
            {
                "zone_code": new_zone[single],
                "period": period[single],
                "variable": variables[var_id[single]],
                "value": values[single],
                "n_parts": 1,
                "approx": False,
            }
        )
    ]
    multi_rows = rows[size > 1]
    if len(multi_rows):
        # every row of a merged commune (all variables) serves as weights for its parts
        is_merged = np.zeros(len(new_codes), bool)
        is_merged[new_id[size > 1]] = True
        lookup_rows = rows[is_merged[new_id]]
        joined = pd.DataFrame(
            {
                "old_code": zones[zone_id[lookup_rows]],
                "zone_code": new_zone[lookup_rows],
                "period": period[lookup_rows],
                "variable": variables[var_id[lookup_rows]],
                "value": values[lookup_rows],
            },
            index=lookup_rows,
        )
        multi = joined.loc[multi_rows]
        aux = None
        if weights is not None and len(weights):
            aux = weights.rename(columns={"zone_code": "old_code"})[["old_code", "period", "variable", "value"]]
        parts.append(_aggregate(multi, joined, registry, aux))
    table = pd.concat(parts, ignore_index=True)
    table["level"] = "commune"
    table["cog_year"] = target_cog
    other = ~is_com
    if other.any():
        table = pd.concat(
            [table, tidy[other].assign(n_parts=1, approx=False)], ignore_index=True
        )
    # rows keep the input order (deterministic); the panel sorts once at the end
    table = table[HARMONISED_COLUMNS].reset_index(drop=True)
    table["n_parts"] = table["n_parts"].astype(int)
    table["approx"] = table["approx"].astype(bool)
    return HarmonisationResult(table, unmapped)


_ARRONDISSEMENT = r"^(?:751(?:0[1-9]|1\d|20)|6938[1-9]|132(?:0[1-9]|1[0-6]))$"
_PLM = {"75": "75056", "69": "69123", "13": "13055"}


def _redundant_arrondissements(
    zones: pd.Index, zone_id: np.ndarray, period: np.ndarray, var_id: np.ndarray
) -> np.ndarray:
    """Arrondissement rows of Paris, Lyon and Marseille whose whole commune is also given."""
    is_arm_zone = np.asarray(zones.str.match(_ARRONDISSEMENT), dtype=bool)
    if not is_arm_zone.any():
        return np.zeros(len(zone_id), bool)
    parent = pd.Index(zones.str[:2].map(_PLM))
    parent_id = zones.get_indexer(parent)  # -1 when the parent commune is absent
    key = (zone_id.astype("int64") * 10_000 + period) * 10_000 + var_id
    arm_rows = is_arm_zone[zone_id] & (parent_id[zone_id] >= 0)
    probe = (parent_id[zone_id[arm_rows]].astype("int64") * 10_000 + period[arm_rows]) * 10_000 + var_id[arm_rows]
    out = np.zeros(len(zone_id), bool)
    out[np.flatnonzero(arm_rows)[pd.Index(probe).isin(key)]] = True
    return out


def _aggregate(
    multi: pd.DataFrame, joined: pd.DataFrame, registry: Registry, aux: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Aggregate the parts of merged communes, variable by variable, following the registry."""
    keys = ["zone_code", "period", "variable"]
    lookup = joined[["old_code", "period", "variable", "value"]]
    frames = []
    for var, grp in multi.groupby("variable", sort=False):
        meta = registry.variable(var)
        vals = grp["value"].to_numpy(float)
        has = ~np.isnan(vals)
        tmp = grp[keys].copy()
        # n_parts counts the former zones merged, whether or not they had a value
        tmp["n"] = 1
        if meta.kind == "count":
            tmp["v"] = vals
            g = tmp.groupby(keys, sort=False)
            agg = pd.DataFrame({"value": g["v"].sum(min_count=1), "n_parts": g["n"].sum()})
            agg["approx"] = False
            frames.append(agg.reset_index())
            continue
        if meta.numerator and meta.denominator:
            num = _part_values(grp, lookup, meta.numerator)
            den = _part_values(grp, lookup, meta.denominator)
            tmp["num"], tmp["den"] = num, den
            g = tmp.groupby(keys, sort=False)
            ratio = g["num"].sum(min_count=1) / g["den"].sum(min_count=1).replace(0.0, np.nan)
            complete = g["num"].count().eq(g.size()) & g["den"].count().eq(g.size())
            exact = (ratio * meta.scale).where(complete)
        else:
            exact = None
        weight = meta.weight or meta.denominator
        w = _part_values(grp, lookup, weight)
        if np.isnan(w).all() and aux is not None:
            w = _nearest_period_values(grp, aux, weight)
        usable = has & ~np.isnan(w)
        tmp["wv"] = np.where(usable, w * np.where(has, vals, 0.0), 0.0)
        tmp["w"] = np.where(usable, w, 0.0)
        tmp["v"] = np.where(has, vals, np.nan)
        g = tmp.groupby(keys, sort=False)
        sums = g[["wv", "w", "n"]].sum()
        weighted = (sums["wv"] / sums["w"].replace(0.0, np.nan)).fillna(g["v"].mean())
        n_valued = g["v"].count()
        res = pd.DataFrame({"value": weighted, "n_parts": sums["n"], "approx": n_valued > 1})
        if exact is not None:
            res.loc[exact.notna(), "value"] = exact[exact.notna()]
            res.loc[exact.notna(), "approx"] = False
        frames.append(res.reset_index())
    out = pd.concat(frames, ignore_index=True)
    out.loc[out["value"].isna(), "approx"] = False
    return out


def _part_values(grp: pd.DataFrame, lookup: pd.DataFrame, variable: str) -> np.ndarray:
    """Value of ``variable`` for the same former code and period as each part row."""
    sub = lookup[lookup["variable"] == variable].drop_duplicates(["old_code", "period"])
    merged = grp[["old_code", "period"]].merge(
        sub[["old_code", "period", "value"]], on=["old_code", "period"], how="left"
    )
    return merged["value"].to_numpy(float)


def _nearest_period_values(grp: pd.DataFrame, aux: pd.DataFrame, variable: str) -> np.ndarray:
    """Value of ``variable`` from another source, same former code, nearest period."""
    sub = aux[aux["variable"] == variable].dropna(subset=["value"])
    if sub.empty:
        return np.full(len(grp), np.nan)
    left = grp[["old_code", "period"]].reset_index(drop=True).reset_index(names="row")
    left = left.astype({"period": "int64", "old_code": object})
    right = sub[["old_code", "period", "value"]].astype({"period": "int64", "old_code": object})
    merged = pd.merge_asof(
        left.sort_values("period"), right.sort_values("period"),
        on="period", by="old_code", direction="nearest",
    )
    return merged.sort_values("row")["value"].to_numpy(float)
