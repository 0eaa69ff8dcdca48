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
# # 02 · Planner: the priority list of one department, its map, and a scenario
#
# A planner of the Nord (59) wants to know which of the department's communes the engine puts
# first, where they are, and how the list would read if some levers moved. This notebook reads
# a finished run (`territoria run`): the one named by the environment variable
# `TERRITORIA_RUN_DIR`, or else one made once with small models and cached
# (`territoria.notebooks.run_dir()`; the first call takes a few minutes).

# %%
from pathlib import Path

import geopandas as gpd
import matplotlib.pyplot as plt
from matplotlib import patheffects
import numpy as np
import pandas as pd

from territoria import notebooks as nb
from territoria.models.scenarios import CAVEAT_EN, load_scenario
from territoria.pipelines.explain_zone import read_priorities
from territoria.pipelines.prioritise import load_engine, run_scenario
from territoria.registry import load_registry

pd.set_option("display.precision", 2)
pd.set_option("display.width", 160)
pd.set_option("display.max_colwidth", 90)

RUN = nb.run_dir()
DEPARTMENT = "59"
print("run folder:", RUN)

# %% [markdown]
# ## 1. The priority list of the department
#
# `priorities.csv` has one row per commune of France, sorted by priority. The score (0–100)
# combines the composite deprivation index with the forecast trajectory of unemployment, median
# income and population, damped for small communes; the 80 % interval and the best/worst rank
# it allows say how firm the rank is. `priority_flag` marks the national priority list (about
# the top tenth, with hysteresis so that zones do not flicker in and out between runs).

# %%
pri = read_priorities(RUN)
dep = pri[pri["department"] == DEPARTMENT].sort_values("priority_rank_department")
n_scored = int(pri["priority_score"].notna().sum())
print(f"{len(dep):,} communes in the department, {int(dep['priority_flag'].sum())} on the national list "
      f"({dep['priority_flag'].mean():.1%} against {pri['priority_flag'].mean():.1%} nationally)")
cols = ["zone_code", "zone_name", "population", "priority_score", "priority_score_low", "priority_score_high",
        "priority_rank", "priority_rank_best", "priority_rank_worst", "priority_rank_department",
        "deprivation_index", "flag_status", "programmes"]
dep[cols].head(15)

# %%
# What the planner relies on: the department's ranks are its communes' national order.
assert dep["zone_code"].is_unique and len(dep) > 600
scored = dep[dep["priority_score"].notna()]
assert scored.sort_values("priority_rank")["priority_rank_department"].is_monotonic_increasing
assert (scored["priority_score_low"] <= scored["priority_score"]).all()
assert (scored["priority_score"] <= scored["priority_score_high"]).all()
assert (scored["priority_rank_best"] <= scored["priority_rank"]).all()
assert (scored["priority_rank"] <= scored["priority_rank_worst"]).all()

# %% [markdown]
# Why the first ones are there: the levers behind each score (indicators a policy can act on,
# with their points of score), the flag's reason, and the diagnostics.

# %%
dep[["zone_name", "flag_reason", "top_levers_en"]].head(5)

# %% [markdown]
# ## 2. Map of the department
#
# The polygons come from `priorities.gpkg` (WGS84, the same columns as the CSV), drawn in
# Lambert-93 with matplotlib (a static, offline map; the run's `map.html` is the interactive
# one). Priority communes are outlined in black.

# %%
geo = gpd.read_file(RUN / "priorities.gpkg", layer="priorities", where=f"department = '{DEPARTMENT}'",
                    columns=["zone_code", "zone_name", "priority_score", "priority_flag"])
geo = geo.to_crs(2154)
assert set(geo["zone_code"]) == set(dep["zone_code"])
fig, ax = plt.subplots(figsize=(9, 9))
geo.plot(column="priority_score", cmap="YlOrRd", scheme="Quantiles", k=5, legend=True, ax=ax,
         edgecolor="white", linewidth=0.1, missing_kwds={"color": "lightgrey"},
         legend_kwds={"title": "priority score (quintiles)", "loc": "lower left"})
