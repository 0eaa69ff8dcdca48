"""One backtest run: the trajectory model and every baseline, on the same folds.

:func:`run_backtest` takes a :class:`~territoria.pipelines.build_features.FeatureBuild` and
target names from ``conf/models.yml`` and returns a :class:`BacktestResult`:

* ``metrics`` – tidy table ``target, model, scheme, metric, value`` (scheme
  ``cv_departement`` / ``cv_region`` for spatially blocked CV, ``temporal`` for the temporal
  backtests), with the LightGBM model (``lightgbm``), the ``ridge`` baseline on the same
  features, ``persistence_zero`` (no change), ``last_trend`` and ``spatial_lag``; the
  classifier (``lightgbm_classifier``: Brier score, base-rate Brier, ECE, ROC AUC); the
  interval coverage of the model (``coverage_80``, ``width_80``...);
* ``predictions`` – out-of-fold predictions of every model and the intervals, per zone;
* ``coverage`` – interval coverage overall and by group; ``reliability`` – the classifier's
  reliability table;
* :meth:`BacktestResult.table` – a readable text table with the ratio of the model's
  Spearman rho to the best baseline's; :meth:`BacktestResult.to_dict` – ``metrics.json``.

:func:`train_and_predict` fits a target on all its zones and predicts another origin
(``territoria train``/``run --as-of``), with conformal intervals calibrated on the
department-blocked out-of-fold residuals: the long ``predictions.parquet`` format.

How a target is scored (department-blocked CV by default):

1. the target table (:func:`~territoria.models.targets.target_table`) of zones with at least
   ``train_min_population`` inhabitants, the scored zones being those with at least
   ``min_population``;
2. the design matrix at the origin (``features_at(origin)`` + panel history, see
   :func:`~territoria.models.trajectory.design_matrix`): no value dated after the origin;
3. departments dealt to folds (:class:`~territoria.models.validation.SpatialGroupKFold` on the
   scored zones); every model is fitted on the other folds' zones and predicts the held-out
   fold's scored zones; the baselines are computed on the same zones.
"""

from __future__ import annotations

import json
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from territoria.features.build import zone_cube
from territoria.features.panel import forget_wide_tables
from territoria.models import metrics as mx
from territoria.models.baselines import RidgeBaseline, baseline_predictions
from territoria.models.intervals import (
    SplitConformal,
    coverage_table,
    cross_conformal_intervals,
    fit_spread_model,
    level_suffix,
    predict_spread,
    zone_groups,
)
from territoria.models.targets import (
    ModelConfig,
    TargetSpec,
    load_model_config,
    measure_at,
    measure_periods,
    population_at,
    target_spec,
    target_table,
)
from territoria.models.trajectory import (
    DeteriorationClassifier,
    HurdleRegressor,
    SharedBins,
    TrajectoryRegressor,
    design_matrix,
    fits_at_once,
    predicting_with,
    restrict_design,
)
from territoria.models.validation import SpatialGroupKFold
from territoria.registry import load_registry

MODEL = "lightgbm"
BASELINES = ("ridge", "persistence_zero", "last_trend", "spatial_lag")
NAIVE = ("persistence_zero", "last_trend", "spatial_lag")


# --------------------------------------------------------------------------- data of a target
@dataclass
class TargetData:
    """Everything a target is fitted and scored on."""

    spec: TargetSpec
    table: pd.DataFrame  # target_table of the training-eligible zones
    X: pd.DataFrame
    meta: pd.DataFrame
    groups: np.ndarray
    scored: np.ndarray  # bool: zones scored (population >= min_population)
    #: zones below the training threshold (their target table, design rows and groups), which
    #: the cross-validation predicts out of fold for the fairness audit only; None: not built
    below: tuple[pd.DataFrame, pd.DataFrame, np.ndarray] | None = None
    #: the bins of ``X`` by their LightGBM settings (:func:`shared_bins`), found once for the
    #: cross-validation and the final model of a prepared target
    bins: dict = field(default_factory=dict, repr=False, compare=False)


