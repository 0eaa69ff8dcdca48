# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Auditor: one zone's explanation end to end, and fairness by group
#
# An auditor checks two things a planner takes on trust: that a zone's explanation really adds
# up to its score (here Denain, 59172, in the Nord), and that the engine's errors and flags do
# not fall unevenly on some kinds of territory (urban or rural, overseas or mainland, small or
# large communes, priority neighbourhoods of the city policy or not).
#
# The notebook reads a finished run (`territoria run`): the one named by `TERRITORIA_RUN_DIR`,
# or else one made once with small models and cached (`territoria.notebooks.run_dir()`).

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from territoria import notebooks as nb
from territoria.models.explain import check_additivity, feature_info, tree_contributions
from territoria.models.intervals import zone_groups
from territoria.models.levers import INDEX_MODEL
from territoria.models.priority import index_terms
from territoria.models.targets import (
    indicator_sign, load_model_config, measure_at, measure_periods, population_at,
)
from territoria.pipelines.explain_zone import read_priorities, zone_explanation
from territoria.pipelines.prioritise import load_engine
from territoria.registry import load_registry

pd.set_option("display.precision", 4)
pd.set_option("display.width", 160)
pd.set_option("display.max_colwidth", 80)

RUN = nb.run_dir()
CODE = "59172"
print("run folder:", RUN)

# %% [markdown]
# ## 1. What the run says about Denain
#
# The same text as `territoria explain 59172 --lang en`:

# %%
pri = read_priorities(RUN)
zone = pri.set_index("zone_code").loc[CODE]
print(zone_explanation(RUN, CODE, lang="en"))

# %% [markdown]
# ## 2. The stored explanation adds up
#
# `explanations.parquet` holds, for every zone and model, the TreeSHAP contributions of the 20
# largest features plus one `(other features)` row, the base value and the model output; for
# the composite index (`deprivation_index`) the exact domain terms. For every model,
# **base value + contributions = output** (to 1e-6), and the output is the forecast (or index)
# written in `priorities.csv` (which keeps 6 significant digits).

# %%
ex = pd.read_parquet(RUN / "explanations.parquet", filters=[("zone_code", "==", CODE)])
models = [m for m in ex["model"].unique() if m != INDEX_MODEL]
check = ex.groupby("model").agg(base_value=("base_value", "first"), contributions=("contribution", "sum"),
                                output=("model_output", "first"), rows=("feature", "size"))
check["base + contributions - output"] = check["base_value"] + check["contributions"] - check["output"]
check["in priorities.csv"] = [zone["deprivation_index"] if m == INDEX_MODEL else zone[f"pred_{m}"]
                              for m in check.index]
check

# %%
assert {"unemployment_rate", "median_income", "population", INDEX_MODEL} <= set(check.index)
assert check["base + contributions - output"].abs().max() < 1e-6
np.testing.assert_allclose(check["output"], check["in priorities.csv"], rtol=1e-5, atol=1e-9)

# %% [markdown]
# ## 3. Recomputed from the saved models and the data
#
# End to end: rebuild the run's feature matrix from the bundled data (sources cached), load the
# run's engine (its saved LightGBM models, the index and the score's norms), score every
# commune again and compute Denain's exact TreeSHAP contributions over **all** features with
# `models.explain.tree_contributions`. They must reproduce the stored rows, the forecasts and
# the priority score of the run.

# %%
fb = nb.run_features(RUN)
engine = load_engine(fb, RUN)
scored = engine.baseline()
assert np.isclose(scored.table.loc[CODE, "priority_score"], zone["priority_score"], rtol=1e-5)

phis, infos = {}, {}
for m in models:
    X, M = scored.designs[m]
    phi, base, out = tree_contributions(engine.trained[m].model, X.loc[[CODE]])
    gap = check_additivity(phi, base, out)  # raises beyond 1e-6
    assert np.isclose(out[0], check.loc[m, "output"], rtol=0, atol=1e-6)  # the stored output
    stored = ex[(ex["model"] == m) & (ex["feature"] != "(other features)")].set_index("feature")["contribution"]
    np.testing.assert_allclose(phi.loc[CODE, stored.index], stored, rtol=0, atol=1e-6)
    phis[m] = phi.loc[CODE]
    infos[m] = feature_info(M, phi.columns)
    print(f"{m:>18}: base {base[0]:+.4f} + {phi.shape[1]} contributions {phi.iloc[0].sum():+.4f} "
          f"= {out[0]:+.4f} (gap {gap:.1e}); stored top 20 reproduced")

