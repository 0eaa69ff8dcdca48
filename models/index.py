"""Composite deprivation index: an auditable multi-domain index per zone and period.

In the spirit of the English Index of Multiple Deprivation (IMD), every step is simple,
documented and configurable in ``conf/index.yml`` (read by :func:`load_index_config`):

1. **Indicators.** The registry's *scored* indicators present in the input (level features
   are named exactly like their indicator), never designations (QPV, ZRR, ... are not
   indicators of the registry), third-party indicators only with ``include_third_party``.
   Identity columns and derived features (``__chg``, ``__gap_nbr``, ...) are ignored.
2. **Orientation.** Each indicator is multiplied by its registry sign (+1 when higher is worse,
   -1 when higher is better): after this step a higher value is always worse.
   **Small numbers.** Census rates of small communes are noisy (two unemployed in a village
   of 30 make a 15 % rate): the rates listed under ``shrinkage`` in the configuration are
   shrunk towards their department's median by empirical Bayes, as the IMD does for its
   small-number indicators (:class:`ShrinkageFit`; the population at which half of a
   deviation is kept, ``k``, is estimated by ``fit`` and shown by ``describe``). Zones with
   a population below ``min_population`` (communes without residents) get no index.
3. **Normalisation** against the reference zones learnt by :meth:`DeprivationIndex.fit`:

   * ``rank_normal`` (default): the zone's mid-rank ``r`` among the ``n`` reference values
     (ties averaged) becomes the Blom normal score ``Φ⁻¹((r - 3/8) / (n + 1/4))``. Robust to
     skewed distances and counts; a new value is ranked within the reference values;
   * ``robust_z``: ``(x - median) / (1.4826 × MAD)``, clipped to ``±robust_z_clip`` (when
     the MAD is 0, as for counts that are mostly 0, the mean absolute deviation, then the
     standard deviation, is used instead).

   Each indicator is ranked among the zones that have it: an indicator published only for
   larger communes (Filosofi poverty rate) is ranked among them.
4. **Domains.** The domain score is the weighted mean of the normalised indicators the zone
   has in that domain (indicator weights in ``conf/index.yml``, default 1); the count of
   indicators available is reported per zone (``coverage_<domain>``).
5. **Transform.** ``exponential`` (default, IMD): the domain score's rank ``R`` in the
   reference zones (0 = least, 1 = most deprived) becomes ``-C ln(1 - R (1 - e^(-100/C)))``
   with ``C = 23``: 0-100, the worst 10 % of zones spanning 50-100, so one very bad domain
   is not cancelled by a good one (with ranks or z-scores simply summed it would be).
   ``none``: the domain score enters as it is (a mean of normal scores or z-scores).
6. **Weights.** The index is the weighted sum of the transformed domain scores (domain
   weights in ``conf/index.yml``, with their rationale; they sum to 1).
7. **Missing domains.** A zone with no indicator in a weighted domain: ``reweight`` (default)
   averages its other domains with renormalised weights; ``neutral`` counts the missing
   domain as the reference median; ``drop`` gives no index. Whatever the rule, a zone whose
   available domains carry less than ``min_weight_coverage`` of the weight gets no index.
   A weighted domain with no indicator at all in the fitted data is dropped (a warning
   names it) and the remaining weights renormalised (``weights_`` holds the weights used).

Outputs: ``deprivation_index`` (higher = more deprived), ``index_rank`` (1 = most deprived),
``index_decile`` (**10 = the most deprived 10 %**, 1 = the least; ranks and deciles among the
zones of the transformed table that have an index), ``domain_<d>`` (domain score, higher =
worse), ``domain_<d>_exp`` (transformed 0-100, exponential transform only), ``coverage_<d>``
(indicators available), ``n_indicators`` and ``weight_coverage`` (share of the domain
weight with data). :meth:`DeprivationIndex.describe` gives the weights used per indicator.

Periods and vintages: :func:`index_for_period` builds the index from the panel at a period t
with each indicator at its **latest vintage <= t** (the same vintage for every zone, as the
feature stage does), so a t = 2016 index mixes e.g. 2016 income with the 2013 NEET rate; the
vintages used are returned in ``.attrs["vintages"]``. :func:`index_trajectory` computes the
index at several periods on a common indicator set, either relative to each period (default:
a change is a change of relative position, like successive IMD editions) or against one
reference period's distributions (``reference_period``).

Examples
--------
>>> idx = DeprivationIndex().fit(features)                      # doctest: +SKIP
>>> scores = idx.transform(features)                            # doctest: +SKIP
>>> weight_sensitivity(features, n_draws=200, seed=0).summary   # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.special import ndtri

from territoria.errors import DataError
from territoria.paths import conf_dir
from territoria.registry import DOMAINS, Registry, load_registry
from territoria.settings import load_config

Normalisation = Literal["rank_normal", "robust_z"]
Transform = Literal["exponential", "none"]
MissingDomain = Literal["reweight", "neutral", "drop"]

_WEIGHT_TOL = 1e-6


# --------------------------------------------------------------------------- configuration


class DomainWeight(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(ge=0.0, le=1.0)
    rationale: str = Field(min_length=10)


class IndicatorWeight(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(ge=0.0)
    rationale: str = Field(min_length=5)


class Shrinkage(BaseModel):
    """Empirical-Bayes shrinkage of small-number rates towards their group (see the module doc)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    indicators: list[str] = Field(default_factory=list)
    group: str = "departement"
    rationale: str = ""


