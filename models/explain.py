"""TreeSHAP explanations of the trajectory models, tidy and grouped by domain and lever.

Every zone is explained with exact path-dependent TreeSHAP: :mod:`territoria.models.treeshap`
(tables of leaf patterns, about 0.1 x the time of LightGBM's native ``pred_contrib`` on these
models, the same values within 1e-11; ``pred_contrib``, which ``shap.TreeExplainer`` also
calls for LightGBM, for trees the tables do not serve). The contributions of a zone plus the
base value equal the model's raw output for that zone (checked by :func:`check_additivity`,
tolerance 1e-6).

A hurdle model (unemployment: ``(1 - P(repeated survey)) * change``) is explained as
``(1 - p) * (base + sum of contributions)``: each feature's contribution is scaled by
``1 - p`` and one extra row, ``repeated_survey_probability``, carries ``-p * base``, so the
rows still add up to the model output.

Each feature's domain and lever flag come from the feature metadata, itself read from the
indicator registry: explanations are grouped by domain and split into levers (a policy can
move them) and context (it cannot). Neighbourhood features (neighbours' mean, gaps to
neighbours, EPCI or department) are a zone's *location*: the priorities' ``location_share``
reads how much of a zone's explanation is its surroundings rather than its own figures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from territoria.models.trajectory import HurdleRegressor
from territoria.models.treeshap import contributions

#: transforms describing the zone's surroundings rather than the zone itself
LOCATION_TRANSFORMS = frozenset(
    {"nbr_mean", "gap_nbr", "gap_epci", "gap_dep", "gap_commune", "commune", "change_annual_nbr_mean",
     "change_annual_mean_nbr_mean", "change_annual_dep_mean"}
)
SURVEY_FEATURE = "repeated_survey_probability"

EXPLANATION_COLUMNS = [
    "zone_code", "model", "feature", "domain", "is_lever", "feature_value", "contribution",
    "base_value", "model_output",
]


def _booster_and_iteration(estimator):
    reg = estimator.regressor_ if isinstance(estimator, HurdleRegressor) else estimator
    return reg.booster_, getattr(reg, "best_iteration_", None)


def tree_contributions(estimator, X: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Exact TreeSHAP contributions of every row of ``X`` to the estimator's prediction.

    Parameters
    ----------
    estimator : TrajectoryRegressor or HurdleRegressor
        A fitted trajectory model (see :mod:`territoria.models.trajectory`).
    X : DataFrame
        Design matrix with the columns the model was fitted on.

    Returns
    -------
    contributions : DataFrame
        zones × features (plus ``repeated_survey_probability`` for a hurdle model).
    base_value : ndarray
        The expected output each row's contributions start from.
    output : ndarray
        The model's prediction; ``contributions.sum(axis=1) + base_value == output``.

    Examples
    --------
    >>> from territoria.models.trajectory import TrajectoryRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    >>> m = TrajectoryRegressor(n_estimators=30).fit(X, 2 * X["a"] + rng.normal(size=200))
    >>> phi, base, out = tree_contributions(m, X)
    >>> bool(np.allclose(phi.sum(axis=1) + base, m.predict(X)))
    True
    """
    booster, n_iter = _booster_and_iteration(estimator)
    values = X.to_numpy(dtype=float)
    raw = contributions(booster, values, n_iter)
    phi = pd.DataFrame(raw[:, :-1], index=X.index, columns=list(X.columns))
    base = raw[:, -1].copy()
    if isinstance(estimator, HurdleRegressor):
        p = estimator.zero_probability(X)
        phi = phi.mul(1.0 - p, axis=0)
        phi[SURVEY_FEATURE] = -p * base
    output = phi.sum(axis=1).to_numpy() + base
    return phi, base, output


def check_additivity(contributions: pd.DataFrame, base_value, output, tol: float = 1e-6) -> float:
    """Largest |sum of contributions + base - output|; raises when it exceeds ``tol``."""
    gap = np.abs(contributions.sum(axis=1).to_numpy() + np.asarray(base_value) - np.asarray(output))
    worst = float(np.nanmax(gap)) if len(gap) else 0.0
    if worst > tol:
        raise AssertionError(f"SHAP additivity broken: max gap {worst:.3g} > {tol}")
    return worst


