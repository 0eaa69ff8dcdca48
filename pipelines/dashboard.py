"""``territoria dashboard``: a local web app over one finished run, for planners.

The app itself is the streamlit script :mod:`territoria.pipelines.dashboard_app` (the views);
this module holds what it needs that is not a widget, so that it can be tested without a
browser: the launcher (:func:`check_run_dir`, :func:`streamlit_args`), the readers of the run's
outputs, the filters of the ranked table, a zone's detail (levers, time series against its
department), the map figures and the live scenarios on lever indicators.

Security (issue 7):

* the server binds ``127.0.0.1`` unless ``--host`` names another address;
* the run folder is fixed when the server starts (an argument of the app script, resolved
  once) and the app opens only the files of :data:`RUN_FILES` under it: no widget takes a path
  and there is no file uploader; the official data it re-reads for live scenarios are those
  the run recorded in ``run.json`` (the bundle by default), never a path typed in the browser;
* streamlit runs headless, without usage statistics, file watcher or static file serving, and
  shows exception types only (no traceback) in the browser.
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd

from territoria.errors import DataError

LANGS = ("fr", "en")

#: every file the app may open, relative to the run folder (nothing else is ever read there)
RUN_FILES = {
    "priorities": "priorities.csv",
    "geometries": "priorities.gpkg",
    "explanations": "explanations.parquet",
    "points": "score_points.parquet",
    "panel": "panel.parquet",
    "policy": "priority_policy.json",
    "run": "run.json",
    "data_report": "data_report.json",
}

#: indicators always shown over time in a zone's detail (the zone's top levers are added)
KEY_INDICATORS = ("unemployment_rate", "poverty_rate", "median_income", "share_minimum_benefits",
                  "vacancy_rate", "population")
#: counts are compared as an index (first year = 100): a commune's size is not a deprivation
COUNT_INDICATORS = frozenset({"population"})

FLAG_STATUSES = ("new", "continuing", "retained", "exited")

TEXT = {
    "fr": {
        "title": "territoria — priorités territoriales",
        "views": ("Carte nationale", "Classement", "Zone", "Scénario"),
        "view": "Vue",
        "run": "Exécution : période de référence {period}, {n} communes, {flagged} zones prioritaires",
        "score": "Score de priorité",
        "rank": "Rang national",
        "rank_of": "Rang national (sur {n})",
        "interval": "Intervalle 80 %",
        "rank_range": "Rang entre {best} et {worst} selon l'incertitude ; {dep} du département, {epci} de l'EPCI",
        "flag": "Zone prioritaire",
        "flag_yes": "oui", "flag_no": "non",
        "status": {"new": "nouvelle", "continuing": "maintenue", "retained": "retenue par hystérésis",
                   "exited": "sortie", "": "—"},
        "filters": {"department": "Département", "epci": "EPCI", "domain": "Domaine (10 % les plus défavorisés)",
                    "flag": "Statut", "all": "tous", "flagged": "prioritaires", "not_flagged": "non prioritaires"},
        "columns": {"priority_rank": "rang", "zone_name": "commune", "zone_code": "code",
                    "department": "dép.", "epci_name": "EPCI", "population": "population",
                    "priority_score": "score", "interval": "intervalle 80 %", "flag_status": "statut",
                    "top_levers": "principaux leviers"},
        "search": "Rechercher une commune (nom ou code INSEE)",
        "matches": "Communes trouvées",
        "no_match": "Aucune commune ne correspond à « {q} ».",
        "pick_zone": "Choisissez une commune (recherche ci-dessus ou vue Classement).",
        "population": "Population",
        "index": "Indice de privation : {index} (décile {decile} ; 10 = les plus défavorisées)",
        "levers": "Principaux leviers",
        "no_lever": "Aucun levier n'augmente le score de cette zone.",
        "series": "Indicateurs dans le temps (commune et médiane des communes du département)",
        "dep_median": "médiane du département",
        "points": "Ce qui fait le score (points) : leviers, contexte, environnement",
        "kind": {"lever": "levier", "context": "contexte", "location": "environnement"},
        "domains": "Scores par domaine (0 = médiane nationale, positif = plus défavorisé)",
        "programmes": "Programmes couvrant la zone : {p}",
        "no_programme": "aucun",
        "diagnostics": "Diagnostics : {d}",
        "map_variable": "Variable",
        "map_department": "Département",
        "mainland": "France métropolitaine",
        "map_flag": "Zones prioritaires",
        "map_caption": "Classes de quantiles nationales ; sur la carte d'un département, contour bleu : la zone choisie.",
        "scenario_intro": "Modifiez des indicateurs-leviers pour la zone choisie (ou son EPCI, son "
                          "département) : toutes les communes sont recalculées avec les modèles de l'exécution.",
        "scope": "Périmètre du scénario",
        "scopes": {"zone": "la commune", "epci": "son EPCI", "department": "son département"},
        "apply": "Recalculer le classement",
        "other_levers": "Autres leviers",
        "no_change": "Aucun curseur n'a bougé : le classement est celui de l'exécution.",
        "computing": "Scénario en cours : variables reconstruites et nouveau score de toutes les communes…",
        "loading_engine": "Chargement des modèles et des données de l'exécution (une fois par serveur)…",
        "rank_after": "Rang national après scénario",
        "score_after": "Score après scénario",
        "moves": "Rangs modifiés par le scénario",
        "enter_leave": "{enter} zone(s) entrent dans la liste prioritaire, {leave} en sortent.",
        "scenario_columns": {"zone_name": "commune", "zone_code": "code", "priority_rank_before": "rang avant",
                             "priority_rank_after": "rang après", "rank_change": "places gagnées",
                             "priority_score_before": "score avant", "priority_score_after": "score après",
                             "flag_change": "liste"},
        "flag_change": {"leaves the list": "sort de la liste", "enters the list": "entre dans la liste", "": ""},
        "unit_points": "points",
        "unit_pct_change": "% de variation",
    },
    "en": {
        "title": "territoria — territorial priorities",
        "views": ("National map", "Ranking", "Zone", "Scenario"),
        "view": "View",
        "run": "Run: reference period {period}, {n} communes, {flagged} priority zones",
        "score": "Priority score",
        "rank": "National rank",
        "rank_of": "National rank (of {n})",
        "interval": "80 % interval",
        "rank_range": "Rank between {best} and {worst} given the uncertainty; {dep} in its department, {epci} in its EPCI",
        "flag": "Priority zone",
        "flag_yes": "yes", "flag_no": "no",
        "status": {"new": "new", "continuing": "continuing", "retained": "retained by hysteresis",
                   "exited": "exited", "": "—"},
        "filters": {"department": "Department", "epci": "EPCI", "domain": "Domain (worst 10 %)",
                    "flag": "Status", "all": "all", "flagged": "priority zones", "not_flagged": "not flagged"},
        "columns": {"priority_rank": "rank", "zone_name": "commune", "zone_code": "code",
                    "department": "dept", "epci_name": "EPCI", "population": "population",
                    "priority_score": "score", "interval": "80 % interval", "flag_status": "status",
                    "top_levers": "top levers"},
        "search": "Search a commune (name or INSEE code)",
        "matches": "Matching communes",
        "no_match": "No commune matches “{q}”.",
        "pick_zone": "Pick a commune (search above or the Ranking view).",
        "population": "Population",
        "index": "Deprivation index: {index} (decile {decile}; 10 = most deprived)",
        "levers": "Top levers",
        "no_lever": "No lever raises this zone's score.",
        "series": "Indicators over time (commune and median of its department's communes)",
        "dep_median": "department median",
        "points": "What makes the score (points): levers, context, surroundings",
        "kind": {"lever": "lever", "context": "context", "location": "surroundings"},
        "domains": "Domain scores (0 = national median, positive = more deprived)",
        "programmes": "Programmes covering the zone: {p}",
        "no_programme": "none",
        "diagnostics": "Diagnostics: {d}",
        "map_variable": "Variable",
        "map_department": "Department",
        "mainland": "Mainland France",
        "map_flag": "Priority zones",
        "map_caption": "National quantile classes; on a department's map, blue outline: the selected zone.",
        "scenario_intro": "Change lever indicators for the selected zone (or its EPCI, its department): "
                          "every commune is re-scored with the run's models.",
        "scope": "Scenario perimeter",
        "scopes": {"zone": "the commune", "epci": "its EPCI", "department": "its department"},
        "apply": "Re-rank",
        "other_levers": "Other levers",
        "no_change": "No slider moved: the ranking is the run's.",
        "computing": "Scenario running: features rebuilt and every commune re-scored…",
        "loading_engine": "Loading the run's models and data (once per server)…",
        "rank_after": "National rank after the scenario",
        "score_after": "Score after the scenario",
        "moves": "Ranks moved by the scenario",
        "enter_leave": "{enter} zone(s) enter the priority list, {leave} leave it.",
        "scenario_columns": {"zone_name": "commune", "zone_code": "code", "priority_rank_before": "rank before",
                             "priority_rank_after": "rank after", "rank_change": "places gained",
                             "priority_score_before": "score before", "priority_score_after": "score after",
                             "flag_change": "list"},
        "flag_change": {"leaves the list": "leaves the list", "enters the list": "enters the list", "": ""},
        "unit_points": "points",
        "unit_pct_change": "% change",
    },
}


def text(lang: str) -> dict:
    """The interface texts in ``lang`` (fr or en)."""
    if lang not in TEXT:
        raise DataError("--lang", f"unknown language '{lang}' (fr or en)")
    return TEXT[lang]


# --------------------------------------------------------------------------- launcher
def run_file(run_dir: Path, key: str) -> Path:
    """Path of one of the run's outputs: the only paths the app opens."""
    return Path(run_dir) / RUN_FILES[key]


