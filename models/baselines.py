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

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from territoria.features.spatial import neighbour_mean
from territoria.models.targets import TargetSpec, change, measure_at, measure_periods

RIDGE_ALPHAS = tuple(np.logspace(-2, 5, 15))


class RidgeBaseline(RegressorMixin, BaseEstimator):
    """Impute (median + missing indicators) → standardise → ridge, its penalty chosen by
    leave-one-out cross-validation (generalised cross-validation), with sample weights.

    Extreme feature values are clipped to the 0.5-99.5 % quantiles of the training rows
    (fitted with the model), so that a handful of outliers do not dominate a linear fit.

    The steps are those of scikit-learn's ``SimpleImputer(strategy="median",
    add_indicator=True, keep_empty_features=True)``, ``StandardScaler`` and
    ``RidgeCV(alphas, gcv_mode="svd")`` (same chosen penalty, predictions within 1e-8;
    tested). The leave-one-out errors of every penalty come from one eigendecomposition of
    the weighted Gram matrix and two matrix products, instead of one pass over the rows per
    penalty; the clipping bounds and the medians come from one sort of the matrix. 0.2 x the
    time on a commune matrix (``benchmarks/ridge_baseline.py``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3)); y = X @ [1.0, -2.0, 0.0] + rng.normal(scale=0.1, size=200)
    >>> X[::10, 2] = np.nan
    >>> m = RidgeBaseline().fit(X, y)
    >>> float(m.alpha_) <= 1.0, round(float(np.corrcoef(m.predict(X), y)[0, 1]), 2)
    (True, 1.0)
    """

    def __init__(self, alphas=RIDGE_ALPHAS, clip_quantile: float = 0.005) -> None:
        self.alphas = alphas
        self.clip_quantile = clip_quantile

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _imputed(self, X: np.ndarray) -> np.ndarray:
        """Clipped rows imputed with the medians, with the missing indicators (not standardised)."""
        missing = np.isnan(X)
        return np.hstack([np.where(missing, self.fill_, X), missing[:, self.indicator_].astype(float)])

    def fit(self, X, y, sample_weight=None):
        Xa, y = validate_data(self, X, y, ensure_all_finite="allow-nan", dtype=np.float64, y_numeric=True)
        y = np.asarray(y, float)
        w = np.ones(len(y)) if sample_weight is None else _check_sample_weight(sample_weight, Xa)
        q = self.clip_quantile
        lo, median, hi = _column_quantiles(Xa, (q, 0.5, 1 - q))
        self.lo_, self.hi_ = (np.nan_to_num(lo, nan=-np.inf), np.nan_to_num(hi, nan=np.inf)) if q else (-np.inf, np.inf)
        Xc = np.clip(Xa, self.lo_, self.hi_)
        # the median of the clipped column is the clipped median (q < 0.5); an empty column is
        # imputed with 0, as keep_empty_features does
        self.fill_ = np.nan_to_num(np.clip(median, self.lo_, self.hi_), nan=0.0)
        self.indicator_ = np.isnan(Xc).any(axis=0)
        Z = self._imputed(Xc)
        n = len(Z)
        self.mean_ = Z.mean(axis=0)
        var = Z.var(axis=0)
        # constant columns keep a scale of 1 (StandardScaler's test of a constant feature)
        eps = np.finfo(float).eps
        constant = var <= n * eps * var + (n * self.mean_ * eps) ** 2
        self.scale_ = np.where(constant, 1.0, np.sqrt(var))
        Z -= self.mean_
        Z /= self.scale_
        self.coef_, self.intercept_, self.alpha_ = _ridge_gcv(Z, y, w, np.asarray(self.alphas, float))
        return self

    def predict(self, X):
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        Z = (self._imputed(np.clip(X, self.lo_, self.hi_)) - self.mean_) / self.scale_
        return Z @ self.coef_ + self.intercept_


def _column_quantiles(X: np.ndarray, qs) -> list[np.ndarray]:
    """Quantiles of each column ignoring NaN, as ``np.nanquantile(X, q, axis=0)`` (linear
    interpolation; NaN for an empty column), for several ``qs`` from one sort of the matrix:
    ``nanquantile`` partitions every column again for each quantile."""
    S = np.sort(X, axis=0)  # NaN last
    n = (~np.isnan(X)).sum(axis=0)
    cols = np.arange(X.shape[1])
    out = []
    for q in qs:
        pos = q * np.maximum(n - 1, 0)
        below = np.floor(pos).astype(int)
        above = np.minimum(below + 1, np.maximum(n - 1, 0))
        a, b = S[below, cols], S[above, cols]
        value = a + (b - a) * (pos - below)
        out.append(np.where(n > 0, value, np.nan))
    return out


def _clip_bounds(X: np.ndarray, q: float) -> tuple:
    """The ``q`` and ``1 - q`` quantiles of each column (-inf and inf for an empty column or
    ``q == 0``): the bounds extreme values are clipped to."""
    if not q:
        return -np.inf, np.inf
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        return (np.nan_to_num(np.nanquantile(X, q, axis=0), nan=-np.inf),
                np.nan_to_num(np.nanquantile(X, 1 - q, axis=0), nan=np.inf))


def _ridge_gcv(Z: np.ndarray, y: np.ndarray, w: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Weighted ridge with an unpenalised intercept, its penalty the one of ``alphas`` with
    the smallest weighted mean squared leave-one-out error (the first one on ties).

    With ``A`` the weighted, centred design (``sqrt(w) * (Z - mean_w)``) and ``A'A = V diag(e)
    V'``, the hat matrix of penalty ``a`` has diagonal ``sum_j (AV)_ij^2 / (e_j + a)`` plus
    the intercept's ``w_i / sum(w)``; the leave-one-out residual is the residual over
    ``1 - h_i``. Returns ``(coef, intercept, alpha)``.
    """
    sw = w / w.sum()
    x_mean = sw @ Z
    y_mean = float(sw @ y)
    root = np.sqrt(w)
    A = (Z - x_mean) * root[:, None]
    b = (y - y_mean) * root
    evals, V = np.linalg.eigh(A.T @ A)
    AV = A @ V
    Vb = AV.T @ b
    shrink = 1.0 / (np.maximum(evals, 0.0)[:, None] + alphas[None, :])  # features x alphas
    hat = (AV * AV) @ shrink + sw[:, None]
    fitted = AV @ (shrink * Vb[:, None])
    loo = (b[:, None] - fitted) / (1.0 - hat)
    best = int(np.argmin((loo * loo).mean(axis=0)))
    coef = V @ (shrink[:, best] * Vb)
    return coef, y_mean - float(x_mean @ coef), float(alphas[best])


def sklearn_ridge_reference(X, y, sample_weight=None, alphas=RIDGE_ALPHAS, clip_quantile: float = 0.005):
    """:class:`RidgeBaseline` as scikit-learn's steps (clipping, ``SimpleImputer`` with
    missing indicators, ``StandardScaler``, ``RidgeCV(gcv_mode="svd")``): the reference its
    own leave-one-out computation is tested and benchmarked against. Returns ``(alpha,
    predict)``.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, float)
    lo, hi = _clip_bounds(X, clip_quantile)
    pipe = Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
                     ("scale", StandardScaler()), ("ridge", RidgeCV(alphas=alphas, gcv_mode="svd"))])
    pipe.fit(np.clip(X, lo, hi), np.asarray(y, float), ridge__sample_weight=sample_weight)
    return float(pipe[-1].alpha_), lambda Z: pipe.predict(np.clip(np.asarray(Z, float), lo, hi))


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