def feature_info(meta: pd.DataFrame, features) -> pd.DataFrame:
    """Indicator, domain, lever flag and transform of each feature (index: feature name).

    The hurdle model's survey-probability term is census design: context, no domain.
    """
    info = meta.drop_duplicates("feature").set_index("feature")
    info = info.reindex(pd.Index(list(features), name="feature"))
    info["indicator"] = info["indicator"].fillna(info.index.to_series())
    info["domain"] = info["domain"].fillna("context")
    info["is_lever"] = info["is_lever"].fillna(False).astype(bool)
    info["transform"] = info["transform"].fillna("model")
    info["is_location"] = info["transform"].isin(LOCATION_TRANSFORMS)
    return info[["indicator", "domain", "is_lever", "transform", "is_location", "label_en", "label_fr"]]


def tidy_contributions(
    model: str,
    contributions: pd.DataFrame,
    X: pd.DataFrame,
    base_value,
    output,
    meta: pd.DataFrame,
    top: int | None = 20,
) -> pd.DataFrame:
    """Long-format explanation rows of one model (the ``explanations.parquet`` contract).

    With ``top``, each zone keeps its ``top`` largest |contributions| and one
    ``(other features)`` row carrying the rest, so that every zone's rows still add up to the
    model output with a file of a manageable size.
    """
    info = feature_info(meta, contributions.columns)
    zones = contributions.index.to_numpy()
    names = np.asarray(contributions.columns, dtype=object)
    C = contributions.to_numpy(dtype=float)
    V = X.reindex(columns=contributions.columns).to_numpy(dtype=float)
    n, k = C.shape
    base = np.asarray(base_value, dtype=float)
    output = np.asarray(output, dtype=float)
    domain = info["domain"].to_numpy(dtype=object)
    is_lever = info["is_lever"].to_numpy(dtype=bool)
    # rows grouped by zone, the zones in code order: each zone's kept contributions (largest
    # first), then its "(other features)" row
    by_code = np.argsort(zones, kind="stable")
    if top is not None and top < k:
        # summed in the frame's own memory layout, which sets the rounding of the last bits
        total = C.sum(axis=1)[by_code]
        C = C[by_code]
        keep = largest_first(np.nan_to_num(np.abs(C), copy=False), top)
        kept = np.take_along_axis(C, keep, axis=1)
        other = total - kept.sum(axis=1)
        contribution = np.hstack([kept, other[:, None]]).ravel()
        feature_value = np.hstack([np.take_along_axis(V[by_code], keep, axis=1), np.full((n, 1), np.nan)]).ravel()
        cols = np.hstack([keep, np.full((n, 1), k)]).ravel()  # column k: the other features
        rows = np.repeat(by_code, top + 1)
        names = np.append(names, "(other features)")
        domain = np.append(domain, "other")
        is_lever = np.append(is_lever, False)
    else:
        rows = np.repeat(by_code, k)
        cols = np.tile(np.arange(k), n)
        contribution, feature_value = C[rows, cols], V[rows, cols]
    # string columns taken from their few distinct values by Arrow: ten times faster than
    # converting millions of Python strings
    return pd.DataFrame({
        "zone_code": pd.array(zones, dtype="str").take(rows),
        "model": pd.array([model], dtype="str").take(np.zeros(len(rows), np.intp)),
        "feature": pd.array(names, dtype="str").take(cols),
        "domain": pd.array(domain, dtype="str").take(cols),
        "is_lever": is_lever[cols],
        "feature_value": feature_value,
        "contribution": contribution,
        "base_value": base[rows],
        "model_output": output[rows],
    })


def largest_first(A: np.ndarray, top: int) -> np.ndarray:
    """Column positions of the ``top`` largest values of each row of ``A``, largest first,
    equal values in column order: ``np.argsort(-A, axis=1, kind="stable")[:, :top]``, by a
    partial selection (a third of the time on a commune SHAP matrix).

    Examples
    --------
    >>> largest_first(np.array([[1.0, 3.0, 2.0, 3.0], [0.0, 0.0, 5.0, 0.0]]), 2)
    array([[1, 3],
           [2, 0]])
    """
    n, k = A.shape
    if top <= 0:
        return np.zeros((n, 0), np.intp)
    if top >= k:
        return np.argsort(-A, axis=1, kind="stable")
    picked = np.argpartition(-A, top - 1, axis=1)[:, :top]
    picked.sort(axis=1)
    values = np.take_along_axis(A, picked, axis=1)
    out = np.take_along_axis(picked, np.argsort(-values, axis=1, kind="stable"), axis=1)
    # where values equal to the top-th largest are also left out, the partition chose among
    # equals arbitrarily: those rows take the full stable sort
    tied = (A >= values.min(axis=1, keepdims=True)).sum(axis=1) > top
    if tied.any():
        out[tied] = np.argsort(-A[tied], axis=1, kind="stable")[:, :top]
    return out


