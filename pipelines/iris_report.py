"""What planners see at IRIS level: ``iris/map.html`` and the IRIS cards ``iris/zones/<code>.html``.

The bundle carries no IRIS contours, so by default the map draws the communes divided into
IRIS: each is coloured by its most urgent IRIS, and its tooltip names that IRIS, its rank and
how many of the commune's IRIS are flagged. With the IGN CONTOURS-IRIS file
(``territoria run --level iris --iris-contours FILE``), read by :func:`read_iris_contours`,
every IRIS is drawn. Both maps use the commune map's template
(:func:`~territoria.pipelines.report.render_map`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.io import write_atomic
from territoria.pipelines.report import (
    SIMPLIFY_TOLERANCE, _adapters, _env, _num, _short, _text, department_names, domain_label, fmt_value, indicator_label,
    indicator_unit, interval_bar, bar_chart, render_map, svg_bars, svg_interval, svg_waterfall, waterfall,
)

#: accepted names of the IRIS code column of IGN CONTOURS-IRIS (editions up to 2023, then 2024+)
CONTOUR_CODE_COLUMNS = ("CODE_IRIS", "code_iris")

TEXT = {
    "fr": {
        "card_title": "Fiche IRIS", "commune": "Commune", "other_features": "autres variables",
        "rank_commune": "Rang dans la commune",
        "forecast": "Prévision", "forecast_of": "Évolution prévue de la part des allocataires au RSA",
        "points": "points", "index": "Indice de privation (IRIS)", "levers": "Leviers principaux",
        "indicators": "Indicateurs de l'IRIS", "commune_median": "IRIS médian de la commune",
        "value": "valeur", "vintage": "millésime", "sources": "Sources",
        "waterfall_iris": "De quoi est faite la prévision (points de part RSA, TreeSHAP)",
        "base_iris": "IRIS moyen (point de départ)", "final_iris": "prévision",
        "model_note":
        "Prévision LightGBM entraînée sur l'évolution {o}→{e} (IRIS d'au moins {m} allocataires), "
        "évaluée par validation croisée par départements : Spearman {s} contre {b} pour la meilleure référence.",
        "map_commune_note": "{name} : IRIS le plus prioritaire {iris} (rang {rank}) ; {nf} IRIS prioritaires sur {n}",
        "report_title": "IRIS prioritaires", "n_iris": "IRIS classés", "n_flag": "IRIS prioritaires",
        "n_communes": "communes découpées en IRIS", "n_communes_flag": "communes ayant au moins un IRIS prioritaire",
        "by_dep": "IRIS prioritaires par département", "dep": "département", "most_urgent": "IRIS le plus prioritaire",
        "by_commune": "Communes qui concentrent des IRIS prioritaires", "flagged_of": "IRIS prioritaires / IRIS",
        "best_rank": "meilleur rang", "pockets": "Poches cachées par la moyenne communale",
        "pockets_note": "IRIS prioritaires dont la commune a un IRIS médian sous la médiane nationale "
                        "(score de l'IRIS médian < 50) : la moyenne de la commune les masque.",
        "median_score": "score de l'IRIS médian de la commune", "model": "Modèle et limites",
        "cv": "Validation croisée par départements (IRIS d'un département retenus ensemble)",
        "temporal": "Backtest temporel (entraîné sur la transition précédente)",
        "coverage_t": "Couverture des intervalles de prévision", "limits": "Limites",
        "limit_list": [
            "Périmètre : les IRIS des communes découpées en IRIS publiés par Filosofi IRIS et la CNAF ; "
            "les communes non découpées sont classées au niveau communal.",
            "La prévision porte sur la part des allocataires CNAF au RSA, pas sur toute la population ; "
            "un IRIS dont la part est secrète n'a pas de prévision (score sur l'indice, intervalle élargi).",
            "L'indice IRIS ne couvre que les domaines que les sources IRIS mesurent (économie, logement).",
            "Sans contours IRIS (IGN CONTOURS-IRIS, --iris-contours), la carte montre les communes.",
        ],
        "indicators_t": "Indicateurs de l'indice IRIS", "domains_t": "domaines",
    },
    "en": {
        "card_title": "IRIS card", "commune": "Commune", "other_features": "other features",
        "rank_commune": "Rank in the commune",
        "forecast": "Forecast", "forecast_of": "Forecast change of the share of CAF recipients on RSA",
        "points": "points", "index": "Deprivation index (IRIS)", "levers": "Main levers",
        "indicators": "Indicators of the IRIS", "commune_median": "median IRIS of the commune",
        "value": "value", "vintage": "vintage", "sources": "Sources",
        "waterfall_iris": "What the forecast is made of (points of RSA share, TreeSHAP)",
        "base_iris": "average IRIS (starting point)", "final_iris": "forecast",
        "model_note":
        "LightGBM forecast trained on the {o}→{e} change (IRIS with at least {m} recipients), "
        "evaluated by department-blocked cross-validation: Spearman {s} against {b} for the best baseline.",
        "map_commune_note": "{name}: most urgent IRIS {iris} (rank {rank}); {nf} flagged IRIS of {n}",
        "report_title": "Priority IRIS", "n_iris": "IRIS ranked", "n_flag": "priority IRIS",
        "n_communes": "communes divided into IRIS", "n_communes_flag": "communes with at least one priority IRIS",
        "by_dep": "Priority IRIS by department", "dep": "department", "most_urgent": "most urgent IRIS",
        "by_commune": "Communes where priority IRIS concentrate", "flagged_of": "priority IRIS / IRIS",
        "best_rank": "best rank", "pockets": "Pockets hidden by the commune average",
        "pockets_note": "Priority IRIS whose commune's median IRIS is below the national median "
                        "(median IRIS score < 50): the commune's average hides them.",
        "median_score": "score of the commune's median IRIS", "model": "Model and limits",
        "cv": "Department-blocked cross-validation (the IRIS of a department held out together)",
        "temporal": "Temporal backtest (trained on the previous transition)",
        "coverage_t": "Coverage of the forecast intervals", "limits": "Limits",
        "limit_list": [
            "Scope: the IRIS of the communes divided into IRIS that Filosofi IRIS and CNAF publish; "
            "undivided communes are ranked at commune level.",
            "The forecast is of the share of CNAF recipients on RSA, not of the whole population; an IRIS "
            "whose share is secret gets no forecast (scored on its index, with a wider interval).",
            "The IRIS index covers only the domains the IRIS sources measure (economic, housing).",
            "Without IRIS contours (IGN CONTOURS-IRIS, --iris-contours), the map shows communes.",
        ],
        "indicators_t": "Indicators of the IRIS index", "domains_t": "domains",
    },
}


def _t(lang: str) -> dict:
    return {**_text(lang), **TEXT[lang]}


# --------------------------------------------------------------------------- contours
def read_iris_contours(path: Path | str) -> pd.Series:
    """IRIS polygons (WGS84) by IRIS code from an IGN CONTOURS-IRIS file (GeoPackage or
    shapefile, any edition: ``CODE_IRIS`` or ``code_iris``); invalid polygons are repaired."""
    import pyogrio
    import shapely

    path = Path(path)
    if not path.exists():
        raise DataError(path, "IRIS contours file not found (IGN CONTOURS-IRIS, .gpkg or .shp)")
    try:
        info = pyogrio.read_info(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise DataError(path, f"not a readable GeoPackage or shapefile ({exc})") from exc
    fields = list(info["fields"])
    code = next((c for c in CONTOUR_CODE_COLUMNS if c in fields), None)
    if code is None:
        raise DataError(path, f"no IRIS code column ({' or '.join(CONTOUR_CODE_COLUMNS)}); columns: {fields}")
    g = pyogrio.read_dataframe(path, columns=[code])
    if g.empty:
        raise DataError(path, "the IRIS contours file is empty")
    if g.crs is None:
        raise DataError(path, "the IRIS contours have no coordinate system (.prj missing?)")
    geoms = np.asarray(g.geometry.array, dtype=object)
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms[bad] = shapely.make_valid(geoms[bad])
    g = g.set_geometry(list(geoms), crs=g.crs).to_crs("EPSG:4326")
    codes = g[code].astype(str).str.strip()
    out = pd.Series(np.asarray(g.geometry.array, dtype=object), index=codes)
    return out[~out.index.duplicated()]


def _commune_polygons(codes: pd.Series, data_dir: Path | None) -> np.ndarray:
    import shapely

    from territoria.features.sources.geometries import CommuneGeometries

    g = CommuneGeometries(data_dir).load().drop_duplicates("zone_code").set_index("zone_code")
    g = g.to_crs("EPSG:4326") if g.crs is not None and g.crs.to_epsg() != 4326 else g
    geoms = pd.Series(np.asarray(g.geometry.array, dtype=object), index=g.index).reindex(codes.astype(str))
    arr = geoms.to_numpy(dtype=object)
    ok = pd.notna(arr)
    out = np.full(len(arr), None, dtype=object)
    out[ok] = shapely.simplify(arr[ok].astype(object), SIMPLIFY_TOLERANCE, preserve_topology=True)
    return out


def commune_rows(pri: pd.DataFrame, lang: str) -> pd.DataFrame:
    """One map row per commune divided into IRIS: its most urgent IRIS's figures, named in the
    tooltip with its rank and the number of flagged IRIS of the commune."""
    T = _t(lang)
    ranked = pri.dropna(subset=["priority_rank"]).sort_values(["priority_rank", "zone_code"])
    top = ranked.drop_duplicates("parent_commune").copy()
    n_flag = pri.groupby("parent_commune")["priority_flag"].sum()
    n_iris = pri.groupby("parent_commune").size()
    top["zone_name"] = [
        T["map_commune_note"].format(name=r.commune_name, iris=r.zone_code, rank=int(r.priority_rank),
                                     nf=int(n_flag[r.parent_commune]), n=int(n_iris[r.parent_commune]))
        for r in top.itertuples()]
    return top.reset_index(drop=True)


def write_iris_map(pri: pd.DataFrame, path: Path | str, lang: str = "fr", contours: Path | str | None = None,
                   data_dir: Path | None = None) -> Path:
    """``iris/map.html``: IRIS polygons when ``contours`` is given, else the communes divided into IRIS."""
    if contours is not None:
        polys = read_iris_contours(contours)
        rows = pri[pri["zone_code"].isin(polys.index)].reset_index(drop=True)
        if rows.empty:
            raise DataError(contours, "none of the run's IRIS codes is in the contours file "
                                      "(an edition of another IRIS geography?)")
        import shapely

        geoms = shapely.simplify(polys.reindex(rows["zone_code"]).to_numpy(dtype=object), SIMPLIFY_TOLERANCE / 4,
                                 preserve_topology=True)
    else:
        rows = commune_rows(pri, lang)
        geoms = _commune_polygons(rows["parent_commune"], data_dir)
    html = render_map(rows, geoms, lang, department_names(str(data_dir) if data_dir else None))
    return write_atomic(Path(path), lambda tmp: tmp.write_text(html, encoding="utf-8"))


# --------------------------------------------------------------------------- cards
def _fmt(x, lang: str, digits: int = 1) -> str:
    return "–" if x is None or pd.isna(x) else _num(float(x), lang, digits)


def card_inputs(own: pd.DataFrame, meta: pd.DataFrame, model_meta: pd.DataFrame, lang: str) -> dict:
    """What every card reads, computed once: the IRIS indicator levels of ``own`` (the feature
    matrix at the reference period, described by ``meta``), their commune medians, the labels
    of the model's features (``model_meta``) and the sources of the IRIS indicators."""
    from territoria.registry import load_registry

    reg = load_registry()
    adapters = _adapters()
    levels = meta[(meta["transform"] == "level") & ~meta["feature"].str.startswith("commune__")
                  & meta["feature"].isin(own.columns)]
    values = own[list(levels["feature"])]
    medians = values.groupby(own["parent_commune"]).median()
    sources = {}
    for name in levels["indicator"]:
        src = reg.indicator(name).source if name in reg.indicators else None
        if src in adapters:
            sources[src] = adapters[src]
    return {"levels": levels, "values": values, "medians": medians,
            "labels": model_meta.drop_duplicates("feature").set_index("feature")[f"label_{lang}"],
            "sources": [{"producer": p, "dataset": d, "vintage": v} for p, d, v in sources.values()]}


