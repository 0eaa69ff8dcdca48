"""Timing of the local statistics and priority perimeters on the real ~35,000 communes.

Run with ``.venv/bin/python benchmarks/clusters.py [--permutations 999] [--esda]``.
Prints the wall time of :func:`territoria.models.clusters.local_statistics` (Gi* and
Local Moran with permutation inference and FDR) on all communes, with 1 and 2 threads, then
of :func:`priority_perimeters` and :func:`cluster_summary` on the hot spots. The score is a
synthetic, spatially autocorrelated field (noise smoothed three times over the commune
graph) with 3 % of missing values, so the benchmark does not need the feature build.
``--esda`` also times esda's own permutation loop (``esda.G_Local`` with 99 permutations;
numba is not installed, so esda falls back to pure Python).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from spatial_weights import Timer, load  # noqa: E402

from territoria.features.spatial import build_commune_graph, neighbour_mean  # noqa: E402
from territoria.models.clusters import (  # noqa: E402
    cluster_summary,
    local_statistics,
    priority_perimeters,
)
from territoria.paths import bundled_data_dir  # noqa: E402


def main(path: Path, permutations: int, with_esda: bool) -> None:
    print(f"numba installed: {importlib.util.find_spec('numba') is not None}")
    with Timer("read geometries + build_commune_graph"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gdf = load(path)
        graph = build_commune_graph(gdf)
    ids = graph.unique_ids
    print(f"  {graph.n} communes, {graph.n_edges} directed links")
    rng = np.random.default_rng(0)
    score = pd.Series(rng.normal(size=len(ids)), index=ids)
    for _ in range(3):  # spatial autocorrelation, as in a real deprivation score
        score = 0.5 * score + neighbour_mean(graph, score)
    score = score.mask(rng.random(len(ids)) < 0.03)

    for n_jobs in (1, 2):
        t0 = time.perf_counter()
        stats = local_statistics(score, graph, permutations=permutations, seed=42, n_jobs=n_jobs)
        elapsed = time.perf_counter() - t0
        print(
            f"{'local_statistics: Gi* + Moran, R=' + str(permutations) + f', n_jobs={n_jobs}':<55s}"
            f" {elapsed:7.2f} s"
        )
    tested = int((stats["n_neighbours"] > 0).sum())
    print(
        f"  {tested} zones tested; hot spots {int(stats['hotspot'].sum())}, cold spots "
        f"{int(stats['coldspot'].sum())}; Moran clusters "
        f"{stats['moran_cluster'].value_counts().to_dict()}"
    )

    identity = pd.DataFrame(
        {
            "zone_code": gdf["zone_code"],
            "departement": gdf["zone_code"].str.slice(0, 2),  # coarse, enough to time
            "epci": gdf.get("epci", gdf["zone_code"].str.slice(0, 3)),
        }
    )
    with Timer("priority_perimeters + cluster_summary (hot spots)"):
        per = priority_perimeters(stats["hotspot"], graph, identity)
        summary = cluster_summary(
            per, population=pd.Series(gdf["population_municipale"].to_numpy(), index=ids)
        )
    print(
        f"  {len(summary)} perimeters of >= 2 communes; largest {summary['n_zones'].max()} "
        f"communes; {int(summary['crosses_department'].sum())} cross a department border"
    )

    if with_esda:
        import esda
        from libpysal.graph import Graph

        from territoria.models.clusters import _binary_adjacency

        adj, _ = _binary_adjacency(graph)
        linked = np.diff(adj.indptr) > 0
        sub = Graph.from_sparse(adj[linked][:, linked])
        y = np.asarray(score.fillna(score.mean()))[linked]
        y = y - y.min()
        with Timer("esda.G_Local(star=True), R=99, n_jobs=1 (esda loop)"):
            esda.G_Local(y, sub, transform="B", star=True, permutations=99, seed=42,
                         n_jobs=1, keep_simulations=False, alternative="two-sided")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("geometries", nargs="?",
                        default=bundled_data_dir() / "geometries" / "communes_simplified.parquet")
    parser.add_argument("--permutations", type=int, default=999)
    parser.add_argument("--esda", action="store_true", help="also time esda's own loop")
    args = parser.parse_args()
    main(Path(args.geometries), args.permutations, args.esda)
