"""Stability of the priority list: how sure is a zone's place in it?

The priority score (:mod:`territoria.models.priority`) is computed from uncertain inputs:
forecasts that come with prediction intervals, an index built from indicators measured on
few residents in small communes, and domain weights that are a policy judgement. This module
replays the scoring ``B`` times with those inputs perturbed within their plausible error and
reports, per zone, the probability of being flagged (``p_priority``) and, for the list as a
whole, how much it moves (Jaccard overlap of the top share, Kendall tau of the scores).

What is perturbed in each replicate (``conf/priority.yml``, ``audit.stability``):

1. **Forecasts, within their own interval.** Each measure's predicted change of a zone is
   redrawn as ``prediction + half_width * t / t_q`` where ``half_width`` is the half-width of
   the zone's policy interval (80 %), ``t`` a Student-t variable and ``t_q`` its quantile of
   the same central level, so that the draw falls inside the zone's interval with exactly
   the interval's probability. The tail (degrees of freedom) is read from the two published
   levels: the ratio of the 90 % to the 80 % half-width (the conformal quantiles of the
   out-of-fold residuals) fixes it (:func:`tail_df_from_ratio`; a normal when the residuals
   are not heavier-tailed than normal). Errors of zones of the same department may be
   correlated (``department_correlation``, a Gaussian copula on the t numerator): the
   out-of-fold residuals come from a model that never saw the department, which can err in
   the same direction for its communes (the fairness audit measures the residuals'
   within-department correlation on the backtest; 0.01 to 0.10 on the bundled data). Errors
   of different measures are drawn independently. The interval is calibrated on
   department-blocked out-of-fold residuals, i.e. errors of models fitted on other data, so
   drawing within it carries part of the model's estimation uncertainty as well as the noise.
2. **Index inputs, within their measurement error.** The rates the index shrinks towards
   their department (:class:`~territoria.models.index.ShrinkageFit`: unemployment,
   activity, vacancy, NEET) come with an empirical-Bayes noise model, squared deviation =
   ``σ²_b + c / population``; the posterior standard deviation of a zone's shrunk rate is
   ``sqrt(c / (population + k))``. Each such indicator is moved by that much in its own
   units, mapped to the normal-score scale through the local slope of the zone's
   normal score (:func:`indicator_noise_sd`), and the domain score moves by the weighted sum
   (:func:`domain_noise_sd`); the domain's exponential transform is then recomputed against
   the fitted reference. Other indicators (exhaustive tax data, facility distances) are
   taken as measured. On the bundled data the unemployment rate of a commune of 400
   inhabitants gets ``sqrt(2282 / (400 + 234)) ≈ 1.9`` points, close to the binomial
   standard error of the median such commune's 8 % rate among its ~185 actives (2.0
   points). The cumulated burdens are counted on the perturbed domain scores against the
   run's decile thresholds.
3. **Domain weights.** Drawn around the configured weights (Dirichlet with mean the weights,
   or ±``weight_spread`` uniform factors, :func:`territoria.models.index.draw_weights`).
4. **The training sample** (``training_sample``). Each trajectory model has replicates fitted
   on other samples of departments (:mod:`territoria.models.bootstrap`): by default
   (``"folds"``) the cross-validation's fold models, each fitted without a fifth of the
   departments, as delete-a-group jackknife replicates (the run's forecast plus
   ``sqrt(G - 1)`` times a fold model's deviation from the fold models' mean: no extra fit);
   with ``"bootstrap"``, ``bootstrap_refits`` refits on department-block bootstrap samples
   (same parameters and procedure, only the data change). Replicate ``r`` draws its
   forecasts (point 1) around replicate model ``r mod`` their number's instead of the run's.
   Each replicate model's list is also scored alone (nothing else perturbed), which isolates
   how much the list owes to the sample (``StabilityResult.refits``). Drawing within the
   interval around a replicate model counts the estimation error the out-of-fold interval
   already holds a second time: ``p_priority`` leans to caution, and the replicate models'
   forecast spread is reported next to the interval half-width
   (``summary["refits"]["forecast_spread"]``) so an auditor sees by how much.

Population, the z-score norms and the certainty factors stay those of the run (the run's
policy, not an estimate). Each replicate applies the run's flag rule: top ``top_share``
nationally, cumulated burdens recomputed from the perturbed domain scores against the
run's decile thresholds, and, with ``hysteresis``, a zone flagged before stays flagged while
within the top ``exit_share`` (the rule the run applies, so ``p_priority`` is the
probability that *this run's rule* flags the zone).

Everything is vectorised over replicates × zones (chunks of replicates); each replicate has
its own random stream spawned from the seed, so results do not depend on the chunk size.

Examples
--------
Five zones, one forecast measure, no index noise, the top 40 % (2 zones) flagged: the zone
far above the others is always flagged, the one far below never, and the three close ones
share the second place according to their forecasts' uncertainty.

>>> import numpy as np, pandas as pd
>>> zones = pd.Index(list("abcde"), name="zone_code")
>>> index = IndexInputs.fixed(np.array([90.0, 50.0, 48.0, 46.0, 5.0]))
>>> traj = TrajectoryInputs(
...     measures=["m"], pred=np.zeros((5, 1)), half_width=np.full((5, 1), 0.5),
...     tail_df=np.array([np.inf]), certainty=np.ones((5, 1)), share=np.array([1.0]),
...     sign=np.array([1.0]), median=np.array([0.0]), iqr=np.array([1.0]), z_clip=3.0, level=0.8)
>>> rule = FlagRule(top_share=0.4, exit_share=0.6)
>>> problem = StabilityProblem(zones, index, traj, np.ones(5), 0.6, 0.4, rule)
>>> res = replicate(problem, StabilitySettings(replicates=100, seed=1))
>>> res.p_priority.round(2).tolist()
[1.0, 0.58, 0.24, 0.18, 0.0]
>>> round(res.summary["jaccard_top"]["mean"], 2)
0.72
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import brentq
from scipy.special import ndtri

from territoria.models.index import _midrank_fraction, draw_weights, exponential_transform
from territoria.models.kendall import KendallReference

#: replicates processed together (memory: chunk × zones × domains floats)
CHUNK = 25
#: threads scoring the chunks of replicates
REPLICATE_THREADS = 2


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class StabilitySettings:
    """How the replicates perturb the inputs (``audit.stability`` of ``conf/priority.yml``).

    Parameters
    ----------
    replicates : int
        Number of replicates ``B`` (0: no stability step).
    seed : int
        Seed of the random streams (one per replicate, spawned from it).
    trajectory : bool
        Redraw the forecasts within their intervals.
    department_correlation : float
        Correlation, in [0, 1), of the forecast errors of two zones of the same department.
    index_weights : {"dirichlet", "uniform", "none"}
        How domain weights are drawn around the configured ones.
    weight_concentration, weight_spread : float
        Dirichlet concentration (mean = the weights); uniform factor range ±spread.
    indicator_noise : bool
        Move the shrunk indicators by their empirical-Bayes posterior error.
    hysteresis : bool
        Apply the run's hysteresis (zones flagged before stay while in the top exit share).
    training_sample : {"folds", "bootstrap", "none"}
        Where the replicates' models come from: the cross-validation's fold models as
        jackknife replicates, refits on department-block bootstrap samples
        (:mod:`territoria.models.bootstrap`), or the run's models only. Replicate ``r`` takes
        its forecasts from replicate model ``r mod`` their number.
    bootstrap_refits : int
        Number of refits of each trajectory model with ``training_sample="bootstrap"``.
    """

    replicates: int = 200
    seed: int = 2024
    trajectory: bool = True
    department_correlation: float = 0.1
    index_weights: str = "dirichlet"
    weight_concentration: float = 50.0
    weight_spread: float = 0.5
    indicator_noise: bool = True
    hysteresis: bool = True
    training_sample: str = "folds"
    bootstrap_refits: int = 0


# --------------------------------------------------------------------------- inputs
@dataclass
class IndexInputs:
    """The composite index broken into what the replicates recombine (``D`` domains).

    ``scores`` are the domain scores (mean normal score of the domain's indicators, NaN when
    the zone has none), ``combined`` the values weighted into the index (exponential 0-100
    or the scores themselves), ``noise_sd`` the standard deviation of each domain score's
    measurement noise (0: none), ``reference`` the sorted fitted domain scores the
    exponential transform ranks against.
    """

    scores: np.ndarray  # zones × domains
    combined: np.ndarray  # zones × domains
    weights: np.ndarray  # domains
    noise_sd: np.ndarray  # zones × domains
    reference: list[np.ndarray]
    eligible: np.ndarray  # zones, bool
    domains: list[str] = field(default_factory=list)
    transform: str = "exponential"
    exponential_constant: float = 23.0
    missing_domain: str = "reweight"
    neutral: float = 0.0
    min_weight_coverage: float = 0.0

    @classmethod
    def fixed(cls, index: np.ndarray) -> IndexInputs:
        """A known index with no noise (one domain, weight 1): for tests and examples."""
        v = np.asarray(index, float)[:, None]
        return cls(scores=v.copy(), combined=v.copy(), weights=np.ones(1), noise_sd=np.zeros_like(v),
                   reference=[np.sort(v[np.isfinite(v[:, 0]), 0])], eligible=np.isfinite(v[:, 0]),
                   domains=["index"], transform="none")


@dataclass
class TrajectoryInputs:
    """Forecasts of the ``M`` measures and the run's z-score policy (see ``conf/priority.yml``)."""

    measures: list[str]
    pred: np.ndarray  # zones × measures (NaN: no forecast → neutral)
    half_width: np.ndarray  # zones × measures, of the policy interval
    tail_df: np.ndarray  # measures (inf: normal)
    certainty: np.ndarray  # zones × measures
    share: np.ndarray
    sign: np.ndarray
    median: np.ndarray
    iqr: np.ndarray
    z_clip: float
    level: float  # central level of the policy interval (0.8)
    #: forecasts of replicate models (bootstrap refits or jackknife fold replicates):
    #: refits × zones × measures (None: none)
    refit_pred: np.ndarray | None = None
    #: how they were made (:attr:`territoria.models.bootstrap.BootstrapForecasts.method`)
    refit_method: str = "bootstrap"

    def centre(self, m: int, members: np.ndarray | None) -> np.ndarray:
        """The forecasts replicates ``members`` start from for measure ``m``: the run's
        (one row), or each one's bootstrap refit (``member mod refits``; zones the run does
        not forecast stay without)."""
        pred = self.pred[:, m]
        if members is None or self.refit_pred is None or not len(self.refit_pred):
            return pred[None, :]
        refit = self.refit_pred[np.asarray(members) % len(self.refit_pred), :, m]
        return np.where(np.isfinite(pred)[None, :], refit, np.nan)


