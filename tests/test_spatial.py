"""Spatial weights and neighbourhood features: synthetic grids and a slice of the real communes."""

from __future__ import annotations

import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from libpysal.graph import Graph
from shapely.geometry import box

from territoria.errors import DataError
from territoria.features.spatial import (
    build_commune_graph,
    gap_to_group,
    gap_to_neighbours,
    max_contrast,
    neighbour_mean,
    rank_in_group,
)

CELL = 1000.0  # metres (Lambert-93)


def grid(n=5, size=CELL, crs="EPSG:2154", x0=700_000.0, y0=7_000_000.0) -> gpd.GeoDataFrame:
    """``n`` x ``n`` square cells coded ``g{column}{row}``."""
    codes, geoms = [], []
    for i in range(n):
        for j in range(n):
            codes.append(f"g{i}{j}")
            x, y = x0 + i * size, y0 + j * size
            geoms.append(box(x, y, x + size, y + size))
    return gpd.GeoDataFrame({"zone_code": codes}, geometry=geoms, crs=crs)


def neighbours(graph: Graph, code: str) -> set[str]:
    adj = graph[code]
    return set(adj.index[adj.to_numpy() > 0])


def with_row(gdf: gpd.GeoDataFrame, **row) -> gpd.GeoDataFrame:
    extra = gpd.GeoDataFrame([row], geometry="geometry", crs=gdf.crs)
    both = pd.concat([gdf, extra], ignore_index=True)
    return gpd.GeoDataFrame(both, geometry="geometry", crs=gdf.crs)


# --- graph construction -----------------------------------------------------------------


@pytest.mark.parametrize("tolerance", [0.0, 10.0])
def test_queen_grid_cardinalities(tolerance):
    g = build_commune_graph(grid(), tolerance_m=tolerance)
    card = g.cardinalities
    assert list(g.unique_ids) == list(grid()["zone_code"])
    assert card["g00"] == 3 and card["g44"] == 3  # corners
    assert card["g02"] == 5  # edge
    assert card["g22"] == 8  # centre
    assert neighbours(g, "g00") == {"g01", "g10", "g11"}
    assert len(g.isolates) == 0


def test_matches_libpysal_queen_contiguity():
    cells = grid()
    ours = build_commune_graph(cells, tolerance_m=0).adjacency
    ref = Graph.build_contiguity(cells.set_index("zone_code"), rook=False).adjacency
    assert set(ours.index) == set(ref.index)


def test_wgs84_input_is_projected_before_tolerance():
    # 0.01 degree cells near Lille (~700 m x 1.1 km); a 10 m tolerance must not link
    # cells two columns apart, and the queen structure is preserved.
    cells = grid(4, size=0.01, crs="EPSG:4326", x0=3.0, y0=50.6)
    g = build_commune_graph(cells)
    assert g.cardinalities["g11"] == 8
    assert g.cardinalities["g00"] == 3


def test_tolerance_closes_small_gaps():
    # A and D touch; B and E touch; a 5 m gap separates the two columns.
    cells = gpd.GeoDataFrame(
        {"zone_code": ["A", "D", "B", "E"]},
        geometry=[
            box(0, 0, 1000, 1000),
            box(0, 1000, 1000, 2000),
            box(1005, 0, 2005, 1000),
            box(1005, 1000, 2005, 2000),
        ],
        crs="EPSG:2154",
    )
    strict = build_commune_graph(cells, tolerance_m=0)
    fuzzy = build_commune_graph(cells, tolerance_m=10)
    assert neighbours(strict, "A") == {"D"}
    assert neighbours(fuzzy, "A") == {"D", "B", "E"}
    assert neighbours(build_commune_graph(cells, tolerance_m=4), "A") == {"D"}


def test_island_gets_knn_neighbours_symmetric():
    cells = grid()
    # an island 20 km east of the grid, level with row 2
    island = box(700_000 + 25_000, 7_002_000, 700_000 + 25_500, 7_002_500)
    cells = with_row(cells, zone_code="isle", geometry=island)
    g = build_commune_graph(cells, k=3)
    near = neighbours(g, "isle")
    assert near == {"g42", "g43", "g41"}  # the east column, closest rows
    for code in near:  # links are symmetric
        assert "isle" in neighbours(g, code)
    assert g.cardinalities["g22"] == 8  # contiguity elsewhere untouched


