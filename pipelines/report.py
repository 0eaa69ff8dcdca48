"""Pipeline ``report``: what planners and auditors see, built from a finished run's outputs.

A pure reporting stage: it reads the run folder (``priorities.csv``/``.gpkg``, ``panel.parquet``,
``features.parquet``, ``score_points.parquet``, ``clusters.csv``, ``coverage_gaps.csv``,
``data_report.json``, and ``metrics.json``/``index_weights.csv`` when present), never re-reads
the official data nor loads a model, and writes atomically under the same folder:

``map.html``
    interactive choropleth of every commune's priority score (Leaflet through folium-offline) with
    switchable domain scores, overlays for the priority flags, the contiguous clusters and the
    programme perimeters (QPV 2024, ZRR, ACV, PVD), a search box and buttons for the overseas
    departments. The polygons are embedded once (simplified, delta-encoded integers) and every
    layer is drawn from that single copy by a small inline script.
``zones/<code>.html``
    one self-contained card per flagged zone (one Jinja2 template, charts as inline SVG built
    from the numbers; no script, no network).
``report.html``
    the planner's summary: priority zones by department, border-crossing clusters, coverage
    gaps, and what changed since the previous run.
``audit/model_card.md``, ``audit/weights.csv``, ``audit/sensitivity.csv``, ``audit/lineage.json``
    data files and hashes, intended use and limits, metrics vs baselines, weights and their
    sensitivity, fairness and stability summaries, input/output hashes, package versions and
    git commit.
``audit/fairness.md``, ``audit/fairness.json``, ``audit/fairness_errors.csv``, ``audit/fairness_flags.csv``
    the fairness audit by territory group (:mod:`territoria.models.fairness`): out-of-fold
    model error and interval coverage, flag rates against need, ``p_priority``, and the
    disparities beyond the tolerances of ``conf/priority.yml`` (``audit.fairness``) as
    findings. (``audit/stability.*`` is written by the prioritise stage; the model card
    summarises it.)
``figures/priority_map.png``, ``figures/domains.png``
    static figures (matplotlib, Agg backend; quantile classes as mapclassify's).

Entry points: :func:`run_report` (the stage), :func:`zone_card_html` and
:func:`write_zone_card` (one card for any zone, for ``territoria explain CODE --html``).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from html import escape as html_escape
from pathlib import Path

import numpy as np
import pandas as pd
from markupsafe import Markup

from territoria.digest import FileDigests, file_sha256
from territoria.errors import DataError
from territoria.io import write_atomic, write_bytes_atomic, write_csv, write_csv_rounded, write_json
from territoria.pipelines.explain_zone import _DOMAINS, _num, _ordinal, _signed, read_priorities
from territoria.workers import SideProcess

LANGS = ("fr", "en")
PROGRAMMES = ("QPV2024", "ZRR", "ACV", "PVD")
#: the programmes' adapters (producer, dataset and vintage come from their class)
PROGRAMME_SOURCES = {"QPV2024": "qpv_2024", "ZRR": "zrr", "ACV": "acv", "PVD": "pvd"}
#: indicators shown over time on a card (panel rows at commune level)
KEY_INDICATORS = ("unemployment_rate", "median_income", "poverty_rate", "share_minimum_benefits",
                  "vacancy_rate", "population")
#: counts: the department figure is a sum and both lines are shown as an index (first year = 100)
COUNT_INDICATORS = frozenset({"population"})
#: written by the prioritise stage, summarised in the model card and hashed in the lineage
STABILITY_FILES = ("stability.json", "stability.md", "stability_replicates.csv", "stability_zones.csv",
                   "stability_refits.csv")
OVERSEAS = {"971": "Guadeloupe", "972": "Martinique", "973": "Guyane", "974": "La Réunion", "976": "Mayotte"}
SIMPLIFY_TOLERANCE = 0.002  # degrees (about 150-200 m)
COORD_DIGITS = 5
N_LEVERS, N_CONTEXT, N_LOCATION = 6, 4, 2
#: run files whose hashes go into the lineage (when present)
RUN_FILES = ("panel.parquet", "features.parquet", "features_meta.csv", "data_report.json", "index.parquet",
             "index_weights.csv", "metrics.json", "backtest_metrics.csv", "predictions.parquet",
             "priorities.csv", "priorities.gpkg", "explanations.parquet", "score_points.parquet",
             "coverage_gaps.csv", "clusters.csv", "priority_policy.json", "mlflow.db")
PACKAGES = ("territoria", "numpy", "pandas", "pyarrow", "geopandas", "shapely", "pyogrio", "scikit-learn",
            "lightgbm", "shap", "libpysal", "esda", "folium-offline", "branca", "jinja2", "matplotlib", "mapclassify")

# --------------------------------------------------------------------------- texts
TEXT = {
    "fr": {
        "html_lang": "fr", "c": "\u00a0:", "card_title": "Fiche zone", "department": "Département", "epci": "EPCI",
        "region": "Région", "population": "Population", "reference": "Période de référence",
        "score": "Score de priorité", "interval": "intervalle 80 %", "rank": "Rang national",
        "rank_of": "sur", "rank_range": "rang possible selon l'incertitude", "rank_dep": "Rang dans le département",
        "rank_epci": "Rang dans l'EPCI", "flag": "Zone prioritaire", "yes": "oui", "no": "non",
        "status": "statut", "history": "historique", "index": "Indice de privation",
        "decile": "décile", "domains": "Scores par domaine",
        "domains_note": "0 = médiane nationale ; positif = plus défavorisé (écarts robustes).",
        "forecasts": "Évolutions prévues (modèles, intervalle 80 %)", "measure": "mesure", "period": "période",
        "forecast": "prévision", "indicators": "Indicateurs clés dans le temps",
        "zone": "commune", "dep_mean": "département (moyenne pondérée par la population)",
        "nbr_mean": "communes voisines (moyenne, année de référence)", "index100": "indice, première année = 100",
        "waterfall": "De quoi est fait le score (points de score)",
        "waterfall_note": "Part de zone neutre, puis contributions : leviers (sur lesquels une politique peut agir), "
                          "contexte (structure), voisinage (situation des communes alentour). Rouge : augmente le score ; "
                          "bleu : le diminue.",
        "base": "zone neutre (point de départ)", "final": "score de priorité",
        "lever": "levier", "context": "contexte", "location": "voisinage",
        "other_lever": "autres leviers", "other_context": "autres facteurs de contexte",
        "other_location": "autres effets du voisinage", "surroundings": "voisinage",
        "top_levers": "Principaux leviers", "none": "aucun",
        "programmes": "Programmes qui couvrent la commune", "no_programme": "aucun programme",
        "gap": "Écart de couverture", "gap_priority_not_covered": "zone prioritaire qu'aucun programme ne couvre",
        "gap_programme_not_deprived": "couverte par un programme mais ne paraît plus défavorisée",
        "diagnostics": "Diagnostics", "no_diagnostic": "aucun signal particulier",
        "cluster": "Périmètre prioritaire contigu", "cluster_desc": "{n} communes, {pop} habitants, départements {deps}",
        "scenario": "Et si ? Scénarios",
        "scenario_text": "Plus petite évolution des leviers qui ferait sortir la zone de la liste : "
                         "<code>territoria counterfactual {code}</code> ; simulation d'un changement : "
                         "<code>territoria scenario FICHIER.yml</code> (docs/SCENARIOS.md). Associations apprises "
                         "sur des données d'observation, pas des effets causaux.",
        "sources": "Sources et millésimes des chiffres", "figure": "chiffre", "producer": "producteur",
        "dataset": "jeu de données", "vintage": "millésime",
        "src_index": "Indice composite territoria (conf/index.yml)",
        "src_models": "Modèles de trajectoire territoria (LightGBM, intervalles conformes)",
        "src_points": "Décomposition TreeSHAP du score (score_points.parquet)",
        "built_from": "calculé à partir des indicateurs ci-dessous",
        "generated": "Produit par territoria", "back": "Retour au rapport", "map": "Carte",
        "report_title": "Rapport de priorisation", "summary": "Synthèse",
        "n_zones": "communes évaluées", "n_flagged": "zones prioritaires", "pop_flagged": "habitants concernés",
        "by_department": "Zones prioritaires par département", "dep": "département", "communes": "communes",
        "flagged": "prioritaires", "share": "part", "top_zones": "zones en tête",
        "clusters": "Périmètres qui franchissent les frontières administratives",
        "clusters_note": "Périmètres contigus de zones prioritaires ; {n_dep} franchissent une limite de département, "
                         "{n_epci} une limite d'EPCI, {n_reg} une limite de région.",
        "n_communes": "communes", "departments": "départements", "n_epcis": "EPCI", "regions": "régions",
        "gaps": "Écarts de couverture des programmes", "gaps_note": "{a} zones prioritaires sans programme ; "
        "{b} communes couvertes par un programme qui ne paraissent plus défavorisées.",
        "changes": "Ce qui a changé depuis le run précédent",
        "changes_first": "Premier run avec cette sortie : toutes les zones prioritaires sont nouvelles.",
        "st_new": "nouvelle", "st_continuing": "maintenue", "st_retained": "retenue par hystérésis",
        "st_exited": "sortie de la liste", "dep_short": "département", "nbr_short": "voisines", "index_word": "indice",
        "new": "nouvelles", "continuing": "maintenues", "retained": "retenues par hystérésis",
        "exited": "sorties de la liste", "links": "Autres sorties",
        "map_title": "Score de priorité des communes", "search": "code INSEE ou nom", "mainland": "Métropole",
        "layer_flags": "Zones prioritaires", "layer_clusters": "Périmètres contigus",
        "card_link": "ouvrir la fiche", "card_cli": "fiche : territoria explain {code} --html",
        "legend_missing": "non calculé", "tiles_note": "fond OpenStreetMap / CARTO si connecté",
        "card_missing": "Zone absente de ce run",
    },
    "en": {
        "html_lang": "en", "c": ":", "card_title": "Zone card", "department": "Department", "epci": "EPCI",
        "region": "Region", "population": "Population", "reference": "Reference period",
        "score": "Priority score", "interval": "80 % interval", "rank": "National rank",
        "rank_of": "of", "rank_range": "rank range given the uncertainty", "rank_dep": "Rank in its department",
        "rank_epci": "Rank in its EPCI", "flag": "Priority zone", "yes": "yes", "no": "no",
        "status": "status", "history": "history", "index": "Deprivation index",
        "decile": "decile", "domains": "Domain scores",
        "domains_note": "0 = national median; positive = more deprived (robust deviations).",
        "forecasts": "Forecast changes (models, 80 % interval)", "measure": "measure", "period": "period",
        "forecast": "forecast", "indicators": "Key indicators over time",
        "zone": "commune", "dep_mean": "department (population-weighted mean)",
        "nbr_mean": "neighbouring communes (mean, reference year)", "index100": "index, first year = 100",
        "waterfall": "What the score is made of (score points)",
        "waterfall_note": "Starts from a neutral zone, then contributions: levers (what policy can act on), "
                          "context (structure), surroundings (the situation of nearby communes). Red raises the "
                          "score; blue lowers it.",
        "base": "neutral zone (starting point)", "final": "priority score",
        "lever": "lever", "context": "context", "location": "surroundings",
        "other_lever": "other levers", "other_context": "other context factors",
        "other_location": "other effects of the surroundings", "surroundings": "surroundings",
        "top_levers": "Top levers", "none": "none",
        "programmes": "Programmes covering the commune", "no_programme": "no programme",
        "gap": "Coverage gap", "gap_priority_not_covered": "priority zone no programme covers",
        "gap_programme_not_deprived": "covered by a programme but no longer looks deprived",
        "diagnostics": "Diagnostics", "no_diagnostic": "no particular signal",
        "cluster": "Contiguous priority perimeter", "cluster_desc": "{n} communes, {pop} inhabitants, departments {deps}",
        "scenario": "What if? Scenarios",
        "scenario_text": "Smallest lever change that would take the zone off the list: "
                         "<code>territoria counterfactual {code}</code>; simulate a change: "
                         "<code>territoria scenario FILE.yml</code> (docs/SCENARIOS.md). Associations learned "
                         "from observational data, not causal effects.",
        "sources": "Sources and vintages of the figures", "figure": "figure", "producer": "producer",
        "dataset": "dataset", "vintage": "vintage",
        "src_index": "territoria composite index (conf/index.yml)",
        "src_models": "territoria trajectory models (LightGBM, conformal intervals)",
        "src_points": "TreeSHAP decomposition of the score (score_points.parquet)",
        "built_from": "computed from the indicators below",
        "generated": "Produced by territoria", "back": "Back to the report", "map": "Map",
        "report_title": "Prioritisation report", "summary": "Summary",
        "n_zones": "communes scored", "n_flagged": "priority zones", "pop_flagged": "inhabitants concerned",
        "by_department": "Priority zones by department", "dep": "department", "communes": "communes",
        "flagged": "priority", "share": "share", "top_zones": "top zones",
        "clusters": "Perimeters crossing administrative borders",
        "clusters_note": "Contiguous perimeters of priority zones; {n_dep} cross a department border, "
                         "{n_epci} an EPCI border, {n_reg} a region border.",
        "n_communes": "communes", "departments": "departments", "n_epcis": "EPCIs", "regions": "regions",
        "gaps": "Programme coverage gaps", "gaps_note": "{a} priority zones without any programme; "
        "{b} communes covered by a programme that no longer look deprived.",
        "changes": "What changed since the previous run",
        "changes_first": "First run with this output: every priority zone is new.",
        "st_new": "new", "st_continuing": "continuing", "st_retained": "retained by hysteresis",
        "st_exited": "left the list", "dep_short": "department", "nbr_short": "neighbours", "index_word": "index",
        "new": "new", "continuing": "continuing", "retained": "retained by hysteresis",
        "exited": "left the list", "links": "Other outputs",
        "map_title": "Priority score of the communes", "search": "INSEE code or name", "mainland": "Mainland",
        "layer_flags": "Priority zones", "layer_clusters": "Contiguous perimeters",
        "card_link": "open the card", "card_cli": "card: territoria explain {code} --html",
        "legend_missing": "not computed", "tiles_note": "OpenStreetMap / CARTO background when online",
        "card_missing": "Zone not in this run",
    },
}

_DOMAIN_EN = {"economic": "economic", "residential": "housing", "demographic": "demographic",
              "services": "services", "digital": "digital", "environment": "environment", "education": "education"}


def domain_label(name: str, lang: str) -> str:
    return (_DOMAINS["fr"] if lang == "fr" else _DOMAIN_EN).get(name, name)


def _text(lang: str) -> dict:
    if lang not in TEXT:
        raise DataError("--lang", f"unknown language '{lang}' (fr or en)")
    return TEXT[lang]


def fmt_int(x, lang: str) -> str:
    return _num(x, lang, 0)


def fmt_value(x, unit: str, lang: str) -> str:
    """A figure with its unit, French or English number format."""
    if x is None or pd.isna(x):
        return "–"
    u = (unit or "").lower()
    if u.startswith("%"):
        return _num(x, lang, 1) + ("\u00a0%" if lang == "fr" else "%")
    if "eur" in u:
        return _num(x, lang, 0) + ("\u00a0€" if lang == "fr" else " EUR")
    if u in ("persons", "inhabitants") or abs(x) >= 1000:
        return _num(x, lang, 0)
    return _num(x, lang, 1 if abs(x) < 100 else 0)


# --------------------------------------------------------------------------- reading the run
@dataclass
class RunOutputs:
    """What the report needs from a finished run (read once)."""

    out_dir: Path
    priorities: pd.DataFrame
    meta: pd.DataFrame
    clusters: pd.DataFrame
    gaps: pd.DataFrame
    data_report: dict
    policy: dict
    metrics: dict | None
    weights: pd.DataFrame | None
    dep_names: dict[str, str]
    period: int
    extra: dict = field(default_factory=dict)

    @property
    def domains(self) -> list[str]:
        return [c for c in self.priorities.columns if c.startswith("domain_") and c.count("_") == 1]


def _read_csv(path: Path, **kw) -> pd.DataFrame:
    return pd.read_csv(path, low_memory=False, **kw) if path.exists() else pd.DataFrame()


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def load_run(out_dir: Path | str) -> RunOutputs:
    """Read the light outputs of the run in ``out_dir`` (not the panel nor the polygons)."""
    out_dir = Path(out_dir)
    pri = read_priorities(out_dir)
    for c in ("priority_flag", *PROGRAMMES):
        if c in pri:
            pri[c] = pri[c].astype("string").str.lower().isin(["true", "1"]).to_numpy()
    for c in PROGRAMMES:
        if c not in pri:
            progs = pri["programmes"].fillna("").astype(str) if "programmes" in pri else pd.Series("", index=pri.index)
            pri[c] = progs.str.contains(c, regex=False).to_numpy()
    data_report = _read_json(out_dir / "data_report.json") or {}
    policy = _read_json(out_dir / "priority_policy.json") or {}
    period = int(policy.get("period") or pri["reference_period"].dropna().iloc[0])
    weights = _read_csv(out_dir / "index_weights.csv")
    return RunOutputs(
        out_dir=out_dir, priorities=pri,
        meta=_read_csv(out_dir / "features_meta.csv"),
        clusters=_read_csv(out_dir / "clusters.csv", dtype={"departements": str, "epcis": str, "regions": str,
                                                            "cluster_id": str}),
        gaps=_read_csv(out_dir / "coverage_gaps.csv", dtype={"zone_code": str, "department": str}),
        data_report=data_report, policy=policy, metrics=_read_json(out_dir / "metrics.json"),
        weights=weights if len(weights) else None,
        dep_names=department_names(data_report.get("data_dir")), period=period,
    )


def department_names(data_dir: str | None = None) -> dict[str, str]:
    """Department code → name from the COG (the run's data folder, else the bundle)."""
    try:
        from territoria.features.sources.cog import CogDepartements

        folder = Path(data_dir) if data_dir and Path(data_dir).exists() else None
        d = CogDepartements(folder).load()
        return dict(zip(d["code"].astype(str), d["name"].astype(str)))
    except Exception:  # noqa: BLE001 - names are a nicety: codes are shown without them
        return {}


@lru_cache(maxsize=1)
def _adapters() -> dict[str, tuple[str, str, str]]:
    """Adapter name → (producer, dataset, vintages) for the source notes."""
    from territoria.features.sources import all_sources

    out = {}
    for name, cls in all_sources().items():
        files = getattr(cls, "files", {}) or {}
        out[name] = (cls.producer, cls.dataset, ", ".join(str(v) for v in sorted(files)))
    return out


@lru_cache(maxsize=1)
def _registry():
    from territoria.registry import load_registry

    return load_registry()


def indicator_label(name: str, lang: str) -> str:
    reg = _registry()
    if name in reg.indicators:
        ind = reg.indicators[name]
        return ind.label_fr if lang == "fr" else ind.label_en
    if name in reg.variables:
        v = reg.variables[name]
        return v.label_fr if lang == "fr" else v.label_en
    return name.replace("_", " ")


def indicator_unit(name: str) -> str:
    reg = _registry()
    if name in reg.indicators:
        return reg.indicators[name].unit
    if name in reg.variables:
        return reg.variables[name].unit
    return ""


def _codes_in(zones) -> tuple:
    """A parquet filter on ``zone_code``; typed, because Arrow cannot type an empty list (a run
    with no flagged zone has no cards to read for)."""
    import pyarrow as pa

    return ("zone_code", "in", pa.array([str(z) for z in zones], pa.string()))


#: the panel's columns a card's series read
SERIES_COLUMNS = ["zone_code", "period", "measure", "value", "source"]


def read_series(out_dir: Path, zones: list[str] | None = None,
                measures: tuple[str, ...] = KEY_INDICATORS) -> pd.DataFrame:
    """Commune rows of ``panel.parquet`` for ``measures`` (and ``zones`` when given)."""
    path = Path(out_dir) / "panel.parquet"
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else "object")
                             for c in SERIES_COLUMNS})
    filters = [("level", "==", "commune"), ("measure", "in", list(measures))]
    if zones is not None:
        filters.append(_codes_in(zones))
    df = pd.read_parquet(path, columns=SERIES_COLUMNS, filters=filters)
    return df[df["value"].notna()].reset_index(drop=True)


