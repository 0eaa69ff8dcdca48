"""Local spatial statistics (Gi*, Local Moran, FDR) and contiguous priority perimeters."""

from __future__ import annotations

import warnings

import esda
import numpy as np
import pandas as pd
import pytest
from libpysal.graph import Graph

from territoria.errors import DataError
from territoria.models.clusters import (
    _binary_adjacency,
    benjamini_hochberg,
    cluster_summary,
    local_statistics,
    priority_perimeters,
)


def lattice(nrows: int, ncols: int) -> Graph:
    """Rook lattice with zone-like string ids ``r{row:02d}c{col:02d}``.

    Built from libpysal's lattice, relabelled; the ids are *not* given in sorted order, to
    catch any confusion between ``Graph.sparse`` (sorted labels) and ``unique_ids``.
    """
    g = Graph.from_lattice(nrows, ncols)
    names = np.array([f"r{i // ncols:02d}c{i % ncols:02d}" for i in range(nrows * ncols)])
    adj = g.adjacency
    focal = names[adj.index.get_level_values(0).to_numpy()]
    neighbour = names[adj.index.get_level_values(1).to_numpy()]
    order = np.argsort(-np.arange(nrows * ncols))  # reversed ids: unsorted
    rank = pd.Series(np.empty(len(names), dtype=np.int64), index=names)
    rank[names[order]] = np.arange(len(names))
    sort = np.lexsort((rank[neighbour].to_numpy(), rank[focal].to_numpy()))
    return Graph.from_arrays(focal[sort], neighbour[sort], adj.to_numpy()[sort])


def block(rows: range, cols: range) -> list[str]:
    return [f"r{r:02d}c{c:02d}" for r in rows for c in cols]


def noise(graph: Graph, seed: int) -> pd.Series:
    return pd.Series(np.random.default_rng(seed).normal(size=graph.n), index=graph.unique_ids)


# --------------------------------------------------------------------------- statistics


def test_lattice_ids_are_unsorted_and_adjacency_follows_unique_ids():
    g = lattice(3, 4)
    assert list(g.unique_ids) != sorted(g.unique_ids)
    adj, ids = _binary_adjacency(g)
    dense = pd.DataFrame(adj.toarray(), index=ids, columns=ids)
    assert dense.loc["r01c01", ["r00c01", "r02c01", "r01c00", "r01c02"]].tolist() == [1.0] * 4
    assert dense.loc["r01c01"].sum() == 4
    assert dense.loc["r00c00"].sum() == 2


def test_planted_hot_block_is_hotspot_and_hh():
    g = lattice(15, 15)
    x = noise(g, 0)
    hot = block(range(5, 10), range(5, 10))
    x[hot] += 4.0
    # 9,999 permutations: the p-value floor 2 / (R + 1) must be small enough for BH over
    # 225 zones to reject (at R = 999 it needs ~9 zones at the floor)
    stats = local_statistics(x, g, permutations=9999, seed=1)
    inner = block(range(6, 9), range(6, 9))  # every neighbour inside the block
    assert stats.loc[inner, "hotspot"].all()
    assert (stats.loc[inner, "moran_cluster"] == "HH").all()
    assert (stats.loc[inner, "gi_z"] > 3).all()
    outside = stats.index.difference(hot)
    # zones outside the block: at most the ones touching it
    touching = set(block(range(4, 11), range(4, 11))) - set(hot)
    false = set(outside[stats.loc[outside, "hotspot"]])
    assert false <= touching
    assert not stats["coldspot"][inner].any()


def test_pure_noise_gives_few_hotspots_under_fdr():
    g = lattice(30, 30)
    with_fdr, without = 0, 0
    for seed in range(4):
        x = noise(g, seed)
        with_fdr += int(local_statistics(x, g, permutations=499, seed=seed)["hotspot"].sum())
        raw = local_statistics(x, g, permutations=499, seed=seed, fdr=False)
        without += int((raw["hotspot"] | raw["coldspot"]).sum())
    assert with_fdr <= 3  # 3,600 tests of pure noise
    assert without > 60  # uncorrected: ~5 % of 3,600


