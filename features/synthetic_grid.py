"""A SYNTHETIC France-scale 200 m grid, for benchmarks and tests of the grid engine.

**Nothing in this table is real data.** The cells, their populations, every indicator value,
the communes (``S01001``…) and departments (``S01``…) and the target are drawn at random
by :func:`generate_grid` from a fixed seed. Every row carries
``source = "synthetic (territoria.features.synthetic_grid, seed N): not real data"``, the codes
start with ``S`` so that they cannot be taken for INSEE codes, and the outputs of
``territoria grid`` repeat the label. Use it to measure and test the engine at scale, never
to describe a place.

What makes it realistic enough to benchmark with
-------------------------------------------------
* **Where the cells are.** About 2.3 million inhabited 200 m cells cover mainland France
  (INSEE's Filosofi grid); here ``n_cells`` (default 2.3 M) cells are drawn inside a rough
  outline of mainland France and Corsica in EPSG:3035 (a smaller grid covers a square window
  of it whose area is in proportion, :func:`study_area`), clustered like settlements: one
  settlement per synthetic commune (one per ~66 cells, i.e. ~35,000 for 2.3 M cells), sizes
  log-normal with a heavy tail (a few cities of tens of thousands of cells), a dense core
  plus scattered hamlets, denser regions and emptier ones (a smooth density field).
  A cell's parent commune is the nearest settlement (communes tile the territory); the
  communes are grouped into compact departments of similar size by recursive bisection (96
  at France scale; at least 8 in a small grid, so that it still has partitions and
  held-out departments).
* **Population.** Log-normal per cell, higher in large settlements and near their centres.
* **Indicators.** Fifteen indicators of the registry (``conf/indicators``: same names,
  units and directions as at commune level) across six domains: economic (poverty rate,
  median income, unemployment, share of social benefits), residential (vacancy, owner
  occupancy), environment (IREP exposure, facilities within 2 km), digital (FTTH coverage,
  mobile sites nearby), services (distance to the nearest GP, pharmacy, post office,
  station) and demographic (population, lone-parent share). They derive from latent fields
  that are spatially autocorrelated at three scales: regional (random Fourier features,
  ~120 km), local (~8 km) and neighbouring cells (white noise averaged twice over the queen
  lattice), plus commune and department effects and pockets of poverty in urban areas.
  Distances are measured to synthetic facilities placed in settlements (the larger ones more
  often), exposure to synthetic industrial sites. Income measures are missing for cells of
  fewer than 5 inhabitants, as statistical secrecy would leave them.
* **Target.** ``target_poverty_rate_change``: a synthetic three-year change of the poverty
  rate (points) that depends on the cell's levels, its neighbours (spill-over of poverty
  pockets), access to services and digital coverage, a regional trend no feature carries,
  and noise.

Examples
--------
>>> cells = generate_grid(5_000, seed=1)
>>> len(cells), cells["source"].iloc[0]
(5000, 'synthetic (territoria.features.synthetic_grid, seed 1): not real data')
>>> bool(cells["parent_commune"].str.startswith("S").all())
True
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely
from scipy.spatial import cKDTree

from territoria.errors import DataError
from territoria.features.grid import (
    RESOLUTION_M,
    cell_ids,
    lattice_graph,
    lattice_keys,
    neighbour_mean,
)
from territoria.registry import load_registry

TARGET = "target_poverty_rate_change"
#: nominal vintage of the synthetic values (for the feature metadata)
SYNTHETIC_PERIOD = 2021
#: registry indicators simulated, by domain
GRID_INDICATORS: dict[str, list[str]] = {
    "economic": ["poverty_rate", "median_income", "unemployment_rate", "share_social_benefits"],
    "residential": ["vacancy_rate", "owner_occupancy_rate"],
    "environment": ["irep_exposure", "irep_within_2km"],
    "digital": ["ftth_coverage_rate", "mobile_sites_nearby"],
    "services": ["dist_gp", "dist_pharmacy", "dist_post_office", "dist_station"],
    "demographic": ["population", "caf_lone_parent_share"],
}
CELLS_PER_COMMUNE = 66
N_DEPARTMENTS = 96
#: inhabited 200 m cells of mainland France (INSEE Filosofi grid): the density kept at any size
FRANCE_CELLS = 2_300_000

# rough outlines (lon, lat) of mainland France and Corsica: where settlements may be
_MAINLAND = [
    (2.55, 51.08), (3.15, 50.78), (4.23, 50.35), (4.85, 50.15), (4.87, 49.80), (5.47, 49.50),
    (6.36, 49.46), (7.63, 49.05), (8.23, 48.96), (7.58, 47.59), (6.85, 47.40), (6.08, 46.45),
    (6.13, 46.14), (6.80, 46.43), (7.04, 45.93), (7.12, 45.25), (6.63, 45.10), (7.00, 44.23),
    (7.53, 43.78), (6.63, 43.16), (5.35, 43.21), (4.65, 43.35), (3.90, 43.50), (3.10, 43.10),
    (3.17, 42.43), (1.73, 42.50), (0.70, 42.85), (-0.30, 42.84), (-1.78, 43.37), (-1.25, 44.60),
    (-1.15, 45.60), (-1.55, 46.20), (-2.15, 46.80), (-2.55, 47.30), (-3.40, 47.70), (-4.35, 47.80),
    (-4.75, 48.35), (-4.60, 48.65), (-3.60, 48.75), (-2.10, 48.65), (-1.60, 48.65), (-1.95, 49.70),
    (-1.25, 49.70), (-1.10, 49.35), (0.10, 49.45), (1.40, 50.05), (1.60, 50.90),
]
_CORSICA = [(9.40, 43.00), (9.56, 42.15), (9.25, 41.37), (8.80, 41.55), (8.60, 41.95), (8.65, 42.35),
            (9.10, 42.70), (9.35, 43.00)]


def source_label(seed: int) -> str:
    """The ``source`` value of every synthetic row."""
    return f"synthetic (territoria.features.synthetic_grid, seed {seed}): not real data"


def france_outline():
    """Rough outline of mainland France and Corsica in EPSG:3035 (a shapely MultiPolygon)."""
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:4326", "EPSG:3035", always_xy=True)
    polys = []
    for ring in (_MAINLAND, _CORSICA):
        x, y = tr.transform([p[0] for p in ring], [p[1] for p in ring])
        polys.append(shapely.Polygon(list(zip(x, y))))
    return shapely.MultiPolygon(polys)


def study_area(n_cells: int, rng: np.random.Generator):
    """Where the cells of a grid of ``n_cells`` go: all of France at 2.3 M cells; a smaller
    grid covers a proportionally smaller square window of France (centre drawn with ``rng``),
    so that settlement density and sizes stay those of the full grid."""
    outline = france_outline()
    share = min(1.0, n_cells / FRANCE_CELLS)
    if share > 0.98:
        return outline
    need = outline.area * share
    mainland = outline.geoms[0]
    minx, miny, maxx, maxy = mainland.bounds
    while True:
        cx, cy = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
        if mainland.contains(shapely.Point(cx, cy)):
            break
    half = np.sqrt(need) / 2
    while True:
        region = outline.intersection(shapely.box(cx - half, cy - half, cx + half, cy + half))
        if region.area >= need:
            return region
        half *= 1.05


def _fourier_fields(x_km: np.ndarray, y_km: np.ndarray, n_fields: int, length_km: float,
                    rng: np.random.Generator, n_features: int = 48, chunk: int = 250_000) -> np.ndarray:
    """``n_fields`` independent smooth Gaussian fields of unit variance and correlation length
    ``length_km`` (random Fourier features of a squared-exponential covariance)."""
    omega = rng.normal(0.0, 1.0 / length_km, size=(n_features, 2))
    phase = rng.uniform(0.0, 2 * np.pi, size=n_features)
    weights = rng.normal(0.0, np.sqrt(2.0 / n_features), size=(n_features, n_fields))
    out = np.empty((len(x_km), n_fields))
    for s in range(0, len(x_km), chunk):
        arg = np.outer(x_km[s:s + chunk], omega[:, 0]) + np.outer(y_km[s:s + chunk], omega[:, 1]) + phase
        out[s:s + chunk] = np.cos(arg) @ weights
    return out


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _standardise(z):
    return (z - z.mean(axis=0)) / z.std(axis=0)


def _bisect(x: np.ndarray, y: np.ndarray, idx: np.ndarray, n_groups: int, out: np.ndarray, start: int) -> None:
    """Split points ``idx`` into ``n_groups`` compact groups of similar size (recursive
    bisection along the longer side); writes group numbers from ``start`` into ``out``."""
    if n_groups == 1:
        out[idx] = start
        return
    left = n_groups // 2
    axis = x if np.ptp(x[idx]) >= np.ptp(y[idx]) else y
    order = idx[np.argsort(axis[idx], kind="stable")]
    cut = int(round(len(order) * left / n_groups))
    _bisect(x, y, order[:cut], left, out, start)
    _bisect(x, y, order[cut:], n_groups - left, out, start + left)


def generate_grid(n_cells: int = 2_300_000, seed: int = 42) -> pd.DataFrame:
    """Draw a synthetic France-scale grid table (see the module doc). NOT REAL DATA.

    Parameters
    ----------
    n_cells : int
        Inhabited cells to draw (at least 1,000; 2.3 million is France's 200 m grid).
    seed : int
        Seed of every random draw: the same seed gives the same table.

    Returns
    -------
    DataFrame
        One row per cell sorted by department, commune, northing and easting:
        ``cell_id, northing, easting, parent_commune, department``, the indicators of
        :data:`GRID_INDICATORS` (float64), :data:`TARGET` and ``source``.
    """
    if n_cells < 1000:
        raise DataError("synthetic grid", f"n_cells must be at least 1,000, got {n_cells:,}")
    registry = load_registry()
    for names in GRID_INDICATORS.values():
        for name in names:
            registry.indicator(name)  # KeyError would mean the registry changed
    rng = np.random.default_rng(seed)
    outline = study_area(n_cells, rng)
    minx, miny, maxx, maxy = outline.bounds
    res = RESOLUTION_M

    # settlements (one per synthetic commune), denser in some regions than in others
    n_communes = max(20, min(n_cells // CELLS_PER_COMMUNE, 90_000))
    cx, cy = np.empty(0), np.empty(0)
    while len(cx) < n_communes:
        px = rng.uniform(minx, maxx, 4 * n_communes)
        py = rng.uniform(miny, maxy, 4 * n_communes)
        inside = shapely.contains_xy(outline, px, py)
        dens = _fourier_fields(px / 1000, py / 1000, 1, 150.0, np.random.default_rng(seed + 1))[:, 0]
        keep = inside & (rng.uniform(size=len(px)) < np.exp(0.8 * dens) / np.exp(0.8 * 2.5))
        cx, cy = np.concatenate([cx, px[keep]]), np.concatenate([cy, py[keep]])
    cx, cy = cx[:n_communes], cy[:n_communes]
    size = rng.lognormal(0.0, 1.0, n_communes) * (1 + 40 * (rng.uniform(size=n_communes) < 0.003))
    size = size / size.sum()

    # cells: a dense core and scattered hamlets per settlement, snapped to the lattice
    keys = np.empty(0, dtype=np.int64)
    oversample = 1.4
    for _ in range(8):
        counts = rng.poisson(size * n_cells * oversample)
        who = np.repeat(np.arange(n_communes), counts)
        cells_per = counts[who].astype(float)
        hamlet = rng.uniform(size=len(who)) < 0.35 / (1 + cells_per / 400)
        sigma = np.where(hamlet, 0.6, 0.55 * np.sqrt(cells_per)) * res
        # hamlets: small blobs around points up to a few km from the centre
        n_h = 6
        h_angle = rng.uniform(0, 2 * np.pi, (n_communes, n_h))
        h_dist = rng.uniform(1.0, 2.5 + 0.4 * np.sqrt(counts[:, None]), (n_communes, n_h)) * res
        pick = rng.integers(0, n_h, len(who))
        ox = np.where(hamlet, h_dist[who, pick] * np.cos(h_angle[who, pick]), 0.0)
        oy = np.where(hamlet, h_dist[who, pick] * np.sin(h_angle[who, pick]), 0.0)
        x = cx[who] + ox + rng.normal(0, 1, len(who)) * sigma
        y = cy[who] + oy + rng.normal(0, 1, len(who)) * sigma
        e = np.floor(x / res).astype(np.int64) * res
        n = np.floor(y / res).astype(np.int64) * res
        inside = shapely.contains_xy(outline, e + res / 2, n + res / 2)
        keys = np.unique(np.concatenate([keys, lattice_keys(n[inside], e[inside], res)]))
        if len(keys) >= n_cells:
            break
        oversample *= 1.3
    if len(keys) < n_cells:
        raise DataError("synthetic grid", f"could only place {len(keys):,} distinct cells of {n_cells:,}")
    keys = np.sort(rng.choice(keys, n_cells, replace=False))
    northing = (keys // (1 << 32)) * res
    easting = (keys % (1 << 32)) * res
    x_c, y_c = easting + res / 2.0, northing + res / 2.0

    # communes: nearest settlement; departments: compact groups of communes of similar size
    tree = cKDTree(np.column_stack([cx, cy]))
    d_centre, commune = tree.query(np.column_stack([x_c, y_c]))
    used = np.unique(commune)
    n_dep = min(N_DEPARTMENTS, max(8, len(used) // 40), len(used))
    dep_of = np.full(n_communes, -1)
    _bisect(cx, cy, used, n_dep, dep_of, 0)
    com_cells = np.bincount(commune, minlength=n_communes).astype(float)
    seq = np.zeros(n_communes, dtype=int)
    for d in range(n_dep):
        members = used[dep_of[used] == d]
        members = members[np.lexsort((cx[members], cy[members]))]
        seq[members] = np.arange(1, len(members) + 1)
    dep_code = np.array([f"S{d + 1:02d}" for d in range(n_dep)], dtype=object)
    commune_code = np.array([f"S{dep_of[c] + 1:02d}{seq[c]:03d}" if dep_of[c] >= 0 else "" for c in range(n_communes)],
                            dtype=object)

    # urban intensity: size of the settlement and closeness to its centre
    urban = _standardise(np.log1p(com_cells[commune]) - 0.5 * np.log1p(d_centre / 1000.0))
    population = np.maximum(1.0, np.round(rng.lognormal(2.6 + 0.9 * urban, 0.9)))

    # latent fields: regional, local, neighbouring cells, commune and department effects
    xk, yk = x_c / 1000.0, y_c / 1000.0
    names = ["deprivation", *GRID_INDICATORS]
    k = len(names)
    regional = _fourier_fields(xk, yk, k + 1, 120.0, rng, n_features=48)
    local = _fourier_fields(xk, yk, k, 8.0, rng, n_features=48)
    graph = lattice_graph(lattice_keys(northing, easting, res))
    micro = rng.normal(size=(n_cells, k))
    for _ in range(2):
        m = neighbour_mean(micro, graph)
        micro = np.where(np.isnan(m), micro, 0.5 * micro + 0.5 * m)
    micro = _standardise(micro)
    com_eff = rng.normal(size=(n_communes, k))[commune]
    dep_eff = rng.normal(size=(n_dep, k))[np.maximum(dep_of[commune], 0)]
    pockets_n = max(5, n_cells // 1500)
    pocket_at = rng.choice(n_cells, pockets_n, replace=False, p=np.exp(urban) / np.exp(urban).sum())
    d_pocket, _ = cKDTree(np.column_stack([x_c[pocket_at], y_c[pocket_at]])).query(np.column_stack([x_c, y_c]))
    pocket = np.exp(-((d_pocket / 500.0) ** 2))
    latent = 0.45 * regional[:, :k] + 0.35 * local + 0.35 * micro + 0.3 * com_eff + 0.2 * dep_eff
    latent = _standardise(latent)
    dep_ = latent[:, 0] + 1.6 * pocket + 0.15 * urban
    z = {name: 0.6 * dep_ + 0.8 * latent[:, i + 1] for i, name in enumerate(GRID_INDICATORS)}
    noise = lambda s=1.0: rng.normal(0, s, n_cells)  # noqa: E731

    col: dict[str, np.ndarray] = {}
    zi = z["economic"]
    col["poverty_rate"] = 100 * _sigmoid(-2.0 + 0.75 * zi + 0.25 * noise())
    col["median_income"] = np.round(21_500 * np.exp(-0.2 * zi + 0.04 * urban + 0.05 * noise()), -1)
    col["unemployment_rate"] = 100 * _sigmoid(-2.4 + 0.55 * zi + 0.3 * noise())
    col["share_social_benefits"] = 100 * _sigmoid(-2.6 + 0.7 * zi + 0.25 * noise())
    secret = population < 5
    col["poverty_rate"][secret] = np.nan
    col["median_income"][secret] = np.nan
    zr = z["residential"]
    col["vacancy_rate"] = 100 * _sigmoid(-2.5 + 0.45 * zr - 0.25 * urban + 0.3 * noise())
    col["owner_occupancy_rate"] = 100 * _sigmoid(1.0 - 0.5 * zr - 0.7 * urban + 0.3 * noise())

    # environment: synthetic industrial sites, more of them in urban and "industrial" areas
    n_sites = max(10, n_cells // 250)
    w_site = np.exp(0.8 * urban + 0.8 * z["environment"])
    sites = rng.choice(n_cells, n_sites, replace=False, p=w_site / w_site.sum())
    site_xy = np.column_stack([x_c[sites] + rng.uniform(-res, res, n_sites), y_c[sites] + rng.uniform(-res, res, n_sites)])
    d_site, _ = cKDTree(site_xy).query(np.column_stack([x_c, y_c]), k=min(8, n_sites), distance_upper_bound=10_000)
    d_site = np.atleast_2d(d_site.T).T
    col["irep_exposure"] = np.where(np.isfinite(d_site), np.exp(-d_site / 2000.0), 0.0).sum(axis=1)
    col["irep_within_2km"] = (d_site <= 2000).sum(axis=1).astype(float)

    zd = z["digital"] - 0.9 * dep_eff[:, 4]
    col["ftth_coverage_rate"] = 100 * _sigmoid(1.2 + 1.1 * urban - 0.8 * zd + 0.3 * noise())
    col["mobile_sites_nearby"] = rng.poisson(np.exp(1.6 + 0.6 * urban - 0.3 * zd)).astype(float)

    # services: facilities in settlements (the larger the more likely), nearest distance
    zs_com = pd.Series(z["services"]).groupby(commune).mean().reindex(range(n_communes)).fillna(0).to_numpy()
    log_size = np.log1p(com_cells)
    for name, a in (("dist_gp", -1.0), ("dist_pharmacy", -1.3), ("dist_post_office", -0.8), ("dist_station", -4.5)):
        host = rng.uniform(size=n_communes) < _sigmoid(a + 0.9 * (log_size - log_size.mean()) - 0.5 * zs_com)
        host &= com_cells > 0
        if not host.any():
            host[np.argmax(com_cells)] = True
        d, _ = cKDTree(np.column_stack([cx[host], cy[host]])).query(np.column_stack([x_c, y_c]))
        col[name] = np.round(d / 1000.0, 3)

    col["population"] = population
    col["caf_lone_parent_share"] = 100 * _sigmoid(-1.8 + 0.5 * z["demographic"] + 0.3 * urban + 0.3 * noise())

    # target: synthetic 3-year change of the poverty rate (points)
    pov = np.nan_to_num(col["poverty_rate"], nan=np.nanmedian(col["poverty_rate"]))
    pov_nbr = neighbour_mean(pov, graph)[:, 0]
    pov_nbr = np.where(np.isnan(pov_nbr), pov, pov_nbr)
    trend = _standardise(regional[:, k])
    target = (
        0.05 * (pov - 14.0) * (col["dist_gp"] > 4)
        + 0.06 * (pov_nbr - pov)
        + 0.9 * _sigmoid((col["dist_station"] - 15.0) / 5.0)
        + 0.05 * (col["vacancy_rate"] - 8.0)
        - 0.012 * col["ftth_coverage_rate"]
        + 0.2 * np.log1p(col["irep_exposure"])
        + 0.35 * trend
        + rng.normal(0, 0.45, n_cells)
    )

    out = pd.DataFrame({
        "cell_id": cell_ids(northing, easting, res),
        "northing": northing, "easting": easting,
        "parent_commune": commune_code[commune], "department": dep_code[np.maximum(dep_of[commune], 0)],
    })
    for names_ in GRID_INDICATORS.values():
        for name in names_:
            out[name] = col[name].astype(float)
    out[TARGET] = target
    out["source"] = source_label(seed)
    out = out.sort_values(["department", "parent_commune", "northing", "easting"], kind="stable")
    return out.reset_index(drop=True)