# %% [markdown]
# The index is explained by its domain terms: the index of a zone at the national median of every
# domain, plus one term per domain.

# %%
terms, neutral = index_terms(engine.index_model, scored.features)
dterms = terms.loc[CODE]
index_now = scored.index.loc[CODE, "deprivation_index"]
print(f"neutral {neutral:.3f} + domain terms {dterms.sum():+.3f} = {neutral + dterms.sum():.3f} "
      f"(index recomputed: {index_now:.3f}; in priorities.csv: {zone['deprivation_index']:.3f})")
assert abs(neutral + dterms.sum() - index_now) < 1e-6
assert np.isclose(index_now, zone["deprivation_index"], rtol=1e-5)
dterms.sort_values(ascending=False).to_frame("index points")

# %% [markdown]
# Denain's forecast of median income, feature by feature: a waterfall from the base value (the
# average forecast) to the zone's forecast. Blue: levers (indicators a policy can move); grey:
# context; hatched: the zone's surroundings (neighbours, EPCI, department) rather than its own
# figures.

# %%
m = "median_income"
info, phi = infos[m], phis[m]
top = phi.abs().sort_values(ascending=False).index[:12]
items = list(phi[top].items()) + [("(other features)", phi.drop(top).sum())]
base_m = ex.loc[ex["model"] == m, "base_value"].iloc[0]
fig, ax = plt.subplots(figsize=(9, 5.5))
start = base_m
for i, (feat, v) in enumerate(items):
    lever = feat in info.index and info.loc[feat, "is_lever"]
    where = feat in info.index and info.loc[feat, "is_location"]
    ax.barh(i, v, left=start, color="tab:blue" if lever else "tab:grey", hatch="//" if where else None,
            edgecolor="white")
    start += v
ax.axvline(base_m, color="black", lw=0.8)
ax.axvline(start, color="tab:red", lw=1.2)
ax.margins(x=0.05)
ax.set_yticks(range(len(items)), [f for f, _ in items], fontsize=8)
ax.invert_yaxis()
ax.set(xlabel="forecast change of median income 2021→2023 (€)",
       title=f"Denain: base {base_m:+.0f} € → forecast {start:+.0f} € (red)")
fig.tight_layout()
assert np.isclose(start, check.loc[m, "output"], rtol=0, atol=1e-6)

# %% [markdown]
# ## 4. Levers vs context, by domain
#
# Each model's contributions summed by domain and split into levers and context (location
# features counted apart). Units are the model's own (points of unemployment, euros, % of
# population).

# %%
split = []
for m, phi in phis.items():
    info = infos[m]
    kind = np.where(info["is_location"], "location", np.where(info["is_lever"], "lever", "context"))
    split.append(pd.DataFrame({"model": m, "domain": info["domain"].to_numpy(), "kind": kind,
                               "contribution": phi.reindex(info.index).to_numpy()}))
split = pd.concat(split, ignore_index=True)
by_domain = split.pivot_table(index=["model", "domain"], columns="kind", values="contribution",
                              aggfunc="sum", fill_value=0.0)
by_domain["total"] = by_domain.sum(axis=1)
# grouping loses nothing: the domains add up to each model's contributions
for m, phi in phis.items():
    assert abs(by_domain.loc[m, "total"].sum() - phi.sum()) < 1e-9
by_domain

# %%
fig, axes = plt.subplots(1, len(phis), figsize=(13, 3.8))
for ax, (m, g) in zip(axes, by_domain.groupby(level="model")):
    g = g.droplevel("model").drop(columns="total")
    g.plot.barh(stacked=True, ax=ax, legend=ax is axes[0],
                color={"lever": "tab:blue", "context": "tab:grey", "location": "tab:orange"})
    ax.axvline(0, color="black", lw=0.6)
    ax.set(title=m, ylabel="")
fig.suptitle("Denain: contributions by domain, levers vs context vs location")
fig.tight_layout()

