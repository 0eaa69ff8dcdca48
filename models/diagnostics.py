"""Explicit diagnostics per zone: flags with a short reason in French and English.

Where the index says *how* deprived a zone is, the diagnostics say *what kind* of situation
it is in, with thresholds a reader can check (``conf/diagnostics.yml``, read by
:func:`load_diagnostics_config`):

``n_vulnerable_domains`` / ``flag_cumulated``
    how many ``domain_<name>`` scores of the deprivation index (higher = worse) are in the
    worst national decile (``cumulated.worst_share``); cumulated disadvantages when at least
    ``cumulated.min_domains``. ``vulnerable_domains`` lists them.
``flag_pocket``
    a pocket of poverty: the poorest IRIS is ``pocket.min_spread_points`` above the
    commune's median IRIS (``iris_poverty_spread``) with at least ``pocket.min_pockets``
    pocket IRIS (``iris_pockets``).
``flag_isolated``
    far worse than its department / EPCI on a key deprivation indicator: the oriented gap
    (``<ind>__gap_dep``, ``<ind>__gap_epci`` times the registry sign, > 0 = unfavourable) in
    the top ``isolated.top_share`` nationally, for all (or any) groups listed.
``flag_contrast``
    a sharp contrast with the neighbouring communes (``<ind>__gap_nbr``, oriented), top
    ``contrast.top_share`` nationally.
``flag_services_retreat``
    the commune lost its last facility of a service between two BPE vintages
    (``<count>__chg < 0`` and the count now 0) and the nearest one (``dist_<facility>``, same
    vintage) is now ``services_retreat.min_distance_km`` or more away: the distance grew from
    0 to that value. The feature matrix holds distances at the latest vintage only, so a
    distance growth without a closure in the commune itself is not measurable here.

Quantile thresholds are computed among the zones of the frame given (nationally for the
real feature matrix) with a value and at least ``min_population`` inhabitants (the
``population`` feature; every zone when it is absent). A configured indicator whose feature
is missing is skipped (listed in ``attrs["skipped"]``). Missing data never raise a flag.

Reasons (``diagnostic_reasons_fr``, ``diagnostic_reasons_en``) join one short sentence per
raised flag, built column-wise (one loop over the flags and indicators, none over zones),
e.g. « poche de pauvreté : un IRIS à 42 % de bas revenus contre 18 % pour l'IRIS médian de
la commune ».
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from territoria.errors import DataError
from territoria.paths import conf_dir
from territoria.registry import Registry, load_registry
from territoria.settings import load_config

FLAGS = (
    "flag_cumulated",
    "flag_pocket",
    "flag_isolated",
    "flag_contrast",
    "flag_services_retreat",
)

DOMAIN_LABELS_FR = {
    "economic": "économie",
    "education": "éducation",
    "services": "services",
    "residential": "logement",
    "environment": "environnement",
    "digital": "numérique",
    "demographic": "démographie",
}

_GROUP_SUFFIX = {"departement": "gap_dep", "epci": "gap_epci"}
_GROUP_WORDS = {
    "departement": ("dans le département", "in the department"),
    "epci": ("dans l'EPCI", "in the EPCI"),
}


# --------------------------------------------------------------------------- configuration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CumulatedConfig(_Strict):
    worst_share: float = Field(0.10, gt=0.0, le=0.5)
    min_domains: int = Field(3, ge=1)


class PocketConfig(_Strict):
    min_spread_points: float = Field(25.0, gt=0.0, le=100.0)
    min_pockets: int = Field(1, ge=0)


class GapConfig(_Strict):
    indicators: list[str] = Field(min_length=1)
    top_share: float = Field(0.05, gt=0.0, le=0.5)
    min_population: float = Field(500.0, ge=0.0)


class IsolatedConfig(GapConfig):
    groups: list[Literal["departement", "epci"]] = Field(
        default_factory=lambda: ["departement", "epci"], min_length=1
    )
    match: Literal["all", "any"] = "all"


class ServiceConfig(_Strict):
    count: str
    distance: str
    label_fr: str = Field(min_length=1)
    label_en: str = Field(min_length=1)


class ServicesConfig(_Strict):
    min_distance_km: float = Field(2.0, ge=0.0)
    services: dict[str, ServiceConfig] = Field(min_length=1)


class DiagnosticsConfig(_Strict):
    """The validated content of ``conf/diagnostics.yml``."""

    cumulated: CumulatedConfig = Field(default_factory=CumulatedConfig)
    pocket: PocketConfig = Field(default_factory=PocketConfig)
    isolated: IsolatedConfig
    contrast: GapConfig
    services_retreat: ServicesConfig

    @field_validator("isolated", "contrast")
    @classmethod
    def _finite(cls, v: GapConfig) -> GapConfig:
        if not math.isfinite(v.min_population):
            raise ValueError("min_population must be finite")
        return v


def load_diagnostics_config(
    path: Path | str | None = None, registry: Registry | None = None
) -> DiagnosticsConfig:
    """Read and validate ``conf/diagnostics.yml`` (or ``path``).

    A threshold out of range, an unknown key or an indicator unknown to the registry raises
    :class:`~territoria.errors.DataError` naming the file and the setting, e.g.
    ``diagnostics.yml: isolated.top_share: Input should be less than or equal to 0.5``.
    """
    path = Path(path) if path is not None else conf_dir() / "diagnostics.yml"
    cfg = load_config(DiagnosticsConfig, path, "diagnostics.yml", "diagnostics configuration")
    reg = registry or load_registry()
    for section in ("isolated", "contrast"):
        for name in getattr(cfg, section).indicators:
            if name not in reg.indicators:
                raise DataError(path, f"{section}.indicators: unknown indicator '{name}'")
    for key, svc in cfg.services_retreat.services.items():
        for name in (svc.count, svc.distance):
            if name not in reg.indicators:
                raise DataError(
                    path, f"services_retreat.services.{key}: unknown indicator '{name}'"
                )
    return cfg


def _config(config) -> DiagnosticsConfig:
    if config is None or isinstance(config, (str, Path)):
        return load_diagnostics_config(config)
    if isinstance(config, DiagnosticsConfig):
        return config
    if isinstance(config, dict):
        try:
            return DiagnosticsConfig.model_validate(config)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise DataError("diagnostics configuration", f"{loc}: {err['msg']}") from None
    raise TypeError("config must be a DiagnosticsConfig, a mapping, a path or None")


# --------------------------------------------------------------------------- text helpers


def _num(x: pd.Series, decimals: int, lang: str) -> pd.Series:
    """Rounded numbers as text, vectorised (no per-zone Python; French decimal comma).

    >>> _num(pd.Series([3.14159, -0.25, 42.0]), 1, "fr").tolist()
    ['3,1', '-0,2', '42,0']
    """
    x = pd.Series(x, dtype=float)
    scale = 10**decimals
    v = (x * scale).round(0).fillna(0.0).astype("int64")
    whole = (v.abs() // scale).astype(str)
    sign = pd.Series(np.where(v < 0, "-", ""), index=x.index, dtype="str")
    if decimals == 0:
        return sign + whole
    frac = (v.abs() % scale).astype(str).str.pad(decimals, side="left", fillchar="0")
    return sign + whole + ("," if lang == "fr" else ".") + frac


def _unit(unit: str) -> tuple[str, int]:
    """Text suffix and decimals of a registry unit."""
    if unit.startswith("%"):
        return " %", 1
    if unit.startswith("EUR"):
        return " €", 0
    if unit == "km":
        return " km", 1
    return "", 1


def _append(text: pd.Series, piece, mask, sep: str) -> pd.Series:
    """``text`` with ``piece`` appended (``sep`` between) where ``mask``, vectorised."""
    if not isinstance(piece, pd.Series):
        piece = pd.Series(piece, index=text.index, dtype="str")
    mask = pd.Series(np.asarray(mask, dtype=bool), index=text.index)
    joined = (text + sep + piece).where(text != "", piece)
    return joined.where(mask, text).astype("str")


def _labels(meta: pd.DataFrame, registry: Registry, name: str) -> tuple[str, str]:
    """French and English label of an indicator's level feature (meta first, registry after)."""
    if meta is not None and len(meta) and "feature" in meta.columns:
        row = meta[meta["feature"] == name]
        if len(row):
            return str(row["label_fr"].iloc[0]), str(row["label_en"].iloc[0])
    ind = registry.indicator(name)
    return ind.label_fr, ind.label_en


