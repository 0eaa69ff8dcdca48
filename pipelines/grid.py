"""The grid pipeline: features, model and SHAP for every 200 m cell, locally or on Dask.

``territoria grid`` (:func:`run_grid`) runs the same steps with either engine:

1. **Partitions.** Cells are sorted by department and grouped into partitions of whole
   departments (``rows_per_partition`` in ``conf/grid.yml``), so commune and department means
   stay inside a partition.
2. **Features** (:func:`territoria.features.grid.grid_features`). Local engine: the whole
   table at once. Dask engine: one task per partition on the workers. Neighbour means need
   the cells of other partitions that touch the partition: their positions are found from the
   cell ids alone (the lattice graph of all keys, gathered once: 8 bytes a cell), each
   partition exports those cells' indicator values, and every partition computes its
   features with that **halo**. The features are bit-for-bit those of the local engine.
3. **Models.** LightGBM with the parameters of ``conf/grid.yml``: ``lightgbm.LGBMRegressor``
   (and ``LGBMClassifier`` for the deteriorating cells) locally, ``lightgbm.dask.DaskLGBMRegressor``
   (and ``DaskLGBMClassifier``) on the cluster (data-parallel training on the partitions where
   they live). Departments drawn with the seed (``holdout_fraction``)
   are held out of training; metrics are computed on them. Both engines train on the same
   **bin codes** (:class:`FeatureBins`: quantile edges found once on a hashed sample of the
   training cells, forced on LightGBM), so the Dask model is the local one.
4. **SHAP per partition.** Exact TreeSHAP (:func:`territoria.models.treeshap.contributions`,
   the values of LightGBM's ``pred_contrib``) on each partition where it lives; the contributions plus the base
   value equal the model output of every cell (checked: largest gap in ``grid_run.json``,
   tolerance 1e-6).
5. **Outputs per partition, then assembled.** Each partition writes its parts under a
   temporary folder in ``--out``; the client then assembles them: ``grid_cells.parquet``
   (one file, streamed part by part into a temporary file renamed at the end) and the
   ``grid_shap/`` folder of parts (renamed into place whole). With a remote scheduler,
   ``--out`` and the input must be on storage the workers share.

Outputs (``--out DIR``)
-----------------------
``grid_cells.parquet``
    one row per cell: ``cell_id, parent_commune, department, in_training``, the target,
    ``prediction``, ``priority_rank`` (1 = largest predicted rise; ties share the lower
    rank), ``p_deteriorating`` (the classifier's probability that the cell is among the
    ``deteriorating_quantile`` largest rises), ``base_value``, ``model_output``, ``shap_<domain>`` (contributions summed per
    domain: with the base they add up to the output), ``location_share`` (share of |SHAP|
    carried by the surroundings: neighbour cells, commune, department), ``top_feature_1..k``
    and ``source`` (the synthetic label when the grid is synthetic).
``grid_shap/part-NNNNN.parquet``
    every feature's contribution for every cell (``cell_id, base_value, model_output``, one
    column per feature), per partition.
``grid_features/part-NNNNN.parquet`` (with ``write_features``)
    the feature matrix, per partition.
``grid_features_meta.csv``, ``grid_model.txt``, ``grid_classifier.txt``, ``grid_bins.json``, ``grid_run.json``
    feature metadata (registry indicator, domain, lever, transform), the LightGBM boosters
    (text; they read bin codes, not raw features: ``FeatureBins.read(...).codes(X)`` first),
    the bin edges, and the run record: engine, scheduler, workers, partitions, parameters, metrics
    (the classifier's: base rate, Brier score, ROC AUC)
    on the held-out departments, largest SHAP additivity gap, timings (``cluster``: starting
    and closing the LocalCluster or connecting to the scheduler).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from territoria.errors import DataError
from territoria.features.grid import (
    GRID_LOCATION_TRANSFORMS,
    grid_feature_meta,
    grid_features,
    lattice_graph,
    lattice_keys,
    validate_grid,
)
from territoria.io import atomic_path, write_atomic, write_csv, write_json
from territoria.models.lgbm_threads import lightgbm_threads
from territoria.models.treeshap import contributions
from territoria.registry import load_registry
from territoria.settings import load_config

ENGINES = ("local", "dask")
ID_COLUMNS = ["cell_id", "parent_commune", "department", "in_training"]
#: SHAP additivity tolerance (contributions + base = output)
ADDITIVITY_TOL = 1e-6
#: training cells sampled to find the bin edges (LightGBM's own bin_construct_sample_cnt)
BIN_SAMPLE = 200_000


class GridModelParams(BaseModel):
    """LightGBM parameters shared by both engines (scikit-learn names)."""

    model_config = ConfigDict(extra="forbid")

    n_estimators: int = Field(100, ge=1)
    learning_rate: float = Field(0.2, gt=0)
    num_leaves: int = Field(15, ge=2)
    max_depth: int = 4
    min_child_samples: int = Field(50, ge=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    max_bin: int = Field(255, ge=8)


class GridConfig(BaseModel):
    """``conf/grid.yml``."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 42
    contiguity: str = Field("queen", pattern="^(queen|rook)$")
    target: str = "target_poverty_rate_change"
    holdout_fraction: float = Field(0.2, ge=0, lt=1)
    rows_per_partition: int = Field(250_000, ge=1)
    top_features: int = Field(3, ge=0)
    # share of the training cells with the largest target values called "deteriorating"; a
    # classifier predicts p_deteriorating for every cell (0: no classifier)
    deteriorating_quantile: float = Field(0.10, ge=0, lt=0.5)
    model: GridModelParams = Field(default_factory=GridModelParams)