@dataclass
class FlagRule:
    """The run's flag rule: top share, cumulated burdens, hysteresis."""

    top_share: float
    exit_share: float
    cumulated: bool = False
    cumulated_thresholds: np.ndarray | None = None  # per domain, on the domain scores
    cumulated_min_domains: int = 3
    was_flagged: np.ndarray | None = None  # zones, bool (flagged at the previous period)


@dataclass
class StabilityProblem:
    """Everything one scoring needs, for all zones (``N``), in arrays."""

    zones: pd.Index
    index: IndexInputs
    trajectory: TrajectoryInputs
    pop_factor: np.ndarray
    w_level: float
    w_trajectory: float
    rule: FlagRule
    groups: np.ndarray | None = None  # department of each zone (correlated forecast errors)


@dataclass
class StabilityResult:
    """Per zone: ``zones`` (p_priority, p_top, rank quantiles); per replicate: ``replicates``
    (Jaccard, Kendall tau, Spearman, list size); ``summary`` (JSON-ready)."""

    zones: pd.DataFrame
    replicates: pd.DataFrame
    summary: dict
    #: one row per bootstrap refit scored alone (nothing else perturbed); empty without refits
    refits: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def p_priority(self) -> pd.Series:
        return self.zones["p_priority"]


# --------------------------------------------------------------------------- pure pieces
def tail_df_from_ratio(ratio: float, levels: tuple[float, float] = (0.8, 0.9)) -> float:
    """Degrees of freedom of the Student t whose central ``levels`` half-widths have ``ratio``.

    ``ratio`` is the half-width of the wider interval over that of the narrower one (1.2835
    for a normal at 80 and 90 %). A ratio at or below the normal's gives ``inf`` (normal);
    above that of a Cauchy (t with 1 degree of freedom), 1.

    Examples
    --------
    >>> round(tail_df_from_ratio(stats.t.ppf(0.95, 4) / stats.t.ppf(0.9, 4)), 6)
    4.0
    >>> tail_df_from_ratio(1.2)
    inf
    """
    a, b = sorted(levels)
    qa, qb = (1 + a) / 2, (1 + b) / 2

    def r(df: float) -> float:
        return float(stats.t.ppf(qb, df) / stats.t.ppf(qa, df))

    normal = float(stats.norm.ppf(qb) / stats.norm.ppf(qa))
    if not np.isfinite(ratio) or ratio <= normal * (1 + 1e-9):
        return math.inf
    if ratio >= r(1.0):
        return 1.0
    if ratio <= r(1e6):
        return math.inf
    return float(brentq(lambda d: r(d) - ratio, 1.0, 1e6, xtol=1e-10, rtol=1e-12))