def check_run_dir(out: Path | str) -> Path:
    """The run folder, resolved, once it is known to hold a finished run's priorities."""
    run_dir = Path(out).expanduser().resolve()
    if not run_dir.is_dir():
        raise DataError(run_dir, "no such run folder: run `territoria run --out DIR` first")
    pri = run_file(run_dir, "priorities")
    if not pri.is_file():
        raise DataError(pri, "missing: the dashboard shows a finished run; run `territoria run --out DIR` first")
    return run_dir


_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def check_host(host: str) -> bool:
    """Whether ``host`` (an IP address or a host name) is a loopback address.

    Raises a :class:`DataError` when it is neither an address nor a plausible host name.
    """
    host = host.strip()
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise DataError("--host", f"'{host}' is neither an IP address nor a host name")
    return host == "localhost"


def app_script() -> Path:
    """The streamlit script, inside the installed package (found without importing it)."""
    spec = find_spec("territoria.pipelines.dashboard_app")
    if spec is None or spec.origin is None:
        raise DataError("territoria.pipelines.dashboard_app", "the dashboard app is not installed with the package")
    return Path(spec.origin)


def streamlit_args(run_dir: Path, host: str = "127.0.0.1", port: int = 8501, lang: str = "fr") -> list[str]:
    """Arguments of ``streamlit`` that serve the app on ``host:port`` for ``run_dir``.

    Command-line flags take precedence over any ``.streamlit/config.toml`` or ``STREAMLIT_*``
    variable, so the address, telemetry and error settings below are the ones in force.
    """
    text(lang)
    return [
        "run", str(app_script()),
        "--server.address", host,
        "--server.port", str(int(port)),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--server.enableStaticServing", "false",
        "--server.enableXsrfProtection", "true",
        "--global.developmentMode", "false",
        "--client.toolbarMode", "viewer",
        "--client.showErrorDetails", "type",
        "--theme.base", "light",
        # everything after `--` goes to the app script (sys.argv), not to streamlit
        "--", "--out", str(run_dir), "--lang", lang,
    ]