def load_grid_config(path: Path | str | None = None) -> GridConfig:
    """Read and validate ``conf/grid.yml`` (or ``path``)."""
    return load_config(GridConfig, path, "grid.yml", "grid configuration")

def lgbm_params(cfg: GridConfig, n_jobs: int, forced_bins: str | None = None) -> dict:
    """Keyword arguments of ``LGBMRegressor`` and ``DaskLGBMRegressor`` (identical but threads).

    ``forced_bins``: the path of a file of :meth:`FeatureBins.forced_bins` (``_forced_bins_file``).
    """
    p = cfg.model.model_dump()
    # boost_from_average off: on several machines LightGBM starts from the mean of the
    # machines' means, not the mean of all rows; both engines centre the target instead
    p.update(subsample=1.0, random_state=cfg.seed, n_jobs=n_jobs, deterministic=True,
             force_row_wise=True, boost_from_average=False, verbose=-1)
    if forced_bins is not None:
        p["forcedbins_filename"] = forced_bins
    return p


# ----------------------------------------------------------------------------- shared bins
@dataclass(frozen=True)
class FeatureBins:
    """Bin edges of every feature, found once and used by both engines.

    Data-parallel LightGBM finds each feature's bins on one worker's rows (and its missing
    and zero handling on what that worker holds), so it does not grow the serial trees. Both
    engines therefore train on bin codes: 0 for a missing value, then 1, 2, ... for the
    quantile intervals of ``edges`` (``edges[k-1] < x <= edges[k]``), with LightGBM's bin
    bounds forced at the half-integers. Every bin then holds one code whatever rows a worker
    sees, and the Dask regressor equals the local one (tested; up to exact ties between two
    features, docs/GRID.md). The codes keep the order of the values, so SHAP contributions
    stay those of the features; the booster must be given codes.

    Examples
    --------
    >>> bins = FeatureBins.find(pd.DataFrame({"x": [1.0, 2, 3, 4, np.nan]}), ["x"], n_bins=2)
    >>> bins.edges[0].tolist()
    [2.0]
    >>> bins.codes(pd.DataFrame({"x": [np.nan, 0.5, 2.0, 2.5, 9.0]})).ravel().tolist()
    [0.0, 1.0, 1.0, 2.0, 2.0]
    """

    features: list[str]
    edges: list[np.ndarray]

    @classmethod
    def find(cls, sample: pd.DataFrame, features: list[str], n_bins: int) -> FeatureBins:
        """Edges at ``n_bins`` quantiles of each feature's finite values in ``sample``."""
        qs = np.linspace(0, 1, n_bins + 1)[1:-1]
        edges = []
        for name in features:
            v = sample[name].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            edges.append(np.unique(np.quantile(v, qs, method="lower")) if len(v) else np.empty(0))
        return cls(list(features), edges)

    def codes(self, frame: pd.DataFrame, rows: np.ndarray | None = None) -> np.ndarray:
        """The features of ``frame`` (its ``rows`` only, a boolean mask, if given) as bin
        codes: a float32 matrix (small integers, exact), one column per feature."""
        n = len(frame) if rows is None else int(np.count_nonzero(rows))
        out = np.empty((n, len(self.features)), dtype=np.float32)
        for j, (name, e) in enumerate(zip(self.features, self.edges)):
            v = frame[name].to_numpy(dtype=float)
            if rows is not None:
                v = v[rows]
            out[:, j] = np.where(np.isfinite(v), np.searchsorted(e, v, side="left") + 1.0, 0.0)
        return out

    def forced_bins(self) -> list[dict]:
        """LightGBM's ``forcedbins_filename`` content: a bound between every two codes."""
        return [{"feature": j, "bin_upper_bound": (np.arange(len(e) + 1) + 0.5).tolist()}
                for j, e in enumerate(self.edges)]

    def to_json(self) -> dict:
        return {"features": self.features, "edges": [e.tolist() for e in self.edges],
                "codes": "0 = missing; k = edges[k-2] < x <= edges[k-1] (numpy searchsorted, side left, + 1)"}

    @classmethod
    def read(cls, path: Path | str) -> FeatureBins:
        """The bins of a finished run (``grid_bins.json``)."""
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(doc["features"], [np.asarray(e, dtype=float) for e in doc["edges"]])


def training_mask(feats: pd.DataFrame, target: str) -> np.ndarray:
    """The training cells of a partition: outside the held-out departments, with a target."""
    return feats["in_training"].to_numpy() & feats[target].notna().to_numpy()


def bin_sample(feats: pd.DataFrame, features: list[str], target: str, fraction: float) -> pd.DataFrame:
    """The training cells of a partition whose id hashes below ``fraction``: the same cells
    whatever the partitioning, hence the same bins for both engines."""
    keep = training_mask(feats, target)
    if fraction < 1.0:
        h = pd.util.hash_array(feats["cell_id"].astype(str).to_numpy(dtype=object))
        keep &= h < np.uint64(fraction * float(2**64 - 1))
    return feats.loc[keep, features]


def n_bins(cfg: GridConfig) -> int:
    # codes 0..n_bins, LightGBM's zero bound and its last (infinite) bound fit in max_bin
    return cfg.model.max_bin - 4


