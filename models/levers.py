"""A zone's priority score in score points per indicator, and its top levers in plain words.

Two sources add up to the score (see :mod:`territoria.models.priority`):

* the composite index: its exact domain terms, each shared among the domain's indicators in
  proportion to their weighted normalised values (the domain score is their weighted mean;
  the sharing is exact at domain level, proportional within it);
* the trajectory models: TreeSHAP contributions times the score points per unit of output.

Only a zone's *own* figures are levers in the text (neighbourhood features describe where the
zone lies and are reported as location context), and only indicators the registry marks as
levers (``lever: true``) are named as levers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from territoria.models.explain import feature_info

INDEX_MODEL = "deprivation_index"


def index_points(index_model, X: pd.DataFrame, terms: pd.DataFrame, factor: pd.Series) -> pd.DataFrame:
    """Score points of each (zone, indicator) through the composite index.

    ``terms`` are the index's domain terms (:func:`~territoria.models.priority.index_terms`)
    and ``factor`` the score points per index point of each zone. Wide: zones × (indicator,
    is_location, domain) columns (see :func:`indicator_points`); every index indicator is
    present for every zone (0 where it adds nothing).
    """
    z = index_model.normalise(X)
    ind = index_model.indicators_
    blocks, keys = [], []
    for d in terms.columns:
        names = list(ind.index[ind["domain"] == d])
        if not names:
            continue
        w = ind.loc[names, "weight"].to_numpy(float)
        wz = np.nan_to_num(z[names].to_numpy(float)) * w
        total = wz.sum(axis=1, keepdims=True)
        absolute = np.abs(wz).sum(axis=1, keepdims=True)
        t = terms[d].to_numpy(float)[:, None]
        # proportional sharing is unstable when the signs cancel out: share by size instead
        stable = np.abs(total) > 0.05 * absolute
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(stable, wz / total, np.abs(wz) / absolute)
        share = np.nan_to_num(share, nan=1.0 / len(names))
        blocks.append(share * t * factor.reindex(terms.index).to_numpy(float)[:, None])
        keys += [(n, False, d) for n in names]
    # a zone without a term or factor has no points, but its indicators are still listed
    values = np.nan_to_num(np.hstack(blocks)) if blocks else np.zeros((len(terms), 0))
    return pd.DataFrame(values, index=terms.index, columns=_points_columns(keys))


def model_points(contributions: pd.DataFrame, meta: pd.DataFrame, factor: pd.Series) -> pd.DataFrame:
    """Score points of each (zone, indicator, own/location) through one trajectory model.

    Wide like :func:`index_points`; NaN where the model's features of the indicator contribute
    exactly nothing (features the model never splits on), which :func:`indicator_points`
    leaves out.
    """
    info = feature_info(meta, contributions.columns)
    key = pd.MultiIndex.from_arrays([info["indicator"].astype(str).to_numpy(), info["is_location"].to_numpy()])
    codes, groups = pd.factorize(key)
    onehot = np.zeros((len(codes), len(groups)))
    onehot[np.arange(len(codes)), codes] = 1.0
    pts = (np.nan_to_num(contributions.to_numpy(float)) @ onehot) * factor.reindex(contributions.index).to_numpy(float)[:, None]
    dom = info.drop_duplicates("indicator").set_index("indicator")["domain"]
    keys = [(i, bool(loc), dom.get(i, "context")) for i, loc in groups]
    return pd.DataFrame(np.where(pts != 0, pts, np.nan), index=contributions.index, columns=_points_columns(keys))


def _points_columns(keys: list[tuple]) -> pd.MultiIndex:
    return pd.MultiIndex.from_tuples(keys, names=["indicator", "is_location", "domain"])


def indicator_points(frames: list[pd.DataFrame], registry) -> pd.DataFrame:
    """All score points by zone and indicator (own vs location), with the lever flag.

    ``frames`` are the wide points of each source (:func:`index_points`,
    :func:`model_points`): their sum per zone and (indicator, is_location, domain), long, one
    row per pair some source gives points to (NaN: none), sorted by zone then indicator. Summed
    on dense matrices: the sources' long tables (about 3.5 million rows per model for the
    communes) are never built.
    """
    zones = pd.Index(sorted(set().union(*(f.index for f in frames))), name="zone_code")
    keys = sorted(set().union(*(f.columns for f in frames)))
    total = np.zeros((len(zones), len(keys)))
    present = np.zeros((len(zones), len(keys)), bool)
    position = {k: i for i, k in enumerate(keys)}
    for f in frames:
        rows = np.ix_(zones.get_indexer(f.index), [position[k] for k in f.columns])
        v = f.to_numpy(float)
        given = ~np.isnan(v)
        total[rows] += np.where(given, v, 0.0)
        present[rows] |= given
    zi, ki = np.nonzero(present)
    del present
    # string columns are taken from their few distinct values (Arrow takes): millions of
    # Python strings would double the stage's peak memory
    is_location = np.array([k[1] for k in keys], dtype=bool)
    lever = np.array([bool(registry.indicators[k[0]].lever) if k[0] in registry.indicators else False
                      for k in keys]) & ~is_location
    return pd.DataFrame({
        "zone_code": pd.array(zones, dtype="str").take(zi),
        "indicator": pd.array([k[0] for k in keys], dtype="str").take(ki),
        "is_location": is_location[ki],
        "domain": pd.array([k[2] for k in keys], dtype="str").take(ki),
        "points": total[zi, ki],
        "is_lever": lever[ki],
    })


def department_decile(values: pd.Series, departement: pd.Series, from_top: bool = True) -> pd.Series:
    """Decile within the department counted from the highest values (``from_top``) or the
    lowest: 1 = the 10 % highest (lowest) of the department (NaN stays NaN)."""
    r = values.groupby(departement).rank(ascending=not from_top, method="min", pct=True)
    return np.ceil(r * 10).clip(1, 10)


_ORDINAL_FR = {1: "1er"}


def _fmt_number(x: float, unit: str, lang: str) -> str:
    if unit.startswith("%") or unit == "%":
        s = f"{x:.1f}"
        s = s.replace(".", ",") if lang == "fr" else s
        return f"{s}\u00a0%" if lang == "fr" else f"{s}%"
    if abs(x) >= 1000:
        s = f"{x:,.0f}"
        return s.replace(",", "\u202f") + (" €" if "EUR" in unit else "") if lang == "fr" else s + (" EUR" if "EUR" in unit else "")
    s = f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"
    s = s.replace(".", ",") if lang == "fr" else s
    return f"{s} km" if unit == "km" else s


def _fmt_points(x: float, lang: str) -> str:
    s = f"{abs(x):.2f}"
    return s.replace(".", ",") if lang == "fr" else s


def lever_sentence(label: str, value: float, unit: str, period, decile, points: float, lang: str,
                   from_top: bool = True) -> str:
    """« Taux de chômage (35,2 % en 2018, 3e décile le plus élevé du département) augmente
    le score de 0,12 » and its English counterpart; the decile counts from the worse end
    (the highest values, or the lowest when a higher value is better: ``from_top=False``)."""
    bits = []
    if np.isfinite(value):
        v = _fmt_number(value, unit, lang)
        if period is not None and np.isfinite(period):
            v += f" en {int(period)}" if lang == "fr" else f" in {int(period)}"
        bits.append(v)
    if decile is not None and np.isfinite(decile):
        d = int(decile)
        if lang == "fr":
            end = "élevé" if from_top else "bas"
            bits.append(f"{_ORDINAL_FR.get(d, f'{d}e')} décile le plus {end} du département")
        else:
            suffix = {1: "st", 2: "nd", 3: "rd"}.get(d, "th")
            end = "highest" if from_top else "lowest"
            bits.append(f"{d}{suffix} {end} decile of its department")
    detail = f" ({', '.join(bits)})" if bits else ""
    if lang == "fr":
        verb = "augmente" if points >= 0 else "diminue"
        return f"{label}{detail} {verb} le score de {_fmt_points(points, lang)}"
    verb = "raises" if points >= 0 else "lowers"
    return f"{label}{detail} {verb} the score by {_fmt_points(points, lang)}"


def top_levers(
    points: pd.DataFrame,
    features: pd.DataFrame,
    meta: pd.DataFrame,
    identity: pd.DataFrame,
    registry,
    langs: tuple[str, ...] = ("fr", "en"),
    k: int = 3,
) -> dict[str, pd.Series]:
    """Plain-language top ``k`` levers raising each zone's score, in each language of
    ``langs``: language → series indexed by zone code (the levers, figures and deciles are
    selected once for all the languages).

    ``points`` comes from :func:`indicator_points`; ``features`` is the feature matrix at the
    reference period (index: zone code) for the figures quoted.
    """
    lev = points[points["is_lever"] & (points["points"] > 0)]
    lev = lev.sort_values(["zone_code", "points", "indicator"], ascending=[True, False, True], kind="stable")
    lev = lev.groupby("zone_code", sort=False).head(k)
    period = meta[meta["transform"] == "level"].drop_duplicates("indicator").set_index("indicator")["period_to"]
    dep = identity["departement"].reindex(features.index)
    parts: dict[str, dict[str, list]] = {lang: {} for lang in langs}
    for name, rows in lev.groupby("indicator", sort=False):
        ind = registry.indicator(name) if name in registry.indicators else None
        unit = ind.unit if ind else ""
        from_top = ind is None or ind.sign > 0
        zones = rows["zone_code"]
        if name in features:
            vals = features[name].reindex(zones).to_numpy(float)
            dec = department_decile(features[name], dep, from_top).reindex(zones).to_numpy(float)
        else:
            vals = dec = np.full(len(rows), np.nan)
        per = period.get(name)
        for lang in langs:
            label = (ind.label_fr if lang == "fr" else ind.label_en) if ind else name
            into = parts[lang]
            for z, v, d, p in zip(zones.tolist(), vals.tolist(), dec.tolist(), rows["points"].tolist()):
                into.setdefault(z, []).append((p, lever_sentence(label, v, unit, per, d, p, lang, from_top)))
    out = {}
    for lang in langs:
        sep = " ; " if lang == "fr" else "; "
        text = {z: sep.join(s for _, s in sorted(items, key=lambda t: -t[0])) for z, items in parts[lang].items()}
        out[lang] = pd.Series(text, dtype=object).reindex(features.index).fillna("")
    return out