def card_context(row: pd.Series, expl: pd.DataFrame, inputs: dict, n_ranked: int, metrics: dict,
                 lang: str) -> dict:
    """Template context of one IRIS card (pure): ``expl`` holds the IRIS's explanation rows,
    ``inputs`` comes from :func:`card_inputs`."""
    T = _t(lang)
    measure = metrics["target"]["measure"]
    pred = f"pred_{measure}"
    score = float(row["priority_score"]) if pd.notna(row["priority_score"]) else None
    doms = [(domain_label(c[7:], lang), float(row[c])) for c in row.index
            if c.startswith("domain_") and c.count("_") == 1 and pd.notna(row[c])]
    domains = svg_bars(bar_chart(doms), [_fmt(v, lang, 2) for _, v in doms], T["domains"]) if doms else ""
    # waterfall of the forecast: the largest contributions, the rest in one bar
    wf = None
    if len(expl):
        base, final = float(expl["base_value"].iloc[0]), float(expl["model_output"].iloc[0])
        named = expl[expl["feature"] != "(other features)"]
        named = named.loc[named["contribution"].abs().sort_values(ascending=False).index].head(8)
        labels = inputs["labels"]
        items = [(_short(str(labels.get(f, f)), 46), float(c), "lever" if lv else "context")
                 for f, c, lv in zip(named["feature"], named["contribution"], named["is_lever"])]
        items.append((T["other_features"], final - base - sum(p for _, p, _ in items), "context"))
        wf = waterfall(base, items, final)
        for b in wf["bars"]:
            b["text"] = _num(b["value"], lang, 2) if b["kind"] in ("base", "final") else \
                (("+" if b["value"] > 0 else "") + _num(b["value"], lang, 2))
        wf = svg_waterfall(wf, {**T, "waterfall": T["waterfall_iris"], "base": T["base_iris"],
                                "final": T["final_iris"]})
    # the IRIS's own indicators, against the commune's median IRIS
    code, commune = row["zone_code"], row["parent_commune"]
    indicators = []
    for r in inputs["levels"].itertuples():
        v = inputs["values"].at[code, r.feature]
        if pd.isna(v):
            continue
        unit = indicator_unit(r.indicator)
        indicators.append({"label": indicator_label(r.indicator, lang), "value": fmt_value(v, unit, lang),
                           "median": fmt_value(inputs["medians"].at[commune, r.feature], unit, lang), "unit": unit,
                           "vintage": "" if pd.isna(r.period_to) else str(int(r.period_to))})
    cv = {m["model"]: m for m in metrics["cross_validation"]}
    best = max((m["spearman"] for k, m in cv.items() if k != "lightgbm" and pd.notna(m["spearman"])), default=np.nan)
    lo, hi = row.get(f"{pred}_low_80"), row.get(f"{pred}_high_80")
    return {
        "code": row["zone_code"], "name": row["zone_name"], "commune": row["commune_name"],
        "commune_code": row["parent_commune"], "department": row["department"],
        "score": _fmt(score, lang), "low": _fmt(row["priority_score_low"], lang),
        "high": _fmt(row["priority_score_high"], lang),
        "score_bar": svg_interval(interval_bar(score, float(row["priority_score_low"]),
                                               float(row["priority_score_high"])) if score is not None else None,
                                  T["interval"]),
        "rank": "–" if pd.isna(row["priority_rank"]) else int(row["priority_rank"]), "n": n_ranked,
        "rank_commune": "–" if pd.isna(row["rank_in_commune"]) else int(row["rank_in_commune"]),
        "n_commune": int(row["iris_in_commune"]), "flag": bool(row["priority_flag"]),
        "index": _fmt(row.get("deprivation_index"), lang), "domains": domains,
        "forecast": _fmt(row[pred], lang, 2), "forecast_low": _fmt(lo, lang, 2), "forecast_high": _fmt(hi, lang, 2),
        "span": f"{int(row['origin'])}–{int(row['horizon_end'])}",
        "levers": [s for s in str(row.get(f"top_levers_{lang}") or "").split("; ") if s],
        "waterfall": wf, "indicators": indicators,
        "sources": inputs["sources"],
        "model_note": T["model_note"].format(o=metrics["target"]["origin"], e=metrics["target"]["end"],
                                             m=int(metrics["min_recipients"]),
                                             s=_fmt(cv["lightgbm"]["spearman"], lang, 3), b=_fmt(best, lang, 3)),
    }


