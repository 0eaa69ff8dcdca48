"""Pipelines ``backtest`` and ``train``: the index, honest evaluation, final models, forecasts.

Wiring only; the node functions live in :mod:`territoria.models`. Outputs under ``out_dir``
(written atomically):

``index.parquet``, ``index_weights.csv``
    the composite deprivation index at the reference period, its domain scores, and the
    weights used with their rationale (``conf/index.yml``).
``metrics.json``, ``backtest_table.txt``, ``backtest_metrics.csv``, ``backtest_predictions.parquet``
    the trajectory models and every baseline on the same department-blocked folds, and the
    temporal backtests.
``predictions.parquet``
    long format ``zone_code, target, origin, horizon_end, prediction, low_80, high_80,
    low_90, high_90`` for every commune.
``mlflow.db``, ``mlruns/``
    the embedded MLflow store (or ``--tracking-uri``): one run per target with parameters,
    metrics, features, data hashes, the booster and the SHAP values of a seeded sample of
    its training zones (:data:`SHAP_LOG_ZONES`); the model is registered as
    ``territoria-<measure>`` with the alias ``champion``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from territoria.io import write_csv, write_parquet
from territoria.models.backtest import FeatureCache, backtest_folds, predict_target, run_backtest, train_target
from territoria.models.index import DeprivationIndex
from territoria.models.targets import ModelConfig, TargetSpec, load_model_config
from territoria.models.tracking import log_runs, preload, tracking_store
from territoria.pipelines.build_features import FeatureBuild
from territoria.workers import SideProcess, SpareProcess


#: training zones whose SHAP values each MLflow run carries (a seeded sample): enough for
#: the global view (mean |SHAP| per feature) to be stable, while every zone's forecast is
#: explained by the prioritise stage (``explanations.parquet``).
SHAP_LOG_ZONES = 2000


@dataclass
class TrainResult:
    """What the training stage produced."""

    index: pd.DataFrame
    predictions: pd.DataFrame
    index_model: DeprivationIndex | None = None
    backtest: object | None = None
    run_ids: dict[str, str] = field(default_factory=dict)
    models: dict[str, object] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: the worker process still logging the runs to MLflow (``run_train(wait_for_tracking=False)``)
    tracking: SideProcess | None = None

    def wait_for_tracking(self) -> dict[str, str]:
        """Wait for the MLflow runs to be logged and their models registered; the run ids."""
        if self.tracking is not None:
            self.run_ids = self.tracking.result()
            self.tracking = None
        return self.run_ids


def training_specs(config: ModelConfig, as_of: int) -> list[TargetSpec]:
    """For each key target's measure, the latest transition that ended by ``as_of``.

    ``--as-of 2018`` trains income on 2016→2018 and population on 2013→2018: the training
    targets, like the features, use only data for periods up to ``as_of``.
    """
    measures = []
    for spec in config.key_targets():
        if spec.measure not in measures:
            measures.append(spec.measure)
    chosen = []
    for measure in measures:
        candidates = [
            s for s in config.targets.values()
            if s.measure == measure and s.end <= as_of and not getattr(s, "repeated_survey", "keep") == "drop"
        ]
        if candidates:
            chosen.append(max(candidates, key=lambda s: (s.end, s.origin)))
    return chosen


def compute_index(fb: FeatureBuild) -> tuple[pd.DataFrame, pd.DataFrame, DeprivationIndex]:
    """The composite deprivation index of every commune at the reference period, its weights
    and the fitted index."""
    features = fb.features.set_index("zone_code")
    index = DeprivationIndex()
    scores = index.fit_transform(features)
    ident = features[["zone_name", "departement", "epci"]]
    table = ident.join(scores, how="left").reset_index()
    table.insert(1, "period", fb.reference_period)
    return table, index.describe(), index


def run_backtest_stage(fb: FeatureBuild, out_dir: Path, console: Console, as_of: int | None = None,
                       config: ModelConfig | None = None, classifier: bool | None = None):
    """Backtest the key targets (those ending by ``as_of``) and write the metrics.

    ``classifier`` also scores the deterioration classifier (default: the configuration's
    ``cv.deterioration_classifier``)."""
    config = config or load_model_config()
    specs = config.key_targets()
    if as_of is not None:
        specs = [s for s in specs if s.end <= as_of] or training_specs(config, as_of)
    result = run_backtest(fb, [s.name for s in specs], config=config, log=console.log, classifier=classifier)
    result.write(out_dir)
    return result


def run_train(
    fb: FeatureBuild,
    out_dir: Path,
    *,
    as_of: int | None = None,
    tracking_uri: str | None = None,
    backtest: bool = True,
    measures: list[str] | None = None,
    config: ModelConfig | None = None,
    console: Console | None = None,
    wait_for_tracking: bool = True,
) -> TrainResult:
    """Index, backtest, final models and forecasts from ``as_of`` (default: the reference period).

    ``measures`` restricts training to some key targets' measures (default: all of them);
    ``config`` replaces ``conf/models.yml`` (``--models-conf``). The runs are logged to MLflow
    by a worker process; with ``wait_for_tracking=False`` the result is returned without
    waiting for it (call :meth:`TrainResult.wait_for_tracking` before reading the store).
    """
    console = console or Console(quiet=True)
    out_dir = Path(out_dir)
    config = config or load_model_config()

    # the MLflow worker imports its modules and opens the store now, while the index and the
    # first design matrices keep one core only
    tracker = SpareProcess(partial(preload, tracking_store(out_dir, tracking_uri)))
    try:
        return _run_train(fb, out_dir, as_of, config, tracker, tracking_uri=tracking_uri, backtest=backtest,
                          measures=measures, console=console, wait_for_tracking=wait_for_tracking)
    finally:
        tracker.close()


def _run_train(fb: FeatureBuild, out_dir: Path, as_of: int | None, config: ModelConfig, tracker: SpareProcess, *,
               tracking_uri: str | None, backtest: bool, measures: list[str] | None, console: Console,
               wait_for_tracking: bool) -> TrainResult:
    t = as_of if as_of is not None else fb.reference_period
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    console.log("composite deprivation index")
    index, weights, index_model = compute_index(fb)
    write_parquet(index, out_dir / "index.parquet", float_dictionary=False)
    write_csv(weights, out_dir / "index_weights.csv")
    timings["index"] = time.perf_counter() - t0

    result = None
    if backtest:
        t0 = time.perf_counter()
        console.log("backtest: trajectory models vs baselines on the same folds")
        result = run_backtest_stage(fb, out_dir, console, as_of=as_of, config=config)
        timings["backtest"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    features = FeatureCache.of(fb)
    forecasts, runs, models = [], [], {}
    specs = [s for s in training_specs(config, t) if measures is None or s.measure in measures]
    for spec in specs:
        console.log(f"training {spec.name} and forecasting {t}→{t + spec.horizon}")
        # the backtest's folds are the calibration folds: their predictions, models and
        # spread model are reused
        folds = backtest_folds(result, spec.name, config.cv.groups) if result is not None else None
        trained = train_target(fb, spec, config, features=features, folds=folds)
        forecasts.append(predict_target(fb, trained, origin=t, horizon_end=t + spec.horizon, features=features))
        metrics = None
        if result is not None:
            m = result.metrics
            metrics = m[m["target"] == spec.name]
        runs.append({
            "run_name": spec.name,
            "model_name": f"territoria-{spec.measure}",
            "params": {"target": spec.model_dump(), "model": config.model, "seed": config.seed,
                       "as_of": t, "weighting": config.weighting},
            "metrics": metrics if metrics is not None and len(metrics) else None,
            "features": trained.meta[trained.meta["feature"].isin(trained.columns)]
            if "feature" in trained.meta else trained.columns,
            "data_hashes": fb.file_hashes,
            "model": trained.booster(),
            "shap_data": _shap_rows(fb, trained, features, sample=SHAP_LOG_ZONES, seed=config.seed),
            "tags": {"target": spec.name, "measure": spec.measure},
        })
        models[spec.name] = trained
    # importing MLflow, explaining the logged samples and writing the store take seconds: a
    # worker does it while the next stage runs
    console.log(f"logging {len(runs)} runs to MLflow and registering their champions (worker process)")
    tracking = tracker.run(log_runs, runs, out_dir if tracking_uri is None else None, tracking_uri)
    # the next stages read the designs at the forecast origin and the prepared targets only
    features.release(keep_period=t)
    predictions = pd.concat(forecasts, ignore_index=True) if forecasts else pd.DataFrame()
    write_parquet(predictions, out_dir / "predictions.parquet", float_dictionary=False)
    timings["train"] = time.perf_counter() - t0
    res = TrainResult(index=index, predictions=predictions, index_model=index_model, backtest=result,
                      models=models, timings=timings, tracking=tracking)
    if wait_for_tracking:
        t0 = time.perf_counter()
        res.wait_for_tracking()
        timings["tracking_wait"] = time.perf_counter() - t0
    return res


def _shap_rows(fb: FeatureBuild, trained, features, sample: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The training zones whose SHAP values are logged: a seeded sample of ``sample`` of them,
    in zone order (their contributions are computed with the run's booster when logged,
    :func:`~territoria.models.tracking.shap_frame`)."""
    X = _design_rows(fb, trained, features)
    if sample is not None and len(X) > sample:
        keep = np.sort(np.random.default_rng(seed).choice(len(X), size=sample, replace=False))
        X = X.iloc[keep]
    return X


def _design_rows(fb: FeatureBuild, trained, features) -> pd.DataFrame:
    """The training design matrix (training zones × trained columns)."""
    from territoria.registry import load_registry

    spec = trained.spec
    X, _ = features.design(spec.measure, spec.origin, load_registry(), rows=pd.Index(trained.oof["zone_code"]),
                           select=False)
    return X.reindex(columns=trained.columns)