class IndexConfig(BaseModel):
    """The validated content of ``conf/index.yml``."""

    model_config = ConfigDict(extra="forbid")

    normalisation: Normalisation = "rank_normal"
    robust_z_clip: float = Field(5.0, gt=0)
    transform: Transform = "exponential"
    exponential_constant: float = Field(23.0, gt=0)
    missing_domain: MissingDomain = "reweight"
    min_weight_coverage: float = Field(0.5, ge=0.0, le=1.0)
    include_third_party: bool = False
    population_column: str = "population"
    min_population: float = Field(1.0, ge=0)
    shrinkage: Shrinkage = Field(default_factory=lambda: Shrinkage())
    domains: dict[str, DomainWeight]
    indicators: dict[str, IndicatorWeight] = Field(default_factory=dict)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: dict[str, DomainWeight]) -> dict[str, DomainWeight]:
        check_domain_weights({k: w.weight for k, w in v.items()})
        return v

    def domain_weights(self) -> dict[str, float]:
        return {d: w.weight for d, w in self.domains.items()}

    def indicator_weights(self) -> dict[str, float]:
        return {i: w.weight for i, w in self.indicators.items()}


def check_domain_weights(weights: Mapping[str, float], source: str = "weights") -> dict[str, float]:
    """Validate domain weights: known domains, non-negative, summing to 1; returns them as floats.

    Raises :class:`DataError` naming ``source`` otherwise (pydantic wraps it when called from
    the config model; :func:`load_index_config` turns that back into a ``DataError``).
    """
    out: dict[str, float] = {}
    for d, w in weights.items():
        if d not in DOMAINS:
            raise DataError(source, f"unknown domain '{d}' (domains: {', '.join(DOMAINS)})")
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise DataError(source, f"weight of domain '{d}' is not a number: {w!r}") from None
        if not math.isfinite(w) or w < 0:
            raise DataError(source, f"weight of domain '{d}' must be >= 0, got {w}")
        out[d] = w
    total = sum(out.values())
    if abs(total - 1.0) > _WEIGHT_TOL:
        raise DataError(source, f"domain weights sum to {total:.6g}, not 1")
    return out


def load_index_config(
    path: Path | str | None = None, registry: Registry | None = None
) -> IndexConfig:
    """Read and validate ``conf/index.yml`` (or ``path``); indicators are checked against the
    registry (unknown or unscored indicator → :class:`DataError`)."""
    path = Path(path) if path is not None else conf_dir() / "index.yml"
    cfg = load_config(IndexConfig, path, "index.yml", "index configuration")
    reg = registry or load_registry()
    _check_indicator_weights(cfg.indicator_weights(), reg, str(path))
    for name in cfg.shrinkage.indicators:
        if name not in reg.indicators:
            raise DataError(path, f"shrinkage: unknown indicator '{name}'")
    return cfg


def _check_indicator_weights(
    weights: Mapping[str, float], registry: Registry, source: str
) -> dict[str, float]:
    out = {}
    for name, w in weights.items():
        if name not in registry.indicators:
            raise DataError(source, f"unknown indicator '{name}'")
        if not registry.indicator(name).scored:
            raise DataError(source, f"indicator '{name}' is not scored in the registry")
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise DataError(source, f"weight of indicator '{name}' must be >= 0, got {w}")
        out[name] = w
    return out


# --------------------------------------------------------------------------- normal scores