def t_quantile(level: float, df: float) -> float:
    """Upper quantile of the central ``level`` interval of a t (``df = inf``: normal)."""
    q = (1 + level) / 2
    return float(stats.norm.ppf(q) if not np.isfinite(df) else stats.t.ppf(q, df))


def interval_draws(rngs, half_width: np.ndarray, level: float, df: float,
                   groups: np.ndarray | None = None, rho: float = 0.0) -> np.ndarray:
    """Errors drawn within each zone's interval: replicates × zones.

    ``half_width * t / t_q``: the draw lies within ``± half_width`` with probability
    ``level``. With ``groups`` and ``rho > 0`` the t numerator is
    ``sqrt(rho) g_group + sqrt(1 - rho) g_zone`` (still standard normal, so the marginal is
    exactly the t), correlating zones of a group. Zones with no finite half-width get 0.

    Examples
    --------
    >>> rngs = [np.random.default_rng(s) for s in range(4000)]
    >>> e = interval_draws(rngs, np.array([1.0, 2.0]), 0.8, np.inf)
    >>> bool(np.all(np.abs((np.abs(e) <= [1.0, 2.0]).mean(axis=0) - 0.8) < 0.02))
    True
    """
    hw = np.asarray(half_width, float)
    n = len(hw)
    B = len(rngs)
    out = np.empty((B, n))
    if groups is not None and rho > 0:
        codes, gi = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        n_groups = len(codes)
    for b, rng in enumerate(rngs):
        g = rng.standard_normal(n)
        if groups is not None and rho > 0:
            g = math.sqrt(rho) * rng.standard_normal(n_groups)[gi] + math.sqrt(1 - rho) * g
        if np.isfinite(df):
            g = g / np.sqrt(rng.chisquare(df, n) / df)
        out[b] = g
    ok = np.isfinite(hw)
    out *= np.where(ok, hw, 0.0) / t_quantile(level, df)
    return out


def indicator_noise_sd(oriented: np.ndarray, reference: np.ndarray, raw_sd: np.ndarray) -> np.ndarray:
    """Standard deviation on the normal-score scale of an indicator measured with ``raw_sd``.

    The normal score is ``Φ⁻¹`` of the value's mid-rank among the sorted ``reference``; a
    raw error of ``± raw_sd`` moves it by ``(z(x + sd) - z(x - sd)) / 2`` (a secant slope,
    which follows the local density of the reference). NaN values or errors give 0.

    Examples
    --------
    >>> ref = np.sort(np.random.default_rng(0).normal(size=20001))
    >>> float(np.round(indicator_noise_sd(np.array([0.0]), ref, np.array([0.1]))[0], 1))
    0.1
    """
    x = np.asarray(oriented, float)
    sd = np.nan_to_num(np.asarray(raw_sd, float), nan=0.0)
    hi = ndtri(_midrank_fraction(reference, x + sd))
    lo = ndtri(_midrank_fraction(reference, x - sd))
    out = (hi - lo) / 2
    return np.where(np.isfinite(out) & (sd > 0), out, 0.0)


