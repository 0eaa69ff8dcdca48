"""The indicator registry: every variable the adapters produce and every indicator analysed.

The registry lives in ``conf/indicators/*.yml`` (one file per source family, merged into one
registry) and is validated by the typed models below. Every later stage (harmonisation, panel,
features, index, explanations) reads it instead of repeating lists of columns.

Two sections per file:

``variables``
    raw measures emitted by an adapter, with how they aggregate when communes merge:
    ``count`` (summed), or ``rate``/``median``/``mean``/``index`` weighted by a count ``weight``.
``indicators``
    what is analysed: domain, direction, lever or context, unit and definition (a variable, a
    ratio of two count variables, or a feature derived by the feature stage).

Examples
--------
>>> reg = load_registry()
>>> reg.indicator("poverty_rate").domain
'economic'
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from territoria.errors import DataError
from territoria.paths import conf_dir

Domain = Literal[
    "economic", "residential", "demographic", "services", "digital", "environment", "education"
]
DOMAINS: tuple[str, ...] = Domain.__args__  # type: ignore[attr-defined]


class Variable(BaseModel):
    """A raw measure emitted by a source adapter."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    source: str
    kind: Literal["count", "rate", "median", "mean", "index"]
    unit: str
    label_en: str
    label_fr: str
    #: count variable weighting this one when zones are aggregated (rates, medians, means)
    weight: str | None = None
    #: for rates: count variables whose ratio (× scale) recomputes the rate exactly
    numerator: str | None = None
    denominator: str | None = None
    scale: float = 100.0
    third_party: bool = False

    @model_validator(mode="after")
    def _weights(self) -> Variable:
        if self.kind != "count" and not (self.weight or (self.numerator and self.denominator)):
            raise ValueError(f"{self.kind} variable '{self.name}' needs a weight or numerator/denominator")
        return self


class Definition(BaseModel):
    """How an indicator is computed: a variable, a ratio of counts, or a derived feature."""

    model_config = ConfigDict(extra="forbid")

    variable: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    scale: float = 1.0
    derived: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Definition:
        forms = [self.variable is not None, self.numerator is not None, self.derived is not None]
        if sum(forms) != 1:
            raise ValueError("definition needs exactly one of: variable, numerator/denominator, derived")
        if (self.numerator is None) != (self.denominator is None):
            raise ValueError("numerator and denominator go together")
        return self


class Indicator(BaseModel):
    """An analysed indicator with its registry metadata."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    label_en: str
    label_fr: str
    domain: Domain
    direction: Literal["higher_is_worse", "higher_is_better"]
    lever: bool
    unit: str
    definition: Definition
    source: str
    vintages: list[int] = Field(default_factory=list)
    #: enters the composite deprivation index (context counts such as population do not)
    scored: bool = True
    #: how past changes are measured: ``relative`` (%) or ``absolute`` (difference);
    #: by default relative for counts (population) and absolute otherwise
    change: Literal["absolute", "relative"] | None = None
    third_party: bool = False
    note: str = ""

    @property
    def sign(self) -> int:
        """+1 when a higher value is worse, -1 when it is better."""
        return 1 if self.direction == "higher_is_worse" else -1


class Registry(BaseModel):
    """All variables and indicators, with cross-references checked."""

    variables: dict[str, Variable]
    indicators: dict[str, Indicator]

    @model_validator(mode="after")
    def _references(self) -> Registry:
        for v in self.variables.values():
            for ref in (v.weight, v.numerator, v.denominator):
                if ref is not None and ref not in self.variables:
                    raise ValueError(f"variable '{v.name}' refers to unknown variable '{ref}'")
                if ref is not None and self.variables[ref].kind != "count":
                    raise ValueError(f"variable '{v.name}': '{ref}' must be a count variable")
        for ind in self.indicators.values():
            d = ind.definition
            for ref in (d.variable, d.numerator, d.denominator):
                if ref is not None and ref not in self.variables:
                    raise ValueError(f"indicator '{ind.name}' refers to unknown variable '{ref}'")
        return self

    def indicator(self, name: str) -> Indicator:
        return self.indicators[name]

    def variable(self, name: str) -> Variable:
        return self.variables[name]

    def for_source(self, source: str) -> list[Variable]:
        return [v for v in self.variables.values() if v.source == source]

    def by_domain(self, domain: str) -> list[Indicator]:
        return [i for i in self.indicators.values() if i.domain == domain]

    def scored(self) -> list[Indicator]:
        return [i for i in self.indicators.values() if i.scored]


def _load_files(files: Iterable[Path]) -> Registry:
    variables: dict[str, Variable] = {}
    indicators: dict[str, Indicator] = {}
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise DataError(path, f"invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(doc, dict) or set(doc) - {"variables", "indicators"}:
            raise DataError(path, "a registry file has only 'variables' and 'indicators' lists")
        for section, target, model in (
            ("variables", variables, Variable),
            ("indicators", indicators, Indicator),
        ):
            for i, entry in enumerate(doc.get(section) or []):
                try:
                    obj = model.model_validate(entry)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    loc = ".".join(str(x) for x in err["loc"])
                    name = entry.get("name", f"#{i}") if isinstance(entry, dict) else f"#{i}"
                    raise DataError(path, f"{section} '{name}': {loc}: {err['msg']}") from None
                if obj.name in target:
                    raise DataError(path, f"{section} '{obj.name}' is defined twice")
                target[obj.name] = obj
    try:
        return Registry(variables=variables, indicators=indicators)
    except ValidationError as exc:
        raise DataError("conf/indicators", exc.errors()[0]["msg"]) from None


@lru_cache(maxsize=4)
def load_registry(folder: Path | None = None) -> Registry:
    """Load and validate every ``*.yml`` of the registry folder (``conf/indicators`` by default)."""
    folder = Path(folder) if folder is not None else conf_dir() / "indicators"
    files = sorted(folder.glob("*.yml"))
    if not files:
        raise DataError(folder, "no registry files (*.yml) found")
    return _load_files(files)
