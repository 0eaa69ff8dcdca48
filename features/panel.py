"""The territorial panel: zone × period × measure at one COG year, for communes and IRIS.

Built from every table adapter: commune tables are harmonised to the target COG (see
:mod:`territoria.features.harmonise`), then the registry's indicators are computed from the
harmonised variables (ratios from summed numerators and denominators). IRIS tables keep
their codes and gain their parent commune in the target COG.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa

from territoria.errors import DataError
from territoria.features.harmonise import (
    CodedTable, code_mapping, decode, decode_categorical, factorize, harmonise_coded, recode, union,
)
from territoria.features.sources import all_sources
from territoria.features.sources.base import Source
from territoria.features.sources.cog import Cog
from territoria.memory import release_free_memory
from territoria.registry import Registry

# Uniqueness of (zone_code, level, period, measure) is checked by build_panel on integer
# keys, and validate_panel applies the rest without running pandera on millions of rows.
# Columns are built with these exact dtypes: no coercion. The level, the measure and the
# source, a few distinct strings over millions of rows, are categorical (0.34 GB less for
# the communes' 6.8 M rows, held from the feature stage to the scoring).
PANEL_SCHEMA = pa.DataFrameSchema(
    {
        "zone_code": pa.Column(str),
        "level": pa.Column("category", pa.Check.isin(["commune", "iris", "qpv"])),
        "parent_commune": pa.Column(str, nullable=True),
        "cog_year": pa.Column(int),
        "period": pa.Column(int),
        "measure": pa.Column("category"),
        "is_indicator": pa.Column(bool),
        "value": pa.Column(float, nullable=True),
        "n_parts": pa.Column(int, pa.Check.ge(1)),
        "approx": pa.Column(bool),
        "source": pa.Column("category"),
    },
    strict=True,
)


@dataclass
class PanelReport:
    """What building the panel found: codes not mapped, zones outside the commune universe."""

    unmapped: dict[str, pd.DataFrame] = field(default_factory=dict)
    outside_universe: dict[str, list[str]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = []
        for name, df in self.unmapped.items():
            if len(df):
                codes = sorted(df["zone_code"].unique())
                out.append(f"{name}: {len(codes)} codes not in the target COG (e.g. {', '.join(codes[:5])})")
        for name, codes in self.outside_universe.items():
            if codes:
                out.append(f"{name}: {len(codes)} zones outside the communes of the study (e.g. {', '.join(codes[:5])})")
        return out


def commune_universe(cog: pd.DataFrame) -> pd.DataFrame:
    """Current communes of mainland France and the overseas departments (971-976).

    Overseas collectivities (Saint-Pierre-et-Miquelon, Polynesia, ...) are outside INSEE's
    statistics used here and are left out.
    """
    cur = cog[(cog["type"] == "commune-actuelle") & cog["zone"].isin(["metro", "drom"])]
    return cur.reset_index(drop=True)


def table_sources(data_dir=None) -> list[Source]:
    """Instances of every adapter that yields zone statistics (kind ``table``)."""
    return [cls(data_dir) for cls in all_sources().values() if cls.kind == "table"]


def build_panel(
    tables: dict[str, pd.DataFrame],
    cog: pd.DataFrame,
    registry: Registry,
    *,
    target_cog: int,
    consume: bool = False,
) -> tuple[pd.DataFrame, PanelReport]:
    """Harmonise tidy source tables and compute the registry's indicators.

    Parameters
    ----------
    tables : dict
        Tidy table of each source adapter, by adapter name.
    cog : DataFrame
        COG table of the target year (:meth:`Cog.read_vintage`).
    registry : Registry
    target_cog : int
    consume : bool
        Take each table out of ``tables`` once it is harmonised (``tables`` is empty on
        return): a caller that holds no other reference to them frees them before the panel
        is assembled (the communes' tables: 0.4 GB off the peak of the feature stage).

    Returns
    -------
    panel : DataFrame
        Validated by :func:`validate_panel`; rows of the sources in the order of ``tables``
        (rows as harmonised), then the ratio indicators.
    report : PanelReport
    """
    mapping = code_mapping(cog)
    universe = pd.Index(commune_universe(cog)["code"])
    report = PanelReport()
    counts = [v.name for v in registry.variables.values() if v.kind == "count"]
    weights = pd.concat(
        [t[t["variable"].isin(counts) & (t["level"] != "iris")] for t in tables.values()],
        ignore_index=True,
    )
    # Every table stays coded (integers into small dictionaries) until the panel is decoded
    # once at the end: see CodedTable.
    coded: dict[str, CodedTable] = {}
    for name in list(tables):
        tidy = tables.pop(name) if consume else tables[name]
        if tidy.empty:
            continue
        table, report.unmapped[name] = harmonise_coded(
            tidy, mapping, registry, target_cog=target_cog, weights=weights
        )
        zone = table.data["zone_code"].to_numpy()
        zones = table.dictionaries["zone_code"]
        is_commune = table.data["level"].to_numpy() == table.dictionaries["level"].get_loc("commune")
        # get_indexer, not isin: pandas' isin on strings converts the value set one by one
        outside = np.append(universe.get_indexer(zones) < 0, False)[zone] & is_commune
        report.outside_universe[name] = sorted(zones[np.unique(zone[outside])])
        coded[name] = CodedTable(table.data[~outside], table.dictionaries)
        del tidy, table

    long, dictionaries = _stack(coded)
    # the coded tables, then the stacked columns, are copied as the panel is assembled: freed
    # as soon as they are, the harmonisation peaks 0.8 GB lower on the communes (3.15 -> 2.33 GB)
    del coded, weights
    # what the tables held is free now, in holes the panel's long columns do not fit: given
    # back, the feature stage peaks 0.4 GB lower (benchmarks/README.md, twenty-sixth measurement)
    release_free_memory()
    indicator_names = pd.Index(list(registry.indicators), dtype="str")
    dictionaries["measure"], (measure_pos, indicator_pos) = union(dictionaries["measure"], indicator_names)
    long["measure"] = recode(long["measure"], measure_pos)
    _check_one_source_per_measure(long, dictionaries)
    indicators = _ratio_indicators(long, dictionaries["measure"], registry)
    cols = {c: np.concatenate([long[c], indicators[c]]) for c in long}
    del long, indicators
    is_indicator = np.zeros(len(dictionaries["measure"]), bool)
    is_indicator[indicator_pos] = True
    parent, dictionaries["parent_commune"] = _parent_commune(cols, dictionaries, mapping)
    panel = pd.DataFrame(
        {
            "zone_code": decode(dictionaries["zone_code"], cols["zone_code"]),
            "level": decode_categorical(dictionaries["level"], cols["level"]),
            "parent_commune": decode(dictionaries["parent_commune"], parent),
            "cog_year": cols["cog_year"],
            "period": cols["period"],
            "measure": decode_categorical(dictionaries["measure"], cols["measure"]),
            "is_indicator": is_indicator[cols["measure"]],
            "value": cols["value"],
            "n_parts": cols["n_parts"],
            "approx": cols["approx"],
            "source": decode_categorical(dictionaries["source"], cols["source"]),
        },
        copy=False,  # the columns are this function's own: no 6.8 M-row copy into 2-D blocks
    )
    # row order is deterministic (sources by name, rows as read): no costly global sort
    return validate_panel(panel), report


def validate_panel(panel: pd.DataFrame) -> pd.DataFrame:
    """Check ``panel`` against :data:`PANEL_SCHEMA` without running pandera on every row.

    The schema's guarantees at a fraction of the cost: pandera checks the columns and dtypes
    on the empty frame, each column's element-wise checks on its distinct values (same
    verdict), and, when a non-nullable column has a missing value, the missing rows (so the
    error is pandera's usual one).

    Raises
    ------
    pandera.errors.SchemaError
    """
    PANEL_SCHEMA.validate(panel.iloc[:0])
    for name, column in PANEL_SCHEMA.columns.items():
        values = panel[name]
        if not column.nullable:
            missing = values.isna().to_numpy()
            if missing.any():
                column.validate(panel.loc[missing, [name]])
        if column.checks:
            column.validate(values.drop_duplicates().to_frame())
    return panel


@dataclass(frozen=True)
class PanelCodes:
    """Integer codes of a long panel's keys, computed once per panel (:func:`panel_codes`).

    ``zone``, ``measure`` and ``level`` code each row into the sorted ``zones``, ``measures``
    and ``levels``; ``by_measure`` gives each measure's row positions, in panel order.
    """

    zone: np.ndarray
    zones: pd.Index
    measure: np.ndarray
    measures: pd.Index
    level: np.ndarray
    levels: pd.Index
    period: np.ndarray
    by_measure: dict[str, np.ndarray]
    #: level -> (wide table of every period, each zone's first period): see zone_cube
    cubes: dict = field(default_factory=dict)


#: id(panel) -> (weak reference to it, the key columns it was coded from, its codes)
_CODES: dict[int, tuple] = {}


def panel_codes(panel: pd.DataFrame) -> PanelCodes:
    """The :class:`PanelCodes` of ``panel``, kept while the panel lives.

    A long panel has millions of rows: comparing its string columns at every lookup (a
    measure, a level) cost seconds per run. The codes are recomputed when a key column or the
    length changed; a panel's values modified in place are read as they are now, but its keys
    must not be (the pipeline builds a panel once and reads it).

    Examples
    --------
    >>> panel = pd.DataFrame({"zone_code": ["b", "a", "b"], "level": "commune", "period": 2021,
    ...                       "measure": ["x", "x", "y"], "value": [1.0, 2.0, 3.0]})
    >>> codes = panel_codes(panel)
    >>> codes.zones.tolist(), codes.zone.tolist(), codes.by_measure["x"].tolist()
    (['a', 'b'], [1, 0, 1], [0, 1])
    >>> panel_codes(panel) is codes
    True
    """
    keys = tuple(panel[c].array for c in ("zone_code", "measure", "level"))
    period = panel["period"].to_numpy("int64")
    kept = _CODES.get(id(panel))
    if (kept is not None and kept[0]() is panel and len(panel) == len(kept[2].zone)
            and all(a is b for a, b in zip(kept[1], keys, strict=True))
            and np.shares_memory(kept[2].period, period)):
        return kept[2]
    # narrow integers: the codes live as long as the panel
    zone, zones = _factorize_sorted(keys[0])
    zone = zone.astype(np.int32)
    measure, measures = _factorize_sorted(keys[1])
    measure = measure.astype(np.int32)
    level, levels = _factorize_sorted(keys[2])
    level = level.astype(np.int8)
    order = np.argsort(measure, kind="stable").astype(np.int32)
    bounds = np.searchsorted(measure[order], np.arange(len(measures) + 1))
    by_measure = {str(m): order[bounds[i]:bounds[i + 1]] for i, m in enumerate(measures)}
    codes = PanelCodes(zone=zone, zones=pd.Index(zones), measure=measure, measures=pd.Index(measures), level=level,
                       levels=pd.Index(levels), period=period, by_measure=by_measure)
    key = id(panel)
    _CODES[key] = (weakref.ref(panel, lambda _, key=key: _CODES.pop(key, None)), keys, codes)
    return codes


def _factorize_sorted(values) -> tuple[np.ndarray, pd.Index]:
    """Codes of ``values`` into their sorted distinct strings, and those strings (a string
    Index, whether the column is of strings or categorical, as :data:`PANEL_SCHEMA`'s are)."""
    if isinstance(values, pd.Categorical):
        # the categories, sorted and all used as build_panel makes them, are the codes' dictionary
        categories = values.categories
        if categories.is_monotonic_increasing and np.all(np.bincount(values.codes[values.codes >= 0],
                                                                      minlength=len(categories))):
            return values.codes, pd.Index(np.asarray(categories, dtype=object), dtype="str")
        values = np.asarray(values, dtype=object)
    codes, uniques = pd.factorize(values, sort=True)
    return codes, pd.Index(np.asarray(uniques, dtype=object), dtype="str")


def forget_wide_tables(panel: pd.DataFrame) -> None:
    """Free the wide tables kept with ``panel``'s codes (``zone_cube``'s); the codes stay."""
    kept = _CODES.get(id(panel))
    if kept is not None and kept[0]() is panel:
        kept[2].cubes.clear()


def measure_rows(panel: pd.DataFrame, measure: str) -> pd.DataFrame:
    """The rows of ``panel`` for ``measure``, in the panel's order.

    Examples
    --------
    >>> panel = pd.DataFrame({"zone_code": ["a", "b", "a"], "level": "commune", "period": 2021,
    ...                       "measure": ["x", "y", "x"], "value": [1.0, 2.0, 3.0]})
    >>> measure_rows(panel, "x")["value"].tolist(), len(measure_rows(panel, "z"))
    ([1.0, 3.0], 0)
    """
    pos = panel_codes(panel).by_measure.get(measure)
    return panel.iloc[pos] if pos is not None else panel.iloc[:0]


def _stack(coded: dict[str, CodedTable]) -> tuple[dict[str, np.ndarray], dict[str, pd.Index]]:
    """Concatenate coded tables on shared dictionaries, with a ``source`` code per row."""
    dictionaries = {"source": pd.Index(list(coded), dtype="str")}
    positions = {}
    for col, new in (("zone_code", "zone_code"), ("level", "level"), ("variable", "measure")):
        dictionaries[new], positions[col] = union(*(t.dictionaries[col] for t in coded.values()))
    long = {
        "zone_code": [], "level": [], "cog_year": [], "period": [], "measure": [],
        "value": [], "n_parts": [], "approx": [], "source": [],
    }
    for i, table in enumerate(coded.values()):
        d = table.data
        long["zone_code"].append(recode(d["zone_code"].to_numpy(), positions["zone_code"][i]))
        long["level"].append(recode(d["level"].to_numpy(), positions["level"][i]))
        long["measure"].append(recode(d["variable"].to_numpy(), positions["variable"][i]))
        for col in ("cog_year", "period", "value", "n_parts", "approx"):
            long[col].append(d[col].to_numpy())
        long["source"].append(np.full(len(d), i, dtype=np.int64))
    return {col: np.concatenate(parts) for col, parts in long.items()}, dictionaries


def _row_key(long: dict[str, np.ndarray], columns: list[str]) -> np.ndarray:
    """One ``int64`` per combination of the (non-negative integer) ``columns`` of each row."""
    key = np.zeros(len(long[columns[0]]), np.int64)
    for col in columns:
        v = long[col].astype(np.int64)
        v = v - v.min() if len(v) else v
        key = key * (int(v.max(initial=0)) + 1) + v
    return key


def _check_one_source_per_measure(long: dict[str, np.ndarray], dictionaries: dict[str, pd.Index]) -> None:
    """A (zone, level, period, variable) given twice (two sources, or twice by one) is an error."""
    key = _row_key(long, ["zone_code", "level", "period", "measure"])
    # a sort finds duplicates several times faster than a hash table of millions of keys
    ordered = np.sort(key)
    if (ordered[1:] == ordered[:-1]).any():
        dup = pd.Series(key).duplicated(keep=False).to_numpy()
        i = int(np.flatnonzero(dup)[0])
        measure = long["measure"][i]
        sources = sorted(dictionaries["source"][np.unique(long["source"][dup & (long["measure"] == measure)])])
        raise DataError(
            "conf/indicators",
            f"variable '{dictionaries['measure'][measure]}' for zone "
            f"{dictionaries['zone_code'][long['zone_code'][i]]} and period {long['period'][i]} "
            f"is given more than once (by {sources}): keep one adapter per variable",
        )


def _ratio_indicators(
    long: dict[str, np.ndarray], measures: pd.Index, registry: Registry
) -> dict[str, np.ndarray]:
    """Indicators defined as numerator / denominator × scale of harmonised counts.

    Each numerator row with a denominator row of the same zone, level, COG year and period
    gives one indicator row, in the order of the numerator rows (an inner join).
    """
    keys = ["zone_code", "level", "cog_year", "period"]
    row_key = _row_key(long, keys)
    frames = {c: [] for c in long}
    for ind in registry.indicators.values():
        d = ind.definition
        if d.numerator is None:
            continue
        num_code, den_code = measures.get_indexer([d.numerator, d.denominator])
        num = np.flatnonzero(long["measure"] == num_code) if num_code >= 0 else np.empty(0, np.int64)
        den = np.flatnonzero(long["measure"] == den_code) if den_code >= 0 else np.empty(0, np.int64)
        if not len(num) or not len(den):
            continue
        # (zone, level, period, measure) is unique: at most one denominator row per key
        match = pd.Index(row_key[den]).get_indexer(row_key[num])
        num, den = num[match >= 0], den[match[match >= 0]]
        for c in keys + ["source"]:
            frames[c].append(long[c][num])
        den_value = long["value"][den]
        frames["value"].append(long["value"][num] / np.where(den_value != 0, den_value, np.nan) * d.scale)
        frames["n_parts"].append(np.maximum(long["n_parts"][num], long["n_parts"][den]))
        frames["approx"].append(np.zeros(len(num), bool))
        frames["measure"].append(np.full(len(num), measures.get_loc(ind.name), dtype=np.int64))
    return {c: np.concatenate(parts) if parts else long[c][:0] for c, parts in frames.items()}


def _parent_commune(
    cols: dict[str, np.ndarray], dictionaries: dict[str, pd.Index], mapping: pd.DataFrame
) -> tuple[np.ndarray, pd.Index]:
    """Commune (target COG) of each row: itself for communes, the IRIS's commune for IRIS.

    Returns the codes of each row's commune (``-1`` for none) and their dictionary.
    """
    lookup = mapping.drop_duplicates("old_code").set_index("old_code")["code"]
    zones = dictionaries["zone_code"]
    # IRIS codes are the commune code and 4 digits; QPV codes have no parent here
    is_iris_zone = np.asarray(zones.str.len() == 9, dtype=bool)
    parent_of_zone = np.where(is_iris_zone, lookup.reindex(zones.str[:5]).to_numpy(object), zones.to_numpy(object))
    parent_code, parents = factorize(pd.Series(parent_of_zone, dtype="str"))
    parent = parent_code[cols["zone_code"]]
    qpv = dictionaries["level"].get_indexer(["qpv"])[0]
    if qpv >= 0:
        parent[cols["level"] == qpv] = -1
    return parent, parents


def load_tables(sources: list[Source], progress=None) -> dict[str, pd.DataFrame]:
    """Load every table source (I/O edge); ``progress(name)`` is called before each."""
    out = {}
    for src in sources:
        if progress is not None:
            progress(src.name)
        out[src.name] = src.load()
    return out


def load_cog(data_dir, year: int) -> pd.DataFrame:
    """COG table of ``year`` (I/O edge)."""
    return Cog(data_dir).read_vintage(year)
