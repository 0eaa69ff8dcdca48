"""TreeSHAP explanations of the trajectory models, tidy and grouped by domain and lever.

LightGBM's native ``pred_contrib`` computes exact TreeSHAP values (``shap.TreeExplainer``
calls the same routine for LightGBM boosters); it is used for every zone. The contributions
of a zone plus the base value equal the model's raw output for that zone (checked by
:func:`check_additivity`, tolerance 1e-6).

A hurdle model (unemployment: ``(1 - P(repeated survey)) * change``) is explained as
``(1 - p) * (base + sum of contributions)``: each feature's contribution is scaled by
``1 - p`` and one extra row, ``repeated_survey_probability``, carries ``-p * base``, so the
rows still add up to the model output.

Each feature's domain and lever flag come from the feature metadata, itself read from the
indicator registry: explanations are grouped by domain and split into levers (a policy can
move them) and context (it cannot). Neighbourhood features (neighbours' mean, gaps to
neighbours, EPCI or department) are a zone's *location*: :func:`location_share` reads how
much of a zone's explanation is its surroundings rather than its own figures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from territoria.models.trajectory import HurdleRegressor

#: transforms describing the zone's surroundings rather than the zone itself
LOCATION_TRANSFORMS = frozenset(
    {"nbr_mean", "gap_nbr", "gap_epci", "gap_dep", "change_annual_nbr_mean",
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
    raw = booster.predict(values, pred_contrib=True, num_iteration=n_iter)
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
    if top is not None and top < k:
        order = np.argsort(-np.abs(np.nan_to_num(C)), axis=1, kind="stable")
        keep = order[:, :top]
        rows = np.repeat(np.arange(n), top)
        cols = keep.ravel()
        other = C.sum(axis=1) - np.take_along_axis(C, keep, axis=1).sum(axis=1)
    else:
        rows = np.repeat(np.arange(n), k)
        cols = np.tile(np.arange(k), n)
        other = None
    feat = names[cols]
    out = pd.DataFrame({
        "zone_code": zones[rows],
        "model": model,
        "feature": feat,
        "domain": info["domain"].to_numpy()[cols],
        "is_lever": info["is_lever"].to_numpy()[cols],
        "feature_value": V[rows, cols],
        "contribution": C[rows, cols],
        "base_value": np.asarray(base_value, dtype=float)[rows],
        "model_output": np.asarray(output, dtype=float)[rows],
    })
    if other is not None:
        rest = pd.DataFrame({
            "zone_code": zones, "model": model, "feature": "(other features)", "domain": "other",
            "is_lever": False, "feature_value": np.nan, "contribution": other,
            "base_value": np.asarray(base_value, dtype=float), "model_output": np.asarray(output, dtype=float),
        })
        out = pd.concat([out, rest], ignore_index=True)
    return out.sort_values(["zone_code", "model"], kind="stable").reset_index(drop=True)


def by_domain(contributions: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Contributions summed per domain and per lever/context split (zones × groups).

    Columns: one per domain, then ``levers`` and ``context`` (they sum to the same total).
    """
    info = feature_info(meta, contributions.columns)
    dom = contributions.T.groupby(info["domain"].to_numpy()).sum().T
    split = contributions.T.groupby(np.where(info["is_lever"].to_numpy(), "levers", "context")).sum().T
    return pd.concat([dom, split.reindex(columns=["levers", "context"], fill_value=0.0)], axis=1)


def location_share(contributions: pd.DataFrame, meta: pd.DataFrame) -> pd.Series:
    """Share of a zone's total |contribution| that comes from its surroundings (0-1)."""
    info = feature_info(meta, contributions.columns)
    absval = contributions.abs()
    total = absval.sum(axis=1)
    loc = absval.loc[:, info["is_location"].to_numpy()].sum(axis=1)
    return (loc / total.where(total > 0)).rename("location_share")


def global_importance(contributions: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Mean |contribution| per feature with its domain and lever flag, largest first."""
    info = feature_info(meta, contributions.columns)
    imp = contributions.abs().mean().rename("mean_abs_contribution")
    out = info.join(imp)
    out["share"] = out["mean_abs_contribution"] / out["mean_abs_contribution"].sum()
    return out.sort_values("mean_abs_contribution", ascending=False).reset_index()