@dataclass(frozen=True)
class AppConfig:
    """What the app serves, fixed at launch."""

    run_dir: Path
    lang: str


def parse_app_args(argv: list[str]) -> AppConfig:
    """The app script's arguments (``--out DIR --lang fr|en``), checked."""
    import argparse

    parser = argparse.ArgumentParser(prog="territoria-dashboard", add_help=False)
    parser.add_argument("--out", required=True)
    parser.add_argument("--lang", default="fr")
    args, _ = parser.parse_known_args(argv)
    text(args.lang)
    return AppConfig(check_run_dir(args.out), args.lang)


# --------------------------------------------------------------------------- the run's outputs
def load_priorities(run_dir: Path) -> pd.DataFrame:
    """``priorities.csv`` with typed flags and texts (one row per commune, in rank order)."""
    from territoria.pipelines.explain_zone import read_priorities

    pri = read_priorities(run_dir)
    pri["priority_flag"] = pri["priority_flag"].astype("string").str.lower().isin(["true", "1"]).to_numpy()
    for c in ("zone_name", "epci_name", "flag_status", "vulnerable_domains", "programmes",
              "top_levers", "top_levers_fr", "top_levers_en", "diagnostic_reasons_fr", "diagnostic_reasons_en"):
        if c in pri:
            pri[c] = pri[c].fillna("").astype(str)
    pri["department"] = pri["department"].astype(str)
    return pri


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def domains(pri: pd.DataFrame) -> list[str]:
    """Domain names of the index (``domain_<name>`` columns)."""
    return [c.removeprefix("domain_") for c in pri.columns
            if c.startswith("domain_") and c.count("_") == 1 and pd.api.types.is_numeric_dtype(pri[c])]


