"""Timing of the spatial weights and access features on the real ~35,000 communes.

Run with ``.venv/bin/python benchmarks/spatial_weights.py [path/to/communes_simplified.parquet]``.
Prints the wall time of: reading the geometries, building the commune graph, the
neighbour mean / gap / max contrast of 20 columns, and nearest distance / counts for all
town halls.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from territoria.features.access import (
    count_within,
    distance_to_nearest,
    distance_weighted_count,
    territory_of,
)
from territoria.features.spatial import (
    build_commune_graph,
    gap_to_group,
    max_contrast,
    neighbour_mean,
)
from territoria.paths import bundled_data_dir


class Timer:
    def __init__(self, label: str) -> None:
        self.label = label

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        print(f"{self.label:<55s} {time.perf_counter() - self.t0:7.2f} s")


def load(path: Path) -> gpd.GeoDataFrame:
    gdf = gpd.read_parquet(path)
    gdf = gdf[gdf["type"] == "COM"].rename(
        columns={"code": "zone_code", "mairie_lon": "townhall_lon", "mairie_lat": "townhall_lat"}
    )
    return gdf.reset_index(drop=True)


def main(path: Path) -> None:
    with Timer("read geometries (type COM)"):
        gdf = load(path)
    print(f"  {len(gdf)} communes")
    for tol in (0.0, 10.0):
        with Timer(f"build_commune_graph(k=4, tolerance_m={tol:g})"), warnings.catch_warnings(
            record=True
        ) as caught:
            warnings.simplefilter("always")
            graph = build_commune_graph(gdf, tolerance_m=tol)
        print(
            f"  {graph.n} nodes, {graph.n_edges} directed links, "
            f"{len(graph.isolates)} isolates; warnings: {[str(w.message)[:90] for w in caught]}"
        )
    rng = np.random.default_rng(0)
    ids = graph.unique_ids
    columns = [f"v{i}" for i in range(20)]
    values = pd.DataFrame(rng.normal(size=(len(ids), 20)), index=ids, columns=columns)
    values = values.mask(rng.random(values.shape) < 0.05)
    with Timer("neighbour_mean, 20 columns"):
        neighbour_mean(graph, values)
    with Timer("max_contrast, 20 columns"):
        max_contrast(graph, values)
    with Timer("gap_to_group (department, population-weighted), 20 cols"):
        population = pd.Series(gdf["population_municipale"].to_numpy(), index=ids)
        gap_to_group(values, pd.Series(ids.str[:2], index=ids), population)

    origins = pd.DataFrame(
        {"zone_code": gdf["zone_code"], "lon": gdf["townhall_lon"], "lat": gdf["townhall_lat"]}
    )
    origins["territory"] = territory_of(origins["zone_code"]).to_numpy()
    targets = origins.sample(frac=0.2, random_state=0)  # e.g. communes with a post office
    with Timer(f"distance_to_nearest: {len(origins)} origins, {len(targets)} targets"):
        distance_to_nearest(origins, targets, group="territory")
    sites = pd.DataFrame(
        {
            "lon": rng.uniform(-4.5, 7.5, 8000),
            "lat": rng.uniform(43.0, 50.5, 8000),
            "territory": "metro",
        }
    )
    with Timer(f"count_within 10 km: {len(sites)} sites"):
        count_within(origins, sites, 10.0, group="territory")
    with Timer(f"distance_weighted_count 2/5/10 km: {len(sites)} sites"):
        distance_weighted_count(origins, sites, group="territory")


if __name__ == "__main__":
    default = bundled_data_dir() / "geometries" / "communes_simplified.parquet"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