geo[geo["priority_flag"].astype(bool)].boundary.plot(ax=ax, color="black", linewidth=0.6)
for _, r in geo.sort_values("priority_score", ascending=False).head(5).iterrows():
    p = r.geometry.representative_point()
    ax.annotate(r["zone_name"], (p.x, p.y), fontsize=8, xytext=(4, 4), textcoords="offset points",
                path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")])
ax.set_axis_off()
ax.set_title(f"Priority score of the communes of the Nord ({DEPARTMENT}); black outline: priority list")

# %% [markdown]
# The list in EPCI terms: how many priority communes and inhabitants each intercommunality
# holds (the EPCI is who usually carries a programme).

# %%
flagged = dep[dep["priority_flag"].astype(bool)]
by_epci = (flagged.groupby("epci_name")
           .agg(priority_communes=("zone_code", "size"), inhabitants=("population", "sum"),
                best_rank=("priority_rank", "min"))
           .sort_values("inhabitants", ascending=False))
assert by_epci["priority_communes"].sum() == len(flagged)
by_epci.head(10)

# %% [markdown]
# ## 3. A scenario: what if vacancy fell and a GP settled in Denain and two neighbours?
#
# `docs/scenarios/vacancy_denain.yml` lowers the share of vacant dwellings by 2 points and adds
# one general practitioner in Denain and two neighbouring communes of its agglomeration (see
# `docs/SCENARIOS.md`). The engine of the run (its saved models, the same index reference,
# norms and policy) rebuilds the feature matrix with the changed panel — neighbours' context
# features move too — and re-scores every commune, so that scores before and after are
# comparable.

# %%
def repository_file(relative: str) -> Path:
    """A file of the repository, from the notebook's folder or any folder below the root."""
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / relative).exists():
            return folder / relative
    raise FileNotFoundError(relative)


fb = nb.run_features(RUN)  # the run's feature build (sources cached): what scenarios rebuild from
scenario = load_scenario(repository_file("docs/scenarios/vacancy_denain.yml"), load_registry(), fb.identity)
print(scenario.description)
print([c.model_dump(exclude_none=True) for c in scenario.changes])
fb.identity.loc[scenario.zones.codes, ["zone_name", "epci_name"]]

# %%
engine = load_engine(fb, RUN)
WORK = nb.work_dir("02_planner")
moves = run_scenario(engine, scenario, WORK)
print(CAVEAT_EN)
show = ["zone_code", "zone_name", "priority_score_before", "priority_score_after", "score_change",
        "priority_rank_before", "priority_rank_after", "rank_change", "priority_flag_before",
        "priority_flag_after", "flag_change", "in_scenario"]
moves[show]

# %%
inside = moves[moves["in_scenario"]].set_index("zone_code")
# The scenario's zones are the three of the file, and their "before" is the run's own list.
assert set(inside.index) == set(scenario.zones.codes) and len(inside) == 3
run_scores = pri.set_index("zone_code").loc[inside.index]
np.testing.assert_allclose(inside["priority_score_before"], run_scores["priority_score"], atol=1e-3)
assert (inside["priority_rank_before"] == run_scores["priority_rank"]).all()
# Vacancy and GP density enter the composite index: fewer vacant dwellings and one more GP
# lower it (the forecasts, learned associations, may move either way).
assert (inside["deprivation_index_after"] < inside["deprivation_index_before"]).all()
assert (WORK / "scenarios" / f"{scenario.name}.csv").exists()

# %% [markdown]
# How the ranks move (1 = first priority of France): each line joins a zone's national rank
# before and after the scenario, with its 80 % interval of ranks before.

# %%
fig, ax = plt.subplots(figsize=(8, 3.2))
list_end = int(pri["priority_flag"].sum())
for i, (code, r) in enumerate(inside.iterrows()):
    best, worst = run_scores.loc[code, ["priority_rank_best", "priority_rank_worst"]]
    ax.plot([best, worst], [i, i], color="grey", lw=8, alpha=0.35, solid_capstyle="butt")
    ax.annotate("", xy=(r["priority_rank_after"], i), xytext=(r["priority_rank_before"], i),
                arrowprops={"arrowstyle": "->", "color": "tab:blue", "lw": 1.8})
    ax.text(r["priority_rank_after"], i + 0.22, f"{r['zone_name']}: {r['priority_rank_before']:.0f} → "
            f"{r['priority_rank_after']:.0f}", fontsize=8)
right = max(run_scores["priority_rank_worst"].max(), inside["priority_rank_after"].max()) * 1.15
ax.set(yticks=[], xlim=(0, right), ylim=(-0.6, len(inside) - 0.2),
       xlabel=f"national rank among {n_scored:,} communes (1 = first priority; grey: 80 % range before)",
       title=f"Ranks before → after the scenario ({list_end:,} communes on the priority list)")
fig.tight_layout()

# %% [markdown]
# And the forecasts behind the move: how the scenario changes each key measure's forecast
# (unemployment in points, median income in euros, population in %), with the new 80 %
# interval.

# %%
rows = {}
for m, trained in engine.trained.items():
    span = f"{engine.period}→{engine.period + trained.spec.horizon}"
    rows[(m, span, "before")] = inside[f"pred_{m}_before"]
    rows[(m, span, "after")] = inside[f"pred_{m}_after"]
    rows[(m, span, "after, 80 % interval")] = (inside[f"pred_{m}_after_low"].map("{:+.2f}".format) + " ; "
                                                + inside[f"pred_{m}_after_high"].map("{:+.2f}".format))
forecasts = pd.DataFrame(rows).set_index(inside["zone_name"])
forecasts.T
