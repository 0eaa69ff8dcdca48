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


@dataclass
class CodedTable:
    """A table whose string columns hold integer codes into small dictionaries.

    Harmonisation and the panel work on these codes: string columns of millions of rows make
    every take, comparison, merge and concatenation slow, whereas the dictionaries hold a
    few thousand entries. :meth:`decode` gives the strings back.

    Attributes
    ----------
    data : DataFrame
        One row per value; the columns named in ``dictionaries`` hold ``int64`` codes
        (``-1`` for a missing string).
    dictionaries : dict of str to Index
        The distinct strings of each coded column, by column name.
    """

    data: pd.DataFrame
    dictionaries: dict[str, pd.Index]

    def decode(self) -> pd.DataFrame:
        """The table with strings in place of codes."""
        return pd.DataFrame(
            {
                col: decode(self.dictionaries[col], values) if col in self.dictionaries else values
                for col, values in self.data.items()
            }
        )


def factorize(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """``int64`` codes (``-1`` when missing) and the distinct strings of a string column."""
    codes, uniques = pd.factorize(values)
    return codes.astype(np.int64), pd.Index(uniques, dtype="str")


def decode(uniques: pd.Index, codes: np.ndarray) -> pd.Series:
    """String Series of ``uniques[codes]``, missing where the code is ``-1``."""
    # one Arrow take: far cheaper than building millions of Python strings
    return pd.Series(uniques.array.take(np.asarray(codes), allow_fill=True), dtype="str")


def decode_categorical(uniques: pd.Index, codes: np.ndarray) -> pd.Series:
    """Categorical Series of ``uniques[codes]`` (missing where the code is ``-1``), its
    categories the strings used, sorted.

    A column of a few distinct strings over millions of rows (a panel's measures, levels and
    sources): one small integer per row instead of a string.

    Examples
    --------
    >>> s = decode_categorical(pd.Index(["y", "x", "unused"]), np.array([0, 1, 0, -1]))
    >>> s.tolist()[:3], s.cat.categories.tolist(), int(s.isna().sum())
    (['y', 'x', 'y'], ['x', 'y'], 1)
    """
    codes = np.asarray(codes)
    used = np.flatnonzero(np.bincount(codes[codes >= 0], minlength=len(uniques)))
    categories = pd.Index(np.asarray(uniques, dtype=object)[used], dtype="str")
    order = np.argsort(np.asarray(categories, dtype=object))
    position = np.full(len(uniques) + 1, -1, dtype=np.int64)  # the last entry: code -1 stays -1
    position[used[order]] = np.arange(len(used))
    # from_codes stores the codes in the narrowest integers that hold them
    return pd.Series(pd.Categorical.from_codes(position[codes], categories=categories[order]))


def union(*dictionaries: pd.Index) -> tuple[pd.Index, list[np.ndarray]]:
    """Union of dictionaries and, for each one, the position of its entries in the union.

    Examples
    --------
    >>> u, (a, b) = union(pd.Index(["x", "y"]), pd.Index(["z", "x"]))
    >>> u.tolist(), a.tolist(), b.tolist()
    (['x', 'y', 'z'], [0, 1], [2, 0])
    """
    codes, uniques = factorize(pd.Series(np.concatenate([np.asarray(d, dtype=object) for d in dictionaries])))
    bounds = np.cumsum([0] + [len(d) for d in dictionaries])
    return uniques, [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def recode(codes: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Codes into a dictionary turned into codes into its union (``-1`` stays ``-1``)."""
    return np.append(positions, -1)[codes]


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
    coded, unmapped = harmonise_coded(tidy, mapping, registry, target_cog=target_cog, weights=weights)
    return HarmonisationResult(coded.decode(), unmapped)


def harmonise_coded(
    tidy: pd.DataFrame,
    mapping: pd.DataFrame,
    registry: Registry,
    *,
    target_cog: int,
    weights: pd.DataFrame | None = None,
) -> tuple[CodedTable, pd.DataFrame]:
    """:func:`harmonise` with ``zone_code``, ``level`` and ``variable`` left as codes.

    Returns
    -------
    table : CodedTable
        :data:`HARMONISED_COLUMNS`, rows in a deterministic order: single parts as read,
        then merged communes, then rows of other levels as read.
    unmapped : DataFrame
        Rows of ``tidy`` that no code of the target COG absorbs.
    """
    tidy = tidy.reset_index(drop=True)
    zone_id, zones = factorize(tidy["zone_code"])
    var_id, variables = factorize(tidy["variable"])
    unknown = sorted(set(variables) - set(registry.variables))
    if unknown:
        raise DataError("conf/indicators", f"variables not in the registry: {unknown[:5]}")
    level_id, levels = factorize(tidy["level"])
    period = tidy["period"].to_numpy("int64")
    is_com = np.append(levels.isin(["commune", "arm"]), False)[level_id]

    keep = is_com & ~_redundant_arrondissements(zones, zone_id, period, var_id)
    lookup = mapping.drop_duplicates("old_code")
    target_of_old, targets = factorize(lookup["code"])
    new_of_zone = recode(pd.Index(lookup["old_code"]).get_indexer(zones), target_of_old)
    new_zone = recode(zone_id, new_of_zone)
    mapped = keep & (new_zone >= 0)
    unmapped = tidy[keep & ~mapped].reset_index(drop=True)

    rows = np.flatnonzero(mapped)
    size = _group_sizes(_code_key(new_zone[rows], period[rows], var_id[rows]))
    single = rows[size == 1]
    values = tidy["value"].to_numpy(float)
    parts = [
        pd.DataFrame(
            {
                "zone_code": new_zone[single],
                "period": period[single],
                "variable": var_id[single],
                "value": values[single],
                "n_parts": 1,
                "approx": False,
            }
        )
    ]
    multi_rows = rows[size > 1]
    if len(multi_rows):
        # every row of a merged commune (all variables) serves as weights for its parts
        is_merged = np.zeros(len(targets), bool)
        is_merged[new_zone[multi_rows]] = True
        lookup_rows = rows[is_merged[new_zone[rows]]]
        joined = pd.DataFrame(
            {
                "old_code": zone_id[lookup_rows],
                "zone_code": new_zone[lookup_rows],
                "period": period[lookup_rows],
                "variable": var_id[lookup_rows],
                "value": values[lookup_rows],
            }
        )
        multi = joined.iloc[np.searchsorted(lookup_rows, multi_rows)]
        aux = None
        if weights is not None and len(weights):
            aux = weights.rename(columns={"zone_code": "old_code"})[["old_code", "period", "variable", "value"]]
        parts.append(_aggregate(multi, joined, registry, zones, variables, aux))
    table = pd.concat(parts, ignore_index=True)

    out_zones, (target_pos, zone_pos) = union(targets, zones)
    out_levels, (commune_pos, level_pos) = union(pd.Index(["commune"], dtype="str"), levels)
    table["zone_code"] = recode(table["zone_code"].to_numpy(), target_pos)
    table["level"] = commune_pos[0]
    table["cog_year"] = target_cog
    other = np.flatnonzero(~is_com)
    if len(other):
        table = pd.concat(
            [
                table,
                pd.DataFrame(
                    {
                        "zone_code": recode(zone_id[other], zone_pos),
                        "level": recode(level_id[other], level_pos),
                        "cog_year": tidy["cog_year"].to_numpy("int64")[other],
                        "period": period[other],
                        "variable": var_id[other],
                        "value": values[other],
                        "n_parts": 1,
                        "approx": False,
                    }
                ),
            ],
            ignore_index=True,
        )
    table = table[HARMONISED_COLUMNS].astype(
        {"zone_code": np.int64, "level": np.int64, "cog_year": np.int64, "variable": np.int64,
         "n_parts": np.int64, "approx": bool}
    )
    dictionaries = {"zone_code": out_zones, "level": out_levels, "variable": variables}
    return CodedTable(table, dictionaries), unmapped


_ARRONDISSEMENT = r"^(?:751(?:0[1-9]|1\d|20)|6938[1-9]|132(?:0[1-9]|1[0-6]))$"
_PLM = {"75": "75056", "69": "69123", "13": "13055"}


def _code_key(zone: np.ndarray, period: np.ndarray, var: np.ndarray) -> np.ndarray:
    """One ``int64`` per (zone, period, variable) code triple (periods are years < 10,000)."""
    return (zone.astype(np.int64) * 10_000 + period) * 10_000 + var


def _group_sizes(key: np.ndarray) -> np.ndarray:
    """Number of rows sharing each row's key (a sort: faster than hashing millions of keys)."""
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(key)])
    out = np.empty(len(key), np.int64)
    out[order] = np.repeat(sizes, sizes)
    return out


def _redundant_arrondissements(
    zones: pd.Index, zone_id: np.ndarray, period: np.ndarray, var_id: np.ndarray
) -> np.ndarray:
    """Arrondissement rows of Paris, Lyon and Marseille whose whole commune is also given."""
    out = np.zeros(len(zone_id), bool)
    is_arm_zone = np.asarray(zones.str.match(_ARRONDISSEMENT), dtype=bool)
    if not is_arm_zone.any():
        return out
    parent_id = zones.get_indexer(pd.Index(zones[is_arm_zone].str[:2].map(_PLM)))
    parent_of_zone = np.full(len(zones), -1)
    parent_of_zone[is_arm_zone] = parent_id  # -1 when the parent commune is absent
    arm_rows = np.flatnonzero(parent_of_zone[zone_id] >= 0)
    if not len(arm_rows):
        return out
    # only the rows of the three parent communes can make an arrondissement row redundant
    at_parent = np.flatnonzero(np.isin(zone_id, parent_id[parent_id >= 0]))
    given = _code_key(zone_id[at_parent], period[at_parent], var_id[at_parent])
    probe = _code_key(parent_of_zone[zone_id[arm_rows]], period[arm_rows], var_id[arm_rows])
    out[arm_rows[np.isin(probe, given)]] = True
    return out


def _aggregate(
    multi: pd.DataFrame,
    joined: pd.DataFrame,
    registry: Registry,
    zones: pd.Index,
    variables: pd.Index,
    aux: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Aggregate the parts of merged communes, variable by variable, following the registry.

    ``multi`` and ``joined`` hold codes: ``old_code`` into ``zones``, ``variable`` into
    ``variables`` (``zone_code`` is only grouped on).
    """
    keys = ["zone_code", "period", "variable"]
    lookup = joined[["old_code", "period", "variable", "value"]]
    frames = []
    for var, grp in multi.groupby("variable", sort=False):
        meta = registry.variable(variables[var])
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
            num = _part_values(grp, lookup, variables, meta.numerator)
            den = _part_values(grp, lookup, variables, meta.denominator)
            tmp["num"], tmp["den"] = num, den
            g = tmp.groupby(keys, sort=False)
            ratio = g["num"].sum(min_count=1) / g["den"].sum(min_count=1).replace(0.0, np.nan)
            complete = g["num"].count().eq(g.size()) & g["den"].count().eq(g.size())
            exact = (ratio * meta.scale).where(complete)
        else:
            exact = None
        weight = meta.weight or meta.denominator
        w = _part_values(grp, lookup, variables, weight)
        if np.isnan(w).all() and aux is not None:
            w = _nearest_period_values(grp, aux, zones, weight)
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


def _part_values(grp: pd.DataFrame, lookup: pd.DataFrame, variables: pd.Index, variable: str) -> np.ndarray:
    """Value of ``variable`` for the same former code and period as each part row."""
    var = variables.get_indexer([variable])[0]
    if var < 0:
        return np.full(len(grp), np.nan)
    sub = lookup[lookup["variable"].to_numpy() == var]
    given = _code_key(sub["old_code"].to_numpy(), sub["period"].to_numpy(), 0)
    first = ~pd.Index(given).duplicated()  # the first value of a (code, period) counts
    pos = pd.Index(given[first]).get_indexer(
        _code_key(grp["old_code"].to_numpy(), grp["period"].to_numpy(), 0)
    )
    return np.append(sub["value"].to_numpy(float)[first], np.nan)[pos]


def _nearest_period_values(
    grp: pd.DataFrame, aux: pd.DataFrame, zones: pd.Index, variable: str
) -> np.ndarray:
    """Value of ``variable`` from another source, same former code, nearest period."""
    sub = aux[aux["variable"] == variable].dropna(subset=["value"])
    if sub.empty:
        return np.full(len(grp), np.nan)
    left = pd.DataFrame(
        {
            "row": np.arange(len(grp)),
            "old_code": zones[grp["old_code"].to_numpy()],
            "period": grp["period"].to_numpy("int64"),
        }
    ).astype({"old_code": object})
    right = sub[["old_code", "period", "value"]].astype({"period": "int64", "old_code": object})
    merged = pd.merge_asof(
        left.sort_values("period"), right.sort_values("period"),
        on="period", by="old_code", direction="nearest",
    )
    return merged.sort_values("row")["value"].to_numpy(float)