class FeatureCache:
    """``features_at(t)`` of a FeatureBuild, computed once per origin, and the latest design
    matrices of targets (:meth:`design`).

    :meth:`of` returns the cache attached to a build, so that every stage (backtest, train,
    predict, the stability refits) of one process shares it.
    """

    #: design matrices kept (about 60 MB each for the communes): the three key targets at
    #: their origins and at the reference period, which the backtest, the final models, the
    #: forecasts and the stability refits all read
    max_designs = 6
    #: prepared targets kept (:func:`prepare_target`, about 25 MB each): the key targets',
    #: which the backtest prepares last and the final models and stability refits read again
    max_targets = 3

    def __init__(self, feature_build) -> None:
        # a weak reference: the build holds its cache (:meth:`of`), and a cycle would keep
        # both, with their gigabyte of frames, until the next full garbage collection
        try:
            self._fb = weakref.ref(feature_build)
        except TypeError:  # not weak-referenceable, so it cannot hold its cache either
            self._fb = lambda: feature_build
        self._cache: dict[int, tuple[pd.DataFrame, pd.DataFrame]] = {}
        self._designs: OrderedDict[tuple, tuple] = OrderedDict()
        self._targets: OrderedDict[tuple, tuple] = OrderedDict()
        self._cubes: OrderedDict[int, pd.DataFrame] = OrderedDict()

    @property
    def fb(self):
        fb = self._fb()
        if fb is None:
            raise ReferenceError("the feature build of this cache was freed")
        return fb

    @classmethod
    def of(cls, feature_build) -> FeatureCache:
        cache = getattr(feature_build, "_territoria_feature_cache", None)
        if cache is None:
            cache = cls(feature_build)
            try:
                feature_build._territoria_feature_cache = cache
            except AttributeError:  # a build that takes no attribute: an unshared cache
                pass
        return cache

    def __call__(self, t: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        if t not in self._cache:
            if t == getattr(self.fb, "reference_period", None):
                self._cache[t] = (self.fb.features, self.fb.meta)
            else:
                self._cache[t] = self.fb.features_at(t)
        return self._cache[t]

    def clear(self) -> None:
        """Forget every matrix (a stage that no longer needs them gives the memory back)."""
        self._cache.clear()
        self._designs.clear()
        self._targets.clear()
        self._cubes.clear()

    def design(self, measure: str, origin: int, registry, rows=None, select: bool = True
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``design_matrix`` of ``measure`` at ``origin`` on ``rows`` (same arguments and
        result), the full matrix computed once and kept among the :attr:`max_designs` latest."""
        key = (measure, int(origin), id(registry))
        # the registry itself is kept with the matrix: an id is only unique while it lives
        if key in self._designs and self._designs[key][0] is registry:
            self._designs.move_to_end(key)
        else:
            fb = self.fb
            F, meta = self(origin)
            self._designs[key] = (registry, *design_matrix(F, meta, fb.panel, fb.graph, fb.identity, registry,
                                                           measure, origin, select=False,
                                                           cube=self.cube(origin)))
            while len(self._designs) > self.max_designs:
                self._designs.popitem(last=False)
        _, X, M = self._designs[key]
        return restrict_design(X, M, rows, select)

    def release(self, keep_period: int | None = None) -> None:
        """Forget what only builds design matrices once they are built: the panel's wide
        tables, the features at other periods than ``keep_period`` and the design matrices at
        other origins (all of them when None), about 50 MB each. The prepared targets stay."""
        self._cubes.clear()
        forget_wide_tables(self.fb.panel)
        for t in [t for t in self._cache if t != keep_period]:
            del self._cache[t]
        for key in [k for k in self._designs if k[1] != keep_period]:
            del self._designs[key]

    def cube(self, t: int) -> pd.DataFrame:
        """``zone_cube(panel, t)``, kept for the two latest ``t``: the designs of the three key
        targets share their origin (2018 for two of them) and the reference period."""
        if t in self._cubes:
            self._cubes.move_to_end(t)
        else:
            self._cubes[t] = zone_cube(self.fb.panel, t)
            while len(self._cubes) > 2:
                self._cubes.popitem(last=False)
        return self._cubes[t]

    def target_data(self, key: tuple, registry) -> TargetData | None:
        """The prepared target kept under ``key`` with this ``registry``, or None."""
        kept = self._targets.get(key)
        if kept is None or kept[0] is not registry:
            return None
        self._targets.move_to_end(key)
        return kept[1]

    def keep_target_data(self, key: tuple, registry, data: TargetData) -> TargetData:
        """Keep a prepared target among the :attr:`max_targets` latest: the backtest, the
        final model and the stability refits of a target fit on the same table and design
        matrix."""
        self._targets[key] = (registry, data)
        self._targets.move_to_end(key)
        while len(self._targets) > self.max_targets:
            self._targets.popitem(last=False)
        return data


def prepare_target(
    fb, spec: TargetSpec, config: ModelConfig, features: FeatureCache, registry=None,
    group_col: str = "departement", below: bool = False,
) -> TargetData:
    """Target table, design matrix at the origin, groups and scored mask of one target
    (and, with ``below``, the same for the zones under the training threshold).

    The target's own part is prepared once per feature cache and kept
    (:meth:`FeatureCache.target_data`): callers read it, they never modify it.
    """
    registry = registry or load_registry()
    key = (spec.model_dump_json(), config.model_dump_json(), group_col)
    data = features.target_data(key, registry)
    if data is None:
        train_min = min(config.train_min_population, spec.min_population or 0)
        table = target_table(fb.panel, spec, config, registry, min_population=train_min)
        X, M = features.design(spec.measure, spec.origin, registry, rows=table.index)
        groups = fb.identity[group_col].reindex(table.index).astype(str).to_numpy()
        scored = (table["population"] >= (spec.min_population or 0)).to_numpy()
        data = features.keep_target_data(key, registry, TargetData(spec, table, X, M, groups, scored))
    if not below:
        return data
    every = target_table(fb.panel, spec, config, registry, min_population=0)
    every = every.loc[every.index.difference(data.table.index)]
    if not len(every):
        return data
    Xb, _ = features.design(spec.measure, spec.origin, registry, rows=every.index, select=False)
    return replace(data, below=(every, Xb.reindex(columns=data.X.columns),
                                fb.identity[group_col].reindex(every.index).astype(str).to_numpy()))


def make_regressor(spec: TargetSpec, params: dict | None = None):
    """The trajectory model of a target (a hurdle model when the spec models repeated surveys)."""
    reg = TrajectoryRegressor(**(params or {}))
    if spec.repeated_survey == "model":
        clf = DeteriorationClassifier(**{k: v for k, v in (params or {}).items() if k != "objective"})
        return HurdleRegressor(regressor=reg, classifier=clf)
    return reg


def fold_threads(params: dict, n_folds: int) -> int:
    """Folds fitted at once (:func:`~territoria.models.trajectory.fits_at_once`): the backtest
    of the three key targets took 0.96 x the time (benchmarks/README.md, fifteenth measurement)."""
    return fits_at_once(params.get("n_jobs"), n_folds)


def map_folds(fn, folds: list, threads: int) -> list:
    """``[fn(k, n_jobs) for k in folds]``: ``threads`` folds at a time with one LightGBM thread
    each (``n_jobs`` 1), the folds left over one at a time with ``threads`` threads (LightGBM
    and numpy fit without the GIL); the results stay in the order of ``folds``."""
    if threads <= 1:
        return [fn(k, None) for k in folds]
    paired = len(folds) - len(folds) % threads
    with ThreadPoolExecutor(threads, thread_name_prefix="fold") as pool:
        out = list(pool.map(lambda k: fn(k, 1), folds[:paired]))
    return out + [fn(k, threads) for k in folds[paired:]]


def fit_regressor(model, X, y, w, groups, zero=None, bins: SharedBins | None = None):
    """Fit a trajectory model (a hurdle model also takes the repeated-survey mask ``zero``);
    ``bins`` are the :class:`~territoria.models.trajectory.SharedBins` of the rows of ``X``."""
    if isinstance(model, HurdleRegressor):
        return model.fit(X, y, sample_weight=w, groups=groups, structural_zero=zero, bins=bins)
    return model.fit(X, y, sample_weight=w, groups=groups, bins=bins)


def shared_bins(data: TargetData, params: dict, share: bool = True) -> SharedBins | None:
    """The bins of a target's design matrix for all the models of its folds, spreads and
    final model (None with ``share=False``: each fit bins its own rows).

    Kept in ``data.bins`` by the settings LightGBM bins with: the final model of a target
    the backtest cross-validated in this process reuses its bins (0.3 s per target).
    """
    if not share:
        return None
    estimator = TrajectoryRegressor(**params)
    key = json.dumps(SharedBins.params_of(estimator), sort_keys=True)
    if key not in data.bins:
        data.bins[key] = SharedBins(data.X, estimator)
    return data.bins[key]


def _rows_of(bins: SharedBins | None, idx) -> SharedBins | None:
    return None if bins is None else bins.take(idx)


def assign_folds(groups: np.ndarray, scored: np.ndarray, n_splits: int, seed: int,
                 others: np.ndarray | None = None):
    """Fold of every zone: its group's fold, dealt on the scored zones (-1: always trained on).

    With ``others`` (groups of more zones), also returns their folds under the same deal.
    """
    fold_of = SpatialGroupKFold(n_splits, seed).fold_of_groups(groups[scored])
    fold = np.array([fold_of.get(g, -1) for g in groups])
    if others is None:
        return fold
    return fold, np.array([fold_of.get(g, -1) for g in others], dtype=int)


# --------------------------------------------------------------------------- results
@dataclass
class FoldFits:
    """What a target's cross-validation fitted on its department-blocked folds, for the final
    model to reuse (the fits are deterministic: refitting them would give the same numbers).

    ``oof`` and ``spread`` are indexed by zone code (every zone with a fold); ``models`` are
    the fold models in fold order.
    """

    oof: pd.Series
    models: list
    spread: pd.Series | None = None
    spread_model: object | None = None
    spread_floor: float = 0.0


@dataclass
class BacktestResult:
    metrics: pd.DataFrame
    predictions: pd.DataFrame
    coverage: pd.DataFrame
    reliability: pd.DataFrame
    config: dict = field(default_factory=dict)
    #: target name -> its cross-validation's :class:`FoldFits` (not written)
    folds: dict = field(default_factory=dict)

    def summary(self, scheme: str | None = None) -> pd.DataFrame:
        """Wide table: one row per (target, scheme, model), regression metrics as columns."""
        m = self.metrics
        if scheme is not None:
            m = m[m["scheme"] == scheme]
        keep = ["spearman", "r2", "mae", "precision_at_10", "recall_at_10", "future_top10_precision", "n"]
        m = m[m["metric"].isin(keep) & m["model"].isin((MODEL, *BASELINES))]
        wide = m.pivot_table(index=["target", "scheme", "model"], columns="metric", values="value", aggfunc="first")
        order = {k: i for i, k in enumerate((MODEL, *BASELINES))}
        wide = wide.reset_index()
        wide["_o"] = wide["model"].map(order)
        wide = wide.sort_values(["target", "scheme", "_o"]).drop(columns="_o")
        return wide[["target", "scheme", "model", *[k for k in keep if k in wide.columns]]]

    def ratios(self) -> pd.DataFrame:
        """Model Spearman rho over the best baseline's, per target and scheme."""
        rows = []
        sp = self.metrics[self.metrics["metric"] == "spearman"]
        for (target, scheme), g in sp.groupby(["target", "scheme"]):
            v = g.set_index("model")["value"]
            model = v.get(MODEL, np.nan)
            naive = v.reindex(list(NAIVE)).dropna()
            best_naive = naive.idxmax() if len(naive) else None
            allb = v.reindex(list(BASELINES)).dropna()
            best_all = allb.idxmax() if len(allb) else None
            rows.append({
                "target": target, "scheme": scheme, "spearman": model,
                "best_naive_baseline": best_naive,
                "ratio_to_best_naive": model / naive.max() if len(naive) and naive.max() > 0 else np.nan,
                "best_baseline": best_all,
                "ratio_to_best_baseline": model / allb.max() if len(allb) and allb.max() > 0 else np.nan,
            })
        return pd.DataFrame(rows)

    def table(self) -> str:
        """Readable model-vs-baseline table (text)."""
        lines = []
        wide = self.summary()
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 500):
            lines.append(wide.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
            lines.append("")
            lines.append(self.ratios().to_string(index=False, float_format=lambda x: f"{x:.3f}"))
            extra = self.metrics[self.metrics["model"].isin(["lightgbm_classifier"]) |
                                 self.metrics["metric"].str.startswith(("coverage", "width"))]
            if len(extra):
                lines.append("")
                w = extra.pivot_table(index=["target", "scheme", "model"], columns="metric", values="value")
                lines.append(w.reset_index().to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """``metrics.json``: nested target → scheme → model → metric, plus ratios and coverage."""
        out: dict = {"metrics": {}, "ratios": [], "coverage": [], "config": self.config}
        for r in self.metrics.itertuples(index=False):
            val = None if pd.isna(r.value) else float(r.value)
            out["metrics"].setdefault(r.target, {}).setdefault(r.scheme, {}).setdefault(r.model, {})[r.metric] = val
        out["ratios"] = json.loads(self.ratios().to_json(orient="records"))
        out["coverage"] = json.loads(self.coverage.to_json(orient="records"))
        return out

    def write(self, out_dir: Path | str) -> dict[str, Path]:
        """Write ``metrics.json``, ``backtest_metrics.csv``, ``backtest_table.txt``,
        ``backtest_predictions.parquet`` and ``interval_coverage_by_group.csv`` (empirical
        coverage of the 80 and 90 % intervals by density class, territory and size class, for
        auditors) atomically under ``out_dir``."""
        from territoria.io import write_atomic, write_csv, write_json, write_parquet

        out_dir = Path(out_dir)
        paths = {
            "metrics_json": write_json(self.to_dict(), out_dir / "metrics.json"),
            "metrics_csv": write_csv(self.metrics, out_dir / "backtest_metrics.csv"),
            "table": write_atomic(out_dir / "backtest_table.txt",
                                  lambda p: p.write_text(self.table() + "\n", encoding="utf-8")),
            "predictions": write_parquet(self.predictions, out_dir / "backtest_predictions.parquet",
                                         float_dictionary=False),
            "coverage": write_csv(self.coverage, out_dir / "interval_coverage_by_group.csv"),
        }
        return paths


def _tidy(target: str, scheme: str, model: str, values: dict) -> list[dict]:
    return [{"target": target, "model": model, "scheme": scheme, "metric": k, "value": float(v)}
            for k, v in values.items()]


def _score_models(target: str, scheme: str, y, preds: dict, level, sign: int) -> list[dict]:
    rows = []
    for name, p in preds.items():
        m = mx.regression_metrics(y, p, sign)
        p_arr = np.asarray(p, float)
        if np.isfinite(p_arr).any():
            ok = np.isfinite(p_arr)
            m["future_top10_precision"] = mx.future_level_precision(
                np.asarray(level)[ok], np.asarray(y)[ok], p_arr[ok], sign)["model"]
        rows += _tidy(target, scheme, name, m)
    return rows


# --------------------------------------------------------------------------- cross-validation
def cross_validate_target(
    fb, data: TargetData, config: ModelConfig, scheme: str, params: dict | None = None,
    intervals: bool = True, classifier: bool = True, share_bins: bool = True,
):
    """Spatially blocked CV of one target: rows of metrics, predictions, coverage, reliability.

    ``share_bins``: the target's design is binned once for all its fits
    (:class:`~territoria.models.trajectory.SharedBins`); False bins each fit's rows anew."""
    spec, t = data.spec, data.table
    y = t["y"].to_numpy()
    w = t["weight"].to_numpy()
    sign = int(t["sign"].iloc[0])
    zero = t["repeated_survey"].to_numpy()
    below = data.below
    if below is None:
        fold = assign_folds(data.groups, data.scored, config.cv.n_splits, config.seed)
        below_fold = np.zeros(0, int)
    else:
        fold, below_fold = assign_folds(data.groups, data.scored, config.cv.n_splits, config.seed, below[2])
    params = {**config.model, **(params or {})}
    n = len(y)
    pred = {k: np.full(n, np.nan) for k in (MODEL, "ridge")}
    below_pred = np.full(len(below_fold), np.nan)
    prob = np.full(n, np.nan)
    folds = [k for k in range(config.cv.n_splits) if ((fold == k) & data.scored).any()]
    threads = fold_threads(params, len(folds))
    bins = shared_bins(data, params, share_bins)

    def fit_fold(k: int, n_jobs: int | None) -> tuple:
        fold_params = params if n_jobs is None else {**params, "n_jobs": n_jobs}
        # shallow copies: the data are shared, not the objects pandas may reorganise in place
        X = data.X.copy(deep=False)
        tr = np.flatnonzero(fold != k)
        te = np.flatnonzero((fold == k) & data.scored)
        Xtr = X.iloc[tr]
        model = make_regressor(spec, fold_params)
        fit_regressor(model, Xtr, y[tr], w[tr], data.groups[tr], zero[tr], _rows_of(bins, tr))
        # zones the metrics leave out are predicted by the same fold model for the fairness audit
        held = np.flatnonzero(fold == k)
        kb = np.flatnonzero(below_fold == k)
        ridge = RidgeBaseline().fit(Xtr, y[tr], sample_weight=w[tr]).predict(X.iloc[te])
        p = None
        if classifier:
            ref = tr[data.scored[tr]]
            thr = np.quantile(sign * y[ref], 1.0 - config.deteriorating_quantile)
            label = (sign * y[tr] >= thr).astype(int)
            clf = DeteriorationClassifier(**{k2: v for k2, v in fold_params.items() if k2 != "objective"})
            clf.fit(Xtr, label, sample_weight=w[tr], groups=data.groups[tr], bins=_rows_of(bins, tr))
            p = clf.predict_proba(X.iloc[te])[:, 1]
        p_below = model.predict(below[1].copy(deep=False).iloc[kb]) if len(kb) else None
        return model, held, model.predict(X.iloc[held]), kb, p_below, te, ridge, p

    fold_models = []
    for model, held, p_held, kb, p_below, te, ridge, p in map_folds(fit_fold, folds, threads):
        fold_models.append(predicting_with(model, params.get("n_jobs", TrajectoryRegressor().n_jobs)))
        pred[MODEL][held] = p_held
        if p_below is not None:
            below_pred[kb] = p_below
        pred["ridge"][te] = ridge
        if p is not None:
            prob[te] = p
    s = data.scored
    idx = t.index[s]
    base = baseline_predictions(fb.panel, spec, fb.graph, idx)
    preds = {MODEL: pred[MODEL][s], "ridge": pred["ridge"][s], **{c: base[c].to_numpy() for c in base}}
    rows = _score_models(spec.name, scheme, y[s], preds, t["level_origin"].to_numpy()[s], sign)
    out_pred = pd.DataFrame({"zone_code": idx, "target": spec.name, "scheme": scheme, "fold": fold[s],
                             "y": y[s], "level_origin": t["level_origin"].to_numpy()[s], **preds})
    reliability = pd.DataFrame()
    # the deteriorating label of the scored zones, worst decile among them (the auditors'
    # error rates read it, with or without the classifier)
    thr_all = np.quantile(sign * y[s], 1.0 - config.deteriorating_quantile)
    truth = (sign * y[s] >= thr_all).astype(float)
    if classifier:
        rows += _tidy(spec.name, scheme, "lightgbm_classifier", mx.classification_metrics(truth, prob[s]))
        reliability = mx.reliability_table(truth, prob[s]).assign(target=spec.name, scheme=scheme)
        out_pred["prob_deteriorating"] = prob[s]
    out_pred["deteriorating"] = truth.astype(bool)
    coverage = pd.DataFrame()
    spread = spread_model = spread_floor = None
    if intervals:
        levels = tuple(config.intervals.levels)
        if config.intervals.normalised:
            # fitted on every zone with an out-of-fold prediction, as the final model's
            # calibration is (train_target reuses it): the scored zones' spreads are cross-fitted
            cal = np.flatnonzero(np.isfinite(pred[MODEL]))
            cal_spread, spread_model, spread_floor = fit_spread(
                data, cal, np.abs(y[cal] - pred[MODEL][cal]), fold[cal], params, fold_models,
                config.intervals.spread_features, bins, threads)
            spread = np.full(n, np.nan)
            spread[cal] = cal_spread
        iv = cross_conformal_intervals(y[s], pred[MODEL][s], fold[s], levels, None if spread is None else spread[s])
        for c in iv.columns:
            out_pred[c] = iv[c].to_numpy()
        groups = _coverage_groups(fb, idx, spec, config)
        coverage = coverage_table(y[s], iv, groups).assign(target=spec.name, scheme=scheme)
        overall = coverage[coverage["grouping"] == "all"]
        for r in overall.itertuples(index=False):
            sfx = level_suffix(r.level)
            rows += _tidy(spec.name, scheme, MODEL, {f"coverage_{sfx}": r.coverage, f"width_{sfx}": r.mean_width})
    out_pred["scored"] = True
    extra = _unscored_predictions(data, config, scheme, fold, pred[MODEL], below_fold, below_pred,
                                  (spread, spread_model, spread_floor), intervals)
    if len(extra):
        out_pred = pd.concat([out_pred, extra], ignore_index=True)
    cal = np.isfinite(pred[MODEL])
    fits = FoldFits(
        oof=pd.Series(pred[MODEL][cal], index=t.index[cal]), models=fold_models,
        spread=None if spread is None else pd.Series(spread[cal], index=t.index[cal]),
        spread_model=spread_model, spread_floor=0.0 if spread_floor is None else float(spread_floor))
    return rows, out_pred, coverage, reliability, fits


def _unscored_predictions(data: TargetData, config: ModelConfig, scheme: str, fold, pred, below_fold,
                          below_pred, spread: tuple, intervals: bool) -> pd.DataFrame:
    """Out-of-fold predictions of the zones the metrics leave out (``scored`` False): zones
    trained on but under ``min_population``, and zones under the training threshold.

    Only the fairness audit reads them, to measure the models' error where the backtest's
    headline does not look. Their intervals are built like the scored zones' ones: for the
    zones of fold *k*, conformal quantiles of the other folds' scored residuals; with
    normalised intervals, a trained-on zone's spread is its cross-fitted one, and a zone under
    the training threshold's comes from the spread model (which never saw it).
    """
    t, s = data.table, data.scored
    parts = [pd.DataFrame({"zone_code": t.index[~s], "fold": fold[~s], "y": t["y"].to_numpy()[~s],
                           "level_origin": t["level_origin"].to_numpy()[~s], MODEL: pred[~s]})]
    if data.below is not None:
        b = data.below[0]
        parts.append(pd.DataFrame({"zone_code": b.index, "fold": below_fold, "y": b["y"].to_numpy(),
                                   "level_origin": b["level_origin"].to_numpy(), MODEL: below_pred}))
    out = pd.concat(parts, ignore_index=True)
    keep = np.isfinite(out[MODEL].to_numpy())
    out = out[keep].reset_index(drop=True)
    if not len(out):
        return out
    if intervals:
        levels = tuple(config.intervals.levels)
        y_s, p_s, f_s = t["y"].to_numpy()[s], pred[s], fold[s]
        sp_rows, spread_model, floor = spread
        sp_s = sp_u = None
        if sp_rows is not None:
            sp_s = sp_rows[s]
            parts = [sp_rows[~s]]
            if data.below is not None:
                # floored as a forecast's spread is
                parts.append(predict_spread(spread_model, data.below[1], floor))
            sp_u = np.concatenate(parts)[keep]
        for k in np.unique(out["fold"]):
            rows = np.flatnonzero(out["fold"].to_numpy() == k)
            cal = f_s != k
            sc = SplitConformal(levels).fit(y_s[cal], p_s[cal], None if sp_s is None else sp_s[cal])
            iv = sc.predict_interval(out[MODEL].to_numpy()[rows], None if sp_u is None else sp_u[rows])
            for c in iv.columns:
                out.loc[rows, c] = iv[c].to_numpy()
    return out.assign(target=data.spec.name, scheme=scheme, scored=False)


def spread_columns(models: list, columns, n_features: int | None) -> list[str]:
    """The ``n_features`` columns (in design order) on which the fold ``models`` split for
    most of their gain: each booster's gain as a share of its total, summed over the boosters
    (both parts of a hurdle model). Every column when ``n_features`` is None or not smaller.

    The spread model estimates how large a model's error is where it is sure or unsure; on the
    key targets, the 60 columns of most gain give intervals whose interval score is within
    0.6 % of the whole design's, for half the spread model's fitting time (benchmarks/README.md,
    twenty-fourth measurement).
    """
    columns = [str(c) for c in columns]
    if n_features is None or n_features >= len(columns):
        return columns
    gain = np.zeros(len(columns))
    for model in models:
        parts = [model.regressor_, model.classifier_] if isinstance(model, HurdleRegressor) else [model]
        for part in parts:
            if part is None:
                continue
            g = part.booster_.feature_importance(importance_type="gain")
            if len(g) != len(columns):
                raise ValueError(f"a fold model has {len(g)} features, the design {len(columns)} columns")
            if g.sum() > 0:
                gain += g / g.sum()
    keep = np.sort(np.argsort(-gain, kind="stable")[:n_features])
    return [columns[i] for i in keep]


def fit_spread(data: TargetData, cal, abs_residual, fold, params: dict, fold_models: list,
               n_features: int | None, bins: SharedBins | None, threads: int = 1):
    """The spread model of a target (:func:`~territoria.models.intervals.fit_spread_model`)
    on its rows ``cal``, reading the :func:`spread_columns` of its ``fold_models``.

    ``bins``: the target's shared bins (None: each fit bins its rows); a column subset gets
    bins of its own, found once for the six fits."""
    spread_params = _spread_params(params)
    cols = spread_columns(fold_models, data.X.columns, n_features)
    if len(cols) == data.X.shape[1]:
        X, spread_bins = data.X.iloc[cal], _rows_of(bins, cal)
    else:
        X = data.X.iloc[cal, [data.X.columns.get_loc(c) for c in cols]]
        spread_bins = None if bins is None else SharedBins(X, TrajectoryRegressor(**spread_params))
    return fit_spread_model(X, abs_residual, data.groups[cal], fold, params=spread_params, bins=spread_bins,
                            threads=threads)


def _spread_params(params: dict) -> dict:
    """What the spread model takes from the trajectory model's parameters: its own shape stays
    (small, regularised), but the histogram size and threads follow the run's settings."""
    return {k: params[k] for k in ("n_jobs", "random_state", "max_bin") if k in params}


def _coverage_groups(fb, idx, spec: TargetSpec, config: ModelConfig) -> pd.DataFrame:
    pop = population_at(fb.panel, spec.origin).reindex(idx)
    dens_periods = measure_periods(fb.panel, "population_density", upto=spec.origin)
    density = measure_at(fb.panel, "population_density", dens_periods[-1]).reindex(idx) if dens_periods else None
    zone = fb.identity["zone"].reindex(idx)
    return zone_groups(pop, density, zone, config.intervals.urban_density).reset_index(drop=True)


# --------------------------------------------------------------------------- temporal backtest
def temporal_backtest_target(
    fb, fit: TargetData, score: TargetData, config: ModelConfig, params: dict | None = None
):
    """Fit on the earlier transition (all its zones), score the later one (its scored zones).

    The two design matrices share the columns both origins have (history features are named
    by lag, so ``lag1`` is the latest change at either origin). Predictions are rescaled to
    the scored horizon (``h_score / h_fit``).
    """
    params = {**config.model, **(params or {})}
    cols = [c for c in fit.X.columns if c in score.X.columns]
    scale = score.spec.horizon / fit.spec.horizon
    t0, t1 = fit.table, score.table
    s = score.scored
    Xs = score.X.loc[:, cols].iloc[np.flatnonzero(s)]
    model = make_regressor(fit.spec, params)
    fit_regressor(model, fit.X[cols], t0["y"].to_numpy(), t0["weight"].to_numpy(), fit.groups,
                   t0["repeated_survey"].to_numpy())
    ridge = RidgeBaseline().fit(fit.X[cols], t0["y"].to_numpy(), sample_weight=t0["weight"].to_numpy())
    idx = t1.index[s]
    base = baseline_predictions(fb.panel, score.spec, fb.graph, idx)
    preds = {MODEL: model.predict(Xs) * scale, "ridge": ridge.predict(Xs) * scale,
             **{c: base[c].to_numpy() for c in base}}
    name = f"{score.spec.name}<-{fit.spec.name}"
    y = t1["y"].to_numpy()[s]
    rows = _score_models(name, "temporal", y, preds, t1["level_origin"].to_numpy()[s], int(t1["sign"].iloc[0]))
    rows += _tidy(name, "temporal", MODEL, {"n_features": float(len(cols))})
    out = pd.DataFrame({"zone_code": idx, "target": name, "scheme": "temporal", "fold": -1, "y": y,
                        "level_origin": t1["level_origin"].to_numpy()[s], **preds, "scored": True})
    return rows, out


# --------------------------------------------------------------------------- one run
def run_backtest(
    feature_build,
    targets=None,
    config: ModelConfig | None = None,
    scheme: str | None = None,
    temporal: bool = True,
    intervals: bool = True,
    classifier: bool | None = None,
    params: dict | None = None,
    features: FeatureCache | None = None,
    log=None,
    cv: bool = True,
    share_bins: bool = True,
) -> BacktestResult:
    """Backtest ``targets`` (names or specs; default: the configuration's key targets).

    ``scheme`` is the CV grouping (``departement`` by default from the configuration, or
    ``region``). ``temporal`` also runs the configured temporal backtests whose scored target
    is among ``targets`` (all of them when ``targets`` is None). ``params`` override the
    LightGBM defaults of ``conf/models.yml``. ``cv=False`` runs the temporal backtests only.
    ``classifier`` also scores the deterioration classifier on the folds (default: the
    configuration's ``cv.deterioration_classifier``). ``share_bins=False`` bins every fit's
    rows anew instead of once per target (slower; ``benchmarks/shared_bins.py`` compares).
    """
    config = config or load_model_config()
    if classifier is None:
        classifier = config.cv.deterioration_classifier
    registry = load_registry()
    group_col = scheme or config.cv.groups
    scheme_name = f"cv_{group_col}"
    specs = [target_spec(t, config) for t in targets] if targets is not None else config.key_targets()
    features = features or FeatureCache.of(feature_build)
    log = log or (lambda msg: None)
    rows, preds, cov, rel, folds = [], [], [], [], {}

    def prep(spec, below=False):
        log(f"design matrix of {spec.name} (origin {spec.origin})")
        return prepare_target(feature_build, spec, config, features, registry, group_col, below=below)

    # the temporal backtests run first so that the key targets, which the final models, the
    # forecasts and the stability refits read next, are the latest in the feature cache;
    # their rows are reported after the cross-validation's
    temporal_rows, temporal_preds = [], []
    if temporal:
        names = {s.name for s in specs}
        for pair in config.temporal_backtests:
            if targets is not None and pair.score not in names:
                continue
            fit_spec, score_spec = config.targets[pair.fit], config.targets[pair.score]
            log(f"temporal backtest: fit {fit_spec.name}, score {score_spec.name}")
            r, p = temporal_backtest_target(feature_build, prep(fit_spec), prep(score_spec), config, params)
            temporal_rows += r
            temporal_preds.append(p)
    for spec in specs if cv else []:
        data = prep(spec, below=True)
        log(f"cross-validating {spec.name}: {int(data.scored.sum())} zones scored, {data.X.shape[1]} features")
        r, p, c, rl, folds[spec.name] = cross_validate_target(
            feature_build, data, config, scheme_name, params, intervals, classifier, share_bins)
        rows += r
        preds.append(p)
        cov.append(c)
        rel.append(rl)
    rows += temporal_rows
    preds += temporal_preds
    metrics = pd.DataFrame(rows, columns=["target", "model", "scheme", "metric", "value"])
    return BacktestResult(
        metrics=metrics,
        predictions=pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(),
        coverage=pd.concat(cov, ignore_index=True) if cov else pd.DataFrame(),
        reliability=pd.concat(rel, ignore_index=True) if rel else pd.DataFrame(),
        config={"scheme": scheme_name, "targets": [s.name for s in specs],
                "model": {**config.model, **(params or {})}, "seed": config.seed,
                "min_population": config.min_population,
                "train_min_population": config.train_min_population, "weighting": config.weighting,
                "deterioration_classifier": bool(classifier)},
        folds=folds,
    )


# --------------------------------------------------------------------------- train and predict
@dataclass
class TrainedTarget:
    """A target's model fitted on all its zones, with what prediction needs."""

    spec: TargetSpec
    model: object
    columns: list[str]
    conformal: SplitConformal
    spread_model: object | None
    spread_floor: float
    meta: pd.DataFrame
    oof: pd.DataFrame  # out-of-fold predictions used for calibration
    #: the calibration folds' models (fitted without the fold's departments), in fold order:
    #: the stability audit's delete-a-group jackknife replicates of the forecasts
    fold_models: list = field(default_factory=list)

    def booster(self):
        m = self.model.regressor_ if isinstance(self.model, HurdleRegressor) else self.model
        return m.booster_


def backtest_oof(result: BacktestResult, target: str, group_col: str) -> pd.Series | None:
    """The cross-validation's out-of-fold model predictions of ``target`` (zone code →
    prediction; scored, unscored and under-threshold zones alike); None if it was not
    cross-validated with ``group_col``."""
    p = result.predictions
    if not len(p) or "scheme" not in p:
        return None
    p = p[(p["target"] == target) & (p["scheme"] == f"cv_{group_col}")]
    if not len(p):
        return None
    return pd.Series(p[MODEL].to_numpy(float), index=pd.Index(p["zone_code"], name="zone_code"))


def backtest_folds(result: BacktestResult, target: str, group_col: str) -> FoldFits | None:
    """The cross-validation's :class:`FoldFits` of ``target`` if it was cross-validated with
    ``group_col`` in this process (None otherwise)."""
    if result.config.get("scheme") != f"cv_{group_col}":
        return None
    return result.folds.get(target)


def train_target(fb, spec, config: ModelConfig | None = None, params: dict | None = None,
                 features: FeatureCache | None = None, oof: pd.Series | None = None,
                 folds: FoldFits | None = None) -> TrainedTarget:
    """Fit a target on all its zones; calibrate intervals on department-blocked OOF residuals.

    ``oof`` are out-of-fold predictions of the same folds and parameters (the backtest's,
    :func:`backtest_oof`): they are used instead of refitting the folds when they cover
    exactly the zones the folds predict (the fits are deterministic, so they are the same
    numbers), otherwise the folds are refitted. ``folds`` (the backtest's
    :func:`backtest_folds`) also gives the fold models and the spread model under the same
    condition.
    """
    config = config or load_model_config()
    spec = target_spec(spec, config)
    features = features or FeatureCache.of(fb)
    data = prepare_target(fb, spec, config, features, load_registry(), config.cv.groups)
    params = {**config.model, **(params or {})}
    t = data.table
    y, w, zero = t["y"].to_numpy(), t["weight"].to_numpy(), t["repeated_survey"].to_numpy()
    fold = assign_folds(data.groups, data.scored, config.cv.n_splits, config.seed)
    bins = shared_bins(data, params)
    if folds is not None:
        oof = folds.oof
    given = None
    if oof is not None and oof.index.is_unique:
        given = oof.reindex(t.index).to_numpy(float)
        if not np.array_equal(np.isfinite(given), fold >= 0):
            given = None
    fold_models = []
    if given is not None:
        oof = given
        fold_models = list(folds.models) if folds is not None else []
    else:
        folds = None
        oof = np.full(len(y), np.nan)
        for k in range(config.cv.n_splits):
            tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            if len(te):
                m = make_regressor(spec, params)
                fit_regressor(m, data.X.iloc[tr], y[tr], w[tr], data.groups[tr], zero[tr], bins.take(tr))
                oof[te] = m.predict(data.X.iloc[te])
                fold_models.append(m)
    cal = np.flatnonzero(np.isfinite(oof))
    spread_model, floor, spread = None, 0.0, None
    if config.intervals.normalised:
        if folds is not None and folds.spread is not None and folds.spread.index.equals(t.index[cal]):
            spread, spread_model, floor = folds.spread.to_numpy(float), folds.spread_model, folds.spread_floor
        else:
            spread, spread_model, floor = fit_spread(
                data, cal, np.abs(y[cal] - oof[cal]), fold[cal], params, fold_models,
                config.intervals.spread_features, bins)
    conformal = SplitConformal(config.intervals.levels).fit(y[cal], oof[cal], spread)
    model = make_regressor(spec, params)
    fit_regressor(model, data.X, y, w, data.groups, zero, bins)
    oof_df = pd.DataFrame({"zone_code": t.index, "y": y, "oof": oof, "fold": fold})
    return TrainedTarget(spec, model, list(data.X.columns), conformal, spread_model, floor, data.meta, oof_df,
                         fold_models)


def predict_target(fb, trained: TrainedTarget, origin: int, horizon_end: int,
                   features: FeatureCache | None = None) -> pd.DataFrame:
    """Predictions for every commune at ``origin`` over ``horizon_end - origin`` years.

    The design matrix is built at ``origin`` (data dated <= origin only) with the trained
    columns; the change is rescaled from the fitted horizon to the requested one, intervals
    too. Long format: ``zone_code, target, origin, horizon_end, prediction, low_80, high_80,
    low_90, high_90``.
    """
    features = features or FeatureCache.of(fb)
    spec = trained.spec
    X, _ = features.design(spec.measure, origin, load_registry(), select=False)
    return predict_frame(trained, X.reindex(columns=trained.columns), origin, horizon_end)


def predict_frame(trained: TrainedTarget, X: pd.DataFrame, origin: int, horizon_end: int) -> pd.DataFrame:
    """Long-format forecasts of the zones of a design matrix ``X`` (trained columns)."""
    spec = trained.spec
    scale = (horizon_end - origin) / spec.horizon
    pred = trained.model.predict(X)
    spread = None
    if trained.spread_model is not None:
        spread = predict_spread(trained.spread_model, X, trained.spread_floor)
    iv = trained.conformal.predict_interval(pred, spread)
    out = pd.DataFrame({"zone_code": X.index, "target": spec.measure, "origin": origin,
                        "horizon_end": horizon_end, "prediction": pred * scale})
    for c in iv.columns:
        out[c] = iv[c].to_numpy() * scale
    return out.reset_index(drop=True)