def test_same_seed_same_result_and_seed_matters():
    g = lattice(12, 12)
    x = noise(g, 3)
    a = local_statistics(x, g, permutations=199, seed=5)
    b = local_statistics(x, g, permutations=199, seed=5)
    pd.testing.assert_frame_equal(a, b)
    c = local_statistics(x, g, permutations=199, seed=6)
    assert not np.array_equal(a["gi_p"].to_numpy(), c["gi_p"].to_numpy())
    two = local_statistics(x, g, permutations=199, seed=5, n_jobs=2)
    pd.testing.assert_frame_equal(a, two)


_ESDA_WITHOUT_NUMBA = """
import sys
sys.modules["numba"] = None  # esda then draws with numpy's legacy generator, as the counts do
import warnings
import esda
import numpy as np
from libpysal.graph import Graph
from territoria.models.clusters import _binary_adjacency, _conditional_counts

for rook in (True, False):
    g = Graph.from_lattice(14, 14, rook=rook)
    adj, _ = _binary_adjacency(g)
    y = np.random.default_rng(7).gamma(2.0, size=g.n)
    z = (y - y.mean()) / y.std()
    ge, le = _conditional_counts(z, adj, 199, seed=11, legacy=True)
    sub = Graph.from_sparse(adj)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for alt, count in (("greater", ge), ("lesser", le)):
            gl = esda.G_Local(y, sub, transform="B", star=True, permutations=199, seed=11,
                              n_jobs=1, alternative=alt)
            np.testing.assert_allclose(gl.p_sim, (count + 1) / 200)
        ml = esda.Moran_Local(y, sub, permutations=199, seed=11, n_jobs=1, alternative="greater")
    np.testing.assert_allclose(ml.p_sim, (np.where(z > 0, ge, le) + 1) / 200)
print("same counts")
"""