def department_means(series: pd.DataFrame, pri: pd.DataFrame) -> pd.DataFrame:
    """Per department, measure and period: the population-weighted mean of its communes (the
    sum for counts). Weights are the communes' populations at the reference period."""
    ident = pri.set_index("zone_code")
    s = series.assign(department=series["zone_code"].map(ident["department"]),
                      w=series["zone_code"].map(ident["population"]).astype(float))
    s = s[s["department"].notna() & s["w"].notna()]
    s = s.assign(wv=s["value"] * s["w"])
    g = s.groupby(["department", "measure", "period"], observed=True).agg(wv=("wv", "sum"), w=("w", "sum"),
                                                                            total=("value", "sum"))
    value = np.where(g.index.get_level_values("measure").isin(list(COUNT_INDICATORS)), g["total"],
                     g["wv"] / g["w"].where(g["w"] > 0))
    return g.assign(value=value)[["value"]].reset_index()


def read_neighbours(out_dir: Path, zones: list[str] | None = None,
                    measures: tuple[str, ...] = KEY_INDICATORS) -> pd.DataFrame:
    """``<indicator>__nbr_mean`` of the feature matrix (reference period), index zone code."""
    path = Path(out_dir) / "features.parquet"
    if not path.exists():
        return pd.DataFrame()
    import pyarrow.parquet as pq

    names = set(pq.read_schema(path).names)
    cols = [f"{m}__nbr_mean" for m in measures if f"{m}__nbr_mean" in names]
    df = pd.read_parquet(path, columns=["zone_code", *cols],
                         filters=[_codes_in(zones)] if zones is not None else None)
    return df.set_index("zone_code").rename(columns=lambda c: c.removesuffix("__nbr_mean"))


def read_points(out_dir: Path, zones: list[str]) -> pd.DataFrame:
    path = Path(out_dir) / "score_points.parquet"
    if not path.exists() or not zones:
        return pd.DataFrame(columns=["zone_code", "indicator", "is_location", "domain", "points", "is_lever"])
    return pd.read_parquet(path, filters=[_codes_in(zones)])


# --------------------------------------------------------------------------- chart geometry (pure)
def bar_chart(items: list[tuple[str, float]], width: int = 300, row: int = 18, label_w: int = 110,
              clip: float = 3.0) -> dict:
    """Diverging horizontal bars around 0 (domain scores): coordinates for the SVG template."""
    vals = [v for _, v in items if v is not None and math.isfinite(v)]
    m = min(max([abs(v) for v in vals] + [1.0]), clip)
    plot_w = width - label_w - 40
    zero = label_w + plot_w / 2
    bars = []
    for k, (label, v) in enumerate(items):
        ok = v is not None and math.isfinite(v)
        vv = max(-m, min(m, v)) if ok else 0.0
        w = abs(vv) / m * plot_w / 2
        bars.append({"y": k * row + 4, "label": label, "x": zero - w if vv < 0 else zero, "w": max(w, 0.5),
                     "cls": "up" if vv > 0 else "down", "value": v if ok else None})
    return {"width": width, "height": len(items) * row + 8, "zero": zero, "bars": bars, "row": row}


