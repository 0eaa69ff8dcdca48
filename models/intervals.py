"""Prediction intervals: split conformal with spatially blocked calibration.

The calibration residuals are **out-of-fold** residuals of department-blocked
cross-validation: each zone's residual comes from a model that never saw its department,
so the residual spread is the one a new department would see. For a level ``1 - alpha``,
the conformal quantile of the scores ``s_i`` is the ``ceil((n + 1)(1 - alpha)) / n``
empirical quantile (finite-sample valid under exchangeability); the interval is
``prediction ± q`` (absolute scores) or, when ``normalised``, ``prediction ± q * spread(x)``
with scores ``|residual| / spread`` and a spread model (LightGBM on the absolute
out-of-fold residuals, itself cross-fitted on the same folds), so that intervals are wider
where the model is less sure (small communes, overseas...).

Coverage is reported overall and by group (:func:`zone_groups`: urban/rural by density,
overseas vs mainland, population size class). For an honest *estimate* of coverage, each
fold's intervals use the quantile of the *other* folds' scores
(:func:`cross_conformal_intervals`).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> y = rng.normal(size=2000); pred = np.zeros(2000); fold = np.arange(2000) % 5
>>> iv = cross_conformal_intervals(y, pred, fold, levels=(0.9,))
>>> abs(float(((y >= iv["low_90"]) & (y <= iv["high_90"])).mean()) - 0.9) < 0.02
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: the spread model's floor, as a quantile of the absolute residuals
SPREAD_FLOOR_QUANTILE = 0.05


def level_suffix(level: float) -> str:
    """``0.8`` → ``"80"``."""
    return f"{round(level * 100):d}"


def conformal_quantile(scores, level: float) -> float:
    """Finite-sample conformal quantile of non-conformity ``scores`` for coverage ``level``."""
    s = np.sort(np.asarray(scores, dtype=float)[np.isfinite(scores)])
    n = len(s)
    if n == 0:
        return float("nan")
    k = int(np.ceil((n + 1) * level))
    if k > n:
        return float("inf")
    return float(s[k - 1])


def intervals_from_quantiles(pred, quantiles: dict[float, float], spread=None) -> pd.DataFrame:
    """``low_XX``/``high_XX`` columns around ``pred`` (``± q`` or ``± q * spread``)."""
    pred = np.asarray(pred, dtype=float)
    sp = np.ones_like(pred) if spread is None else np.asarray(spread, dtype=float)
    out = {}
    for level, q in quantiles.items():
        sfx = level_suffix(level)
        out[f"low_{sfx}"] = pred - q * sp
        out[f"high_{sfx}"] = pred + q * sp
    return pd.DataFrame(out)


class SplitConformal:
    """Conformal quantiles calibrated on (out-of-fold) residuals, applied to new predictions.

    Parameters
    ----------
    levels : sequence of float
        Nominal coverages (default 80 % and 90 %).

    Examples
    --------
    >>> sc = SplitConformal(levels=(0.8,)).fit(np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    >>> sc.quantiles_
    {0.8: inf}
    """

    def __init__(self, levels: Sequence[float] = (0.8, 0.9)) -> None:
        self.levels = tuple(levels)

    def fit(self, y, pred, spread=None) -> SplitConformal:
        res = np.abs(np.asarray(y, float) - np.asarray(pred, float))
        if spread is not None:
            res = res / np.asarray(spread, float)
        self.normalised_ = spread is not None
        self.quantiles_ = {lv: conformal_quantile(res, lv) for lv in self.levels}
        self.n_calibration_ = int(np.isfinite(res).sum())
        return self

    def predict_interval(self, pred, spread=None) -> pd.DataFrame:
        if self.normalised_ and spread is None:
            raise ValueError("a normalised conformal predictor needs the spread of new zones")
        return intervals_from_quantiles(pred, self.quantiles_, spread if self.normalised_ else None)


def cross_conformal_intervals(
    y, pred, fold, levels: Sequence[float] = (0.8, 0.9), spread=None
) -> pd.DataFrame:
    """Intervals for out-of-fold predictions, each fold calibrated on the other folds.

    Used to *measure* coverage without calibrating on the zones being scored.
    """
    y, pred, fold = np.asarray(y, float), np.asarray(pred, float), np.asarray(fold)
    sp = None if spread is None else np.asarray(spread, float)
    cols = [f"{side}_{level_suffix(lv)}" for lv in levels for side in ("low", "high")]
    out = pd.DataFrame(np.nan, index=np.arange(len(y)), columns=cols)
    for k in np.unique(fold):
        cal, te = fold != k, fold == k
        sc = SplitConformal(levels).fit(y[cal], pred[cal], None if sp is None else sp[cal])
        iv = sc.predict_interval(pred[te], None if sp is None else sp[te])
        out.loc[np.flatnonzero(te), iv.columns] = iv.to_numpy()
    return out


def fit_spread_model(X, abs_residual, groups, fold, sample_weight=None, params: dict | None = None,
                     bins=None, threads: int = 1):
    """Cross-fitted spread (expected |residual|) and the spread model fitted on all rows.

    LightGBM on the absolute out-of-fold residuals (L2 objective: it estimates the expected
    |residual|), small and regularised; predictions are floored at the 5 % quantile of the
    residuals so that no interval collapses. Returns ``(oof_spread, model, floor)``.

    Learning rate 0.1 for at most 150 trees: against 0.05 for 300, the backtest's intervals
    of the three key targets keep their coverage and their mean widths move by under 1 %
    (either way), for about half the fitting time (benchmarks/README.md, ninth measurement).
    Early stopping after 20 rounds without progress, as the trajectory models: against 30,
    the same coverage and mean widths equal or up to 1 % narrower, for 0.9 x the time (tenth
    measurement).

    ``bins`` are the :class:`~territoria.models.trajectory.SharedBins` of the rows of ``X``
    (the spread models then reuse the trajectory model's bins). ``threads`` fits run at once
    (:func:`~territoria.models.backtest.map_folds`).
    """
    from territoria.models.backtest import map_folds
    from territoria.models.trajectory import TrajectoryRegressor

    params = {"num_leaves": 15, "min_child_samples": 40, "n_estimators": 150, "learning_rate": 0.1,
              "early_stopping_rounds": 20, "objective": "regression", **(params or {})}
    r = np.asarray(abs_residual, float)
    floor = max(float(np.quantile(r, SPREAD_FLOOR_QUANTILE)), 1e-9)
    fold = np.asarray(fold)
    groups = np.asarray(groups)
    w = None if sample_weight is None else np.asarray(sample_weight, float)
    oof = np.full(len(r), np.nan)

    def fit(k, n_jobs):
        p = params if n_jobs is None else {**params, "n_jobs": n_jobs}
        # a thread's own shallow copy: pandas may reorganise a frame in place
        Xk = X.copy(deep=False) if hasattr(X, "iloc") else X
        if k is None:  # the model of every row
            return TrajectoryRegressor(**p).fit(Xk, r, w, groups=groups, bins=bins)
        tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        rows = (lambda idx: Xk.iloc[idx]) if hasattr(Xk, "iloc") else (lambda idx: Xk[idx])
        m = TrajectoryRegressor(**p).fit(rows(tr), r[tr], None if w is None else w[tr], groups=groups[tr],
                                         bins=None if bins is None else bins.take(tr))
        return te, m.predict(rows(te))

    # the model of every row, the longest fit, first: the other thread then takes the folds
    # one after the other, and neither waits alone at the end for a long last fit
    model, *cross_fitted = map_folds(fit, [None, *np.unique(fold)], threads)
    for te, p in cross_fitted:
        oof[te] = p
    return np.maximum(oof, floor), model, floor


def predict_spread(model, X, floor: float) -> np.ndarray:
    """The spread model's predictions for the rows of ``X``, floored at ``floor``.

    ``X`` is a design matrix with at least the model's columns (a spread model reads the
    columns :func:`~territoria.models.backtest.spread_columns` chose, by name)."""
    names = getattr(model, "feature_names_in_", None)
    if names is not None and hasattr(X, "columns") and list(X.columns) != list(names):
        X = X.loc[:, list(names)]
    return np.maximum(model.predict(X), floor)


def zone_groups(
    population, density=None, zone=None, urban_density: float = 300.0
) -> pd.DataFrame:
    """Groups for coverage reports, one row per zone (same index as ``population``).

    * ``density_class``: ``urban`` when the density (persons per km²) is at least
      ``urban_density`` (default 300, the order of INSEE's "dense and intermediate" urban
      communes), ``rural`` otherwise;
    * ``territory``: ``overseas`` (``zone == "drom"``) or ``mainland``;
    * ``size_class``: population at the origin, <2k, 2-5k, 5-20k, 20k+.
    """
    pop = pd.Series(population, dtype=float)
    out = pd.DataFrame(index=pop.index)
    if density is not None:
        d = pd.Series(density, dtype=float).reindex(pop.index)
        out["density_class"] = np.where(d.isna(), "unknown", np.where(d >= urban_density, "urban", "rural"))
    if zone is not None:
        z = pd.Series(zone).reindex(pop.index)
        out["territory"] = np.where(z.eq("drom"), "overseas", "mainland")
    out["size_class"] = pd.cut(
        pop, [-np.inf, 2000, 5000, 20000, np.inf], right=False, labels=["<2k", "2k-5k", "5k-20k", "20k+"]
    ).astype(str)
    return out


def coverage_table(y, intervals: pd.DataFrame, groups: pd.DataFrame | None = None) -> pd.DataFrame:
    """Empirical coverage and mean width, overall and by group.

    Columns: ``grouping, group, level, n, coverage, mean_width``; ``grouping == "all"`` is
    the overall row.
    """
    y = np.asarray(y, dtype=float)
    levels = sorted({c.split("_", 1)[1] for c in intervals.columns if c.startswith("low_")})
    rows = []
    parts = [("all", pd.Series("all", index=range(len(y))))]
    if groups is not None:
        parts += [(col, groups[col].reset_index(drop=True)) for col in groups.columns]
    for grouping, labels in parts:
        for lab in sorted(pd.unique(labels)):
            m = (labels == lab).to_numpy()
            for sfx in levels:
                lo = intervals[f"low_{sfx}"].to_numpy()[m]
                hi = intervals[f"high_{sfx}"].to_numpy()[m]
                yy = y[m]
                ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(yy)
                rows.append({
                    "grouping": grouping, "group": str(lab), "level": int(sfx) / 100,
                    "n": int(ok.sum()),
                    "coverage": float(np.mean((yy[ok] >= lo[ok]) & (yy[ok] <= hi[ok]))) if ok.any() else np.nan,
                    "mean_width": float(np.mean(hi[ok] - lo[ok])) if ok.any() else np.nan,
                })
    return pd.DataFrame(rows)
