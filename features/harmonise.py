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
    other = tidy[~tidy["level"].isin(["commune", "arm"])]
    com = tidy[tidy["level"].isin(["commune", "arm"])]
    com = _drop_redundant_arrondissements(com)
    joined = com.merge(mapping, left_on="zone_code", right_on="old_code", how="left")
    unmapped = joined[joined["code"].isna()][list(tidy.columns)].reset_index(drop=True)
    joined = joined[joined["code"].notna()]
    joined = joined.assign(zone_code=joined["code"]).drop(columns=["code"])

    keys = ["zone_code", "period", "variable"]
    sizes = joined.groupby(keys, sort=False)["value"].transform("size")
    single = joined[sizes == 1].assign(n_parts=1, approx=False)
    multi = joined[sizes > 1]
    parts = [single]
    if len(multi):
        aux = None
        if weights is not None and len(weights):
            aux = weights.rename(columns={"zone_code": "old_code"})[["old_code", "period", "variable", "value"]]
        parts.append(_aggregate(multi, joined, registry, aux))
    table = pd.concat(parts, ignore_index=True)
    table["level"] = "commune"
    table["cog_year"] = target_cog
    if len(other):
        table = pd.concat([table, other.assign(n_parts=1, approx=False)], ignore_index=True)
    table = table[HARMONISED_COLUMNS].sort_values(
        ["level", "zone_code", "period", "variable"], kind="stable"
    )
    table["n_parts"] = table["n_parts"].astype(int)
    table["approx"] = table["approx"].astype(bool)
    return HarmonisationResult(table.reset_index(drop=True), unmapped)


def _drop_redundant_arrondissements(df: pd.DataFrame) -> pd.DataFrame:
    """Arrondissement rows are dropped where the source also gives their whole commune."""
    arm = df["zone_code"].str.match(r"^(?:751(?:0[1-9]|1\d|20)|6938[1-9]|132(?:0[1-9]|1[0-6]))$")
    if not arm.any():
        return df
    parent = df.loc[arm, "zone_code"].str[:2].map({"75": "75056", "69": "69123", "13": "13055"})
    have = pd.MultiIndex.from_frame(df[["zone_code", "period", "variable"]])
    probe = pd.MultiIndex.from_arrays(
        [parent.to_numpy(), df.loc[arm, "period"].to_numpy(), df.loc[arm, "variable"].to_numpy()]
    )
    redundant = probe.isin(have)
    return df.drop(index=df.index[arm][redundant])


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
            agg = tmp.groupby(keys, sort=False).agg(value=("v", lambda s: s.sum(min_count=1)), n_parts=("n", "sum"))
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
    left["period"] = left["period"].astype("int64")
    right = sub[["old_code", "period", "value"]].astype({"period": "int64"})
    merged = pd.merge_asof(
        left.sort_values("period"), right.sort_values("period"),
        on="period", by="old_code", direction="nearest",
    )
    return merged.sort_values("row")["value"].to_numpy(float)
