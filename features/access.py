"""Access and environment from points: great-circle distances and counts around town halls.

Origins are communes represented by one point (their town hall), with columns
``zone_code, lon, lat`` in WGS84 degrees. Targets are points (facility sites, or the town
halls of the communes that host at least one facility of a type) with columns ``lon, lat``.

Every distance is a great-circle distance in kilometres on a sphere of radius
:data:`EARTH_RADIUS_KM`; no distance is ever computed in degrees. Nearest neighbours are
searched with a KD-tree on unit vectors in 3-D: the straight chord between two points grows
with their great-circle distance, so the nearest by chord is the nearest on the sphere, and
the arc is recovered exactly as ``2 R asin(chord / 2)`` (several times faster than a
haversine ball tree).

Overseas departments
--------------------
Great-circle distances never let a point "leak" across an ocean at a short distance, but a
commune of an overseas department with no target in its own department would get its
nearest target in mainland France, thousands of kilometres away: a meaningless value that
would dominate any model. The functions therefore take an optional ``group`` column
(present in both origins and targets) and only match origins with targets of the same
group. :func:`territory_of` gives the natural grouping (mainland France including Corsica,
and each overseas department or collectivity). When a group has no target, the distance is
``NaN`` (reported as missing rather than capped or imputed) and counts are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from territoria.errors import DataError

#: Mean Earth radius (IUGG), in kilometres.
EARTH_RADIUS_KM = 6371.0088

#: Group of the communes of mainland France (Corsica included) in :func:`territory_of`.
MAINLAND = "metro"


def haversine_km(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle distance in kilometres between points given in WGS84 degrees.

    Vectorised with numpy broadcasting: scalars, arrays or Series of compatible shapes.
    ``NaN`` coordinates give ``NaN``.

    Examples
    --------
    >>> round(float(haversine_km(2.3522, 48.8566, 3.0700, 50.6310)))  # Paris - Lille
    204
    >>> haversine_km([0.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]).round(1)
    array([  0. , 111.2])
    """
    lon1, lat1, lon2, lat2 = (
        np.radians(np.asarray(v, dtype=float)) for v in (lon1, lat1, lon2, lat2)
    )
    a = (
        np.sin((lat2 - lat1) / 2.0) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2.0) ** 2
    )
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def territory_of(codes: pd.Series | Sequence[str]) -> pd.Series:
    """Territory of commune codes: ``"metro"`` (mainland and Corsica) or the overseas code.

    Overseas communes (codes starting with ``97``/``98``) get their three-character
    department or collectivity code (``"971"`` Guadeloupe ... ``"976"`` Mayotte), so that
    zones are only matched with zones of the same land mass group.

    Examples
    --------
    >>> territory_of(["59172", "2A004", "97411", "97101"]).tolist()
    ['metro', 'metro', '974', '971']
    """
    s = pd.Series(codes, dtype="string")
    overseas = s.str.match(r"^9[78]")
    return pd.Series(
        np.where(overseas.fillna(False), s.str[:3], MAINLAND),
        index=s.index if isinstance(codes, pd.Series) else None,
        name="territory",
        dtype=object,
    )


def distance_to_nearest(
    origins: pd.DataFrame,
    targets: pd.DataFrame,
    *,
    group: str | None = None,
    zone_col: str = "zone_code",
    same_zone_zero: bool = True,
) -> pd.Series:
    """Great-circle distance (km) from each origin to its nearest target.

    Parameters
    ----------
    origins : DataFrame
        ``zone_code, lon, lat`` (one row per zone, WGS84 degrees), e.g. town halls.
    targets : DataFrame
        ``lon, lat``: facility points, or the town halls of the communes hosting the facility.
        Rows with missing coordinates are ignored.
    group : str, optional
        Column of both tables (e.g. :func:`territory_of` of the codes): origins are only
        matched with targets of the same group; ``NaN`` when their group has no target.
    zone_col : str
        Zone code column of ``origins`` (and of ``targets`` for ``same_zone_zero``).
    same_zone_zero : bool
        When ``targets`` has a ``zone_col`` column, a zone hosting a target gets 0 (its
        facility serves it even if it stands a few kilometres from the town hall).

    Returns
    -------
    Series
        ``distance_km`` indexed by zone code; ``NaN`` for origins without coordinates.

    Examples
    --------
    >>> o = pd.DataFrame({"zone_code": ["A", "B"], "lon": [0.0, 0.0], "lat": [0.0, 1.0]})
    >>> t = pd.DataFrame({"lon": [0.0], "lat": [0.0]})
    >>> distance_to_nearest(o, t).round(1).tolist()
    [0.0, 111.2]
    """
    o_xy, o_groups, index = _origins(origins, zone_col, group)
    t_xy, t_groups, _ = _targets(targets, group)
    out = np.full(len(o_xy), np.nan)
    for g, o_rows, t_rows in _matched_groups(o_xy, o_groups, t_xy, t_groups):
        chord, _ = cKDTree(_unit(t_xy[t_rows])).query(_unit(o_xy[o_rows]), k=1)
        out[o_rows] = _arc_km(chord)
    result = pd.Series(out, index=index, name="distance_km")
    if same_zone_zero and zone_col in targets.columns:
        hosted = index.isin(pd.Index(targets[zone_col].dropna().astype(str)))
        result[hosted] = 0.0
    return result