def line_chart(periods_zone, values_zone, periods_dep, values_dep, nbr: float | None, ref_period: int,
               width: int = 230, height: int = 100) -> dict | None:
    """Small line chart of a zone vs its department (and the neighbours' mean as a point)."""
    pz = [int(p) for p in periods_zone]
    pd_ = [int(p) for p in periods_dep]
    allp = sorted(set(pz) | set(pd_) | ({ref_period} if nbr is not None else set()))
    ys = [v for v in (*values_zone, *values_dep, *( [nbr] if nbr is not None else [])) if math.isfinite(v)]
    if not allp or not ys:
        return None
    x0, x1 = min(allp), max(allp)
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.12 or abs(hi) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    L, R, T, B = 34, 16, 8, 18  # room for the last year label, centred on its tick

    def X(p):
        return L + (width - L - R) * ((p - x0) / (x1 - x0) if x1 > x0 else 0.5)

    def Y(v):
        return T + (height - T - B) * (1 - (v - lo) / (hi - lo))

    xs = {p: round(X(p), 1) for p in allp}  # the zone's and the department's points share years

    def pts(ps, vs):
        return [(xs[p], round(Y(v), 1)) for p, v in zip(ps, vs) if math.isfinite(v)]

    zone_pts, dep_pts = pts(pz, values_zone), pts(pd_, values_dep)
    return {
        "width": width, "height": height, "L": L, "bottom": height - B, "right": width - R,
        "zone": zone_pts, "zone_line": " ".join(f"{x},{y}" for x, y in zone_pts),
        "dep": dep_pts, "dep_line": " ".join(f"{x},{y}" for x, y in dep_pts),
        "nbr": (round(X(ref_period), 1), round(Y(nbr), 1)) if nbr is not None and math.isfinite(nbr) else None,
        "ticks": _year_ticks([(xs[p], p) for p in allp]),
        "y_hi": hi - pad, "y_lo": lo + pad, "y_hi_y": round(Y(hi - pad), 1), "y_lo_y": round(Y(lo + pad), 1),
    }


def _year_ticks(ticks: list[tuple[float, int]], gap: float = 30.0) -> list[tuple[float, int]]:
    """The first and last years, and those between that leave ``gap`` px for a 4-digit label."""
    kept = ticks[:1]
    for x, p in ticks[1:-1]:
        if x - kept[-1][0] >= gap and ticks[-1][0] - x >= gap:
            kept.append((x, p))
    return kept + ticks[-1:] if len(ticks) > 1 else kept


def waterfall(base: float, items: list[tuple[str, float, str]], final: float, width: int = 660,
              row: int = 17, label_w: int = 320) -> dict:
    """Horizontal waterfall: ``base`` then each ``(label, points, kind)``, ending at ``final``."""
    cum, rows = base, []
    positions = [0.0, base, final]
    for label, p, kind in items:
        rows.append((label, p, kind, cum, cum + p))
        cum += p
        positions.append(cum)
    lo, hi = min(positions), max(positions)
    hi = hi + (hi - lo) * 0.04 or 1.0
    plot_w = width - label_w - 50

    def X(v):
        return label_w + plot_w * (v - lo) / (hi - lo)

    bars = [{"y": 4, "label": None, "kind": "base", "x": X(min(0, base)), "w": max(X(base) - X(min(0, base)), 0.5),
             "value": base, "cls": "total", "tx": X(max(0, base)) + 3}]
    for k, (label, p, kind, a, b) in enumerate(rows, start=1):
        x = X(min(a, b))
        bars.append({"y": 4 + k * row, "label": label, "kind": kind, "x": x, "w": max(abs(X(b) - X(a)), 0.8),
                     "value": p, "cls": "up" if p > 0 else "down", "tx": X(max(a, b)) + 3})
    n = len(rows) + 1
    bars.append({"y": 4 + n * row, "label": None, "kind": "final", "x": X(min(0, final)),
                 "w": max(X(final) - X(min(0, final)), 0.5), "value": final, "cls": "total", "tx": X(max(0, final)) + 3})
    return {"width": width, "height": (n + 1) * row + 8, "row": row, "bars": bars, "zero": X(0) if lo <= 0 else None,
            "label_w": label_w}


def interval_bar(value: float, low: float, high: float, lo: float = 0.0, hi: float = 100.0,
                 width: int = 220, height: int = 22) -> dict | None:
    """A value with its interval on a fixed scale."""
    if any(x is None or not math.isfinite(x) for x in (value, low, high)):
        return None

    def X(v):
        return 6 + (width - 12) * (min(max(v, lo), hi) - lo) / (hi - lo)

    return {"width": width, "height": height, "x_low": round(X(low), 1), "x_high": round(X(high), 1),
            "x": round(X(value), 1), "y": height / 2}


def _e(x) -> str:
    return html_escape(str(x), quote=True)


