"""Evaluation that cannot flatter itself: spatially blocked folds and temporal backtests.

* :class:`SpatialGroupKFold` – K folds of whole groups (departments by default, or regions):
  a zone is never scored by a model that saw its neighbours' outcome in the same department.
  Deterministic: groups are shuffled with a fixed seed, then dealt greedily (largest first) to
  the fold holding the fewest zones, so folds are balanced in size.
* :func:`group_validation_split` – departments carved out of a training set for early
  stopping (the same blocking, one level down).
* :func:`cross_val_predict_groups` – out-of-fold predictions of any estimator on those folds
  (with sample weights passed to ``fit``).
* :func:`temporal_backtest` – fit on an earlier transition (features at its origin) and
  score the later one (features at its origin).

Examples
--------
>>> groups = np.repeat(list("abcdefgh"), 5)
>>> cv = SpatialGroupKFold(n_splits=4, seed=0)
>>> [len(test) for _, test in cv.split(np.zeros((40, 1)), groups=groups)]
[10, 10, 10, 10]
>>> all(set(groups[tr]).isdisjoint(groups[te]) for tr, te in cv.split(np.zeros((40, 1)), groups=groups))
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import BaseCrossValidator


class SpatialGroupKFold(BaseCrossValidator):
    """K-fold over whole groups (departments, regions), deterministic and size-balanced.

    Parameters
    ----------
    n_splits : int
        Number of folds (at most the number of distinct groups).
    seed : int
        Seed of the group shuffle (ties in the greedy assignment are broken by this order).
    """

    def __init__(self, n_splits: int = 5, seed: int = 42) -> None:
        self.n_splits = n_splits
        self.seed = seed

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.n_splits

    def fold_of_groups(self, groups) -> dict:
        """Fold number of every distinct group."""
        g = pd.Series(np.asarray(groups)).astype(str)
        sizes = g.value_counts()
        uniq = np.array(sorted(sizes.index))
        if len(uniq) < self.n_splits:
            raise ValueError(f"{len(uniq)} groups cannot make {self.n_splits} folds")
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(uniq))
        shuffled = uniq[order]
        # largest groups first (stable: the shuffle breaks ties), each to the smallest fold
        by_size = sorted(range(len(shuffled)), key=lambda i: -sizes[shuffled[i]])
        load = np.zeros(self.n_splits)
        fold = {}
        for i in by_size:
            k = int(np.argmin(load))
            fold[shuffled[i]] = k
            load[k] += sizes[shuffled[i]]
        return fold

    def _iter_test_masks(self, X=None, y=None, groups=None) -> Iterator[np.ndarray]:
        if groups is None:
            raise ValueError("SpatialGroupKFold needs groups (e.g. the department of each zone)")
        g = np.asarray(pd.Series(np.asarray(groups)).astype(str))
        fold = self.fold_of_groups(g)
        f = np.array([fold[x] for x in g])
        for k in range(self.n_splits):
            yield f == k

    def split(self, X, y=None, groups=None):
        n = len(groups) if groups is not None else len(X)
        idx = np.arange(n)
        for mask in self._iter_test_masks(X, y, groups):
            yield idx[~mask], idx[mask]


def group_validation_split(
    groups, fraction: float = 0.15, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): whole groups drawn at random until ``fraction`` of rows.

    Falls back to a random row split when there are fewer than 3 groups.
    """
    g = np.asarray(pd.Series(np.asarray(groups)).astype(str))
    n = len(g)
    rng = np.random.default_rng(seed)
    uniq = np.array(sorted(set(g)))
    if len(uniq) < 3:
        perm = rng.permutation(n)
        n_val = max(1, int(round(fraction * n)))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    order = uniq[rng.permutation(len(uniq))]
    counts = pd.Series(g).value_counts()
    chosen, total = [], 0
    for grp in order:
        if total >= fraction * n:
            break
        chosen.append(grp)
        total += counts[grp]
    val = np.isin(g, chosen)
    if val.all():  # a single huge group: keep something to train on
        val[:] = False
        val[rng.choice(n, max(1, int(fraction * n)), replace=False)] = True
    idx = np.arange(n)
    return idx[~val], idx[val]


def _fit(est, X, y, weight=None, groups=None):
    kwargs = {}
    if weight is not None:
        kwargs["sample_weight"] = np.asarray(weight)
    if groups is not None and getattr(est, "_accepts_groups", False):
        kwargs["groups"] = np.asarray(groups)
    return est.fit(X, y, **kwargs)


def cross_val_predict_groups(
    estimator,
    X: pd.DataFrame,
    y: pd.Series,
    groups,
    cv: SpatialGroupKFold,
    sample_weight=None,
    method: str = "predict",
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions on spatially blocked folds, and the fold of every row.

    Estimators flagged ``_accepts_groups`` (the LightGBM wrappers) also receive the groups,
    so their early-stopping split is blocked the same way.
    """
    groups = np.asarray(groups)
    y = np.asarray(y)
    pred = np.full(len(y), np.nan)
    fold = np.full(len(y), -1)
    for k, (tr, te) in enumerate(cv.split(X, y, groups)):
        est = clone(estimator)
        w = None if sample_weight is None else np.asarray(sample_weight)[tr]
        _fit(est, _rows(X, tr), y[tr], w, groups[tr])
        out = getattr(est, method)(_rows(X, te))
        pred[te] = out[:, 1] if method == "predict_proba" else out
        fold[te] = k
    return pred, fold


def _rows(X, idx):
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]


def temporal_backtest(
    estimator,
    fit_data: tuple[pd.DataFrame, pd.Series, np.ndarray | None],
    score_data: tuple[pd.DataFrame, pd.Series],
    scale: float = 1.0,
    fit_groups=None,
    score_fn: Callable | None = None,
):
    """Fit on the earlier transition, predict the later one.

    ``fit_data`` is ``(X_t0, y_t0->t1, weights)`` with features at the earlier origin;
    ``score_data`` is ``(X_t1, y_t1->t2)`` with features at the later origin (the same
    columns). ``scale`` rescales predictions to the scored horizon (e.g. ``3/2`` when a
    2-year change is fitted and a 3-year change scored). Returns the predictions (a Series
    indexed like ``score_data``'s target) and, when ``score_fn`` is given,
    ``score_fn(y_true, y_pred)``.
    """
    X0, y0, w0 = fit_data
    X1, y1 = score_data
    est = clone(estimator)
    _fit(est, X0, np.asarray(y0), w0, fit_groups)
    cols = list(X0.columns) if hasattr(X0, "columns") else None
    X1 = X1.reindex(columns=cols) if cols is not None else X1
    pred = pd.Series(est.predict(X1) * scale, index=y1.index)
    if score_fn is None:
        return pred
    return pred, score_fn(y1, pred)
