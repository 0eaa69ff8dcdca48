"""Typed parameters of a run, read from ``conf/parameters.yml``, and the loader every
configuration file of ``conf/`` goes through."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from territoria.errors import DataError
from territoria.paths import conf_dir

Config = TypeVar("Config", bound=BaseModel)


class FeatureParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    knn_fallback: int = Field(4, ge=1, le=20)
    #: facility label -> BPE count variable(s); a commune hosts it when their sum is > 0
    nearest_facility: dict[str, str | list[str]] = Field(default_factory=dict)
    mobile_site_radius_km: float = Field(5.0, gt=0)
    irep_radii_km: list[float] = Field(default_factory=lambda: [2.0, 5.0, 10.0])
    pocket_gap_points: float = Field(10.0, ge=0)


class Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_cog: int = Field(2026, ge=2015, le=2100)
    reference_period: int = Field(2021, ge=2000, le=2100)
    seed: int = 42
    features: FeatureParameters = Field(default_factory=FeatureParameters)


def load_yaml(path: Path | str, what: str = "configuration file") -> dict:
    """A YAML mapping from a configuration file, with one-line errors naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, f"{what} not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DataError(path, f"invalid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    if not isinstance(doc, dict):
        raise DataError(path, "expected a mapping of settings at the top level")
    return doc


def load_config(model: type[Config], path: Path | str | None, default: str, what: str) -> Config:
    """Read a configuration file (``conf/<default>`` when ``path`` is None) and validate it
    with the pydantic ``model``.

    Every problem is a :class:`DataError` naming the file and the setting, e.g.
    ``priority.yml: flag.top_share: Input should be less than or equal to 0.5``; a
    ``DataError`` raised by one of the model's own validators keeps its message.

    Examples
    --------
    >>> load_config(Parameters, None, "parameters.yml", "parameters file").target_cog
    2026
    """
    path = Path(path) if path is not None else conf_dir() / default
    doc = load_yaml(path, what)
    try:
        return model.model_validate(doc)
    except DataError as exc:
        raise DataError(path, exc.problem) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, DataError):
            raise DataError(path, cause.problem) from None
        loc = ".".join(str(x) for x in err["loc"])
        raise DataError(path, f"{loc}: {err['msg']}") from None


def load_parameters(path: Path | str | None = None) -> Parameters:
    """Read and validate the parameters file (``conf/parameters.yml`` by default)."""
    return load_config(Parameters, path, "parameters.yml", "parameters file")