def test_permutation_counts_equal_esda():
    """With ``legacy=True`` the conditional permutation counts are esda's own draws (rook and
    queen lattices). esda draws with numba's generator when numba is installed (it is: the
    TreeSHAP tables use it), so esda runs in a process where numba cannot be imported."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _ESDA_WITHOUT_NUMBA], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same counts" in done.stdout


def test_observed_statistics_are_esda_and_shift_invariant():
    g = lattice(8, 9)
    x = noise(g, 2)
    stats = local_statistics(x, g, permutations=99)
    adj, ids = _binary_adjacency(g)
    y = x.reindex(ids).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gl = esda.G_Local(y - y.min(), Graph.from_sparse(adj), transform="B", star=True,
                          permutations=0)
        ml = esda.Moran_Local(y, Graph.from_sparse(adj), permutations=0)
    np.testing.assert_allclose(stats.loc[ids, "gi_z"], gl.Zs)
    np.testing.assert_allclose(stats.loc[ids, "moran_i"], ml.Is)
    shifted = local_statistics(x + 100.0, g, permutations=99)
    np.testing.assert_allclose(shifted["gi_z"], stats["gi_z"], rtol=1e-6)
    np.testing.assert_array_equal(shifted["gi_p"], stats["gi_p"])
    # binary or row-standardised graph: same result
    pd.testing.assert_frame_equal(local_statistics(x, g.transform("r"), permutations=99), stats)


def test_quadrants_follow_value_and_lag_signs():
    g = lattice(10, 10)
    x = noise(g, 4)
    stats = local_statistics(x, g, permutations=99)
    from territoria.features.spatial import neighbour_mean

    lag = neighbour_mean(g, x)
    high, high_nbr = x > x.mean(), lag > x.mean()
    expected = np.select(
        [high & high_nbr, ~high & high_nbr, ~high & ~high_nbr], ["HH", "LH", "LL"], "HL"
    )
    assert stats["moran_quadrant"].tolist() == expected.tolist()
    sig = stats["moran_cluster"] != "ns"
    assert (stats.loc[sig, "moran_cluster"] == stats.loc[sig, "moran_quadrant"]).all()
    assert (stats.loc[sig, "moran_q"] <= 0.05).all()


def test_missing_values_islands_and_unknown_zones_are_untested():
    g = lattice(6, 6)
    adj = g.adjacency
    focal = adj.index.get_level_values(0).to_numpy(dtype=object)
    nbr = adj.index.get_level_values(1).to_numpy(dtype=object)
    # an island with no link (stored as a zero-weight self-link, as build_commune_graph does)
    g = Graph.from_arrays(np.append(focal, "island"), np.append(nbr, "island"),
                          np.append(adj.to_numpy(dtype=float), 0.0))
    x = noise(g, 1)
    x["r02c02"] = np.nan
    x[["r00c01", "r01c00"]] = np.nan  # r00c00: both neighbours missing
    x["elsewhere"] = 5.0  # not in the graph
    stats = local_statistics(x, g, permutations=99)
    untested = ["island", "r02c02", "r00c01", "r01c00", "r00c00", "elsewhere"]
    assert stats.loc[untested, ["gi_z", "gi_p", "moran_i", "moran_p"]].isna().all().all()
    assert (stats.loc[untested, "n_neighbours"] == 0).all()
    assert not stats.loc[untested, "hotspot"].any()
    assert (stats.loc[untested, "moran_cluster"] == "ns").all()
    assert stats.loc["r02c03", "n_neighbours"] == 3  # its neighbour r02c02 has no value
    assert stats.drop(untested)["gi_p"].notna().all()
    assert list(stats.index) == list(x.index) and stats.index.name == "zone_code"


def test_degenerate_inputs():
    g = lattice(4, 4)
    flat = local_statistics(pd.Series(1.0, index=g.unique_ids), g, permutations=49)
    assert flat["gi_p"].isna().all() and not flat["hotspot"].any()
    empty = local_statistics(pd.Series(np.nan, index=g.unique_ids), g, permutations=49)
    assert (empty["moran_cluster"] == "ns").all()
    with pytest.raises(DataError, match="shares no zone code"):
        local_statistics(pd.Series([1.0, 2.0], index=["a", "b"]), g)
    with pytest.raises(DataError, match="duplicated"):
        local_statistics(pd.Series([1.0, 2.0], index=["r00c00", "r00c00"]), g)


def test_benjamini_hochberg_matches_esda_fdr():
    rng = np.random.default_rng(0)
    p = np.r_[rng.uniform(0, 0.002, 40), rng.uniform(size=960)]
    q = benjamini_hochberg(p)
    cut = esda.fdr(p, 0.05)
    assert ((q <= 0.05) == (p <= cut)).all() and (q <= 0.05).sum() >= 40
    assert np.all(q >= p)
    assert np.isnan(benjamini_hochberg([np.nan, 0.2])[0])


# --------------------------------------------------------------------------- perimeters


def two_department_identity(graph: Graph, ncols: int) -> pd.DataFrame:
    """Department "01" on the left half of the lattice, "02" on the right; EPCI = 2 columns."""
    codes = pd.Index(graph.unique_ids)
    col = codes.str.slice(4, 6).astype(int)
    return pd.DataFrame({
        "zone_code": codes,
        "departement": np.where(col < ncols // 2, "01", "02"),
        "epci": pd.Index(col // 2).astype(str).map(lambda c: f"E{c}"),
        "region": "84",
    })


def test_two_blocks_two_clusters_and_department_crossing():
    g = lattice(10, 10)
    flags = pd.Series(False, index=g.unique_ids)
    across = block(range(1, 4), range(3, 7))  # columns 3-6: departments 01 and 02
    inside = block(range(6, 8), range(0, 2))  # columns 0-1: department 01, EPCI E0
    flags[across + inside] = True
    flags["r09c09"] = True  # a singleton
    ident = two_department_identity(g, 10)
    per = priority_perimeters(flags, g, ident)
    assert set(per.loc[across, "cluster_id"]) == {"C0001"}  # larger first
    assert set(per.loc[inside, "cluster_id"]) == {"C0002"}
    assert pd.isna(per.loc["r09c09", "cluster_id"]) and per.loc["r09c09", "cluster_size"] == 0
    assert per["cluster_id"].notna().sum() == len(across) + len(inside)
    pop = pd.Series(10.0, index=g.unique_ids)
    summary = cluster_summary(per, population=pop).set_index("cluster_id")
    assert summary.loc["C0001", "n_zones"] == 12 and summary.loc["C0001", "population"] == 120
    assert summary.loc["C0001", "crosses_department"]
    assert summary.loc["C0001", "departements"] == "01, 02"
    assert summary.loc["C0001", "crosses_epci"] and summary.loc["C0001", "n_epcis"] == 3
    assert not summary.loc["C0002", "crosses_department"]
    assert not summary.loc["C0002", "crosses_epci"]
    assert not summary["crosses_region"].any()
    # identity given to the summary instead of the perimeters: same table
    bare = priority_perimeters(flags, g)
    pd.testing.assert_frame_equal(cluster_summary(bare, ident, pop), summary.reset_index())


def assert_contiguous_components(per: pd.DataFrame, graph: Graph) -> None:
    """Each member has a neighbour in its cluster; each cluster is connected and maximal."""
    adj = graph.adjacency
    links = pd.DataFrame({
        "a": adj.index.get_level_values(0), "b": adj.index.get_level_values(1),
        "w": adj.to_numpy(),
    })
    links = links[(links["w"] > 0) & (links["a"] != links["b"])]
    ca = per["cluster_id"].reindex(links["a"]).to_numpy()
    cb = per["cluster_id"].reindex(links["b"]).to_numpy()
    fa = per["flagged"].reindex(links["a"]).fillna(False).to_numpy(bool)
    fb = per["flagged"].reindex(links["b"]).fillna(False).to_numpy(bool)
    both = fa & fb
    # flagged neighbours always share their cluster (maximal components)
    same = pd.Series(ca[both]).fillna("-").to_numpy() == pd.Series(cb[both]).fillna("-").to_numpy()
    assert same.all()
    members = per[per["cluster_id"].notna()]
    in_cluster = pd.Series(ca, dtype="string").eq(pd.Series(cb, dtype="string")).fillna(False)
    with_mate = set(links["a"].to_numpy()[in_cluster.to_numpy(bool)])
    assert set(members.index) <= with_mate
    # connected: a BFS inside each cluster reaches all its members
    nbrs = links.groupby("a")["b"].apply(list).to_dict()
    for cid, group in members.groupby("cluster_id"):
        todo, seen = [group.index[0]], {group.index[0]}
        while todo:
            z = todo.pop()
            for n in nbrs.get(z, []):
                if n not in seen and n in group.index:
                    seen.add(n)
                    todo.append(n)
        assert seen == set(group.index), cid
    sizes = members.groupby("cluster_id").size()
    assert (members["cluster_size"] == members["cluster_id"].map(sizes)).all()


def test_random_flags_give_contiguous_deterministic_perimeters():
    g = lattice(20, 20)
    flags = pd.Series(np.random.default_rng(0).random(g.n) < 0.35, index=g.unique_ids)
    per = priority_perimeters(flags, g)
    assert_contiguous_components(per, g)
    assert per["cluster_id"].nunique() > 5
    ids = per["cluster_id"].dropna()
    sizes = per.loc[ids.index].groupby("cluster_id")["cluster_size"].first()
    assert sizes.is_monotonic_decreasing  # C0001 is the largest
    assert (ids.str.fullmatch(r"C\d{4}")).all()
    shuffled = flags.sample(frac=1.0, random_state=1)
    again = priority_perimeters(shuffled, g)
    pd.testing.assert_series_equal(again["cluster_id"].reindex(per.index), per["cluster_id"])


def test_min_zones_unknown_zones_and_detached_islands():
    g = lattice(5, 5)
    adj = g.adjacency
    focal = adj.index.get_level_values(0).to_numpy(dtype=object)
    nbr = adj.index.get_level_values(1).to_numpy(dtype=object)
    # "island" linked to r00c00 by a k-NN fallback link
    g = Graph.from_arrays(np.append(focal, ["island", "r00c00"]),
                          np.append(nbr, ["r00c00", "island"]),
                          np.append(adj.to_numpy(dtype=float), [1.0, 1.0]))
    flags = pd.Series(False, index=list(g.unique_ids) + ["nowhere"])
    flags[["island", "r00c00", "r00c01", "r04c04", "r04c03", "r02c02", "nowhere"]] = True
    per = priority_perimeters(flags, g)
    assert per.loc["island", "cluster_id"] == per.loc["r00c00", "cluster_id"] == "C0001"
    assert per.loc["r04c04", "cluster_id"] == "C0002"
    assert per.loc[["r02c02", "nowhere"], "cluster_id"].isna().all()
    cut = priority_perimeters(flags, g, detached=["island"])
    assert pd.isna(cut.loc["island", "cluster_id"])
    assert cut.loc["r00c00", "cluster_id"] == "C0001"  # r00c00 + r00c01 (2 zones, first code)
    singles = priority_perimeters(flags, g, min_zones=1)
    assert singles.loc[["r02c02", "nowhere"], "cluster_id"].notna().all()
    assert singles["cluster_id"].nunique() == 4
    big = priority_perimeters(flags, g, min_zones=3)
    assert big["cluster_id"].dropna().unique().tolist() == ["C0001"]
    none = priority_perimeters(pd.Series(False, index=g.unique_ids), g)
    assert none["cluster_id"].isna().all()
    assert cluster_summary(none).empty


def test_hotspots_to_perimeters_end_to_end():
    g = lattice(16, 16)
    x = noise(g, 5)
    hot = block(range(2, 6), range(6, 11))
    x[hot] += 4.0
    stats = local_statistics(x, g, permutations=9999, seed=0)
    per = priority_perimeters(stats["hotspot"], g, two_department_identity(g, 16))
    assert_contiguous_components(per, g)
    main = per.loc[block(range(3, 5), range(7, 10)), "cluster_id"]
    assert main.nunique() == 1 and main.iloc[0] == "C0001"
    summary = cluster_summary(per).set_index("cluster_id")
    assert summary.loc["C0001", "crosses_department"]  # columns 6-10 straddle 7 | 8


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def nord(feature_build):
    """Nord and Pas-de-Calais (~1,550 communes): their subgraph, identity and features."""
    ident = feature_build.identity
    codes = ident.index[ident["departement"].isin(["59", "62"])]
    graph = feature_build.graph.subgraph(codes)
    features = feature_build.features.set_index("zone_code").reindex(codes)
    return graph, ident.loc[codes], features


def test_real_low_income_hotspots_form_contiguous_cross_epci_perimeters(nord):
    graph, ident, features = nord
    score = -features["median_income"]  # lower income = higher priority; ~3 % missing
    stats = local_statistics(score, graph, permutations=9999, seed=42)
    tested = stats["n_neighbours"] > 0
    assert 0.9 * len(score) < tested.sum() < score.notna().sum() + 1
    assert stats.loc[score.isna(), "gi_p"].isna().all()
    assert stats["hotspot"].sum() > 30 and stats["coldspot"].sum() > 30
    assert (stats.loc[stats["hotspot"], "moran_quadrant"] == "HH").mean() > 0.8
    assert score[stats["hotspot"]].median() > score[tested].quantile(0.75)
    per = priority_perimeters(stats["hotspot"], graph, ident)
    assert_contiguous_components(per, graph)
    summary = cluster_summary(per, population=features["population"])
    assert len(summary) >= 3
    assert summary["crosses_epci"].any()  # perimeters ignore EPCI borders
    assert (summary["population"] > 0).all()
    assert set(summary["departements"].str.split(", ").explode()) <= {"59", "62"}
    pd.testing.assert_frame_equal(
        stats, local_statistics(score, graph, permutations=9999, seed=42)
    )


def test_real_sparse_indicator_is_tested_where_neighbours_have_values(nord):
    graph, _, features = nord
    score = features["poverty_rate"]  # published for the larger communes only (~1 in 4)
    stats = local_statistics(score, graph, permutations=999, seed=42)
    tested = stats["n_neighbours"] > 0
    assert 100 < tested.sum() < score.notna().sum()
    untested = stats[~tested]
    assert untested[["gi_z", "gi_p", "moran_i"]].isna().all().all()
    assert not untested["hotspot"].any() and (untested["moran_cluster"] == "ns").all()
    assert stats.loc[tested, "gi_p"].between(0, 1).all()


def test_docstring_examples():
    import doctest

    import territoria.models.clusters as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