# ----------------------------------------------------------------------------- partitions
def plan_partitions(departments, rows_per_partition: int) -> np.ndarray:
    """Partition number of each row: whole departments grouped in table order until a group
    holds ``rows_per_partition`` rows.

    Raises
    ------
    DataError
        When a department's rows are not contiguous (the table must be sorted by department).

    Examples
    --------
    >>> plan_partitions(["a", "a", "b", "c", "c", "c"], 3).tolist()
    [0, 0, 0, 1, 1, 1]
    """
    dep = pd.Series(np.asarray(departments, dtype=object))
    starts = dep.ne(dep.shift()).to_numpy()
    runs = dep[starts]
    if runs.duplicated().any():
        raise DataError("grid", f"department '{runs[runs.duplicated()].iloc[0]}' is not contiguous: "
                                "sort the cells by department", column="department")
    run_id = np.cumsum(starts) - 1
    sizes = np.bincount(run_id)
    part_of_run = np.empty(len(sizes), dtype=np.int64)
    part, filled = 0, 0
    for i, s in enumerate(sizes):
        if filled >= rows_per_partition:
            part, filled = part + 1, 0
        part_of_run[i] = part
        filled += s
    return part_of_run[run_id]


def holdout_departments(departments, fraction: float, seed: int) -> set[str]:
    """Departments held out of training, drawn with ``seed`` (at least one when fraction > 0)."""
    deps = np.sort(pd.unique(np.asarray(departments, dtype=object)).astype(str))
    if fraction <= 0 or len(deps) < 2:
        return set()
    n = min(len(deps) - 1, max(1, int(round(fraction * len(deps)))))
    return set(np.random.default_rng(seed).choice(deps, n, replace=False).tolist())


def halo_positions(keys_by_part: list[np.ndarray], contiguity: str) -> list[np.ndarray]:
    """For each partition, the rows (positions) that neighbour a cell of another partition.

    Built from the lattice keys alone: the graph of all cells is computed once, and a cell is
    exported when one of its neighbours lives elsewhere.

    Examples
    --------
    >>> k = [lattice_keys([0, 0], [0, 200]), lattice_keys([0, 0], [400, 1000])]
    >>> [p.tolist() for p in halo_positions(k, "queen")]
    [[1], [0]]
    """
    sizes = [len(k) for k in keys_by_part]
    if not sizes:
        return []
    keys = np.concatenate(keys_by_part)
    part = np.repeat(np.arange(len(sizes)), sizes)
    local = np.concatenate([np.arange(s) for s in sizes])
    nb = lattice_graph(keys, contiguity=contiguity).neighbours
    has = nb >= 0
    cross = has & (part[np.where(has, nb, 0)] != part[:, None])
    exported = np.unique(nb[cross])
    return [np.sort(local[exported[part[exported] == p]]) for p in range(len(sizes))]


# ------------------------------------------------------------ per-partition tasks (workers)
def read_part(path: str) -> pd.DataFrame:
    """One partition of grid cells (a parquet file)."""
    return pd.read_parquet(path)


def part_keys(cells: pd.DataFrame) -> np.ndarray:
    """Lattice keys of a partition's cells."""
    return lattice_keys(cells["northing"].to_numpy(), cells["easting"].to_numpy())


def take_halo(cells: pd.DataFrame, positions: np.ndarray, indicators: list[str]) -> pd.DataFrame:
    """The rows of a partition that other partitions need as halo (corners and indicators)."""
    return cells.iloc[positions][["northing", "easting", *indicators]].reset_index(drop=True)


def concat_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def part_features(cells: pd.DataFrame, halo: pd.DataFrame | None, indicators: list[str], contiguity: str,
                  target: str | None, holdout: set[str]) -> pd.DataFrame:
    """Identity columns, target and features of a partition (whole departments)."""
    feats = grid_features(cells, indicators, halo=halo, contiguity=contiguity)
    ids = pd.DataFrame({
        "cell_id": cells["cell_id"].astype(object).to_numpy(),
        "parent_commune": cells["parent_commune"].astype(object).to_numpy(),
        "department": cells["department"].astype(object).to_numpy(),
        "in_training": ~cells["department"].astype(str).isin(holdout).to_numpy(),
    }, index=cells.index)
    cols = [ids]
    if target is not None:
        cols.append(cells[[target]].astype(float))
    if "source" in cells.columns:
        cols.append(cells[["source"]].astype(object))
    return pd.concat([*cols, feats], axis=1).reset_index(drop=True)


def training_rows(feats: pd.DataFrame, bins: FeatureBins | None, target: str, offset: float = 0.0):
    """The training rows of a partition: its features as bin codes (``bins``) or its target
    minus ``offset`` (``bins=None``)."""
    keep = training_mask(feats, target)
    index = feats.index[keep]
    if bins is None:
        return pd.Series(feats[target].to_numpy(dtype=float)[keep] - offset, index=index, name=target)
    # codes of the kept rows only: no copy of the whole partition
    return pd.DataFrame(bins.codes(feats, keep), columns=bins.features, index=index)


def deteriorating_rows(feats: pd.DataFrame, target: str, threshold: float) -> pd.Series:
    """The classifier's labels on a partition's training rows: 1 above ``threshold``."""
    return (training_rows(feats, None, target) > threshold).astype(np.int64)


def deterioration_threshold(targets: np.ndarray, quantile: float) -> float:
    """The target value above which a training cell is "deteriorating" (the ``quantile``
    share of the largest values)."""
    return float(np.quantile(targets, 1.0 - quantile))


def add_to_first_tree(booster: lgb.Booster, value: float) -> lgb.Booster:
    """Add ``value`` to every leaf of the first tree: the centred target's mean put back, as
    LightGBM's own ``boost_from_average`` does with its starting score."""
    n_leaves = booster.dump_model(num_iteration=1)["tree_info"][0]["num_leaves"]
    for leaf in range(n_leaves):
        booster.set_leaf_output(0, leaf, booster.get_leaf_output(0, leaf) + value)
    return booster


