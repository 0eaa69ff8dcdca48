"""Bootstrap refits of the trajectory models: how much do the forecasts owe to the sample?

The stability audit (:mod:`territoria.models.stability`) asks how sure a zone's place in the
priority list is. One source of doubt is the training sample itself: a model fitted on
other communes would forecast other changes. This module refits each trajectory model on
**department-block bootstrap samples** of its training zones and forecasts every zone with
each refit.

Departments, not communes, are resampled because the models are validated on whole held-out
departments (neighbouring communes share their errors; resampling communes would understate
the spread). A department drawn ``k`` times enters with ``k`` times its zones' weights, one
that is not drawn is left out; each refit runs the model's own fitting procedure (the same
parameters and seed, early stopping on departments carved out of the sample), so only the
data change.

The cross-validation's fold models are another sample of the same kind, and cost no fit:
each was fitted without one fold's departments. :func:`fold_replicates` turns their
forecasts into **delete-a-group jackknife** replicates (Kott 2001): with ``G`` folds, replicate
``g`` is the run's forecast plus ``sqrt(G - 1)`` times fold model ``g``'s deviation from the
fold models' mean, so that the replicates' variance is the jackknife variance
``(G - 1) / G * sum_g (theta_g - mean)^2`` (a model fitted on 4/5 of the departments moves
less than one fitted on a bootstrap sample of them all).

Examples
--------
Two departments of 3 zones: a draw gives each zone the multiplicity of its department.

>>> import numpy as np
>>> groups = np.array(["01", "01", "01", "02", "02", "02"])
>>> department_bootstrap(groups, np.random.default_rng(0)).tolist()
[0, 0, 0, 2, 2, 2]
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import clone


def department_bootstrap(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicity of each row in one draw, with replacement, of as many groups as there are.

    Parameters
    ----------
    groups : array
        Group (department) of each row.
    rng : numpy Generator

    Returns
    -------
    array of int
        How many times the row's group was drawn (0: left out).
    """
    uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
    drawn = rng.integers(0, len(uniq), size=len(uniq))
    return np.bincount(drawn, minlength=len(uniq))[inverse]


@dataclass
class BootstrapForecasts:
    """Forecasts of every zone by each refit: ``predictions`` is refits × zones × measures."""

    measures: list[str]
    zones: pd.Index
    predictions: np.ndarray
    seed: int
    #: ``"bootstrap"`` (refits on department-block bootstrap samples) or ``"folds"``
    #: (jackknife replicates of the cross-validation's fold models, :func:`fold_replicates`)
    method: str = "bootstrap"

    @property
    def refits(self) -> int:
        return int(self.predictions.shape[0])

    def spread(self) -> pd.DataFrame:
        """Per measure, the standard deviation of each zone's forecast across refits
        (columns: measure; index: zone)."""
        sd = np.std(self.predictions, axis=0, ddof=1) if self.refits > 1 else np.zeros(self.predictions.shape[1:])
        return pd.DataFrame(sd, index=self.zones, columns=self.measures)


def fold_replicates(forecast: np.ndarray, fold_forecasts: np.ndarray) -> np.ndarray:
    """Delete-a-group jackknife replicates of a forecast from the fold models' forecasts.

    Parameters
    ----------
    forecast : array (zones,)
        The run's forecast (the model fitted on every fold).
    fold_forecasts : array (G, zones)
        Forecasts of the ``G`` fold models, each fitted without one fold's groups.

    Returns
    -------
    array (G, zones)
        ``forecast + sqrt(G - 1) * (fold_forecasts - their mean)``: centred on the run's
        forecast, with the jackknife variance across the ``G`` replicates.

    Examples
    --------
    >>> folds = np.array([[1.0], [2.0], [3.0], [2.0], [2.0]])
    >>> r = fold_replicates(np.array([2.5]), folds)
    >>> r[:, 0].tolist()
    [0.5, 2.5, 4.5, 2.5, 2.5]
    >>> float(np.var(r)) == 4 / 5 * float(np.sum((folds - folds.mean()) ** 2))
    True
    """
    fold_forecasts = np.asarray(fold_forecasts, float)
    g = fold_forecasts.shape[0]
    if g < 2:
        raise ValueError(f"jackknife replicates need at least 2 fold models, got {g}")
    return np.asarray(forecast, float)[None, :] + np.sqrt(g - 1) * (fold_forecasts - fold_forecasts.mean(axis=0))


