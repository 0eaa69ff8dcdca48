"""The 200 m grid level and its engines: ids, lattice graph, partitioned features, the synthetic
grid, and the local and Dask engines giving the same results (issue 6)."""

from __future__ import annotations

import doctest
import json
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from territoria.errors import DataError
from territoria.features.grid import (
    cell_ids,
    grid_feature_meta,
    grid_features,
    grid_indicators,
    lattice_graph,
    lattice_keys,
    parse_cell_ids,
    validate_grid,
)
from territoria.features.synthetic_grid import GRID_INDICATORS, TARGET, generate_grid
from territoria.pipelines.grid import (
    halo_positions,
    part_keys,
    plan_partitions,
    run_grid,
    take_halo,
    training_mask,
)
from territoria.registry import load_registry

CLI = str(Path(sys.executable).parent / "territoria")
N_TEST = 20_000


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return generate_grid(N_TEST, seed=7)


@pytest.fixture(scope="module")
def small_conf(tmp_path_factory) -> Path:
    """A grid configuration for tests: small partitions (several per run, so halos matter)
    and a small model."""
    path = tmp_path_factory.mktemp("conf") / "grid.yml"
    path.write_text(
        "seed: 3\ncontiguity: queen\ntarget: target_poverty_rate_change\nholdout_fraction: 0.2\n"
        "rows_per_partition: 3000\ntop_features: 3\n"
        "model: {n_estimators: 60, learning_rate: 0.15, num_leaves: 15, max_depth: 4, "
        "min_child_samples: 40, colsample_bytree: 0.8, reg_lambda: 1.0, max_bin: 255}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("name", ["territoria.features.grid", "territoria.features.synthetic_grid",
                                  "territoria.pipelines.grid"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------ ids
def test_cell_ids_round_trip():
    n = np.array([2_684_000, 2_000_200])
    e = np.array([4_334_000, 3_800_400])
    ids = cell_ids(n, e)
    assert ids[0] == "CRS3035RES200mN2684000E4334000"
    n2, e2, res = parse_cell_ids(ids)
    assert res == 200 and n2.tolist() == n.tolist() and e2.tolist() == e.tolist()


@pytest.mark.parametrize("bad, message", [
    (["CRS3035RES200mN2684000E4334000", "FR_200m_N2684000"], "not INSPIRE grid ids"),
    (["CRS3035RES200mN2684000E4334000", "CRS3035RES1000mN2684000E4334000"], "several resolutions"),
    (["CRS3035RES200mN2684100E4334000"], "not multiples of 200 m"),
    (["CRS3035RES1000mN2684000E4334000"], "expected 200 m"),
])
def test_bad_cell_ids(bad, message):
    with pytest.raises(DataError, match=message):
        parse_cell_ids(bad)


# -------------------------------------------------------------------------- lattice
@pytest.mark.parametrize("contiguity, rook", [("queen", False), ("rook", True)])
def test_lattice_graph_equals_polygon_contiguity(contiguity, rook):
    """Neighbours from the ids alone = contiguity of the cell squares (geometry ops)."""
    import geopandas as gpd
    import shapely
    from libpysal.graph import Graph

    rng = np.random.default_rng(0)
    rows = rng.choice(20 * 20, 180, replace=False)
    n = 2_500_000 + (rows // 20) * 200
    e = 3_900_000 + (rows % 20) * 200
    ids = cell_ids(n, e)
    gdf = gpd.GeoDataFrame({"cell_id": ids}, geometry=shapely.box(e, n, e + 200, n + 200), crs="EPSG:3035")
    g = Graph.build_contiguity(gdf.set_index("cell_id"), rook=rook)
    expected = {(a, b) for a, b in zip(g.adjacency.index.get_level_values(0), g.adjacency.index.get_level_values(1))
                if a != b and g.adjacency[(a, b)] > 0}
    nb = lattice_graph(lattice_keys(n, e), contiguity=contiguity).neighbours
    got = {(ids[i], ids[j]) for i in range(len(ids)) for j in nb[i] if j >= 0}
    assert got == expected
    assert len(got) > 100


def test_unknown_contiguity():
    with pytest.raises(DataError, match="unknown contiguity"):
        lattice_graph(np.array([1]), contiguity="bishop")


# ------------------------------------------------------------------------- features
def test_features_in_partitions_with_halos_equal_whole_table(cells):
    """Whole departments per partition plus a halo give bit-for-bit the whole-table features,
    and a partition without its halo does not (so the halo is what makes them equal)."""
    ind = grid_indicators(cells, load_registry())
    whole = grid_features(cells, ind)
    part = plan_partitions(cells["department"].to_numpy(), 2500)
    assert part.max() >= 3
    frames = [cells[part == p].reset_index(drop=True) for p in range(part.max() + 1)]
    positions = halo_positions([part_keys(f) for f in frames], "queen")
    halo = pd.concat([take_halo(f, pos, ind) for f, pos in zip(frames, positions)], ignore_index=True)
    assert 0 < len(halo) < len(cells) / 2
    pieces = [grid_features(f, ind, halo=halo) for f in frames]
    pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), whole.reset_index(drop=True))
    no_halo = pd.concat([grid_features(f, ind) for f in frames], ignore_index=True)
    assert not no_halo["poverty_rate_nbr_mean"].equals(whole["poverty_rate_nbr_mean"].reset_index(drop=True))


