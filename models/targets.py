"""Trajectory targets: the change of a measure between two vintages of the panel.

Every function here is pure (panel in, Series out). A target is identified by a measure, an
*origin* vintage ``t`` and an *end* vintage; the features of a target are built at ``t``
(``FeatureBuild.features_at(t)``: only data dated <= t), the target itself reads the end
vintage only.

* :func:`change_target` – change of a measure between two vintages, absolute (rates, medians:
  points or euros) or relative (% for counts such as population);
* :func:`deteriorating` – the classification target: the zone's change is in the worst
  decile (direction from the registry);
* :func:`repeated_survey_mask` – census zones whose two vintages come from the same rolling
  survey (see ``conf/models.yml``);
* :func:`load_model_config` – the typed ``conf/models.yml`` (targets, CV, model defaults);
* :func:`target_table` – target, eligibility, population weights and deterioration flag of
  one target spec, the table every model and baseline is scored on.

Examples
--------
>>> panel = pd.DataFrame({
...     "zone_code": ["a", "a", "b", "b"], "level": "commune", "measure": "population",
...     "period": [2018, 2021, 2018, 2021], "value": [100.0, 110.0, 200.0, 190.0]})
>>> change_target(panel, "population", 2018, 2021, relative=True).round(1).to_dict()
{'a': 10.0, 'b': -5.0}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from territoria.errors import DataError
from territoria.features.panel import panel_codes
from territoria.registry import Registry, load_registry
from territoria.settings import load_config


# --------------------------------------------------------------------------- configuration
class TargetSpec(BaseModel):
    """One trajectory target: ``measure`` from ``origin`` to ``end``."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    measure: str
    origin: int
    end: int
    #: change in % of the origin value (counts); otherwise end minus origin
    relative: bool = False
    #: zones with fewer inhabitants at the origin are left out (None: the config default)
    min_population: float | None = None
    #: census rolling-survey artefact: keep the zones as they are, drop them, or keep them
    #: and model the artefact (a hurdle model, see trajectory.HurdleRegressor)
    repeated_survey: Literal["keep", "drop", "model"] = "keep"
    #: one of the benchmark's key targets
    key: bool = False

    @model_validator(mode="after")
    def _order(self) -> TargetSpec:
        if self.end <= self.origin:
            raise ValueError(f"end ({self.end}) must be after origin ({self.origin})")
        return self

    @property
    def horizon(self) -> int:
        return self.end - self.origin


class CVConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    groups: Literal["departement", "region"] = "departement"
    n_splits: int = Field(5, ge=2, le=50)
    validation_fraction: float = Field(0.15, gt=0, lt=0.5)
    #: also score a LightGBM classifier of "deteriorating" zones on the folds (ROC AUC, Brier,
    #: reliability); no later stage reads it, so the main job leaves it out by default
    deterioration_classifier: bool = False


class IntervalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    levels: list[float] = Field(default_factory=lambda: [0.8, 0.9])
    normalised: bool = True
    #: the spread model reads the columns the fold models split on for most of their gain
    #: (None: every column of the design)
    spread_features: int | None = Field(default=60, ge=1)
    urban_density: float = 300.0


class BacktestPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fit: str
    score: str


