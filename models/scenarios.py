"""What-if scenarios on lever indicators: parse, validate and apply them.

A scenario file (YAML) changes lever indicators for a set of zones::

    name: fibre_62
    description: Fibre for every premises of Pas-de-Calais
    zones: {departements: ["62"]}          # or codes: [...], epcis: [...], all: true
    changes:
      - {indicator: ftth_coverage_rate, set: 100}
      - {indicator: vacancy_rate, add: -2}          # percentage points
      - {indicator: n_gp, add: 1}                   # one more GP

Only indicators the registry marks as levers may change (a policy can move them); values are
kept within their plausible range (0-100 for percentages, >= 0 otherwise). Changes apply to
the panel at the vintage the feature matrix reads, and ratio indicators built from a changed
count (GPs per 10,000 inhabitants from the number of GPs) are recomputed, so that the whole
feature matrix — neighbours' context included — is rebuilt consistently from it.

The result is an association learned from observational data, not a causal estimate: it says
how the models' forecasts and the priority list would read such a territory, not what the
policy would cause.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from territoria.errors import DataError

CAVEAT_EN = ("Association learned from observational data, not a causal estimate: this shows how "
             "the models would read such a territory, not what the policy would cause.")
CAVEAT_FR = ("Association apprise sur des données d'observation, pas un effet causal : ce scénario "
             "montre comment les modèles liraient un tel territoire, pas ce que la politique causerait.")


class ZoneSelector(BaseModel):
    model_config = ConfigDict(extra="forbid")
    codes: list[str] = Field(default_factory=list)
    departements: list[str] = Field(default_factory=list)
    epcis: list[str] = Field(default_factory=list)
    all: bool = False

    @model_validator(mode="after")
    def _something(self) -> ZoneSelector:
        if not (self.all or self.codes or self.departements or self.epcis):
            raise ValueError("select zones with codes, departements, epcis or all: true")
        return self


class Change(BaseModel):
    model_config = ConfigDict(extra="forbid")
    indicator: str
    set: float | None = None
    add: float | None = None
    multiply: float | None = None

    @model_validator(mode="after")
    def _one(self) -> Change:
        if sum(v is not None for v in (self.set, self.add, self.multiply)) != 1:
            raise ValueError(f"change of '{self.indicator}' needs exactly one of set, add, multiply")
        return self

    def apply(self, values: np.ndarray) -> np.ndarray:
        if self.set is not None:
            return np.full_like(values, self.set, dtype=float)
        if self.add is not None:
            return values + self.add
        return values * self.multiply


class Scenario(BaseModel):
    """A validated what-if scenario."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    zones: ZoneSelector
    changes: list[Change] = Field(min_length=1)