def test_feature_values_by_hand():
    # a 2x2 block plus one isolated cell; commune a = 3 cells, b = 2 cells
    cells = pd.DataFrame({
        "northing": [0, 0, 200, 200, 1000], "easting": [0, 200, 0, 200, 1000],
        "parent_commune": ["a", "a", "a", "b", "b"], "department": ["d"] * 5,
        "poverty_rate": [10.0, 20.0, np.nan, 40.0, 50.0],
    })
    f = grid_features(cells, ["poverty_rate"])
    assert f["nbr_count"].tolist() == [3, 3, 3, 3, 0]
    assert f["poverty_rate_nbr_mean"].iloc[0] == pytest.approx(30.0)   # (20 + 40) / 2, NaN skipped
    assert np.isnan(f["poverty_rate_nbr_mean"].iloc[4])
    assert f["poverty_rate_gap_commune"].iloc[1] == pytest.approx(5.0)  # 20 - mean(10, 20)
    assert f["poverty_rate_gap_dep"].iloc[3] == pytest.approx(10.0)     # 40 - mean(10, 20, 40, 50)
    meta = grid_feature_meta(["poverty_rate"], load_registry())
    assert meta["feature"].tolist() == list(f.columns)


def test_partitions_need_contiguous_departments():
    assert plan_partitions(["a", "a", "b", "b", "c"], 2).tolist() == [0, 0, 1, 1, 2]
    with pytest.raises(DataError, match="not contiguous"):
        plan_partitions(["a", "b", "a"], 2)


def test_validate_grid_errors(cells):
    reg = load_registry()
    with pytest.raises(DataError, match="missing column"):
        validate_grid(cells.drop(columns="department"), reg)
    dup = pd.concat([cells.head(3), cells.head(1)])
    with pytest.raises(DataError, match="duplicate cells"):
        validate_grid(dup, reg)
    moved = cells.head(5).copy()
    moved.loc[moved.index[0], "northing"] += 200
    with pytest.raises(DataError, match="does not match"):
        validate_grid(moved, reg)
    with pytest.raises(DataError, match="no indicator column"):
        validate_grid(cells[["cell_id", "northing", "easting", "parent_commune", "department"]], reg)
    with pytest.raises(DataError, match="missing target"):
        validate_grid(cells, reg, target="nope")


# ------------------------------------------------------------------- synthetic grid
def test_synthetic_grid_is_labelled_deterministic_and_realistic(cells):
    again = generate_grid(N_TEST, seed=7)
    pd.testing.assert_frame_equal(cells, again)
    other = generate_grid(N_TEST, seed=8)
    assert not other["cell_id"].equals(cells["cell_id"])
    assert cells["source"].str.contains("synthetic").all() and cells["source"].str.contains("not real data").all()
    assert cells["parent_commune"].str.startswith("S").all() and cells["department"].str.startswith("S").all()
    reg = load_registry()
    ind = validate_grid(cells, reg, target=TARGET)
    assert {reg.indicator(i).domain for i in ind} == set(GRID_INDICATORS) and len(GRID_INDICATORS) == 6
    assert (cells.groupby("parent_commune")["department"].nunique() == 1).all()
    assert 250 <= cells["parent_commune"].nunique() <= 350  # ~66 cells per commune
    # clustered like settlements: most cells have inhabited neighbours
    g = lattice_graph(lattice_keys(cells["northing"], cells["easting"]))
    assert np.mean(g.cardinalities > 0) > 0.8
    # spatially autocorrelated: Moran's I over the queen lattice, every domain
    w = g.to_sparse()
    for name in ("poverty_rate", "vacancy_rate", "irep_exposure", "ftth_coverage_rate", "dist_gp",
                 "caf_lone_parent_share"):
        x = cells[name].to_numpy(float)
        ok = ~np.isnan(x)
        z = np.where(ok, x - x[ok].mean(), 0.0)
        wm = w.multiply(ok[None, :]).multiply(ok[:, None])
        moran = ok.sum() / wm.sum() * (z @ (wm @ z)) / (z @ z)
        assert moran > 0.3, (name, moran)
    assert cells[TARGET].std() > 0.3


