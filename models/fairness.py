"""Fairness audit: do the models and the priority list treat kinds of territory alike?

The audit compares territory groups on what can go wrong for them:

* **model error** of each trajectory model on its out-of-fold (department-blocked)
  predictions — MAE, bias (mean prediction minus outcome, and oriented so that > 0 means the
  model predicted more worsening than happened), Spearman within the group;
* **interval coverage** of the 80 and 90 % intervals on the same predictions (each fold
  calibrated on the others, as the backtest measures it);
* **flags**: flag rate, its ratio to the national rate, and the same ratio for *need* (share
  of the group in the worst decile of the deprivation index), so that a group flagged twice
  as often because it is twice as deprived is told apart from one flagged for another reason;
  the mean ``p_priority`` (stability of the flags) overall and among flagged zones.

Groups (:func:`territory_groups`): urban/rural from the population density at the reference
period (``urban_density`` persons per km², 300 by default, the threshold the backtest's
coverage groups use; the INSEE communal density grid is not in the bundled data), overseas
(departments 971-976) vs mainland, population size class (``size_breaks``), and communes
with vs without a QPV (2024 designations; a designation, never a model input).

Tolerances (``audit.fairness`` in ``conf/priority.yml``) decide what is a **finding**
(:func:`findings`): coverage more than ``coverage_shortfall`` below nominal; MAE above
``mae_ratio`` times the target's overall MAE; absolute bias above ``bias_share_of_mae`` of the
overall MAE; a flag-rate ratio outside ``flag_rate_ratio`` that need does not explain (the
ratio of flag rate to need rate also outside the band); flagged zones whose mean
``p_priority`` is ``p_priority_gap`` below the national mean. Groups smaller than
``min_group_size`` are reported but never make a finding; a group of which less than
``min_measured_share`` has an out-of-fold prediction is itself a finding (its error is
largely unmeasured). The backtest's metrics score communes of at least the models'
``min_population``, but its fold models also predict the smaller communes of the held-out
departments (``scored`` False in ``backtest_predictions.parquet``), so that their error and
interval coverage are measured here.
Findings are listed, never filtered out.

Examples
--------
>>> import pandas as pd
>>> g = pd.DataFrame({"territory": ["mainland"] * 4 + ["overseas"] * 2},
...                  index=pd.Index(list("abcdef"), name="zone_code"))
>>> pri = pd.DataFrame({"zone_code": list("abcdef"), "priority_flag": [1, 0, 0, 0, 1, 1],
...                     "index_decile": [10, 5, 3, 2, 10, 9], "p_priority": [0.9, 0, 0, 0.1, 1, 0.6]})
>>> t = flag_rates(pri, g)
>>> t.loc[t["group"] == "overseas", ["n", "flag_rate", "flag_rate_ratio", "need_ratio"]].to_dict("records")
[{'n': 2, 'flag_rate': 1.0, 'flag_rate_ratio': 2.0, 'need_ratio': 1.5}]
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

OVERSEAS_DEPARTMENTS = ("971", "972", "973", "974", "976")
GROUPINGS = ("density_class", "territory", "size_class", "qpv")
GROUPING_LABELS = {
    "all": "all communes", "density_class": "urban / rural (density)", "territory": "overseas / mainland",
    "size_class": "population size", "qpv": "QPV in the commune",
}


# --------------------------------------------------------------------------- groups
def size_labels(breaks) -> list[str]:
    """``[2000, 5000, 20000]`` → ``['<2k', '2k-5k', '5k-20k', '20k+']``."""
    def k(x: float) -> str:
        return f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"

    b = list(breaks)
    return [f"<{k(b[0])}"] + [f"{k(a)}-{k(c)}" for a, c in zip(b, b[1:])] + [f"{k(b[-1])}+"]


def territory_groups(zone_codes, population, density=None, qpv=None, *, urban_density: float = 300.0,
                     size_breaks=(2000.0, 5000.0, 20000.0)) -> pd.DataFrame:
    """Territory groups of each zone (index: zone code).

    Parameters
    ----------
    zone_codes : sequence of str
        Commune codes (the department is read from them: ``97x`` overseas).
    population : sequence of float
        Inhabitants at the reference period.
    density : sequence of float, optional
        Persons per km²; ``urban`` at ``urban_density`` or more, ``rural`` below, ``unknown``
        when missing.
    qpv : sequence of bool, optional
        Whether a QPV lies in the commune.

    Examples
    --------
    >>> territory_groups(["59350", "97411", "01001"], [230000, 150000, 800], [6800, 870, 50],
    ...                  [True, True, False]).to_dict("list")  # doctest: +NORMALIZE_WHITESPACE
    {'density_class': ['urban', 'urban', 'rural'], 'territory': ['mainland', 'overseas', 'mainland'],
     'size_class': ['20k+', '20k+', '<2k'], 'qpv': ['with QPV', 'with QPV', 'without QPV']}
    """
    codes = pd.Index(pd.Series(zone_codes).astype(str), name="zone_code")
    out = pd.DataFrame(index=codes)
    if density is not None:
        d = pd.to_numeric(pd.Series(density, index=codes), errors="coerce")
        out["density_class"] = np.where(d.isna(), "unknown", np.where(d >= urban_density, "urban", "rural"))
    dep = pd.Series(codes.str[:3], index=codes)
    out["territory"] = np.where(dep.isin(OVERSEAS_DEPARTMENTS), "overseas", "mainland")
    pop = pd.to_numeric(pd.Series(population, index=codes), errors="coerce")
    labels = size_labels(size_breaks)
    cut = pd.cut(pop, [-np.inf, *size_breaks, np.inf], right=False, labels=labels)
    out["size_class"] = cut.astype(object).where(cut.notna(), "unknown")
    if qpv is not None:
        q = pd.Series(qpv, index=codes).fillna(False).astype(bool)
        out["qpv"] = np.where(q, "with QPV", "without QPV")
    return out


def _parts(groups: pd.DataFrame, index: pd.Index):
    """``(grouping, group, mask)`` over the rows of ``index``: "all" first, then each group."""
    g = groups.reindex(index)
    yield "all", "all", np.ones(len(index), bool)
    for col in [c for c in GROUPINGS if c in g.columns] + [c for c in g.columns if c not in GROUPINGS]:
        vals = g[col].astype(object).where(g[col].notna(), "unknown").to_numpy()
        for lab in sorted(pd.unique(vals), key=str):
            yield col, str(lab), vals == lab


# --------------------------------------------------------------------------- model error
def error_metrics(y, pred, low=None, high=None, sign: int = 1) -> dict:
    """MAE, bias, oriented bias, Spearman and interval coverage of one set of predictions.

    ``bias`` is ``mean(pred - y)``; ``bias_worsening`` is ``sign * bias`` (> 0: more
    worsening predicted than observed). ``low``/``high``: dicts level → bounds.

    Examples
    --------
    >>> m = error_metrics([1.0, 2, 3, 4], [1.5, 2.5, 2.5, 4.5], {80: [0, 2, 2, 4.2]}, {80: [1, 3, 4, 5]})
    >>> m["mae"], m["bias"], m["coverage_80"], round(m["spearman"], 3)
    (0.5, 0.25, 0.75, 0.949)
    """
    y, p = np.asarray(y, float), np.asarray(pred, float)
    ok = np.isfinite(y) & np.isfinite(p)
    out: dict = {"n": int(ok.sum())}
    if not ok.any():
        return out | {"mae": np.nan, "bias": np.nan, "bias_worsening": np.nan, "spearman": np.nan}
    err = p[ok] - y[ok]
    out["mae"] = float(np.mean(np.abs(err)))
    out["bias"] = float(np.mean(err))
    out["bias_worsening"] = float(sign * out["bias"])
    out["spearman"] = float(stats.spearmanr(y[ok], p[ok]).statistic) if ok.sum() >= 3 and np.ptp(y[ok]) > 0 \
        and np.ptp(p[ok]) > 0 else np.nan
    for lv in sorted(low or {}):
        lo, hi = np.asarray(low[lv], float), np.asarray(high[lv], float)
        okk = ok & np.isfinite(lo) & np.isfinite(hi)
        out[f"coverage_{lv}"] = float(np.mean((y[okk] >= lo[okk]) & (y[okk] <= hi[okk]))) if okk.any() else np.nan
        out[f"width_{lv}"] = float(np.mean(hi[okk] - lo[okk])) if okk.any() else np.nan
    return out


def error_by_group(oof: pd.DataFrame, groups: pd.DataFrame, signs: dict[str, int] | None = None,
                   model: str = "lightgbm", levels=(80, 90)) -> pd.DataFrame:
    """Model error and interval coverage per target and territory group.

    ``oof``: out-of-fold predictions (``zone_code, target, y, <model>, low_80, high_80, ...``
    as in ``backtest_predictions.parquet``, one scheme); ``signs``: measure → +1/-1 (the
    target's measure is the longest key that prefixes its name). Columns: ``target, grouping,
    group, n, mae, bias, bias_worsening, spearman, coverage_<l>, width_<l>, mae_ratio``
    (MAE over the target's overall MAE).

    When ``oof`` has a ``scored`` column, the "all" row is the backtest's headline (scored
    zones only: the same MAE and coverage as ``metrics.json``), while each group holds every
    zone with an out-of-fold prediction, the small communes the headline leaves out included:
    their ``mae_ratio`` says how much worse the models do there.
    """
    rows = []
    signs = signs or {}
    for target, t in oof.groupby("target", sort=True):
        idx = pd.Index(t["zone_code"].astype(str))
        measure = max((m for m in signs if str(target).startswith(m)), key=len, default=None)
        sign = int(signs.get(measure, 1)) if measure else 1
        lv = [lv for lv in levels if f"low_{lv}" in t and f"high_{lv}" in t]
        scored = t["scored"].eq(True).to_numpy() if "scored" in t else np.ones(len(t), bool)
        for grouping, group, m in _parts(groups, idx):
            if grouping == "all":
                m = m & scored
            tt = t[m]
            r = error_metrics(tt["y"], tt[model], {v: tt[f"low_{v}"] for v in lv}, {v: tt[f"high_{v}"] for v in lv},
                              sign)
            rows.append({"target": target, "measure": measure, "grouping": grouping, "group": group, **r})
    out = pd.DataFrame(rows)
    if len(out):
        overall = out[out["grouping"] == "all"].set_index("target")["mae"]
        out["mae_ratio"] = out["mae"] / out["target"].map(overall)
    return out


def unmeasured_groups(groups: pd.DataFrame, oof: pd.DataFrame) -> pd.DataFrame:
    """Groups of zones for which no out-of-fold prediction exists (their error is unknown):
    ``grouping, group, n_zones, n_with_oof``."""
    have = set(oof["zone_code"].astype(str))
    rows = []
    for grouping, group, m in _parts(groups, groups.index):
        if grouping == "all":
            continue
        codes = groups.index[m]
        rows.append({"grouping": grouping, "group": group, "n_zones": int(m.sum()),
                     "n_with_oof": int(sum(c in have for c in codes))})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- flags
def flag_rates(priorities: pd.DataFrame, groups: pd.DataFrame, need_decile: int = 10) -> pd.DataFrame:
    """Flag rates, need and ``p_priority`` per territory group.

    ``priorities``: ``zone_code, priority_flag, index_decile`` (need: the zone is in decile
    ``need_decile`` or above of the deprivation index, 10 = the most deprived tenth) and
    optionally ``p_priority``. Only zones with a score count (``priority_score`` not NaN
    when the column is there). Columns: ``grouping, group, n, n_flagged, flag_rate,
    flag_rate_ratio, need_rate, need_ratio, flag_need_ratio`` (flag-rate ratio over need
    ratio: 1 when the group is flagged exactly as much as its need implies) and
    ``mean_p_priority, mean_p_priority_flagged, share_flagged_stable`` (p ≥ 0.9).
    """
    pri = priorities
    if "priority_score" in pri:
        pri = pri[pd.to_numeric(pri["priority_score"], errors="coerce").notna()]
    idx = pd.Index(pri["zone_code"].astype(str))
    flag = pd.Series(pri["priority_flag"]).astype("string").str.lower().isin(["true", "1"]).to_numpy() \
        if pri["priority_flag"].dtype == object else pri["priority_flag"].astype(bool).to_numpy()
    dec = pd.to_numeric(pri["index_decile"], errors="coerce").to_numpy(float)
    need = dec >= need_decile
    p = pd.to_numeric(pri["p_priority"], errors="coerce").to_numpy(float) if "p_priority" in pri else None
    rows = []
    for grouping, group, m in _parts(groups, idx):
        n = int(m.sum())
        r = {"grouping": grouping, "group": group, "n": n, "n_flagged": int(flag[m].sum()),
             "flag_rate": float(flag[m].mean()) if n else np.nan,
             "need_rate": float(need[m].mean()) if n else np.nan}
        if p is not None:
            pf = p[m & flag]
            r["mean_p_priority"] = float(np.nanmean(p[m])) if n else np.nan
            r["mean_p_priority_flagged"] = float(np.nanmean(pf)) if len(pf) else np.nan
            r["share_flagged_stable"] = float(np.nanmean(pf >= 0.9)) if len(pf) else np.nan
        rows.append(r)
    out = pd.DataFrame(rows)
    base = out.iloc[0]
    out["flag_rate_ratio"] = out["flag_rate"] / base["flag_rate"] if base["flag_rate"] > 0 else np.nan
    out["need_ratio"] = out["need_rate"] / base["need_rate"] if base["need_rate"] > 0 else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        out["flag_need_ratio"] = np.where(out["need_ratio"] > 0, out["flag_rate_ratio"] / out["need_ratio"],
                                          np.nan)
    cols = ["grouping", "group", "n", "n_flagged", "flag_rate", "flag_rate_ratio", "need_rate", "need_ratio",
            "flag_need_ratio", "mean_p_priority", "mean_p_priority_flagged", "share_flagged_stable"]
    return out[[c for c in cols if c in out.columns]]


# --------------------------------------------------------------------------- findings
def findings(errors: pd.DataFrame, flags: pd.DataFrame, tol, unmeasured: pd.DataFrame | None = None) -> list[dict]:
    """Disparities beyond the tolerances ``tol`` (a ``FairnessAudit``), one dict each:
    ``kind, target, grouping, group, n, value, reference, tolerance, text``."""
    out: list[dict] = []

    def add(kind, row, value, reference, tolerance, text, target=None):
        out.append({"kind": kind, "target": target, "grouping": row["grouping"], "group": row["group"],
                    "n": int(row["n"]), "value": None if pd.isna(value) else float(value),
                    "reference": None if pd.isna(reference) else float(reference), "tolerance": tolerance,
                    "text": text})

    if errors is not None and len(errors):
        for target, t in errors.groupby("target", sort=True):
            allr = t[t["grouping"] == "all"].iloc[0]
            for _, r in t[t["grouping"] != "all"].iterrows():
                if r["n"] < tol.min_group_size:
                    continue
                where = f"{target}, {r['grouping']} = {r['group']} (n = {int(r['n'])})"
                for c in [c for c in r.index if c.startswith("coverage_")]:
                    nominal = int(c.split("_")[1]) / 100
                    if pd.notna(r[c]) and r[c] < nominal - tol.coverage_shortfall:
                        add("coverage", r, r[c], nominal, tol.coverage_shortfall,
                            f"{where}: {int(nominal * 100)} % intervals cover {r[c]:.1%} of outcomes, more than "
                            f"{tol.coverage_shortfall * 100:g} points below nominal (all communes: {allr[c]:.1%})",
                            target)
                if pd.notna(r["mae_ratio"]) and r["mae_ratio"] > tol.mae_ratio:
                    add("mae", r, r["mae"], allr["mae"], tol.mae_ratio,
                        f"{where}: MAE {r['mae']:.3g} is {r['mae_ratio']:.2f} times the overall {allr['mae']:.3g} "
                        f"(tolerance {tol.mae_ratio:g}×)", target)
                lim = tol.bias_share_of_mae * allr["mae"]
                if pd.notna(r["bias"]) and abs(r["bias"]) > lim:
                    direction = "more worsening than observed" if r["bias_worsening"] > 0 else \
                        "less worsening than observed"
                    add("bias", r, r["bias"], lim, tol.bias_share_of_mae,
                        f"{where}: mean error {r['bias']:+.3g} ({direction}), beyond "
                        f"{tol.bias_share_of_mae:.0%} of the overall MAE ({lim:.3g})", target)
    if unmeasured is not None and len(unmeasured):
        for _, r in unmeasured.iterrows():
            share = r["n_with_oof"] / r["n_zones"] if r["n_zones"] else np.nan
            if r["n_zones"] >= tol.min_group_size and share < tol.min_measured_share:
                row = {"grouping": r["grouping"], "group": r["group"], "n": r["n_zones"]}
                add("unmeasured", row, share, tol.min_measured_share, tol.min_measured_share,
                    f"{r['grouping']} = {r['group']} ({int(r['n_zones']):,} communes): only "
                    f"{int(r['n_with_oof']):,} ({share:.1%}) have an out-of-fold prediction, so the models' error and "
                    "interval coverage for most of this group are not measured (the backtest scores communes of at "
                    "least the models' min_population; the rest may err differently)")
    if flags is not None and len(flags):
        lo, hi = tol.flag_rate_ratio
        allf = flags[flags["grouping"] == "all"].iloc[0]
        for _, r in flags[flags["grouping"] != "all"].iterrows():
            if r["n"] < tol.min_group_size:
                continue
            where = f"{r['grouping']} = {r['group']} (n = {int(r['n'])})"
            fr = r["flag_rate_ratio"]
            if pd.notna(fr) and not lo <= fr <= hi:
                fn = r["flag_need_ratio"]
                explained = pd.notna(fn) and lo <= fn <= hi
                if not explained:
                    add("flag_rate", r, fr, 1.0, [lo, hi],
                        f"{where}: flagged {r['flag_rate']:.1%} vs {allf['flag_rate']:.1%} nationally (ratio "
                        f"{fr:.2f}, outside [{lo:g}, {hi:g}]), not explained by need: {r['need_rate']:.1%} in the "
                        f"worst index decile vs {allf['need_rate']:.1%} (flag/need ratio "
                        f"{'n/a' if pd.isna(fn) else f'{fn:.2f}'})")
            if "mean_p_priority_flagged" in r and pd.notna(r["mean_p_priority_flagged"]) and \
                    pd.notna(allf.get("mean_p_priority_flagged")) and r["n_flagged"] >= tol.min_group_size and \
                    r["mean_p_priority_flagged"] < allf["mean_p_priority_flagged"] - tol.p_priority_gap:
                add("p_priority", r, r["mean_p_priority_flagged"], allf["mean_p_priority_flagged"], tol.p_priority_gap,
                    f"{where}: its flagged zones are less certain, mean p_priority "
                    f"{r['mean_p_priority_flagged']:.2f} vs {allf['mean_p_priority_flagged']:.2f} nationally")
    return out


def explained_flag_disparities(flags: pd.DataFrame, tol) -> pd.DataFrame:
    """Groups whose flag-rate ratio is outside the band but matches their need (not findings,
    listed so that a reader sees them)."""
    lo, hi = tol.flag_rate_ratio
    f = flags[(flags["grouping"] != "all") & (flags["n"] >= tol.min_group_size)]
    out = f[~f["flag_rate_ratio"].between(lo, hi) & f["flag_need_ratio"].between(lo, hi)]
    return out.reset_index(drop=True)


def intraclass_correlation(values, groups) -> float:
    """One-way ANOVA intraclass correlation of ``values`` within ``groups`` (clipped to [0, 1]).

    Used on the normal scores of out-of-fold residuals by department: how much two zones of
    a department err alike (the stability step's ``department_correlation``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(200), 20)
    >>> v = rng.normal(size=200)[g] * np.sqrt(0.3) + rng.normal(size=4000) * np.sqrt(0.7)
    >>> round(intraclass_correlation(v, g), 1)
    0.3
    """
    v = np.asarray(values, float)
    g = np.asarray(groups)
    ok = np.isfinite(v)
    v, g = v[ok], g[ok]
    if len(v) < 3:
        return float("nan")
    codes, gi = np.unique(g.astype(str), return_inverse=True)
    k = len(codes)
    n = np.bincount(gi).astype(float)
    if k < 2 or len(v) <= k:
        return float("nan")
    mean = v.mean()
    gm = np.bincount(gi, weights=v) / n
    ssb = float((n * (gm - mean) ** 2).sum())
    ssw = float(((v - gm[gi]) ** 2).sum())
    msb, msw = ssb / (k - 1), ssw / (len(v) - k)
    n0 = (len(v) - (n ** 2).sum() / len(v)) / (k - 1)
    icc = (msb - msw) / (msb + (n0 - 1) * msw) if msb + (n0 - 1) * msw > 0 else float("nan")
    return float(np.clip(icc, 0.0, 1.0))


def residual_correlation(oof: pd.DataFrame, model: str = "lightgbm") -> dict[str, float]:
    """Per target, the within-department intraclass correlation of the normal scores of the
    out-of-fold residuals (department = first 2 or 3 characters of the commune code)."""
    out = {}
    for target, t in oof.groupby("target", sort=True):
        r = (t[model] - t["y"]).to_numpy(float)
        ok = np.isfinite(r)
        if ok.sum() < 3:
            continue
        z = np.full(len(r), np.nan)
        z[ok] = stats.norm.ppf((stats.rankdata(r[ok]) - 0.5) / ok.sum())
        codes = t["zone_code"].astype(str)
        dep = np.where(codes.str.startswith("97"), codes.str[:3], codes.str[:2])
        out[str(target)] = intraclass_correlation(z, dep)
    return out


# --------------------------------------------------------------------------- the audit
@dataclass
class FairnessResult:
    """The audit's tables and findings (``to_dict`` is ``fairness.json``)."""

    groups: pd.DataFrame
    errors: pd.DataFrame
    flags: pd.DataFrame
    findings: list[dict]
    explained: pd.DataFrame
    unmeasured: pd.DataFrame
    correlation: dict
    tolerances: dict
    scheme: str | None = None
    assumed_correlation: float | None = None

    def to_dict(self) -> dict:
        def records(df: pd.DataFrame) -> list[dict]:
            return json.loads(df.to_json(orient="records")) if df is not None and len(df) else []

        sizes = {c: self.groups[c].value_counts().sort_index().to_dict() for c in self.groups.columns}
        return {
            "groups": {c: {str(k): int(v) for k, v in d.items()} for c, d in sizes.items()},
            "tolerances": self.tolerances, "scheme": self.scheme,
            "n_findings": len(self.findings), "findings": self.findings,
            "explained_flag_disparities": records(self.explained),
            "model_error": records(self.errors), "flags": records(self.flags),
            "zones_with_oof": records(self.unmeasured),
            "residual_correlation_within_department": self.correlation,
            "assumed_correlation_in_stability": self.assumed_correlation,
        }

    def to_markdown(self, tol) -> str:
        return to_markdown(self.errors, self.flags, self.findings, tol, explained=self.explained,
                           correlation=self.correlation, assumed_correlation=self.assumed_correlation,
                           unmeasured=self.unmeasured, scheme=self.scheme)


def fairness_audit(priorities: pd.DataFrame, features: pd.DataFrame, tol, *, oof: pd.DataFrame | None = None,
                   signs: dict[str, int] | None = None, model: str = "lightgbm",
                   assumed_correlation: float | None = None) -> FairnessResult:
    """The whole audit from a run's outputs.

    Parameters
    ----------
    priorities : DataFrame
        ``priorities.csv``: ``zone_code, priority_flag, index_decile, p_priority``,
        ``priority_score`` and ``QPV2024`` (bool) or ``programmes`` text.
    features : DataFrame
        ``zone_code, population, population_density`` at the reference period.
    tol : FairnessAudit
        Groups and tolerances (``audit.fairness`` of ``conf/priority.yml``).
    oof : DataFrame, optional
        Out-of-fold predictions of one cross-validation scheme (``backtest_predictions.parquet``
        rows of ``cv_*``); without them the model-error part is empty.
    signs : dict
        Measure → +1/-1 (registry direction).
    """
    f = features.set_index(features["zone_code"].astype(str))
    codes = priorities["zone_code"].astype(str)
    if "QPV2024" in priorities:
        q = priorities["QPV2024"]
        qpv = q.astype("string").str.lower().isin(["true", "1"]).to_numpy() if q.dtype == object \
            else q.fillna(False).astype(bool).to_numpy()
    else:
        qpv = priorities.get("programmes", pd.Series("", index=priorities.index)).fillna("").astype(str) \
            .str.contains("QPV", regex=False).to_numpy()
    groups = territory_groups(codes, f["population"].reindex(codes).to_numpy(),
                              f["population_density"].reindex(codes).to_numpy() if "population_density" in f else None,
                              qpv, urban_density=tol.urban_density, size_breaks=tol.size_breaks)
    flags = flag_rates(priorities, groups, tol.need_decile)
    errors, unmeasured, corr, scheme = pd.DataFrame(), pd.DataFrame(), {}, None
    if oof is not None and len(oof):
        scheme = str(oof["scheme"].iloc[0]) if "scheme" in oof else None
        errors = error_by_group(oof, groups, signs, model=model)
        unmeasured = unmeasured_groups(groups, oof)
        corr = residual_correlation(oof, model=model)
    found = findings(errors, flags, tol, unmeasured if len(unmeasured) else None)
    return FairnessResult(groups=groups, errors=errors, flags=flags, findings=found,
                          explained=explained_flag_disparities(flags, tol), unmeasured=unmeasured,
                          correlation=corr, tolerances=tol.model_dump(mode="json"), scheme=scheme,
                          assumed_correlation=assumed_correlation)


# --------------------------------------------------------------------------- report
def to_markdown(errors: pd.DataFrame, flags: pd.DataFrame, found: list[dict], tol, *,
                explained: pd.DataFrame | None = None, correlation: dict | None = None,
                assumed_correlation: float | None = None, unmeasured: pd.DataFrame | None = None,
                scheme: str | None = None) -> str:
    """``audit/fairness.md``: findings first, then the tables."""
    lo, hi = tol.flag_rate_ratio
    L = ["# Fairness audit by territory group", "",
         "Groups: urban/rural by population density at the reference period (urban at "
         f"{tol.urban_density:g} inhabitants/km² or more; the INSEE density grid is not in the bundled data), "
         "overseas (departments 971-976) vs mainland, population size class, communes with vs without a QPV (2024). "
         "Method: `territoria.models.fairness`; tolerances: `audit.fairness` in `conf/priority.yml`; "
         "tables: `fairness.json`, `fairness_errors.csv`, `fairness_flags.csv`.", "",
         f"Tolerances: coverage more than {tol.coverage_shortfall * 100:g} points below nominal; MAE above "
         f"{tol.mae_ratio:g}× the overall; |bias| above {tol.bias_share_of_mae:.0%} of the overall MAE; flag-rate "
         f"ratio outside [{lo:g}, {hi:g}] unless the need ratio (share in the worst index decile) explains it; "
         f"flagged zones' mean p_priority more than {tol.p_priority_gap:g} below the national mean; groups of fewer "
         f"than {tol.min_group_size} zones are shown but make no finding; a group of which less than "
         f"{tol.min_measured_share:.0%} has an out-of-fold prediction is a finding (its error is largely unmeasured).",
         ""]
    L += [f"## Findings ({len(found)})", ""]
    if found:
        for f in found:
            L.append(f"* **{f['kind']}** — {f['text']}")
    else:
        L.append("None beyond the tolerances.")
    L.append("")
    if explained is not None and len(explained):
        L += ["Flag-rate disparities outside the band but in line with need (not findings):", ""]
        for r in explained.itertuples():
            L.append(f"* {r.grouping} = {r.group}: flag-rate ratio {r.flag_rate_ratio:.2f}, need ratio "
                     f"{r.need_ratio:.2f}")
        L.append("")
    L += ["## Model error and interval coverage (out-of-fold" + (f", {scheme}" if scheme else "") + ")", ""]
    if errors is None or errors.empty:
        L += ["Not available: this run has no backtest predictions (`backtest_predictions.parquet`).", ""]
    else:
        cov = [c for c in errors.columns if c.startswith("coverage_")]
        cols = ["target", "grouping", "group", "n", "mae", "mae_ratio", "bias", "bias_worsening", "spearman", *cov]
        L += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in errors[cols].itertuples(index=False):
            L.append("| " + " | ".join(_cell(v) for v in r) + " |")
        L.append("")
        L += ["`bias` = mean(prediction − outcome), in the target's unit; `bias_worsening` > 0: more worsening "
              "predicted than observed (the model would over-prioritise the group).", ""]
    if unmeasured is not None and len(unmeasured):
        L += ["Zones with an out-of-fold prediction, by group:", "", "| grouping | group | communes | with OOF |",
              "|---|---|---|---|"]
        for r in unmeasured.itertuples():
            L.append(f"| {r.grouping} | {r.group} | {r.n_zones:,} | {r.n_with_oof:,} |")
        L.append("")
    if correlation:
        L += ["Within-department correlation of the out-of-fold residuals (intraclass, normal scores): "
              + ", ".join(f"{k} {v:.2f}" for k, v in correlation.items())
              + (f"; the stability step assumes {assumed_correlation:.2f}." if assumed_correlation is not None else "."),
              ""]
    L += ["## Flags and p_priority", ""]
    cols = [c for c in ["grouping", "group", "n", "n_flagged", "flag_rate", "flag_rate_ratio", "need_rate",
                        "need_ratio", "flag_need_ratio", "mean_p_priority", "mean_p_priority_flagged",
                        "share_flagged_stable"] if c in flags.columns]
    L += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in flags[cols].itertuples(index=False):
        L.append("| " + " | ".join(_cell(v) for v in r) + " |")
    L += ["", "`need_rate`: share of the group in the worst decile of the deprivation index; `flag_need_ratio`: "
          "flag-rate ratio over need ratio (1 = flagged as much as its deprivation implies; the population factor "
          "and the trajectory move it).", ""]
    return "\n".join(L)


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else f"{v:.3f}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v)
