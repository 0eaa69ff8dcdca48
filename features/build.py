"""The feature matrix of a reference period t: one row per commune, only data dated <= t.

Feature families, each a pure function of the panel (and of the spatial graph or located
facilities built once by the caller):

* levels: each indicator at its latest vintage <= t (the same vintage for every zone);
* past changes: latest minus previous vintage, and latest minus earliest when three or more
  vintages exist (relative changes, in %, for counts such as population);
* spatial context: neighbour mean, gap to neighbours, gap to the EPCI and the department;
* access: great-circle distance from the town hall to the nearest facility of each type,
  mobile sites nearby; environment: IREP facilities within 2/5/10 km;
* IRIS contrasts: pockets of poverty inside communes.

Every feature is described in a metadata table (indicator, domain, lever or context,
transform, vintages) so that explanations can group contributions by domain and lever.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pandas as pd
import pandera.pandas as pa

from territoria.digest import value_digest
from territoria.features.access import count_within, distance_to_nearest, distance_weighted_count
from territoria.features.panel import measure_rows, panel_codes
from territoria.features.spatial import gap_to_group, gap_to_neighbours, neighbour_mean
from territoria.registry import Registry

ID_COLUMNS = ["zone_code", "zone_name", "departement", "region", "epci", "zone", "reference_period"]

META_SCHEMA = pa.DataFrameSchema(
    {
        "feature": pa.Column(str, unique=True),
        "indicator": pa.Column(str),
        "domain": pa.Column(str),
        "is_lever": pa.Column(bool),
        "transform": pa.Column(str),
        "period_from": pa.Column(float, nullable=True),
        "period_to": pa.Column(float, nullable=True),
        "label_en": pa.Column(str),
        "label_fr": pa.Column(str),
    },
    strict=True,
    coerce=True,
)

_TRANSFORM_LABELS = {
    "level": ("", ""),
    "change": (" (change)", " (évolution)"),
    "change_long": (" (long-run change)", " (évolution longue)"),
    "nbr_mean": (" (neighbours' mean)", " (moyenne des voisines)"),
    "gap_nbr": (" (gap to neighbours)", " (écart aux voisines)"),
    "gap_epci": (" (gap to EPCI)", " (écart à l'EPCI)"),
    "gap_dep": (" (gap to department)", " (écart au département)"),
    "gap_commune": (" (gap to the commune's median IRIS)", " (écart à l'IRIS médian de la commune)"),
    "commune": (" (commune)", " (commune)"),
}


class FeatureSet:
    """A feature matrix and the metadata of its columns, built up family by family."""

    def __init__(self, index: pd.Index) -> None:
        self.index = index
        self.columns: dict[str, np.ndarray] = {}
        self.meta: list[dict] = []

    def add(self, name: str, values: pd.Series, ind, transform: str, periods=(None, None)) -> None:
        suffix_en, suffix_fr = _TRANSFORM_LABELS.get(transform, ("", ""))
        # align through the hash table of self.index, built once: reindexing each Series on
        # its own index would hash its 35,000 codes again for every feature
        pos = self.index.get_indexer(values.index)
        column = np.full(len(self.index), np.nan)
        column[pos[pos >= 0]] = values.to_numpy(float)[pos >= 0]
        self.columns[name] = column
        self.meta.append(
            {
                "feature": name,
                "indicator": ind.name,
                "domain": ind.domain,
                "is_lever": bool(ind.lever),
                "transform": transform,
                "period_from": periods[0],
                "period_to": periods[1],
                "label_en": ind.label_en + suffix_en,
                "label_fr": ind.label_fr + suffix_fr,
            }
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns, index=self.index)

    def metadata(self) -> pd.DataFrame:
        return META_SCHEMA.validate(pd.DataFrame(self.meta))


def zone_cube(panel: pd.DataFrame, t: int, level: str = "commune") -> pd.DataFrame:
    """Measures of the zones of one level (communes or IRIS) dated <= t as one wide table:
    zone × (measure, period).

    Built once so that every feature family reads columns instead of filtering the long panel.
    Zones and columns are sorted. The panel has one value per zone, measure and period
    (checked by :func:`~territoria.features.panel.build_panel`). The table of every period is
    kept with the panel's codes (:func:`~territoria.features.panel.panel_codes`) while the
    panel's values are unchanged: the cube at another ``t`` is a selection of it.
    """
    codes = panel_codes(panel)
    values = np.ascontiguousarray(panel["value"].to_numpy(float))
    # the values may have been changed in place since (a scenario's copy of a panel is)
    digest = hashlib.sha1(memoryview(values).cast("B")).digest()
    if level not in codes.cubes or codes.cubes[level][0] != digest:
        codes.cubes[level] = (digest, *_full_cube(values, codes, level))
    _, full, first = codes.cubes[level]
    cube = full.iloc[np.flatnonzero(first <= t), np.flatnonzero(full.columns.get_level_values("period") <= t)]
    cube.columns = cube.columns.remove_unused_levels()
    return cube


def _full_cube(values: np.ndarray, codes, level: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The zone cube of every period of a level, and each zone's first period: the cube at
    ``t`` is its zones present by ``t`` and its columns dated <= ``t`` (built once per panel,
    as the designs of several origins read the cube)."""
    com = np.flatnonzero(codes.level == codes.levels.get_indexer([level])[0])
    # scatter into a numpy array on integer codes (a pivot on string keys costs seconds); the
    # panel's codes are sorted, so relabelling the codes present keeps zones and columns sorted
    zone_id, zones = _present(codes.zone[com], codes.zones)
    measure_id, measures = _present(codes.measure[com], codes.measures)
    period = codes.period[com]
    first, span = (int(period.min()), int(period.max()) - int(period.min()) + 1) if len(period) else (0, 1)
    col_id, col_key = _present(measure_id * span + (period - first), np.arange(len(measures) * span))
    wide = np.full((len(zones), len(col_key)), np.nan)
    wide[zone_id, col_id] = values[com]
    columns = pd.MultiIndex.from_arrays(
        [measures[col_key // span], col_key % span + first], names=["measure", "period"]
    )
    zone_first = np.full(len(zones), np.iinfo(np.int64).max)
    np.minimum.at(zone_first, zone_id, period)
    return pd.DataFrame(wide, index=pd.Index(zones, name="zone_code"), columns=columns), zone_first


def _present(codes: np.ndarray, labels):
    """``codes`` relabelled 0..k-1 over the codes present (in code order), and their labels."""
    seen = np.bincount(codes, minlength=len(labels)) > 0
    return (np.cumsum(seen) - 1)[codes], labels[np.flatnonzero(seen)]


def measure_periods(cube: pd.DataFrame, measure: str) -> list[int]:
    """Vintages of a measure in the cube (all dated <= t)."""
    if measure not in cube.columns.get_level_values(0):
        return []
    return sorted(int(p) for p in cube[measure].columns)


def add_levels_and_changes(fs: FeatureSet, cube: pd.DataFrame, registry: Registry) -> list[str]:
    """Levels at the latest vintage <= t, and past changes; returns the level feature names."""
    levels = []
    measures = sorted(set(cube.columns.get_level_values(0)) & set(registry.indicators))
    for measure in measures:
        ind = registry.indicator(measure)
        periods = measure_periods(cube, measure)
        last = periods[-1]
        # whole cube columns (missing values included) share one index: no realignment
        cur = cube[(measure, last)]
        fs.add(measure, cur, ind, "level", (last, last))
        levels.append(measure)
        if len(periods) < 2:
            continue
        relative = _is_count(registry, ind)
        prev = cube[(measure, periods[-2])]
        fs.add(f"{measure}__chg", _change(cur, prev, relative), ind, "change", (periods[-2], last))
        if len(periods) >= 3:
            first = cube[(measure, periods[0])]
            fs.add(f"{measure}__chg_long", _change(cur, first, relative), ind, "change_long", (periods[0], last))
    return levels


def _is_count(registry: Registry, ind) -> bool:
    """Whether past changes of ``ind`` are relative (%): its ``change`` or, by default, counts."""
    if ind.change is not None:
        return ind.change == "relative"
    var = ind.definition.variable
    return var is not None and registry.variable(var).kind == "count"


def _change(cur: pd.Series, prev: pd.Series, relative: bool) -> pd.Series:
    prev = prev.reindex(cur.index)
    if relative:
        return (cur - prev) / prev.where(prev > 0) * 100.0
    return cur - prev


def add_spatial_context(
    fs: FeatureSet, graph, identity: pd.DataFrame, registry: Registry, names: list[str]
) -> None:
    """Neighbour mean, gap to neighbours and gaps to EPCI and department of scored levels."""
    frame = fs.frame()
    scored = [n for n in names if registry.indicator(n).scored]
    values = frame[scored]
    nbr = neighbour_mean(graph, values)
    gap = gap_to_neighbours(graph, values)
    weights = frame["population"] if "population" in frame else None
    gap_epci = gap_to_group(values, identity["epci"], weights)
    gap_dep = gap_to_group(values, identity["departement"], weights)
    for n in scored:
        ind = registry.indicator(n)
        fs.add(f"{n}__nbr_mean", nbr[n], ind, "nbr_mean")
        fs.add(f"{n}__gap_nbr", gap[n], ind, "gap_nbr")
        fs.add(f"{n}__gap_epci", gap_epci[n], ind, "gap_epci")
        fs.add(f"{n}__gap_dep", gap_dep[n], ind, "gap_dep")


#: measures an access memo keeps (one per facility type and vintage in a backtest: about 25)
ACCESS_MEMO_SIZE = 128
_ACCESS_MEMO_LOCK = threading.Lock()


def add_access(
    fs: FeatureSet,
    cube: pd.DataFrame,
    townhalls: pd.DataFrame,
    points: dict[str, pd.DataFrame],
    registry: Registry,
    params,
    t: int,
    memo: dict | None = None,
) -> None:
    """Distances to facilities, mobile sites nearby and IREP exposure, dated <= t.

    ``townhalls`` is indexed by zone code with ``lon, lat, territory``; distances are only
    measured within a territory (mainland, or each overseas department). ``memo``, a dict the
    caller keeps between reference periods, holds the measures already taken, keyed by all
    they read (the town halls, the facilities' hosts or positions, the radii): the origins of
    a backtest between two vintages of the BPE or of a points file read the same ones.
    """
    memo = {} if memo is None else memo
    origins = townhalls.reindex(fs.index).rename_axis("zone_code").reset_index()
    at = value_digest(origins[["lon", "lat"]].to_numpy(float), origins["territory"])

    def measured(key: tuple, compute):
        key = (at, *key)
        value = memo.get(key)
        if value is None:
            value = compute()
            with _ACCESS_MEMO_LOCK:  # the dashboard's scenarios may share a build's memo
                while len(memo) >= ACCESS_MEMO_SIZE:  # the oldest go first (what-if scenarios add some)
                    del memo[next(iter(memo))]
                memo[key] = value
        return value

    cube_rows = cube.index.get_indexer(pd.Index(origins["zone_code"]))
    for label, variables in params.nearest_facility.items():
        name = f"dist_{label}"
        variables = [variables] if isinstance(variables, str) else variables
        periods = measure_periods(cube, variables[0])
        if not periods or name not in registry.indicators:
            continue
        columns = [cube[(v, periods[-1])].to_numpy(float) for v in variables if (v, periods[-1]) in cube.columns]
        counts = np.nansum(np.column_stack(columns), axis=1)
        hosts = np.where(cube_rows >= 0, counts[cube_rows], 0.0) > 0
        # hosts are town halls themselves (distance 0): no need to match them by code
        dist = measured(("nearest", value_digest(hosts)),
                        lambda: distance_to_nearest(origins, origins[hosts], group="territory", same_zone_zero=False))
        fs.add(name, dist, registry.indicator(name), "level", (periods[-1], periods[-1]))

    services = _latest_upto(points.get("france_services"), t)
    if services is not None and "dist_france_services" in registry.indicators:
        tg = _lonlat(services)
        dist = measured(("nearest", value_digest(tg[["lon", "lat"]].to_numpy())),
                        lambda: distance_to_nearest(origins, tg, group="territory", same_zone_zero=False))
        fs.add("dist_france_services", dist, registry.indicator("dist_france_services"), "level", _span(services))

    sites = _latest_upto(points.get("arcep_mobile_sites"), t)
    if sites is not None and "mobile_sites_nearby" in registry.indicators:
        xy = _lonlat(sites)
        radius = params.mobile_site_radius_km
        n = measured(("within", radius, value_digest(xy[["lon", "lat"]].to_numpy())),
                     lambda: count_within(origins, xy, radius, group="territory"))
        # the file covers mainland France only: overseas communes have no measure, not zero
        n = n.where(origins.set_index("zone_code")["territory"].reindex(n.index) == "metro")
        fs.add("mobile_sites_nearby", n, registry.indicator("mobile_sites_nearby"), "level", _span(sites))

    irep = _latest_upto(points.get("irep"), t)
    if irep is not None:
        radii = tuple(params.irep_radii_km)
        xy = _lonlat(irep)
        counts = measured(("weighted", radii, value_digest(xy[["lon", "lat"]].to_numpy())),
                          lambda: distance_weighted_count(origins, xy, radii=radii, group="territory"))
        for r in radii:
            name = f"irep_within_{r:g}km"
            col = f"n_within_{r:g}km"
            if name in registry.indicators and col in counts:
                fs.add(name, counts[col], registry.indicator(name), "level", _span(irep))
        fs.add("irep_exposure", counts["decay_weighted"], registry.indicator("irep_exposure"), "level", _span(irep))


def _latest_upto(points: pd.DataFrame | None, t: int) -> pd.DataFrame | None:
    """The latest vintage of located facilities dated <= t (None when there is none)."""
    if points is None or points.empty:
        return None
    sub = points[points["period"] <= t]
    if sub.empty:
        return None
    return sub[sub["period"] == sub["period"].max()]


def _span(points: pd.DataFrame) -> tuple[int, int]:
    p = int(points["period"].max())
    return (p, p)


def _lonlat(points: pd.DataFrame) -> pd.DataFrame:
    """``lon, lat, territory`` of located facilities (territory from the position)."""
    lon, lat = points.geometry.x.to_numpy(), points.geometry.y.to_numpy()
    return pd.DataFrame({"lon": lon, "lat": lat, "territory": territory_at(lon, lat)})


def territory_at(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Mainland (with Corsica) or the overseas department a point lies in, from its position.

    Points elsewhere (overseas collectivities, errors) get ``"other"`` and match no commune.
    """
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    out = np.full(len(lon), "other", dtype=object)
    boxes = {
        "metro": (-5.5, 10.0, 41.0, 51.5),
        "971": (-61.9, -60.9, 15.8, 16.6),
        "972": (-61.3, -60.7, 14.3, 15.0),
        "973": (-54.7, -51.5, 2.0, 6.0),
        "974": (55.1, 56.0, -21.5, -20.8),
        "976": (44.9, 45.4, -13.1, -12.5),
    }
    for code, (x0, x1, y0, y1) in boxes.items():
        out[(lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1)] = code
    return out


def add_iris_contrasts(fs: FeatureSet, panel: pd.DataFrame, registry: Registry, params, t: int) -> None:
    """Pockets of poverty: IRIS far poorer than the rest of their commune."""
    rows = measure_rows(panel, "declared_poverty_rate")
    iris = rows[(rows["level"] == "iris") & (rows["period"] <= t)]
    if iris.empty:
        return
    iris = iris[iris["period"] == iris["period"].max()].dropna(subset=["value", "parent_commune"])
    g = iris.groupby("parent_commune")["value"]
    med = g.transform("median")
    pockets = (iris["value"] >= med + params.pocket_gap_points).groupby(iris["parent_commune"]).sum()
    span = (int(iris["period"].max()),) * 2
    fs.add("iris_poverty_max", g.max(), registry.indicator("iris_poverty_max"), "level", span)
    fs.add("iris_poverty_spread", g.max() - g.median(), registry.indicator("iris_poverty_spread"), "level", span)
    fs.add("iris_pockets", pockets.astype(float), registry.indicator("iris_pockets"), "level", span)
