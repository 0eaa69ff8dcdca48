"""The territorial panel: zone × period × measure at one COG year, for communes and IRIS.

Built from every table adapter: commune tables are harmonised to the target COG (see
:mod:`territoria.features.harmonise`), then the registry's indicators are computed from the
harmonised variables (ratios from summed numerators and denominators). IRIS tables keep
their codes and gain their parent commune in the target COG.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa

from territoria.errors import DataError
from territoria.features.harmonise import HarmonisationResult, code_mapping, harmonise
from territoria.features.sources import all_sources
from territoria.features.sources.base import Source
from territoria.features.sources.cog import Cog
from territoria.registry import Registry

# Uniqueness of (zone_code, level, period, measure) is checked by build_panel on integer
# keys: pandera's string-based check costs seconds on millions of rows.
PANEL_SCHEMA = pa.DataFrameSchema(
    {
        "zone_code": pa.Column(str),
        "level": pa.Column(str, pa.Check.isin(["commune", "iris", "qpv"])),
        "parent_commune": pa.Column(str, nullable=True),
        "cog_year": pa.Column(int),
        "period": pa.Column(int),
        "measure": pa.Column(str),
        "is_indicator": pa.Column(bool),
        "value": pa.Column(float, nullable=True),
        "n_parts": pa.Column(int, pa.Check.ge(1)),
        "approx": pa.Column(bool),
        "source": pa.Column(str),
    },
    strict=True,
    coerce=True,
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

    Returns
    -------
    panel : DataFrame
        Validated by :data:`PANEL_SCHEMA`.
    report : PanelReport
    """
    mapping = code_mapping(cog)
    universe = pd.Index(commune_universe(cog)["code"])
    report = PanelReport()
    frames = []
    counts = [v.name for v in registry.variables.values() if v.kind == "count"]
    weights = pd.concat(
        [t[t["variable"].isin(counts) & (t["level"] != "iris")] for t in tables.values()],
        ignore_index=True,
    )
    for name, tidy in tables.items():
        if tidy.empty:
            continue
        res: HarmonisationResult = harmonise(
            tidy, mapping, registry, target_cog=target_cog, weights=weights
        )
        report.unmapped[name] = res.unmapped
        t = res.table
        zone_id, zones = pd.factorize(t["zone_code"])
        outside_zone = ~pd.Index(zones).isin(universe)
        outside = outside_zone[zone_id] & (t["level"] == "commune").to_numpy(bool)
        report.outside_universe[name] = sorted(t.loc[outside, "zone_code"].unique())
        frames.append(t[~outside].assign(source=name))
    long = pd.concat(frames, ignore_index=True)
    _check_one_source_per_measure(long)
    long = long.rename(columns={"variable": "measure"})
    long["is_indicator"] = long["measure"].isin(list(registry.indicators))
    indicators = _ratio_indicators(long, registry)
    panel = pd.concat([long, indicators], ignore_index=True)
    panel["parent_commune"] = _parent_commune(panel, mapping)
    # row order is deterministic (sources by name, rows as read): no costly global sort
    return PANEL_SCHEMA.validate(panel[list(PANEL_SCHEMA.columns)]), report


def _check_one_source_per_measure(long: pd.DataFrame) -> None:
    """A (zone, level, period, variable) given twice (two sources, or twice by one) is an error."""
    codes = [pd.factorize(long[c])[0].astype("int64") for c in ("zone_code", "level", "variable")]
    per, _ = pd.factorize(long["period"])
    key = ((codes[0] * 8 + codes[1]) * 64 + per) * 4096 + codes[2]
    dup = pd.Index(key).duplicated(keep=False)
    if dup.any():
        row = long[dup].iloc[0]
        sources = sorted(long.loc[dup & (long["variable"] == row["variable"]), "source"].unique())
        raise DataError(
            "conf/indicators",
            f"variable '{row['variable']}' for zone {row['zone_code']} and period {row['period']} "
            f"is given more than once (by {sources}): keep one adapter per variable",
        )


def _ratio_indicators(long: pd.DataFrame, registry: Registry) -> pd.DataFrame:
    """Indicators defined as numerator / denominator × scale of harmonised counts."""
    ratios = [i for i in registry.indicators.values() if i.definition.numerator is not None]
    needed = {i.definition.numerator for i in ratios} | {i.definition.denominator for i in ratios}
    by_measure = {m: g for m, g in long[long["measure"].isin(list(needed))].groupby("measure", sort=False)}
    keys = ["zone_code", "level", "cog_year", "period"]
    frames = []
    for ind in ratios:
        d = ind.definition
        num, den = by_measure.get(d.numerator), by_measure.get(d.denominator)
        if num is None or den is None:
            continue
        j = num[[*keys, "value", "n_parts", "source"]].merge(
            den[[*keys, "value", "n_parts"]], on=keys, suffixes=("", "_den")
        )
        out = j[keys].copy()
        out["value"] = j["value"] / j["value_den"].where(j["value_den"] != 0) * d.scale
        out["n_parts"] = np.maximum(j["n_parts"], j["n_parts_den"])
        out["approx"] = False
        out["source"] = j["source"]
        out["measure"] = ind.name
        out["is_indicator"] = True
        frames.append(out)
    return pd.concat(frames, ignore_index=True) if frames else long.iloc[:0]


def _parent_commune(panel: pd.DataFrame, mapping: pd.DataFrame) -> pd.Series:
    """Commune (target COG) of each row: itself for communes, the IRIS's commune for IRIS."""
    lookup = mapping.drop_duplicates("old_code").set_index("old_code")["code"]
    zone_id, zones = pd.factorize(panel["zone_code"])
    zones = pd.Index(zones, dtype=object)
    # IRIS codes are the commune code and 4 digits; QPV codes have no parent here
    is_iris_zone = np.asarray(zones.str.len() == 9, dtype=bool)
    parent_of_zone = np.where(is_iris_zone, lookup.reindex(zones.str[:5]).to_numpy(object), zones)
    parent = pd.Series(parent_of_zone[zone_id], index=panel.index, dtype=object)
    is_qpv = (panel["level"] == "qpv").to_numpy(bool)
    parent[is_qpv] = None
    return parent


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
