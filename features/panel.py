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

from territoria.features.harmonise import HarmonisationResult, code_mapping, harmonise
from territoria.features.sources import all_sources
from territoria.features.sources.base import Source
from territoria.features.sources.cog import Cog
from territoria.registry import Registry

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
    unique=["zone_code", "level", "period", "measure"],
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
    universe = set(commune_universe(cog)["code"])
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
        is_com = t["level"] == "commune"
        outside = ~t["zone_code"].isin(universe) & is_com
        report.outside_universe[name] = sorted(t.loc[outside, "zone_code"].unique())
        t = t[~outside].assign(source=name)
        frames.append(t)
    long = pd.concat(frames, ignore_index=True)
    dup = long.duplicated(["zone_code", "level", "period", "variable"], keep=False)
    if dup.any():
        from territoria.errors import DataError

        row = long[dup].iloc[0]
        raise DataError(
            "conf/indicators",
            f"variable '{row.variable}' for period {row.period} is produced by several sources "
            f"({sorted(long[dup & (long.variable == row.variable)].source.unique())})",
        )
    long = long.rename(columns={"variable": "measure"})
    long["is_indicator"] = long["measure"].isin(registry.indicators)
    indicators = _ratio_indicators(long, registry)
    panel = pd.concat([long, indicators], ignore_index=True)
    panel["parent_commune"] = _parent_commune(panel, mapping)
    panel = panel[list(PANEL_SCHEMA.columns)]
    panel = panel.sort_values(["level", "zone_code", "measure", "period"], kind="stable")
    return PANEL_SCHEMA.validate(panel.reset_index(drop=True)), report


def _ratio_indicators(long: pd.DataFrame, registry: Registry) -> pd.DataFrame:
    """Indicators defined as numerator / denominator × scale of harmonised counts."""
    frames = []
    keys = ["zone_code", "level", "cog_year", "period"]
    for ind in registry.indicators.values():
        d = ind.definition
        if d.numerator is None:
            continue
        num = long[long["measure"] == d.numerator].set_index(keys)
        den = long[long["measure"] == d.denominator].set_index(keys)
        if num.empty or den.empty:
            continue
        j = num[["value", "n_parts", "source"]].join(
            den[["value", "n_parts"]], rsuffix="_den", how="inner"
        )
        den_v = j["value_den"].replace(0.0, np.nan)
        out = pd.DataFrame(
            {
                "value": j["value"] / den_v * d.scale,
                "n_parts": np.maximum(j["n_parts"], j["n_parts_den"]),
                "approx": False,
                "source": j["source"],
            },
            index=j.index,
        ).reset_index()
        out["measure"] = ind.name
        out["is_indicator"] = True
        frames.append(out)
    return pd.concat(frames, ignore_index=True) if frames else long.iloc[:0]


def _parent_commune(panel: pd.DataFrame, mapping: pd.DataFrame) -> pd.Series:
    """Commune (target COG) of each row: itself for communes, the IRIS's commune for IRIS."""
    lookup = mapping.set_index("old_code")["code"]
    parent = pd.Series(pd.NA, index=panel.index, dtype="string")
    com = panel["level"] == "commune"
    parent[com] = panel.loc[com, "zone_code"]
    iris = panel["level"] == "iris"
    parent[iris] = panel.loc[iris, "zone_code"].str[:5].map(lookup)
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