@dataclass(frozen=True)
class ExplainSpec:
    """What :func:`explain_part` needs besides the data (small, sent to every worker)."""

    features: list[str]
    domains: list[str]
    feature_domain: list[str]
    location: list[bool]
    target: str | None
    top: int
    folder: str
    write_features: bool
    threads: int
    bins: FeatureBins


def explain_part(feats: pd.DataFrame, part_no: int, model: str, spec: ExplainSpec,
                 classifier: str | None = None) -> dict:
    """Predict and explain one partition; write its parts; return its predictions.

    ``model`` is the booster as LightGBM text (``classifier``: the deterioration classifier's,
    whose probability is added as ``p_deteriorating``). Writes ``cells/part-NNNNN.parquet`` and
    ``shap/part-NNNNN.parquet`` (and ``features/`` with ``spec.write_features``) under
    ``spec.folder``.
    """
    booster = lgb.Booster(model_str=model)
    X = spec.bins.codes(feats)
    with lightgbm_threads(spec.threads) as threads:
        p_det = (lgb.Booster(model_str=classifier).predict(X, num_threads=threads)
                 if classifier is not None else None)
        raw = contributions(booster, X, n_jobs=spec.threads)
        output = booster.predict(X, num_threads=threads)
    phi, base = raw[:, :-1], raw[:, -1]
    gap = float(np.max(np.abs(phi.sum(axis=1) + base - output))) if len(X) else 0.0
    if gap > ADDITIVITY_TOL:
        raise AssertionError(f"SHAP additivity broken in partition {part_no}: max gap {gap:.3g}")
    name = f"part-{part_no:05d}.parquet"
    folder = Path(spec.folder)
    shap = pd.DataFrame(phi, columns=spec.features)
    shap.insert(0, "model_output", output)
    shap.insert(0, "base_value", base)
    shap.insert(0, "cell_id", feats["cell_id"].to_numpy())
    _write_part(shap, folder / "shap" / name)
    cells = feats[ID_COLUMNS + ([spec.target] if spec.target else [])].copy()
    cells["prediction"] = output
    if p_det is not None:
        cells["p_deteriorating"] = p_det
    cells["base_value"] = base
    cells["model_output"] = output
    fd = np.asarray(spec.feature_domain)
    for d in spec.domains:
        cells[f"shap_{d}"] = phi[:, fd == d].sum(axis=1)
    absphi = np.abs(phi)
    tot = absphi.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cells["location_share"] = np.where(tot > 0, absphi[:, np.asarray(spec.location)].sum(axis=1) / tot, np.nan)
    if spec.top:
        order = np.argsort(-absphi, axis=1, kind="stable")[:, :spec.top]
        names = np.asarray(spec.features, dtype=object)
        for j in range(order.shape[1]):
            cells[f"top_feature_{j + 1}"] = names[order[:, j]]
    if "source" in feats.columns:
        cells["source"] = feats["source"].to_numpy()
    _write_part(cells, folder / "cells" / name)
    if spec.write_features:
        _write_part(feats, folder / "features" / name)
    return {"part": part_no, "rows": len(feats), "prediction": output, "gap": gap, "p_deteriorating": p_det}


def _write_part(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: df.to_parquet(tmp, index=False))


# ----------------------------------------------------------------------------- engines
@dataclass
class GridResult:
    """What :func:`run_grid` produced (``features`` only when ``keep_features``)."""

    out_dir: Path
    engine: str
    n_cells: int
    n_partitions: int
    predictions: np.ndarray
    metrics: dict
    max_additivity_gap: float
    timings: dict[str, float]
    paths: dict[str, Path]
    booster: lgb.Booster
    bins: FeatureBins
    features: pd.DataFrame | None = None
    meta: pd.DataFrame | None = None
    run: dict = field(default_factory=dict)
    classifier: lgb.Booster | None = None
    p_deteriorating: np.ndarray | None = None


def _classifier_metrics(y: np.ndarray, threshold: float, p: np.ndarray) -> dict:
    """Base rate, mean probability, Brier score (and the base rate's) and ROC AUC."""
    from sklearn.metrics import roc_auc_score

    ok = ~np.isnan(y)
    label, p = (y[ok] > threshold).astype(float), p[ok]
    if len(label) < 3:
        return {"n": int(len(label))}
    rate = float(label.mean())
    return {"n": int(len(label)), "base_rate": rate, "mean_p": float(p.mean()),
            "brier": float(((p - label) ** 2).mean()), "brier_base_rate": float(((rate - label) ** 2).mean()),
            "roc_auc": float(roc_auc_score(label, p)) if 0 < rate < 1 else float("nan")}


def _metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    ok = ~np.isnan(y)
    y, pred = y[ok], pred[ok]
    if len(y) < 3:
        return {"n": int(len(y))}
    ss = float(((y - y.mean()) ** 2).sum())
    return {"n": int(len(y)), "r2": 1 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else float("nan"),
            "mae": float(np.abs(y - pred).mean()), "spearman": float(spearmanr(y, pred).statistic)}


