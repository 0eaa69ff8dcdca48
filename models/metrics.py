"""Metrics of trajectory models and baselines, direction-aware.

"Worst" always follows the registry: ``sign = +1`` when a higher value of the measure is
worse (a rise is a deterioration), ``-1`` when a higher value is better.

* :func:`regression_metrics` – R², MAE, Spearman rho, precision@k and recall@k of the worst
  trajectories (k = 10 % by default);
* :func:`future_level_precision` – precision of the top decile of the *future level*
  (origin level + predicted change) against the true future top decile, with persistence
  (the origin level alone) as reference;
* :func:`brier_score`, :func:`reliability_table` – calibration of the classifier.

Predictions that carry no ranking (a constant, such as the no-change persistence) get a
Spearman rho of ``NaN``; their worst-k set is the whole tied set (precision = base rate).

Examples
--------
>>> y = np.arange(20.0)
>>> m = regression_metrics(y, y + 1.0, sign=1)
>>> m["spearman"], m["precision_at_10"], m["mae"]
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr


def _arrays(*xs):
    return [np.asarray(x, dtype=float) for x in xs]


def weighted_r2(y, pred, weight=None) -> float:
    y, pred = _arrays(y, pred)
    w = np.ones_like(y) if weight is None else np.asarray(weight, float)
    ybar = np.average(y, weights=w)
    ss_tot = np.sum(w * (y - ybar) ** 2)
    return float(1.0 - np.sum(w * (y - pred) ** 2) / ss_tot) if ss_tot > 0 else float("nan")


def spearman(y, pred) -> float:
    y, pred = _arrays(y, pred)
    ok = np.isfinite(y) & np.isfinite(pred)
    if ok.sum() < 3 or np.ptp(pred[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(y[ok], pred[ok])[0])


def worst_set(values, sign: int, frac: float = 0.10) -> np.ndarray:
    """Boolean mask of the worst ``frac`` of zones (ties at the threshold included)."""
    v = sign * np.asarray(values, float)
    thr = np.nanquantile(v, 1.0 - frac)
    return np.isfinite(v) & (v >= thr)


def precision_recall_at(y, pred, sign: int, frac: float = 0.10) -> tuple[float, float]:
    """Precision and recall of the predicted worst ``frac`` against the true worst ``frac``."""
    truth = worst_set(y, sign, frac)
    flagged = worst_set(pred, sign, frac)
    hit = np.sum(truth & flagged)
    prec = hit / flagged.sum() if flagged.sum() else float("nan")
    rec = hit / truth.sum() if truth.sum() else float("nan")
    return float(prec), float(rec)


def regression_metrics(y, pred, sign: int = 1, weight=None, frac: float = 0.10) -> dict[str, float]:
    """R² (weighted when ``weight``), MAE, Spearman rho, precision/recall at ``frac``.

    Rows where the prediction is missing (a baseline without history) are dropped and the
    share scored is reported as ``scored_share``.
    """
    y, pred = _arrays(y, pred)
    ok = np.isfinite(y) & np.isfinite(pred)
    w = None if weight is None else np.asarray(weight, float)[ok]
    y, pred = y[ok], pred[ok]
    pct = int(round(frac * 100))
    if len(y) < 3:
        return {"r2": np.nan, "mae": np.nan, "spearman": np.nan, f"precision_at_{pct}": np.nan,
                f"recall_at_{pct}": np.nan, "n": float(len(y)), "scored_share": float(ok.mean()) if len(ok) else 0.0}
    prec, rec = precision_recall_at(y, pred, sign, frac)
    return {
        "r2": weighted_r2(y, pred, w),
        "mae": float(np.mean(np.abs(y - pred))),
        "spearman": spearman(y, pred),
        f"precision_at_{pct}": prec,
        f"recall_at_{pct}": rec,
        "n": float(len(y)),
        "scored_share": float(ok.mean()),
    }


def future_level_precision(level_origin, y, pred, sign: int = 1, frac: float = 0.10) -> dict[str, float]:
    """Top-decile precision of the future level, model vs persistence.

    The true worst future decile is ``sign * (level + y)``; the model flags
    ``sign * (level + pred)``; persistence flags ``sign * level`` (nothing changes).
    """
    lv, y, pred = _arrays(level_origin, y, pred)
    ok = np.isfinite(lv) & np.isfinite(y) & np.isfinite(pred)
    lv, y, pred = lv[ok], y[ok], pred[ok]
    truth = worst_set(lv + y, sign, frac)
    out = {}
    for name, guess in (("model", lv + pred), ("persistence", lv)):
        flagged = worst_set(guess, sign, frac)
        out[name] = float(np.sum(truth & flagged) / flagged.sum()) if flagged.sum() else float("nan")
    return out


def brier_score(y_true, prob) -> float:
    y, p = _arrays(y_true, prob)
    ok = np.isfinite(y) & np.isfinite(p)
    return float(np.mean((p[ok] - y[ok]) ** 2))


def reliability_table(y_true, prob, n_bins: int = 10) -> pd.DataFrame:
    """Observed frequency against mean predicted probability, by bins of probability.

    Bins are quantiles of the predicted probability (equal counts), so that a rare event
    still has populated bins. Columns: ``bin, n, mean_predicted, observed``.
    """
    y, p = _arrays(y_true, prob)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    b = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    df = pd.DataFrame({"bin": b, "y": y, "p": p})
    tab = df.groupby("bin").agg(n=("y", "size"), mean_predicted=("p", "mean"), observed=("y", "mean"))
    return tab.reset_index()


def classification_metrics(y_true, prob, frac: float | None = None) -> dict[str, float]:
    """Brier score, the base-rate Brier score, expected calibration error and ROC AUC."""
    from sklearn.metrics import roc_auc_score

    y, p = _arrays(y_true, prob)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    tab = reliability_table(y, p)
    ece = float(np.sum(tab["n"] * (tab["mean_predicted"] - tab["observed"]).abs()) / tab["n"].sum())
    base = float(np.mean((y.mean() - y) ** 2))
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    return {"brier": brier_score(y, p), "brier_base_rate": base, "ece": ece, "roc_auc": auc}