def write_iris_cards(pri: pd.DataFrame, explanations: pd.DataFrame, meta: pd.DataFrame, own: pd.DataFrame,
                     model_meta: pd.DataFrame, folder: Path, lang: str, metrics: dict,
                     zones: list[str] | None = None) -> list[Path]:
    """Write the card of every flagged IRIS (or of ``zones``); cards of IRIS no longer flagged
    are removed. ``own``/``meta``: the IRIS features at the reference period and their
    metadata (indexed by IRIS code); ``model_meta``: the metadata of the forecast's features."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    T = _t(lang)
    tpl = _env().get_template("iris_card.html.j2")
    codes = zones if zones is not None else pri.loc[pri["priority_flag"], "zone_code"].tolist()
    rows = pri.set_index("zone_code", drop=False)
    expl = dict(tuple(explanations[explanations["zone_code"].isin(codes)].groupby("zone_code", sort=False)))
    none = explanations.iloc[:0]
    inputs = card_inputs(own, meta, model_meta, lang)
    n_ranked = int(pri["priority_rank"].notna().sum())
    written = []
    for code in codes:
        ctx = card_context(rows.loc[code], expl.get(code, none), inputs, n_ranked, metrics, lang)
        text = tpl.render(z=ctx, t=T)
        written.append(write_atomic(folder / f"{code}.html", lambda tmp, s=text: tmp.write_text(s, encoding="utf-8")))
    if zones is None:
        keep = {p.name for p in written}
        for old in folder.glob("*.html"):
            if old.name not in keep:
                old.unlink()
    return written


# --------------------------------------------------------------------------- one IRIS on demand
IRIS_CODE = r"\d[\dAB]\d{7}"

_EXPLAIN = {
    "fr": "{name} ({code}) — commune {commune}, département {dep}\n"
          "Score de priorité : {score} (intervalle 80 % : {low} – {high}) ; rang {rank} sur {n}, "
          "{rank_c} sur {n_c} dans la commune ; IRIS prioritaire : {flag}\n"
          "Indice de privation : {index} ; évolution prévue de la part RSA {span} : {pred} points "
          "[{plo} ; {phi}]\nPrincipaux leviers : {levers}",
    "en": "{name} ({code}) — commune {commune}, department {dep}\n"
          "Priority score: {score} (80 % interval: {low} – {high}); rank {rank} of {n}, "
          "{rank_c} of {n_c} in the commune; priority IRIS: {flag}\n"
          "Deprivation index: {index}; forecast change of the RSA share {span}: {pred} points "
          "[{plo} ; {phi}]\nTop levers: {levers}",
}


def _iris_outputs(out_dir: Path | str) -> tuple[Path, pd.DataFrame, dict]:
    import json

    folder = Path(out_dir) / "iris"
    path = folder / "priorities.csv"
    if not path.exists():
        raise DataError(path, "no IRIS run here: run `territoria run --level iris --out DIR` first")
    pri = pd.read_csv(path, dtype={"zone_code": str, "parent_commune": str, "department": str, "epci": str})
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return folder, pri, metrics


def _iris_row(pri: pd.DataFrame, code: str, path: Path) -> pd.Series:
    rows = pri[pri["zone_code"] == code]
    if rows.empty:
        raise DataError(path, f"no IRIS '{code}' in this run (an IRIS of a commune divided into IRIS, "
                              "e.g. 591720101)")
    return rows.iloc[0]


def iris_explanation(out_dir: Path | str, code: str, lang: str = "fr") -> str:
    """One IRIS's score, ranks, forecast and levers from a finished IRIS run, as text."""
    folder, pri, metrics = _iris_outputs(out_dir)
    r = _iris_row(pri, str(code).strip(), folder / "priorities.csv")
    pred = f"pred_{metrics['target']['measure']}"
    T = _t(lang)
    return _EXPLAIN[lang].format(
        name=r["zone_name"], code=r["zone_code"], commune=r["commune_name"], dep=r["department"],
        score=_fmt(r["priority_score"], lang), low=_fmt(r["priority_score_low"], lang),
        high=_fmt(r["priority_score_high"], lang), n=int(pri["priority_rank"].notna().sum()),
        rank="–" if pd.isna(r["priority_rank"]) else int(r["priority_rank"]),
        rank_c="–" if pd.isna(r["rank_in_commune"]) else int(r["rank_in_commune"]), n_c=int(r["iris_in_commune"]),
        flag=T["yes"] if bool(r["priority_flag"]) else T["no"], index=_fmt(r["deprivation_index"], lang),
        span=f"{int(r['origin'])}–{int(r['horizon_end'])}", pred=_fmt(r[pred], lang, 2),
        plo=_fmt(r[f"{pred}_low_80"], lang, 2), phi=_fmt(r[f"{pred}_high_80"], lang, 2),
        levers=r.get(f"top_levers_{lang}") if isinstance(r.get(f"top_levers_{lang}"), str) else "–")


