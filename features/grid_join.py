"""Parent commune of each 200 m cell, by a spatial join of the cell centres on commune polygons.

A grid file may come without commune codes, or with codes that do not fit one commune per
cell (the Filosofi grid lists every commune a straddling cell touches). The cell then goes to
the commune that contains its centre. A centre just off the simplified coastline or border
goes to the nearest commune within ``max_distance`` metres. A centre farther from every
commune is not assigned: :func:`assign_communes` reports these cells and leaves them out.

The join runs with geopandas on one machine, or with dask-geopandas on the partitions of a
Dask cluster (``engine="dask"``); both give the same assignment. EPSG:3035 (the grid's CRS)
covers mainland France and Corsica, so only their communes are joined.

Examples
--------
>>> import geopandas as gpd
>>> from shapely.geometry import box
>>> polys = gpd.GeoDataFrame({"zone_code": ["59172", "59173"]},
...     geometry=[box(0, 0, 400, 400), box(400, 0, 800, 400)], crs="EPSG:3035")
>>> cells = pd.DataFrame({"cell_id": ["a", "b", "c"], "northing": [0, 0, 5000],
...                       "easting": [0, 400, 0]})
>>> out, missing = assign_communes(cells, polys)
>>> out[["cell_id", "parent_commune", "department"]].values.tolist(), missing
([['a', '59172', '59'], ['b', '59173', '59']], 1)
"""

from __future__ import annotations

import geopandas as gpd
import pandas as pd

from territoria.errors import DataError
from territoria.models.index import department_of

#: the grid's coordinate reference system (ETRS89-LAEA, metres)
GRID_CRS = "EPSG:3035"
#: a cell is 200 m wide: its centre is 100 m from its lower-left corner
HALF_CELL = 100


def commune_polygons(data_dir=None) -> gpd.GeoDataFrame:
    """Commune polygons of mainland France and Corsica in EPSG:3035 (``zone_code``, geometry)."""
    from territoria.features.sources.geometries import CommuneGeometries

    g = CommuneGeometries(data_dir).load()
    g = g[g.geometry.notna() & ~g["zone_code"].str.startswith("97")][["zone_code", "geometry"]]
    return g.drop_duplicates("zone_code").to_crs(GRID_CRS).reset_index(drop=True)


def cell_centres(cells: pd.DataFrame) -> gpd.GeoDataFrame:
    """Centre points of the cells (EPSG:3035) with their ``cell_id``."""
    x = pd.to_numeric(cells["easting"]).to_numpy(float) + HALF_CELL
    y = pd.to_numeric(cells["northing"]).to_numpy(float) + HALF_CELL
    return gpd.GeoDataFrame({"cell_id": cells["cell_id"].to_numpy()},
                            geometry=gpd.points_from_xy(x, y), crs=GRID_CRS)


def _join_local(points: gpd.GeoDataFrame, polygons: gpd.GeoDataFrame) -> pd.Series:
    hit = gpd.sjoin(points, polygons, how="inner", predicate="within")
    return hit.drop_duplicates("cell_id").set_index("cell_id")["zone_code"]


def _join_dask(points: gpd.GeoDataFrame, polygons: gpd.GeoDataFrame, npartitions: int) -> pd.Series:
    try:
        import dask_geopandas
    except ImportError:
        raise DataError("--engine dask", "the spatial join needs dask-geopandas: "
                                         "pip install 'territoria[dask]'") from None

    parts = dask_geopandas.from_geopandas(points, npartitions=max(1, npartitions))
    hit = dask_geopandas.sjoin(parts, polygons, how="inner", predicate="within").compute()
    return hit.drop_duplicates("cell_id").set_index("cell_id")["zone_code"]


def assign_communes(
    cells: pd.DataFrame,
    polygons: gpd.GeoDataFrame,
    *,
    engine: str = "local",
    npartitions: int = 2,
    max_distance: float = 1000.0,
) -> tuple[pd.DataFrame, int]:
    """Cells with ``parent_commune`` and ``department`` from the polygon containing their
    centre (else the nearest within ``max_distance`` m), and the number of cells left out.

    ``polygons`` (``zone_code``, geometry) are reprojected to EPSG:3035 when needed.
    Raises :class:`DataError` when no cell falls in any commune (another CRS or territory).
    """
    if engine not in ("local", "dask"):
        raise DataError("--engine", f"unknown engine '{engine}' (expected local or dask)")
    if polygons.crs is None:
        raise DataError("commune polygons", "no coordinate reference system")
    polygons = polygons[["zone_code", "geometry"]].to_crs(GRID_CRS)
    points = cell_centres(cells)
    code = _join_dask(points, polygons, npartitions) if engine == "dask" else _join_local(points, polygons)
    missed = points[~points["cell_id"].isin(code.index)]
    if len(missed):
        near = gpd.sjoin_nearest(missed, polygons, how="inner", max_distance=max_distance)
        code = pd.concat([code, near.drop_duplicates("cell_id").set_index("cell_id")["zone_code"]])
    if code.empty:
        raise DataError("grid", "no cell centre lies in a commune of mainland France or Corsica "
                                "(cell ids must be EPSG:3035 INSPIRE ids)", column="cell_id")
    out = cells.drop(columns=[c for c in ("parent_commune", "department") if c in cells.columns])
    out = out.assign(parent_commune=code.reindex(out["cell_id"]).to_numpy())
    left_out = int(out["parent_commune"].isna().sum())
    out = out[out["parent_commune"].notna()].reset_index(drop=True)
    out["department"] = department_of(out["parent_commune"]).to_numpy()
    return out, left_out