def domain_label(name: str, lang: str) -> str:
    from territoria.pipelines.explain_zone import _DOMAINS

    return _DOMAINS[lang].get(name, name) if lang in _DOMAINS else name


def fmt_num(x, lang: str, digits: int = 1) -> str:
    """A number in French (narrow no-break space, decimal comma) or English format."""
    if x is None or pd.isna(x):
        return "–"
    s = f"{x:,.{digits}f}"
    return s.replace(",", "\u202f").replace(".", ",") if lang == "fr" else s


def lever_column(pri: pd.DataFrame, lang: str) -> str:
    return f"top_levers_{lang}" if f"top_levers_{lang}" in pri else "top_levers"


def lever_texts(row: pd.Series, lang: str) -> list[str]:
    """A zone's top levers, one sentence each, as written in the run's outputs."""
    value = row.get(f"top_levers_{lang}", row.get("top_levers", ""))
    if not isinstance(value, str) or not value.strip():
        return []
    # models.levers.top_levers joins French sentences with " ; " and English ones with "; "
    sep = " ; " if lang == "fr" else "; "
    return [s.strip() for s in value.split(sep) if s.strip()]


# --------------------------------------------------------------------------- ranked table
def _fold(s: str) -> str:
    """Lower case without accents, hyphens as spaces (for searching names)."""
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()
    return re.sub(r"[-'’\s]+", " ", s.lower()).strip()


def search_zones(pri: pd.DataFrame, query: str, limit: int = 20) -> pd.DataFrame:
    """Communes whose code or name matches ``query``: exact code first, then names starting
    with it, then names containing it (each in rank order)."""
    q = query.strip()
    if not q:
        return pri.iloc[:0]
    code = pri["zone_code"]
    exact = code == q
    if exact.any():
        return pri[exact]
    f = _fold(q)
    names = pri["zone_name"].map(_fold)
    starts = names.str.startswith(f) | code.str.startswith(q)
    contains = names.str.contains(f, regex=False) & ~starts
    return pd.concat([pri[starts], pri[contains]]).head(limit)


def filter_ranking(
    pri: pd.DataFrame,
    department: str | None = None,
    epci: str | None = None,
    domain: str | None = None,
    flag: str | None = None,
) -> pd.DataFrame:
    """The ranked table restricted to a department, an EPCI, the worst decile of a domain
    (``vulnerable_domains`` of the diagnostics) and a flag filter: ``flagged``,
    ``not_flagged`` or a status (new, continuing, retained, exited)."""
    keep = pd.Series(True, index=pri.index)
    if department:
        keep &= pri["department"] == department
    if epci:
        keep &= pri["epci"] == epci
    if domain:
        if "vulnerable_domains" in pri:
            listed = pri["vulnerable_domains"].str.split(", ")
            keep &= listed.map(lambda xs: domain in xs)
        else:  # older runs: the worst national decile of the domain score
            s = pri[f"domain_{domain}"]
            keep &= s >= s.quantile(0.9)
    if flag == "flagged":
        keep &= pri["priority_flag"]
    elif flag == "not_flagged":
        keep &= ~pri["priority_flag"]
    elif flag:
        if flag not in FLAG_STATUSES:
            raise DataError("flag", f"unknown flag filter '{flag}'")
        keep &= pri["flag_status"] == flag
    return pri[keep]


