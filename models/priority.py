"""Priority score, ranks and flags: what planners act on.

The score combines, per zone, the current deprivation (composite index), the predicted
trajectory of key measures, the uncertainty of that forecast and the population concerned;
the formula and its parameters are in ``conf/priority.yml`` (see the comment at its top).
It is linear in the composite index's domain terms and in each trajectory model's output,
so that :func:`score_factors` converts index terms and SHAP contributions into exact score
points.

Flags follow the priority policy: top share nationally or cumulated domain burdens, with a
hysteresis rule across periods (a flagged zone stays flagged unless it clearly exits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from territoria.settings import load_config


class ScoreWeights(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: float = Field(0.6, ge=0)
    trajectory: float = Field(0.4, ge=0)


class TrajectoryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    measures: dict[str, float]
    z_clip: float = Field(3.0, gt=0)
    uncertainty: Literal["shrink", "none"] = "shrink"
    interval: Literal[80, 90] = 80

    @field_validator("measures")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(s < 0 for s in v.values()) or sum(v.values()) <= 0:
            raise ValueError("measures need non-negative shares with a positive sum")
        total = sum(v.values())
        return {k: s / total for k, s in v.items()}


class PopulationPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    full_weight_from: float = Field(2000, gt=1)
    min_factor: float = Field(0.7, ge=0, le=1)


class FlagPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_share: float = Field(0.10, gt=0, lt=1)
    cumulated: bool = True
    exit_share: float = Field(0.15, gt=0, lt=1)

    @field_validator("exit_share")
    @classmethod
    def _exit(cls, v: float, info) -> float:
        top = info.data.get("top_share", 0.10)
        if v < top:
            raise ValueError(f"exit_share ({v}) must be >= top_share ({top}) for hysteresis")
        return v


class StabilityAudit(BaseModel):
    """Replicates of the scoring with perturbed inputs (:mod:`territoria.models.stability`)."""

    model_config = ConfigDict(extra="forbid")
    replicates: int = Field(200, ge=0, le=5000)
    seed: int = 2024
    trajectory: bool = True
    department_correlation: float = Field(0.1, ge=0, lt=1)
    index_weights: Literal["dirichlet", "uniform", "none"] = "dirichlet"
    weight_concentration: float = Field(50.0, gt=0)
    weight_spread: float = Field(0.5, ge=0, lt=1)
    indicator_noise: bool = True
    hysteresis: bool = True
    training_sample: Literal["folds", "bootstrap", "none"] = "folds"
    bootstrap_refits: int = Field(10, ge=0, le=500)


class FairnessAudit(BaseModel):
    """Groups and tolerances of the fairness audit (:mod:`territoria.models.fairness`)."""

    model_config = ConfigDict(extra="forbid")
    urban_density: float = Field(300.0, gt=0)
    size_breaks: list[float] = Field(default_factory=lambda: [2000.0, 5000.0, 20000.0])
    min_group_size: int = Field(30, ge=1)
    coverage_shortfall: float = Field(0.05, ge=0, lt=1)
    mae_ratio: float = Field(1.5, gt=1)
    bias_share_of_mae: float = Field(0.25, gt=0)
    flag_rate_ratio: tuple[float, float] = (0.5, 2.0)
    need_decile: int = Field(10, ge=1, le=10)
    p_priority_gap: float = Field(0.15, gt=0, le=1)
    min_measured_share: float = Field(0.5, ge=0, le=1)

    @field_validator("size_breaks")
    @classmethod
    def _breaks(cls, v: list[float]) -> list[float]:
        if not v or any(b <= a for a, b in zip(v, v[1:])) or v[0] <= 0:
            raise ValueError("size_breaks must be positive and increasing")
        return v

    @field_validator("flag_rate_ratio")
    @classmethod
    def _ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < 1 < v[1]:
            raise ValueError("flag_rate_ratio must be (low < 1, high > 1)")
        return v


class AuditPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stability: StabilityAudit = Field(default_factory=StabilityAudit)
    fairness: FairnessAudit = Field(default_factory=FairnessAudit)


class PriorityConfig(BaseModel):
    """The priority policy (``conf/priority.yml``)."""

    model_config = ConfigDict(extra="forbid")
    weights: ScoreWeights = Field(default_factory=ScoreWeights)
    trajectory: TrajectoryPolicy
    population: PopulationPolicy = Field(default_factory=PopulationPolicy)
    flags: FlagPolicy = Field(default_factory=FlagPolicy)
    audit: AuditPolicy = Field(default_factory=AuditPolicy)


def load_priority_config(path: Path | str | None = None) -> PriorityConfig:
    """Read and validate the priority policy; one-line errors naming the file."""
    return load_config(PriorityConfig, path, "priority.yml", "priority policy")

# --------------------------------------------------------------------------- components
def index_terms(index_model, X: pd.DataFrame, normalised: pd.DataFrame | None = None) -> tuple[pd.DataFrame, float]:
    """Exact decomposition of the composite index into domain terms.

    ``index = base + sum of terms``, with ``base`` the value of a zone at the national median
    of every domain (the index's neutral value) and each term ``w_d (v_d - base) / W``
    (``W``: the weights of the domains the zone has, under ``missing_domain: reweight``).

    Parameters
    ----------
    index_model : DeprivationIndex
        The fitted index.
    X : DataFrame
        Feature matrix (zones × indicators) it was applied to.
    normalised : DataFrame, optional
        ``index_model.normalise(X)``, when the caller already has it.
    """
    _, combined, _ = index_model.domain_frame(X, normalised)
    w = index_model.weights_.reindex(index_model.domains_).to_numpy(float)
    neutral = index_model.neutral_value()
    vals = combined.to_numpy(float)
    avail = ~np.isnan(vals)
    if index_model.missing_domain_ == "reweight":
        denom = avail.astype(float) @ w
    else:
        denom = np.full(len(vals), w.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(avail, w * (vals - neutral), 0.0) / denom[:, None]
    return pd.DataFrame(terms, index=combined.index, columns=list(combined.columns)), float(neutral)


def population_factor(population: pd.Series, policy: PopulationPolicy) -> pd.Series:
    """Log-scaled weight of a zone's population in [min_factor, 1] (1 from full_weight_from)."""
    pop = population.astype(float).clip(lower=0)
    f = np.log1p(pop) / np.log1p(policy.full_weight_from)
    return f.clip(policy.min_factor, 1.0).fillna(policy.min_factor).rename("population_factor")


def wide_predictions(predictions: pd.DataFrame, measures, level: int = 80) -> pd.DataFrame:
    """``prediction``, interval bounds and horizon end per measure as columns (index: zone code)."""
    p = predictions[predictions["target"].isin(list(measures))]
    lo, hi = f"low_{level}", f"high_{level}"
    w = p.pivot(index="zone_code", columns="target", values=["prediction", lo, hi, "horizon_end"])
    out = {}
    for m in measures:
        if ("prediction", m) in w.columns:
            out[f"pred_{m}"] = w[("prediction", m)]
            out[f"pred_{m}_low"] = w[(lo, m)]
            out[f"pred_{m}_high"] = w[(hi, m)]
            out[f"pred_{m}_end"] = w[("horizon_end", m)]
    return pd.DataFrame(out)


def trajectory_norms(wide: pd.DataFrame, measures) -> dict[str, dict[str, float]]:
    """National median and IQR of each measure's predicted change (the z-score scale)."""
    norms = {}
    for m in measures:
        col = f"pred_{m}"
        if col not in wide:
            continue
        x = wide[col].dropna().to_numpy()
        q1, med, q3 = np.percentile(x, [25, 50, 75]) if len(x) else (0.0, 0.0, 1.0)
        iqr = q3 - q1
        norms[m] = {"median": float(med), "iqr": float(iqr if iqr > 0 else max(np.std(x), 1e-9))}
    return norms


def trajectory_component(
    wide: pd.DataFrame, policy: TrajectoryPolicy, norms: dict, signs: dict[str, int]
) -> pd.DataFrame:
    """Per measure: oriented z (worsening > 0), clipped z, certainty; and T with its bounds.

    ``T_low``/``T_high`` use each measure's interval bound that is less/more worrying, so that
    the priority score carries the forecast uncertainty into a score interval.
    """
    out = pd.DataFrame(index=wide.index)
    T = pd.Series(0.0, index=wide.index)
    T_lo, T_hi = T.copy(), T.copy()
    c_ = policy.z_clip
    for m, share in policy.measures.items():
        if m not in norms:
            continue
        med, iqr, s = norms[m]["median"], norms[m]["iqr"], signs.get(m, 1)
        pred = wide[f"pred_{m}"]
        z = s * (pred - med) / iqr
        lo_b, hi_b = wide[f"pred_{m}_low"], wide[f"pred_{m}_high"]
        z_a, z_b = s * (lo_b - med) / iqr, s * (hi_b - med) / iqr
        if policy.uncertainty == "shrink":
            certainty = 1.0 / (1.0 + ((hi_b - lo_b) / 2).abs() / iqr)
        else:
            certainty = pd.Series(1.0, index=wide.index)
        certainty = certainty.fillna(1.0)
        zc = z.clip(-c_, c_).fillna(0.0)  # no forecast: neutral
        out[f"z_{m}"] = z
        out[f"certainty_{m}"] = certainty
        T += share * certainty * zc
        T_lo += share * certainty * np.minimum(z_a, z_b).clip(-c_, c_).fillna(0.0)
        T_hi += share * certainty * np.maximum(z_a, z_b).clip(-c_, c_).fillna(0.0)
    out["trajectory_T"] = T
    out["trajectory_T_low"] = T_lo
    out["trajectory_T_high"] = T_hi
    return out


def compose_score(index_value, T, pop_factor, config: PriorityConfig):
    """The priority score (see ``conf/priority.yml``) from its three components."""
    w = config.weights
    traj = 0.5 + np.asarray(T, float) / (2 * config.trajectory.z_clip)
    return 100.0 * np.asarray(pop_factor, float) * (
        w.level * np.asarray(index_value, float) / 100.0 + w.trajectory * traj
    )


def score_factors(
    comp: pd.DataFrame, pop_factor: pd.Series, config: PriorityConfig, norms: dict, signs: dict[str, int]
) -> pd.DataFrame:
    """Score points per unit of each model output, per zone (columns: ``index`` and measures).

    Multiplying a trajectory model's SHAP contributions by its factor gives their effect on
    the priority score; clipped z-scores scale the factor by clipped/unclipped so that the
    decomposition stays exact.
    """
    out = pd.DataFrame(index=comp.index)
    out["index"] = pop_factor * config.weights.level
    c_ = config.trajectory.z_clip
    for m, share in config.trajectory.measures.items():
        if m not in norms:
            continue
        z = comp[f"z_{m}"]
        ratio = (z.clip(-c_, c_) / z).where(z.abs() > c_, 1.0).fillna(0.0)
        out[m] = (100.0 * pop_factor * config.weights.trajectory * share * comp[f"certainty_{m}"]
                  * signs.get(m, 1) * ratio / (norms[m]["iqr"] * 2 * c_))
    return out


def _rank_desc(values: pd.Series) -> pd.Series:
    """1 = highest value; ties share the best rank; NaN stays NaN."""
    return values.rank(ascending=False, method="min")


def priority_table(
    index: pd.DataFrame,
    predictions: pd.DataFrame,
    identity: pd.DataFrame,
    population: pd.Series,
    config: PriorityConfig,
    signs: dict[str, int],
    norms: dict | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Score, interval and ranks of every zone (index: zone code).

    Parameters
    ----------
    index : DataFrame
        Composite index output (``deprivation_index`` and ``domain_<d>`` columns) by zone.
    predictions : DataFrame
        Long forecasts (``zone_code, target, prediction, low_80, high_80, ...``).
    identity : DataFrame
        ``zone_name, departement, epci`` by zone code.
    population : Series
        Inhabitants at the reference period.
    signs : dict
        +1 when a rise of the measure is a worsening, -1 otherwise (registry direction).
    norms : dict, optional
        Median and IQR of each predicted change; computed from ``predictions`` when absent
        (pass the baseline's norms when scoring a scenario, so that scores stay comparable).

    Returns
    -------
    table, norms
    """
    pol = config.trajectory
    wide = wide_predictions(predictions, pol.measures, pol.interval).reindex(index.index)
    norms = norms if norms is not None else trajectory_norms(wide, pol.measures)
    comp = trajectory_component(wide, pol, norms, signs)
    pf = population_factor(population.reindex(index.index), config.population)
    idx = index["deprivation_index"]
    score = pd.Series(compose_score(idx, comp["trajectory_T"], pf, config), index=index.index)
    low = compose_score(idx, comp["trajectory_T_low"], pf, config)
    high = compose_score(idx, comp["trajectory_T_high"], pf, config)
    t = identity.reindex(index.index)[["zone_name", "departement", "epci"]].copy()
    t["population"] = population.reindex(index.index)
    t = t.join(index)
    t = t.join(wide).join(comp)
    t["population_factor"] = pf
    t["predicted_change"] = comp["trajectory_T"]
    t["predicted_change_low"] = comp["trajectory_T_low"]
    t["predicted_change_high"] = comp["trajectory_T_high"]
    t["priority_score"] = score
    t["priority_score_low"] = low
    t["priority_score_high"] = high
    t["priority_rank"] = _rank_desc(score)
    t["priority_rank_department"] = score.groupby(t["departement"]).rank(ascending=False, method="min")
    t["priority_rank_epci"] = score.groupby(t["epci"]).rank(ascending=False, method="min")
    # rank interval: where the score's bounds would place the zone among the others' scores
    ref = np.sort(score.dropna().to_numpy())[::-1]
    n = len(ref)
    t["priority_rank_best"] = np.where(score.notna(), 1 + np.searchsorted(-ref, -np.asarray(high), side="left"), np.nan)
    t["priority_rank_worst"] = np.where(score.notna(), np.minimum(n, 1 + np.searchsorted(-ref, -np.asarray(low), side="left")), np.nan)
    t["priority_percentile"] = 1.0 - (t["priority_rank"] - 1) / max(n, 1)
    return t, norms


# --------------------------------------------------------------------------- flags
def parse_history(text) -> dict[int, bool]:
    """``"2018:1;2021:0"`` → ``{2018: True, 2021: False}`` (empty or missing: no history)."""
    if not isinstance(text, str) or not text.strip():
        return {}
    out = {}
    for item in text.split(";"):
        period, _, flag = item.partition(":")
        if period.strip().isdigit() and flag.strip() in ("0", "1"):
            out[int(period)] = flag.strip() == "1"
    return out


def format_history(history: dict[int, bool]) -> str:
    return ";".join(f"{p}:{int(f)}" for p, f in sorted(history.items()))


def flag_priorities(
    table: pd.DataFrame,
    cumulated_burdens: pd.Series | None,
    policy: FlagPolicy,
    period: int,
    previous: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Priority flags with hysteresis, status and history (index: zone code).

    A zone enters when it ranks in the top ``top_share`` or, with ``policy.cumulated``, when
    ``cumulated_burdens`` marks it (the diagnostics' cumulated flag: enough domains in the
    worst decile, see ``conf/diagnostics.yml``). A zone flagged at the latest earlier
    period of its history (``previous``: a former ``priorities.csv`` with ``zone_code`` and
    ``flag_history``) stays flagged while it ranks in the top ``exit_share``. History entries
    of the same period are replaced, so re-running a period is idempotent.

    Returns ``priority_flag``, ``flag_status`` (``new``, ``continuing``, ``retained``
    (kept by hysteresis), ``exited`` or empty), ``flag_reason`` (English), ``flag_reason_fr``
    and ``flag_history``.
    """
    n = int(table["priority_score"].notna().sum())
    rank = table["priority_rank"]
    top = rank <= np.ceil(policy.top_share * n)
    within_exit = rank <= np.ceil(policy.exit_share * n)
    cumulated = pd.Series(False, index=table.index)
    if policy.cumulated and cumulated_burdens is not None:
        cumulated = cumulated_burdens.reindex(table.index).fillna(False).astype(bool)
        cumulated &= table["priority_score"].notna()
    enters = top | cumulated
    hist = {}
    if previous is not None and "flag_history" in previous:
        prev = previous.set_index(previous["zone_code"].astype(str))["flag_history"]
        hist = {z: parse_history(h) for z, h in prev.items()}
    was = pd.Series(
        [_flag_before(hist.get(z, {}), period) for z in table.index], index=table.index, dtype=object
    )
    was_flagged = was.eq(True)
    retained = was_flagged & ~enters & within_exit
    flag = enters | retained
    status = np.select(
        [flag & was_flagged & ~retained, retained, flag & ~was_flagged, ~flag & was_flagged],
        ["continuing", "retained", "new", "exited"], default="",
    )
    reason = np.select(
        [top & cumulated, top, cumulated, retained],
        [f"top {policy.top_share:.0%} and cumulated burdens", f"top {policy.top_share:.0%}",
         "cumulated burdens (domains in the worst decile)",
         f"kept: flagged before and still in the top {policy.exit_share:.0%}"],
        default="",
    )
    reason_fr = np.select(
        [top & cumulated, top, cumulated, retained],
        [f"{policy.top_share:.0%} les plus prioritaires et cumul de fragilités", f"{policy.top_share:.0%} les plus prioritaires",
         "cumul de fragilités (domaines parmi les 10 % les plus défavorisés)",
         f"maintenue : déjà prioritaire et toujours parmi les {policy.exit_share:.0%} premières"],
        default="",
    )
    histories = []
    for z, f in zip(table.index, flag.to_numpy()):
        h = dict(hist.get(z, {}))
        h[int(period)] = bool(f)
        histories.append(format_history(h))
    return pd.DataFrame({"priority_flag": flag, "flag_status": status, "flag_reason": reason,
                         "flag_reason_fr": np.char.replace(reason_fr.astype(str), "%", "\u00a0%"),
                         "flag_history": histories}, index=table.index)


def _flag_before(history: dict[int, bool], period: int):
    earlier = [p for p in history if p < period]
    return history[max(earlier)] if earlier else None