def svg_bars(c: dict, texts: list[str], title: str) -> Markup:
    """Inline SVG of :func:`bar_chart` (``texts``: the value printed at the end of each bar)."""
    h = c["row"] - 6
    parts = [f'<svg width="{c["width"]}" height="{c["height"]}" role="img" aria-label="{_e(title)}">',
             f'<line class="ax" x1="{c["zero"]:.1f}" x2="{c["zero"]:.1f}" y1="0" y2="{c["height"]}"/>']
    for b, t in zip(c["bars"], texts):
        parts.append(f'<text x="0" y="{b["y"] + 10}">{_e(b["label"])}</text><rect class="{b["cls"]}" '
                     f'x="{b["x"]:.1f}" y="{b["y"]}" width="{b["w"]:.1f}" height="{h}"/>'
                     f'<text x="{c["width"] - 36}" y="{b["y"] + 10}">{_e(t)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def svg_line(c: dict) -> Markup:
    """Inline SVG of :func:`line_chart` (zone line, department line, neighbours' point)."""
    p = [f'<svg width="{c["width"]}" height="{c["height"]}" role="img" aria-label="{_e(c.get("label", ""))}">',
         f'<line class="ax" x1="{c["L"]}" x2="{c["right"]}" y1="{c["bottom"]}" y2="{c["bottom"]}"/>',
         f'<text x="0" y="{c["y_hi_y"] + 3}">{_e(c.get("y_hi_t", ""))}</text>'
         f'<text x="0" y="{c["y_lo_y"] + 3}">{_e(c.get("y_lo_t", ""))}</text>']
    p += [f'<text x="{x:.1f}" y="{c["height"] - 4}" text-anchor="middle">{t}</text>' for x, t in c["ticks"]]
    if len(c["dep"]) > 1:
        p.append(f'<polyline class="dl" points="{c["dep_line"]}"/>')
    p += [f'<circle class="dp" cx="{x}" cy="{y}" r="2.5"/>' for x, y in c["dep"]]
    if len(c["zone"]) > 1:
        p.append(f'<polyline class="zl" points="{c["zone_line"]}"/>')
    p += [f'<circle class="zp" cx="{x}" cy="{y}" r="3"/>' for x, y in c["zone"]]
    if c.get("nbr"):
        p.append(f'<circle class="np" cx="{c["nbr"][0]}" cy="{c["nbr"][1]}" r="3.5"/>')
    p.append("</svg>")
    return Markup("".join(p))


def svg_waterfall(w: dict, T: dict) -> Markup:
    """Inline SVG of :func:`waterfall` (bars carry ``label``, ``kind`` and ``text``)."""
    h = w["row"] - 5
    p = [f'<svg width="{w["width"]}" height="{w["height"]}" role="img" aria-label="{_e(T["waterfall"])}">']
    if w.get("zero") is not None:
        p.append(f'<line class="ax" x1="{w["zero"]:.1f}" x2="{w["zero"]:.1f}" y1="0" y2="{w["height"]}"/>')
    for b in w["bars"]:
        if b["kind"] in ("base", "final"):
            label = f'<text x="0" y="{b["y"] + 10}" font-weight="bold">{_e(T["base" if b["kind"] == "base" else "final"])}</text>'
        else:
            label = f'<text x="0" y="{b["y"] + 10}">{_e(b["label"])} · {_e(T[b["kind"]])}</text>'
        p.append(f'{label}<rect class="{b["cls"]}" x="{b["x"]:.1f}" y="{b["y"]}" width="{b["w"]:.1f}" height="{h}"/>'
                 f'<text x="{b["tx"]:.1f}" y="{b["y"] + 10}">{_e(b["text"])}</text>')
    p.append("</svg>")
    return Markup("".join(p))


def svg_interval(b: dict | None, title: str) -> Markup:
    """Inline SVG of :func:`interval_bar` on the 0-100 score scale."""
    if not b:
        return Markup("")
    return Markup(
        f'<svg width="{b["width"]}" height="{b["height"]}" role="img" aria-label="{_e(title)}">'
        f'<line class="ax" x1="6" x2="{b["width"] - 6}" y1="{b["y"]}" y2="{b["y"]}"/>'
        f'<rect class="up" x="{b["x_low"]}" y="{b["y"] - 4}" width="{max(b["x_high"] - b["x_low"], 1)}" height="8" '
        f'opacity=".35"/><circle class="zp" cx="{b["x"]}" cy="{b["y"]}" r="4"/>'
        f'<text x="2" y="{b["height"]}">0</text><text x="{b["width"] - 18}" y="{b["height"]}">100</text></svg>')


# --------------------------------------------------------------------------- card data
@dataclass
class CardData:
    """Everything the cards read, prepared once for many zones (vectorised)."""

    run: RunOutputs
    series: pd.DataFrame          # zone rows of the key indicators
    dep_means: pd.DataFrame       # department × measure × period
    neighbours: pd.DataFrame      # index zone code, columns indicators
    points: pd.DataFrame          # score points of the zones
    gap_kind: dict[str, str]
    clusters: dict[str, dict]


def prepare_cards(run: RunOutputs, zones: list[str], series_all: pd.DataFrame | None = None) -> CardData:
    """Read and index the data of ``zones``' cards (the panel once for all departments)."""
    pri = run.priorities
    if series_all is None:
        deps = pri.loc[pri["zone_code"].isin(zones), "department"].unique()
        dep_zones = pri.loc[pri["department"].isin(deps), "zone_code"].tolist()
        series_all = read_series(run.out_dir, dep_zones if len(dep_zones) < len(pri) else None)
    dep_means = department_means(series_all, pri)
    series = series_all[series_all["zone_code"].isin(zones)]
    gaps = run.gaps
    gap_kind = dict(zip(gaps["zone_code"], gaps["gap_kind"])) if len(gaps) else {}
    clusters = {}
    if len(run.clusters):
        for r in run.clusters.to_dict("records"):
            clusters[str(r["cluster_id"])] = r
    return CardData(run, series, dep_means, read_neighbours(run.out_dir, zones), read_points(run.out_dir, zones),
                    gap_kind, clusters)


def _group_points(points: pd.DataFrame, lang: str) -> tuple[dict[str, list], dict[str, list[str]]]:
    """Per zone: waterfall items (top levers, context, location, and the rest of each kind), and
    the indicators named on it (for the source table)."""
    if points.empty:
        return {}, {}
    p = points[points["points"].abs() > 1e-9]
    kind = np.where(p["is_location"], "location", np.where(p["is_lever"], "lever", "context"))
    p = p.assign(kind=kind, a=p["points"].abs())
    p = p.sort_values(["zone_code", "kind", "a"], ascending=[True, True, False], kind="stable")
    rank = p.groupby(["zone_code", "kind"], sort=False).cumcount()
    limit = p["kind"].map({"lever": N_LEVERS, "context": N_CONTEXT, "location": N_LOCATION})
    top = p[rank < limit]
    rest = p[rank >= limit].groupby(["zone_code", "kind"], sort=False)["points"].sum().reset_index()
    T = _text(lang)
    labels = {n: indicator_label(n, lang) for n in top["indicator"].unique()}
    order = {"lever": 0, "context": 1, "location": 2}
    rows = pd.concat([
        top.assign(label=top["indicator"].map(labels), o=0)[["zone_code", "kind", "label", "points", "o", "indicator"]],
        rest.assign(label=rest["kind"].map({"lever": T["other_lever"], "context": T["other_context"],
                                            "location": T["other_location"]}), o=1, indicator=""),
    ], ignore_index=True)
    rows = rows.assign(k=rows["kind"].map(order), a=-rows["points"].abs())
    rows = rows.sort_values(["zone_code", "k", "o", "a"], kind="stable")
    items: dict[str, list] = {}
    named: dict[str, list[str]] = {}
    for z, label, pts, k, ind in zip(rows["zone_code"].tolist(), rows["label"].tolist(), rows["points"].tolist(),
                                     rows["kind"].tolist(), rows["indicator"].tolist()):
        if ind:
            lst = named.setdefault(z, [])
            if ind not in lst:
                lst.append(ind)
        items.setdefault(z, []).append((str(label), float(pts), k))
    return items, named


def _series_by_zone(df: pd.DataFrame, key: str) -> dict:
    """{key value: {measure: (periods, values, sources)}} from a long frame, one pass."""
    df = df.sort_values([key, "measure", "period"], kind="stable")
    out: dict = {}
    src = df["source"] if "source" in df else pd.Series("", index=df.index)
    for k, m, p, v, s in zip(df[key].tolist(), df["measure"].tolist(), df["period"].tolist(), df["value"].tolist(),
                             src.tolist()):
        d = out.setdefault(k, {}).setdefault(m, ([], [], []))
        d[0].append(int(p))
        d[1].append(float(v))
        d[2].append(s)
    return out


def _vintage_of(meta: pd.DataFrame) -> dict[str, str]:
    """Indicator → vintage text from ``features_meta.csv`` (periods the features used)."""
    if meta is None or meta.empty or "indicator" not in meta:
        return {}
    g = meta.dropna(subset=["period_to"]).groupby("indicator").agg(a=("period_from", "min"), b=("period_to", "max"))
    return {i: (f"{int(a)}–{int(b)}" if pd.notna(a) and int(a) != int(b) else f"{int(b)}")
            for i, a, b in zip(g.index, g["a"], g["b"])}


def card_contexts(cd: CardData, zones: list[str], lang: str = "fr") -> list[dict]:
    """The template context of each zone's card (pure: everything is in ``cd``)."""
    T = _text(lang)
    run = cd.run
    pri = run.priorities
    P = _prepared(cd, lang)
    n_scored, dep_size, epci_size = P["n_scored"], P["dep_size"], P["epci_size"]
    series, dseries, points, named = P["series"], P["dseries"], P["points"], P["named"]
    pts_total, vint = P["pts_total"], P["vint"]
    rows = P["rows"].reindex([z for z in zones if z in P["codes"]])
    adapters = _adapters()
    reg = _registry()
    # plain dicts: a DataFrame's .at per chart took an eighth of the cards' time
    nbr = cd.neighbours
    nbr = nbr[nbr.index.isin(rows.index)].to_dict("index") if len(nbr) else {}
    domains = run.domains
    lev_col = f"top_levers_{lang}" if f"top_levers_{lang}" in pri else "top_levers"
    measures = [c.removeprefix("pred_") for c in pri.columns
                if c.startswith("pred_") and not c.endswith(("_low", "_high", "_end"))]
    out = []
    for r in rows.to_dict("records"):
        code = r["zone_code"]
        dep = str(r["department"])
        sources: list[dict] = []
        # domain scores
        dom_items = [(domain_label(d.removeprefix("domain_"), lang), _f(r.get(d))) for d in domains]
        # indicators over time
        charts = []
        zs, ds = series.get(code, {}), dseries.get(dep, {})
        for m in KEY_INDICATORS:
            if m not in zs and m not in ds:
                continue
            p1, v1, s1 = zs.get(m, ([], [], []))
            p2, v2, _ = ds.get(m, ([], [], []))
            nb = _f(nbr[code].get(m)) if code in nbr else None
            indexed = m in COUNT_INDICATORS
            if indexed:
                v1 = [v / v1[0] * 100 for v in v1] if v1 and v1[0] else []
                v2 = [v / v2[0] * 100 for v in v2] if v2 and v2[0] else []
                nb = None
            ch = line_chart(p1, v1, p2, v2, nb, run.period)
            if ch is None:
                continue
            unit = "" if indexed else indicator_unit(m)
            last = (p1[-1], v1[-1]) if p1 else None
            ch.update(label=indicator_label(m, lang) + (f" ({T['index100']})" if indexed else ""),
                      last=fmt_value(zs[m][1][-1], indicator_unit(m), lang) if m in zs else "–",
                      last_period=last[0] if last else None,
                      dep_last=(f"{T['index_word']} " if indexed else "") + fmt_value(v2[-1], unit, lang) if v2 else "–",
                      nbr=ch["nbr"], nbr_text=fmt_value(nb, unit, lang) if nb is not None else None,
                      y_hi_t=fmt_value(ch["y_hi"], unit, lang), y_lo_t=fmt_value(ch["y_lo"], unit, lang))
            ch["svg"] = svg_line(ch)
            charts.append(ch)
            for src in dict.fromkeys(s1):
                prod, dset, _ = adapters.get(src, (src, "", ""))
                yrs = [str(p) for p, s in zip(p1, s1) if s == src]
                sources.append({"figure": indicator_label(m, lang), "producer": prod, "dataset": dset,
                                "vintage": ", ".join(yrs)})
        # forecasts
        forecasts = []
        for m in measures:
            v = _f(r.get(f"pred_{m}"))
            if v is None:
                continue
            end = _f(r.get(f"pred_{m}_end"))
            forecasts.append({"label": indicator_label(m, lang), "span": f"{run.period}→{int(end)}" if end else "",
                              "value": _signed(v, lang), "low": _signed_or_dash(r.get(f"pred_{m}_low"), lang),
                              "high": _signed_or_dash(r.get(f"pred_{m}_high"), lang),
                              "unit": "pt" if indicator_unit(m).startswith("%") else
                              ("%" if m in COUNT_INDICATORS else ("€" if lang == "fr" else "EUR")
                               if "EUR" in indicator_unit(m) else "")})
        # waterfall
        wf = None
        score = _f(r.get("priority_score"))
        items = points.get(code)
        if items and score is not None:
            base = score - pts_total.get(code, 0.0)
            wf = waterfall(base, [(_short(lbl, 46), p, k) for lbl, p, k in items], score)
            wf["base_label"], wf["final_label"] = T["base"], T["final"]
            for b in wf["bars"]:
                b["text"] = _num(b["value"], lang, 1) if b["kind"] in ("base", "final") else \
                    (("+" if b["value"] > 0 else "") + _num(b["value"], lang, 2))
            wf["svg"] = svg_waterfall(wf, T)
        progs = [p for p in PROGRAMMES if bool(r.get(p))]
        prog_sources = []
        for p in progs:
            prod, dset, vv = adapters.get(PROGRAMME_SOURCES[p], ("ANCT", p, ""))
            prog_sources.append({"figure": p, "producer": prod, "dataset": dset, "vintage": vv})
        ind_sources = []
        listed = {x["figure"] for x in sources}
        for label_ind in named.get(code, []):
            if label_ind in reg.indicators and indicator_label(label_ind, lang) not in listed:
                ind = reg.indicators[label_ind]
                prod, dset, _ = adapters.get(ind.source, (ind.source, "", ""))
                ind_sources.append({"figure": indicator_label(label_ind, lang), "producer": prod, "dataset": dset,
                                    "vintage": vint.get(label_ind, ", ".join(map(str, ind.vintages)))})
        cl = r.get("cluster_id")
        cl = cl if isinstance(cl, str) and cl and cl != "nan" else None
        cinfo = cd.clusters.get(cl) if cl else None
        gap = cd.gap_kind.get(code)
        hist = r.get("flag_history")
        out.append({
            "code": code, "name": r.get("zone_name"), "department": dep,
            "department_name": run.dep_names.get(dep, ""), "epci": r.get("epci"),
            "epci_name": r.get("epci_name") if isinstance(r.get("epci_name"), str) else "",
            "population": fmt_int(r.get("population"), lang), "period": run.period,
            "score": _num(score, lang) if score is not None else "–",
            "low": _num(r.get("priority_score_low"), lang), "high": _num(r.get("priority_score_high"), lang),
            "score_bar": svg_interval(interval_bar(score, _f(r.get("priority_score_low")),
                                                   _f(r.get("priority_score_high"))), T["interval"])
            if score is not None else "",
            "rank": _int(r.get("priority_rank")), "n": fmt_int(n_scored, lang),
            "rank_best": _int(r.get("priority_rank_best")), "rank_worst": _int(r.get("priority_rank_worst")),
            "rank_dep": _int(r.get("priority_rank_department")), "n_dep": dep_size.get(dep),
            "rank_epci": _int(r.get("priority_rank_epci")), "n_epci": epci_size.get(r.get("epci")),
            "rank_dep_t": _ordinal(_int(r["priority_rank_department"]), lang)
            if _int(r.get("priority_rank_department")) else "–",
            "flag": bool(r.get("priority_flag")), "status": _str(r.get("flag_status")),
            "reason": _str(r.get("flag_reason_fr" if lang == "fr" else "flag_reason")) or _str(r.get("flag_reason")),
            "history": _str(hist),
            "index": _num(r.get("deprivation_index"), lang), "decile": _int(r.get("index_decile")),
            "domains": svg_bars(bar_chart(dom_items), [_num(v, lang, 2) for _, v in dom_items], T["domains"]),
            "forecasts": forecasts, "charts": charts, "waterfall": wf,
            "top_levers": [s.strip() for s in (_str(r.get(lev_col)) or "").split(" ; " if lang == "fr" else "; ")
                           if s.strip()],
            "programmes": progs, "gap": T.get(f"gap_{gap}") if gap else None,
            "diagnostics": _str(r.get(f"diagnostic_reasons_{lang}")),
            "cluster": cl, "cluster_desc": T["cluster_desc"].format(
                n=_int(cinfo.get("n_zones")), pop=fmt_int(cinfo.get("population"), lang),
                deps=cinfo.get("departements", "")) if cinfo else None,
            "scenario": T["scenario_text"].format(code=code),
            "sources": _dedupe(sources + ind_sources + prog_sources),
            "derived_sources": [
                {"figure": T["score"], "producer": "territoria", "dataset": T["src_points"], "vintage": str(run.period)},
                {"figure": T["domains"], "producer": "territoria", "dataset": f"{T['src_index']} — {T['built_from']}",
                 "vintage": str(run.period)},
                {"figure": T["forecasts"], "producer": "territoria", "dataset": T["src_models"],
                 "vintage": ", ".join(f["span"] for f in forecasts)},
            ],
        })
    return out


def _prepared(cd: CardData, lang: str) -> dict:
    """Zone-independent lookups of the cards, computed once per ``CardData`` and language."""
    cache = cd.__dict__.setdefault("_prepared", {})
    if lang not in cache:
        pri = cd.run.priorities
        points, named = _group_points(cd.points, lang)
        cache[lang] = {
            "n_scored": int(pri["priority_score"].notna().sum()),
            "dep_size": pri.groupby("department")["zone_code"].size().to_dict(),
            "epci_size": pri.groupby("epci")["zone_code"].size().to_dict() if "epci" in pri else {},
            "rows": pri.set_index(pri["zone_code"].astype(object)),
            "codes": set(pri["zone_code"].tolist()),
            "series": _series_by_zone(cd.series, "zone_code"),
            "dseries": _series_by_zone(cd.dep_means.assign(source=""), "department"),
            "points": points, "named": named,
            "pts_total": cd.points.groupby("zone_code")["points"].sum().to_dict() if len(cd.points) else {},
            "vint": _vintage_of(cd.run.meta),
        }
    return cache[lang]


def _dedupe(rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        k = (r["figure"], r["producer"], r["dataset"], r["vintage"])
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def _f(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int(x) -> int | None:
    v = _f(x)
    return int(round(v)) if v is not None else None


def _str(x) -> str:
    return x if isinstance(x, str) and x and x != "nan" else ""


def _signed_or_dash(x, lang: str) -> str:
    v = _f(x)
    return "–" if v is None else _signed(v, lang)


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1].rstrip() + "…"


# --------------------------------------------------------------------------- templates
@lru_cache(maxsize=1)
def _env():
    import jinja2

    class DictsFirst(jinja2.Environment):
        """``z.name`` on a dict reads the key first: Jinja tries the attribute first and
        catches its AttributeError, which took 40 % of a card's rendering (the cards' contexts
        are dicts, whose keys never name a dict method)."""

        def getattr(self, obj, attribute):
            if type(obj) is dict and attribute in obj:
                return obj[attribute]
            return super().getattr(obj, attribute)

    env = DictsFirst(loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
                     autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["r1"] = lambda v: f"{v:.1f}"
    return env


def render_card(ctx: dict, lang: str = "fr", links: bool = True) -> str:
    """One zone card as a self-contained HTML page."""
    return _env().get_template("zone_card.html.j2").render(z=ctx, t=_text(lang), links=links)


def zone_card_html(out_dir: Path | str, code: str, lang: str = "fr") -> str:
    """The card of any zone of the run in ``out_dir`` (flagged or not), as HTML."""
    run = load_run(out_dir)
    code = str(code).strip()
    if code not in set(run.priorities["zone_code"]):
        raise DataError(Path(out_dir) / "priorities.csv",
                        f"no zone '{code}' in this run (a commune code of the run's COG, e.g. 59172)")
    cd = prepare_cards(run, [code])
    return render_card(card_contexts(cd, [code], lang)[0], lang, links=False)


def write_zone_card(out_dir: Path | str, code: str, lang: str = "fr", path: Path | str | None = None) -> Path:
    """Write the card of ``code`` (default ``<out_dir>/zones/<code>.html``) and return its path."""
    text = zone_card_html(out_dir, code, lang)
    path = Path(path) if path else Path(out_dir) / "zones" / f"{str(code).strip()}.html"
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_cards(cd: CardData, zones: list[str], folder: Path, lang: str, chunk: int = 500) -> list[Path]:
    """Render and write the cards of ``zones`` (:func:`remove_other_cards` removes those of
    zones no longer listed)."""
    folder.mkdir(parents=True, exist_ok=True)
    env_t = _env().get_template("zone_card.html.j2")
    T = _text(lang)
    written = []
    for i in range(0, len(zones), chunk):
        for ctx in card_contexts(cd, zones[i:i + chunk], lang):
            text = env_t.render(z=ctx, t=T, links=True)
            written.append(write_bytes_atomic(folder / f"{ctx['code']}.html", text.encode("utf-8")))
    return written


def remove_other_cards(folder: Path, cards: list[Path]) -> None:
    """Remove the cards of ``folder`` that are not ``cards`` (zones no longer listed)."""
    keep = {p.name for p in cards}
    for old in folder.glob("*.html"):
        # dot files are other writers' temporaries (write_atomic, write_bytes_atomic), not cards
        if old.name not in keep and not old.name.startswith("."):
            old.unlink(missing_ok=True)


def _write_run_cards(run: RunOutputs, out_dir: Path, lang: str, zones: list[str],
                     series: pd.DataFrame | None = None) -> tuple[list[Path], float]:
    """The cards of ``zones`` of the run ``run`` read from ``out_dir`` (``series``: its
    :func:`read_series`, if the caller has it), and the seconds spent."""
    if not zones:
        return [], 0.0
    t0 = time.perf_counter()
    series = read_series(out_dir) if series is None else series
    cards = write_cards(prepare_cards(run, zones, series), zones, out_dir / "zones", lang)
    return cards, time.perf_counter() - t0


def write_run_cards(out_dir: Path | str, lang: str, zones: list[str],
                    series: pd.DataFrame | None = None) -> tuple[list[Path], float]:
    """The cards of ``zones``, reading the run's outputs (``series`` as in
    :func:`_write_run_cards`); returns the paths and the seconds spent (what
    :func:`run_report`'s card worker runs)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    cards, _ = _write_run_cards(load_run(out_dir), out_dir, lang, zones, series)
    return cards, time.perf_counter() - t0


def panel_series(panel: pd.DataFrame, measures: tuple[str, ...] = KEY_INDICATORS) -> pd.DataFrame:
    """:func:`read_series` of every commune, from the panel in memory rather than from
    ``panel.parquet`` (the same rows, in the same order): the main job takes them before it
    frees the panel, and its card worker then does not scan the file's 6.8 million rows."""
    from territoria.features.panel import panel_codes

    codes = panel_codes(panel)  # the panel's integer codes, already computed by the stages
    parts = [codes.by_measure[m] for m in measures if m in codes.by_measure]
    rows = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    # -1 when the panel has no commune, which no row's code equals
    rows = rows[codes.level[rows] == codes.levels.get_indexer(["commune"])[0]]
    rows = rows[~np.isnan(panel["value"].to_numpy(float)[rows])]
    return panel[SERIES_COLUMNS].iloc[rows].reset_index(drop=True)


#: flagged zones from which a worker process writes most cards while this one writes the rest
CARD_WORKER_FROM = 500
#: the worker's share of the cards: this process has the other outputs to write first
CARD_WORKER_SHARE = 0.75
#: the share of a worker started before the report stage (the main job's): it begins while
#: the prioritise stage writes its models and audits, about 2 s before this process's part
EARLY_CARD_WORKER_SHARE = 0.875


@dataclass
class CardJob:
    """The zone cards of a run's flagged ``zones``: ``worker`` (None for few cards) is already
    writing its share, ``here`` are the zones left to the process that writes the report."""

    zones: list[str]
    worker: SideProcess | None
    here: list[str]
    #: the cards' series (:func:`panel_series`), if the caller had them
    series: pd.DataFrame | None = None

    def close(self) -> None:
        """Stop waiting for the worker (it finishes its cards, each written atomically)."""
        if self.worker is not None:
            self.worker.close()


def start_cards(out_dir: Path | str, lang: str, zones: list[str], run: RunOutputs | None = None,
                share: float = CARD_WORKER_SHARE, series: pd.DataFrame | None = None) -> CardJob:
    """Start writing the cards of ``zones`` (the run's flagged zones, in its order): a process
    writes the worker's share (:class:`SideProcess`: on one core, or if it fails, they are
    written here when its result is asked for), ``share`` of them. No worker for few cards.

    The main job starts it as soon as the prioritise stage has written the outputs the cards
    read (``priorities.csv`` and the tables before it), while that stage writes its models
    and audits: the worker, at background priority, uses the core the stage leaves idle.
    ``run`` is the run's :func:`load_run`, if already read (the fallback reads it otherwise);
    ``series`` its :func:`read_series` (or :func:`panel_series`), if the caller has them.
    """
    out_dir = Path(out_dir)
    zones = list(zones)
    if len(zones) < CARD_WORKER_FROM:
        return CardJob(zones, None, zones, series)
    k = len(zones) - int(len(zones) * share)
    theirs = zones[k:]

    def fallback():
        return (_write_run_cards(run, out_dir, lang, theirs, series) if run is not None
                else write_run_cards(out_dir, lang, theirs, series))

    worker = SideProcess(write_run_cards, out_dir, lang, theirs, series, fallback=fallback)
    return CardJob(zones, worker, zones[:k], series)


# --------------------------------------------------------------------------- map
def simplified_geometries(out_dir: Path, codes: pd.Series, tolerance: float = SIMPLIFY_TOLERANCE) -> np.ndarray:
    """Commune polygons of ``priorities.gpkg`` (WGS84) in the order of ``codes``, simplified."""
    import pyogrio
    import shapely

    path = Path(out_dir) / "priorities.gpkg"
    if not path.exists():
        raise DataError(path, "no priorities.gpkg: the map needs the run's polygons")
    g = pyogrio.read_dataframe(path, layer="priorities", columns=["zone_code"])
    if g.crs is not None and g.crs.to_epsg() != 4326:
        g = g.to_crs("EPSG:4326")
    geoms = pd.Series(np.asarray(g.geometry.array, dtype=object), index=g["zone_code"].astype(str))
    geoms = geoms[~geoms.index.duplicated()].reindex(codes.astype(str)).to_numpy(dtype=object)
    geoms = np.where(pd.isna(geoms), None, geoms)
    ok = geoms != None  # noqa: E711 - numpy object comparison
    out = np.full(len(geoms), None, dtype=object)
    # Douglas-Peucker, then the topology-preserving simplifier for the few polygons it made
    # invalid or empty (10 of 34,875 communes): 0.32 s instead of 0.83 s for all of them
    simple = shapely.simplify(geoms[ok].astype(object), tolerance, preserve_topology=False)
    broken = ~shapely.is_valid(simple) | shapely.is_empty(simple)
    simple[broken] = shapely.simplify(geoms[ok][broken].astype(object), tolerance, preserve_topology=True)
    out[ok] = simple
    return out


def encode_geometries(geoms: np.ndarray, digits: int = COORD_DIGITS) -> dict:
    """Polygons as delta-encoded integers (coordinates × 10^digits), ring closures dropped.

    ``{"c": [dx, dy, ...], "r": ring starts (points), "p": polygon starts (rings),
    "g": geometry starts (polygons), "s": 10^digits}``; the inline script decodes it back into
    GeoJSON MultiPolygons (one per input geometry, empty when missing).
    """
    import shapely

    empty = shapely.from_wkt("MULTIPOLYGON EMPTY")
    geoms = np.array([g if g is not None else empty for g in geoms], dtype=object)
    kinds = shapely.get_type_id(geoms)
    keep = np.isin(kinds, (3, 6))  # Polygon, MultiPolygon
    geoms = np.where(keep, geoms, empty)
    gtype, coords, offsets = shapely.to_ragged_array(geoms)
    if len(offsets) == 3:  # MultiPolygon (or a mix)
        ring_off, poly_off, geom_off = offsets
    else:  # only Polygons: one polygon per geometry
        ring_off, poly_off = offsets
        geom_off = np.arange(len(poly_off))
    q = np.rint(coords[:, :2] * 10 ** digits).astype(np.int64)
    closing = np.zeros(len(q), dtype=bool)
    if len(ring_off) > 1:
        closing[ring_off[1:] - 1] = True
    q = q[~closing]
    ring_off = ring_off - np.arange(len(ring_off))
    d = np.diff(q, axis=0, prepend=np.zeros((1, 2), dtype=np.int64)).ravel()
    return {"c": d, "r": ring_off, "p": poly_off, "g": geom_off, "s": 10 ** digits}


def _json_ints(a: np.ndarray) -> str:
    return "[" + ",".join(map(str, np.asarray(a).tolist())) + "]"


def quantile_classes(values, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantile classes of ``values``: the class of each value (-1 if missing) and the classes'
    upper bounds.

    The bounds are the ``j/k`` quantiles (linear interpolation), repeated bounds merged; a
    value belongs to the first class whose bound it does not exceed. These are mapclassify's
    ``Quantiles`` classes, without importing it (a few seconds, for its numba functions).

    Examples
    --------
    >>> cls, bins = quantile_classes([1.0, 2.0, 3.0, 4.0, np.nan], k=2)
    >>> cls.tolist(), bins.tolist()
    ([0, 0, 1, 1, -1], [2.5, 4.0])
    """
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    ok = np.isfinite(v)
    cls = np.full(len(v), -1, dtype=int)
    if not ok.any():
        return cls, np.zeros(0)
    bins = np.unique(np.percentile(v[ok], 100.0 * np.arange(1, k + 1) / k))
    cls[ok] = np.searchsorted(bins, v[ok], side="left")
    return cls, bins


def _classes(values: pd.Series, k: int = 7) -> tuple[np.ndarray, list[float]]:
    """Quantile classes of ``values`` (:func:`quantile_classes`): class per zone (-1 if
    missing) and upper bounds; none below ``k`` values."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(float)
    if np.isfinite(v).sum() < k:
        return np.full(len(v), -1, dtype=int), []
    cls, bins = quantile_classes(v, k)
    return cls, [float(b) for b in bins]


PALETTE_SCORE = ["#fff5eb", "#fdd0a2", "#fdae6b", "#fd8d3c", "#f16913", "#d94801", "#8c2d04"]
PALETTE_DOMAIN = ["#2166ac", "#67a9cf", "#d1e5f0", "#f7f7f7", "#fddbc7", "#ef8a62", "#b2182b"]
PALETTE_CLUSTER = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
                   "#1f78b4", "#b15928", "#6a3d9a", "#33a02c"]
PROGRAMME_COLOURS = {"QPV2024": "#e7298a", "ZRR": "#1b9e77", "ACV": "#7570b3", "PVD": "#d95f02"}


def map_payload(pri: pd.DataFrame, geoms: np.ndarray, lang: str, dep_names: dict | None = None) -> dict:
    """The single data object of ``map.html``: polygons once, columnar properties, classes."""
    import shapely

    T = _text(lang)
    lev_col = f"top_levers_{lang}" if f"top_levers_{lang}" in pri else "top_levers"
    doms = [c for c in pri.columns if c.startswith("domain_") and c.count("_") == 1]

    def rounded(c, d=1):
        v = pd.to_numeric(pri[c], errors="coerce").round(d)
        return [None if not np.isfinite(x) else x for x in v.to_numpy(float).tolist()]

    def text(c):
        if c not in pri:
            return [""] * len(pri)
        return pri[c].astype("string").fillna("").tolist()

    variables = []
    cls, bins = _classes(pri["priority_score"])
    variables.append({"key": "priority_score", "label": T["score"], "cls": cls.tolist(), "bins": bins,
                      "palette": PALETTE_SCORE})
    for d in doms:
        cls, bins = _classes(pri[d])
        variables.append({"key": d, "label": f"{T['domains'].split()[0]} : {domain_label(d[7:], lang)}"
                          if lang == "fr" else f"Domain: {domain_label(d[7:], lang)}",
                          "cls": cls.tolist(), "bins": bins, "palette": PALETTE_DOMAIN})
    clusters = pri["cluster_id"].astype("string").fillna("") if "cluster_id" in pri else pd.Series("", index=pri.index)
    cl_codes = pd.factorize(clusters.where(clusters != "", None))[0]
    props = {
        "code": pri["zone_code"].astype(str).tolist(), "name": text("zone_name"),
        "dep": pri["department"].astype("string").fillna("").tolist(),
        "rank": [None if pd.isna(x) else int(x) for x in pri["priority_rank"].tolist()],
        "score": rounded("priority_score"), "low": rounded("priority_score_low"),
        "high": rounded("priority_score_high"), "lev": text(lev_col),
        "flag": pri["priority_flag"].astype(bool).astype(int).tolist(),
        "status": text("flag_status"), "cl": clusters.tolist(), "clk": cl_codes.tolist(),
        **{p: pri[p].astype(bool).astype(int).tolist() for p in PROGRAMMES if p in pri},
        **{d: rounded(d, 2) for d in doms},
    }
    b = shapely.bounds(np.array([g if g is not None else shapely.Point() for g in geoms], dtype=object))
    bdf = pd.DataFrame(b, columns=["x0", "y0", "x1", "y1"]).assign(dep=pri["department"].astype(str).to_numpy())
    bdf = bdf.dropna()
    views = []
    metro = bdf[~bdf["dep"].str.startswith("97")]
    if len(metro):
        views.append({"label": T["mainland"], "b": [[metro.y0.min(), metro.x0.min()], [metro.y1.max(), metro.x1.max()]]})
    for dep, name in OVERSEAS.items():
        s = bdf[bdf["dep"] == dep]
        if len(s):
            views.append({"label": (dep_names or {}).get(dep, name),
                          "b": [[s.y0.min(), s.x0.min()], [s.y1.max(), s.x1.max()]]})
    return {"props": props, "vars": variables, "views": views, "programmes": [p for p in PROGRAMMES if p in pri],
            "prog_colours": PROGRAMME_COLOURS, "cluster_palette": PALETTE_CLUSTER,
            "text": {k: T[k] for k in ("score", "interval", "rank", "top_levers", "card_link", "card_cli",
                                       "layer_flags", "layer_clusters", "search", "legend_missing", "flag",
                                       "cluster", "programmes", "st_new", "st_continuing", "st_retained",
                                       "st_exited", "status")}}


def render_map(pri: pd.DataFrame, geoms: np.ndarray, lang: str = "fr", dep_names: dict | None = None) -> str:
    """``map.html`` as a string: folium map, one embedded copy of the polygons, inline script.

    The map is built with folium-offline (folium with Leaflet's scripts and styles inlined):
    it opens on a machine without network; only the background tiles need one.
    """
    import offlinefolium
    from branca.element import Element, MacroElement
    from jinja2 import Template

    T = _text(lang)
    payload = map_payload(pri, geoms, lang, dep_names)
    enc = encode_geometries(geoms)
    geo_json = ('{"c":' + _json_ints(enc["c"]) + ',"r":' + _json_ints(enc["r"]) + ',"p":' + _json_ints(enc["p"])
                + ',"g":' + _json_ints(enc["g"]) + ',"s":' + str(enc["s"]) + "}")
    data_json = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    script_text = _env().get_template("map.js.j2").render()

    m = offlinefolium.Map(location=[46.6, 2.4], zoom_start=6, tiles="OpenStreetMap", prefer_canvas=True,
                   control_scale=True)
    root = m.get_root()
    root.header.add_child(Element(f"<title>territoria — {T['map_title']}</title>"))
    class _Raw(Element):
        """Pre-rendered text (an ``Element`` would compile the 20 MB of data as a Jinja template)."""

        def __init__(self, text: str):
            super().__init__("")
            self._text = text

        def render(self, **kwargs) -> str:
            return self._text

    root.html.add_child(_Raw(
        '<script type="application/json" id="territoria-geo">' + geo_json + "</script>\n"
        '<script type="application/json" id="territoria-data">' + data_json.replace("</", "<\\/") + "</script>"))

    class _Layers(MacroElement):
        _template = Template("{% macro script(this, kwargs) %}(function(map){" + script_text
                             + "})({{ this._parent.get_name() }});{% endmacro %}")

    m.add_child(_Layers())
    return root.render()


# --------------------------------------------------------------------------- report.html
def report_context(run: RunOutputs, lang: str = "fr", top_k: int = 5) -> dict:
    """The planner's summary (pure: from the run's tables)."""
    T = _text(lang)
    pri = run.priorities
    flagged = pri[pri["priority_flag"]]
    n = int(pri["priority_score"].notna().sum())
    deps = []
    gd = pri.groupby("department", sort=False)
    counts = gd.agg(n=("zone_code", "size"), k=("priority_flag", "sum"))
    popf = flagged.groupby("department")["population"].sum()
    top = flagged.sort_values("priority_rank").groupby("department", sort=False).head(top_k)
    tops = {d: list(zip(g["zone_code"], g["zone_name"], g["priority_rank"])) for d, g in top.groupby("department")}
    counts = counts.assign(pop=popf.reindex(counts.index).fillna(0)).sort_values(["k", "pop"], ascending=False)
    for d, r in counts.iterrows():
        if r["k"] == 0:
            continue
        deps.append({"code": d, "name": run.dep_names.get(str(d), ""), "n": fmt_int(r["n"], lang),
                     "k": int(r["k"]), "share": _num(100 * r["k"] / r["n"], lang) + ("\u00a0%" if lang == "fr" else "%"),
                     "pop": fmt_int(r["pop"], lang),
                     "top": [{"code": c, "name": nm, "rank": _int(rk)} for c, nm, rk in tops.get(d, [])]})
    # clusters
    cl = run.clusters
    clusters, cl_note = [], ""
    if len(cl):
        b = {c: cl[c].astype("string").str.lower().isin(["true", "1"]) for c in
             ("crosses_department", "crosses_epci", "crosses_region") if c in cl}
        cross = cl[b["crosses_department"]] if "crosses_department" in b else cl
        cross = cross.sort_values("population", ascending=False)
        cl_note = T["clusters_note"].format(n_dep=int(b.get("crosses_department", pd.Series([])).sum()),
                                            n_epci=int(b.get("crosses_epci", pd.Series([])).sum()),
                                            n_reg=int(b.get("crosses_region", pd.Series([])).sum()))
        lead = flagged.dropna(subset=["cluster_id"]).sort_values("priority_rank").drop_duplicates("cluster_id")
        lead = dict(zip(lead["cluster_id"].astype(str), zip(lead["zone_code"], lead["zone_name"])))
        for r in cross.to_dict("records"):
            clusters.append({"id": r["cluster_id"], "n": _int(r.get("n_zones")), "pop": fmt_int(r.get("population"), lang),
                             "deps": r.get("departements", ""), "n_epcis": _int(r.get("n_epcis")),
                             "regions": r.get("regions", ""), "lead": lead.get(str(r["cluster_id"]))})
    # gaps
    gaps = run.gaps
    gap_groups = []
    if len(gaps):
        g = gaps.copy()
        g["programmes"] = g["programmes"].astype("string").fillna("") if "programmes" in g else ""
        for kind in ("priority_not_covered", "programme_not_deprived"):
            s = g[g["gap_kind"] == kind]
            if "priority_rank" in s:
                s = s.sort_values("priority_rank", na_position="last")
            gap_groups.append({"kind": kind, "label": T.get(f"gap_{kind}", kind), "n": len(s),
                               "rows": [{"code": c, "name": nm, "dep": dp, "progs": pr,
                                         "index": _num(ix, lang), "rank": _int(rk)}
                                        for c, nm, dp, pr, ix, rk in zip(
                                            s["zone_code"], s["zone_name"], s["department"], s["programmes"],
                                            s.get("deprivation_index", pd.Series(np.nan, index=s.index)),
                                            s.get("priority_rank", pd.Series(np.nan, index=s.index)))]})
    gap_counts = {x["kind"]: x["n"] for x in gap_groups}
    # changes
    status = pri["flag_status"].astype("string").fillna("")
    changes = []
    for st in ("new", "continuing", "retained", "exited"):
        s = pri[status == st].sort_values("priority_rank", na_position="last")
        changes.append({"status": st, "label": T[st], "n": len(s),
                        "rows": list(zip(s["zone_code"], s["zone_name"], s["department"],
                                         [_int(x) for x in s["priority_rank"]]))})
    first_run = bool(len(flagged)) and all(
        (h or "").count(":") <= 1 for h in pri["flag_history"].astype("string").fillna("").head(2000)) \
        if "flag_history" in pri else True
    return {
        "period": run.period, "n": fmt_int(n, lang), "k": fmt_int(len(flagged), lang),
        "pop": fmt_int(flagged["population"].sum(), lang),
        "reasons": flagged.get("flag_reason_fr" if lang == "fr" else "flag_reason",
                               flagged.get("flag_reason", pd.Series(dtype=str))).value_counts().head(6).items(),
        "deps": deps, "clusters": clusters, "clusters_note": cl_note, "gaps": gap_groups,
        "gaps_note": T["gaps_note"].format(a=gap_counts.get("priority_not_covered", 0),
                                           b=gap_counts.get("programme_not_deprived", 0)),
        "changes": changes, "first_run": first_run,
        "cards": set(flagged["zone_code"]), "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def render_report(run: RunOutputs, lang: str = "fr") -> str:
    return _env().get_template("report.html.j2").render(r=report_context(run, lang), t=_text(lang))


# --------------------------------------------------------------------------- figures
def figure_priority_map(pri: pd.DataFrame, geoms: np.ndarray, path: Path, lang: str = "fr", k: int = 5) -> Path:
    """Mainland choropleth of the priority score in ``k`` quantile classes, PNG (Lambert-93).

    Drawn as one collection of compound paths (outer rings and holes): a tenth of the time
    of ``GeoDataFrame.plot`` on 35,000 communes.
    """
    import geopandas as gpd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shapely
    from matplotlib.collections import PathCollection
    from matplotlib.patches import Patch

    T = _text(lang)
    metro = ~pri["department"].astype(str).str.startswith("97").to_numpy() & (geoms != None)  # noqa: E711
    score = pd.to_numeric(pri["priority_score"], errors="coerce").to_numpy(float)[metro]
    cls, bins = quantile_classes(score, k)
    lambert = gpd.GeoSeries(list(geoms[metro]), crs="EPSG:4326").to_crs("EPSG:2154").array
    polygons, owner = shapely.get_parts(np.asarray(lambert, dtype=object), return_index=True)
    paths = _polygon_paths(polygons)
    cmap = plt.get_cmap("YlOrRd")
    colours = np.array([cmap(j / max(len(bins) - 1, 1)) for j in range(len(bins))] + [(0.867, 0.867, 0.867, 1.0)])
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.add_collection(PathCollection(paths, facecolors=colours[cls[owner]], linewidths=0))
    ax.autoscale_view()
    ax.set_aspect("equal")
    lows = [float(np.nanmin(score))] + [float(b) for b in bins[:-1]]
    handles = [Patch(color=colours[j], label=f"{lo:.2f} – {hi:.2f}") for j, (lo, hi) in enumerate(zip(lows, bins))]
    if (cls < 0).any():
        handles.append(Patch(color=colours[-1], label=T["legend_missing"]))
    ax.legend(handles=handles, loc="lower left", fontsize=8, title=T["score"] + " (quantiles)")
    ax.set_axis_off()
    ax.set_title(f"{T['map_title']} — {T['mainland']}")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130))
    plt.close(fig)
    return path


def _polygon_paths(polygons: np.ndarray) -> list:
    """Shapely polygons as matplotlib paths, one per polygon: each ring a ``MOVETO``, its
    ``LINETO``s and a ``CLOSEPOLY`` (as ``Path(ring, closed=True)``), outer ring first, then
    the holes. The codes of every ring are set at once, not ring by ring."""
    import shapely
    from matplotlib.path import Path as MPath

    rings, ring_owner = shapely.get_rings(polygons, return_index=True)
    coords, vertex_ring = shapely.get_coordinates(rings, return_index=True)
    codes = np.full(len(coords), MPath.LINETO, dtype=MPath.code_type)
    starts = np.flatnonzero(np.r_[True, vertex_ring[1:] != vertex_ring[:-1]])
    codes[starts] = MPath.MOVETO
    codes[np.r_[starts[1:], len(coords)] - 1] = MPath.CLOSEPOLY
    # vertices of each polygon: its rings are consecutive
    bounds = np.searchsorted(ring_owner[vertex_ring], np.arange(1, len(polygons)))
    return [MPath(v, c) for v, c in zip(np.split(coords, bounds), np.split(codes, bounds))]


def figure_domains(pri: pd.DataFrame, path: Path, lang: str = "fr") -> Path:
    """Distribution of each domain score among priority zones vs the others (box plots), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = _text(lang)
    doms = [c for c in pri.columns if c.startswith("domain_") and c.count("_") == 1]
    flag = pri["priority_flag"].astype(bool).to_numpy()
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(doms)), 4.5))
    data, pos, colours = [], [], []
    for k, d in enumerate(doms):
        v = pd.to_numeric(pri[d], errors="coerce").to_numpy(float)
        for j, m in enumerate((flag, ~flag)):
            x = v[m & np.isfinite(v)]
            data.append(x if len(x) else np.array([np.nan]))
            pos.append(3 * k + j)
            colours.append("#d94801" if j == 0 else "#9ecae1")
    bp = ax.boxplot(data, positions=pos, widths=0.8, patch_artist=True, showfliers=False,
                    medianprops={"color": "black"})
    for patch, c in zip(bp["boxes"], colours):
        patch.set_facecolor(c)
    ax.set_xticks([3 * k + 0.5 for k in range(len(doms))], [domain_label(d[7:], lang) for d in doms], rotation=20)
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_ylabel(T["domains"])
    from matplotlib.patches import Patch

    ax.legend([Patch(color="#d94801"), Patch(color="#9ecae1")],
              [T["n_flagged"], "autres communes" if lang == "fr" else "other communes"], fontsize=8)
    ax.set_title(T["domains_note"], fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130))
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- audit
def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def git_commit() -> str | None:
    """HEAD of the repository holding this code, if it is a git checkout and git is there."""
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = res.stdout.strip()
    return out if res.returncode == 0 and len(out) == 40 else None


def weight_sensitivity(pri: pd.DataFrame, policy: dict, levels=(0.4, 0.5, 0.6, 0.7, 0.8)) -> pd.DataFrame:
    """How the top ``top_share`` list moves when the level/trajectory weights vary.

    The score is recomputed from the table's own terms (``deprivation_index``, ``trajectory_T``,
    ``population_factor``) with the formula of ``conf/priority.yml``; returns, per level weight,
    the overlap (Jaccard) of the top list with the run's, the share of the run's list kept and
    the Spearman correlation of the scores.
    """
    need = {"deprivation_index", "trajectory_T", "population_factor", "priority_score"}
    if not need <= set(pri.columns):
        return pd.DataFrame()
    pol = policy.get("policy", {})
    z_clip = float(pol.get("trajectory", {}).get("z_clip", 3.0))
    share = float(pol.get("flags", {}).get("top_share", 0.1))
    base_level = float(pol.get("weights", {}).get("level", 0.6))
    idx = pd.to_numeric(pri["deprivation_index"], errors="coerce").to_numpy(float)
    T = pd.to_numeric(pri["trajectory_T"], errors="coerce").to_numpy(float)
    pf = pd.to_numeric(pri["population_factor"], errors="coerce").to_numpy(float)
    table = pd.to_numeric(pri["priority_score"], errors="coerce")

    def score(lv: float) -> pd.Series:
        return pd.Series(100 * pf * (lv * idx / 100 + (1 - lv) * (0.5 + T / (2 * z_clip))), index=pri.index)

    base = score(base_level)
    ok = (table.notna() & base.notna()).to_numpy()
    # the recomputation must reproduce the table's score: else the policy file and table disagree
    reproduces = bool(np.allclose(base[ok], table[ok], atol=1e-6))
    k = max(1, int(math.ceil(share * ok.sum())))
    top0 = set(base[ok].nlargest(k).index)
    rows = []
    for lv in sorted(set(levels) | {base_level}):
        s = score(lv)
        top = set(s[ok].nlargest(k).index)
        rows.append({"weight_level": lv, "weight_trajectory": round(1 - lv, 6), "top_share": share, "n_top": k,
                     "jaccard_top": len(top & top0) / len(top | top0), "kept_share": len(top & top0) / k,
                     "spearman": float(s[ok].rank().corr(base[ok].rank())), "is_run": abs(lv - base_level) < 1e-9,
                     "reproduces_table": reproduces})
    return pd.DataFrame(rows)


def weights_table(run: RunOutputs) -> pd.DataFrame:
    """Every weight behind the score: priority components and measures, then the index's."""
    pol = run.policy.get("policy", {})
    rows = [{"component": "priority", "group": "weights", "name": k, "weight": v, "effective_weight": v,
             "rationale": "conf/priority.yml"} for k, v in pol.get("weights", {}).items()]
    tw = pol.get("weights", {}).get("trajectory", np.nan)
    rows += [{"component": "trajectory", "group": "measures", "name": k, "weight": v,
              "effective_weight": v * tw if tw == tw else np.nan, "rationale": "conf/priority.yml"}
             for k, v in pol.get("trajectory", {}).get("measures", {}).items()]
    out = pd.DataFrame(rows)
    if run.weights is not None:
        w = run.weights
        idx = pd.DataFrame({
            "component": "index", "group": w.get("domain"), "name": w.get("indicator"),
            "weight": w.get("indicator_weight"), "effective_weight": w.get("effective_weight"),
            "domain_weight": w.get("domain_weight"), "direction": w.get("direction"),
            "rationale": w.get("indicator_rationale", pd.Series(dtype=str)).fillna(w.get("domain_rationale", "")),
        })
        out = pd.concat([out, idx], ignore_index=True)
    return out


def fairness_tolerances(run: RunOutputs):
    """The run's fairness tolerances (``audit.fairness`` of its policy; defaults otherwise)."""
    from territoria.models.priority import FairnessAudit

    doc = (run.policy.get("policy", {}).get("audit") or {}).get("fairness") or {}
    return FairnessAudit.model_validate(doc)


def fairness_of_run(run: RunOutputs):
    """The fairness audit of the run (:func:`territoria.models.fairness.fairness_audit`) from
    its priorities, the density of ``features.parquet`` and the out-of-fold predictions of
    ``backtest_predictions.parquet`` (the first cross-validation scheme), when present."""
    import pyarrow.parquet as pq

    from territoria.models.fairness import fairness_audit

    tol = fairness_tolerances(run)
    pri = run.priorities
    feats = pd.DataFrame({"zone_code": pri["zone_code"].astype(str), "population": pri["population"]})
    fpath = run.out_dir / "features.parquet"
    if fpath.exists() and "population_density" in pq.read_schema(fpath).names:
        dens = pd.read_parquet(fpath, columns=["zone_code", "population_density"])
        feats = feats.merge(dens.assign(zone_code=dens["zone_code"].astype(str)), on="zone_code", how="left")
    oof = None
    bpath = run.out_dir / "backtest_predictions.parquet"
    if bpath.exists():
        b = pd.read_parquet(bpath)
        cv = b[b["scheme"].astype(str).str.startswith("cv_")] if "scheme" in b else b
        if len(cv) and "lightgbm" in cv:
            oof = cv[cv["scheme"] == cv["scheme"].iloc[0]] if "scheme" in cv else cv
    stab = (run.policy.get("policy", {}).get("audit") or {}).get("stability") or {}
    result = fairness_audit(pri, feats, tol, oof=oof, signs=run.policy.get("signs") or {},
                            assumed_correlation=stab.get("department_correlation"))
    return result, tol


def write_fairness(result, tol, folder: Path) -> dict[str, Path]:
    """``fairness.json``, ``fairness.md`` and the two tables, atomically."""
    md = result.to_markdown(tol)
    paths = {
        "fairness_json": write_json(result.to_dict(), folder / "fairness.json"),
        "fairness_md": write_atomic(folder / "fairness.md", lambda tmp: tmp.write_text(md + "\n", encoding="utf-8")),
        "fairness_flags": write_csv_rounded(result.flags, folder / "fairness_flags.csv"),
    }
    if len(result.errors):
        paths["fairness_errors"] = write_csv_rounded(result.errors, folder / "fairness_errors.csv")
    return paths


def _fairness_section(fairness) -> list[str]:
    L = ["## Fairness by territory group", ""]
    if fairness is None:
        return L + ["Not computed for this run.", ""]
    result, tol = fairness
    L += [f"Urban/rural (density ≥ {tol.urban_density:g} /km²), overseas vs mainland, population size and QPV "
          f"groups compared on out-of-fold error, interval coverage, flag rates against need and p_priority. "
          f"**{len(result.findings)} finding(s)** beyond the tolerances (`audit.fairness` in `conf/priority.yml`); "
          "all of them, and the tables, in [`fairness.md`](fairness.md) (`fairness.json`, `fairness_errors.csv`, "
          "`fairness_flags.csv`).", ""]
    for f in result.findings:
        L.append(f"* **{f['kind']}** — {f['text']}")
    if result.findings:
        L.append("")
    return L


def _stability_section(summary: dict | None) -> list[str]:
    from territoria.models.stability import describe_range

    L = ["## Stability of the list", ""]
    if not summary:
        return L + ["No stability step in this run (`audit.stability.replicates` is 0 or the run predates it).", ""]

    def rng(key: str) -> str:
        return describe_range(summary[key])

    pp = summary.get("p_priority", {})
    L += [f"{summary['replicates']} replicates of the scoring with forecasts redrawn within their intervals, index "
          "indicators moved by their small-number error and domain weights drawn around the configured ones "
          "(details and assumptions in [`stability.md`](stability.md); `stability.json`, `stability_replicates.csv`, "
          "`stability_zones.csv`; each zone's probability of being flagged is `p_priority` in `priorities.csv`).", "",
          f"* Jaccard overlap of the top {summary['top_share']:.0%} with the run's: {rng('jaccard_top')}",
          f"* Jaccard overlap of the flagged list: {rng('jaccard_flagged')}",
          f"* Kendall tau of the scores: {rng('kendall_tau')}",
          f"* Flagged zones with p_priority ≥ 0.9: {pp.get('flagged_share_at_least_0.9', float('nan')):.1%}; "
          f"zones outside the list with p ≥ 0.5: {pp.get('not_flagged_at_least_0.5', 0):,}", ""]
    refits = summary.get("refits")
    if refits:
        how = (f"{refits['refits']} replicates of each trajectory model from the cross-validation's fold models "
               "(delete-a-group jackknife)" if refits.get("method") == "folds" else
               f"each trajectory model refitted {refits['refits']} times on department-block bootstrap samples of "
               "its training communes")
        L += [f"Training sample: {how}; each replicate model's list alone against the run's: Jaccard "
              f"overlap of the top {summary['top_share']:.0%} {describe_range(refits['jaccard_top'])}, Kendall tau "
              f"{refits['kendall_tau']['mean']:.3f} (`stability_refits.csv`). The replicates above draw "
              "their forecasts around these replicate models'.", ""]
    return L


def model_card(run: RunOutputs, sens: pd.DataFrame, lang: str = "fr", *, fairness=None,
               stability: dict | None = None) -> str:
    """``audit/model_card.md`` (in English: the auditor's document, with French labels where useful)."""
    pri = run.priorities
    pol = run.policy.get("policy", {})
    L = []
    L += ["# Model card — territoria priority score", "",
          f"Run folder: `{run.out_dir}` · reference period {run.period} · {int(pri['priority_score'].notna().sum()):,} "
          f"communes scored · {int(pri['priority_flag'].sum()):,} flagged · generated "
          f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} · code commit {git_commit() or 'unknown'}", ""]
    L += ["## Intended use", "",
          "Rank French communes by a priority score that combines current deprivation (composite index, IMD-style "
          "domains) with the forecast trajectory of key measures (unemployment, median income, population) and their "
          "uncertainty, to help planners *discuss* where public action is most needed, and to point at the levers "
          "(indicators a policy can act on) behind each zone's score.", "",
          "Users: territorial planners, analysts and auditors of ANCT-like programmes. Decisions remain human: the "
          "score is an input to deliberation, never an automatic allocation rule.", ""]
    L += ["## Out of scope and limits", "",
          "* Scenario and counterfactual outputs are associations learned from observational data, **not causal "
          "effects**.",
          "* Small communes have noisy statistics: the score is damped below the population threshold "
          f"({pol.get('population', {}).get('full_weight_from', '?')} inhabitants) and the 80 % interval and rank "
          "range (`priority_rank_best/worst`) must be read with the rank.",
          "* Some inputs are old (BPE 2009/2013, census 2018) or partial (third-party census-derived shares for "
          "communes of 5,000+ inhabitants and some departments' IRIS; labelled as such); secret cells are missing, "
          "not zero.",
          "* Official designations (QPV, ZRR, ACV, PVD) are compared with the priorities, never used as model "
          "inputs. Overseas departments are scored with the same models but fewer sources cover them.",
          "* Intervals are split-conformal on department-blocked folds: marginal coverage, not per-zone guarantees.",
          ""]
    L += ["## Score", "", "```", "priority_score = 100 * population_factor * (w_level * deprivation_index / 100",
          "                 + w_trajectory * (0.5 + T / (2 * z_clip)))", "```", "",
          f"Policy used: `{json.dumps(pol, sort_keys=True)}`", ""]
    L += ["## Data", "", "| file | SHA-256 |", "|---|---|"]
    for f, h in sorted((run.data_report.get("files") or {}).items()):
        L.append(f"| `{f}` | `{h}` |")
    if not run.data_report.get("files"):
        L.append("| (no data_report.json in this run) | |")
    L += ["", "Producers, vintages and licences: `data/SOURCES.md` (Licence Ouverte / Etalab 2.0 unless stated).", ""]
    L += ["## Metrics vs baselines", ""]
    m = run.metrics
    if not m or not m.get("metrics"):
        L += ["Not run: this run has no `metrics.json` (backtest skipped). Run `territoria backtest` or "
              "`territoria run` to evaluate the models against the baselines.", ""]
    else:
        keys = ("spearman", "r2", "mae", "precision_at_10", "recall_at_10", "future_top10_precision",
                "coverage_80", "width_80")
        for target, schemes in m["metrics"].items():
            for scheme, models in schemes.items():
                L += [f"### {target} — {scheme}", "", "| model | " + " | ".join(keys) + " |",
                      "|---|" + "---|" * len(keys)]
                for model, vals in models.items():
                    L.append(f"| {model} | " + " | ".join(
                        "" if vals.get(k) is None else f"{vals[k]:.3f}" for k in keys) + " |")
                L.append("")
        if m.get("ratios"):
            L += ["Model Spearman over the best baseline's:", "", "| target | scheme | spearman | best baseline | ratio |",
                  "|---|---|---|---|---|"]
            for r in m["ratios"]:
                sp, ra = r.get("spearman"), r.get("ratio_to_best_baseline", r.get("ratio_to_best_naive"))
                L.append(f"| {r.get('target')} | {r.get('scheme')} | {'' if sp is None else f'{sp:.3f}'} | "
                         f"{r.get('best_baseline') or r.get('best_naive_baseline')} | {'' if ra is None else f'{ra:.2f}'} |")
            L.append("")
    L += ["## Interval coverage by group", ""]
    cov = pd.DataFrame(m.get("coverage", [])) if m else pd.DataFrame()
    if cov.empty:
        L += ["Not available in this run (no `metrics.json` coverage records).", ""]
    else:
        cols = [c for c in ("target", "scheme", "grouping", "group", "level", "n", "coverage", "mean_width") if c in cov]
        L += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in cov[cols].itertuples(index=False):
            L.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
        L.append("")
    L += ["## Weights and sensitivity", "",
          "All weights: `weights.csv` (priority components and trajectory measures from `priority_policy.json`"
          + (", index domains and indicators from `index_weights.csv`" if run.weights is not None else
             "; `index_weights.csv` absent from this run") + ").", ""]
    if not sens.empty:
        ok = bool(sens["reproduces_table"].all())
        L += ["Top list under other level/trajectory weights (`sensitivity.csv`; the score recomputed from the "
              "table's terms " + ("reproduces" if ok else "does NOT reproduce") + " `priority_score` at the run's "
              "weights):", "",
              "| level weight | trajectory weight | Jaccard with the run's top list | share kept | Spearman |",
              "|---|---|---|---|---|"]
        for r in sens.itertuples():
            L.append(f"| {r.weight_level:.2f}{' (run)' if r.is_run else ''} | {r.weight_trajectory:.2f} | "
                     f"{r.jaccard_top:.3f} | {r.kept_share:.3f} | {r.spearman:.3f} |")
        L.append("")
    L += _fairness_section(fairness)
    L += _stability_section(stability)
    L += ["## Lineage", "", "Input and output hashes, package versions and the code commit: `lineage.json`.", ""]
    return "\n".join(L)


def lineage(run: RunOutputs, written: dict[str, Path], digests: FileDigests | None = None) -> dict:
    """Input (data files) and output hashes, package versions, git commit (``digests``: the
    run's :class:`~territoria.digest.FileDigests`, which keep them for its manifest)."""
    out_dir = run.out_dir
    sha256 = digests if digests is not None else file_sha256
    outputs = {}
    for name in RUN_FILES:
        p = out_dir / name
        if p.exists():
            outputs[name] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    report = {}
    for key, p in written.items():
        p = Path(p)
        if p.is_file():
            report[p.relative_to(out_dir).as_posix()] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    zones = out_dir / "zones"
    cards = sorted(zones.glob("*.html")) if zones.exists() else []
    digest = hashlib.sha256()
    for p in cards:
        digest.update(f"{p.name}:{sha256(p)}\n".encode())
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(out_dir), "reference_period": run.period,
        "inputs": {"data_dir": run.data_report.get("data_dir"), "files": run.data_report.get("files", {})},
        "run_outputs": outputs, "report_outputs": report,
        "zone_cards": {"count": len(cards), "sha256_of_manifest": digest.hexdigest(),
                       "manifest": "sha256 of the lines '<file name>:<sha256>\\n' in name order"},
        "packages": package_versions(), "git_commit": git_commit(),
    }