def ranking_view(df: pd.DataFrame, lang: str, domain: str | None = None) -> pd.DataFrame:
    """The ranked table as shown: translated headers, interval as text, status in words."""
    T = text(lang)
    C = T["columns"]
    out = pd.DataFrame({
        C["priority_rank"]: df["priority_rank"].astype("Int64"),
        C["zone_name"]: df["zone_name"],
        C["zone_code"]: df["zone_code"],
        C["department"]: df["department"],
        C["epci_name"]: df.get("epci_name", df["epci"]),
        C["population"]: df["population"].round().astype("Int64"),
        C["priority_score"]: df["priority_score"].round(1),
        C["interval"]: [f"{fmt_num(lo, lang)} – {fmt_num(hi, lang)}"
                        for lo, hi in zip(df["priority_score_low"], df["priority_score_high"])],
        C["flag_status"]: df["flag_status"].map(T["status"]).fillna(df["flag_status"]),
    })
    if domain:
        out[domain_label(domain, lang)] = df[f"domain_{domain}"].round(2)
    out[C["top_levers"]] = df[lever_column(df, lang)]
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- a zone
def zone_row(pri: pd.DataFrame, code: str) -> pd.Series:
    row = pri[pri["zone_code"] == code.strip()]
    if row.empty:
        raise DataError(RUN_FILES["priorities"], f"no zone '{code}' in this run")
    return row.iloc[0]


def series_measures(registry) -> tuple[str, ...]:
    """Measures the app reads from the panel: the key indicators and every lever a scenario
    can move (those stored in the panel, not derived by the feature stage)."""
    levers = [i.name for i in registry.indicators.values() if i.lever and i.definition.derived is None]
    return tuple(dict.fromkeys([*KEY_INDICATORS, *levers]))


def load_series(run_dir: Path, measures: tuple[str, ...]) -> pd.DataFrame:
    """Commune rows of ``panel.parquet`` for ``measures`` (read once, then sliced per zone)."""
    path = run_file(run_dir, "panel")
    cols = ["zone_code", "period", "measure", "value"]
    if not path.exists():
        return pd.DataFrame({"zone_code": pd.Series(dtype=str), "period": pd.Series(dtype="int64"),
                             "measure": pd.Series(dtype=str), "value": pd.Series(dtype=float)})
    df = pd.read_parquet(path, columns=cols, filters=[("level", "==", "commune"), ("measure", "in", list(measures))])
    df = df[df["value"].notna()]
    df["measure"] = df["measure"].astype("category")
    return df.reset_index(drop=True)


def zone_series(series: pd.DataFrame, pri: pd.DataFrame, code: str, measures: list[str],
                lang: str) -> pd.DataFrame:
    """A zone's indicators over time and the median of its department's communes.

    Long format ``measure, label, period, who, value``; counts (population) are indexed on
    their first year (= 100) for the zone and for each commune before the median is taken.
    """
    from territoria.pipelines.report import indicator_label

    T = text(lang)
    row = zone_row(pri, code)
    dep_codes = pri.loc[pri["department"] == row["department"], "zone_code"]
    s = series[series["measure"].isin(measures) & series["zone_code"].isin(dep_codes)]
    s = s.assign(measure=s["measure"].astype(str))
    frames = []
    for m, g in s.groupby("measure", sort=False):
        wide = g.pivot_table(index="zone_code", columns="period", values="value", aggfunc="first")
        if m in COUNT_INDICATORS and wide.shape[1]:
            wide = wide.div(wide.iloc[:, 0].where(lambda v: v > 0), axis=0) * 100
        median = wide.median(axis=0, skipna=True)
        label = indicator_label(m, lang) + (" (100 = " + str(wide.columns[0]) + ")" if m in COUNT_INDICATORS else "")
        frames.append(pd.DataFrame({"measure": m, "label": label, "period": median.index.astype(int),
                                    "who": T["dep_median"], "value": median.to_numpy()}))
        if row["zone_code"] in wide.index:
            own = wide.loc[row["zone_code"]].dropna()
            frames.append(pd.DataFrame({"measure": m, "label": label, "period": own.index.astype(int),
                                        "who": f"{row['zone_name']} ({row['zone_code']})", "value": own.to_numpy()}))
    if not frames:
        return pd.DataFrame(columns=["measure", "label", "period", "who", "value"])
    out = pd.concat(frames, ignore_index=True)
    order = {m: k for k, m in enumerate(measures)}
    return out.sort_values(["measure", "who", "period"], key=lambda c: c.map(order) if c.name == "measure" else c,
                           kind="stable").reset_index(drop=True)