@functools.cache
def _rank_ordered_client_class():
    from distributed import Client

    class RankOrderedClient(Client):
        """A ``Client`` whose ``who_has`` lists keys in the order of the futures it is given.

        lightgbm.dask makes the worker holding the first listed part LightGBM's rank 0, and
        each rank finds the bins of its share of the features on its own rows only.
        ``distributed`` lists the keys in set order, which changes from process to process: the
        same data on the same cluster grew one of two models (held-out R² 0.18 or 0.32 on the
        test grid). Listing them in part order fixes the ranks, hence the model.
        """

        def who_has(self, futures=None, **kwargs):
            found = super().who_has(futures, **kwargs)
            if futures is None:
                return found
            order = dict.fromkeys(f.key for f in self.futures_of(futures))
            return type(found)({key: found[key] for key in order if key in found})

    return RankOrderedClient


def connect_dask(scheduler: str | None, n_workers: int, memory_limit: str | None = None):
    """A ``distributed.Client`` on ``scheduler`` or on a new LocalCluster of ``n_workers``
    processes of one thread each. Returns ``(client, cluster or None)``.

    The client lists data locations in a fixed order (see ``RankOrderedClient``), and the
    LocalCluster does not steal tasks between workers: which rows each worker holds decides
    LightGBM's bins, so the same input on the same cluster gives the same model.

    Raises
    ------
    DataError
        When dask/distributed are not installed or the scheduler cannot be reached.
    """
    try:
        import dask
        from distributed import LocalCluster
    except ImportError:
        raise DataError("--engine dask", "needs dask and distributed: pip install 'territoria[dask]'") from None
    client_class = _rank_ordered_client_class()
    if scheduler:
        try:
            return client_class(scheduler, timeout="5s"), None
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"--scheduler {scheduler}", f"cannot reach the Dask scheduler ({reason})") from None
    with dask.config.set({"distributed.scheduler.work-stealing": False}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, memory_limit=memory_limit or "auto")
    return client_class(cluster), cluster


def write_partitions(cells: pd.DataFrame, folder: Path, rows_per_partition: int) -> list[str]:
    """Split a grid table sorted by department into whole-department partitions
    (:func:`plan_partitions`) written as ``folder/part-NNNNN.parquet``; returns the paths."""
    part = plan_partitions(cells["department"].to_numpy(), rows_per_partition)
    bounds = np.flatnonzero(np.diff(np.r_[-1, part, part[-1] + 1]))
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for p, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        path = folder / f"part-{p:05d}.parquet"
        cells.iloc[a:b].to_parquet(path, index=False)
        files.append(str(path))
    return files


