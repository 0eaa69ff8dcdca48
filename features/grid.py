"""The 200 m grid level: INSPIRE cell ids in EPSG:3035, the lattice graph and the grid features.

Cells
-----
A grid cell is a square of the European INSPIRE / GEOSTAT grid in ETRS89-LAEA (EPSG:3035),
named by its resolution and the coordinates of its **lower-left corner** in metres, e.g.
``CRS3035RES200mN2684000E4334000`` (the convention of INSEE's Filosofi 200 m grid and of
Eurostat's GEOSTAT grids). A grid table (:data:`GRID_ID_COLUMNS`) has one row per inhabited
cell: ``cell_id``, ``northing``, ``easting`` (integers, the corner), ``parent_commune`` and
``department`` (the wider areas the cell belongs to), then one column per indicator of the
registry (``conf/indicators``: the same names, domains, directions and lever flags as at
commune level) and optionally a target column. :func:`validate_grid` checks it.

The lattice graph
-----------------
On a regular lattice, neighbours follow from the ids: the cell at row ``r`` and column ``c``
(``northing / resolution``, ``easting / resolution``) has its queen neighbours at the eight
offsets ``(r ± 1, c ± 1)`` and its rook neighbours at the four ``(r ± 1, c)``, ``(r, c ± 1)``.
:func:`lattice_graph` finds them by binary search on integer keys: no geometry, about a
second for 2.3 million cells, and the same links as polygon contiguity of the cell squares
(tested against ``libpysal.graph.Graph.build_contiguity``). Only inhabited cells are in the
table, so an empty neighbour position has no link.

Features
--------
:func:`grid_features` builds, for each indicator: its level, the mean over the inhabited
neighbour cells that have data (``nbr_mean``), the gap to it (``gap_nbr``), and the gaps to
the mean of the cells of its parent commune (``gap_commune``) and department (``gap_dep``);
plus the number of inhabited neighbour cells (``nbr_count``, an urban-fabric measure). Sums
run in a fixed order (neighbour offsets in a fixed order, group members in table order), so
the features of a cell are bit-for-bit the same whether the table is processed whole or in
partitions of whole departments with a halo of the neighbouring cells (``halo``): this is
what the Dask engine relies on (:mod:`territoria.pipelines.grid`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.registry import Registry

GRID_CRS = "EPSG:3035"
RESOLUTION_M = 200
GRID_ID_COLUMNS = ["cell_id", "northing", "easting", "parent_commune", "department"]
ID_PATTERN = re.compile(r"^CRS3035RES(\d+)mN(\d+)E(\d+)$")

#: row offsets are multiplied by this in the integer key ``row * KEY_SHIFT + col``
KEY_SHIFT = 1 << 32
QUEEN = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
ROOK = ((-1, 0), (0, -1), (0, 1), (1, 0))
OFFSETS = {"queen": QUEEN, "rook": ROOK}

#: transforms that describe a cell's surroundings rather than the cell itself
GRID_LOCATION_TRANSFORMS = frozenset({"nbr_mean", "gap_nbr", "gap_commune", "gap_dep", "nbr_count"})
_LABELS = {
    "level": ("", ""),
    "nbr_mean": (" (neighbour cells' mean)", " (moyenne des carreaux voisins)"),
    "gap_nbr": (" (gap to neighbour cells)", " (écart aux carreaux voisins)"),
    "gap_commune": (" (gap to commune)", " (écart à la commune)"),
    "gap_dep": (" (gap to department)", " (écart au département)"),
}


def cell_ids(northing, easting, resolution: int = RESOLUTION_M) -> np.ndarray:
    """INSPIRE ids of the cells whose lower-left corners are ``(northing, easting)``.

    Examples
    --------
    >>> cell_ids([2684000], [4334000]).tolist()
    ['CRS3035RES200mN2684000E4334000']
    """
    n = pd.Series(np.asarray(northing, dtype=np.int64)).astype(str)
    e = pd.Series(np.asarray(easting, dtype=np.int64)).astype(str)
    return (f"CRS3035RES{int(resolution)}mN" + n + "E" + e).to_numpy(dtype=object)


def parse_cell_ids(ids, file: str = "grid", resolution: int | None = RESOLUTION_M) -> tuple[np.ndarray, np.ndarray, int]:
    """Northing, easting (lower-left corners, metres) and resolution of INSPIRE cell ids.

    Parameters
    ----------
    ids : array-like of str
        Ids such as ``CRS3035RES200mN2684000E4334000``.
    file : str
        Named in the error message.
    resolution : int or None
        Expected resolution in metres (None accepts any single resolution).

    Raises
    ------
    DataError
        An id that does not follow the pattern, mixed resolutions, or corners that are not
        multiples of the resolution.

    Examples
    --------
    >>> n, e, res = parse_cell_ids(["CRS3035RES200mN2684000E4334000"])
    >>> int(n[0]), int(e[0]), res
    (2684000, 4334000, 200)
    >>> parse_cell_ids(["N2684000E4334000"])
    Traceback (most recent call last):
    ...
    territoria.errors.DataError: grid: column 'cell_id': 1 ids are not INSPIRE grid ids like CRS3035RES200mN2684000E4334000 (first: 'N2684000E4334000')
    """
    s = pd.Series(np.asarray(ids, dtype=object)).astype("string")
    parts = s.str.extract(ID_PATTERN)
    bad = parts[0].isna().to_numpy()
    if bad.any():
        raise DataError(file, f"{int(bad.sum())} ids are not INSPIRE grid ids like "
                              f"CRS3035RES200mN2684000E4334000 (first: '{s[bad].iloc[0]}')", column="cell_id")
    res = np.unique(parts[0].astype(np.int64).to_numpy())
    if len(res) > 1:
        raise DataError(file, f"cells of several resolutions ({', '.join(f'{r} m' for r in res)})", column="cell_id")
    res_m = int(res[0]) if len(res) else int(resolution or RESOLUTION_M)
    if resolution is not None and len(res) and res_m != resolution:
        raise DataError(file, f"cells of {res_m} m, expected {resolution} m", column="cell_id")
    n = parts[1].astype(np.int64).to_numpy()
    e = parts[2].astype(np.int64).to_numpy()
    off = (n % res_m != 0) | (e % res_m != 0)
    if off.any():
        raise DataError(file, f"{int(off.sum())} cell corners are not multiples of {res_m} m "
                              f"(first: '{s[off].iloc[0]}')", column="cell_id")
    return n, e, res_m


def lattice_keys(northing, easting, resolution: int = RESOLUTION_M) -> np.ndarray:
    """Integer key ``row * 2**32 + col`` of each cell (row and column on the lattice).

    Examples
    --------
    >>> int(lattice_keys([400], [600])[0]) == 2 * 2**32 + 3
    True
    """
    row = np.asarray(northing, dtype=np.int64) // resolution
    col = np.asarray(easting, dtype=np.int64) // resolution
    return row * KEY_SHIFT + col


@dataclass(frozen=True)
class LatticeGraph:
    """Neighbours of cells on the regular lattice.

    Attributes
    ----------
    neighbours : ndarray of int64, shape (n_cells, k)
        Position in the reference table of the neighbour at each offset, ``-1`` where that
        position holds no (inhabited) cell. Columns follow :data:`QUEEN` or :data:`ROOK`.
    contiguity : str
        ``"queen"`` (8 offsets) or ``"rook"`` (4).
    """

    neighbours: np.ndarray
    contiguity: str

    @property
    def cardinalities(self) -> np.ndarray:
        """Number of neighbours of each cell."""
        return (self.neighbours >= 0).sum(axis=1)

    def to_sparse(self, n_reference: int | None = None):
        """Binary adjacency matrix (queries × reference table) as ``scipy.sparse.csr_array``."""
        from scipy import sparse

        n, k = self.neighbours.shape
        has = self.neighbours >= 0
        rows = np.repeat(np.arange(n), k)[has.ravel()]
        cols = self.neighbours.ravel()[has.ravel()]
        m = n if n_reference is None else n_reference
        return sparse.csr_array((np.ones(len(rows)), (rows, cols)), shape=(n, m))


def lattice_graph(keys, reference_keys=None, contiguity: str = "queen") -> LatticeGraph:
    """Queen or rook neighbours of cells, found from their lattice keys alone.

    Parameters
    ----------
    keys : ndarray of int64
        :func:`lattice_keys` of the cells whose neighbours are wanted.
    reference_keys : ndarray of int64, optional
        Keys of the cells that can be neighbours (default: ``keys`` themselves). A partition
        passes its own cells followed by its halo.
    contiguity : {"queen", "rook"}

    Returns
    -------
    LatticeGraph
        ``neighbours[i, j]`` is the position in the reference keys of cell ``i``'s neighbour
        at offset ``j``, or ``-1``.

    Examples
    --------
    >>> keys = lattice_keys([0, 0, 200, 400], [0, 200, 200, 800])
    >>> lattice_graph(keys).cardinalities.tolist()
    [2, 2, 2, 0]
    >>> lattice_graph(keys, contiguity="rook").cardinalities.tolist()
    [1, 2, 1, 0]
    """
    if contiguity not in OFFSETS:
        raise DataError("grid", f"unknown contiguity '{contiguity}' (expected queen or rook)")
    keys = np.asarray(keys, dtype=np.int64)
    ref = keys if reference_keys is None else np.asarray(reference_keys, dtype=np.int64)
    order = np.argsort(ref, kind="stable")
    sorted_ref = ref[order]
    offsets = OFFSETS[contiguity]
    out = np.full((len(keys), len(offsets)), -1, dtype=np.int64)
    if len(ref) == 0:
        return LatticeGraph(out, contiguity)
    for j, (dr, dc) in enumerate(offsets):
        target = keys + dr * KEY_SHIFT + dc
        pos = np.searchsorted(sorted_ref, target)
        pos = np.minimum(pos, len(sorted_ref) - 1)
        hit = sorted_ref[pos] == target
        out[hit, j] = order[pos[hit]]
    return LatticeGraph(out, contiguity)


def neighbour_mean(values: np.ndarray, graph: LatticeGraph) -> np.ndarray:
    """Mean of each column over a cell's neighbours that have data (``NaN`` if none has).

    ``values`` are rows of the graph's reference table; the sums run over the offsets in
    their fixed order, so the result does not depend on how the table was partitioned.

    Examples
    --------
    >>> g = lattice_graph(lattice_keys([0, 0, 0], [0, 200, 400]))
    >>> neighbour_mean(np.array([[1.0], [np.nan], [3.0]]), g).ravel().tolist()
    [nan, 2.0, nan]
    """
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    nb = graph.neighbours
    total = np.zeros((nb.shape[0], values.shape[1]))
    count = np.zeros((nb.shape[0], values.shape[1]))
    for j in range(nb.shape[1]):
        idx = nb[:, j]
        has = idx >= 0
        v = values[idx[has]]
        ok = ~np.isnan(v)
        total[has] += np.where(ok, v, 0.0)
        count[has] += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1.0), np.nan)


def group_mean(values: np.ndarray, groups) -> np.ndarray:
    """Mean of each column over the rows of the same group that have data, per row.

    Sums are accumulated in table order (``np.bincount``), so a group gives the same mean
    whether the table holds only that group's partition or everything.

    Examples
    --------
    >>> group_mean(np.array([1.0, 3.0, np.nan, 10.0]), ["a", "a", "a", "b"]).ravel().tolist()
    [2.0, 2.0, 2.0, 10.0]
    """
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    codes, uniques = pd.factorize(np.asarray(groups, dtype=object), use_na_sentinel=False)
    out = np.empty_like(values)
    for c in range(values.shape[1]):
        v = values[:, c]
        ok = ~np.isnan(v)
        s = np.bincount(codes, weights=np.where(ok, v, 0.0), minlength=len(uniques))
        n = np.bincount(codes, weights=ok.astype(float), minlength=len(uniques))
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(n > 0, s / np.where(n > 0, n, 1.0), np.nan)
        out[:, c] = m[codes]
    return out


def grid_indicators(cells: pd.DataFrame, registry: Registry) -> list[str]:
    """Indicator columns of a grid table: the columns named after a registry indicator."""
    return [c for c in cells.columns if c in registry.indicators]


def validate_grid(cells: pd.DataFrame, registry: Registry, file: str = "grid", target: str | None = None) -> list[str]:
    """Check a grid table and return its indicator columns.

    Raises
    ------
    DataError
        A missing id column, ids that are not INSPIRE ids or do not match ``northing`` and
        ``easting``, duplicate cells, a cell whose commune lies in two departments, no
        indicator column, a non-numeric indicator, or a missing ``target`` column.
    """
    for col in GRID_ID_COLUMNS:
        if col not in cells.columns:
            raise DataError(file, "missing column", column=col)
    if len(cells) == 0:
        raise DataError(file, "no cells")
    n, e, _ = parse_cell_ids(cells["cell_id"].to_numpy(), file=file)
    for name, v in (("northing", n), ("easting", e)):
        col = pd.to_numeric(cells[name], errors="coerce").to_numpy()
        if np.isnan(col.astype(float)).any() or not np.array_equal(col.astype(np.int64), v):
            raise DataError(file, "does not match the corner coordinates in cell_id", column=name)
    dup = cells["cell_id"].duplicated()
    if dup.any():
        raise DataError(file, f"{int(dup.sum())} duplicate cells (first: '{cells['cell_id'][dup].iloc[0]}')",
                        column="cell_id")
    for col in ("parent_commune", "department"):
        if cells[col].isna().any():
            raise DataError(file, f"{int(cells[col].isna().sum())} cells without a code", column=col)
    per = cells.groupby("parent_commune", sort=False)["department"].nunique()
    if (per > 1).any():
        raise DataError(file, f"commune '{per[per > 1].index[0]}' lies in several departments", column="department")
    indicators = grid_indicators(cells, registry)
    if not indicators:
        raise DataError(file, "no indicator column (columns must be named after indicators of conf/indicators)")
    if target is not None and target not in cells.columns:
        raise DataError(file, "missing target column", column=target)
    for col in indicators + ([target] if target else []):
        if not pd.api.types.is_numeric_dtype(cells[col]):
            raise DataError(file, f"not numeric ({cells[col].dtype})", column=col)
    return indicators


def grid_feature_meta(indicators: list[str], registry: Registry, period: int | None = None) -> pd.DataFrame:
    """Metadata of :func:`grid_features`' columns (the ``features_meta.csv`` contract).

    Examples
    --------
    >>> from territoria.registry import load_registry
    >>> meta = grid_feature_meta(["poverty_rate"], load_registry())
    >>> meta[["feature", "domain", "transform"]].values.tolist()[:2]
    [['poverty_rate', 'economic', 'level'], ['poverty_rate_nbr_mean', 'economic', 'nbr_mean']]
    """
    from territoria.features.build import META_SCHEMA

    rows = []
    for name in indicators:
        ind = registry.indicator(name)
        for transform, (sen, sfr) in _LABELS.items():
            rows.append({
                "feature": name if transform == "level" else f"{name}_{transform}",
                "indicator": name, "domain": ind.domain, "is_lever": bool(ind.lever),
                "transform": transform, "period_from": period, "period_to": period,
                "label_en": ind.label_en + sen, "label_fr": ind.label_fr + sfr,
            })
    pop = registry.indicator("population")
    rows.append({"feature": "nbr_count", "indicator": "population", "domain": pop.domain, "is_lever": False,
                 "transform": "nbr_count", "period_from": period, "period_to": period,
                 "label_en": "inhabited neighbour cells", "label_fr": "carreaux voisins habités"})
    return META_SCHEMA.validate(pd.DataFrame(rows))


def grid_features(
    cells: pd.DataFrame,
    indicators: list[str],
    *,
    halo: pd.DataFrame | None = None,
    contiguity: str = "queen",
    resolution: int = RESOLUTION_M,
) -> pd.DataFrame:
    """Feature matrix of grid cells (columns in the order of :func:`grid_feature_meta`).

    Parameters
    ----------
    cells : DataFrame
        Grid table (``northing``, ``easting``, ``parent_commune``, ``department`` and the
        indicator columns). Commune and department means are taken over these rows: pass
        whole departments.
    indicators : list of str
        Indicator columns (registry names).
    halo : DataFrame, optional
        Cells outside ``cells`` that may neighbour them (``northing``, ``easting`` and the
        indicator columns): their values enter the neighbour means, they get no row.
    contiguity : {"queen", "rook"}
    resolution : int
        Cell size in metres.

    Returns
    -------
    DataFrame
        One row per cell of ``cells`` (same index), float64 features.

    Examples
    --------
    >>> cells = pd.DataFrame({"northing": [0, 0, 200], "easting": [0, 200, 0],
    ...                       "parent_commune": ["a", "a", "b"], "department": ["d"] * 3,
    ...                       "poverty_rate": [10.0, 20.0, 30.0]})
    >>> f = grid_features(cells, ["poverty_rate"])
    >>> f["poverty_rate_nbr_mean"].tolist(), f["poverty_rate_gap_commune"].tolist()
    ([25.0, 20.0, 15.0], [-5.0, 5.0, 0.0])
    """
    keys = lattice_keys(cells["northing"], cells["easting"], resolution)
    own = cells[indicators].to_numpy(dtype=float)
    if halo is not None and len(halo):
        ref_keys = np.concatenate([keys, lattice_keys(halo["northing"], halo["easting"], resolution)])
        ref_values = np.vstack([own, halo[indicators].to_numpy(dtype=float)])
    else:
        ref_keys, ref_values = keys, own
    graph = lattice_graph(keys, ref_keys, contiguity)
    nbr = neighbour_mean(ref_values, graph)
    com = group_mean(own, cells["parent_commune"].to_numpy())
    dep = group_mean(own, cells["department"].to_numpy())
    cols: dict[str, np.ndarray] = {}
    for i, name in enumerate(indicators):
        cols[name] = own[:, i]
        cols[f"{name}_nbr_mean"] = nbr[:, i]
        cols[f"{name}_gap_nbr"] = own[:, i] - nbr[:, i]
        cols[f"{name}_gap_commune"] = own[:, i] - com[:, i]
        cols[f"{name}_gap_dep"] = own[:, i] - dep[:, i]
    cols["nbr_count"] = graph.cardinalities.astype(float)
    return pd.DataFrame(cols, index=cells.index)