def test_synthetic_grid_size_checked():
    with pytest.raises(DataError, match="at least 1,000"):
        generate_grid(10)


# --------------------------------------------------------------------------- engines
@pytest.fixture(scope="module")
def runs(cells, small_conf, tmp_path_factory):
    """The same grid through both engines; the Dask one on a 2-worker LocalCluster."""
    from distributed import Client, LocalCluster

    out = tmp_path_factory.mktemp("grid")
    local = run_grid(out / "local", cells=cells, engine="local", conf=small_conf, keep_features=True, threads=1,
                     write_features=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="2GiB") as cluster, Client(cluster) as client:
        dask = run_grid(out / "dask", cells=cells, engine="dask", conf=small_conf, keep_features=True,
                        client=client)
    return local, dask


def test_engines_give_the_same_features(runs):
    local, dask = runs
    assert dask.n_partitions >= 3
    pd.testing.assert_frame_equal(local.features, dask.features)


def test_engines_give_the_same_rankings(runs):
    """Both engines train on the same bin codes (FeatureBins), so data-parallel LightGBM on
    the 2-worker cluster grows the serial trees: the same predictions up to the order of the
    histogram sums, hence the same ranking up to ties. Without the shared codes the engines
    agreed to Spearman 0.98 only (each worker found its features' bins on its own rows). On
    far larger grids two features can tie exactly on a split and each engine may pick another
    (docs/GRID.md); this grid has no such tie."""
    local, dask = runs
    a, b = local.predictions, dask.predictions
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    ca = pd.read_parquet(local.paths["cells"])
    cb = pd.read_parquet(dask.paths["cells"])
    assert ca["cell_id"].equals(cb["cell_id"])
    # equal ranks wherever no other cell's prediction is within the tolerance (a tie)
    order = np.sort(a)
    gaps = np.minimum(np.abs(a - order[np.clip(np.searchsorted(order, a) - 1, 0, None)]),
                      np.abs(order[np.clip(np.searchsorted(order, a, side="right"), None, len(a) - 1)] - a))
    clear = gaps > 1e-9
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(ca["priority_rank"].to_numpy()[clear], cb["priority_rank"].to_numpy()[clear])
    assert local.metrics["holdout"]["r2"] == pytest.approx(dask.metrics["holdout"]["r2"], abs=1e-9)
    assert local.booster.num_trees() == dask.booster.num_trees()
    # the deterioration classifier (LGBMClassifier vs DaskLGBMClassifier) is close, not equal:
    # for the log loss LightGBM checks min_child_samples on leaf counts it estimates from
    # hessians, differently on one machine and on several (docs/GRID.md)
    pa, pb = local.p_deteriorating, dask.p_deteriorating
    assert spearmanr(pa, pb).statistic > 0.95 and np.abs(pa - pb).mean() < 0.03
    assert np.array_equal(ca["p_deteriorating"].to_numpy(), pa) and np.array_equal(cb["p_deteriorating"].to_numpy(), pb)


