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
# # 01 · Data scientist: train a trajectory model and compare it with the baselines
#
# This notebook builds the feature matrix from the official data bundled with territoria
# (INSEE, IGN, ANCT, ARCEP… see `data/SOURCES.md`), trains **one trajectory target** — the
# change of each commune's median disposable income between 2019 and 2021 — and compares it
# with the naive baselines **on the same department-blocked folds**. It then reads back what
# the training logged in the embedded MLflow store.
#
# To stay within the time budget of CI the models are small (40 trees, 3 folds instead of
# 400 trees and 5 folds): `conf/models.yml` holds the real defaults and
# `benchmarks/backtest.py` measures them. Every number below is computed from the bundled
# data when the notebook runs.

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from territoria import notebooks as nb
from territoria.models.backtest import BASELINES, MODEL
from territoria.models.baselines import baseline_predictions
from territoria.models.metrics import spearman
from territoria.models.targets import load_model_config
from territoria.models.tracking import default_tracking_uri
from territoria.pipelines.build_features import run_build_features
from territoria.pipelines.train import run_train

pd.set_option("display.precision", 3)
pd.set_option("display.width", 160)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by shap

# %% [markdown]
# ## 1. Features
#
# `run_build_features` reads every official file, maps the former commune codes to the COG
# 2026, computes the indicators of the registry (`conf/indicators/`) and builds one row per
# commune at the reference period t = 2021, from data dated ≤ t only. The parsed official
# files are cached in the output folder (`.cache`), which the three notebooks share
# (`territoria.notebooks.features_dir()`): only the first build reads the official formats.

# %%
fb = run_build_features(out_dir=nb.features_dir())
print(fb.summary())

# %% [markdown]
# Each feature records its indicator, its domain, whether a policy can move it (*lever*) or
# not (*context*), and the vintages it read. The count of features by domain:

# %%
fb.meta.pivot_table(index="domain", columns="is_lever", values="feature", aggfunc="count", fill_value=0) \
    .rename(columns={True: "lever", False: "context"})

# %%
# What the rest of the notebook relies on: one row per commune, no value dated after t.
assert fb.features["zone_code"].is_unique and len(fb.features) == len(fb.identity)
assert (fb.meta["period_to"].dropna() <= fb.reference_period).all()

# %% [markdown]
# ## 2. One target, small models
#
# The target is declared in `conf/models.yml`; the notebook keeps it as the only *key*
# target, so that the training stage backtests and trains it alone. Small models are weaker
# than the configured ones: the comparison below says how this small one fares, not how the
# default does (`benchmarks/backtest.py`).

# %%
TARGET = "median_income_2019_2021"
WORK = nb.work_dir("01_data_scientist")
config = load_model_config(nb.small_models_conf(WORK / "models_small.yml", key_targets=[TARGET]))
spec = config.targets[TARGET]
print(spec)
print("model:", config.model)
print("cv:", config.cv)

# %% [markdown]
# `run_train` (the `territoria train` stage) computes the composite index, backtests the key
# target with `models.backtest` (LightGBM and every baseline on the same folds, departments
# held out together so that no zone is scored by a model that saw its neighbours), then fits
# the final model on all zones, forecasts 2021→2023 and logs the run to MLflow.

# %%
res = run_train(fb, WORK, config=config)
bt = res.backtest
{k: round(v, 1) for k, v in res.timings.items()}

# %% [markdown]
# ## 3. Model vs baselines on the same folds
#
# Spearman ρ (ranking of the changes), R², MAE (euros) and precision/recall of the worst
# decile, out of fold, on the communes of at least 2,000 inhabitants. The baselines:
# *persistence* (no change), *last trend* (the previous change, scaled), *spatial lag* (the
# neighbours' previous change) and a *ridge* regression fitted on the same features and folds.

# %%
summary = bt.summary("cv_departement").set_index("model")
summary

# %% [markdown]
# The ratio of the model's Spearman ρ to the best naive baseline's and to the best baseline's
# (ridge included), and what the table says, in words. *Persistence* predicts no change for every
# commune: it ranks nothing, so its Spearman ρ is undefined.

# %%
ratios = bt.ratios().set_index("target").loc[TARGET]
for base in BASELINES:
    verdict = "beats" if summary.loc[MODEL, "mae"] < summary.loc[base, "mae"] else "does not beat"
    print(f"LightGBM {verdict} {base} on MAE: {summary.loc[MODEL, 'mae']:.0f} € vs {summary.loc[base, 'mae']:.0f} €")
ratios

# %%
# the scored zones (the fairness audit also reads the rows of smaller communes, scored False)
bp = bt.predictions
oof = bp[(bp["target"] == TARGET) & (bp["scheme"] == "cv_departement") & bp["scored"].eq(True)]
oof = oof.set_index("zone_code")
dep = fb.identity["departement"].reindex(oof.index)
print(f"{len(oof):,} communes scored in {oof['fold'].nunique()} folds of "
      f"{dep.nunique()} departments")