def zone_points(run_dir: Path, code: str, lang: str, top: int = 10) -> pd.DataFrame:
    """The zone's score in points by indicator (``score_points.parquet``), the largest first,
    each marked lever, context or surroundings."""
    from territoria.pipelines.report import indicator_label

    path = run_file(run_dir, "points")
    if not path.exists():
        return pd.DataFrame(columns=["indicator", "label", "kind", "points"])
    p = pd.read_parquet(path, filters=[("zone_code", "==", code)])
    if p.empty:
        return pd.DataFrame(columns=["indicator", "label", "kind", "points"])
    K = text(lang)["kind"]
    kind = np.where(p["is_location"], K["location"], np.where(p["is_lever"], K["lever"], K["context"]))
    g = p.assign(kind=kind).groupby(["indicator", "kind"], as_index=False)["points"].sum()
    g = g.reindex(g["points"].abs().sort_values(ascending=False).index).head(top)
    g["label"] = [indicator_label(i, lang) + (f" ({k})" if k == K["location"] else "")
                  for i, k in zip(g["indicator"], g["kind"])]
    return g[["indicator", "label", "kind", "points"]].reset_index(drop=True)


def zone_lever_indicators(run_dir: Path, code: str) -> list[str]:
    """The zone's own lever indicators that raise its score, largest first (the order of its
    top levers in the outputs)."""
    path = run_file(run_dir, "points")
    if not path.exists():
        return []
    p = pd.read_parquet(path, filters=[("zone_code", "==", code)])
    p = p[p["is_lever"] & (p["points"] > 0)]
    g = p.groupby("indicator")["points"].sum().sort_values(ascending=False)
    return list(g.index)


# --------------------------------------------------------------------------- maps
def load_geometries(run_dir: Path, tolerance: float = 0.002):
    """Commune polygons of ``priorities.gpkg`` (simplified, ~200 m), mainland in Lambert-93
    and overseas departments in WGS84, as ``{"metro": GeoDataFrame, "drom": GeoDataFrame}``."""
    import pyogrio
    import shapely

    path = run_file(run_dir, "geometries")
    if not path.exists():
        raise DataError(path, "missing: the map needs the run's polygons (run `territoria run --out DIR`)")
    g = pyogrio.read_dataframe(path, layer="priorities", columns=["zone_code", "department"])
    if g.crs is not None and g.crs.to_epsg() != 4326:
        g = g.to_crs("EPSG:4326")
    g = g[g.geometry.notna() & ~g.geometry.is_empty].drop_duplicates("zone_code")
    g["zone_code"] = g["zone_code"].astype(str)
    g["department"] = g["department"].astype(str)
    g = g.set_geometry(shapely.simplify(g.geometry.array, tolerance, preserve_topology=True))
    overseas = g["department"].str.startswith("97")
    return {"metro": g[~overseas].to_crs("EPSG:2154").reset_index(drop=True),
            "drom": g[overseas].reset_index(drop=True)}


def map_variables(pri: pd.DataFrame, lang: str) -> dict[str, str]:
    """Column → label of what the map can show."""
    T = text(lang)
    out = {"priority_score": T["score"], "priority_flag": T["map_flag"]}
    for d in domains(pri):
        out[f"domain_{d}"] = ("Domaine : " if lang == "fr" else "Domain: ") + domain_label(d, lang)
    return out