# %% [markdown]
# The same explanation in points of priority score (`score_points.parquet`: through the index
# and through each model), from which the run's top levers are read. `location_share` in
# `priorities.csv` is the share of those points that comes from the surroundings.

# %%
pts = pd.read_parquet(RUN / "score_points.parquet", filters=[("zone_code", "==", CODE)])
absolute = pts.assign(a=pts["points"].abs()).groupby("is_location")["a"].sum()
share = absolute.get(True, 0.0) / absolute.sum()
assert np.isclose(share, zone["location_share"], rtol=1e-5)
print(f"location share {share:.1%}; top levers: {zone['top_levers_en']}")
pts.sort_values("points", key=abs, ascending=False).head(10)

# %% [markdown]
# ## 5. Fairness by group
#
# Groups (as the run's interval coverage uses them, `models.intervals.zone_groups`): density
# class (urban from 300 inhabitants per km²), territory (overseas departments or mainland),
# population size class, and whether the commune holds a priority neighbourhood of the city
# policy (QPV 2024). Designations never enter the models; they are only compared here.

# %%
audit = sorted(p.relative_to(RUN).as_posix() for p in (RUN / "audit").glob("*")) \
    if (RUN / "audit").exists() else []
fairness_tables = [p for p in audit if "fair" in p and p.endswith(".csv")]
print("audit/:", audit)
print("fairness tables written by the run:", fairness_tables or "none")
for p in fairness_tables:  # shown as the run wrote them; the notebook computes its own below
    print(p)
    display(pd.read_csv(RUN / p))  # noqa: F821 (IPython's display)

# %%
features = pd.read_parquet(RUN / "features.parquet", columns=["zone_code", "zone", "population_density"])
features = features.set_index("zone_code")


def groups_at(codes: pd.Index, origin: int) -> pd.DataFrame:
    """Density class, territory, size class (at ``origin``) and QPV of the zones ``codes``."""
    pop = population_at(fb.panel, origin).reindex(codes)
    dens_periods = measure_periods(fb.panel, "population_density", upto=origin)
    density = measure_at(fb.panel, "population_density", dens_periods[-1]).reindex(codes)
    g = zone_groups(pop, density, features["zone"].reindex(codes), load_model_config().intervals.urban_density)
    qpv = pri.set_index("zone_code")["programmes"].reindex(codes).fillna("").str.contains("QPV")
    g["qpv"] = np.where(qpv, "with QPV", "without QPV")
    return g.fillna("unknown")  # communes without a population figure at that vintage


groups = groups_at(pd.Index(pri["zone_code"]), fb.reference_period)
GROUPINGS = list(groups.columns)
pd.concat({c: groups[c].value_counts() for c in GROUPINGS}, names=["grouping", "group"]).rename("communes").to_frame()

# %% [markdown]
# **Flag rates.** Share of communes on the priority list, and share of the inhabitants they hold,
# by group. A gap is not an error by itself (deprivation is not evenly spread), but an auditor
# should see it and compare it with the index.

# %%
flags = pri.set_index("zone_code")[["priority_flag", "priority_score", "deprivation_index", "population"]]
flags = flags.join(groups)
flags = flags[flags["priority_score"].notna()]
rows = []
for grouping in GROUPINGS:
    for label, g in flags.groupby(grouping):
        inhabitants = g["population"].sum()
        flagged_inhabitants = g.loc[g["priority_flag"].astype(bool), "population"].sum()
        rows.append({"grouping": grouping, "group": label, "communes": len(g),
                     "flag_rate": g["priority_flag"].mean(),
                     "population_flagged": flagged_inhabitants / inhabitants if inhabitants > 0 else np.nan,
                     "mean_score": g["priority_score"].mean(), "mean_index": g["deprivation_index"].mean()})
flag_rates = pd.DataFrame(rows).set_index(["grouping", "group"])
for grouping in GROUPINGS:  # each grouping partitions the scored communes
    assert flag_rates.loc[grouping, "communes"].sum() == len(flags)
assert flag_rates["flag_rate"].between(0, 1).all()
flag_rates

