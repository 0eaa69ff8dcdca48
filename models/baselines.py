"""Naive answers the trajectory model must beat, scored on the same folds.

* **persistence (no change)** – every zone keeps its level: a predicted change of 0;
* **persistence (last trend)** – the previous change of the same measure (the two latest
  vintages <= the origin), scaled to the horizon: ``prev * h / h_prev``;
* **ridge** – a linear model on the same features (median imputation with missing-value
  indicators, standardisation, ridge with its penalty chosen by internal cross-validation),
  fitted fold by fold like the model;
* **spatial lag** – the neighbours' mean of the last observed change (the graph's
  contiguity neighbours), scaled to the horizon: "a zone follows its surroundings".

Persistence and spatial-lag predictions need no fitting: they are functions of the panel at
the origin (no value dated after it) and are scored on the same zones and folds as the
model. When the measure has a single vintage <= the origin (census unemployment in 2018),
the trend-based baselines are undefined and reported as missing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.impute import SimpleImputer
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from territoria.features.spatial import neighbour_mean
from territoria.models.targets import TargetSpec, change, measure_at, measure_periods

RIDGE_ALPHAS = tuple(np.logspace(-2, 5, 15))


class RidgeBaseline(RegressorMixin, BaseEstimator):
    """Impute (median + missing indicators) → standardise → RidgeCV, with sample weights.

    Extreme feature values are clipped to the 0.5-99.5 % quantiles of the training rows
    (fitted with the model), so that a handful of outliers do not dominate a linear fit.
    """

    def __init__(self, alphas=RIDGE_ALPHAS, clip_quantile: float = 0.005) -> None:
        self.alphas = alphas
        self.clip_quantile = clip_quantile

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _clip(self, X):
        return np.clip(np.asarray(X, dtype=float), self.lo_, self.hi_)

    def fit(self, X, y, sample_weight=None):
        Xa, y = validate_data(self, X, y, ensure_all_finite="allow-nan", dtype=np.float64, y_numeric=True)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, Xa)
        q = self.clip_quantile
        with np.errstate(all="ignore"):
            self.lo_ = np.nan_to_num(np.nanquantile(Xa, q, axis=0), nan=-np.inf) if q else -np.inf
            self.hi_ = np.nan_to_num(np.nanquantile(Xa, 1 - q, axis=0), nan=np.inf) if q else np.inf
        self.pipeline_ = Pipeline([
            ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
            ("scale", StandardScaler()),
            # one SVD of the design serves every alpha (rows far outnumber columns): 0.7 x the
            # time of the default eigen path on a commune matrix, same predictions to 1e-10
            ("ridge", RidgeCV(alphas=self.alphas, gcv_mode="svd")),
        ])
        self.pipeline_.fit(self._clip(Xa), np.asarray(y, float), ridge__sample_weight=sample_weight)
        return self

    def predict(self, X):
        check_is_fitted(self, "pipeline_")
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        return self.pipeline_.predict(self._clip(X))


def previous_change(panel: pd.DataFrame, spec: TargetSpec) -> tuple[pd.Series, int] | None:
    """The last change of the target's measure observed at the origin, and its span in years.

    Uses the two latest vintages <= the origin; ``None`` when there are fewer than two.
    """
    periods = measure_periods(panel, spec.measure, upto=spec.origin)
    if len(periods) < 2:
        return None
    a, b = periods[-2], periods[-1]
    cur, prev = measure_at(panel, spec.measure, b), measure_at(panel, spec.measure, a)
    return change(cur, prev, spec.relative), b - a


def persistence_zero(index) -> pd.Series:
    """No change: a prediction of 0 for every zone."""
    return pd.Series(0.0, index=index)


def last_trend(panel: pd.DataFrame, spec: TargetSpec, index) -> pd.Series:
    """The previous change scaled to the horizon (NaN when the history is too short)."""
    prev = previous_change(panel, spec)
    if prev is None:
        return pd.Series(np.nan, index=index)
    chg, span = prev
    return (chg * spec.horizon / span).reindex(index)


def spatial_lag(panel: pd.DataFrame, spec: TargetSpec, graph, index) -> pd.Series:
    """Neighbours' mean of the previous change, scaled to the horizon (NaN without history)."""
    prev = previous_change(panel, spec)
    if prev is None:
        return pd.Series(np.nan, index=index)
    chg, span = prev
    lag = neighbour_mean(graph, chg.reindex(pd.Index(graph.unique_ids)).rename("x"))
    return (lag * spec.horizon / span).reindex(index)


def baseline_predictions(panel: pd.DataFrame, spec: TargetSpec, graph, index) -> pd.DataFrame:
    """The fitting-free baselines of a target, one column each, on ``index``."""
    return pd.DataFrame({
        "persistence_zero": persistence_zero(index),
        "last_trend": last_trend(panel, spec, index),
        "spatial_lag": spatial_lag(panel, spec, graph, index),
    })


def ridge_baseline() -> RidgeBaseline:
    """A fresh (unfitted) ridge baseline."""
    return clone(RidgeBaseline())
