"""``territoria explain CODE``: one zone's score, rank, interval and levers from a finished run.

Reads only the run's outputs (``priorities.csv``): no model is loaded, no data re-read.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from territoria.errors import DataError

_TEXT = {
    "fr": {
        "title": "{name} ({code}) — département {dep}, {epci}",
        "score": "Score de priorité : {score} (intervalle 80 % : {low} – {high})",
        "rank": "Rang national : {rank} sur {n} (entre {best} et {worst} selon l'incertitude) ; "
                "{rank_dep} du département, {rank_epci} de l'EPCI",
        "flag": "Zone prioritaire : {flag}",
        "yes": "oui", "no": "non",
        "index": "Indice de privation : {index} (décile {decile} ; 10 = les plus défavorisées)",
        "domains": "Scores par domaine (0 = médiane nationale, positif = plus défavorisé) : {domains}",
        "trend": "Évolutions prévues : {items}",
        "levers": "Principaux leviers : {levers}",
        "none": "aucun levier n'augmente le score",
        "programmes": "Programmes : {programmes}",
        "no_programme": "aucun",
        "cluster": "Périmètre prioritaire contigu : {cluster}",
        "diagnostics": "Diagnostics : {text}",
        "population": "Population : {pop}",
    },
    "en": {
        "title": "{name} ({code}) — department {dep}, {epci}",
        "score": "Priority score: {score} (80 % interval: {low} – {high})",
        "rank": "National rank: {rank} of {n} (between {best} and {worst} given the uncertainty); "
                "{rank_dep} in its department, {rank_epci} in its EPCI",
        "flag": "Priority zone: {flag}",
        "yes": "yes", "no": "no",
        "index": "Deprivation index: {index} (decile {decile}; 10 = most deprived)",
        "domains": "Domain scores (0 = national median, positive = more deprived): {domains}",
        "trend": "Forecast changes: {items}",
        "levers": "Top levers: {levers}",
        "none": "no lever raises the score",
        "programmes": "Programmes: {programmes}",
        "no_programme": "none",
        "cluster": "Contiguous priority perimeter: {cluster}",
        "diagnostics": "Diagnostics: {text}",
        "population": "Population: {pop}",
    },
}

_DOMAINS = {
    "fr": {"economic": "économie", "residential": "logement", "demographic": "démographie",
           "services": "services", "digital": "numérique", "environment": "environnement",
           "education": "éducation"},
    "en": {},
}

_MEASURES = {
    "fr": {"unemployment_rate": ("taux de chômage", "pt"), "median_income": ("revenu médian", "€"),
           "population": ("population", "%")},
    "en": {"unemployment_rate": ("unemployment rate", "pt"), "median_income": ("median income", "EUR"),
           "population": ("population", "%")},
}


def _num(x, lang: str, digits: int = 1) -> str:
    if pd.isna(x):
        return "–"
    s = f"{x:,.{digits}f}"
    if lang == "fr":
        s = s.replace(",", "\u202f").replace(".", ",")
    return s


def read_priorities(out_dir: Path | str) -> pd.DataFrame:
    path = Path(out_dir) / "priorities.csv"
    if not path.exists():
        raise DataError(path, "no priorities here: run `territoria run --out DIR` first")
    text = {c: str for c in ("zone_code", "department", "epci", "region", "flag_status", "flag_reason",
                             "flag_reason_fr", "cluster_id", "programmes", "top_levers", "top_levers_fr",
                             "top_levers_en", "diagnostic_reasons_fr", "diagnostic_reasons_en")}
    return pd.read_csv(path, dtype=text, low_memory=False)


def zone_explanation(out_dir: Path | str, code: str, lang: str = "fr") -> str:
    """The explanation of one zone, as text in French (default) or English."""
    if lang not in _TEXT:
        raise DataError("--lang", f"unknown language '{lang}' (fr or en)")
    pri = read_priorities(out_dir)
    row = pri[pri["zone_code"] == code.strip()]
    if row.empty:
        raise DataError(Path(out_dir) / "priorities.csv",
                        f"no zone '{code}' in this run (a commune code of the run's COG, e.g. 59172)")
    r = row.iloc[0]
    T = _TEXT[lang]
    n = int(pri["priority_score"].notna().sum())
    lines = [T["title"].format(name=r["zone_name"], code=r["zone_code"], dep=r["department"],
                               epci=r.get("epci_name", r["epci"]) if pd.notna(r.get("epci_name")) else r["epci"]),
             T["population"].format(pop=_num(r["population"], lang, 0))]
    if pd.isna(r["priority_score"]):
        lines.append(T["score"].format(score="–", low="–", high="–"))
    else:
        lines.append(T["score"].format(score=_num(r["priority_score"], lang), low=_num(r["priority_score_low"], lang),
                                       high=_num(r["priority_score_high"], lang)))
        lines.append(T["rank"].format(rank=int(r["priority_rank"]), n=f"{n:,}".replace(",", "\u202f" if lang == "fr" else ","),
                                      best=int(r["priority_rank_best"]), worst=int(r["priority_rank_worst"]),
                                      rank_dep=_ordinal(int(r["priority_rank_department"]), lang),
                                      rank_epci=_ordinal(int(r["priority_rank_epci"]), lang)))
    flag = T["yes"] if bool(r["priority_flag"]) else T["no"]
    reason = r.get("flag_reason_fr" if lang == "fr" else "flag_reason")
    if isinstance(reason, str) and reason:
        flag += f" ({reason})"
    lines.append(T["flag"].format(flag=flag))
    lines.append(T["index"].format(index=_num(r["deprivation_index"], lang),
                                   decile=_num(r["index_decile"], lang, 0)))
    doms = [c for c in pri.columns if c.startswith("domain_") and c.count("_") == 1]
    names = _DOMAINS[lang]
    lines.append(T["domains"].format(domains=", ".join(
        f"{names.get(c.removeprefix('domain_'), c.removeprefix('domain_'))} {_num(r[c], lang, 2)}"
        for c in doms if pd.notna(r[c]))))
    items = []
    for m, (label, unit) in _MEASURES[lang].items():
        if f"pred_{m}" in pri.columns and pd.notna(r[f"pred_{m}"]):
            end = r.get(f"pred_{m}_end")
            span = f" {int(r['reference_period'])}→{int(end)}" if pd.notna(end) and "reference_period" in r else ""
            items.append(f"{label}{span} {_signed(r[f'pred_{m}'], lang)} {unit} "
                         f"[{_num(r[f'pred_{m}_low'], lang)} ; {_num(r[f'pred_{m}_high'], lang)}]")
    if items:
        lines.append(T["trend"].format(items="; ".join(items)))
    lev = r.get(f"top_levers_{lang}", r.get("top_levers"))
    lines.append(T["levers"].format(levers=lev if isinstance(lev, str) and lev else T["none"]))
    progs = r.get("programmes")
    lines.append(T["programmes"].format(programmes=progs if isinstance(progs, str) and progs else T["no_programme"]))
    if isinstance(r.get("cluster_id"), str) and r["cluster_id"]:
        lines.append(T["cluster"].format(cluster=r["cluster_id"]))
    dtext = r.get(f"diagnostic_reasons_{lang}")
    if isinstance(dtext, str) and dtext:
        lines.append(T["diagnostics"].format(text=dtext))
    return "\n".join(lines)


def _signed(x: float, lang: str) -> str:
    s = _num(x, lang, 1 if abs(x) < 100 else 0)
    return s if s.startswith("-") else "+" + s


def _ordinal(k: int, lang: str) -> str:
    if lang == "fr":
        return "1er" if k == 1 else f"{k}e"
    return f"{k}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(k if k % 100 not in (11, 12, 13) else 0, 'th') }"