class ModelConfig(BaseModel):
    """The typed ``conf/models.yml``."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 42
    min_population: float = 2000
    #: models are fitted on zones of at least this size (in the training folds only); the
    #: scores are computed on zones of at least ``min_population``
    train_min_population: float = 500
    weighting: Literal["sqrt_population", "population", "none"] = "sqrt_population"
    cv: CVConfig = Field(default_factory=CVConfig)
    deteriorating_quantile: float = Field(0.10, gt=0, lt=0.5)
    intervals: IntervalConfig = Field(default_factory=IntervalConfig)
    targets: dict[str, TargetSpec] = Field(default_factory=dict)
    repeated_survey_tolerance: float = Field(0.15, ge=0)
    temporal_backtests: list[BacktestPair] = Field(default_factory=list)
    model: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names(self) -> ModelConfig:
        for name, spec in self.targets.items():
            spec.name = name
            if spec.min_population is None:
                spec.min_population = self.min_population
        for pair in self.temporal_backtests:
            for ref in (pair.fit, pair.score):
                if ref not in self.targets:
                    raise ValueError(f"temporal backtest refers to unknown target '{ref}'")
            a, b = self.targets[pair.fit], self.targets[pair.score]
            if a.measure != b.measure or a.end > b.origin:
                raise ValueError(
                    f"temporal backtest {pair.fit} -> {pair.score}: same measure and the fitted "
                    "transition must end at or before the scored one's origin"
                )
        return self

    def key_targets(self) -> list[TargetSpec]:
        return [s for s in self.targets.values() if s.key]


def load_model_config(path: Path | str | None = None) -> ModelConfig:
    """Read and validate ``conf/models.yml`` (or ``path``)."""
    return load_config(ModelConfig, path, "models.yml", "models configuration")

def target_spec(name_or_spec, config: ModelConfig | None = None) -> TargetSpec:
    """A spec from its name in the configuration (or the spec itself)."""
    if isinstance(name_or_spec, TargetSpec):
        return name_or_spec
    config = config or load_model_config()
    if name_or_spec not in config.targets:
        raise DataError("conf/models.yml", f"unknown target '{name_or_spec}'")
    return config.targets[name_or_spec]


# --------------------------------------------------------------------------- pure functions
def measure_at(panel: pd.DataFrame, measure: str, period: int, level: str = "commune") -> pd.Series:
    """Values of one measure at one vintage, indexed by zone code, in the panel's order
    (empty if absent).

    Selected on the panel's integer codes (:func:`~territoria.features.panel.panel_codes`):
    a target's table asks for a dozen of them, and taking the panel's rows with their text
    columns cost a second of the backtest.

    Examples
    --------
    >>> panel = pd.DataFrame({"zone_code": ["b", "a", "a"], "level": "commune", "period": [2018, 2018, 2021],
    ...                       "measure": "x", "value": [1.0, 2.0, 3.0]})
    >>> measure_at(panel, "x", 2018).to_dict(), len(measure_at(panel, "y", 2018))
    ({'b': 1.0, 'a': 2.0}, 0)
    """
    codes = panel_codes(panel)
    pos = codes.by_measure.get(measure, np.zeros(0, np.int32))
    level_code = codes.levels.get_indexer([level])[0]
    pos = pos[(codes.period[pos] == period) & (codes.level[pos] == level_code)]
    values = panel["value"].to_numpy(float)[pos]
    ok = ~np.isnan(values)
    zones = codes.zones.take(codes.zone[pos[ok]]).rename("zone_code")
    return pd.Series(values[ok], index=zones, name=measure)


def measure_periods(panel: pd.DataFrame, measure: str, upto: int | None = None) -> list[int]:
    """Vintages of a measure in the panel (only those <= ``upto`` when given)."""
    codes = panel_codes(panel)
    per = np.unique(codes.period[codes.by_measure.get(measure, np.zeros(0, np.int32))])
    return [int(p) for p in per if upto is None or p <= upto]


def change(cur: pd.Series, prev: pd.Series, relative: bool = False) -> pd.Series:
    """``cur - prev`` (aligned on ``cur``), or the change in % of ``prev`` when ``relative``."""
    prev = prev.reindex(cur.index)
    if relative:
        return (cur - prev) / prev.where(prev > 0) * 100.0
    return cur - prev


def change_target(
    panel: pd.DataFrame, measure: str, origin: int, end: int, relative: bool = False
) -> pd.Series:
    """Change of ``measure`` between the ``origin`` and ``end`` vintages, by zone code.

    Zones missing at either vintage are left out. Raises :class:`DataError` when a vintage
    is absent from the panel.
    """
    have = measure_periods(panel, measure)
    for p in (origin, end):
        if p not in have:
            raise DataError("panel", f"measure '{measure}' has no vintage {p} (has {have})")
    cur = measure_at(panel, measure, end)
    prev = measure_at(panel, measure, origin)
    out = change(cur, prev, relative)
    # not dropna(): numpy's look-up of __array_struct__ on the Series would hash its zone
    # codes for pandas' attribute access (4 ms for 35,000 codes)
    out = out[out.notna().to_numpy()]
    out.index.name = "zone_code"
    return out.rename(f"{measure}_{origin}_{end}")


def population_at(panel: pd.DataFrame, period: int) -> pd.Series:
    """Population at the latest vintage <= ``period``.

    Used for the population filter and weights only (never as a feature). When no vintage
    precedes ``period`` (NEET 2008), the earliest vintage is used: a size class, not a value
    the model sees.
    """
    periods = measure_periods(panel, "population")
    if not periods:
        raise DataError("panel", "no population measure to weight or filter zones")
    before = [p for p in periods if p <= period]
    return measure_at(panel, "population", before[-1] if before else periods[0])


def repeated_survey_mask(
    panel: pd.DataFrame,
    origin: int,
    end: int,
    tolerance: float = 0.15,
    measures: tuple[str, ...] = ("unemployment_rate", "activity_rate"),
) -> pd.Series:
    """Zones whose census rates at ``end`` repeat those at ``origin`` (same rolling survey).

    A commune under 10,000 inhabitants is surveyed once every five years; the census result
    of year N uses the surveys of N-2..N+2, so the 2018 and 2021 results of a commune
    surveyed in 2019 or 2020 share one survey and its rates move only through reweighting.
    Flagged when every measure in ``measures`` moves by less than ``tolerance`` points
    (an independent survey rarely leaves both unemployment and activity rates unchanged).
    """
    flags = []
    for m in measures:
        if not {origin, end} <= set(measure_periods(panel, m)):
            return pd.Series(False, index=pd.Index([], name="zone_code"), dtype=bool)
        flags.append(change_target(panel, m, origin, end).abs() < tolerance)
    out = pd.concat(flags, axis=1).dropna().all(axis=1)
    out.index.name = "zone_code"
    return out


def deteriorating(values: pd.Series, sign: int, quantile: float = 0.10) -> pd.Series:
    """True for zones whose change is in the worst ``quantile`` (direction-aware).

    ``sign`` is the registry's: +1 when a higher value is worse (a rise deteriorates), -1
    when higher is better (a fall deteriorates).
    """
    s = sign * values
    thr = s.quantile(1.0 - quantile)
    return (s >= thr).where(values.notna())


def indicator_sign(measure: str, registry: Registry | None = None) -> int:
    """+1 when a higher value of ``measure`` is worse, -1 when better (registry direction)."""
    registry = registry or load_registry()
    if measure in registry.indicators:
        return registry.indicator(measure).sign
    return 1


def sample_weights(population: pd.Series, scheme: str = "sqrt_population") -> pd.Series:
    """Weights of zones in model fitting and metrics.

    Small communes are noisy (a census rate over a few dozen people): ``sqrt_population``
    (default) gives a commune of 10,000 inhabitants ~2.2 times the weight of one of 2,000,
    a compromise between equal weights and the full population (which would let the largest
    cities dominate).
    """
    pop = population.clip(lower=1.0)
    if scheme == "sqrt_population":
        return np.sqrt(pop)
    if scheme == "population":
        return pop.astype(float)
    if scheme == "none":
        return pd.Series(1.0, index=population.index)
    raise ValueError(f"unknown weighting scheme {scheme!r}")


def target_table(
    panel: pd.DataFrame,
    spec: TargetSpec,
    config: ModelConfig | None = None,
    registry: Registry | None = None,
    min_population: float | None = None,
) -> pd.DataFrame:
    """The table a target is modelled and scored on, one row per eligible zone.

    ``min_population`` overrides the spec's threshold (e.g. the lower threshold of the
    training rows). Columns: ``y`` (the change), ``repeated_survey`` (census zones whose
    rates repeat the origin's, when the spec asks to drop or model them), ``level_origin`` (the measure at the origin, for future-level
    metrics), ``population`` (at the origin), ``weight``, ``deteriorating`` (worst decile of
    the eligible zones). Zones below the spec's ``min_population`` and, when
    ``repeated_survey: drop``, census zones whose rates repeat the origin's, are left out.
    """
    config = config or ModelConfig()
    y = change_target(panel, spec.measure, spec.origin, spec.end, spec.relative)
    pop = population_at(panel, spec.origin).reindex(y.index)
    min_pop = spec.min_population if spec.min_population is not None else config.min_population
    if min_population is not None:
        min_pop = min_population
    keep = pop >= (min_pop or 0)
    rep = pd.Series(False, index=y.index)
    if spec.repeated_survey != "keep":
        rep = repeated_survey_mask(panel, spec.origin, spec.end, config.repeated_survey_tolerance)
        rep = rep.reindex(y.index, fill_value=False).astype(bool)
        if spec.repeated_survey == "drop":
            keep &= ~rep
    y = y[keep]
    out = pd.DataFrame({"y": y})
    out["repeated_survey"] = rep[keep]
    out["level_origin"] = measure_at(panel, spec.measure, spec.origin).reindex(y.index)
    out["population"] = pop[keep]
    out["weight"] = sample_weights(out["population"], config.weighting)
    sign = indicator_sign(spec.measure, registry)
    out["deteriorating"] = deteriorating(out["y"], sign, config.deteriorating_quantile).astype(bool)
    out["sign"] = sign
    out.index.name = "zone_code"
    return out.sort_index()
