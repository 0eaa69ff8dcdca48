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

import math

import numpy as np
import pandas as pd

from territoria.models.explain import feature_info

INDEX_MODEL = "deprivation_index"


def index_points(index_model, X: pd.DataFrame, terms: pd.DataFrame, factor: pd.Series,
                 normalised: pd.DataFrame | None = None) -> pd.DataFrame:
    """Score points of each (zone, indicator) through the composite index.

    ``terms`` are the index's domain terms (:func:`~territoria.models.priority.index_terms`)
    and ``factor`` the score points per index point of each zone. Wide: zones × (indicator,
    is_location, domain) columns (see :func:`indicator_points`); every index indicator is
    present for every zone (0 where it adds nothing). ``normalised`` is
    ``index_model.normalise(X)`` when the caller already has it.
    """
    z = index_model.reuse_normalised(X, normalised)
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
    zones = frames[0].index
    for f in frames[1:]:
        zones = zones.union(f.index, sort=False)
    zones = pd.Index(zones.sort_values(), name="zone_code")
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
    return pd.Series(np.clip(np.ceil(r.to_numpy(float) * 10), 1, 10), index=r.index, name=r.name)


_ORDINAL_FR = {1: "1er"}


def _number_formatter(unit: str, lang: str):
    """The formatting of a figure of ``unit`` in ``lang``: « 35,2 % », « 21 450 € », « 12,5 km »."""
    fr = lang == "fr"
    if unit.startswith("%"):
        if fr:
            return lambda x: f"{x:.1f}".replace(".", ",") + "\u00a0%"
        return lambda x: f"{x:.1f}%"
    large = (" €" if fr else " EUR") if "EUR" in unit else ""
    small = " km" if unit == "km" else ""

    def fmt(x: float) -> str:
        if abs(x) >= 1000:
            s = f"{x:,.0f}"
            return (s.replace(",", "\u202f") if fr else s) + large
        s = f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"
        return (s.replace(".", ",") if fr else s) + small

    return fmt


def _decile_text(d: int, lang: str, from_top: bool) -> str:
    if lang == "fr":
        return f"{_ORDINAL_FR.get(d, f'{d}e')} décile le plus {'élevé' if from_top else 'bas'} du département"
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(d, "th")
    return f"{d}{suffix} {'highest' if from_top else 'lowest'} decile of its department"


def lever_sentences(label: str, values, unit: str, period, deciles, points, lang: str,
                    from_top: bool = True) -> list[str]:
    """« Taux de chômage (35,2 % en 2018, 3e décile le plus élevé du département) augmente
    le score de 0,12 » and its English counterpart, for each zone's ``values``, ``deciles``
    and ``points`` of one indicator; the decile counts from the worse end (the highest
    values, or the lowest when a higher value is better: ``from_top=False``).

    Examples
    --------
    >>> lever_sentences("Taux de chômage", [35.2], "%", 2018, [3.0], [0.12], "fr")
    ['Taux de chômage (35,2\xa0% en 2018, 3e décile le plus élevé du département) augmente le score de 0,12']
    >>> lever_sentences("Median income", [21450.0, float("nan")], "EUR", None, [9.0, float("nan")], [0.5, -0.25],
    ...                 "en", from_top=False)
    ['Median income (21,450 EUR, 9th lowest decile of its department) raises the score by 0.50', \
'Median income lowers the score by 0.25']
    """
    fr = lang == "fr"
    when = ""
    if period is not None and np.isfinite(period):
        when = f" en {int(period)}" if fr else f" in {int(period)}"
    deciles_text = {d: _decile_text(d, lang, from_top) for d in range(1, 11)}
    raises, lowers = (" augmente le score de ", " diminue le score de ") if fr else (" raises the score by ",
                                                                                 " lowers the score by ")
    value_text = _number_formatter(unit, lang)
    out = []
    # plain Python per zone, each branch settled once per indicator: 200,000 sentences for
    # the communes in two languages
    for v, d, p in zip(np.asarray(values, float).tolist(), np.asarray(deciles, float).tolist(),
                       np.asarray(points, float).tolist()):
        figure = f"{value_text(v)}{when}" if math.isfinite(v) else ""
        rank = (deciles_text.get(int(d)) or _decile_text(int(d), lang, from_top)) if math.isfinite(d) else ""
        detail = f" ({figure}, {rank})" if figure and rank else f" ({figure or rank})" if figure or rank else ""
        amount = f"{abs(p):.2f}"
        out.append(f"{label}{detail}{raises if p >= 0 else lowers}{amount.replace('.', ',') if fr else amount}")
    return out


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
    # lev is in each zone's order of the text: points, largest first, then indicator
    zones = lev["zone_code"].to_numpy(dtype=object)
    points_ = lev["points"].to_numpy(float)
    sentences = {lang: np.empty(len(lev), dtype=object) for lang in langs}
    for name, at in lev.groupby("indicator", sort=False).indices.items():
        ind = registry.indicator(name) if name in registry.indicators else None
        from_top = ind is None or ind.sign > 0
        if name in features:
            vals = features[name].reindex(zones[at]).to_numpy(float)
            dec = department_decile(features[name], dep, from_top).reindex(zones[at]).to_numpy(float)
        else:
            vals = dec = np.full(len(at), np.nan)
        for lang in langs:
            label = (ind.label_fr if lang == "fr" else ind.label_en) if ind else name
            sentences[lang][at] = lever_sentences(label, vals, ind.unit if ind else "", period.get(name), dec,
                                                  points_[at], lang, from_top)
    starts = np.flatnonzero(np.r_[True, zones[1:] != zones[:-1]]) if len(zones) else np.zeros(0, int)
    bounds = list(zip(starts.tolist(), np.r_[starts[1:], len(zones)].tolist()))
    out = {}
    for lang in langs:
        sep, s = (" ; " if lang == "fr" else "; "), sentences[lang]
        text = {zones[a]: sep.join(s[a:b]) for a, b in bounds}
        out[lang] = pd.Series(text, dtype=object).reindex(features.index).fillna("")
    return out