def load_scenario(path: Path | str, registry, identity: pd.DataFrame) -> Scenario:
    """Read a scenario file and check it against the registry and the zones of the run.

    Errors name the file and the problem: unknown or non-lever indicator, unknown zone code,
    department or EPCI, invalid YAML or fields.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "scenario file not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, ValueError) as exc:  # PyYAML raises ValueError on bad dates or tags
        raise DataError(path, f"invalid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    if not isinstance(doc, dict):
        raise DataError(path, "expected a mapping with name, zones and changes")
    doc.setdefault("name", path.stem)
    try:
        sc = Scenario.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise DataError(path, f"{loc}: {err['msg']}") from None
    for ch in sc.changes:
        if ch.indicator not in registry.indicators:
            raise DataError(path, f"unknown indicator '{ch.indicator}' (see conf/indicators/)")
        if not registry.indicator(ch.indicator).lever:
            raise DataError(path, f"'{ch.indicator}' is context, not a lever: a policy cannot move it")
    sel = sc.zones
    for label, values, known in (
        ("zone code", sel.codes, identity.index),
        ("department", sel.departements, identity["departement"].unique()),
        ("EPCI", sel.epcis, identity["epci"].unique()),
    ):
        unknown = sorted(set(values) - set(map(str, known)))
        if unknown:
            raise DataError(path, f"unknown {label}(s) {', '.join(unknown[:5])} in the run's geography")
    return sc


def selected_zones(selector: ZoneSelector, identity: pd.DataFrame) -> pd.Index:
    """Zone codes a selector designates (sorted)."""
    if selector.all:
        return identity.index.sort_values()
    mask = identity.index.isin(selector.codes)
    mask |= identity["departement"].isin(selector.departements).to_numpy()
    mask |= identity["epci"].isin(selector.epcis).to_numpy()
    return identity.index[mask].sort_values()


def plausible_range(indicator) -> tuple[float, float]:
    """Bounds a changed value is clipped to: 0-100 for percentages, >= 0 otherwise."""
    return (0.0, 100.0) if indicator.unit.startswith("%") else (0.0, np.inf)


def apply_to_panel(panel: pd.DataFrame, scenario: Scenario, zones: pd.Index, registry, t: int) -> pd.DataFrame:
    """The panel with the scenario's changes at each indicator's latest commune vintage <= t.

    Ratio indicators whose numerator or denominator changed are recomputed for those zones.
    Returns a new frame; raises when an indicator has no value at all to change.
    """
    out = panel.copy()
    com = (out["level"] == "commune") & (out["period"] <= t)
    in_zones = out["zone_code"].isin(zones)
    changed: dict[str, int] = {}
    for ch in scenario.changes:
        rows = com & (out["measure"] == ch.indicator)
        if not rows.any():
            raise DataError(f"scenario {scenario.name}",
                            f"'{ch.indicator}' has no commune value dated <= {t} to change "
                            "(indicators computed by the feature stage, such as distances, change "
                            "through their facility counts, e.g. n_gp)")
        period = int(out.loc[rows, "period"].max())
        target = rows & (out["period"] == period) & in_zones
        lo, hi = plausible_range(registry.indicator(ch.indicator))
        out.loc[target, "value"] = np.clip(ch.apply(out.loc[target, "value"].to_numpy(float)), lo, hi)
        changed[ch.indicator] = period
    for ind in registry.indicators.values():
        d = ind.definition
        if d.numerator is None or not ({d.numerator, d.denominator} & set(changed)):
            continue
        period = changed.get(d.numerator, changed.get(d.denominator))
        sel = com & in_zones & (out["period"] == period)
        num = out[sel & (out["measure"] == d.numerator)].set_index("zone_code")["value"]
        den = out[sel & (out["measure"] == d.denominator)].set_index("zone_code")["value"]
        target = sel & (out["measure"] == ind.name)
        codes = out.loc[target, "zone_code"]
        ratio = (num.reindex(codes) / den.reindex(codes).where(lambda s: s > 0)) * d.scale
        out.loc[target, "value"] = ratio.to_numpy(float)
    return out


def compare(baseline: pd.DataFrame, scenario: pd.DataFrame, zones: pd.Index) -> pd.DataFrame:
    """Per zone: score, rank and flag before and after, with the score intervals.

    ``zones`` (the scenario's zones) are listed first, then any other zone whose flag changed.
    """
    cols = ["priority_score", "priority_score_low", "priority_score_high", "priority_rank", "priority_flag",
            "deprivation_index", "predicted_change"]
    b = baseline[cols].add_suffix("_before")
    a = scenario[cols].add_suffix("_after")
    t = baseline[["zone_name", "departement", "epci"]].join(b).join(a)
    t["score_change"] = t["priority_score_after"] - t["priority_score_before"]
    t["rank_change"] = t["priority_rank_before"] - t["priority_rank_after"]  # > 0: moves up the list
    t["flag_change"] = np.select(
        [t["priority_flag_before"] & ~t["priority_flag_after"], ~t["priority_flag_before"] & t["priority_flag_after"]],
        ["leaves the list", "enters the list"], default="")
    t["in_scenario"] = t.index.isin(zones)
    keep = t["in_scenario"] | (t["flag_change"] != "")
    t = t[keep].sort_values(["in_scenario", "score_change"], ascending=[False, True], kind="stable")
    return t.rename_axis("zone_code").reset_index()