def render_map(geoms: dict, pri: pd.DataFrame, column: str, lang: str, department: str | None = None,
               highlight: str | None = None, width_in: float = 8.0) -> bytes:
    """A choropleth of ``column`` as PNG bytes (static: no tiles, no script, works offline).

    Quantile classes are national (mapclassify), so a department's map reads on the same
    scale as the country's; ``highlight`` outlines one zone in blue (on a department's map:
    at the national scale a commune is a few pixels).
    """
    import matplotlib

    matplotlib.use("Agg")
    import mapclassify
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    T = text(lang)
    if department:
        part = geoms["drom"] if department.startswith("97") else geoms["metro"]
        g = part[part["department"] == department]
        if g.empty:
            raise DataError("department", f"no polygons for department '{department}' in this run")
    else:
        g = geoms["metro"]
    values = pri.set_index("zone_code")[column].reindex(g["zone_code"])
    fig, ax = plt.subplots(figsize=(width_in, width_in))
    handles = []
    if column == "priority_flag":
        status = pri.set_index("zone_code")["flag_status"].reindex(g["zone_code"]).fillna("")
        colours = {"new": "#d94801", "continuing": "#8c2d04", "retained": "#fd8d3c", "exited": "#9ecae1", "": "#f0f0f0"}
        g.plot(color=status.map(colours).fillna("#f0f0f0").to_numpy(), linewidth=0, ax=ax)
        handles = [Patch(color=colours[k], label=T["status"][k]) for k in ("new", "continuing", "retained", "exited")]
    else:
        ref = pd.to_numeric(pri[column], errors="coerce").dropna().to_numpy(float)
        bins = mapclassify.Quantiles(ref, k=7).bins
        v = pd.to_numeric(values, errors="coerce").to_numpy(float)
        cls = np.where(np.isfinite(v), np.searchsorted(bins, v, side="left").clip(0, len(bins) - 1), -1)
        palette = (["#fff5eb", "#fdd0a2", "#fdae6b", "#fd8d3c", "#f16913", "#d94801", "#8c2d04"]
                   if column == "priority_score" else
                   ["#2166ac", "#67a9cf", "#d1e5f0", "#f7f7f7", "#fddbc7", "#ef8a62", "#b2182b"])
        colour = np.where(cls >= 0, np.array(palette, dtype=object)[cls.clip(0)], "#dddddd")
        g.plot(color=list(colour), linewidth=0, ax=ax)
        lows = [ref.min(), *bins[:-1]]
        handles = [Patch(color=palette[k], label=f"{fmt_num(lo, lang)} – {fmt_num(hi, lang)}")
                   for k, (lo, hi) in enumerate(zip(lows, bins))]
    if department:
        g.boundary.plot(ax=ax, color="#ffffff", linewidth=0.3)
    if highlight is not None:
        h = g[g["zone_code"] == highlight]
        if not h.empty:
            h.boundary.plot(ax=ax, color="#1f4fd1", linewidth=2.0 if department else 1.2)
    ax.legend(handles=handles, loc="lower left", fontsize=7, frameon=True,
              title=map_variables(pri, lang).get(column, column), title_fontsize=8)
    ax.set_axis_off()
    ax.set_aspect("equal")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------- live scenarios
@dataclass(frozen=True)
class LeverSlider:
    """A slider on one lever indicator: ``add`` in the indicator's unit (percentage points,
    facilities) or ``multiply`` given as a percentage change."""

    indicator: str
    label: str
    unit: str
    op: str  # "add" or "multiply"
    low: float
    high: float
    step: float

    def change(self, value: float) -> dict | None:
        """The scenario change of a slider position (None at 0: nothing moves)."""
        if value == 0:
            return None
        if self.op == "add":
            return {"indicator": self.indicator, "add": float(value)}
        return {"indicator": self.indicator, "multiply": 1.0 + float(value) / 100.0}


def lever_sliders(registry, available: set[str], lang: str) -> list[LeverSlider]:
    """A slider per lever indicator that a scenario can move (in the panel, not derived).

    Rates move by up to 20 percentage points either way; counts of facilities or
    practitioners by whole units (-3 to +5); other quantities (densities, premises) by a
    percentage change (-50 % to +100 %).
    """
    T = text(lang)
    out = []
    for ind in registry.indicators.values():
        if not ind.lever or ind.definition.derived is not None or ind.name not in available:
            continue
        label = ind.label_fr if lang == "fr" else ind.label_en
        if ind.unit.startswith("%"):
            out.append(LeverSlider(ind.name, f"{label} ({T['unit_points']})", ind.unit, "add", -20.0, 20.0, 0.5))
        elif ind.unit in ("facilities", "practitioners"):
            out.append(LeverSlider(ind.name, f"{label} (+/-)", ind.unit, "add", -3.0, 5.0, 1.0))
        else:
            out.append(LeverSlider(ind.name, f"{label} ({T['unit_pct_change']})", ind.unit, "multiply", -50.0, 100.0, 5.0))
    return out