def refit_predictions(
    model, X, y: np.ndarray, weight: np.ndarray, groups: np.ndarray, X_forecast, *,
    refits: int, rng: np.random.Generator, fit: Callable | None = None,
) -> np.ndarray:
    """Forecasts of ``X_forecast`` by ``refits`` clones of ``model`` fitted on department-block
    bootstrap samples of ``(X, y, weight)``: an array refits × rows.

    ``fit(model, X, y, w, groups, rows)`` fits a clone on the sampled rows (default:
    ``model.fit(X, y, sample_weight=w, groups=groups)``); ``rows`` are the positions of the
    sampled rows in ``X``, for callers with more per-row inputs than the weight.

    Examples
    --------
    A model that learns a department-level mean: its refits differ because the departments
    drawn differ.

    >>> from sklearn.dummy import DummyRegressor
    >>> X = np.zeros((6, 1)); y = np.array([1.0, 1, 1, 3, 3, 3]); g = np.repeat(["a", "b"], 3)
    >>> p = refit_predictions(DummyRegressor(), X, y, np.ones(6), g, X[:1], refits=4,
    ...                       rng=np.random.default_rng(0),
    ...                       fit=lambda m, X, y, w, g, rows: m.fit(X, y, sample_weight=w))
    >>> sorted(set(p[:, 0].tolist()))
    [1.0, 2.0, 3.0]
    """
    fit = fit or (lambda m, Xs, ys, ws, gs, rows: m.fit(Xs, ys, sample_weight=ws, groups=gs))
    out = np.empty((refits, len(X_forecast)))
    for b in range(refits):
        mult = department_bootstrap(groups, rng)
        rows = np.flatnonzero(mult > 0)
        Xs = X.iloc[rows] if hasattr(X, "iloc") else X[rows]
        m = clone(model)
        fit(m, Xs, y[rows], weight[rows] * mult[rows], groups[rows], rows)
        out[b] = m.predict(X_forecast)
    return out


def bootstrap_forecasts(
    targets: dict[str, tuple], *, refits: int, seed: int, log: Callable[[str], None] | None = None,
) -> BootstrapForecasts:
    """Refit every measure's model ``refits`` times and forecast every zone.

    Parameters
    ----------
    targets : dict
        ``measure -> (model, X, y, weight, groups, X_forecast, fit)``: the model (cloned,
        never changed), its training rows, the design matrix of the zones to forecast (the
        same zones, in the same order, for every measure; forecast over the model's own
        horizon) and the fitting function (see :func:`refit_predictions`).
    refits : int
        Number of bootstrap samples per measure.
    seed : int
        Each measure's random stream derives from it and the measure's name, so a measure's
        refits depend neither on the other measures nor on their order.
    log : callable, optional
        Progress messages.

    Returns
    -------
    BootstrapForecasts
    """
    measures = list(targets)
    zones = None
    preds = []
    for measure in measures:
        stream = np.random.SeedSequence(seed, spawn_key=(zlib.crc32(measure.encode("utf-8")),))
        model, X, y, w, g, X_forecast, fit = targets[measure]
        if zones is None:
            zones = pd.Index(X_forecast.index)
        elif not zones.equals(pd.Index(X_forecast.index)):
            raise ValueError(f"{measure}: the forecast rows differ from the other measures'")
        if log:
            log(f"bootstrap: {refits} refits of the {measure} model on resampled departments")
        preds.append(refit_predictions(model, X, np.asarray(y, float), np.asarray(w, float), np.asarray(g),
                                       X_forecast, refits=refits, rng=np.random.default_rng(stream), fit=fit))
    arr = np.stack(preds, axis=2) if preds else np.zeros((refits, 0 if zones is None else len(zones), 0))
    return BootstrapForecasts(measures, zones if zones is not None else pd.Index([]), arr, int(seed))