def count_within(
    origins: pd.DataFrame,
    targets: pd.DataFrame,
    radius_km: float,
    *,
    group: str | None = None,
    zone_col: str = "zone_code",
) -> pd.Series:
    """Number of targets within ``radius_km`` (great-circle) of each origin.

    Same tables and ``group`` restriction as :func:`distance_to_nearest`; a target exactly
    at the radius counts. Origins without coordinates get ``NaN`` (float Series).

    Examples
    --------
    >>> o = pd.DataFrame({"zone_code": ["A"], "lon": [0.0], "lat": [0.0]})
    >>> t = pd.DataFrame({"lon": [0.0, 0.0, 0.0], "lat": [0.01, 0.03, 0.2]})
    >>> count_within(o, t, 5.0).tolist()
    [2.0]
    """
    return distance_weighted_count(
        origins, targets, radii=(radius_km,), decay_km=None, group=group, zone_col=zone_col
    ).iloc[:, 0].rename(f"n_within_{radius_km:g}km")


def distance_weighted_count(
    origins: pd.DataFrame,
    targets: pd.DataFrame,
    radii: Sequence[float] = (2.0, 5.0, 10.0),
    decay_km: float | None = 2.0,
    *,
    weight: str | None = None,
    group: str | None = None,
    zone_col: str = "zone_code",
) -> pd.DataFrame:
    """Counts of targets within each radius and a distance-decayed exposure.

    For each origin ``i`` and target ``j`` at great-circle distance ``d_ij`` (km):

    * ``n_within_{r}km`` = number of targets with ``d_ij <= r`` (or the sum of their
      ``weight`` when given, e.g. emitted quantities);
    * ``decay_weighted`` = ``sum_j w_j * exp(-d_ij / decay_km)`` over the targets within the
      largest radius. With the default ``decay_km=2``, a site at the town hall counts 1, at
      2 km 0.37, at 5 km 0.08 and at 10 km 0.007: close sites dominate, as for nuisances of
      industrial facilities (IREP), and truncating at the largest radius loses little.

    Parameters
    ----------
    origins, targets, group, zone_col
        As in :func:`distance_to_nearest`.
    radii : sequence of float
        Radii in km (positive).
    decay_km : float or None
        Scale of the exponential decay; ``None`` skips the ``decay_weighted`` column.
    weight : str, optional
        Column of ``targets`` weighting each target (missing weights count 0).

    Returns
    -------
    DataFrame
        Indexed by zone code; rows of origins without coordinates are ``NaN``.

    Examples
    --------
    >>> o = pd.DataFrame({"zone_code": ["A"], "lon": [0.0], "lat": [0.0]})
    >>> t = pd.DataFrame({"lon": [0.0, 0.0], "lat": [0.0, 0.05]})  # at 0 and 5.56 km
    >>> distance_weighted_count(o, t, radii=(2, 10)).round(3).loc["A"].to_dict()
    {'n_within_2km': 1.0, 'n_within_10km': 2.0, 'decay_weighted': 1.062}
    """
    radii = [float(r) for r in radii]
    if not radii or min(radii) <= 0:
        raise DataError("distance_weighted_count", f"radii must be positive, got {radii}")
    if decay_km is not None and decay_km <= 0:
        raise DataError("distance_weighted_count", f"decay_km must be positive, got {decay_km}")
    o_xy, o_groups, index = _origins(origins, zone_col, group)
    t_xy, t_groups, keep = _targets(targets, group)
    if weight is not None:
        if weight not in targets.columns:
            raise DataError("targets", "missing column", column=weight)
        w_all = pd.to_numeric(targets[weight], errors="coerce").to_numpy(float)[keep]
        w_all = np.nan_to_num(w_all, nan=0.0)
    else:
        w_all = np.ones(len(t_xy))
    cols = [f"n_within_{r:g}km" for r in radii] + (["decay_weighted"] if decay_km else [])
    out = np.full((len(o_xy), len(cols)), np.nan)
    out[~np.isnan(o_xy).any(axis=1)] = 0.0
    rmax = max(radii)
    for g, o_rows, t_rows in _matched_groups(o_xy, o_groups, t_xy, t_groups):
        o_tree, t_tree = cKDTree(_unit(o_xy[o_rows])), cKDTree(_unit(t_xy[t_rows]))
        # chord of the largest radius, with a tiny slack for targets exactly at the radius
        pairs = o_tree.sparse_distance_matrix(t_tree, _chord(rmax) * (1 + 1e-9), output_type="coo_matrix")
        if pairs.nnz == 0:
            continue
        row = pairs.row
        d = _arc_km(pairs.data)
        w = w_all[t_rows][pairs.col]
        n_o = len(o_rows)
        block = np.zeros((n_o, len(cols)))
        for c, r in enumerate(radii):
            # tiny slack so that a target exactly at the radius counts despite rounding
            block[:, c] = np.bincount(row, weights=w * (d <= r * (1 + 1e-9)), minlength=n_o)
        if decay_km:
            block[:, -1] = np.bincount(row, weights=w * np.exp(-d / decay_km), minlength=n_o)
        out[o_rows] = block
    return pd.DataFrame(out, index=index, columns=cols)