def domain_noise_sd(z_sd: np.ndarray, available: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Standard deviation of a domain score (weighted mean of its available indicators) when
    each indicator has independent noise ``z_sd`` (zones × indicators):
    ``sqrt(Σ w² sd²) / Σ w`` over the available indicators; 0 where none is available."""
    w = np.asarray(weights, float)
    avail = np.asarray(available, bool)
    wsum = avail.astype(float) @ w
    var = (np.where(avail, np.asarray(z_sd, float), 0.0) ** 2) @ (w ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(wsum > 0, np.sqrt(var) / wsum, 0.0)


def combine_domains(combined: np.ndarray, weights: np.ndarray, missing_domain: str = "reweight",
                    neutral: float = 0.0, min_weight_coverage: float = 0.0) -> np.ndarray:
    """The index from domain values, for a batch of replicates: replicates × zones.

    ``combined``: zones × domains (shared by every replicate) or replicates × zones ×
    domains; ``weights``: replicates × domains. Same rules as
    :meth:`territoria.models.index.DeprivationIndex._combine` (``reweight``, ``neutral``,
    ``drop``; NaN below ``min_weight_coverage``).
    """
    W = np.atleast_2d(np.asarray(weights, float))
    C = np.asarray(combined, float)
    avail = ~np.isnan(C)
    vals = np.where(avail, C, neutral if missing_domain == "neutral" else 0.0)
    if C.ndim == 2:
        num = (vals @ W.T).T
        cover = (avail.astype(float) @ W.T).T
        missing_any = ((~avail).astype(float) @ (W > 0).T).T
    else:
        num = np.einsum("bnd,bd->bn", vals, W)
        cover = np.einsum("bnd,bd->bn", avail.astype(float), W)
        missing_any = np.einsum("bnd,bd->bn", (~avail).astype(float), (W > 0).astype(float))
    return _index_rule(num, cover, missing_any, W.sum(axis=1)[:, None], missing_domain, min_weight_coverage)


def _index_rule(num, cover, missing_any, total, missing_domain: str, min_weight_coverage: float) -> np.ndarray:
    """The index from its weighted sum, the weight of the domains present and of those missing."""
    with np.errstate(invalid="ignore", divide="ignore"):
        idx = num / cover if missing_domain == "reweight" else num / total
    if missing_domain == "drop":
        idx = np.where(missing_any > 0, np.nan, idx)
    idx = np.where(cover / total + 1e-12 >= min_weight_coverage, idx, np.nan)
    return np.where(cover > 0, idx, np.nan)


class MidrankLookup:
    """The Blom position of values among a sorted reference, in O(1) per value.

    :func:`territoria.models.index._midrank_fraction` searches the reference for every
    value (O(log n), cache-unfriendly for millions of values); here the count of reference
    values below each edge of a fine uniform grid (``cells_per_value`` cells per reference
    value) is computed once and counts in between are interpolated: the mid-rank is off by
    less than the number of reference values in one cell (under one rank for
    ``cells_per_value`` ≥ 4 on the domain scores), i.e. a position error below ``1 / n``.

    Examples
    --------
    >>> ref = np.sort(np.random.default_rng(0).normal(size=5000))
    >>> v = np.random.default_rng(1).normal(size=1000) * 1.5
    >>> bool(np.max(np.abs(MidrankLookup(ref).fraction(v) - _midrank_fraction(ref, v))) < 2 / 5000)
    True
    """

    def __init__(self, ref_sorted: np.ndarray, cells_per_value: int = 8) -> None:
        ref = np.asarray(ref_sorted, float)
        self.n = len(ref)
        if self.n == 0:
            self.lo, self.step, self.cells = 0.0, 1.0, 1
            self.left = np.zeros(2)
            return
        self.lo, hi = float(ref[0]), float(ref[-1])
        self.cells = max(1024, cells_per_value * self.n)
        self.step = (hi - self.lo) / self.cells if hi > self.lo else 1.0
        edges = self.lo + self.step * np.arange(self.cells + 1)
        self.left = np.searchsorted(ref, edges, side="left").astype(float)
        self.left[-1] = self.n

    def fraction(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, float)
        t = np.clip(np.nan_to_num((v - self.lo) / self.step, nan=0.0), 0.0, float(self.cells))
        k = np.minimum(t.astype(np.int64), self.cells - 1)
        w = t - k
        count = self.left[k] + w * (self.left[k + 1] - self.left[k])
        out = (count + 0.5 - 0.375) / (self.n + 0.25)
        return np.where(np.isnan(v), np.nan, out)


def compose(index: np.ndarray, T: np.ndarray, pop_factor: np.ndarray, w_level: float,
            w_trajectory: float, z_clip: float) -> np.ndarray:
    """The priority score of ``conf/priority.yml`` (broadcasts over replicates)."""
    return 100.0 * pop_factor * (w_level * index / 100.0 + w_trajectory * (0.5 + T / (2 * z_clip)))


def kth_largest(S: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Per row of ``S`` (NaN ignored), the ``k``-th largest value (``k`` ≥ 1)."""
    S = np.atleast_2d(S)
    v = np.where(np.isfinite(S), -S, np.inf)
    k = int(k)
    return -np.partition(v, k - 1, axis=1)[:, k - 1]


def flags_of(S: np.ndarray, rule: FlagRule, n_vulnerable: np.ndarray | None = None,
             hysteresis: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Flags of each replicate's scores (replicates × zones): ``(flag, in_top)``.

    Top ``top_share`` by rank (ties share the best rank, as the run's ranks), or
    ``n_vulnerable >= cumulated_min_domains`` (when the rule has cumulated burdens), or,
    with ``hysteresis``, flagged before and within the top ``exit_share``. NaN scores are
    never flagged.
    """
    S = np.atleast_2d(S)
    ok = np.isfinite(S)
    n = int(ok[0].sum())
    if n == 0:
        z = np.zeros_like(ok)
        return z, z
    k_top = min(n, int(np.ceil(rule.top_share * n)))
    in_top = ok & (S >= kth_largest(S, k_top)[:, None])
    flag = in_top.copy()
    if rule.cumulated and n_vulnerable is not None:
        flag |= ok & (np.atleast_2d(n_vulnerable) >= rule.cumulated_min_domains)
    if hysteresis and rule.was_flagged is not None and np.any(rule.was_flagged):
        k_exit = min(n, int(np.ceil(rule.exit_share * n)))
        flag |= ok & np.asarray(rule.was_flagged, bool)[None, :] & (S >= kth_largest(S, k_exit)[:, None])
    return flag, in_top


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard overlap of two boolean membership vectors (1 when both are empty).

    >>> jaccard(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool))
    0.3333333333333333
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum() / union)


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors over the zones both have (O(n log n)).

    >>> kendall_tau(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4]))
    0.6666666666666669
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    return float(stats.kendalltau(x[ok], y[ok]).statistic)


def ranks_desc(S: np.ndarray) -> np.ndarray:
    """Ranks (1 = highest; ties: the best rank, as the run's; NaN last) of each row."""
    S = np.atleast_2d(S)
    v = np.where(np.isfinite(S), -S, np.inf)
    order = np.argsort(v, axis=1, kind="stable")
    sv = np.take_along_axis(v, order, axis=1)
    pos = np.arange(S.shape[1])[None, :].repeat(S.shape[0], axis=0)
    # ties: the first position of each run of equal values
    with np.errstate(invalid="ignore"):
        first = np.where(np.diff(sv, axis=1, prepend=np.nan) == 0, 0, pos)
    first = np.maximum.accumulate(first, axis=1)
    out = np.empty_like(order)
    np.put_along_axis(out, order, first + 1, axis=1)
    return out


def _describe(x: np.ndarray) -> dict:
    x = np.asarray(x, float)
    return {"mean": float(np.mean(x)), "p05": float(np.quantile(x, 0.05)),
            "median": float(np.median(x)), "p95": float(np.quantile(x, 0.95)),
            "min": float(np.min(x)), "max": float(np.max(x))}


# --------------------------------------------------------------------------- replicates
def score_replicates(problem: StabilityProblem, settings: StabilitySettings, rngs,
                     members: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores and cumulated-burden counts of a batch of replicates (one generator each):
    two arrays of replicates × zones.

    ``members`` are the replicates' numbers: with bootstrap refits in the problem, replicate
    ``r`` starts from the forecasts of refit ``r mod refits`` (None: from the run's).

    Only the domains with measurement noise are recomputed per replicate: the index's
    weighted sum is the unperturbed domains' part (one matrix product for all replicates)
    plus the change of each noisy domain, so no replicates × zones × domains array is built.
    """
    ix, tr = problem.index, problem.trajectory
    B, n = len(rngs), len(problem.zones)
    D = ix.combined.shape[1]
    # domain weights
    if settings.index_weights == "none" or D == 1:
        W = np.repeat(ix.weights[None, :], B, axis=0)
    else:
        base = pd.Series(ix.weights)
        W = np.vstack([draw_weights(base, 1, rng, method=settings.index_weights, spread=settings.weight_spread,
                                    concentration=settings.weight_concentration).to_numpy()[0] for rng in rngs])
    avail = ~np.isnan(ix.combined)
    fill = ix.neutral if ix.missing_domain == "neutral" else 0.0
    vals0 = np.where(avail, ix.combined, fill)
    num = (vals0 @ W.T).T
    cover = (avail.astype(float) @ W.T).T
    rule = problem.rule
    cumulate = rule.cumulated and rule.cumulated_thresholds is not None
    thr = np.asarray(rule.cumulated_thresholds, float) if cumulate else None
    noisy = [d for d in range(D) if settings.indicator_noise and np.any(ix.noise_sd[:, d] > 0)]
    nv = None
    if cumulate:
        fixed = [d for d in range(D) if d not in noisy]
        nv = np.zeros((B, n), dtype=np.int16)
        nv += (np.nan_to_num(ix.scores[:, fixed], nan=-np.inf) >= thr[fixed]).sum(axis=1).astype(np.int16)[None, :]
    if noisy:
        eps = np.stack([rng.standard_normal((len(noisy), n)) for rng in rngs], axis=1)  # noisy × B × n
        for j, d in enumerate(noisy):
            s = ix.scores[None, :, d] + ix.noise_sd[None, :, d] * eps[j]
            if ix.transform == "exponential":
                c = exponential_transform(_lookup(ix, d).fraction(s), ix.exponential_constant)
            else:
                c = s
            # zones without noise keep their exact value (the lookup is exact to 1 / n only)
            c = np.where(ix.noise_sd[None, :, d] > 0, c, vals0[None, :, d])
            c = np.where(avail[None, :, d], c, fill)
            num += (c - vals0[None, :, d]) * W[:, d][:, None]
            if cumulate:
                nv += (np.nan_to_num(s, nan=-np.inf) >= thr[d])
    # which zones have an index is a matter of data (domains present), not of weights: the
    # run's weights decide it, so that every replicate scores the same zones
    w0 = ix.weights[None, :]
    has = _index_rule((vals0 @ w0.T).T, (avail.astype(float) @ w0.T).T, ((~avail).astype(float) @ (w0 > 0).T).T,
                      w0.sum(axis=1)[:, None], ix.missing_domain, ix.min_weight_coverage)[0]
    has = np.isfinite(has) & ix.eligible
    with np.errstate(invalid="ignore", divide="ignore"):
        index = num / cover if ix.missing_domain == "reweight" else num / W.sum(axis=1)[:, None]
    index = np.where(has[None, :], index, np.nan)
    # forecasts within their intervals
    T = np.zeros((B, n))
    for m in range(len(tr.measures)):
        pred = tr.pred[:, m]
        centre = tr.centre(m, members)
        weight = tr.share[m] * np.nan_to_num(tr.certainty[:, m], nan=1.0)
        if settings.trajectory:
            e = interval_draws(rngs, tr.half_width[:, m], tr.level, float(tr.tail_df[m]), problem.groups,
                               settings.department_correlation)
            e += centre
        else:
            e = np.repeat(centre, B, axis=0) if len(centre) == 1 else centre.copy()
        e -= tr.median[m]
        e *= tr.sign[m] / tr.iqr[m]
        np.clip(e, -tr.z_clip, tr.z_clip, out=e)
        T += np.where(np.isfinite(pred), weight, 0.0)[None, :] * np.nan_to_num(e, nan=0.0)
    S = compose(index, T, problem.pop_factor[None, :], problem.w_level, problem.w_trajectory, tr.z_clip)
    return S, nv


def _lookup(ix: IndexInputs, d: int) -> MidrankLookup:
    cache = ix.__dict__.setdefault("_lookups", {})
    if d not in cache:
        cache[d] = MidrankLookup(ix.reference[d])
    return cache[d]


def baseline_scores(problem: StabilityProblem) -> tuple[np.ndarray, np.ndarray | None]:
    """The run's scores and cumulated counts rebuilt from the problem, nothing perturbed."""
    quiet = StabilitySettings(replicates=1, trajectory=False, index_weights="none", indicator_noise=False)
    S, nv = score_replicates(problem, quiet, [np.random.default_rng(0)])
    return S[0], None if nv is None else nv[0]


def replicate(problem: StabilityProblem, settings: StabilitySettings,
              baseline_score: np.ndarray | None = None, baseline_flag: np.ndarray | None = None) -> StabilityResult:
    """Score ``settings.replicates`` perturbed replicates and summarise them.

    Parameters
    ----------
    problem : StabilityProblem
        The run's inputs in arrays.
    settings : StabilitySettings
        What is perturbed, how many replicates, the seed.
    baseline_score, baseline_flag : array, optional
        The run's scores and flags (default: rebuilt from ``problem`` with nothing perturbed).
        The rebuilt ones are compared with them (``summary["reproduces_run"]``).

    Returns
    -------
    StabilityResult
    """
    B, n = int(settings.replicates), len(problem.zones)
    if B < 1:
        raise ValueError("replicates must be >= 1")
    S0, nv0 = baseline_scores(problem)
    f0, top0 = flags_of(S0[None, :], problem.rule, None if nv0 is None else nv0[None, :], settings.hysteresis)
    f0, top0 = f0[0], top0[0]
    reproduces = {"score": True, "flag": True}
    if baseline_score is not None:
        bs = np.asarray(baseline_score, float)
        reproduces["score"] = bool(np.array_equal(np.isfinite(bs), np.isfinite(S0))
                                   and np.allclose(bs[np.isfinite(bs)], S0[np.isfinite(S0)], rtol=0, atol=1e-6))
        S0 = np.where(np.isfinite(bs), bs, np.nan)
        f0b, top0 = flags_of(S0[None, :], problem.rule, None if nv0 is None else nv0[None, :], settings.hysteresis)
        f0, top0 = f0b[0], top0[0]
    if baseline_flag is not None:
        bf = np.asarray(baseline_flag, bool)
        reproduces["flag"] = bool(np.array_equal(bf, f0))
        f0 = bf
    seeds = np.random.SeedSequence(settings.seed).spawn(B)
    count_flag = np.zeros(n)
    count_top = np.zeros(n)
    ranks = np.empty((B, n), dtype=np.int32)
    scored = np.isfinite(S0)
    r0 = ranks_desc(S0[None, :])[0][scored].astype(float)
    r0 -= r0.mean()
    kendall = KendallReference(S0[scored])

    def chunk(start: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        rngs = [np.random.default_rng(s) for s in seeds[start:start + CHUNK]]
        S, nv = score_replicates(problem, settings, rngs, members=np.arange(start, start + len(rngs)))
        flag, top = flags_of(S, problem.rule, nv, settings.hysteresis)
        R = ranks_desc(S)
        ranks[start:start + len(rngs)] = R
        # Spearman: Pearson correlation of the ranks (ties share the best rank)
        Rs = R[:, scored].astype(float)
        Rs -= Rs.mean(axis=1, keepdims=True)
        rho = (Rs @ r0) / np.sqrt((Rs ** 2).sum(axis=1) * (r0 @ r0))
        rows = [{
            "replicate": start + j + 1,
            "n_flagged": int(flag[j].sum()), "n_top": int(top[j].sum()),
            "jaccard_top": jaccard(top[j], top0), "jaccard_flagged": jaccard(flag[j], f0),
            "kept_share": float((flag[j] & f0).sum() / max(int(f0.sum()), 1)),
            "kendall_tau": kendall.tau(S[j, scored]), "spearman": float(rho[j]),
        } for j in range(len(rngs))]
        return flag.sum(axis=0), top.sum(axis=0), rows

    rows = []
    # each replicate has its own generator: chunks give the same numbers in any thread and
    # order; numpy's sorts and draws release the GIL, so two threads use two cores
    with ThreadPoolExecutor(REPLICATE_THREADS, thread_name_prefix="replicates") as pool:
        for n_flag, n_top, chunk_rows in pool.map(chunk, range(0, B, CHUNK)):
            count_flag += n_flag
            count_top += n_top
            rows += chunk_rows
    reps = pd.DataFrame(rows)
    p = np.where(scored, count_flag / B, np.nan)
    rank_q = np.quantile(ranks, [0.05, 0.5, 0.95], axis=0)
    zones = pd.DataFrame({
        "priority_score": S0, "priority_flag": f0, "p_priority": p,
        "p_top": np.where(scored, count_top / B, np.nan),
        "rank_p05": np.where(scored, rank_q[0], np.nan), "rank_median": np.where(scored, rank_q[1], np.nan),
        "rank_p95": np.where(scored, rank_q[2], np.nan),
    }, index=problem.zones)
    flagged = f0 & scored
    summary = {
        "replicates": B, "seed": int(settings.seed), "zones_scored": int(scored.sum()),
        "level": problem.trajectory.level,
        "flagged": int(flagged.sum()), "top_share": problem.rule.top_share,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "reproduces_run": reproduces,
        "jaccard_top": _describe(reps["jaccard_top"]), "jaccard_flagged": _describe(reps["jaccard_flagged"]),
        "kept_share": _describe(reps["kept_share"]),
        "kendall_tau": _describe(reps["kendall_tau"]), "spearman": _describe(reps["spearman"]),
        "n_flagged": _describe(reps["n_flagged"]),
        "p_priority": {
            "flagged_mean": float(p[flagged].mean()) if flagged.any() else None,
            "flagged_share_at_least_0.9": float((p[flagged] >= 0.9).mean()) if flagged.any() else None,
            "flagged_share_below_0.5": float((p[flagged] < 0.5).mean()) if flagged.any() else None,
            "not_flagged_at_least_0.5": int((p[scored & ~f0] >= 0.5).sum()),
            "not_flagged_above_0.1": int((p[scored & ~f0] > 0.1).sum()),
            "uncertain_0.1_0.9": int(((p > 0.1) & (p < 0.9)).sum()),
            "expected_list_size": float(np.nansum(p)),
        },
        "tail_df": {m: (None if not np.isfinite(d) else float(d))
                    for m, d in zip(problem.trajectory.measures, problem.trajectory.tail_df)},
    }
    refits = pd.DataFrame()
    if problem.trajectory.refit_pred is not None and len(problem.trajectory.refit_pred):
        refits = refit_lists(problem, settings, S0, top0, f0)
        summary["refits"] = {
            "refits": int(len(refits)), "method": problem.trajectory.refit_method,
            **{k: _describe(refits[k]) for k in ("jaccard_top", "jaccard_flagged", "kept_share", "kendall_tau")},
            "forecast_spread": refit_spread(problem.trajectory),
        }
    return StabilityResult(zones=zones, replicates=reps, summary=summary, refits=refits)


def refit_lists(problem: StabilityProblem, settings: StabilitySettings, S0: np.ndarray, top0: np.ndarray,
                f0: np.ndarray) -> pd.DataFrame:
    """Each bootstrap refit's list with nothing else perturbed, against the run's (``S0``,
    its top share ``top0`` and flags ``f0``): one row per refit."""
    alone = StabilitySettings(replicates=1, trajectory=False, index_weights="none", indicator_noise=False,
                              hysteresis=settings.hysteresis)
    scored = np.isfinite(S0)
    rows = []
    for k in range(len(problem.trajectory.refit_pred)):
        S, nv = score_replicates(problem, alone, [np.random.default_rng(0)], members=np.array([k]))
        flag, top = flags_of(S, problem.rule, nv, settings.hysteresis)
        rows.append({
            "refit": k + 1, "n_flagged": int(flag[0].sum()),
            "jaccard_top": jaccard(top[0], top0), "jaccard_flagged": jaccard(flag[0], f0),
            "kept_share": float((flag[0] & f0).sum() / max(int(f0.sum()), 1)),
            "kendall_tau": float(stats.kendalltau(S0[scored], S[0, scored]).statistic),
        })
    return pd.DataFrame(rows)


def refit_spread(tr: TrajectoryInputs) -> dict:
    """Per measure, the median (over zones) standard deviation of the refits' forecasts and
    its ratio to the median half-width of the policy interval: how much of the interval the
    sample's estimation error accounts for."""
    out = {}
    for m, name in enumerate(tr.measures):
        p = tr.refit_pred[:, :, m]
        ok = np.isfinite(tr.pred[:, m]) & np.all(np.isfinite(p), axis=0)
        if not ok.any() or len(p) < 2:
            continue
        # jackknife replicates carry the estimator's variance as they are (ddof 0)
        sd = float(np.median(np.std(p[:, ok], axis=0, ddof=0 if tr.refit_method == "folds" else 1)))
        hw = float(np.nanmedian(tr.half_width[ok, m]))
        out[name] = {"median_sd": sd, "median_half_width": hw, "sd_to_half_width": sd / hw if hw > 0 else None}
    return out


# --------------------------------------------------------------------------- from a scored run
def index_inputs(index_model, X: pd.DataFrame, indicator_noise: bool = True,
                 normalised: pd.DataFrame | None = None) -> IndexInputs:
    """Domain scores, transformed values, weights and measurement noise of a fitted
    :class:`~territoria.models.index.DeprivationIndex` applied to ``X`` (zones × features,
    indexed by zone code); ``normalised`` is ``index_model.normalise(X)`` when the caller
    already has it."""
    z = index_model.reuse_normalised(X, normalised)
    scores, combined, _ = index_model.domain_frame(X, z)
    domains = list(index_model.domains_)
    noise = np.zeros(scores.shape)
    if indicator_noise and getattr(index_model, "shrinkage_", None):
        noise = _domain_noise(index_model, X, domains, z)
    return IndexInputs(
        scores=scores[domains].to_numpy(float), combined=combined[domains].to_numpy(float),
        weights=index_model.weights_.reindex(domains).to_numpy(float), noise_sd=noise,
        reference=[index_model.domain_reference_[d] for d in domains],
        eligible=np.asarray(index_model.eligible(X), bool), domains=domains,
        transform=index_model.transform_, exponential_constant=float(index_model.exponential_constant_),
        missing_domain=index_model.missing_domain_, neutral=float(index_model.neutral_value()),
        min_weight_coverage=float(index_model.min_weight_coverage_),
    )


def _domain_noise(index_model, X: pd.DataFrame, domains: list[str], z: pd.DataFrame) -> np.ndarray:
    """Zones × domains: sd of each domain score from the shrunk indicators' posterior error
    (``z``: X's normalised indicators)."""
    ind = index_model.indicators_
    pop = pd.to_numeric(X[index_model.config_.population_column], errors="coerce").to_numpy(float)
    out = np.zeros((len(X), len(domains)))
    for j, d in enumerate(domains):
        names = list(ind.index[ind["domain"] == d])
        noisy = [nm for nm in names if nm in index_model.shrinkage_ and index_model.shrinkage_[nm].k > 0]
        if not noisy:
            continue
        zsd = np.zeros((len(X), len(names)))
        for i, nm in enumerate(names):
            if nm not in noisy:
                continue
            fit = index_model.shrinkage_[nm]
            with np.errstate(invalid="ignore", divide="ignore"):
                raw_sd = np.where(pop > 0, np.sqrt(fit.noise / (pop + fit.k)), 0.0)
            x = index_model._oriented(X, nm, int(ind.loc[nm, "sign"]))
            zsd[:, i] = indicator_noise_sd(x, index_model.reference_[nm], raw_sd)
        avail = z[names].notna().to_numpy()
        out[:, j] = domain_noise_sd(zsd, avail, ind.loc[names, "weight"].to_numpy(float))
    return out


def trajectory_inputs(table: pd.DataFrame, predictions: pd.DataFrame, policy, norms: dict,
                      signs: dict[str, int]) -> TrajectoryInputs:
    """Forecasts, interval half-widths, tails and the z-score policy of the run's measures.

    ``table`` is the run's priority table (``pred_<m>``, ``certainty_<m>``), ``predictions``
    the long forecasts (both interval levels, to read the tail), ``policy`` the
    ``TrajectoryPolicy``.
    """
    level = policy.interval / 100.0
    other = 90 if policy.interval == 80 else 80
    measures = [m for m in policy.measures if m in norms and f"pred_{m}" in table]
    zones = table.index
    pred, half, cert, df = [], [], [], []
    for m in measures:
        p = predictions[predictions["target"] == m].set_index("zone_code").reindex(zones)
        hw = (p[f"high_{policy.interval}"] - p[f"low_{policy.interval}"]).to_numpy(float) / 2
        hw_o = (p[f"high_{other}"] - p[f"low_{other}"]).to_numpy(float) / 2
        ok = np.isfinite(hw) & np.isfinite(hw_o) & (hw > 0)
        ratio = float(np.median(hw_o[ok] / hw[ok])) if ok.any() else math.nan
        if other < policy.interval:
            ratio = 1.0 / ratio
        df.append(tail_df_from_ratio(ratio, (min(level, other / 100), max(level, other / 100))))
        pred.append(table[f"pred_{m}"].to_numpy(float))
        half.append(hw)
        cert.append(table[f"certainty_{m}"].to_numpy(float) if f"certainty_{m}" in table else np.ones(len(zones)))
    return TrajectoryInputs(
        measures=measures, pred=np.column_stack(pred) if pred else np.zeros((len(zones), 0)),
        half_width=np.column_stack(half) if half else np.zeros((len(zones), 0)), tail_df=np.array(df, float),
        certainty=np.column_stack(cert) if cert else np.zeros((len(zones), 0)),
        share=np.array([policy.measures[m] for m in measures], float),
        sign=np.array([signs.get(m, 1) for m in measures], float),
        median=np.array([norms[m]["median"] for m in measures], float),
        iqr=np.array([norms[m]["iqr"] for m in measures], float), z_clip=float(policy.z_clip), level=level,
    )


def cumulated_thresholds(index_inputs_: IndexInputs, worst_share: float) -> np.ndarray:
    """Per domain, the national worst-decile threshold of the domain scores (as the
    diagnostics compute it: the ``1 - worst_share`` quantile of the zones that have one)."""
    out = []
    for d in range(index_inputs_.scores.shape[1]):
        s = index_inputs_.scores[:, d]
        s = s[np.isfinite(s)]
        out.append(float(np.quantile(s, 1.0 - worst_share)) if len(s) else np.inf)
    return np.array(out)


def problem_from_run(index_model, features: pd.DataFrame, table: pd.DataFrame, predictions: pd.DataFrame,
                     config, signs: dict[str, int], norms: dict, *, worst_share: float = 0.10,
                     min_domains: int = 3, groups: pd.Series | None = None,
                     indicator_noise: bool = True, refits=None,
                     normalised: pd.DataFrame | None = None) -> StabilityProblem:
    """The stability problem of a scored run.

    Parameters
    ----------
    index_model : DeprivationIndex
        The fitted index.
    features : DataFrame
        The feature matrix indexed by zone code, in the order of ``table``.
    table : DataFrame
        The run's priority table (index: zone code) with ``pred_<m>``, ``certainty_<m>``,
        ``population_factor`` and ``flag_status``.
    predictions : DataFrame
        The long forecasts (``zone_code, target, low_80, high_80, low_90, high_90``).
    config : PriorityConfig
        The priority policy.
    signs, norms : dict
        The run's measure directions and z-score norms.
    worst_share, min_domains : float, int
        The diagnostics' cumulated-burden rule (``conf/diagnostics.yml``).
    groups : Series, optional
        Department of each zone (correlated forecast errors).
    refits : BootstrapForecasts, optional
        Forecasts of the replicate models (:mod:`territoria.models.bootstrap`).
    normalised : DataFrame, optional
        ``index_model.normalise(features)``, when the caller already has it.
    """
    X = features.reindex(table.index)
    if normalised is not None:
        normalised = normalised.reindex(table.index)
    ix = index_inputs(index_model, X, indicator_noise=indicator_noise, normalised=normalised)
    tr = trajectory_inputs(table, predictions, config.trajectory, norms, signs)
    if refits is not None and refits.refits:
        tr.refit_pred = align_refits(refits, table.index, tr.measures)
        tr.refit_method = refits.method
    pol = config.flags
    rule = FlagRule(top_share=pol.top_share, exit_share=pol.exit_share, cumulated=pol.cumulated,
                    cumulated_thresholds=cumulated_thresholds(ix, worst_share), cumulated_min_domains=min_domains,
                    was_flagged=was_flagged(table))
    return StabilityProblem(
        zones=table.index, index=ix, trajectory=tr,
        pop_factor=table["population_factor"].to_numpy(float), w_level=config.weights.level,
        w_trajectory=config.weights.trajectory, rule=rule,
        groups=None if groups is None else groups.reindex(table.index).astype(str).to_numpy(),
    )


def align_refits(refits, zones: pd.Index, measures: list[str]) -> np.ndarray:
    """The refits' forecasts (a :class:`~territoria.models.bootstrap.BootstrapForecasts`) as
    refits × ``zones`` × ``measures``, in that order (NaN for a zone the refits lack)."""
    missing = [m for m in measures if m not in refits.measures]
    if missing:
        raise ValueError(f"bootstrap refits lack the measures {missing}")
    pos = pd.Index(refits.zones).get_indexer(zones)
    cols = [refits.measures.index(m) for m in measures]
    arr = refits.predictions[:, :, cols][:, np.maximum(pos, 0), :]
    arr[:, pos < 0, :] = np.nan
    return arr


def was_flagged(table: pd.DataFrame) -> np.ndarray:
    """Zones flagged at the previous period, read from the run's ``flag_status``."""
    if "flag_status" not in table:
        return np.zeros(len(table), bool)
    return table["flag_status"].isin(["continuing", "retained", "exited"]).to_numpy()


def describe_range(d: dict, fmt: str = "{:.3f}") -> str:
    """``mean (5-95 %: p05 – p95)`` of a :func:`_describe` summary, for the readable reports."""
    return f"{fmt.format(d['mean'])} (5-95 %: {fmt.format(d['p05'])} – {fmt.format(d['p95'])})"


def to_markdown(result: StabilityResult, top: int = 15) -> str:
    """A readable account of the stability step (``audit/stability.md``)."""
    s = result.summary
    st = s["settings"]

    def rng(key: str, fmt: str = "{:.3f}") -> str:
        return describe_range(s[key], fmt)

    pp = s["p_priority"]
    L = ["# Stability of the priority list", "",
         f"{s['replicates']} replicates (seed {s['seed']}) of the run's scoring on {s['zones_scored']:,} communes, "
         f"each with perturbed inputs: forecasts redrawn within their own {int(round(100 * s.get('level', 0.8)))} % "
         f"interval ({'on' if st['trajectory'] else 'off'}; errors correlated {st['department_correlation']:.2f} within a "
         f"department; Student-t tails read from the 80/90 % interval ratio: "
         + ", ".join(f"{m} {'normal' if d is None else f'df {d:.1f}'}" for m, d in s["tail_df"].items())
         + f"), index indicators moved by their small-number error ({'on' if st['indicator_noise'] else 'off'}), "
         f"domain weights drawn ({st['index_weights']}"
         + (f", concentration {st['weight_concentration']:g}" if st["index_weights"] == "dirichlet" else
            f", ±{st['weight_spread']:.0%}" if st["index_weights"] == "uniform" else "")
         + f"); the run's flag rule ({'with' if st['hysteresis'] else 'without'} hysteresis) applied to each.", "",
         "Method and assumptions: `territoria.models.stability` (module docstring); settings: `audit.stability` in "
         "`conf/priority.yml`. Per replicate: `stability_replicates.csv`; per zone: `stability_zones.csv` and the "
         "`p_priority` column of `priorities.csv`.", "",
         "| measure | mean (5-95 % of replicates) |", "|---|---|",
         f"| Jaccard overlap of the top {s['top_share']:.0%} with the run's | {rng('jaccard_top')} |",
         f"| Jaccard overlap of the flagged list with the run's | {rng('jaccard_flagged')} |",
         f"| share of the run's flagged zones still flagged | {rng('kept_share')} |",
         f"| Kendall tau of the scores with the run's | {rng('kendall_tau')} |",
         f"| Spearman correlation of the scores | {rng('spearman')} |",
         f"| zones flagged | {rng('n_flagged', '{:,.0f}')} |", "",
         f"Run's list: {s['flagged']:,} zones; mean `p_priority` among them "
         f"{pp['flagged_mean']:.3f}; {pp['flagged_share_at_least_0.9']:.1%} have p ≥ 0.9 (stable core), "
         f"{pp['flagged_share_below_0.5']:.1%} have p < 0.5 (flagged in fewer than half of the replicates). "
         f"Outside the list, {pp['not_flagged_at_least_0.5']:,} zones have p ≥ 0.5 and "
         f"{pp['not_flagged_above_0.1']:,} have p > 0.1. {pp['uncertain_0.1_0.9']:,} zones are uncertain "
         f"(0.1 < p < 0.9); expected list size {pp['expected_list_size']:,.0f}.", ""]
    if "refits" in s:
        r = s["refits"]
        if r.get("method") == "folds":
            how = (f"Each trajectory model has {r['refits']} replicates from the cross-validation's fold models, "
                   "each fitted without one fold's departments, as delete-a-group jackknife replicates: the "
                   "run's forecast plus √(G − 1) times the fold model's deviation from the fold models' mean "
                   "(`territoria.models.bootstrap.fold_replicates`)")
        else:
            how = (f"Each trajectory model was refitted {r['refits']} times on department-block bootstrap samples "
                   "of its training communes (`territoria.models.bootstrap`)")
        L += [f"**Training sample.** {how}; replicate *r* starts from replicate model *r* mod {r['refits']}'s "
              "forecasts. Each replicate model's list alone, nothing else perturbed (`stability_refits.csv`):", "",
              "| measure | mean (5-95 % of refits) |", "|---|---|",
              f"| Jaccard overlap of the top {s['top_share']:.0%} with the run's | {describe_range(r['jaccard_top'])} |",
              f"| Jaccard overlap of the flagged list with the run's | {describe_range(r['jaccard_flagged'])} |",
              f"| share of the run's flagged zones still flagged | {describe_range(r['kept_share'])} |",
              f"| Kendall tau of the scores with the run's | {describe_range(r['kendall_tau'])} |", ""]
        spread = r.get("forecast_spread") or {}
        if spread:
            L += ["Spread of the replicate models' forecasts (median over zones) against the policy interval's "
                  "half-width: the part of the forecast error that comes from the training sample. The replicates "
                  "draw each forecast within its interval around the replicate model's forecast; the interval, "
                  "calibrated on out-of-fold errors, already carries some of this spread, so `p_priority` leans "
                  "to caution.", "",
                  "| measure | replicates' SD | interval half-width | ratio |", "|---|---|---|---|"]
            for m, d in spread.items():
                ratio = "–" if d["sd_to_half_width"] is None else f"{d['sd_to_half_width']:.2f}"
                L.append(f"| {m} | {d['median_sd']:.4g} | {d['median_half_width']:.4g} | {ratio} |")
            L.append("")
    rep = s["reproduces_run"]
    L += [f"Unperturbed, the replicate scoring reproduces the run's scores: {'yes' if rep['score'] else 'NO'}; "
          f"its flags: {'yes' if rep['flag'] else 'NO'}.", ""]
    z = result.zones
    border = z[(z["p_priority"] > 0.1) & (z["p_priority"] < 0.9)]
    if len(border):
        b = border.assign(dist=(border["p_priority"] - 0.5).abs()).sort_values(["dist", "rank_median"]).head(top)
        L += [f"Most uncertain zones (p closest to 0.5, first {len(b)}):", "",
              "| zone | run's flag | p_priority | rank 5 % | median rank | rank 95 % |", "|---|---|---|---|---|---|"]
        for code, r in b.iterrows():
            L.append(f"| {code} | {'yes' if r['priority_flag'] else 'no'} | {r['p_priority']:.2f} | "
                     f"{r['rank_p05']:.0f} | {r['rank_median']:.0f} | {r['rank_p95']:.0f} |")
        L.append("")
    return "\n".join(L)