def _midrank_fraction(ref_sorted: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Blom plotting position of ``values`` within the sorted reference (ties averaged).

    ``r`` is the mid-rank ``(left + right + 1) / 2`` (1-based average rank of a reference
    value; ``left + 0.5`` for a value between reference values), the result
    ``(r - 3/8) / (n + 1/4)`` lies strictly inside (0, 1). NaN stays NaN.
    """
    n = len(ref_sorted)
    out = np.full(values.shape, np.nan)
    ok = ~np.isnan(values)
    if n == 0 or not ok.any():
        return out
    v = values[ok]
    left = np.searchsorted(ref_sorted, v, side="left")
    right = np.searchsorted(ref_sorted, v, side="right")
    r = (left + right + 1) / 2.0
    out[ok] = (r - 0.375) / (n + 0.25)
    return out


def exponential_transform(rank_fraction: np.ndarray, constant: float = 23.0) -> np.ndarray:
    """IMD exponential transform of a rank fraction R in (0, 1] (1 = most deprived) → 0-100."""
    r = np.asarray(rank_fraction, dtype=float)
    return -constant * np.log1p(-r * (1.0 - math.exp(-100.0 / constant)))


def _robust_location_scale(x: np.ndarray) -> tuple[float, float]:
    med = float(np.median(x))
    dev = np.abs(x - med)
    scale = 1.4826 * float(np.median(dev))
    if scale <= 0:
        scale = 1.2533 * float(dev.mean())  # mean absolute deviation, normal-consistent
    if scale <= 0:
        scale = float(x.std())
    return med, (scale if scale > 0 else 1.0)


# --------------------------------------------------------------------------- the estimator


def _zone_frame(X: pd.DataFrame) -> pd.DataFrame:
    """``X`` indexed by zone code (its ``zone_code`` column when it has one)."""
    if not isinstance(X, pd.DataFrame):
        raise TypeError("X must be a pandas DataFrame (one row per zone)")
    if "zone_code" in X.columns:
        X = X.set_index("zone_code", drop=False)
    X = X.rename_axis("zone_code")
    if X.index.has_duplicates:
        dup = X.index[X.index.duplicated()][:5].tolist()
        raise DataError(
            "feature matrix",
            f"duplicated zones {dup}: one row per zone is expected",
            column="zone_code",
        )
    return X


def department_of(codes: Iterable[str]) -> pd.Series:
    """Department of commune codes: 3 characters overseas (97x), 2 elsewhere (incl. 2A/2B)."""
    c = pd.Series(list(codes), dtype=str)
    return c.str[:3].where(c.str.startswith("97"), c.str[:2])


def zone_groups(X: pd.DataFrame, group: str) -> pd.Series:
    """The shrinkage group of each zone: column ``group`` of X, or the department from the code."""
    if group in X.columns:
        return X[group].astype(str)
    if group != "departement":
        raise DataError("feature matrix", "shrinkage group column missing", column=group)
    return pd.Series(department_of(X.index).to_numpy(), index=X.index)


@dataclass
class ShrinkageFit:
    """Empirical-Bayes shrinkage of a small-number rate towards its group's median.

    Model (method of moments): around the group median ``m_g``, a zone's squared deviation
    has expectation ``σ²_b + c / population`` (true between-zone variance plus sampling-like
    noise shrinking with size), fitted by least squares on all zones. The shrunk value is
    ``m_g + w (x - m_g)`` with reliability ``w = pop / (pop + k)``, ``k = c / σ²_b``: a zone
    of ``k`` inhabitants keeps half of its own deviation. ``k = 0`` (no shrinkage) when the
    data show no noise decreasing with size. Zones without a population are left as they are;
    groups unseen at fit use the national median.
    """

    k: float
    sigma2_between: float
    noise: float
    centres: pd.Series
    national: float

    @classmethod
    def estimate(cls, x: pd.Series, pop: pd.Series, groups: pd.Series) -> ShrinkageFit:
        ok = x.notna() & pop.notna() & (pop > 0)
        national = float(x[x.notna()].median()) if x.notna().any() else 0.0
        centres = x[x.notna()].groupby(groups[x.notna()]).median()
        if ok.sum() < 30:
            return cls(0.0, float("nan"), float("nan"), centres, national)
        m = groups[ok].map(centres).to_numpy(dtype=float)
        e2 = (x[ok].to_numpy(dtype=float) - m) ** 2
        A = np.column_stack([np.ones(int(ok.sum())), 1.0 / pop[ok].to_numpy(dtype=float)])
        (s2b, c), *_ = np.linalg.lstsq(A, e2, rcond=None)
        k = float(c / s2b) if (c > 0 and s2b > 0) else 0.0
        return cls(min(k, 1e5), float(s2b), float(c), centres, national)

    def apply(self, x: pd.Series, pop: pd.Series, groups: pd.Series) -> pd.Series:
        if self.k <= 0:
            return x
        m = groups.map(self.centres).astype(float).fillna(self.national)
        w = (pop / (pop + self.k)).where(pop.notna() & (pop > 0), 1.0)
        return m + w * (x - m)


class DeprivationIndex:
    """Composite deprivation index, fitted on reference zones and applied to any zones.

    Parameters left to ``None`` are read from the configuration (``config``: a path, an
    :class:`IndexConfig`, or ``None`` for ``conf/index.yml``).

    Parameters
    ----------
    weights : mapping domain → weight, summing to 1 (domains left out weigh 0).
    indicator_weights : mapping indicator → weight inside its domain (default 1).
    normalisation : ``"rank_normal"`` or ``"robust_z"``.
    transform : ``"exponential"`` (IMD) or ``"none"``.
    missing_domain : ``"reweight"``, ``"neutral"`` or ``"drop"`` (see the module docstring).
    min_weight_coverage : a zone needs domains carrying at least this share of the weight.
    indicators : restrict to these registry indicators (default: every scored one present).
    include_third_party : let third-party indicators in.

    Attributes (after ``fit``)
    --------------------------
    weights_ : pd.Series, domain weights used (renormalised if a domain had no indicator).
    indicator_weights_ : pd.Series, weight of each indicator inside its domain.
    indicators_ : pd.DataFrame, one row per indicator: domain, direction, sign, weight,
        n_reference, median and scale of the oriented values.
    domains_ : list of domains entering the index; dropped_domains_ : weighted domains
        without any indicator in the fitted data.
    n_reference_ : number of reference zones.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        normalisation: Normalisation | None = None,
        transform: Transform | None = None,
        *,
        indicator_weights: Mapping[str, float] | None = None,
        missing_domain: MissingDomain | None = None,
        min_weight_coverage: float | None = None,
        indicators: Sequence[str] | None = None,
        include_third_party: bool | None = None,
        shrinkage: bool | None = None,
        config: IndexConfig | Path | str | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.weights = weights
        self.normalisation = normalisation
        # stored under another name: ``transform`` is the method (see get_params)
        self.domain_transform = transform
        self.indicator_weights = indicator_weights
        self.missing_domain = missing_domain
        self.min_weight_coverage = min_weight_coverage
        self.indicators = indicators
        self.include_third_party = include_third_party
        self.shrinkage = shrinkage
        self.config = config
        self.registry = registry

    # -- parameters ------------------------------------------------------------------------

    _PARAMS = (
        "weights",
        "normalisation",
        "transform",
        "indicator_weights",
        "missing_domain",
        "min_weight_coverage",
        "indicators",
        "include_third_party",
        "shrinkage",
        "config",
        "registry",
    )

    def get_params(self, deep: bool = False) -> dict:
        """Constructor parameters (scikit-learn style)."""
        return {
            k: (self.domain_transform if k == "transform" else getattr(self, k))
            for k in self._PARAMS
        }

    def set_params(self, **params) -> DeprivationIndex:
        for k, v in params.items():
            if k not in self._PARAMS:
                raise ValueError(f"unknown parameter '{k}'")
            setattr(self, "domain_transform" if k == "transform" else k, v)
        return self

    def __repr__(self) -> str:
        given = {k: v for k, v in self.get_params().items() if v is not None}
        return f"DeprivationIndex({', '.join(f'{k}={v!r}' for k, v in given.items())})"

    def _resolve(self) -> None:
        reg = self.registry or load_registry()
        cfg = (
            self.config
            if isinstance(self.config, IndexConfig)
            else load_index_config(self.config, reg)
        )
        self.registry_ = reg
        self.config_ = cfg
        self.normalisation_ = self.normalisation or cfg.normalisation
        self.transform_ = self.domain_transform or cfg.transform
        self.missing_domain_ = self.missing_domain or cfg.missing_domain
        if self.normalisation_ not in ("rank_normal", "robust_z"):
            raise DataError(
                "normalisation",
                f"unknown normalisation '{self.normalisation_}' (rank_normal, robust_z)",
            )
        if self.transform_ not in ("exponential", "none"):
            raise DataError(
                "transform", f"unknown transform '{self.transform_}' (exponential, none)"
            )
        if self.missing_domain_ not in ("reweight", "neutral", "drop"):
            raise DataError(
                "missing_domain", f"unknown rule '{self.missing_domain_}' (reweight, neutral, drop)"
            )
        self.min_weight_coverage_ = (
            cfg.min_weight_coverage
            if self.min_weight_coverage is None
            else float(self.min_weight_coverage)
        )
        self.include_third_party_ = (
            cfg.include_third_party
            if self.include_third_party is None
            else bool(self.include_third_party)
        )
        self.shrinkage_enabled_ = (
            cfg.shrinkage.enabled if self.shrinkage is None else bool(self.shrinkage)
        )
        self.exponential_constant_ = cfg.exponential_constant
        self.robust_z_clip_ = cfg.robust_z_clip
        if self.weights is None:
            self.config_weights_ = cfg.domain_weights()
        else:
            self.config_weights_ = check_domain_weights(self.weights, "weights")
        iw = cfg.indicator_weights()
        if self.indicator_weights is not None:
            iw = {
                **iw,
                **_check_indicator_weights(self.indicator_weights, reg, "indicator_weights"),
            }
        self.indicator_weight_map_ = iw

    def _select(self, X: pd.DataFrame) -> list[str]:
        reg = self.registry_
        if self.indicators is not None:
            names = list(self.indicators)
            for n in names:
                if n not in reg.indicators:
                    raise DataError("indicators", f"unknown indicator '{n}'")
                if not reg.indicator(n).scored:
                    raise DataError("indicators", f"indicator '{n}' is not scored in the registry")
                if n not in X.columns:
                    raise DataError("feature matrix", "indicator missing from the input", column=n)
        else:
            names = [c for c in X.columns if c in reg.indicators and reg.indicator(c).scored]
        out = []
        for n in names:
            ind = reg.indicator(n)
            if ind.third_party and not self.include_third_party_:
                continue
            if self.config_weights_.get(ind.domain, 0.0) <= 0:
                continue
            if self.indicator_weight_map_.get(n, 1.0) <= 0:
                continue
            out.append(n)
        return out

    # -- fit / transform -------------------------------------------------------------------

    def fit(self, X: pd.DataFrame, y=None) -> DeprivationIndex:
        """Learn the reference distributions (ranks, or medians and MADs) from the zones of X."""
        self._resolve()
        X = _zone_frame(X)
        X = X[self.eligible(X)]
        names = self._select(X)
        rows, ref = [], {}
        self.shrinkage_ = self._fit_shrinkage(X, names)
        for n in names:
            ind = self.registry_.indicator(n)
            x = self._oriented(X, n, ind.sign)
            x = x[np.isfinite(x)]
            if len(x) == 0:
                continue
            med, scale = _robust_location_scale(x)
            ref[n] = np.sort(x)
            sh = self.shrinkage_.get(n)
            rows.append(
                {
                    "indicator": n,
                    "domain": ind.domain,
                    "direction": ind.direction,
                    "sign": ind.sign,
                    "weight": self.indicator_weight_map_.get(n, 1.0),
                    "n_reference": len(x),
                    "median": med,
                    "scale": scale,
                    "shrink_k": sh.k if sh is not None else np.nan,
                    "label_en": ind.label_en,
                }
            )
        if not rows:
            raise DataError(
                "feature matrix", "no scored indicator of the registry with data in the input"
            )
        table = pd.DataFrame(rows).set_index("indicator")
        present = set(table["domain"])
        weighted = [d for d in DOMAINS if self.config_weights_.get(d, 0.0) > 0]
        self.dropped_domains_ = [d for d in weighted if d not in present]
        if self.dropped_domains_:
            warnings.warn(
                f"deprivation index: no indicator for weighted domain(s) {self.dropped_domains_}; "
                "their weight is spread over the other domains",
                stacklevel=2,
            )
        self.domains_ = [d for d in weighted if d in present]
        w = pd.Series({d: self.config_weights_[d] for d in self.domains_}, dtype=float)
        self.weights_ = (w / w.sum()).rename("weight")
        self.indicators_ = table
        self.indicator_weights_ = table["weight"].copy()
        self.reference_ = ref
        self.n_reference_ = len(X)
        self.feature_names_in_ = np.array(list(table.index), dtype=object)
        dom = self._domain_scores(X)
        self.domain_reference_ = {
            d: np.sort(dom[d].to_numpy()[np.isfinite(dom[d].to_numpy())]) for d in self.domains_
        }
        return self

    def _fit_shrinkage(self, X: pd.DataFrame, names: list[str]) -> dict[str, ShrinkageFit]:
        cfg = self.config_.shrinkage
        pop_col = self.config_.population_column
        if not self.shrinkage_enabled_:
            return {}
        todo = [n for n in cfg.indicators if n in names]
        if not todo:
            return {}
        if pop_col not in X.columns:
            warnings.warn(
                f"deprivation index: shrinkage needs a '{pop_col}' column; not applied",
                stacklevel=3,
            )
            return {}
        pop = pd.to_numeric(X[pop_col], errors="coerce")
        groups = zone_groups(X, cfg.group)
        return {
            n: ShrinkageFit.estimate(pd.to_numeric(X[n], errors="coerce"), pop, groups)
            for n in todo
        }

    def eligible(self, X: pd.DataFrame) -> np.ndarray:
        """Zones that can get an index: population >= ``min_population`` when X has a
        population column (communes without residents, such as the villages destroyed in
        1916 near Verdun, have indicators of their dwellings but nobody to be deprived)."""
        col = self.config_.population_column
        if col not in X.columns:
            return np.ones(len(X), dtype=bool)
        pop = pd.to_numeric(X[col], errors="coerce").to_numpy(dtype=float)
        return ~(pop < self.config_.min_population)  # unknown population stays eligible

    def _oriented(self, X: pd.DataFrame, name: str, sign: int) -> np.ndarray:
        """Raw values of one indicator, shrunk when configured, times the registry sign."""
        x = pd.to_numeric(X[name], errors="coerce")
        sh = self.shrinkage_.get(name)
        if sh is not None:
            pop_col = self.config_.population_column
            if pop_col not in X.columns:
                raise DataError(
                    "feature matrix", "population needed by the fitted shrinkage", column=pop_col
                )
            x = sh.apply(
                x,
                pd.to_numeric(X[pop_col], errors="coerce"),
                zone_groups(X, self.config_.shrinkage.group),
            )
        x = sign * x.to_numpy(dtype=float)
        return np.where(np.isfinite(x), x, np.nan)

    def _check_fitted(self) -> None:
        if not hasattr(self, "reference_"):
            raise RuntimeError("DeprivationIndex is not fitted: call fit(X) first")

    def normalise(self, X: pd.DataFrame) -> pd.DataFrame:
        """Oriented, normalised indicators (higher = worse) of the zones of X."""
        self._check_fitted()
        X = _zone_frame(X)
        missing = [n for n in self.indicators_.index if n not in X.columns]
        if missing:
            raise DataError(
                "feature matrix", "indicator fitted but absent from the input", column=missing[0]
            )
        out = {}
        for n, row in self.indicators_.iterrows():
            x = self._oriented(X, n, int(row["sign"]))
            if self.normalisation_ == "rank_normal":
                z = ndtri(_midrank_fraction(self.reference_[n], x))
            else:
                z = np.clip(
                    (x - row["median"]) / row["scale"], -self.robust_z_clip_, self.robust_z_clip_
                )
            out[n] = z
        return pd.DataFrame(out, index=X.index)

    def reuse_normalised(self, X: pd.DataFrame, normalised: pd.DataFrame | None) -> pd.DataFrame:
        """:meth:`normalise` of X, or ``normalised`` when it is already that of X's zones (a
        scoring normalises its feature matrix once for the index, its terms, its points and
        the stability audit: 0.24 s each on the communes)."""
        if normalised is not None and normalised.index.equals(_zone_frame(X).index) \
                and all(n in normalised.columns for n in self.indicators_.index):
            return normalised
        return self.normalise(X)

    def _domain_scores(self, X: pd.DataFrame, normalised: pd.DataFrame | None = None) -> pd.DataFrame:
        z = self.reuse_normalised(X, normalised)
        cols = {}
        for d in self.domains_:
            names = self.indicators_.index[self.indicators_["domain"] == d]
            zz = z[names].to_numpy()
            w = self.indicators_.loc[names, "weight"].to_numpy(dtype=float)
            avail = ~np.isnan(zz)
            wsum = (avail * w).sum(axis=1)
            num = np.nansum(np.where(avail, zz, 0.0) * w, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                cols[d] = np.where(wsum > 0, num / wsum, np.nan)
            cols[f"coverage_{d}"] = avail.sum(axis=1)
        return pd.DataFrame(cols, index=z.index)

    def domain_frame(self, X: pd.DataFrame, normalised: pd.DataFrame | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Domain scores, the transformed scores that enter the weighted sum, and coverage counts.

        Returns three frames indexed by zone: ``scores`` (domain → mean normalised score),
        ``combined`` (domain → the value weighted into the index: exponential 0-100 or the
        score itself; NaN when the zone has no indicator in the domain), ``coverage``.
        ``normalised`` is X's :meth:`normalise` when the caller already has it.
        """
        self._check_fitted()
        dom = self._domain_scores(X, normalised)
        scores = dom[self.domains_]
        coverage = dom[[f"coverage_{d}" for d in self.domains_]]
        if self.transform_ == "exponential":
            combined = pd.DataFrame(
                {
                    d: exponential_transform(
                        _midrank_fraction(self.domain_reference_[d], scores[d].to_numpy()),
                        self.exponential_constant_,
                    )
                    for d in self.domains_
                },
                index=scores.index,
            )
        else:
            combined = scores.copy()
        return scores, combined, coverage

    def neutral_value(self) -> float:
        """Value of a missing domain under ``missing_domain='neutral'`` (the reference median)."""
        if self.transform_ == "exponential":
            return float(exponential_transform(np.array([0.5]), self.exponential_constant_)[0])
        return 0.0

    def _combine(self, combined: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Weighted index of each row of ``combined`` (zones × domains) for one or more weight
        vectors (``weights``: domains, or draws × domains) → zones, or zones × draws."""
        avail = ~np.isnan(combined)
        vals = np.where(
            avail, combined, self.neutral_value() if self.missing_domain_ == "neutral" else 0.0
        )
        W = np.atleast_2d(weights).T  # domains × draws
        cover = avail.astype(float) @ W
        total = W.sum(axis=0, keepdims=True)
        if self.missing_domain_ == "reweight":
            with np.errstate(invalid="ignore", divide="ignore"):
                idx = (vals @ W) / cover
        else:
            idx = (vals @ W) / total
            if self.missing_domain_ == "drop":
                idx = np.where(((~avail).astype(float) @ (W > 0)) > 0, np.nan, idx)
        idx = np.where(cover / total + 1e-12 >= self.min_weight_coverage_, idx, np.nan)
        idx = np.where(cover > 0, idx, np.nan)
        return idx[:, 0] if np.ndim(weights) == 1 else idx

    def transform(self, X: pd.DataFrame, normalised: pd.DataFrame | None = None) -> pd.DataFrame:
        """Index, rank, decile, domain scores and coverage of every zone of X (index: zone code);
        ``normalised`` is X's :meth:`normalise` when the caller already has it."""
        scores, combined, coverage = self.domain_frame(X, normalised)
        w = self.weights_.reindex(self.domains_).to_numpy()
        index = self._combine(combined.to_numpy(), w)
        index = np.where(self.eligible(_zone_frame(X)), index, np.nan)
        out = pd.DataFrame({"deprivation_index": index}, index=scores.index)
        rank, decile = rank_and_decile(out["deprivation_index"])
        out["index_rank"] = rank
        out["index_decile"] = decile
        for d in self.domains_:
            out[f"domain_{d}"] = scores[d]
            if self.transform_ == "exponential":
                out[f"domain_{d}_exp"] = combined[d]
        for d in self.domains_:
            out[f"coverage_{d}"] = coverage[f"coverage_{d}"].astype("int64")
        out["n_indicators"] = coverage.sum(axis=1).astype("int64")
        avail = combined.notna().to_numpy().astype(float)
        out["weight_coverage"] = avail @ w
        out.attrs["weights"] = self.weights_.to_dict()
        out.attrs["normalisation"] = self.normalisation_
        out.attrs["transform"] = self.transform_
        return out

    def fit_transform(self, X: pd.DataFrame, y=None) -> pd.DataFrame:
        return self.fit(X).transform(X)

    def describe(self) -> pd.DataFrame:
        """The weights used, one row per indicator: domain and its weight and rationale,
        indicator weight, effective weight in the index, direction, reference size."""
        self._check_fitted()
        t = self.indicators_.reset_index()
        t["domain_weight"] = t["domain"].map(self.weights_)
        wsum = t.groupby("domain")["weight"].transform("sum")
        t["effective_weight"] = t["domain_weight"] * t["weight"] / wsum
        rat = {d: w.rationale.strip() for d, w in self.config_.domains.items()}
        t["domain_rationale"] = (
            t["domain"].map(rat) if self.weights is None else "weights given by the caller"
        )
        irat = {i: w.rationale.strip() for i, w in self.config_.indicators.items()}
        t["indicator_rationale"] = t["indicator"].map(irat).fillna("")
        t = t.rename(columns={"weight": "indicator_weight"})
        cols = [
            "domain",
            "domain_weight",
            "indicator",
            "indicator_weight",
            "effective_weight",
            "direction",
            "n_reference",
            "shrink_k",
            "label_en",
            "domain_rationale",
            "indicator_rationale",
        ]
        order = {d: i for i, d in enumerate(DOMAINS)}
        return (
            t[cols]
            .sort_values(
                ["domain", "indicator"], key=lambda s: s.map(order) if s.name == "domain" else s
            )
            .reset_index(drop=True)
        )


def rank_and_decile(index: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Rank (1 = highest index = most deprived) and decile (10 = most deprived 10 %).

    Computed among the zones with an index; ties broken by zone code, so the result does not
    depend on row order.
    """
    s = index.astype(float)
    ok = s.notna().to_numpy()
    n = int(ok.sum())
    rank = pd.Series(pd.NA, index=s.index, dtype="Int64")
    decile = pd.Series(pd.NA, index=s.index, dtype="Int64")
    if n == 0:
        return rank, decile
    vals = s.to_numpy()[ok]
    codes = s.index.to_numpy()[ok].astype(str)
    order = np.lexsort((codes, -vals))
    r = np.empty(n, dtype=np.int64)
    r[order] = np.arange(1, n + 1)
    rank[ok] = r
    decile[ok] = 11 - np.ceil(r * 10.0 / n).astype(np.int64)
    return rank, decile


# --------------------------------------------------------------------------- sensitivity


@dataclass
class WeightSensitivity:
    """How the top decile (most deprived 10 %) moves when domain weights vary.

    ``summary``: n_draws, method, spread, n_zones, n_top, mean/min/5th-percentile Jaccard
    overlap of each draw's top decile with the baseline one, ``share_stable_90`` (share of the
    baseline top decile still in the top decile in >= 90 % of draws) and ``n_ever_top``.
    ``zones``: per zone, baseline rank and membership, probability of being in the top decile,
    5 %/50 %/95 % rank quantiles. ``draws``: the weights of each draw and its Jaccard overlap.
    """

    summary: dict
    zones: pd.DataFrame
    draws: pd.DataFrame = field(repr=False)


def draw_weights(
    base: pd.Series,
    n_draws: int,
    rng: np.random.Generator,
    method: Literal["uniform", "dirichlet"] = "uniform",
    spread: float = 0.5,
    concentration: float = 50.0,
) -> pd.DataFrame:
    """Random domain weights around ``base`` (each row sums to 1; zero weights stay zero).

    ``uniform``: each weight × U(1 - spread, 1 + spread), renormalised (±50 % by default);
    ``dirichlet``: Dirichlet(concentration × base), mean = base.
    """
    w = base.to_numpy(dtype=float)
    pos = w > 0
    out = np.zeros((n_draws, len(w)))
    if method == "uniform":
        if not 0 <= spread < 1:
            raise ValueError("spread must be in [0, 1)")
        f = rng.uniform(1 - spread, 1 + spread, size=(n_draws, int(pos.sum())))
        out[:, pos] = w[pos] * f
    elif method == "dirichlet":
        out[:, pos] = rng.dirichlet(concentration * w[pos], size=n_draws)
    else:
        raise ValueError(f"unknown method '{method}' (uniform, dirichlet)")
    out /= out.sum(axis=1, keepdims=True)
    return pd.DataFrame(out, columns=base.index)


def weight_sensitivity(
    X: pd.DataFrame,
    n_draws: int = 200,
    seed: int = 0,
    *,
    index: DeprivationIndex | None = None,
    method: Literal["uniform", "dirichlet"] = "uniform",
    spread: float = 0.5,
    concentration: float = 50.0,
    top: float = 0.10,
) -> WeightSensitivity:
    """Perturb the domain weights ``n_draws`` times and report how the top decile moves.

    ``index``: a fitted :class:`DeprivationIndex` (default: one fitted on X with the
    configuration). Normalisation and transformed domain scores are computed once; only the
    weighted sum changes between draws. Deterministic for a given seed.
    """
    if index is None:
        index = DeprivationIndex().fit(X)
    index._check_fitted()
    _, combined, _ = index.domain_frame(X)
    D = combined.to_numpy()
    base_w = index.weights_.reindex(index.domains_)
    rng = np.random.default_rng(seed)
    W = draw_weights(
        base_w, n_draws, rng, method=method, spread=spread, concentration=concentration
    )
    base = index._combine(D, base_w.to_numpy())
    base = np.where(index.eligible(_zone_frame(X)), base, np.nan)
    ok = np.isfinite(base)
    zones = combined.index[ok]
    n = int(ok.sum())
    k = max(1, int(math.floor(top * n + 1e-9)))  # as index_decile: decile 10 = ranks <= n / 10
    codes = zones.to_numpy().astype(str)

    def ranks_of(v: np.ndarray) -> np.ndarray:
        order = np.lexsort((codes, -v))
        r = np.empty(len(v), dtype=np.int32)
        r[order] = np.arange(1, len(v) + 1)
        return r

    base_rank = ranks_of(base[ok])
    base_top = base_rank <= k
    idx = index._combine(D[ok], W.to_numpy())  # zones × draws
    ranks = np.empty(idx.shape, dtype=np.int32)
    jacc = np.empty(n_draws)
    for j in range(n_draws):
        v = np.where(np.isfinite(idx[:, j]), idx[:, j], -np.inf)
        ranks[:, j] = ranks_of(v)
        in_top = ranks[:, j] <= k
        jacc[j] = (in_top & base_top).sum() / (in_top | base_top).sum()
    in_top_all = ranks <= k
    p_top = in_top_all.mean(axis=1)
    zone_table = pd.DataFrame(
        {
            "baseline_index": base[ok],
            "baseline_rank": base_rank,
            "baseline_top": base_top,
            "p_top_decile": p_top,
            "rank_p05": np.quantile(ranks, 0.05, axis=1),
            "rank_median": np.median(ranks, axis=1),
            "rank_p95": np.quantile(ranks, 0.95, axis=1),
        },
        index=zones,
    ).rename_axis("zone_code")
    draws = W.copy()
    draws["jaccard_top"] = jacc
    summary = {
        "n_draws": int(n_draws),
        "method": method,
        "spread": float(spread) if method == "uniform" else None,
        "concentration": float(concentration) if method == "dirichlet" else None,
        "seed": int(seed),
        "top": float(top),
        "n_zones": n,
        "n_top": k,
        "mean_jaccard": float(jacc.mean()),
        "min_jaccard": float(jacc.min()),
        "p05_jaccard": float(np.quantile(jacc, 0.05)),
        "share_stable_90": float((p_top[base_top] >= 0.9).mean()),
        "n_ever_top": int((p_top > 0).sum()),
    }
    return WeightSensitivity(summary=summary, zones=zone_table, draws=draws)


# --------------------------------------------------------------------------- periods


def scored_indicators(registry: Registry, include_third_party: bool = False) -> list[str]:
    """Names of the registry's scored indicators (third-party ones only when asked)."""
    return [i.name for i in registry.scored() if include_third_party or not i.third_party]


def latest_levels(
    panel: pd.DataFrame,
    registry: Registry,
    period: int,
    indicators: Iterable[str] | None = None,
    include_third_party: bool = False,
    context: Sequence[str] = ("population",),
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Commune levels of scored indicators at their latest vintage <= ``period``.

    Returns a wide table (index: zone code, one column per indicator, plus the ``context``
    measures, e.g. the population used by the shrinkage, which are not scored) and the vintage
    used for each (the same vintage for every zone). Indicators derived by the feature stage
    (distances, IREP, IRIS contrasts) are not in the panel: pass them to
    :func:`index_for_period` as ``extra``.
    """
    names = (
        set(indicators)
        if indicators is not None
        else set(scored_indicators(registry, include_third_party))
    )
    names |= set(context)
    com = panel[
        (panel["level"] == "commune") & (panel["period"] <= period) & panel["measure"].isin(names)
    ]
    com = com[com["value"].notna()]
    if com.empty:
        return pd.DataFrame(index=pd.Index([], name="zone_code")), {}
    last = com.groupby("measure")["period"].max()
    com = com[com["period"].to_numpy() == last.reindex(com["measure"]).to_numpy()]
    wide = com.pivot(index="zone_code", columns="measure", values="value")
    wide.columns.name = None
    return wide.sort_index(axis=1), {m: int(p) for m, p in last.items()}


def _levels_with_extra(
    panel: pd.DataFrame,
    registry: Registry,
    period: int,
    extra: pd.DataFrame | None,
    indicators: Iterable[str] | None,
) -> tuple[pd.DataFrame, dict]:
    indicators = list(indicators) if indicators is not None else None
    levels, vintages = latest_levels(panel, registry, period, indicators)
    if extra is not None:
        ex = _zone_frame(extra)
        wanted = set(indicators) if indicators is not None else set(scored_indicators(registry))
        cols = [
            c
            for c in ex.columns
            if c in wanted and c in registry.indicators and c not in levels.columns
        ]
        levels = levels.join(ex[cols], how="outer") if len(levels.columns) else ex[cols].copy()
        vintages.update({c: "extra" for c in cols})
    return levels.rename_axis("zone_code"), vintages


def index_for_period(
    panel: pd.DataFrame,
    registry: Registry,
    period: int,
    *,
    reference: DeprivationIndex | None = None,
    extra: pd.DataFrame | None = None,
    indicators: Iterable[str] | None = None,
    **params,
) -> pd.DataFrame:
    """The deprivation index of communes at ``period`` from the panel (latest vintage <= t).

    ``reference``: a fitted :class:`DeprivationIndex` whose distributions score this period
    (its indicators must all be available); by default one is fitted on this period's zones
    with ``params`` (passed to :class:`DeprivationIndex`). ``extra``: more level columns
    (index or ``zone_code`` column = zone code), e.g. derived indicators from
    ``FeatureBuild.features_at(period)``. The result has a ``period`` column and
    ``.attrs["vintages"]`` (indicator → vintage used; ``"extra"`` for extra columns).
    """
    indicators = list(indicators) if indicators is not None else None
    levels, vintages = _levels_with_extra(panel, registry, period, extra, indicators)
    if reference is not None:
        reference._check_fitted()
        missing = [c for c in reference.indicators_.index if c not in levels.columns]
        if missing:
            raise DataError(
                "panel",
                f"period {period}: no vintage <= {period} of indicator(s) the reference uses",
                column=missing[0],
            )
        idx = reference
    else:
        if indicators is not None:
            params.setdefault("indicators", [c for c in indicators if c in levels.columns])
        params.setdefault("registry", registry)
        idx = DeprivationIndex(**params).fit(levels)
    out = idx.transform(levels)
    out.insert(0, "period", int(period))
    out.attrs["vintages"] = {c: vintages[c] for c in idx.indicators_.index if c in vintages}
    out.attrs["weights"] = idx.weights_.to_dict()
    return out


def index_trajectory(
    panel: pd.DataFrame,
    registry: Registry,
    periods: Sequence[int],
    *,
    reference_period: int | None = None,
    common_indicators: bool = True,
    extra: Mapping[int, pd.DataFrame] | None = None,
    **params,
) -> pd.DataFrame:
    """The index at several periods, long format (zone_code, period, index columns...).

    ``common_indicators``: only indicators available (vintage <= t) at every period, so the
    index measures the same thing each time. Without ``reference_period`` each period is
    normalised against its own zones (relative position, like IMD editions); with it, every
    period is scored against the distributions of ``reference_period``.
    ``.attrs["vintages"]``: period → indicator → vintage.
    """
    periods = sorted(int(p) for p in periods)
    extra = dict(extra or {})
    names = params.pop("indicators", None)
    names = list(names) if names is not None else None
    scored = set(scored_indicators(registry, bool(params.get("include_third_party"))))
    # the commune rows of the measures that can enter, once (the panel has millions of rows)
    panel = panel[(panel["level"] == "commune") & panel["measure"].isin(scored | {"population"})]
    if common_indicators and names is None:
        avail = None
        for p in [*periods, *([reference_period] if reference_period is not None else [])]:
            lv, _ = _levels_with_extra(panel, registry, p, extra.get(p), None)
            cols = set(lv.columns) & scored
            avail = cols if avail is None else avail & cols
        names = sorted(avail or [])
    ref = None
    if reference_period is not None:
        lv = _levels_with_extra(
            panel, registry, reference_period, extra.get(reference_period), names
        )[0]
        params.setdefault("registry", registry)
        chosen = [
            c
            for c in (names if names is not None else lv.columns)
            if c in lv.columns and c in scored
        ]
        ref = DeprivationIndex(indicators=chosen, **params).fit(lv)
    frames, vint = [], {}
    for p in periods:
        out = index_for_period(
            panel,
            registry,
            p,
            reference=ref,
            extra=extra.get(p),
            indicators=names,
            **({} if ref is not None else params),
        )
        vint[p] = out.attrs.get("vintages", {})
        frames.append(out.reset_index())
    res = pd.concat(frames, ignore_index=True)
    res.attrs["vintages"] = vint
    return res