# --------------------------------------------------------------------------- the stage
def run_report(out_dir: Path | str, lang: str = "fr", console=None, timings: dict | None = None,
               digests: FileDigests | None = None, cards: CardJob | None = None) -> dict[str, Path]:
    """Write the planner and auditor outputs of the run in ``out_dir``; returns the written paths.

    ``timings`` (optional dict) receives the seconds spent on each output; ``digests`` keeps
    the lineage's hashes of the outputs for the caller (the main job's manifest). ``cards``
    is the zone cards' job if the caller started it (:func:`start_cards`, same language and
    flagged zones), else the stage starts it.
    """
    from rich.console import Console

    console = console or Console(quiet=True)
    out_dir = Path(out_dir)
    timings = timings if timings is not None else {}
    paths: dict[str, Path] = {}

    try:
        _text(lang)
        t0 = time.perf_counter()
        run = load_run(out_dir)
        pri = run.priorities
        timings["read"] = time.perf_counter() - t0
        # most cards (most of the stage) are written by another process meanwhile
        flagged = pri.loc[pri["priority_flag"], "zone_code"].tolist()
        console.log(f"zone cards of {len(flagged):,} priority zones")
        if cards is None:
            cards = start_cards(out_dir, lang, flagged, run)
        elif cards.zones != flagged:
            raise ValueError(f"the zone cards started for {len(cards.zones):,} zones are not those "
                             f"{out_dir / 'priorities.csv'} flags ({len(flagged):,})")
        return _write_outputs(run, out_dir, lang, console, timings, paths, cards, digests)
    except BaseException:
        if cards is not None:  # the worker finishes its cards (atomically) and exits
            cards.close()
        raise


