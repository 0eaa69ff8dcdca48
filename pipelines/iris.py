"""Pipeline ``iris``: the IRIS level of the main job (``territoria run --level iris``).

The IRIS of the communes divided into IRIS (:mod:`territoria.features.iris`) are scored on
their own statistics and their commune's context: a composite deprivation index of their
IRIS indicators, a LightGBM forecast of the change of their RSA share (CNAF) with an honest
department-blocked backtest against naive baselines and conformal intervals, a priority
score and flags, and TreeSHAP explanations split into levers and context. The commune
feature build of the same run provides the commune context. Parameters: ``conf/iris.yml``.

Outputs under ``<out_dir>/iris/`` (written atomically):

``features.parquet``, ``features_meta.csv``
    the IRIS feature matrix at the reference period and its metadata (what the index and the
    cards read); ``forecast_features.parquet`` and its ``_meta.csv``: the same at the
    forecast origin (the forecast's input).
``index.parquet``
    the IRIS deprivation index and its domain scores at the reference period.
``metrics.json``, ``backtest_table.txt``
    cross-validated and temporal backtests of the model and every baseline, interval coverage.
``priorities.csv``
    one row per IRIS: identity, index, forecast with 80/90 % intervals, priority score with
    its interval, ranks (national, in the commune), flag, top levers (fr, en), SHAP split.
``explanations.parquet``
    TreeSHAP of the forecast for every IRIS (top 20 features plus ``(other features)``).
``model.txt``
    the LightGBM booster; ``map.html``, ``report.html`` (priority IRIS by commune and department,
    pockets hidden by the commune average, backtests and limits), ``zones/<code>.html``
    (flagged IRIS); ``iris_run.json`` (versions, configuration, data hashes, MLflow run, timings)
    and ``manifest.json`` (hashes of every input and output: ``territoria verify <out>/iris``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console

from territoria.errors import DataError
from territoria.features.iris import COMMUNE_PREFIX, iris_design, iris_feature_matrix, iris_identity, iris_universe
from territoria.io import write_atomic, write_csv, write_json, write_parquet
from territoria.models.baselines import RidgeBaseline
from territoria.models.explain import check_additivity, feature_info, tidy_contributions, tree_contributions
from territoria.models.index import DeprivationIndex
from territoria.models.intervals import SplitConformal, coverage_table, cross_conformal_intervals, level_suffix
from territoria.models.metrics import regression_metrics
from territoria.models.priority import ScoreWeights
from territoria.models.targets import change, indicator_sign, measure_at, measure_periods
from territoria.models.tracking import default_tracking_uri, log_training, register_champion
from territoria.models.trajectory import TrajectoryRegressor
from territoria.models.validation import SpatialGroupKFold
from territoria.pipelines.report import _num
from territoria.registry import load_registry
from territoria.settings import load_config
from territoria.verify import git_commit, package_versions, write_manifest


# --------------------------------------------------------------------------- configuration
class IrisTransition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    measure: str
    origin: int
    end: int

    @model_validator(mode="after")
    def _order(self) -> IrisTransition:
        if self.end <= self.origin:
            raise ValueError(f"end ({self.end}) must come after origin ({self.origin})")
        return self

    @property
    def horizon(self) -> int:
        return self.end - self.origin


class IrisConfig(BaseModel):
    """``conf/iris.yml``, typed."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 42
    universe_sources: list[str] = Field(min_length=1)
    target: IrisTransition
    temporal_fit: IrisTransition | None = None
    min_recipients: float = Field(100, ge=0)
    weight_measure: str = "caf_recipients"
    n_splits: int = Field(5, ge=2)
    interval_levels: list[float] = [0.8, 0.9]
    weights: ScoreWeights = ScoreWeights()
    flag_share: float = Field(0.10, gt=0, lt=1)
    top_levers: int = Field(3, ge=1)
    model: dict = {}

    @model_validator(mode="after")
    def _check(self) -> IrisConfig:
        if self.weights.level + self.weights.trajectory <= 0:
            raise ValueError("weights: level + trajectory must be positive")
        if self.temporal_fit is not None and self.temporal_fit.measure != self.target.measure:
            raise ValueError("temporal_fit must forecast the target's measure")
        return self