def read_grid_input(input_path: Path) -> pd.DataFrame:
    """A grid table from one parquet file or a folder of parquet parts (concatenated)."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise DataError(input_path, "grid input not found")
    files = sorted(input_path.glob("*.parquet")) if input_path.is_dir() else [input_path]
    if not files:
        raise DataError(input_path, "no parquet files in this folder")
    try:
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise DataError(input_path, f"cannot read as parquet ({str(exc).splitlines()[0]})") from None


def run_grid(
    out_dir: Path | str,
    *,
    cells: pd.DataFrame | None = None,
    input_path: Path | str | None = None,
    n_cells: int = 2_300_000,
    engine: str = "local",
    scheduler: str | None = None,
    n_workers: int = 2,
    threads: int = 2,
    seed: int | None = None,
    conf: Path | str | None = None,
    write_features: bool = False,
    keep_features: bool = False,
    client=None,
    join_communes: bool | None = None,
    data_dir: Path | str | None = None,
    console: Console | None = None,
) -> GridResult:
    """Features, model, SHAP and outputs for every cell of a grid (see the module doc).

    Parameters
    ----------
    out_dir : path
        Output folder.
    cells : DataFrame, optional
        A grid table (:func:`territoria.features.grid.validate_grid`).
    input_path : path, optional
        A parquet file or a folder of parquet parts holding a grid table. It is read and
        validated on the client, then split into partitions (the Dask workers read those).
    n_cells : int
        Without ``cells`` or ``input_path``: size of the SYNTHETIC grid drawn by
        :func:`territoria.features.synthetic_grid.generate_grid` (not real data).
    engine : {"local", "dask"}
    scheduler : str, optional
        Dask scheduler address; by default a LocalCluster of ``n_workers`` processes.
    n_workers : int
        Workers of the LocalCluster (one thread each).
    threads : int
        LightGBM threads of the local engine.
    seed : int, optional
        Overrides the seed of ``conf/grid.yml`` (synthetic grid, held-out departments, model).
    conf : path, optional
        Replaces ``conf/grid.yml``.
    write_features : bool
        Also write the feature matrix per partition (``grid_features/``).
    keep_features : bool
        Return the feature matrix (with identity columns) in the result (tests, small grids).
    client : distributed.Client, optional
        Use this client instead of connecting (tests).
    join_communes : bool, optional
        Give each cell the commune containing its centre (:mod:`territoria.features.grid_join`,
        dask-geopandas with the Dask engine). By default only when the input has no
        ``parent_commune`` or ``department`` column; ``True`` replaces the input's codes.
    data_dir : path, optional
        Data folder whose commune polygons the join reads (default: the bundled data).
    console : rich Console, optional
        Progress messages.

    Raises
    ------
    DataError
        Unknown engine, unreachable scheduler, a scheduler with the local engine, bad input.
    """
    if engine not in ENGINES:
        raise DataError("--engine", f"unknown engine '{engine}' (expected local or dask)")
    if scheduler and engine != "dask":
        raise DataError("--scheduler", "a scheduler is only used with --engine dask")
    if n_workers < 1:
        raise DataError("--workers", f"needs at least 1 worker, got {n_workers}")
    if threads < 1:
        raise DataError("--threads", f"needs at least 1 thread, got {threads}")
    console = console or Console(quiet=True)
    cfg = load_grid_config(conf)
    if seed is not None:
        cfg = cfg.model_copy(update={"seed": int(seed)})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    registry = load_registry()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    if cells is None and input_path is not None:
        cells = read_grid_input(Path(input_path))
        source_name = str(input_path)
    elif cells is None:
        from territoria.features.synthetic_grid import generate_grid

        console.log(f"drawing a SYNTHETIC grid of {n_cells:,} cells (seed {cfg.seed}; not real data)")
        cells = generate_grid(n_cells, seed=cfg.seed)
        source_name = "synthetic grid"
    else:
        source_name = "grid"
    joined = None
    if join_communes or (join_communes is None and not {"parent_commune", "department"} <= set(cells.columns)):
        from territoria.features.grid_join import assign_communes, commune_polygons

        t1 = time.perf_counter()
        console.log(f"parent communes of {len(cells):,} cells: spatial join of their centres on the commune "
                    f"polygons ({'dask-geopandas' if engine == 'dask' else 'geopandas'})")
        cells, left_out = assign_communes(cells, commune_polygons(data_dir), engine=engine,
                                          npartitions=max(2, n_workers))
        joined = {"engine": "dask-geopandas" if engine == "dask" else "geopandas", "cells_left_out": left_out}
        if left_out:
            console.log(f"{left_out:,} cells whose centre is over 1 km from every commune are left out")
        timings["spatial_join"] = time.perf_counter() - t1
    target = cfg.target if cfg.target in cells.columns else None
    if target is None:
        raise DataError(source_name, "missing target column", column=cfg.target)
    indicators = validate_grid(cells, registry, file=source_name, target=target)
    cells = cells.sort_values(["department", "parent_commune", "northing", "easting"], kind="stable")
    cells = cells.reset_index(drop=True)
    holdout = holdout_departments(cells["department"], cfg.holdout_fraction, cfg.seed)
    timings["input"] = time.perf_counter() - t0

    meta = grid_feature_meta(indicators, registry, period=None)
    feature_names = meta["feature"].tolist()
    domains = sorted(meta["domain"].unique())
    spec_kw = dict(features=feature_names, domains=domains, feature_domain=meta["domain"].tolist(),
                   location=meta["transform"].isin(GRID_LOCATION_TRANSFORMS).tolist(), target=target,
                   top=cfg.top_features, write_features=write_features)
    work = Path(tempfile.mkdtemp(prefix=".grid-work-", dir=out_dir))
    try:
        if engine == "local":
            res = _run_local(cells, indicators, cfg, holdout, target, spec_kw, work, timings, console, keep_features,
                             threads)
        else:
            res = _run_dask(cells, indicators, cfg, holdout, target, spec_kw, work, timings, console,
                            keep_features, scheduler, n_workers, client)
        booster, classifier, threshold, bins, outcomes, features, scheduler_name, workers = res
        t = time.perf_counter()
        outcomes = sorted(outcomes, key=lambda o: o["part"])
        pred = np.concatenate([o["prediction"] for o in outcomes])
        gap = max(o["gap"] for o in outcomes)
        paths = _assemble(out_dir, work, outcomes, pred, write_features)
        paths["meta"] = write_csv(meta, out_dir / "grid_features_meta.csv")
        model_text = booster.model_to_string()
        paths["model"] = write_atomic(out_dir / "grid_model.txt",
                                      lambda tmp: tmp.write_text(model_text, encoding="utf-8"))
        paths["bins"] = write_json(bins.to_json(), out_dir / "grid_bins.json")
        if classifier is not None:
            classifier_text = classifier.model_to_string()
            paths["classifier"] = write_atomic(out_dir / "grid_classifier.txt",
                                               lambda tmp: tmp.write_text(classifier_text, encoding="utf-8"))
        timings["assemble"] = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)

    test = pd.read_parquet(paths["cells"], columns=["in_training", target, "prediction"])
    held = ~test["in_training"].to_numpy()
    metrics = {"holdout_departments": sorted(holdout),
               "holdout": _metrics(test[target].to_numpy(float)[held], test["prediction"].to_numpy()[held]),
               "training": _metrics(test[target].to_numpy(float)[~held], test["prediction"].to_numpy()[~held])}
    p_det = np.concatenate([o["p_deteriorating"] for o in outcomes]) if classifier is not None else None
    if p_det is not None:
        metrics["deteriorating"] = {
            "quantile": cfg.deteriorating_quantile, "threshold": threshold,
            "holdout": _classifier_metrics(test[target].to_numpy(float)[held], threshold, p_det[held])}
    timings["total"] = time.perf_counter() - t0
    synthetic = bool("source" in cells.columns and cells["source"].astype(str).str.startswith("synthetic").any())
    run = {
        "engine": engine, "scheduler": scheduler_name, "workers": workers, "n_cells": int(len(pred)),
        "n_partitions": len(outcomes), "rows_per_partition": cfg.rows_per_partition,
        "synthetic": synthetic, "source": source_name if not synthetic else
        str(cells["source"].iloc[0]), "indicators": indicators, "n_features": len(feature_names),
        "target": target, "contiguity": cfg.contiguity, "lgbm_params": lgbm_params(cfg, 0) | {"n_jobs": None},
        "bins": {"n_bins": n_bins(cfg), "sample_cells": BIN_SAMPLE, "file": "grid_bins.json"},
        "n_trees": int(booster.num_trees()), "metrics": metrics, "max_additivity_gap": gap,
        "additivity_tolerance": ADDITIVITY_TOL, "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "partitions": [{"part": o["part"], "rows": o["rows"]} for o in outcomes],
        "spatial_join": joined,
    }
    paths["run"] = write_json(run, out_dir / "grid_run.json")
    return GridResult(out_dir, engine, int(len(pred)), len(outcomes), pred, metrics, gap, timings, paths,
                      booster, bins, features, meta, run, classifier, p_det)


def _explain_spec(spec_kw: dict, work: Path, threads: int, bins: FeatureBins) -> ExplainSpec:
    return ExplainSpec(folder=str(work), threads=threads, bins=bins, **spec_kw)


def _forced_bins_file(bins: FeatureBins, work: Path) -> str:
    path = work / "forced_bins.json"
    path.write_text(json.dumps(bins.forced_bins()), encoding="utf-8")
    return str(path)


def _run_local(cells, indicators, cfg, holdout, target, spec_kw, work, timings, console, keep_features, threads):
    t = time.perf_counter()
    console.log(f"features of {len(cells):,} cells (local engine)")
    feats = part_features(cells, None, indicators, cfg.contiguity, target, holdout)
    timings["features"] = time.perf_counter() - t
    t = time.perf_counter()
    names = spec_kw["features"]
    y = training_rows(feats, None, target).to_numpy()
    mean = float(y.mean()) if len(y) else 0.0
    bins = FeatureBins.find(bin_sample(feats, names, target, min(1.0, BIN_SAMPLE / max(len(y), 1))),
                            names, n_bins(cfg))
    console.log(f"training LightGBM on {len(y):,} cells")
    params = lgbm_params(cfg, n_jobs=threads, forced_bins=_forced_bins_file(bins, work))
    X = training_rows(feats, bins, target)
    with lightgbm_threads(threads):
        model = lgb.LGBMRegressor(**params)
        model.fit(X, training_rows(feats, None, target, mean))
        booster = add_to_first_tree(model.booster_, mean)
        classifier = threshold = None
        if cfg.deteriorating_quantile > 0:
            threshold = deterioration_threshold(y, cfg.deteriorating_quantile)
            console.log(f"training the deterioration classifier (target above {threshold:.4g})")
            classifier = lgb.LGBMClassifier(**params).fit(X, deteriorating_rows(feats, target, threshold)).booster_
    del X
    timings["train"] = time.perf_counter() - t
    t = time.perf_counter()
    part = plan_partitions(feats["department"].to_numpy(), cfg.rows_per_partition)
    bounds = np.flatnonzero(np.diff(np.r_[-1, part, part[-1] + 1]))
    spec = _explain_spec(spec_kw, work, threads=threads, bins=bins)
    model_text = booster.model_to_string()
    classifier_text = classifier.model_to_string() if classifier is not None else None
    console.log(f"SHAP of every cell, {len(bounds) - 1} partitions")
    outcomes = [explain_part(feats.iloc[a:b].reset_index(drop=True), p, model_text, spec, classifier_text)
                for p, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    timings["shap"] = time.perf_counter() - t
    return booster, classifier, threshold, bins, outcomes, (feats if keep_features else None), None, 1


def _run_dask(cells, indicators, cfg, holdout, target, spec_kw, work, timings, console,
              keep_features, scheduler, n_workers, client):
    import dask.dataframe as dd
    from lightgbm.dask import DaskLGBMClassifier, DaskLGBMRegressor

    own_client = client is None
    cluster = None
    t = time.perf_counter()
    if own_client:
        client, cluster = connect_dask(scheduler, n_workers)
    elif not isinstance(client, _rank_ordered_client_class()):
        # a caller's client: talk to its scheduler through our own, which fixes LightGBM's ranks
        client, own_client = _rank_ordered_client_class()(client.scheduler.address, set_as_default=False), True
    timings["cluster"] = time.perf_counter() - t
    try:
        addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
        workers = len(addresses)
        sched = scheduler or f"LocalCluster ({workers} workers)"
        t = time.perf_counter()
        files = write_partitions(cells, work / "input", cfg.rows_per_partition)

        def on(p: int, fn, *args, **kwargs):
            # partition p always lives on the same worker (p modulo the sorted workers): what
            # each worker holds decides LightGBM's bins, so the same cluster gives the same model
            return client.submit(fn, *args, workers=[addresses[p % workers]], allow_other_workers=False,
                                 **kwargs)

        parts = [on(p, read_part, f, pure=False) for p, f in enumerate(files)]
        keys = client.gather([on(p, part_keys, x) for p, x in enumerate(parts)])
        positions = halo_positions(keys, cfg.contiguity)
        halos = [on(p, take_halo, x, positions[p], indicators) for p, x in enumerate(parts)]
        halo = client.submit(concat_frames, halos)
        feats = [on(p, part_features, x, halo, indicators, cfg.contiguity, target, holdout)
                 for p, x in enumerate(parts)]
        from distributed import wait

        wait(feats)
        del parts, halos, halo
        console.log(f"features of {sum(len(k) for k in keys):,} cells in {len(files)} partitions on {sched}")
        timings["features"] = time.perf_counter() - t
        t = time.perf_counter()
        names = spec_kw["features"]
        # the training targets (8 bytes a cell), in partition order: the table's order, so the
        # mean and the threshold are computed as the local engine computes them
        train_y = np.concatenate([s.to_numpy() for s in client.gather(
            [on(p, training_rows, f, None, target) for p, f in enumerate(feats)])])
        mean = float(train_y.mean()) if len(train_y) else 0.0
        fraction = min(1.0, BIN_SAMPLE / max(len(train_y), 1))
        sample = client.gather([on(p, bin_sample, f, names, target, fraction) for p, f in enumerate(feats)])
        bins = FeatureBins.find(pd.concat(sample, ignore_index=True), names, n_bins(cfg))
        del sample
        xs = [on(p, training_rows, f, bins, target) for p, f in enumerate(feats)]
        ys = [on(p, training_rows, f, None, target, mean) for p, f in enumerate(feats)]
        X = dd.from_delayed(xs, meta=pd.DataFrame({n: pd.Series(dtype=np.float32) for n in names}),
                            verify_meta=False)
        y = dd.from_delayed(ys, meta=pd.Series(dtype=float, name=target), verify_meta=False)
        # lightgbm.dask gives each worker as many LightGBM threads as it has Dask threads
        params = {k: v for k, v in lgbm_params(cfg, n_jobs=1, forced_bins=_forced_bins_file(bins, work)).items()
                  if k != "n_jobs"}
        model = DaskLGBMRegressor(client=client, **params)
        with warnings.catch_warnings():
            # n_jobs is not passed; lightgbm.dask warns about its scikit-learn default anyway
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
            model.fit(X, y)
        booster = add_to_first_tree(model.booster_, mean)
        classifier = threshold = None
        if cfg.deteriorating_quantile > 0:
            threshold = deterioration_threshold(train_y, cfg.deteriorating_quantile)
            console.log(f"training the deterioration classifier (target above {threshold:.4g})")
            labels = [on(p, deteriorating_rows, f, target, threshold) for p, f in enumerate(feats)]
            yc = dd.from_delayed(labels, meta=pd.Series(dtype=np.int64, name=target), verify_meta=False)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
                classifier = DaskLGBMClassifier(client=client, **params).fit(X, yc).booster_
            del labels, yc
        del xs, ys, X, y, train_y
        timings["train"] = time.perf_counter() - t
        t = time.perf_counter()
        spec = _explain_spec(spec_kw, work, threads=1, bins=bins)
        model_text = client.scatter(booster.model_to_string(), broadcast=True)
        classifier_text = (client.scatter(classifier.model_to_string(), broadcast=True)
                           if classifier is not None else None)
        outcomes = client.gather([on(p, explain_part, f, p, model_text, spec, classifier_text)
                                  for p, f in enumerate(feats)])
        timings["shap"] = time.perf_counter() - t
        features = pd.concat(client.gather(feats), ignore_index=True) if keep_features else None
        return booster, classifier, threshold, bins, outcomes, features, sched, workers
    finally:
        if own_client:
            t = time.perf_counter()
            client.close()
            if cluster is not None:
                cluster.close()
            timings["cluster"] = timings.get("cluster", 0.0) + time.perf_counter() - t


def _swap_dir(new: Path, final: Path) -> None:
    """Put folder ``new`` at ``final``: the old folder (if any) is renamed aside first and
    removed after, so ``final`` is always a complete set of parts."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _assemble(out_dir: Path, work: Path, outcomes: list[dict], pred: np.ndarray, write_features: bool) -> dict:
    """``grid_cells.parquet`` (parts streamed into one file, priority ranks added) and the
    ``grid_shap/`` (and ``grid_features/``) folders of parts, moved into place whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy.stats import rankdata

    rank = rankdata(-pred, method="min").astype(np.int64)
    paths: dict[str, Path] = {}
    final = out_dir / "grid_cells.parquet"
    with atomic_path(final) as tmp:
        writer = None
        start = 0
        try:
            for o in outcomes:
                part = pd.read_parquet(work / "cells" / f"part-{o['part']:05d}.parquet")
                cols = list(part.columns)
                part.insert(cols.index("prediction") + 1, "priority_rank", rank[start:start + len(part)])
                start += len(part)
                table = pa.Table.from_pandas(part, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
    paths["cells"] = final
    for name in ("shap", *(("features",) if write_features else ())):
        dest = out_dir / f"grid_{name}"
        _swap_dir(work / name, dest)
        paths[name] = dest
    return paths


def summary_lines(res: GridResult) -> list[str]:
    """A few lines for the console: size, engine, metrics, additivity, timings."""
    m = res.metrics["holdout"]
    t = res.timings
    lines = [
        f"{res.n_cells:,} cells, {res.n_partitions} partitions, engine {res.engine}"
        + (f" ({res.run.get('scheduler')})" if res.engine == "dask" else ""),
        f"held-out departments ({len(res.metrics['holdout_departments'])}): R² {m.get('r2', float('nan')):.3f}, "
        f"Spearman {m.get('spearman', float('nan')):.3f}, MAE {m.get('mae', float('nan')):.3f}",
        f"SHAP for every cell: largest additivity gap {res.max_additivity_gap:.2e} (tolerance {ADDITIVITY_TOL:g})",
        "timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()),
    ]
    det = res.metrics.get("deteriorating")
    if det:
        h = det["holdout"]
        lines.insert(2, f"deteriorating (top {det['quantile']:.0%} of rises): held-out ROC AUC "
                        f"{h.get('roc_auc', float('nan')):.3f}, Brier {h.get('brier', float('nan')):.4f} "
                        f"(base rate's {h.get('brier_base_rate', float('nan')):.4f})")
    if res.run.get("synthetic"):
        lines.append("the grid is SYNTHETIC (territoria.features.synthetic_grid): not real data")
    return lines


def read_run(out_dir: Path | str) -> dict:
    """``grid_run.json`` of a finished grid run."""
    path = Path(out_dir) / "grid_run.json"
    if not path.exists():
        raise DataError(path, "no grid run here: run `territoria grid --out DIR` first")
    return json.loads(path.read_text(encoding="utf-8"))