def test_missing_geometry_uses_townhall_else_isolated():
    cells = grid()
    cells["townhall_lon"] = np.nan
    cells["townhall_lat"] = np.nan
    townhall = gpd.GeoSeries([shapely.Point(700_500, 7_000_500)], crs="EPSG:2154").to_crs(4326)
    lon, lat = townhall.iloc[0].x, townhall.iloc[0].y
    cells = with_row(cells, zone_code="nogeom", geometry=None, townhall_lon=lon, townhall_lat=lat)
    cells = with_row(
        cells, zone_code="lost", geometry=None, townhall_lon=np.nan, townhall_lat=np.nan
    )
    with pytest.warns(UserWarning, match="1 zone.*isolated: lost"):
        g = build_commune_graph(cells, k=2)
    near = neighbours(g, "nogeom")  # its town hall stands in g00
    assert "g00" in near and len(near) == 2
    assert list(g.isolates) == ["lost"]
    lag = neighbour_mean(g, pd.Series(1.0, index=g.unique_ids, name="x"))
    assert np.isnan(lag["lost"]) and lag["nogeom"] == 1.0


def test_invalid_polygon_is_repaired():
    cells = grid(3)
    bowtie = shapely.Polygon(
        [(700_000, 7_003_000), (701_000, 7_004_000), (701_000, 7_003_000), (700_000, 7_004_000)]
    )
    assert not bowtie.is_valid
    cells = with_row(cells, zone_code="bow", geometry=bowtie)
    g = build_commune_graph(cells, tolerance_m=0)
    assert "g02" in neighbours(g, "bow")


def test_row_standardised_transform():
    g = build_commune_graph(grid(), transform="r")
    sums = g.adjacency.groupby(level=0).sum()
    assert np.allclose(sums, 1.0)
    assert g.transformation == "R"


def test_territories_never_linked():
    cells = grid()
    far = grid(2, x0=900_000, y0=7_100_000)
    far["zone_code"] = ["97401", "97402", "97403", "97404"]
    both = gpd.GeoDataFrame(pd.concat([cells, far], ignore_index=True), crs=cells.crs)
    g = build_commune_graph(both, k=10)
    for code in far["zone_code"]:
        assert all(n.startswith("974") for n in neighbours(g, code))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda g: g.rename(columns={"zone_code": "code"}), "zone_code"),
        (lambda g: g.set_crs(None, allow_override=True), "CRS"),
        (lambda g: g.assign(zone_code="same"), "duplicated"),
    ],
)
def test_build_rejects_bad_input(mutate, match):
    with pytest.raises(DataError, match=match):
        build_commune_graph(mutate(grid(2)))


# --- neighbourhood features -------------------------------------------------------------


@pytest.fixture(scope="module")
def g5() -> Graph:
    return build_commune_graph(grid())


def test_neighbour_mean_known_values(g5):
    ids = g5.unique_ids
    i = np.array([int(c[1]) for c in ids], dtype=float)
    values = pd.DataFrame({"i": i, "one": 1.0}, index=ids)
    lag = neighbour_mean(g5, values)
    assert lag.loc["g22", "i"] == pytest.approx(2.0)  # symmetric around the centre
    assert lag.loc["g00", "i"] == pytest.approx(2 / 3)  # g01 (0), g10 (1), g11 (1)
    assert (lag["one"] == 1.0).all()
    pd.testing.assert_index_equal(lag.index, values.index)
    # the transform does not change the mean
    pd.testing.assert_frame_equal(lag, neighbour_mean(g5.transform("r"), values))


def test_neighbour_mean_ignores_nan_neighbours(g5):
    values = pd.Series(np.nan, index=g5.unique_ids, name="x")
    values["g01"], values["g10"] = 2.0, 4.0
    lag = neighbour_mean(g5, values)
    assert isinstance(lag, pd.Series) and lag.name == "x"
    assert lag["g00"] == pytest.approx(3.0)  # g11 missing: mean over the two with data
    assert np.isnan(lag["g44"])  # no neighbour with data
    assert lag["g11"] == pytest.approx(3.0)  # own value missing does not matter


def test_neighbour_mean_alignment(g5):
    values = pd.DataFrame({"x": [5.0, 7.0]}, index=["g01", "unknown"])
    lag = neighbour_mean(g5, values)
    assert list(lag.index) == ["g01", "unknown"]
    assert np.isnan(lag.loc["g01", "x"])  # its neighbours have no data
    assert np.isnan(lag.loc["unknown", "x"])
    with pytest.raises(DataError, match="no zone code"):
        neighbour_mean(g5, pd.DataFrame({"x": [1.0]}, index=[1]))
    with pytest.raises(DataError, match="not numeric"):
        neighbour_mean(g5, pd.DataFrame({"x": ["a"]}, index=["g00"]))


def test_gap_to_neighbours_and_max_contrast(g5):
    values = pd.Series(0.0, index=g5.unique_ids, name="fibre")
    values["g22"] = 1.0
    values["g00"] = np.nan
    gap = gap_to_neighbours(g5, values)
    assert gap["g22"] == pytest.approx(1.0)
    assert gap["g21"] == pytest.approx(-1 / 8)  # 8 neighbours, one of them at 1
    mc = max_contrast(g5, values)
    assert mc["g22"] == 1.0 and mc["g11"] == 1.0  # next to the break
    assert mc["g44"] == 0.0  # far from it
    assert np.isnan(mc["g00"])  # own value missing
    assert mc["g01"] == 0.0  # g00 missing is ignored
    frame = max_contrast(g5, pd.DataFrame({"a": values, "b": -values}))
    assert (frame["a"].dropna() == frame["b"].dropna()).all()


