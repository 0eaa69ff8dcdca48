"""Parent communes of 200 m cells by a spatial join on the bundled commune polygons (real
polygons; the cells are a regular lattice around Denain, their indicator values synthetic)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyproj
import pytest

from territoria.errors import DataError
from territoria.features.grid import cell_ids
from territoria.features.grid_join import assign_communes, commune_polygons
from territoria.pipelines.grid import run_grid


@pytest.fixture(scope="module")
def polygons():
    g = commune_polygons()
    return g[g["zone_code"].str[:2].isin(["59", "62"])].reset_index(drop=True)


@pytest.fixture(scope="module")
def denain_corner():
    from territoria.features.sources.geometries import CommuneGeometries

    g = CommuneGeometries(None).load().set_index("zone_code")
    x, y = pyproj.Transformer.from_crs(4326, 3035, always_xy=True).transform(
        g.at["59172", "townhall_lon"], g.at["59172", "townhall_lat"])
    return int(x // 200 * 200), int(y // 200 * 200)


@pytest.fixture(scope="module")
def lattice(denain_corner):
    """Cells 15 km around Denain town hall (about 22,000), and three far out at sea."""
    e0, n0 = denain_corner
    e, n = np.meshgrid(np.arange(e0 - 15_000, e0 + 15_000, 200), np.arange(n0 - 9_000, n0 + 9_000, 200))
    e, n = e.ravel(), n.ravel()
    e = np.concatenate([e, [3_000_000, 3_000_200, 3_000_400]])
    n = np.concatenate([n, [3_500_000] * 3])
    ids = cell_ids(n, e)
    return pd.DataFrame({"cell_id": ids, "northing": n, "easting": e})


def test_cell_centre_goes_to_the_commune_containing_it(lattice, polygons, denain_corner):
    out, left_out = assign_communes(lattice, polygons)
    assert left_out == 3  # the cells at sea
    e0, n0 = denain_corner
    here = out[(out["easting"] == e0) & (out["northing"] == n0)]
    assert here["parent_commune"].tolist() == ["59172"] and here["department"].tolist() == ["59"]
    assert out["department"].isin(["59", "62"]).all()
    assert out["parent_commune"].nunique() > 50
    # a commune's cells cover about its area: Denain (11.5 km2) has about 290 cells of 4 ha
    assert 200 < (out["parent_commune"] == "59172").sum() < 380


def test_dask_geopandas_gives_the_same_assignment(lattice, polygons):
    local, n_local = assign_communes(lattice, polygons)
    dask, n_dask = assign_communes(lattice, polygons, engine="dask", npartitions=4)
    assert n_local == n_dask
    pd.testing.assert_frame_equal(local.sort_values("cell_id").reset_index(drop=True),
                                  dask.sort_values("cell_id").reset_index(drop=True))


def test_join_errors(lattice, polygons):
    with pytest.raises(DataError, match="unknown engine"):
        assign_communes(lattice, polygons, engine="spark")
    far = lattice.tail(3)
    with pytest.raises(DataError, match="no cell centre lies in a commune"):
        assign_communes(far, polygons)


def test_grid_run_joins_cells_without_communes(lattice, polygons, tmp_path):
    rng = np.random.default_rng(0)
    cells = lattice.copy()
    x = (cells["easting"] - cells["easting"].mean()) / 10_000
    cells["poverty_rate"] = 15 + 5 * np.sin(x) + rng.normal(0, 1, len(cells))
    cells["vacancy_rate"] = 8 + 2 * np.cos(x) + rng.normal(0, 1, len(cells))
    cells["target_poverty_rate_change"] = 0.1 * cells["poverty_rate"] + rng.normal(0, 0.5, len(cells))
    cells["source"] = "synthetic values on the real grid of the Denain area (not real data)"
    cells.to_parquet(tmp_path / "cells.parquet", index=False)
    conf = tmp_path / "grid.yml"
    conf.write_text(
        "seed: 3\ncontiguity: queen\ntarget: target_poverty_rate_change\nholdout_fraction: 0.5\n"
        "rows_per_partition: 8000\ntop_features: 2\ndeteriorating_quantile: 0\n"
        "model: {n_estimators: 20, learning_rate: 0.2, num_leaves: 7, max_depth: 3, "
        "min_child_samples: 40, colsample_bytree: 1.0, reg_lambda: 1.0, max_bin: 63}\n", encoding="utf-8")
    res = run_grid(tmp_path / "out", input_path=tmp_path / "cells.parquet", conf=conf, threads=1)
    out = pd.read_parquet(res.paths["cells"])
    assert len(out) == len(cells) - 3
    assert out["department"].isin(["59", "62"]).all() and (out["parent_commune"] == "59172").any()
    run = json.loads((tmp_path / "out" / "grid_run.json").read_text(encoding="utf-8"))
    assert run["spatial_join"] == {"engine": "geopandas", "cells_left_out": 3}
    assert "spatial_join" in run["timings_s"]