def global_importance(contributions: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Mean |contribution| per feature with its domain and lever flag, largest first."""
    info = feature_info(meta, contributions.columns)
    imp = contributions.abs().mean().rename("mean_abs_contribution")
    out = info.join(imp)
    out["share"] = out["mean_abs_contribution"] / out["mean_abs_contribution"].sum()
    return out.sort_values("mean_abs_contribution", ascending=False).reset_index()


def importance_by_domain(contributions: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Mean |contribution| summed per domain, with the lever share of each domain."""
    imp = global_importance(contributions, meta)
    out = imp.groupby("domain").agg(mean_abs_contribution=("mean_abs_contribution", "sum"),
                                    share=("share", "sum"))
    lever = imp[imp["is_lever"]].groupby("domain")["share"].sum()
    out["lever_share"] = lever.reindex(out.index).fillna(0.0) / out["share"].where(out["share"] > 0)
    return out.sort_values("share", ascending=False).reset_index()


def interaction_hints(contributions: pd.DataFrame, X: pd.DataFrame, top: int = 5, n_sample: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """For the ``top`` most important features, the feature that best explains the spread of
    their SHAP values at equal feature value (:func:`approximate_interactions`)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(X), size=min(n_sample, len(X)), replace=False)
    cols = [c for c in contributions.columns if c in X.columns]
    phi = contributions[cols].to_numpy(float)[rows]
    vals = X[cols].to_numpy(float)[rows]
    order = np.argsort(-np.abs(phi).mean(axis=0))[:top]
    out = []
    for i in order:
        inter = approximate_interactions(int(i), phi, vals)
        partner = next((int(j) for j in inter if j != i), None)
        if partner is not None:
            out.append({"feature": cols[i], "interacts_most_with": cols[partner]})
    return pd.DataFrame(out, columns=["feature", "interacts_most_with"])


def interaction_scores(index: int, phi: np.ndarray, X: np.ndarray) -> np.ndarray:
    """How much each feature seems to interact with feature ``index`` (0 for itself).

    The heuristic of ``shap.utils.approximate_interactions`` (which colours SHAP's dependence
    plots), vectorised over the features: rows sorted by the feature's value are cut into
    blocks of ``min(n / 10, 50)``; in each block where both vary, the absolute correlation of
    the feature's SHAP values with each other feature's values (and, separately, with its
    missingness) is summed; a feature scores the larger of its two sums. Rows beyond 10,000
    are not sampled here: callers pass a sample. Features with the same values (or the same
    missing rows, such as the secret cells of one Filosofi file) get exactly the same score.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 3))
    >>> phi = np.c_[X[:, 0] * X[:, 2], np.zeros(400), np.zeros(400)]  # feature 0 acts through 2
    >>> s = interaction_scores(0, phi, X)
    >>> bool(s[2] > 5 * s[1]), float(s[0])
    (True, 0.0)
    """
    X = np.asarray(X, float)
    srt = np.argsort(X[:, index])
    ref = np.asarray(phi, float)[srt, index]
    values = X[srt].T  # features × rows: each block of a feature is contiguous
    n = len(ref)
    step = max(min(int(n / 10.0), 50), 1)
    scores = np.zeros(values.shape[0])
    for part in (values, np.isnan(values).astype(float)):
        score = np.zeros(values.shape[0])
        for j in range(0, n, step):
            r = ref[j:j + step]
            if not np.std(r) > 0:
                continue
            block = part[:, j:j + step]
            ok = np.std(block, axis=1) > 0  # NaN (a missing value in the block) is not > 0
            xc = block[ok] - block[ok].mean(axis=1, keepdims=True)
            rc = r - r.mean()
            # row by row, not a matrix product: BLAS may sum two equal rows in different orders
            corr = (xc * rc).sum(axis=1) / np.sqrt((xc * xc).sum(axis=1) * (rc @ rc))
            score[ok] += np.abs(np.clip(corr, -1.0, 1.0))
        score[np.sum(np.abs(part), axis=1) < 1e-8] = 0.0
        score[index] = 0.0
        scores = np.maximum(scores, score)
    return scores


def approximate_interactions(index: int, phi: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Features ordered by :func:`interaction_scores` with feature ``index``, highest first
    (equal scores in column order).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 3))
    >>> phi = np.c_[X[:, 0] * X[:, 2], np.zeros(400), np.zeros(400)]  # feature 0 acts through 2
    >>> int(approximate_interactions(0, phi, X)[0])
    2
    """
    return np.argsort(-interaction_scores(index, phi, X), kind="stable")