def write_iris_card(out_dir: Path | str, code: str, lang: str = "fr") -> Path:
    """Write the card of any IRIS of a finished IRIS run (``<out>/iris/zones/<code>.html``)."""
    folder, pri, metrics = _iris_outputs(out_dir)
    code = str(code).strip()
    _iris_row(pri, code, folder / "priorities.csv")
    ex = pd.read_parquet(folder / "explanations.parquet", filters=[("zone_code", "==", code)])
    meta = pd.read_csv(folder / "features_meta.csv")
    own = pd.read_parquet(folder / "features.parquet").set_index("zone_code")
    model_meta = pd.read_csv(folder / "forecast_features_meta.csv")
    (path,) = write_iris_cards(pri, ex, meta, own, model_meta, folder / "zones", lang, metrics, zones=[code])
    return path


# --------------------------------------------------------------------------- report.html
def report_context(pri: pd.DataFrame, metrics: dict, lang: str = "fr", top: int = 30) -> dict:
    """Figures of ``iris/report.html`` (pure): by department, by commune, hidden pockets, model."""
    ranked = pri.dropna(subset=["priority_rank"]).sort_values("priority_rank")
    flagged = ranked[ranked["priority_flag"]]
    first = flagged.drop_duplicates("department")
    by_dep = (flagged.groupby("department").size().rename("n").to_frame()
              .join(first.set_index("department")[["zone_code", "zone_name", "priority_rank"]])
              .sort_values(["n", "priority_rank"], ascending=[False, True]).reset_index())
    n_iris = pri.groupby("parent_commune").size()
    by_com = (flagged.groupby(["parent_commune", "commune_name", "department"])
              .agg(n=("zone_code", "size"), best=("priority_rank", "min")).reset_index())
    by_com["of"] = by_com["parent_commune"].map(n_iris)
    by_com = by_com.sort_values(["n", "best"], ascending=[False, True]).head(top)
    median = ranked.groupby("parent_commune")["priority_score"].median()
    pockets = flagged.assign(median_score=flagged["parent_commune"].map(median))
    pockets = pockets[pockets["median_score"] < 50].head(top).assign(
        score_text=lambda d: [_fmt(v, lang) for v in d["priority_score"]],
        median_text=lambda d: [_fmt(v, lang) for v in d["median_score"]])

    def table(records):
        return pd.DataFrame(records).set_index("model")[["spearman", "r2", "mae", "precision_at_10", "n"]]

    cv = table(metrics["cross_validation"])
    temporal = table(metrics["temporal_backtest"]) if metrics.get("temporal_backtest") else None
    cov = [r for r in metrics["interval_coverage"] if r["grouping"] == "all"]
    return {
        "n": int(len(ranked)), "k": int(len(flagged)), "communes": int(pri["parent_commune"].nunique()),
        "communes_flag": int(flagged["parent_commune"].nunique()),
        "by_dep": by_dep.to_dict("records"), "by_commune": by_com.to_dict("records"),
        "pockets": pockets.to_dict("records"), "cards": set(flagged["zone_code"]),
        "cv": [(m, *(_fmt(v, lang, 3) for v in r[:-1]), int(r.iloc[-1])) for m, r in cv.iterrows()],
        "temporal": None if temporal is None else
        [(m, *(_fmt(v, lang, 3) for v in r[:-1]), int(r.iloc[-1])) for m, r in temporal.iterrows()],
        "coverage": [(f"{int(r['level'] * 100)} %", _fmt(r["coverage"], lang, 3), _fmt(r["mean_width"], lang, 2))
                     for r in cov],
        "target": metrics["target"], "forecast": metrics["forecast"],
        "indicators": [indicator_label(i, lang) for i in metrics["index"]["indicators"]],
        "domains": [domain_label(d, lang) for d in metrics["index"]["domains"]],
        "model_note": _t(lang)["model_note"].format(
            o=metrics["target"]["origin"], e=metrics["target"]["end"], m=int(metrics["min_recipients"]),
            s=_fmt(cv.loc["lightgbm", "spearman"], lang, 3),
            b=_fmt(cv.drop(index="lightgbm")["spearman"].max(), lang, 3)),
    }


def write_iris_report(pri: pd.DataFrame, metrics: dict, path: Path | str, lang: str = "fr") -> Path:
    """``iris/report.html``: the planner's summary of an IRIS run."""
    html = _env().get_template("iris_report.html.j2").render(r=report_context(pri, metrics, lang), t=_t(lang))
    return write_atomic(Path(path), lambda tmp: tmp.write_text(html, encoding="utf-8"))