def load_iris_config(path: Path | str | None = None) -> IrisConfig:
    """``conf/iris.yml`` (or ``path``), validated; errors name the file and the setting."""
    return load_config(IrisConfig, path, "iris.yml", "IRIS configuration")


# --------------------------------------------------------------------------- data
class IrisFeatures:
    """IRIS feature matrices at any period, from a commune feature build (computed once each)."""

    def __init__(self, fb, config: IrisConfig) -> None:
        self.fb = fb
        self.registry = load_registry()
        universe = iris_universe(fb.panel, config.universe_sources)
        self.identity = iris_identity(universe, fb.identity)
        self._cache: dict[int, tuple[pd.DataFrame, pd.DataFrame]] = {}

    def __call__(self, t: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        if t not in self._cache:
            com = (self.fb.features, self.fb.meta) if t == self.fb.reference_period else self.fb.features_at(t)
            self._cache[t] = iris_feature_matrix(self.fb.panel, self.identity, *com, self.registry, t)
        return self._cache[t]


def iris_target(panel: pd.DataFrame, spec: IrisTransition, config: IrisConfig, zones: pd.Index) -> pd.DataFrame:
    """The IRIS of ``zones`` a transition is modelled and scored on: ``y`` (change in points),
    the recipients at the origin, ``weight`` = sqrt(recipients); IRIS under ``min_recipients``
    or missing at either vintage (an IRIS recoded in between) are left out."""
    have = measure_periods(panel, spec.measure)
    for p in (spec.origin, spec.end):
        if p not in have:
            raise DataError("panel", f"IRIS measure '{spec.measure}' has no vintage {p} (has {have})")
    y = change(measure_at(panel, spec.measure, spec.end, "iris"),
               measure_at(panel, spec.measure, spec.origin, "iris")).dropna()
    y = y[y.index.isin(zones)]
    rec = measure_at(panel, config.weight_measure, spec.origin, "iris").reindex(y.index)
    keep = rec >= config.min_recipients
    out = pd.DataFrame({"y": y[keep], "recipients": rec[keep]})
    out["weight"] = np.sqrt(out["recipients"])
    out.index.name = "zone_code"
    return out.sort_index()


def previous_change(panel: pd.DataFrame, spec: IrisTransition) -> pd.Series | None:
    """The change of the measure over the horizon before the origin (``None`` if absent)."""
    periods = measure_periods(panel, spec.measure, upto=spec.origin)
    before = [p for p in periods if p < spec.origin]
    if not before or spec.origin not in periods:
        return None
    start = min(before, key=lambda p: abs(spec.origin - p - spec.horizon))
    prev = change(measure_at(panel, spec.measure, spec.origin, "iris"),
                  measure_at(panel, spec.measure, start, "iris"))
    return prev * spec.horizon / (spec.origin - start)


def baseline_predictions(panel: pd.DataFrame, spec: IrisTransition, identity: pd.DataFrame, index) -> pd.DataFrame:
    """Fitting-free baselines: no change, the last trend, and the commune's trend (mean last
    trend of the other IRIS of the same commune: "an IRIS follows its commune")."""
    out = pd.DataFrame({"persistence_zero": 0.0}, index=index)
    prev = previous_change(panel, spec)
    if prev is None:
        out["last_trend"] = out["commune_trend"] = np.nan
        return out
    prev = prev.reindex(identity.index)
    commune = identity["parent_commune"]
    total = prev.groupby(commune).transform("sum")
    count = prev.notna().groupby(commune).transform("sum")
    others = (total - prev.fillna(0.0)) / (count - prev.notna()).where(lambda c: c > 0)
    out["last_trend"] = prev.reindex(index).to_numpy()
    out["commune_trend"] = others.reindex(index).to_numpy()
    return out


def transitions_upto(config: IrisConfig, panel: pd.DataFrame, reference: int) -> tuple[IrisTransition,
                                                                                        IrisTransition | None]:
    """The target and temporal-fit transitions, moved back so that they end by ``reference``
    (``--as-of``): the latest vintage <= min(end, reference) and the same horizon. The temporal
    backtest is dropped (``None``) when its earlier transition has no vintages."""
    spec = config.target
    have = measure_periods(panel, spec.measure, upto=min(spec.end, reference))
    ends = [p for p in have if p - spec.horizon in have]
    if not ends:
        raise DataError("conf/iris.yml", f"no two vintages of '{spec.measure}' {spec.horizon} years apart "
                                         f"up to {reference} (has {have})")
    shift = spec.end - ends[-1]
    target = IrisTransition(measure=spec.measure, origin=spec.origin - shift, end=spec.end - shift)
    fit = config.temporal_fit
    if fit is not None:
        fit = IrisTransition(measure=fit.measure, origin=fit.origin - shift, end=fit.end - shift)
        if not {fit.origin, fit.end} <= set(have):
            fit = None
    return target, fit


# --------------------------------------------------------------------------- evaluation
def _regressor(config: IrisConfig) -> TrajectoryRegressor:
    return TrajectoryRegressor(**{**config.model, "random_state": config.seed})


def cross_validate(X: pd.DataFrame, table: pd.DataFrame, groups: np.ndarray, config: IrisConfig,
                   baselines: pd.DataFrame, sign: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Department-blocked K-fold: out-of-fold predictions of LightGBM and ridge, the
    baselines on the same IRIS, and their metrics. Returns ``(metrics, oof, fold)``."""
    fold_of = SpatialGroupKFold(config.n_splits, config.seed).fold_of_groups(groups)
    fold = np.array([fold_of[g] for g in groups])
    y, w = table["y"].to_numpy(float), table["weight"].to_numpy(float)
    oof = pd.DataFrame(np.nan, index=table.index, columns=["lightgbm", "ridge"])
    for k in range(config.n_splits):
        tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        model = _regressor(config).fit(X.iloc[tr], y[tr], w[tr], groups=groups[tr])
        oof.iloc[te, 0] = model.predict(X.iloc[te])
        oof.iloc[te, 1] = RidgeBaseline().fit(X.iloc[tr], y[tr], w[tr]).predict(X.iloc[te])
    oof = oof.join(baselines.reindex(table.index))
    rows = [{"model": m, **regression_metrics(y, oof[m].to_numpy(float), sign, w)} for m in oof.columns]
    return pd.DataFrame(rows).set_index("model"), oof, fold


def temporal_backtest(features: IrisFeatures, panel: pd.DataFrame, config: IrisConfig, sign: int,
                      fit_spec: IrisTransition, spec: IrisTransition, table: pd.DataFrame,
                      baselines: pd.DataFrame) -> pd.DataFrame:
    """Fit on ``fit_spec`` (features at its origin), score the transition ``spec`` (its target
    ``table``, features at its origin) against the same ``baselines``."""
    fit_table = iris_target(panel, fit_spec, config, features.identity.index)
    F0, M0 = features(fit_spec.origin)
    X0 = iris_design(F0, M0).reindex(fit_table.index)
    groups = features.identity["departement"].reindex(fit_table.index).astype(str).to_numpy()
    model = _regressor(config).fit(X0, fit_table["y"].to_numpy(float) * spec.horizon / fit_spec.horizon,
                                   fit_table["weight"].to_numpy(float), groups=groups)
    F1, M1 = features(spec.origin)
    X1 = iris_design(F1, M1).reindex(index=table.index, columns=X0.columns)
    preds = baselines.reindex(table.index).copy()
    preds.insert(0, "lightgbm", model.predict(X1))
    y, w = table["y"].to_numpy(float), table["weight"].to_numpy(float)
    rows = [{"model": m, **regression_metrics(y, preds[m].to_numpy(float), sign, w)} for m in preds.columns]
    return pd.DataFrame(rows).set_index("model")


def coverage_groups(identity: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Groups the interval coverage is reported by: mainland / overseas, and the number of
    CNAF recipients (the size of the share's denominator), one row per training IRIS."""
    zone = identity["zone"].reindex(table.index)
    return pd.DataFrame({
        "territory": np.where(zone.eq("drom"), "overseas", "mainland"),
        "recipients": pd.cut(table["recipients"], [-np.inf, 300, 600, np.inf], right=False,
                             labels=["<300", "300-600", "600+"]).astype(str).to_numpy(),
    })


# --------------------------------------------------------------------------- scoring
def percentile(values: pd.Series) -> pd.Series:
    """Percentile (0-100] of each value among the non-missing values (mid-rank for ties)."""
    return values.rank(pct=True, method="average") * 100.0


def _percentile_of(reference: np.ndarray, values) -> np.ndarray:
    """Percentile (0-100] of ``values`` in the sorted ``reference``: for a value of the
    reference, its average rank over n as in :func:`percentile`; between two values, halfway."""
    lo = np.searchsorted(reference, values, side="left")
    hi = np.searchsorted(reference, values, side="right")
    return (lo + hi + 1) / 2.0 / len(reference) * 100.0


def priority_table(identity: pd.DataFrame, index: pd.DataFrame, forecast: pd.DataFrame, sign: int,
                   config: IrisConfig) -> pd.DataFrame:
    """Priority score (0-100), its 80 % interval, ranks and flags of every IRIS.

    score = (w_level × percentile of the index + w_trajectory × percentile of the forecast
    worsening) / (w_level + w_trajectory). The interval replaces the forecast by the bounds
    of its 80 % interval, placed among the forecasts. IRIS without an index (no IRIS
    indicator published) get no score and no rank.
    """
    w_l, w_t = config.weights.level, config.weights.trajectory
    worsening = sign * forecast["prediction"]
    ref = np.sort(worsening.dropna().to_numpy(float))
    bounds = np.sort(sign * forecast[["low_80", "high_80"]].to_numpy(float), axis=1)
    level = percentile(index["deprivation_index"]).reindex(identity.index)

    def placed(values) -> pd.Series:
        return pd.Series(_percentile_of(ref, values), index=forecast.index).reindex(identity.index)

    traj, t_lo, t_hi = placed(worsening.to_numpy(float)), placed(bounds[:, 0]), placed(bounds[:, 1])
    # a missing component (no forecast without the measure at the origin, no index without an
    # IRIS indicator) counts as neutral (the median, 50) and its whole range (0-100) enters the
    # interval: the score says "unknown", it neither hides nor inflates the IRIS
    known_l, known_t = level.notna(), traj.notna()
    out = pd.DataFrame(index=identity.index)
    out["index_percentile"] = level
    out["trajectory_percentile"] = traj
    lv, lv_lo, lv_hi = level.fillna(50.0), level.fillna(0.0), level.fillna(100.0)
    total = w_l + w_t
    out["priority_score"] = (w_l * lv + w_t * traj.fillna(50.0)) / total
    out["priority_score_low"] = (w_l * lv_lo + w_t * t_lo.fillna(0.0)) / total
    out["priority_score_high"] = (w_l * lv_hi + w_t * t_hi.fillna(100.0)) / total
    out.loc[~known_l & ~known_t, ["priority_score", "priority_score_low", "priority_score_high"]] = np.nan
    out["score_basis"] = np.select([known_l & known_t, known_l, known_t], ["index+forecast", "index", "forecast"],
                                   "none")
    score = out["priority_score"]
    out["priority_rank"] = score.rank(ascending=False, method="min").astype("Int64")
    commune = identity["parent_commune"]
    out["rank_in_commune"] = score.groupby(commune).rank(ascending=False, method="min").astype("Int64")
    out["iris_in_commune"] = commune.map(commune.value_counts()).astype("Int64")
    n_flag = int(np.ceil(config.flag_share * score.notna().sum()))
    out["priority_flag"] = out["priority_rank"].le(n_flag).fillna(False).astype(bool)
    return out


def lever_texts(contrib: pd.DataFrame, X: pd.DataFrame, meta: pd.DataFrame, sign: int, k: int,
                lang: str, unit: str) -> pd.Series:
    """The ``k`` levers pushing each IRIS's forecast most towards a worsening, as text:
    ``label = value (+x points)``; empty when no lever worsens it."""
    info = feature_info(meta, contrib.columns)
    lever = info["is_lever"].to_numpy(bool)
    labels = info[f"label_{lang}"].fillna(pd.Series(info.index, index=info.index)).to_numpy(object)
    C = sign * contrib.to_numpy(float)
    C = np.where(lever[None, :] & (C > 0), C, 0.0)
    order = np.argsort(-C, axis=1, kind="stable")[:, :k]
    V = X.reindex(columns=contrib.columns).to_numpy(float)
    texts = []
    for i, cols in enumerate(order):
        parts = [f"{labels[j]} = {'–' if np.isnan(V[i, j]) else _num(V[i, j], lang, 2)} "
                 f"(+{_num(C[i, j], lang, 2)} {unit})" for j in cols if C[i, j] > 0]
        texts.append("; ".join(parts))
    return pd.Series(texts, index=contrib.index)


# --------------------------------------------------------------------------- the stage
@dataclass
class IrisResult:
    priorities: pd.DataFrame
    metrics: dict
    out_dir: Path
    timings: dict[str, float] = field(default_factory=dict)


def run_iris(fb, out_dir: Path | str, *, config: IrisConfig | Path | str | None = None, lang: str = "fr",
             contours: Path | str | None = None, data_dir: Path | None = None, tracking_uri: str | None = None,
             console: Console | None = None) -> IrisResult:
    """The IRIS level end to end on a commune feature build ``fb``; outputs in ``out_dir/iris``.

    ``contours`` is an IGN CONTOURS-IRIS file (GeoPackage or shapefile) for an IRIS map;
    without it the map shows the communes divided into IRIS with their IRIS ranks. The model
    is logged to MLflow (the embedded store of ``out_dir`` unless ``tracking_uri``) and
    registered as ``territoria-iris-<measure>`` with the alias ``champion``. With a build
    ``as of`` an earlier year, the target transition moves back to end by then.
    """
    from territoria.pipelines.iris_report import write_iris_cards, write_iris_map, write_iris_report

    console = console or Console(quiet=True)
    cfg = config if isinstance(config, IrisConfig) else load_iris_config(config)
    folder = Path(out_dir) / "iris"
    timings: dict[str, float] = {}
    spec, fit_spec = transitions_upto(cfg, fb.panel, fb.reference_period)
    sign = indicator_sign(spec.measure)

    def step(label: str) -> float:
        console.log(label)
        return time.perf_counter()

    t0 = step("IRIS zones and features")
    features = IrisFeatures(fb, cfg)
    identity = features.identity
    periods = measure_periods(fb.panel, spec.measure, upto=fb.reference_period)
    if not periods:
        raise DataError("panel", f"no vintage of '{spec.measure}' up to {fb.reference_period}")
    origin = periods[-1]
    F_ref, M_ref = features(fb.reference_period)
    F, M = features(origin)
    timings["features"] = time.perf_counter() - t0

    t0 = step(f"IRIS deprivation index at {fb.reference_period}")
    own = F_ref.set_index("zone_code")
    own = own[[c for c in M_ref["feature"] if not c.startswith(COMMUNE_PREFIX)]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index_model = DeprivationIndex(shrinkage=False)
        index = index_model.fit_transform(own)
    index_notes = [str(w.message) for w in caught]
    timings["index"] = time.perf_counter() - t0

    t0 = step(f"backtests of the {spec.measure} {spec.origin}→{spec.end} forecast")
    table = iris_target(fb.panel, spec, cfg, identity.index)
    F_o, M_o = features(spec.origin)
    X_train = iris_design(F_o, M_o).reindex(table.index)
    groups = identity["departement"].reindex(table.index).astype(str).to_numpy()
    base = baseline_predictions(fb.panel, spec, identity, table.index)
    cv, oof, fold = cross_validate(X_train, table, groups, cfg, base, sign)
    levels = tuple(cfg.interval_levels)
    oof_iv = cross_conformal_intervals(table["y"], oof["lightgbm"], fold, levels)
    coverage = coverage_table(table["y"].to_numpy(float), oof_iv, coverage_groups(identity, table))
    temporal = temporal_backtest(features, fb.panel, cfg, sign, fit_spec, spec, table, base) if fit_spec else None
    timings["backtest"] = time.perf_counter() - t0

    t0 = step(f"final model and forecasts {origin}→{origin + spec.horizon}")
    model = _regressor(cfg).fit(X_train, table["y"].to_numpy(float), table["weight"].to_numpy(float), groups=groups)
    conformal = SplitConformal(levels).fit(table["y"], oof["lightgbm"])
    # no forecast of a share the sources do not publish at the origin (secret or recoded IRIS)
    X = iris_design(F, M).reindex(columns=X_train.columns)
    X = X[X[spec.measure].notna()] if spec.measure in X.columns else X
    pred = model.predict(X)
    forecast = pd.concat([pd.DataFrame({"prediction": pred}, index=X.index),
                          conformal.predict_interval(pred).set_axis(X.index)], axis=1)
    timings["train"] = time.perf_counter() - t0

    t0 = step("priorities and explanations")
    contrib, base_value, output = tree_contributions(model, X)
    additivity_gap = check_additivity(contrib, base_value, pred, tol=1e-6)
    info = feature_info(M, contrib.columns)
    lever = info["is_lever"].to_numpy(bool)
    scores = priority_table(identity, index, forecast, sign, cfg)
    unit = "pts"
    pri = identity[["zone_code", "zone_name", "parent_commune", "commune_name", "departement", "epci"]].rename(
        columns={"departement": "department"})
    pri = pri.join(index[["deprivation_index", "index_rank"] + [c for c in index.columns
                                                               if c.startswith("domain_") and c.count("_") == 1]])
    pri[cfg.weight_measure] = F_ref.set_index("zone_code")[cfg.weight_measure].reindex(pri.index) \
        if cfg.weight_measure in F_ref.columns else np.nan
    pred_col = f"pred_{spec.measure}"
    pri[pred_col] = forecast["prediction"]
    for lv in levels:
        sfx = level_suffix(lv)
        pri[f"{pred_col}_low_{sfx}"] = forecast[f"low_{sfx}"]
        pri[f"{pred_col}_high_{sfx}"] = forecast[f"high_{sfx}"]
    pri = pri.join(scores)
    pri["shap_levers"] = contrib.loc[:, lever].sum(axis=1)
    pri["shap_context"] = contrib.loc[:, ~lever].sum(axis=1)
    for lg in ("fr", "en"):
        pri[f"top_levers_{lg}"] = lever_texts(contrib, X, M, sign, cfg.top_levers, lg, unit).reindex(pri.index)
    pri["origin"], pri["horizon_end"] = origin, origin + spec.horizon
    pri = pri.sort_values(["priority_rank", "zone_code"], na_position="last").reset_index(drop=True)
    explanations = tidy_contributions(spec.measure, contrib, X, base_value, output, M, top=20)
    timings["prioritise"] = time.perf_counter() - t0

    metrics = {
        "target": spec.model_dump(), "temporal_fit": fit_spec.model_dump() if fit_spec else None,
        "forecast": {"origin": origin, "end": origin + spec.horizon},
        "zones": int(len(identity)), "communes": int(identity["parent_commune"].nunique()),
        "training_zones": int(len(table)), "min_recipients": cfg.min_recipients,
        "cross_validation": cv.round(6).reset_index().to_dict("records"),
        "temporal_backtest": None if temporal is None else temporal.round(6).reset_index().to_dict("records"),
        "interval_coverage": coverage.round(4).reset_index().to_dict("records"),
        "ratio_to_best_baseline": _ratio(cv),
        "shap_additivity_max_gap": additivity_gap,
        "index": {"indicators": list(index_model.indicators_.index), "domains": index_model.domains_,
                  "notes": index_notes, "zones_with_index": int(index["deprivation_index"].notna().sum())},
        "flagged": int(pri["priority_flag"].sum()),
    }

    t0 = step(f"writing the IRIS outputs to {folder}")
    write_parquet(F_ref, folder / "features.parquet", float_dictionary=False)
    write_csv(M_ref, folder / "features_meta.csv")
    write_parquet(F, folder / "forecast_features.parquet", float_dictionary=False)
    write_csv(M, folder / "forecast_features_meta.csv")
    write_parquet(index.reset_index(names="zone_code"), folder / "index.parquet",
                  float_dictionary=False)
    write_json(metrics, folder / "metrics.json")
    write_atomic(folder / "backtest_table.txt",
                 lambda tmp: tmp.write_text(backtest_table(cv, temporal), encoding="utf-8"))
    write_csv(pri, folder / "priorities.csv")
    write_parquet(explanations, folder / "explanations.parquet", float_dictionary=False)
    booster = model.booster_
    write_atomic(folder / "model.txt", lambda tmp: booster.save_model(str(tmp)))
    write_iris_map(pri, folder / "map.html", lang=lang, contours=contours, data_dir=data_dir)
    write_iris_report(pri, metrics, folder / "report.html", lang=lang)
    write_iris_cards(pri, explanations, M_ref, F_ref.set_index("zone_code"), M, folder / "zones", lang=lang,
                     metrics=metrics)
    timings["write"] = time.perf_counter() - t0

    t0 = step("MLflow run and champion")
    run_id = log_training(
        out_dir=out_dir if tracking_uri is None else None, tracking_uri=tracking_uri,
        run_name=f"iris-{spec.measure}_{spec.origin}_{spec.end}",
        params={"level": "iris", "target": spec.model_dump(), "model": cfg.model, "seed": cfg.seed,
                "min_recipients": cfg.min_recipients, "reference_period": fb.reference_period},
        metrics={"cv": cv.to_dict("index"),
                 **({"temporal": temporal.to_dict("index")} if temporal is not None else {})},
        features=M[M["feature"].isin(X_train.columns)], data_hashes=fb.file_hashes, model=booster,
        shap_values=contrib, tags={"level": "iris", "measure": spec.measure})
    register_champion(run_id, f"territoria-iris-{spec.measure}", out_dir=out_dir if tracking_uri is None else None,
                      tracking_uri=tracking_uri)
    timings["mlflow"] = time.perf_counter() - t0
    write_json({
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "level": "iris",
        "territoria": package_versions(), "git_commit": git_commit(), "lang": lang,
        "contours": str(contours) if contours else None, "config": cfg.model_dump(mode="json"),
        "target": spec.model_dump(), "temporal_fit": fit_spec.model_dump() if fit_spec else None,
        "reference_period": fb.reference_period, "data_files": fb.file_hashes, "mlflow_run": run_id,
        "tracking_uri": tracking_uri or default_tracking_uri(out_dir),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "zones": int(len(pri)), "priority_zones": int(pri["priority_flag"].sum()),
    }, folder / "iris_run.json")
    outputs = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    write_manifest(folder, fb.file_hashes, outputs, data_dir=data_dir)
    return IrisResult(pri, metrics, folder, timings)


def _ratio(cv: pd.DataFrame) -> float | None:
    """LightGBM's Spearman over the best baseline's (``None`` when no baseline ranks)."""
    others = cv.drop(index="lightgbm")["spearman"].dropna()
    others = others[others > 0]
    if others.empty:
        return None
    return float(cv.loc["lightgbm", "spearman"] / others.max())


def backtest_table(cv: pd.DataFrame, temporal: pd.DataFrame | None) -> str:
    """The backtests as a plain-text table (the summary printed by ``territoria run``)."""
    cols = ["spearman", "r2", "mae", "precision_at_10", "n"]
    parts = ["department-blocked cross-validation", cv[cols].round(3).to_string()]
    if temporal is not None:
        parts += ["", "temporal backtest (fit on the earlier transition)", temporal[cols].round(3).to_string()]
    return "\n".join(parts) + "\n"