def _write_outputs(run: RunOutputs, out_dir: Path, lang: str, console, timings: dict, paths: dict,
                   job: CardJob, digests: FileDigests | None) -> dict[str, Path]:
    """:func:`run_report`'s outputs other than the worker's cards (the cards of ``job.here``
    are written by this process), then the lineage of all."""
    pri = run.priorities

    t0 = time.perf_counter()
    console.log("simplifying the commune polygons for the map")
    geoms = simplified_geometries(out_dir, pri["zone_code"])
    timings["geometries"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    console.log(f"map of {len(pri):,} communes")
    paths["map"] = write_atomic(
        out_dir / "map.html",
        lambda tmp: tmp.write_text(render_map(pri, geoms, lang, run.dep_names), encoding="utf-8"),
    )
    timings["map"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    console.log("planner's report")
    text = render_report(run, lang)
    paths["report"] = write_atomic(out_dir / "report.html", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    timings["report"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    console.log("figures")
    paths["priority_map_png"] = figure_priority_map(pri, geoms, out_dir / "figures" / "priority_map.png", lang)
    timings["figure_map"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    paths["domains_png"] = figure_domains(pri, out_dir / "figures" / "domains.png", lang)
    timings["figure_domains"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    console.log("audit: model card, weights, sensitivity, fairness, lineage")
    sens = weight_sensitivity(pri, run.policy)
    paths["weights"] = write_csv(weights_table(run), out_dir / "audit" / "weights.csv")
    if not sens.empty:
        paths["sensitivity"] = write_csv_rounded(sens, out_dir / "audit" / "sensitivity.csv")
    t1 = time.perf_counter()
    fairness = fairness_of_run(run)
    paths.update(write_fairness(*fairness, out_dir / "audit"))
    timings["fairness"] = time.perf_counter() - t1
    stability = _read_json(out_dir / "audit" / "stability.json")
    for name in STABILITY_FILES:
        if (out_dir / "audit" / name).exists():
            paths[name] = out_dir / "audit" / name
    card = model_card(run, sens, lang, fairness=fairness, stability=stability)
    paths["model_card"] = write_atomic(out_dir / "audit" / "model_card.md",
                                       lambda tmp: tmp.write_text(card, encoding="utf-8"))
    timings["audit"] = time.perf_counter() - t0

    cards, timings["cards"] = _write_run_cards(run, out_dir, lang, job.here, job.series)
    t0 = time.perf_counter()
    worker_cards, timings["cards_worker"] = job.worker.result() if job.worker is not None else ([], 0.0)
    timings["cards_wait"] = time.perf_counter() - t0
    cards += worker_cards
    remove_other_cards(out_dir / "zones", cards)
    paths["zones"] = out_dir / "zones"
    timings["n_cards"] = len(cards)
    # the lineage hashes every output, the cards included
    t0 = time.perf_counter()
    paths["lineage"] = write_json(lineage(run, paths, digests), out_dir / "audit" / "lineage.json")
    timings["audit"] += time.perf_counter() - t0
    return paths