def test_deterioration_classifier_ranks_the_largest_rises(runs, cells, small_conf, tmp_path):
    """p_deteriorating is the probability of being among the 10 % largest rises of the
    target: it ranks the held-out departments' cells (AUC) and averages to the share of
    deteriorating cells where it was fitted."""
    local, _ = runs
    det = local.metrics["deteriorating"]
    train_y = local.features.loc[local.features["in_training"], TARGET].dropna()
    assert det["quantile"] == 0.10
    assert (train_y > det["threshold"]).mean() == pytest.approx(0.10, abs=0.002)
    held = det["holdout"]
    assert held["n"] == int((~local.features["in_training"] & local.features[TARGET].notna()).sum())
    assert held["roc_auc"] > 0.8 and 0 <= held["brier"] < 0.25
    p = local.p_deteriorating
    assert ((p > 0) & (p < 1)).all()
    # on the training cells the probabilities average to the share of deteriorating cells
    assert p[training_mask(local.features, TARGET)].mean() == pytest.approx(0.10, abs=0.02)
    # cells with the largest predicted rises are the likeliest to deteriorate
    assert spearmanr(p, local.predictions).statistic > 0.7
    assert (local.out_dir / "grid_classifier.txt").read_text().startswith("tree")
    # 0 turns it off: no column, no model file
    conf = tmp_path / "grid.yml"
    conf.write_text(small_conf.read_text() + "deteriorating_quantile: 0\n", encoding="utf-8")
    deps = cells["department"].unique()[:2]
    off = run_grid(tmp_path / "off", cells=cells[cells["department"].isin(deps)], engine="local", conf=conf, threads=1)
    assert off.classifier is None and "deteriorating" not in off.metrics
    assert "p_deteriorating" not in pd.read_parquet(off.paths["cells"]).columns
    assert not (tmp_path / "off" / "grid_classifier.txt").exists()


def test_both_engines_split_between_bin_codes(runs):
    """Every split threshold falls between two codes: LightGBM used the forced bins, not bins
    of its own found on each worker's rows."""
    local, _ = runs
    assert local.bins.features == local.meta["feature"].tolist()
    for res in runs:
        thr = res.booster.trees_to_dataframe()["threshold"].dropna().to_numpy(float)
        assert len(thr) and np.allclose(thr % 1.0, 0.5)
        assert json.loads((res.out_dir / "grid_bins.json").read_text())["edges"] == [e.tolist() for e in local.bins.edges]


def test_bin_codes_keep_the_order_of_the_values():
    from territoria.pipelines.grid import FeatureBins

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": np.r_[rng.normal(size=500), np.nan, np.nan], "y": np.r_[np.zeros(400), rng.exponential(size=102)]})
    bins = FeatureBins.find(frame, ["x", "y"], n_bins=20)
    codes = bins.codes(frame)
    assert (codes[-2:, 0] == 0).all() and (codes[:-2] >= 1).all()
    for j, name in enumerate(["x", "y"]):
        ok = frame[name].notna().to_numpy()
        v, c = frame[name].to_numpy()[ok], codes[ok, j]
        o = np.argsort(v, kind="stable")
        assert (np.diff(c[o]) >= 0).all()  # monotone: a split on codes is a split on values
        assert c.max() <= 21
    assert len(bins.edges[1]) < 20  # the many zeros of y share one edge
    again = FeatureBins.find(frame.sample(frac=1.0, random_state=1), ["x", "y"], n_bins=20)
    assert all(np.array_equal(p, q) for p, q in zip(bins.edges, again.edges))


def test_dask_engine_is_reproducible(runs, cells, small_conf, tmp_path):
    """The same grid on a new 2-worker cluster (the engine's own LocalCluster this time) gives
    the same model: LightGBM's ranks, hence each feature's bins, no longer follow the order in
    which the scheduler happens to list the workers."""
    _, dask = runs
    again = run_grid(tmp_path / "again", cells=cells, engine="dask", conf=small_conf, n_workers=2)
    np.testing.assert_array_equal(again.predictions, dask.predictions)
    assert again.booster.model_to_string().split("parameters:")[0] == dask.booster.model_to_string().split("parameters:")[0]


def test_shap_adds_up_for_every_cell(runs):
    for res in runs:
        assert res.max_additivity_gap < 1e-6
        cells = pd.read_parquet(res.paths["cells"])
        dom = cells[[c for c in cells.columns if c.startswith("shap_")]].sum(axis=1)
        assert np.abs(dom + cells["base_value"] - cells["model_output"]).max() < 1e-6
        assert {c.removeprefix("shap_") for c in cells.columns if c.startswith("shap_")} == set(GRID_INDICATORS)
        shap = pd.concat([pd.read_parquet(p) for p in sorted(Path(res.paths["shap"]).glob("part-*.parquet"))],
                         ignore_index=True)
        assert len(shap) == len(cells) == res.n_cells
        contrib = shap.drop(columns=["cell_id", "base_value", "model_output"]).to_numpy()
        assert np.abs(contrib.sum(axis=1) + shap["base_value"] - shap["model_output"]).max() < 1e-6
        assert shap["cell_id"].equals(cells["cell_id"])
        assert cells["location_share"].between(0, 1).all()


