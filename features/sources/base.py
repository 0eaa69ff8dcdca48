"""Base class of the source adapters: one adapter per official dataset.

An adapter declares where its data come from (producer, dataset, vintages, geography level,
COG year, expected coverage, licence), reads the file in its official format from a data
folder laid out like the bundled one, validates it, and returns a tidy table.

Three output shapes exist, one per kind of source:

* ``"table"``: statistics per zone, long format validated by :data:`TIDY_SCHEMA`
  (``zone_code, level, cog_year, period, variable, value``);
* ``"points"``: located facilities or sites, a GeoDataFrame in WGS84 validated by
  :data:`POINTS_SCHEMA` (``point_id, category, period, zone_code, geometry``);
* ``"reference"``: designations and reference geographies, validated by the adapter's own
  schema (designations are never model inputs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import pandas as pd
import pandera.pandas as pa

from territoria import digest
from territoria.errors import DataError
from territoria.paths import bundled_data_dir, resolve_data_file

Level = Literal["commune", "iris", "arm", "qpv", "point", "epci", "departement", "region"]

TIDY_SCHEMA = pa.DataFrameSchema(
    {
        "zone_code": pa.Column(str, pa.Check.str_length(min_value=2), nullable=False),
        "level": pa.Column(str, pa.Check.isin(["commune", "iris", "arm", "qpv"])),
        "cog_year": pa.Column(int, pa.Check.in_range(1999, 2100)),
        "period": pa.Column(int, pa.Check.in_range(1990, 2100)),
        "variable": pa.Column(str),
        "value": pa.Column(float, nullable=True),
    },
    # uniqueness of (zone_code, level, period, variable) is checked on integer keys when the
    # panel is built (features.panel): pandera's check on strings costs seconds per source
    strict=True,
    coerce=True,
)

POINTS_SCHEMA = pa.DataFrameSchema(
    {
        "point_id": pa.Column(str, nullable=False),
        "category": pa.Column(str),
        "period": pa.Column(int, pa.Check.in_range(1990, 2100)),
        "zone_code": pa.Column(str, nullable=True),
        "geometry": pa.Column(nullable=False),
    },
    strict=False,
    coerce=True,
)


@dataclass(frozen=True)
class Coverage:
    """What a complete file of this dataset covers, to detect truncated or partial files.

    ``min_zones`` is the number of distinct zones (or points, or rows) below which the file
    is reported as incomplete by ``territoria data check``.
    """

    level: str
    min_zones: int
    note: str = ""


@dataclass
class SourceReport:
    """What ``territoria data check`` says about one file."""

    adapter: str
    dataset: str
    vintage: str
    file: str
    rows: int = 0
    zones: int = 0
    coverage: str = ""
    sha256: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Source(ABC):
    """An official dataset read from a data folder.

    Subclasses set the class attributes and implement :meth:`read_vintage`.

    Parameters
    ----------
    data_dir : Path, optional
        Folder laid out like the bundled data (``insee/filosofi/...``); the bundled copy
        by default.
    """

    name: ClassVar[str]
    producer: ClassVar[str]
    dataset: ClassVar[str]
    licence: ClassVar[str] = "Licence Ouverte / Etalab 2.0"
    kind: ClassVar[Literal["table", "points", "reference"]] = "table"
    level: ClassVar[str]
    #: COG year of the codes, per vintage (``None`` when codes are not communes).
    cog_years: ClassVar[dict[int, int | None]] = {}
    #: File of each vintage, relative to the data folder.
    files: ClassVar[dict[int, str]]
    coverage: ClassVar[Coverage]
    third_party: ClassVar[bool] = False

    def __init__(self, data_dir: Path | str | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else bundled_data_dir()

    @property
    def vintages(self) -> list[int]:
        return sorted(self.files)

    def path(self, vintage: int) -> Path:
        if vintage not in self.files:
            raise DataError(
                self.name, f"no vintage {vintage}; available: {self.vintages}"
            )
        return resolve_data_file(self.data_dir, self.files[vintage])

    def cog_year(self, vintage: int) -> int | None:
        return self.cog_years.get(vintage)

    @abstractmethod
    def read_vintage(self, vintage: int) -> pd.DataFrame:
        """Read one vintage in its official format and return the adapter's output shape."""

    def load(self, vintages: list[int] | None = None) -> pd.DataFrame:
        """All (or the given) vintages, concatenated and validated."""
        frames = [self.validate(self.read_vintage(v), v) for v in (vintages or self.vintages)]
        out = pd.concat(frames, ignore_index=True)
        if self.kind == "points":
            import geopandas as gpd

            out = gpd.GeoDataFrame(out, geometry="geometry", crs="EPSG:4326")
        return out

    def validate(self, df: pd.DataFrame, vintage: int) -> pd.DataFrame:
        schema = {"table": TIDY_SCHEMA, "points": POINTS_SCHEMA}.get(self.kind, self.schema())
        if schema is None:
            return df
        try:
            return schema.validate(df, lazy=False)
        except (pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
            raise DataError(self.path(vintage), f"output fails validation: {_first_line(exc)}") from None

    def schema(self) -> pa.DataFrameSchema | None:
        """Schema of a reference adapter's output (tables and points use the shared ones)."""
        return None

    def check(self) -> list[SourceReport]:
        """Read every vintage and report rows, coverage and problems without raising."""
        reports = []
        for v in self.vintages:
            path = self.path(v)
            rep = SourceReport(self.name, self.dataset, str(v), str(path))
            try:
                rep.sha256 = file_sha256(path)
                df = self.validate(self.read_vintage(v), v)
                rep.rows = len(df)
                rep.zones = int(df["zone_code"].nunique()) if "zone_code" in df else len(df)
                if self.kind == "points":
                    rep.zones = len(df)
                rep.coverage = f"{rep.zones} {self.coverage.level}"
                if rep.zones < self.coverage.min_zones:
                    rep.problems.append(
                        f"incomplete: {rep.zones} {self.coverage.level} "
                        f"(a complete file has at least {self.coverage.min_zones})"
                    )
            except DataError as exc:
                rep.problems.append(str(exc))
            reports.append(rep)
        return reports


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300]


def file_sha256(path: Path) -> str:
    """SHA-256 of an input file, recorded in lineage (:func:`territoria.digest.file_sha256`);
    a missing file is a :class:`DataError`."""
    if not Path(path).exists():
        raise DataError(path, "file not found (check --data or the bundled data folder)")
    return digest.file_sha256(path)


def tidy(
    wide: pd.DataFrame,
    *,
    zone_col: str,
    variables: dict[str, str],
    level: str,
    cog_year: int,
    period: int,
) -> pd.DataFrame:
    """Melt a wide table (one row per zone) into the tidy long format.

    ``variables`` maps the wide column names (already numeric) to registry variable names.
    """
    sub = wide[[zone_col, *variables]].rename(columns={zone_col: "zone_code", **variables})
    long = sub.melt(id_vars="zone_code", var_name="variable", value_name="value")
    long["level"] = level
    long["cog_year"] = cog_year
    long["period"] = period
    return long[["zone_code", "level", "cog_year", "period", "variable", "value"]]