def test_gap_to_group_plain_and_weighted():
    idx = ["a", "b", "c", "d", "e"]
    values = pd.DataFrame({"x": [1.0, 3.0, np.nan, 10.0, 4.0]}, index=idx)
    groups = pd.Series(["E1", "E1", "E1", "E2", None], index=idx)
    gap = gap_to_group(values, groups)
    assert gap.loc["a", "x"] == pytest.approx(-1.0)  # mean of E1 over members with data = 2
    assert gap.loc["b", "x"] == pytest.approx(1.0)
    assert np.isnan(gap.loc["c", "x"])  # no value
    assert gap.loc["d", "x"] == 0.0  # alone in its group (itself included)
    assert np.isnan(gap.loc["e", "x"])  # no group
    pop = pd.Series([300.0, 100.0, 1e6, 5.0, 1.0], index=idx)
    wgap = gap_to_group(values["x"], groups, weights=pop)
    assert wgap["a"] == pytest.approx(1.0 - 1.5)  # (1*300 + 3*100) / 400 = 1.5
    assert wgap.name == "x"
    with pytest.raises(DataError, match="negative weight"):
        gap_to_group(values, groups, weights=-pop)
    with pytest.raises(DataError, match="no zone"):
        gap_to_group(values, pd.Series(["E1"], index=["zz"]))


def test_rank_in_group():
    idx = list("abcde")
    values = pd.Series([1.0, 3.0, 2.0, 5.0, np.nan], index=idx)
    groups = pd.Series(["E", "E", "E", "F", "F"], index=idx)
    rank = rank_in_group(values, groups)
    assert rank.tolist()[:4] == pytest.approx([1 / 3, 1.0, 2 / 3, 1.0])
    assert np.isnan(rank["e"])


# --- real communes: Nord, Pas-de-Calais, Guadeloupe, La Réunion -------------------------


@pytest.fixture(scope="module")
def real(data_dir) -> gpd.GeoDataFrame:
    path = data_dir / "geometries" / "communes_simplified.parquet"
    gdf = gpd.read_parquet(path)
    gdf = gdf[gdf["type"] == "COM"].rename(
        columns={"code": "zone_code", "mairie_lon": "townhall_lon", "mairie_lat": "townhall_lat"}
    )
    code = gdf["zone_code"]
    keep = code.str[:2].isin(["59", "62"]) | code.str[:3].isin(["971", "974"])
    gdf = gdf[keep].reset_index(drop=True)
    gdf["geometry"] = shapely.make_valid(gdf.geometry.values)
    return gdf


@pytest.fixture(scope="module")
def real_graph(real) -> Graph:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every zone of this slice has a neighbour
        return build_commune_graph(real)


def test_real_denain_neighbours(real_graph):
    near = neighbours(real_graph, "59172")  # Denain
    assert {"59179", "59205", "59361", "59651"} <= near  # Douchy, Escaudain, Lourches, Wavrechain
    assert len(near) == 8
    assert "59350" not in near  # Lille is not a neighbour


def test_real_matches_libpysal_on_nord(real):
    nord = real[real["zone_code"].str.startswith("59")]
    ours = build_commune_graph(nord, tolerance_m=0)
    ref = Graph.build_contiguity(nord.set_index("zone_code"), rook=False, strict=False)
    ours_pairs = set(ours.adjacency[ours.adjacency > 0].index)
    ref_pairs = set(ref.adjacency[ref.adjacency > 0].index)
    assert ref_pairs <= ours_pairs  # shared vertices are all found
    assert len(ours_pairs - ref_pairs) <= 0.005 * len(ref_pairs)  # plus crossing borders


def test_real_departments_linked_and_overseas_separate(real_graph):
    adj = real_graph.adjacency[real_graph.adjacency > 0]
    focal = adj.index.get_level_values(0).str[:3]
    neigh = adj.index.get_level_values(1).str[:3]
    cross_5962 = (focal.str[:2] == "59") & (neigh.str[:2] == "62")
    assert cross_5962.sum() > 20  # the Nord / Pas-de-Calais border
    for dom in ("971", "974"):
        assert not ((focal == dom) & (neigh != dom)).any()
    # single-commune islands of Guadeloupe get k-NN neighbours in Guadeloupe
    for island in ("97110", "97130", "97131"):  # La Désirade, Terre-de-Bas, Terre-de-Haut
        near = neighbours(real_graph, island)
        assert len(near) >= 4 and all(c.startswith("971") for c in near)
    assert "97131" in neighbours(real_graph, "97130")
    assert len(real_graph.isolates) == 0