def test_shap_per_partition_equals_whole_table(runs):
    """Explaining partition by partition gives exactly the contributions of one call on all,
    and LightGBM's own TreeSHAP values."""
    from territoria.models.treeshap import contributions

    local, _ = runs
    names = local.meta["feature"].tolist()
    codes = local.bins.codes(local.features[names])
    whole = contributions(local.booster, codes)
    shap = pd.concat([pd.read_parquet(p) for p in sorted(Path(local.paths["shap"]).glob("part-*.parquet"))],
                     ignore_index=True)
    np.testing.assert_array_equal(shap[names].to_numpy(), whole[:, :-1])
    np.testing.assert_allclose(whole, local.booster.predict(codes, pred_contrib=True), rtol=0, atol=1e-12)


def test_outputs_are_assembled(runs):
    local, dask = runs
    for res in runs:
        out = res.out_dir
        assert not list(out.glob(".grid-work-*"))  # per-partition work folders removed
        assert len(list((out / "grid_shap").glob("part-*.parquet"))) == res.n_partitions
        run = pd.read_json(out / "grid_run.json", typ="series")
        assert run["synthetic"] and "not real data" in run["source"]
        cells = pd.read_parquet(out / "grid_cells.parquet")
        assert cells["priority_rank"].min() == 1 and cells["source"].str.contains("synthetic").all()
        assert (out / "grid_model.txt").read_text().startswith("tree")
    assert len(list((local.out_dir / "grid_features").glob("part-*.parquet"))) == local.n_partitions
    assert dask.run["engine"] == "dask" and dask.run["workers"] == 2


def test_rerun_replaces_outputs_whole(cells, small_conf, tmp_path):
    deps = cells["department"].unique()
    first = run_grid(tmp_path, cells=cells[cells["department"].isin(deps[:2])], engine="local", conf=small_conf,
                     threads=1)
    second = run_grid(tmp_path, cells=cells[cells["department"].isin(deps[:5])], engine="local", conf=small_conf,
                      threads=1)
    assert second.n_partitions > first.n_partitions
    assert len(list((tmp_path / "grid_shap").glob("part-*.parquet"))) == second.n_partitions
    assert len(pd.read_parquet(tmp_path / "grid_cells.parquet")) == second.n_cells


def test_grid_input_file(cells, small_conf, tmp_path):
    """A grid table read from parquet (here the synthetic one, which keeps its label)."""
    deps = cells["department"].unique()[:3]
    sub = cells[cells["department"].isin(deps)].sample(frac=1.0, random_state=0)  # any row order
    sub.to_parquet(tmp_path / "cells.parquet", index=False)
    res = run_grid(tmp_path / "out", input_path=tmp_path / "cells.parquet", engine="local", conf=small_conf,
                   threads=1)
    out = pd.read_parquet(res.paths["cells"])
    assert len(out) == len(sub) and set(out["cell_id"]) == set(sub["cell_id"])
    assert res.run["synthetic"] and out["source"].str.contains("not real data").all()
    (tmp_path / "bad.parquet").write_text("cell_id,northing\n", encoding="utf-8")
    with pytest.raises(DataError, match="cannot read as parquet"):
        run_grid(tmp_path / "out2", input_path=tmp_path / "bad.parquet", conf=small_conf)
    sub.drop(columns="target_poverty_rate_change").to_parquet(tmp_path / "no_target.parquet", index=False)
    with pytest.raises(DataError, match="missing target column"):
        run_grid(tmp_path / "out3", input_path=tmp_path / "no_target.parquet", conf=small_conf)


def test_bad_engine_arguments(cells, tmp_path):
    with pytest.raises(DataError, match="unknown engine 'spark'"):
        run_grid(tmp_path, cells=cells, engine="spark")
    with pytest.raises(DataError, match="only used with --engine dask"):
        run_grid(tmp_path, cells=cells, engine="local", scheduler="tcp://127.0.0.1:8786")


# ------------------------------------------------------------------------------ CLI
def _cli(*args):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--engine", "spark"], "unknown engine 'spark'"),
    (["--engine", "dask", "--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler"),
    (["--input", "/nonexistent/grid.parquet"], "grid input not found"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, args, message):
    res = _cli("grid", "--cells", "2000", "--out", str(tmp_path), *args)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_cli_grid_runs(tmp_path, small_conf):
    res = _cli("grid", "--cells", "4000", "--out", str(tmp_path), "--conf", str(small_conf), "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert "SYNTHETIC" in res.stdout and (tmp_path / "grid_cells.parquet").exists()
    assert len(pd.read_parquet(tmp_path / "grid_cells.parquet")) == 4000