def _periods(meta: pd.DataFrame, feature: str) -> tuple[str, str] | None:
    if meta is None or not len(meta) or "feature" not in meta.columns:
        return None
    row = meta[meta["feature"] == feature]
    if not len(row) or pd.isna(row["period_from"].iloc[0]) or pd.isna(row["period_to"].iloc[0]):
        return None
    return str(int(row["period_from"].iloc[0])), str(int(row["period_to"].iloc[0]))


def _lower_first(s: str) -> str:
    """Lower-case the first letter of a label unless its first word is an acronym (FttH)."""
    first = s.split(" ", 1)[0]
    if not s or any(c.isupper() for c in first[1:]):
        return s
    return s[:1].lower() + s[1:]


# --------------------------------------------------------------------------- the flags


def _top(values: pd.Series, eligible: pd.Series, share: float) -> tuple[pd.Series, float]:
    """Zones whose value is positive and in the top ``share`` among eligible zones with one."""
    ref = values[eligible & values.notna()]
    if ref.empty:
        return pd.Series(False, index=values.index), float("nan")
    thr = float(np.quantile(ref.to_numpy(float), 1.0 - share))
    flag = (values >= thr) & (values > 0) & eligible
    return flag.fillna(False).astype(bool), thr


def diagnostic_flags(
    features: pd.DataFrame,
    meta: pd.DataFrame,
    domain_scores: pd.DataFrame,
    config: DiagnosticsConfig | Path | str | dict | None = None,
    *,
    registry: Registry | None = None,
) -> pd.DataFrame:
    """Diagnostic flags and their reasons for every zone of ``features``.

    Parameters
    ----------
    features : DataFrame
        The feature matrix (``zone_code`` column, or indexed by zone code).
    meta : DataFrame
        Its metadata (``feature, indicator, label_fr, label_en, period_from, period_to``):
        labels and vintages of the reasons.
    domain_scores : DataFrame
        Indexed by zone code (or with ``zone_code``), with ``domain_<name>`` scores (higher
        = worse), as returned by :meth:`~territoria.models.index.DeprivationIndex.transform`;
        ``domain_<name>_exp`` and other columns are ignored.
    config : DiagnosticsConfig, mapping, path or None (``conf/diagnostics.yml``).

    Returns
    -------
    DataFrame indexed by ``zone_code`` (the order of ``features``): ``n_vulnerable_domains``,
    ``vulnerable_domains``, ``flag_cumulated``, ``flag_pocket``, ``flag_isolated``,
    ``flag_contrast``, ``flag_services_retreat``, ``n_flags``, ``diagnostic_reasons_fr``,
    ``diagnostic_reasons_en`` ("" when no flag). ``attrs["thresholds"]`` holds the quantile
    thresholds used, ``attrs["skipped"]`` the configured features absent from the input.
    """
    cfg = _config(config)
    reg = registry or load_registry()
    X = features.set_index("zone_code", drop=False) if "zone_code" in features.columns else features
    X = X.rename_axis("zone_code")
    X.index = X.index.astype(str)
    if X.index.has_duplicates:
        raise DataError("features", "one row per zone expected", column="zone_code")
    idx = X.index
    empty = pd.Series("", index=idx, dtype="str")
    reasons = {"fr": empty.copy(), "en": empty.copy()}
    seps = {"fr": " ; ", "en": "; "}
    out = pd.DataFrame(index=idx)
    thresholds: dict[str, float] = {}
    skipped: list[str] = []

    def col(name: str) -> pd.Series | None:
        if name in X.columns:
            return pd.to_numeric(X[name], errors="coerce").astype(float)
        skipped.append(name)
        return None

    def add_reason(mask: pd.Series, fr: pd.Series, en: pd.Series) -> None:
        m = mask.to_numpy(bool)
        reasons["fr"] = _append(reasons["fr"], fr, m, seps["fr"])
        reasons["en"] = _append(reasons["en"], en, m, seps["en"])

    pop = col("population")
    if pop is None:
        skipped.remove("population")

    def eligible(min_population: float) -> pd.Series:
        if pop is None or min_population <= 0:
            return pd.Series(True, index=idx)
        return (pop >= min_population).fillna(False)

    # -- cumulated disadvantages ------------------------------------------------------------
    ds = domain_scores
    if "zone_code" in ds.columns:
        ds = ds.set_index("zone_code")
    ds = ds.copy()
    ds.index = ds.index.astype(str)
    domains = [
        c[len("domain_"):]
        for c in ds.columns
        if c.startswith("domain_")
        and not c.endswith("_exp")
        and pd.api.types.is_numeric_dtype(ds[c])
    ]
    n_vuln = pd.Series(0, index=idx, dtype="int64")
    listed_fr, listed_en = empty.copy(), empty.copy()
    share = cfg.cumulated.worst_share
    for d in domains:
        s = ds[f"domain_{d}"].astype(float)
        ref = s.dropna()
        if ref.empty:
            continue
        thr = float(np.quantile(ref.to_numpy(), 1.0 - share))
        thresholds[f"domain_{d}"] = thr
        worst = (s >= thr).reindex(idx).fillna(False).astype(bool)
        n_vuln += worst.astype("int64")
        listed_fr = _append(listed_fr, DOMAIN_LABELS_FR.get(d, d), worst.to_numpy(), ", ")
        listed_en = _append(listed_en, d, worst.to_numpy(), ", ")
    out["n_vulnerable_domains"] = n_vuln
    out["vulnerable_domains"] = listed_en
    flag = n_vuln >= cfg.cumulated.min_domains
    out["flag_cumulated"] = flag
    pct = int(round(share * 100))
    n_txt = n_vuln.astype(str)
    add_reason(
        flag,
        "cumul de fragilités : " + n_txt + f" domaines parmi les {pct} % les plus défavorisés ("
        + listed_fr + ")",
        "cumulated disadvantages: " + n_txt + f" domains in the worst {pct} % nationally ("
        + listed_en + ")",
    )

    # -- pocket of poverty ------------------------------------------------------------------
    spread, imax, pockets = col("iris_poverty_spread"), col("iris_poverty_max"), col("iris_pockets")
    if spread is not None:
        flag = (spread >= cfg.pocket.min_spread_points).fillna(False)
        if pockets is not None:
            flag &= (pockets >= cfg.pocket.min_pockets).fillna(False)
        elif cfg.pocket.min_pockets > 0:
            flag &= False
        flag = flag.astype(bool)
        if imax is not None:
            med = imax - spread
            add_reason(
                flag,
                "poche de pauvreté : un IRIS à " + _num(imax, 0, "fr")
                + " % de bas revenus contre " + _num(med, 0, "fr")
                + " % pour l'IRIS médian de la commune",
                "pocket of poverty: one IRIS at " + _num(imax, 0, "en")
                + " % low income against " + _num(med, 0, "en")
                + " % in the commune's median IRIS",
            )
        else:
            add_reason(
                flag,
                "poche de pauvreté : un IRIS " + _num(spread, 0, "fr")
                + " points au-dessus de l'IRIS médian de la commune",
                "pocket of poverty: one IRIS " + _num(spread, 0, "en")
                + " points above the commune's median IRIS",
            )
    else:
        flag = pd.Series(False, index=idx)
    out["flag_pocket"] = flag

    # -- isolated within department / EPCI ---------------------------------------------------
    iso = cfg.isolated
    el = eligible(iso.min_population)
    flag = pd.Series(False, index=idx)
    best_ratio = pd.Series(0.0, index=idx)
    best_fr, best_en = empty.copy(), empty.copy()
    for name in iso.indicators:
        value = col(name)
        gaps = {g: col(f"{name}__{_GROUP_SUFFIX[g]}") for g in iso.groups}
        gaps = {g: v for g, v in gaps.items() if v is not None}
        if value is None or not gaps:
            continue
        sign = reg.indicator(name).sign
        hits, ratios = [], []
        for g, gap in gaps.items():
            hit, thr = _top(sign * gap, el, iso.top_share)
            thresholds[f"{name}__{_GROUP_SUFFIX[g]}"] = thr
            hits.append(hit)
            zero = pd.Series(0.0, index=idx)
            ratios.append((sign * gap / thr).where(hit, 0.0) if thr > 0 else zero)
        if len(hits) < len(iso.groups) and iso.match == "all":
            continue  # a group's gap is missing: "far worse than all" cannot be judged
        hit = np.logical_and.reduce(hits) if iso.match == "all" else np.logical_or.reduce(hits)
        hit = pd.Series(hit, index=idx)
        ratio = pd.concat(ratios, axis=1).max(axis=1).where(hit, 0.0)
        better = hit & (ratio > best_ratio)
        unit, dec = _unit(reg.indicator(name).unit)
        lab_fr, lab_en = _labels(meta, reg, name)
        fr = _lower_first(lab_fr) + " " + _num(value, dec, "fr") + unit + " contre "
        en = _lower_first(lab_en) + " " + _num(value, dec, "en") + unit + " against "
        first = True
        for g, gap in gaps.items():
            mean = value - gap
            w_fr, w_en = _GROUP_WORDS[g]
            fr = fr + ("" if first else " et ") + _num(mean, dec, "fr") + unit + " " + w_fr
            en = en + ("" if first else " and ") + _num(mean, dec, "en") + unit + " " + w_en
            first = False
        best_fr = fr.where(better, best_fr)
        best_en = en.where(better, best_en)
        best_ratio = best_ratio.where(~better, ratio)
        flag |= hit
    flag = flag.astype(bool)
    out["flag_isolated"] = flag
    add_reason(
        flag,
        "isolement : " + best_fr,
        "isolated: " + best_en,
    )

    # -- contrast with neighbours -------------------------------------------------------------
    con = cfg.contrast
    el = eligible(con.min_population)
    flag = pd.Series(False, index=idx)
    best_ratio = pd.Series(0.0, index=idx)
    best_fr, best_en = empty.copy(), empty.copy()
    for name in con.indicators:
        value, gap = col(name), col(f"{name}__gap_nbr")
        if value is None or gap is None:
            continue
        sign = reg.indicator(name).sign
        hit, thr = _top(sign * gap, el, con.top_share)
        thresholds[f"{name}__gap_nbr"] = thr
        ratio = (sign * gap / thr).where(hit, 0.0) if thr > 0 else pd.Series(0.0, index=idx)
        better = hit & (ratio > best_ratio)
        unit, dec = _unit(reg.indicator(name).unit)
        lab_fr, lab_en = _labels(meta, reg, name)
        mean = value - gap
        fr = (_lower_first(lab_fr) + " " + _num(value, dec, "fr") + unit + " contre "
              + _num(mean, dec, "fr") + unit + " en moyenne chez les communes voisines")
        en = (_lower_first(lab_en) + " " + _num(value, dec, "en") + unit + " against "
              + _num(mean, dec, "en") + unit + " on average in neighbouring communes")
        best_fr = fr.where(better, best_fr)
        best_en = en.where(better, best_en)
        best_ratio = best_ratio.where(~better, ratio)
        flag |= hit
    flag = flag.astype(bool)
    out["flag_contrast"] = flag
    add_reason(
        flag,
        "contraste avec les voisines : " + best_fr,
        "sharp contrast with neighbours: " + best_en,
    )

    # -- services retreat -------------------------------------------------------------------
    srv = cfg.services_retreat
    flag = pd.Series(False, index=idx)
    list_fr, list_en = empty.copy(), empty.copy()
    for svc in srv.services.values():
        level, chg, dist = col(svc.count), col(f"{svc.count}__chg"), col(svc.distance)
        if level is None or chg is None or dist is None:
            continue
        lost = ((chg < 0) & (level <= 0) & (dist >= srv.min_distance_km)).fillna(False).astype(bool)
        per = _periods(meta, f"{svc.count}__chg")
        span = f"{per[0]}→{per[1]}, " if per else ""
        fr = "plus de " + svc.label_fr + " (" + span + "désormais à " + _num(dist, 1, "fr") + " km)"
        en = (
            "no " + svc.label_en + " left (" + span + "nearest now "
            + _num(dist, 1, "en") + " km away)"
        )
        list_fr = _append(list_fr, fr, lost.to_numpy(), ", ")
        list_en = _append(list_en, en, lost.to_numpy(), ", ")
        flag |= lost
    flag = flag.astype(bool)
    out["flag_services_retreat"] = flag
    add_reason(flag, "recul des services : " + list_fr, "services retreat: " + list_en)

    out["n_flags"] = out[list(FLAGS)].sum(axis=1).astype("int64")
    out["diagnostic_reasons_fr"] = reasons["fr"]
    out["diagnostic_reasons_en"] = reasons["en"]
    for c in FLAGS:
        out[c] = out[c].astype(bool)
    if skipped:
        warnings.warn(
            f"diagnostics: features absent, skipped: {', '.join(sorted(set(skipped)))}",
            stacklevel=2,
        )
    out.attrs["thresholds"] = thresholds
    out.attrs["skipped"] = sorted(set(skipped))
    return out