# %% [markdown]
# **Error rates.** The backtest's out-of-fold predictions (`backtest_predictions.parquet`,
# department-blocked folds, communes of at least 2,000 inhabitants at the origin) by group and
# target: mean absolute error of the model and of the no-change baseline, mean signed error
# (bias: > 0 means the model forecasts too high a change), and for the worst decile of
# changes (the "deteriorating" zones the backtest labels) the share the model misses (false
# negative rate; picking a tenth of the zones at random would miss nine in ten) and the share
# of other zones it wrongly puts there (false positive rate). Groups are taken at each target's
# origin.

# %%
config, registry = load_model_config(), load_registry()
bp = pd.read_parquet(RUN / "backtest_predictions.parquet")
bp = bp[(bp["scheme"] == "cv_departement") & bp["scored"].eq(True)]  # smaller communes: audit/fairness.md
metrics = json.loads((RUN / "metrics.json").read_text(encoding="utf-8"))["metrics"]
rows = []
for target, t in bp.groupby("target"):
    spec = config.targets[target]
    t = t.set_index("zone_code")
    t["deteriorating"] = t["deteriorating"].astype(bool)  # object once concatenated with temporal rows
    g = groups_at(t.index, spec.origin)
    sign = indicator_sign(spec.measure, registry)  # worse = larger sign * change
    pred_bad = sign * t["lightgbm"] >= np.quantile(sign * t["lightgbm"], 1 - config.deteriorating_quantile)
    # the overall MAE is the run's metrics.json figure
    assert abs(np.mean(np.abs(t["y"] - t["lightgbm"])) - metrics[target]["cv_departement"]["lightgbm"]["mae"]) < 1e-9
    for grouping in GROUPINGS:
        for label, idx in g.groupby(grouping).groups.items():
            s, bad, flagged = t.loc[idx], t.loc[idx, "deteriorating"], pred_bad.loc[idx]
            rows.append({"target": target, "grouping": grouping, "group": label, "n": len(s),
                         "mae_model": np.mean(np.abs(s["y"] - s["lightgbm"])),
                         "mae_no_change": np.mean(np.abs(s["y"] - s["persistence_zero"])),
                         "bias": np.mean(s["lightgbm"] - s["y"]),
                         "deteriorating": bad.mean(),
                         "false_negative_rate": (bad & ~flagged).sum() / bad.sum() if bad.any() else np.nan,
                         "false_positive_rate": (~bad & flagged).sum() / (~bad).sum() if (~bad).any() else np.nan})
errors = pd.DataFrame(rows).set_index(["target", "grouping", "group"])
rates = errors[["false_negative_rate", "false_positive_rate"]]
assert ((rates >= 0) & (rates <= 1) | rates.isna()).all().all()
for (target, grouping), e in errors.groupby(level=["target", "grouping"]):
    assert e["n"].sum() == (bp["target"] == target).sum()
errors

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
shown = flag_rates[flag_rates["communes"] >= 20]  # groups of a handful of communes are in the table only
fr = shown["flag_rate"]
fr.index = [f"{a}: {b}" for a, b in fr.index]
fr.plot.barh(ax=axes[0], color="tab:red")
axes[0].axvline(flags["priority_flag"].mean(), color="black", ls="--", lw=0.8)
axes[0].set(title="share of communes on the priority list (dashed: all)", ylabel="")
axes[0].invert_yaxis()
fnr = errors.loc[errors["n"] >= 20, "false_negative_rate"].unstack("target")
fnr.index = [f"{a}: {b}" for a, b in fnr.index]
fnr.plot.barh(ax=axes[1])
axes[1].axvline(1 - config.deteriorating_quantile, color="black", ls="--", lw=0.8)
axes[1].set(title="deteriorating zones missed by the model (dashed: a random pick)", ylabel="")
axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
axes[1].invert_yaxis()
fig.tight_layout()

# %% [markdown]
# Interval coverage by the same groups, as the run wrote it (`interval_coverage_by_group.csv`):
# the 80 % intervals should hold about 80 % of the observed changes in every group, not only
# overall.

# %%
coverage = pd.read_csv(RUN / "interval_coverage_by_group.csv")
coverage = coverage[coverage["level"].round(2) == 0.8]
coverage.pivot_table(index=["grouping", "group"], columns="target", values="coverage")
