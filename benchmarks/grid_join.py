"""Cost of the spatial join of 200 m cells on commune polygons, geopandas vs dask-geopandas.

Run by hand: ``.venv/bin/python benchmarks/grid_join.py [--sizes 500000 2300000]
[--partitions 2]``. The cells are those of the SYNTHETIC grid
(:mod:`territoria.features.synthetic_grid`: invented values, cells placed over mainland France
in EPSG:3035), joined on the REAL commune polygons of the bundle
(:func:`territoria.features.grid_join.assign_communes`). Printed per size and engine: wall
time (the polygons' loading apart), cells per second, cells left out, and the dask/local
ratio; then whether the two engines assigned every cell to the same commune.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500_000, 2_300_000])
    parser.add_argument("--partitions", type=int, default=2)
    args = parser.parse_args()

    from territoria.features.grid_join import assign_communes, commune_polygons
    from territoria.features.synthetic_grid import generate_grid

    t0 = time.perf_counter()
    polygons = commune_polygons()
    print(f"commune polygons (mainland and Corsica): {len(polygons):,}, loaded in {time.perf_counter() - t0:.1f} s;"
          f" load average {os.getloadavg()[0]:.1f}")
    print(f"{'cells':>10} {'engine':>14} {'seconds':>8} {'cells/s':>10} {'left out':>9} {'vs local':>9}")
    for n in args.sizes:
        cells = generate_grid(n, seed=42)[["cell_id", "northing", "easting"]]
        results = {}
        for engine in ("local", "dask"):
            t = time.perf_counter()
            out, left = assign_communes(cells, polygons, engine=engine, npartitions=args.partitions)
            dt = time.perf_counter() - t
            results[engine] = (out, dt)
            ratio = f"{dt / results['local'][1]:.2f}" if engine == "dask" else "1.00"
            label = "geopandas" if engine == "local" else f"dask-gpd ×{args.partitions}"
            print(f"{n:>10,} {label:>14} {dt:>8.1f} {n / dt:>10,.0f} {left:>9,} {ratio:>9}")
        a = results["local"][0].set_index("cell_id")["parent_commune"]
        b = results["dask"][0].set_index("cell_id")["parent_commune"].reindex(a.index)
        print(f"{'':>10} same commune for every cell: {bool((a == b).all())} "
              f"({int((a != b).sum())} differ); communes reached: {a.nunique():,}")


if __name__ == "__main__":
    main()