def make_scenario(positions: dict[str, float], sliders: list[LeverSlider], scope: str, row: pd.Series,
                  registry=None, identity: pd.DataFrame | None = None):
    """The :class:`~territoria.models.scenarios.Scenario` of the sliders' positions for the
    zone of ``row`` (``scope``: zone, epci or department), or None when nothing moves."""
    from territoria.models.scenarios import Scenario

    by_name = {s.indicator: s for s in sliders}
    changes = [c for name, v in positions.items() if name in by_name and (c := by_name[name].change(v))]
    if not changes:
        return None
    zones = {"zone": {"codes": [str(row["zone_code"])]}, "epci": {"epcis": [str(row["epci"])]},
             "department": {"departements": [str(row["department"])]}}
    if scope not in zones:
        raise DataError("scope", f"unknown scenario perimeter '{scope}' (zone, epci or department)")
    sc = Scenario.model_validate({"name": "dashboard", "description": f"dashboard scenario on {row['zone_code']}",
                                  "zones": zones[scope], "changes": changes})
    if registry is not None:  # the same rules as scenario files: levers only
        for ch in sc.changes:
            if not registry.indicator(ch.indicator).lever:
                raise DataError("scenario", f"'{ch.indicator}' is context, not a lever")
    return sc


def load_run_engine(run_dir: Path, console=None):
    """The run's :class:`~territoria.pipelines.prioritise.PriorityEngine` and its baseline.

    The feature build is redone from the official data the run recorded (``run.json``:
    ``data_dir``, ``as_of`` and the parameters file's content), as ``territoria scenario``
    does, reading the run's parsed sources (``.cache``, read only) while they match the files;
    the models and the score norms are the run's own (``models/``, ``priority_policy.json``).
    """
    import yaml

    from territoria.pipelines.build_features import run_build_features
    from territoria.pipelines.prioritise import load_engine, run_period
    from territoria.settings import load_parameters

    period = run_period(run_dir)
    record = read_json(run_file(run_dir, "run"))
    data = record.get("data_dir")
    data_dir = Path(data) if data and data != "bundled" else None
    params_doc = (record.get("configuration") or {}).get("parameters.yml")
    with tempfile.TemporaryDirectory(prefix="territoria-dashboard-") as tmp:
        conf = None
        if params_doc:  # the run's parameters as recorded, not the current conf/ files
            conf = Path(tmp) / "parameters.yml"
            conf.write_text(yaml.safe_dump(params_doc, sort_keys=False), encoding="utf-8")
        default_t = load_parameters(conf).reference_period
        fb = run_build_features(data_dir=data_dir, out_dir=None, conf=conf, console=console,
                                as_of=period if period != default_t else None,
                                source_cache=Path(run_dir) / ".cache")
    engine = load_engine(fb, run_dir)
    return engine, engine.baseline()


def rerank(engine, baseline, scenario) -> pd.DataFrame:
    """Every zone re-scored with ``scenario``: ranks and scores before and after for the
    scenario's zones and any zone whose flag changes (:func:`~territoria.models.scenarios.compare`),
    plus every zone whose national rank moved."""
    from territoria.models.scenarios import compare

    after, zones = engine.scenario(scenario)
    table = compare(baseline.table, after.table, zones)
    b, a = baseline.table["priority_rank"], after.table["priority_rank"]
    moved = b.index[(b != a).to_numpy() & a.notna().to_numpy()]
    extra = compare(baseline.table, after.table, moved)
    extra = extra[~extra["zone_code"].isin(table["zone_code"])].assign(in_scenario=False)
    return pd.concat([table, extra], ignore_index=True)


def scenario_view(table: pd.DataFrame, lang: str, limit: int = 20) -> pd.DataFrame:
    """The zones whose rank moved most, for display (translated headers)."""
    T = text(lang)
    C = T["scenario_columns"]
    t = table.copy()
    t = t[t["rank_change"].fillna(0) != 0]
    t = t.reindex(t["rank_change"].abs().sort_values(ascending=False, kind="stable").index).head(limit)
    out = pd.DataFrame({
        C["zone_name"]: t["zone_name"], C["zone_code"]: t["zone_code"],
        C["priority_rank_before"]: t["priority_rank_before"].astype("Int64"),
        C["priority_rank_after"]: t["priority_rank_after"].astype("Int64"),
        C["rank_change"]: t["rank_change"].astype("Int64"),
        C["priority_score_before"]: t["priority_score_before"].map(lambda x: fmt_num(x, lang)),
        C["priority_score_after"]: t["priority_score_after"].map(lambda x: fmt_num(x, lang)),
        C["flag_change"]: t["flag_change"].map(T["flag_change"]).fillna(""),
    })
    return out.reset_index(drop=True)