# Same folds, same zones: every department sits in one fold, every model scored every zone.
assert (oof.groupby(dep)["fold"].nunique() == 1).all()
assert oof[[MODEL, "ridge", "persistence_zero"]].notna().all().all()
assert summary.loc[list((MODEL, *BASELINES)), "n"].nunique() == 1
# The fitting-free baselines are functions of the panel at the origin: recomputing them agrees.
again = baseline_predictions(fb.panel, spec, fb.graph, oof.index)
for col in again.columns:
    np.testing.assert_allclose(oof[col], again[col], equal_nan=True)
# The table's Spearman is the rank correlation of these out-of-fold predictions.
assert abs(spearman(oof["y"], oof[MODEL]) - summary.loc[MODEL, "spearman"]) < 1e-9

# %% [markdown]
# Observed change against the out-of-fold prediction, for the model and the best naive
# baseline (each point is a commune; the diagonal is a perfect forecast):

# %%
best_naive = ratios["best_naive_baseline"]
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True, sharey=True)
lims = np.nanpercentile(np.r_[oof["y"], oof[MODEL], oof[best_naive]], [1, 99])
for ax, col in zip(axes, [MODEL, best_naive]):
    ax.scatter(oof[col], oof["y"], s=4, alpha=0.3)
    ax.plot(lims, lims, color="black", lw=0.8)
    ax.set(xlim=lims, ylim=lims, title=f"{col}: Spearman {summary.loc[col, 'spearman']:.3f}",
           xlabel="predicted change 2019→2021 (€)", ylabel="observed change (€)")
fig.tight_layout()

# %% [markdown]
# ## 4. What MLflow recorded
#
# The training wrote an embedded MLflow store next to its outputs (`mlflow.db`, SQLite, and
# `mlruns/`). Any MLflow client reads it; `mlflow ui --backend-store-uri sqlite:///…/mlflow.db`
# browses it (that needs the full `mlflow` package).

# %%
uri = default_tracking_uri(WORK)
client = MlflowClient(tracking_uri=uri, registry_uri=uri)
run_id = res.run_ids[TARGET]
run = client.get_run(run_id)
print(uri)
print(run.info.run_name, run.info.status, "· data fingerprint", run.data.tags["territoria.data_fingerprint"][:12])
pd.Series({k: v for k, v in run.data.params.items() if k.startswith(("model.", "target.", "as_of", "seed"))})

# %% [markdown]
# The run's metrics are named `<target>/<model>/<scheme>/<metric>`: the table of section 3,
# read back from MLflow.

# %%
logged = pd.Series(run.data.metrics).rename("value").rename_axis("key").reset_index()
logged[["target", "model", "scheme", "metric"]] = logged["key"].str.split("/", expand=True)
keep = ["spearman", "r2", "mae", "precision_at_10", "recall_at_10"]
from_mlflow = (logged[logged["metric"].isin(keep) & logged["model"].isin([MODEL, *BASELINES])]
               .pivot(index="model", columns="metric", values="value")
               .reindex(index=[MODEL, *BASELINES], columns=keep))
from_mlflow

# %%
# MLflow holds exactly the backtest's figures.
np.testing.assert_allclose(from_mlflow.to_numpy(), summary.loc[from_mlflow.index, keep].to_numpy(), rtol=1e-9)

fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
colours = ["tab:blue" if m == MODEL else "tab:grey" for m in from_mlflow.index]
for ax, metric in zip(axes, ["spearman", "mae", "precision_at_10"]):
    from_mlflow[metric].plot.barh(ax=ax, color=colours)
    ax.axvline(0, color="black", lw=0.6)
    ax.set(title=metric, ylabel="")
    ax.invert_yaxis()
fig.suptitle(f"{TARGET}: LightGBM vs baselines, department-blocked CV (read from MLflow)")
fig.tight_layout()

# %% [markdown]
# The model is registered as `territoria-median_income` with the alias `champion`; the run
# also carries the feature list with its registry metadata, the data files' SHA-256, the
# booster (LightGBM text format) and the SHAP values of a seeded sample of 2,000 training zones.

# %%
mv = client.get_model_version_by_alias("territoria-median_income", "champion")
assert mv.run_id == run_id
print(f"territoria-median_income v{mv.version} ← run {mv.run_id[:8]}, source {mv.source}")
sorted(a.path for a in client.list_artifacts(run_id))

# %%
shap_path = client.download_artifacts(run_id, "shap/shap_values.parquet", str(WORK))
shap_values = pd.read_parquet(shap_path)
features = pd.read_csv(client.download_artifacts(run_id, "features/features.csv", str(WORK)))
importance = (shap_values.drop(columns=["zone_code", "base_value"], errors="ignore").abs().mean()
              .rename("mean_abs_shap").rename_axis("feature").reset_index()
              .merge(features[["feature", "domain", "is_lever"]], on="feature", how="left"))
by_domain = importance.groupby("domain")["mean_abs_shap"].sum().sort_values()
ax = by_domain.plot.barh(figsize=(6, 3.5), title="mean |SHAP| by domain (€ of predicted change)")
ax.set_ylabel("")
importance.sort_values("mean_abs_shap", ascending=False).head(10)