def _unit(lonlat: np.ndarray) -> np.ndarray:
    """Unit vectors in 3-D of (lon, lat) degrees."""
    lon, lat = np.radians(lonlat[:, 0]), np.radians(lonlat[:, 1])
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


def _arc_km(chord: np.ndarray) -> np.ndarray:
    """Great-circle distance (km) of a chord between unit vectors."""
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.asarray(chord) / 2.0, 0.0, 1.0))


def _chord(km: float) -> float:
    """Chord between unit vectors whose great-circle distance is ``km``."""
    return 2.0 * np.sin(min(km / EARTH_RADIUS_KM, np.pi) / 2.0)


def _lonlat(df: pd.DataFrame, name: str) -> np.ndarray:
    for col in ("lon", "lat"):
        if col not in df.columns:
            raise DataError(name, "missing column", column=col)
    xy = df[["lon", "lat"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    bad = (np.abs(xy[:, 0]) > 180) | (np.abs(xy[:, 1]) > 90)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            name, f"coordinates out of WGS84 range at row {i}: {tuple(xy[i])} (expected degrees)"
        )
    return xy


def _groups(df: pd.DataFrame, name: str, group: str | None) -> np.ndarray:
    if group is None:
        return np.zeros(len(df), dtype=object)
    if group not in df.columns:
        raise DataError(name, "missing group column", column=group)
    return df[group].astype(object).to_numpy()


def _origins(df: pd.DataFrame, zone_col: str, group: str | None):
    if zone_col not in df.columns:
        raise DataError("origins", "missing column", column=zone_col)
    index = pd.Index(df[zone_col].astype(str), name=zone_col)
    if index.has_duplicates:
        first = index[index.duplicated()][0]
        raise DataError("origins", f"duplicated zone code {first!r}", column=zone_col)
    return _lonlat(df, "origins"), _groups(df, "origins", group), index


def _targets(df: pd.DataFrame, group: str | None):
    xy = _lonlat(df, "targets")
    keep = ~np.isnan(xy).any(axis=1)
    return xy[keep], _groups(df, "targets", group)[keep], keep


def _matched_groups(o_xy, o_groups, t_xy, t_groups):
    """Yield ``(group, origin rows, target rows)`` for groups having both, origins located."""
    located = ~np.isnan(o_xy).any(axis=1)
    o_codes, o_inv = _codes(o_groups)
    for k, g in enumerate(o_codes):
        if pd.isna(g):
            continue
        t_rows = np.flatnonzero(_eq(t_groups, g))
        o_rows = np.flatnonzero((o_inv == k) & located)
        if len(t_rows) and len(o_rows):
            yield g, o_rows, t_rows


def _codes(values: np.ndarray):
    codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
    return list(uniques), codes


def _eq(values: np.ndarray, g) -> np.ndarray:
    return pd.Series(values, dtype=object).eq(g).to_numpy()
