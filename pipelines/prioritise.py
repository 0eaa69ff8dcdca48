"""Pipeline ``prioritise``: priority score, flags, clusters, explanations and scenarios.

Wiring only; the node functions live in :mod:`territoria.models` (priority, explain, levers,
diagnostics, programmes, clusters, scenarios). Outputs under ``out_dir`` (atomic writes):

``priorities.csv``, ``priorities.gpkg``
    one row per commune: identity, population, composite index and domain scores, predicted
    trajectory with its 80 % interval, priority score, interval, ranks (national, department,
    EPCI), flags with status and history, diagnostics, cluster, top levers (fr and en),
    programmes covering the zone.
``explanations.parquet``
    long format ``zone_code, model, feature, domain, is_lever, feature_value, contribution,
    base_value, model_output``: TreeSHAP of every trajectory model for every zone (top 20
    features per zone and model plus one ``(other features)`` row, so rows add up to the
    output), and the composite index's exact domain terms (``model = deprivation_index``).
``score_points.parquet``
    the priority score in points per zone and indicator (index and models), own vs location.
``coverage_gaps.csv``, ``clusters.csv``, ``priority_policy.json``
    programme coverage gaps, border-crossing clusters, and the policy and norms used.
``audit/stability.json``, ``audit/stability.md``, ``audit/stability_replicates.csv``, ``audit/stability_zones.csv``, ``audit/stability_refits.csv``
    the stability of the list (:mod:`territoria.models.stability`): replicates of the scoring
    with inputs perturbed within their plausible error, around replicate models of the training
    sample (the cross-validation's fold models as jackknife replicates, or bootstrap refits);
    each zone's probability of being flagged is also the ``p_priority`` column of
    ``priorities.csv``.
``models/<measure>/``
    the trained models (LightGBM text + JSON, no pickle) that ``territoria scenario`` reuses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from territoria.errors import DataError
from territoria.io import write_atomic, write_csv, write_csv_rounded, write_json, write_parquet
from territoria.memory import release_free_memory
from territoria.models import clusters as clu
from territoria.models import diagnostics as diag
from territoria.models import programmes as prog
from territoria.models import stability as stab
from territoria.models.backtest import FeatureCache, fit_regressor, make_regressor, predict_frame, prepare_target
from territoria.models.bootstrap import BootstrapForecasts, bootstrap_forecasts, fold_replicates
from territoria.models.counterfactual import greedy_exit, lever_space, shift_rows
from territoria.models.explain import (
    check_additivity, global_importance, importance_by_domain, interaction_hints,
    tidy_contributions, tree_contributions,
)
from territoria.models.index import DeprivationIndex
from territoria.models.levers import INDEX_MODEL, index_points, indicator_points, model_points, top_levers
from territoria.models.persist import load_trained, save_trained
from territoria.models.priority import (
    PriorityConfig, flag_priorities, index_terms, load_priority_config, priority_table, score_factors,
)
from territoria.models.scenarios import CAVEAT_EN, CAVEAT_FR, Scenario, apply_to_panel, compare, selected_zones
from territoria.models.shap_figures import plot_all_figures, plot_sample
from territoria.models.targets import ModelConfig, indicator_sign, load_model_config
from territoria.models.trajectory import design_matrix
from territoria.pipelines.build_features import FeatureBuild, build_feature_matrix
from territoria.pipelines.cache import ResultCache, load_cached
from territoria.verify import git_commit
from territoria.registry import load_registry
from territoria.workers import SideProcess

N_TOP_FEATURES = 20


@dataclass
class Scored:
    """One scoring of every zone: index, forecasts, priority table and design matrices."""

    features: pd.DataFrame  # index: zone code
    meta: pd.DataFrame
    index: pd.DataFrame
    predictions: pd.DataFrame
    table: pd.DataFrame
    designs: dict[str, tuple[pd.DataFrame, pd.DataFrame]]
    diagnostics: pd.DataFrame
    #: the index's normalised indicators of ``features`` (its terms, points and the stability
    #: audit read them again)
    normalised: pd.DataFrame | None = None


def _forecasts_of(forecasts: pd.DataFrame | None, measure: str, zones: pd.Index, origin: int,
                  horizon_end: int) -> pd.DataFrame | None:
    """The rows of ``forecasts`` (:func:`~territoria.models.backtest.predict_frame`'s layout)
    of ``measure`` from ``origin`` to ``horizon_end`` for exactly ``zones``, in their order;
    None unless every zone has one."""
    if forecasts is None or not len(forecasts):
        return None
    rows = forecasts[(forecasts["target"] == measure) & (forecasts["origin"] == origin)
                     & (forecasts["horizon_end"] == horizon_end)]
    if len(rows) != len(zones) or not zones.is_unique:
        return None
    # positions, not isin or reindex: both convert Arrow strings one by one
    pos = zones.get_indexer(rows["zone_code"])
    if (pos < 0).any() or np.unique(pos).size != len(pos):
        return None
    order = np.empty(len(pos), dtype=np.intp)
    order[pos] = np.arange(len(pos))
    return rows.iloc[order].reset_index(drop=True)


@dataclass
class PriorityEngine:
    """Scores zones from a feature matrix with a fitted index and trained trajectory models.

    The same engine scores the run's baseline and every scenario, so that their scores,
    ranks and flags are comparable (same index reference, same z-score norms, same policy).
    """

    fb: FeatureBuild
    index_model: DeprivationIndex
    trained: dict[str, object]  # measure -> TrainedTarget
    config: PriorityConfig = field(default_factory=load_priority_config)
    previous: pd.DataFrame | None = None
    norms: dict | None = None

    def __post_init__(self) -> None:
        self.registry = load_registry()
        self.period = int(self.fb.reference_period)
        self.signs = {m: indicator_sign(m, self.registry) for m in self.config.trajectory.measures}

    def score(self, features: pd.DataFrame, meta: pd.DataFrame, panel: pd.DataFrame,
              design: Callable[[str], tuple[pd.DataFrame, pd.DataFrame]] | None = None,
              forecasts: pd.DataFrame | None = None) -> Scored:
        """Index, forecasts, priority table and diagnostics of every zone of ``features``.

        ``design(measure)`` gives a model's design matrix of these features (default: built
        from ``features``, ``meta`` and ``panel``). ``forecasts`` are these models' forecasts
        of these designs already made (the training stage's); a measure they do not cover
        for every zone is predicted here."""
        F = features.set_index("zone_code")
        normalised = self.index_model.normalise(F)
        index = self.index_model.transform(F, normalised)
        given, forecasts, designs = forecasts, [], {}
        for measure, trained in self.trained.items():
            if design is not None:
                X, M = design(measure)
            else:
                X, M = design_matrix(features, meta, panel, self.fb.graph, self.fb.identity, self.registry,
                                     measure, self.period, select=False)
            X = X.reindex(columns=trained.columns)
            M = M.set_index("feature").reindex(trained.columns).rename_axis("feature").reset_index()
            designs[measure] = (X, M)
            end = self.period + trained.spec.horizon
            made = _forecasts_of(given, measure, X.index, self.period, end)
            forecasts.append(made if made is not None else predict_frame(trained, X, self.period, end))
        predictions = pd.concat(forecasts, ignore_index=True)
        table, norms = priority_table(index, predictions, self.fb.identity, F["population"],
                                      self.config, self.signs, self.norms)
        if self.norms is None:
            self.norms = norms
        dflags = diag.diagnostic_flags(features, meta, index.filter(regex=r"^domain_[a-z]+$"))
        flags = flag_priorities(table, dflags["flag_cumulated"], self.config.flags, self.period,
                                self.previous)
        table = table.join(flags).join(dflags)
        return Scored(F, meta, index, predictions, table, designs, dflags, normalised)

    def baseline(self, forecasts: pd.DataFrame | None = None) -> Scored:
        """The run's own scoring: the design matrices the training stage built for its
        forecasts, and those ``forecasts`` (``predictions.parquet``) when given."""
        cache = FeatureCache.of(self.fb)
        return self.score(self.fb.features, self.fb.meta, self.fb.panel,
                          lambda measure: cache.design(measure, self.period, self.registry, select=False),
                          forecasts)

    def scenario(self, sc: Scenario) -> tuple[Scored, pd.Index]:
        """Re-score every zone with the scenario applied to the panel (features rebuilt)."""
        zones = selected_zones(sc.zones, self.fb.identity)
        panel = apply_to_panel(self.fb.panel, sc, zones, self.registry, self.period)
        features, meta = build_feature_matrix(panel, self.fb.identity, self.fb.graph, self.fb.townhalls,
                                              self.fb.points, self.registry, self.fb.params, self.period,
                                              access_memo=self.fb.access_memo)
        return self.score(features, meta, panel), zones

    def counterfactual(self, scored: Scored, zone: str, max_steps: int = 40) -> dict:
        """Smallest lever change found that takes ``zone`` out of the list (see
        :mod:`territoria.models.counterfactual`)."""
        t = scored.table
        if zone not in t.index:
            raise DataError("zone", f"no zone '{zone}' in this run")
        n = int(t["priority_score"].notna().sum())
        pol = self.config.flags
        share = pol.exit_share if t.loc[zone, "flag_status"] == "retained" else pol.top_share
        ranked = t["priority_score"].dropna().sort_values(ascending=False)
        threshold = float(ranked.iloc[min(n, int(np.ceil(share * n))) - 1])
        levers = lever_space(scored.features, scored.meta, self.registry)
        f0 = scored.features.loc[[zone]]
        current = {lv.indicator: float(f0[lv.indicator].iloc[0]) for lv in levers}
        pop = scored.features["population"]

        def score(candidates: list[dict[str, float]]) -> np.ndarray:
            ids = pd.Index([f"{zone}#{k}" for k in range(len(candidates))], name="zone_code")
            F = pd.concat([f0] * len(candidates))
            F.index = ids
            designs = {m: pd.concat([X.loc[[zone]]] * len(candidates)).set_axis(ids) for m, (X, _) in scored.designs.items()}
            for name in {n for c in candidates for n in c}:
                delta = np.array([c.get(name, 0.0) for c in candidates])
                F = shift_rows(F, scored.meta, name, delta)
                for m, (_, M) in scored.designs.items():
                    designs[m] = shift_rows(designs[m], M, name, delta)
            index = self.index_model.transform(F)
            preds = pd.concat([predict_frame(self.trained[m], X, self.period, self.period + self.trained[m].spec.horizon)
                               for m, X in designs.items()], ignore_index=True)
            table, _ = priority_table(index, preds, self.fb.identity, pd.Series(pop[zone], index=ids),
                                      self.config, self.signs, self.norms)
            return table["priority_score"].to_numpy()

        moves, final, leaves = greedy_exit(score, levers, current, threshold, max_steps=max_steps)
        units = {n: self.registry.indicator(n).unit for n in moves["indicator"]}
        moves["unit"] = moves["indicator"].map(units)
        return {"zone": zone, "score": float(t.loc[zone, "priority_score"]), "threshold": threshold,
                "final_score": final, "leaves_list": bool(leaves), "moves": moves,
                "flagged_by_cumulated_burdens": bool(t.loc[zone, "flag_cumulated"]) if "flag_cumulated" in t else False}


# --------------------------------------------------------------------------- explanations
def model_fingerprint(model) -> list:
    """What a trajectory model's predictions and SHAP values depend on: its boosters' text and
    best iterations (the regressor's, and the classifier's for a hurdle model)."""
    import lightgbm

    parts = [lightgbm.__version__]
    for est in (getattr(model, "regressor_", model), getattr(model, "classifier_", None)):
        if est is not None:
            parts += [est.booster_.model_to_string(), getattr(est, "best_iteration_", None)]
    return parts


def _contributions(model, X: pd.DataFrame, cache: ResultCache) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """:func:`tree_contributions`, read from ``cache`` for the same model and design matrix."""
    def compute():
        phi, base, out = tree_contributions(model, X)
        return {"phi": phi.to_numpy(float), "columns": np.asarray(phi.columns, dtype=str), "base": base, "out": out}

    r = cache.get("shap", cache.key(*model_fingerprint(model), X), compute)
    return pd.DataFrame(r["phi"], index=X.index, columns=list(r["columns"])), r["base"], r["out"]


def shap_contributions(engine: PriorityEngine, scored: Scored, cache: ResultCache | None = None
                       ) -> dict[str, tuple[pd.DataFrame, np.ndarray, np.ndarray]]:
    """TreeSHAP of every model for every zone, checked additive against the scoring's
    forecasts: measure → ``(phi, base, out)`` (:func:`tree_contributions`). ``cache`` keeps the
    contributions of unchanged models on unchanged features for a rerun."""
    cache = cache or ResultCache(None)
    out = {}
    # sorted: the same files whether the models were just trained or loaded back (a rerun)
    for measure, (X, _) in sorted(scored.designs.items()):
        phi, base, raw = _contributions(engine.trained[measure].model, X, cache)
        pred = scored.predictions.loc[scored.predictions["target"] == measure].set_index("zone_code")["prediction"]
        check_additivity(phi, base, pred.reindex(X.index).to_numpy())
        out[measure] = phi, base, raw
    return out


def explain(engine: PriorityEngine, scored: Scored, contributions: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy ``explanations.parquet`` rows of every model's and the index's contributions
    (:func:`shap_contributions`), and the score in points per zone and indicator."""
    t = scored.table
    pf = t["population_factor"]
    comp = t.filter(regex=r"^(z_|certainty_)")
    factors = score_factors(comp, pf, engine.config, engine.norms, engine.signs)
    tidy, points = [], []
    for measure, (phi, base, out) in contributions.items():
        X, M = scored.designs[measure]
        tidy.append(tidy_contributions(measure, phi, X, base, out, M, top=N_TOP_FEATURES))
        if measure in factors:
            points.append(model_points(phi, M, factors[measure]))
    terms, neutral = index_terms(engine.index_model, scored.features, scored.normalised)
    idx = scored.index["deprivation_index"]
    dom = terms.stack().rename("contribution").reset_index()
    dom.columns = ["zone_code", "feature", "contribution"]
    dom["feature"] = "domain_" + dom["feature"]
    dom["model"] = INDEX_MODEL
    dom["domain"] = dom["feature"].str.removeprefix("domain_")
    dom["is_lever"] = False
    dom["feature_value"] = np.asarray(scored.index.filter(regex=r"^domain_[a-z]+$").stack(future_stack=True)
                                      .reindex(pd.MultiIndex.from_arrays([dom["zone_code"], dom["feature"]])))
    dom["base_value"] = neutral
    dom["model_output"] = idx.reindex(dom["zone_code"]).to_numpy()
    tidy.append(dom[dom["model_output"].notna()])
    points.append(index_points(engine.index_model, scored.features, terms, factors["index"], scored.normalised))
    explanations = pd.concat(tidy, ignore_index=True)[
        ["zone_code", "model", "feature", "domain", "is_lever", "feature_value", "contribution",
         "base_value", "model_output"]]
    return explanations, indicator_points(points, engine.registry)


def global_views(scored: Scored, phis: dict, folder: Path) -> tuple[list[Path], SideProcess]:
    """Importance by feature and by domain and interaction hints of each model (written
    here), and its SHAP figures, drawn from a seeded sample of zones by a worker process while
    the stage goes on: the caller waits for :meth:`SideProcess.result` (the figures' paths)."""
    written, by_domain, hints, jobs = [], [], [], []
    for measure, phi in phis.items():
        X, M = scored.designs[measure]
        imp = global_importance(phi, M)
        written.append(write_csv(imp, folder / f"importance_{measure}.csv"))
        by_domain.append(importance_by_domain(phi, M).assign(model=measure))
        hint = interaction_hints(phi, X)
        hints.append(hint.assign(model=measure))
        jobs.append((measure, *plot_sample(phi, X), dict(zip(hint["feature"], hint["interacts_most_with"]))))
    written.append(write_csv(pd.concat(by_domain, ignore_index=True), folder / "importance_by_domain.csv"))
    written.append(write_csv(pd.concat(hints, ignore_index=True), folder / "interaction_hints.csv"))
    return written, SideProcess(plot_all_figures, jobs, folder)


# --------------------------------------------------------------------------- the stage
@dataclass
class PriorityResult:
    """What the stage produced. The explanations and score points, its largest tables, are
    only in ``explanations.parquet`` and ``score_points.parquet``: they are written and freed
    before the stability audit."""

    priorities: pd.DataFrame
    gaps: pd.DataFrame
    clusters: pd.DataFrame
    engine: PriorityEngine
    timings: dict[str, float]
    #: SHAP matrices and fold models' forecasts (or bootstrap refits) read back from
    #: ``<out>/.cache/results`` (a rerun)
    results_reused: int = 0


OUTPUT_COLUMNS = [
    "zone_code", "zone_name", "level", "department", "epci", "epci_name", "region", "population",
    "deprivation_index", "index_rank", "index_decile",
]


def run_prioritise(
    fb: FeatureBuild,
    index_model: DeprivationIndex,
    trained: dict[str, object],
    out_dir: Path | str,
    *,
    data_dir: Path | None = None,
    lang: str = "fr",
    console: Console | None = None,
    model_config: ModelConfig | None = None,
    forecasts: pd.DataFrame | None = None,
    programmes: SideProcess | None = None,
    release_panel: bool = False,
    priorities_written: Callable[[pd.DataFrame], None] | None = None,
) -> PriorityResult:
    """Score, flag, cluster and explain every commune; write the outputs under ``out_dir``.

    ``model_config`` is the models' configuration (default ``conf/models.yml``): with
    ``training_sample: bootstrap`` (or models saved without their fold models), the stability
    step refits the models with it on bootstrap samples. ``forecasts`` are the training
    stage's forecasts of ``trained`` at the reference period (``predictions.parquet``),
    reused rather than predicted again. ``programmes`` is a worker already reading the
    programme table (:func:`programme_job`; the main job starts it during the feature build).
    ``release_panel`` frees ``fb``'s panel once the zones are scored
    (:meth:`~territoria.pipelines.build_features.FeatureBuild.release_panel`: a later use reads
    ``panel.parquet`` back); the main job, which owns its build, does. ``priorities_written``
    is called with the priority table once it and the other tables the zone cards read are
    written, before the GeoPackage, the models and the audits (the main job starts the
    report's card worker then: :func:`~territoria.pipelines.report.start_cards`).
    """
    console = console or Console(quiet=True)
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    previous = read_previous(out_dir / "priorities.csv")
    engine = PriorityEngine(fb, index_model, trained, previous=previous)
    # worker processes (territoria.workers.SideProcess) writing or reading in the meantime,
    # stopped if the stage fails (they finish their file atomically)
    side: list[SideProcess] = [] if programmes is None else [programmes]
    try:
        t0 = time.perf_counter()
        console.log("priority score, ranks and flags")
        scored = engine.baseline(forecasts)
        # scored holds the forecast designs it needs; bootstrap refits would read the prepared targets
        FeatureCache.of(fb).release()
        if release_panel:
            fb.release_panel()
        # the panel and the designs freed, most of what the process holds is free memory that
        # the allocators keep for reuse (1.7 GB in the main job): given back while the worker
        # processes of this stage are alive (benchmarks/README.md, twenty-sixth measurement)
        release_free_memory()
        timings["score"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        # SHAP values and fold forecasts (or bootstrap refits) of unchanged models on unchanged
        # features are read back on a rerun (keyed by the models' text and the matrices' values)
        results = ResultCache(out_dir / ".cache" / "results")
        console.log(f"TreeSHAP explanations of {len(trained)} models for {len(scored.table):,} zones")
        contributions = shap_contributions(engine, scored, results)
        timings["shap"] = time.perf_counter() - t0
        # the figures are drawn by a worker while this process, on one core, tidies the values
        t1 = time.perf_counter()
        console.log("global explanations: importance by domain, dependence plots, interaction hints")
        _, figures = global_views(scored, {m: c[0] for m, c in contributions.items()}, out_dir / "explain")
        side.append(figures)
        timings["global_views"] = time.perf_counter() - t1
        settings = stability_settings(engine.config)
        folds = None
        if settings.replicates > 0 and settings.training_sample == "folds" and trained:
            # the stability audit's fold-model forecasts, by a thread (LightGBM predicts without
            # the GIL) while this one tidies the SHAP values
            background = ThreadPoolExecutor(1, thread_name_prefix="fold-forecasts")
            folds = background.submit(fold_forecasts, engine, _shallow(scored), console, results)
            background.shutdown(wait=False)
        t0 = time.perf_counter()
        explanations, points = explain(engine, scored, contributions)
        del contributions
        levers = top_levers(points, scored.features, scored.meta, fb.identity, engine.registry, ("fr", "en"))
        location = (points.assign(a=points["points"].abs()).groupby(["zone_code", "is_location"])["a"].sum()
                    .unstack(fill_value=0.0))
        location_share = (location[True] / location.sum(axis=1).where(lambda s: s > 0)
                          if True in location.columns else None)
        timings["explain"] = time.perf_counter() - t0
        if programmes is None:  # started after the SHAP step, whose threads it would slow down
            programmes = programme_job(data_dir, fb.params.target_cog if fb.params else 2026)
            side.append(programmes)

        # written by a thread while the clusters are found (Arrow encodes without the GIL), on
        # disk and out of memory before the stability audit
        console.log(f"writing explanations and score points to {out_dir}")
        with ThreadPoolExecutor(1, thread_name_prefix="explanations-writer") as writer:
            written = [writer.submit(write_parquet, table, out_dir / name, float_dictionary=False)
                       for table, name in ((explanations, "explanations.parquet"),
                                           (points, "score_points.parquet"))]
            del explanations, points, location
            t0 = time.perf_counter()
            console.log("border-crossing clusters (Gi*, local Moran, FDR) and contiguous perimeters")
            table = scored.table
            stats = clu.local_statistics(table["priority_score"], fb.graph, seed=fb.params.seed if fb.params else 42)
            perim = clu.priority_perimeters(table["priority_flag"], fb.graph, fb.identity)
            summary = clu.cluster_summary(perim, fb.identity, population=table["population"])
            timings["clusters"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for job in written:
                job.result()
            release_free_memory()  # the tidy tables, written and freed
            timings["write"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        stability = None
        if settings.replicates > 0:
            console.log(f"stability: {settings.replicates} replicates of the scoring with perturbed inputs")
            stability = stability_audit(engine, scored, settings, model_config=model_config, console=console,
                                        cache=results, folds=folds)
        timings["stability"] = time.perf_counter() - t0
        if results.hits:
            console.log(f"{results.hits} SHAP or refit results read back from {results.folder} (unchanged inputs)")

        t0 = time.perf_counter()
        console.log("official programmes and coverage gaps")
        ptable = programmes.result()
        covered = prog.programmes_by_zone(ptable, table.index)
        timings["programmes"] = time.perf_counter() - t0

        pri = assemble(fb, scored, stats, perim, covered, levers, lang)
        if stability is not None:
            pri.insert(int(pri.columns.get_loc("priority_flag")) + 1, "p_priority",
                       stability.p_priority.reindex(pri["zone_code"]).to_numpy())
        gaps = prog.coverage_gaps(pri)
        if location_share is not None:
            pri["location_share"] = location_share.reindex(pri["zone_code"]).to_numpy()

        t0 = time.perf_counter()
        console.log(f"writing priorities and models to {out_dir}")
        write_csv_rounded(csv_safe(pri), out_dir / "priorities.csv")
        write_csv(csv_safe(gaps), out_dir / "coverage_gaps.csv")
        write_csv(csv_safe(summary), out_dir / "clusters.csv")
        write_json({"policy": engine.config.model_dump(), "norms": engine.norms, "period": engine.period,
                    "signs": engine.signs, "formula": "see conf/priority.yml"}, out_dir / "priority_policy.json")
        if priorities_written is not None:
            priorities_written(pri)
        write_priorities_gpkg(pri, out_dir / "priorities.gpkg", data_dir, fb.source_cache)
        for measure, tr in trained.items():
            save_trained(tr, out_dir / "models" / measure)
        if stability is not None:
            write_stability(stability, out_dir / "audit")
        timings["write"] += time.perf_counter() - t0
        results.prune()
        t0 = time.perf_counter()
        figures.result()
        timings["workers_wait"] = time.perf_counter() - t0
        return PriorityResult(pri, gaps, summary, engine, timings, results.hits)
    except BaseException:
        for job in side:
            job.close()
        raise


def programme_job(data_dir: Path | None, target_cog: int) -> SideProcess:
    """A worker reading the programme table (:func:`territoria.models.programmes.programme_table`),
    which needs only the data folder."""
    return SideProcess(partial(prog.programme_table, data_dir=data_dir, target_cog=target_cog))


def stability_settings(config: PriorityConfig) -> stab.StabilitySettings:
    """The stability step's settings from the policy (``audit.stability``)."""
    return stab.StabilitySettings(**config.audit.stability.model_dump())


def bootstrap_refits(engine: PriorityEngine, scored: Scored, refits: int, seed: int,
                     model_config: ModelConfig | None = None, console: Console | None = None,
                     cache: ResultCache | None = None) -> BootstrapForecasts:
    """Forecasts of every zone by each trajectory model refitted ``refits`` times on
    department-block bootstrap samples of its training zones (:mod:`territoria.models.bootstrap`),
    with the models' own configuration and procedure. ``cache`` keeps them for a rerun on the
    same training data, forecast rows, parameters and code."""
    config = model_config or load_model_config()
    features = FeatureCache.of(engine.fb)
    targets = {}
    # sorted: the same layout whatever order the models were trained or loaded in (the cache key)
    for measure, trained in sorted(engine.trained.items()):
        data = prepare_target(engine.fb, trained.spec, config, features, engine.registry, config.cv.groups)
        t = data.table
        zero = t["repeated_survey"].to_numpy()
        X_forecast = scored.designs[measure][0]

        def fit(m, Xs, ys, ws, gs, rows, zero=zero):
            return fit_regressor(m, Xs, ys, ws, gs, zero[rows])

        targets[measure] = (make_regressor(trained.spec, config.model), data.X.reindex(columns=trained.columns),
                            t["y"].to_numpy(), t["weight"].to_numpy(), data.groups, X_forecast, fit)
    cache = cache or ResultCache(None)
    key = cache.key(git_commit(), refits, seed, config.model, *(
        part for measure, (_, X, y, w, g, X_forecast, _) in targets.items()
        for part in (measure, engine.trained[measure].spec.model_dump_json(), X, y, w, g, X_forecast)))
    result = cache.get("refits", key, lambda: _refit_arrays(
        bootstrap_forecasts(targets, refits=refits, seed=seed, log=console.log if console else None)))
    return BootstrapForecasts([str(m) for m in result["measures"]], pd.Index(result["zones"]),
                              result["predictions"], int(result["seed"]))


def _run_forecast(scored: Scored, measure: str, origin: int, horizon: int) -> np.ndarray:
    """The run's forecast of ``measure`` over the model's own horizon, in the order of its design."""
    rows = _forecasts_of(scored.predictions, measure, scored.designs[measure][0].index, origin, origin + horizon)
    if rows is None:
        raise ValueError(f"the scoring has no forecast of {measure} over {horizon} years for every zone")
    return rows["prediction"].to_numpy(float)


def fold_forecasts(engine: PriorityEngine, scored: Scored, console: Console | None = None,
                   cache: ResultCache | None = None) -> BootstrapForecasts | None:
    """Jackknife replicates of every zone's forecasts from the calibration folds' models
    (:func:`~territoria.models.bootstrap.fold_replicates`); None when a model was saved
    without its fold models (a run of an older version). ``cache`` keeps the forecasts of
    unchanged models on an unchanged design for a rerun."""
    cache = cache or ResultCache(None)
    measures, preds = sorted(engine.trained), []
    for measure in measures:
        trained = engine.trained[measure]
        if len(trained.fold_models) < 2:
            return None
        X = scored.designs[measure][0]
        if console:
            console.log(f"stability: forecasts of the {len(trained.fold_models)} fold models of {measure}")
        key = cache.key(*(part for m in trained.fold_models for part in model_fingerprint(m)), X)
        r = cache.get("folds", key, lambda trained=trained, X=X: {
            "folds": np.stack([m.predict(X) for m in trained.fold_models])})
        preds.append(fold_replicates(_run_forecast(scored, measure, engine.period, trained.spec.horizon),
                                     r["folds"]))
    if len({p.shape[0] for p in preds}) > 1:
        raise ValueError(f"the models have different numbers of fold models: {[p.shape[0] for p in preds]}")
    zones = pd.Index(scored.designs[measures[0]][0].index)
    return BootstrapForecasts(measures, zones, np.stack(preds, axis=2), seed=0, method="folds")


def _shallow(scored: Scored) -> Scored:
    """``scored`` with shallow copies of the frames a second thread reads: the data are
    shared, but not the objects pandas may reorganise in place (block consolidation, caches)."""
    return replace(scored, predictions=scored.predictions.copy(deep=False),
                   designs={m: (X.copy(deep=False), M.copy(deep=False)) for m, (X, M) in scored.designs.items()})


def _refit_arrays(b: BootstrapForecasts) -> dict[str, np.ndarray]:
    return {"measures": np.asarray(b.measures, dtype=str), "zones": np.asarray(b.zones, dtype=str),
            "predictions": b.predictions, "seed": np.asarray(b.seed)}


def stability_audit(engine: PriorityEngine, scored: Scored,
                    settings: stab.StabilitySettings | None = None, model_config: ModelConfig | None = None,
                    console: Console | None = None, cache: ResultCache | None = None,
                    folds: Future | None = None) -> stab.StabilityResult:
    """Replicates of the baseline scoring with perturbed inputs and replicate models of the
    training sample (``settings.training_sample``: the fold models as jackknife replicates, or
    refits on bootstrap samples; see :mod:`territoria.models.stability`); checks that the
    unperturbed replicate reproduces the run's scores and flags (``summary["reproduces_run"]``).

    Models saved without their fold models (an older run) fall back to ``bootstrap_refits``
    bootstrap refits, which the summary's ``refits.method`` records. ``folds`` is
    :func:`fold_forecasts` of the same scoring already started in a thread.
    """
    settings = settings or stability_settings(engine.config)
    t = scored.table
    dcfg = diag.load_diagnostics_config(registry=engine.registry)
    refits = None
    if settings.training_sample == "folds" and engine.trained:
        refits = folds.result() if folds is not None else fold_forecasts(engine, scored, console, cache)
        if refits is None and console:
            console.log("stability: the saved models have no fold models; bootstrap refits instead")
    if refits is None and settings.training_sample != "none" and settings.bootstrap_refits > 0 and engine.trained:
        refits = bootstrap_refits(engine, scored, settings.bootstrap_refits, settings.seed,
                                  model_config=model_config, console=console, cache=cache)
    problem = stab.problem_from_run(
        engine.index_model, scored.features, t, scored.predictions, engine.config, engine.signs, engine.norms,
        worst_share=dcfg.cumulated.worst_share, min_domains=dcfg.cumulated.min_domains,
        groups=engine.fb.identity["departement"], indicator_noise=settings.indicator_noise, refits=refits,
        normalised=scored.normalised)
    return stab.replicate(problem, settings, baseline_score=t["priority_score"].to_numpy(float),
                          baseline_flag=t["priority_flag"].to_numpy(bool))


def write_stability(result: stab.StabilityResult, folder: Path) -> list[Path]:
    """``stability.json`` (summary), ``stability.md`` (readable), ``stability_replicates.csv``
    (one row per replicate), ``stability_zones.csv`` (one row per zone) and, with bootstrap
    refits, ``stability_refits.csv`` (one row per refit), atomically."""
    if not len(result.refits):
        # a file left by an earlier run with refits would describe other models
        (folder / "stability_refits.csv").unlink(missing_ok=True)
    zones = result.zones.reset_index().rename(columns={"index": "zone_code"})
    zones = zones.sort_values(["priority_score", "zone_code"], ascending=[False, True], na_position="last",
                              kind="stable")
    return [
        write_json(result.summary, folder / "stability.json"),
        write_atomic(folder / "stability.md",
                     lambda tmp: tmp.write_text(stab.to_markdown(result) + "\n", encoding="utf-8")),
        write_csv_rounded(result.replicates, folder / "stability_replicates.csv"),
        write_csv_rounded(zones, folder / "stability_zones.csv"),
    ] + ([write_csv_rounded(result.refits, folder / "stability_refits.csv")]
         if len(result.refits) else [])


def assemble(fb, scored: Scored, stats, perim, covered, levers: dict, lang: str) -> pd.DataFrame:
    """The ``priorities`` table in the output contract's column order."""
    t = scored.table
    ident = fb.identity.reindex(t.index)
    out = pd.DataFrame({
        "zone_code": t.index,
        "zone_name": t["zone_name"].to_numpy(),
        "level": "commune",
        "department": t["departement"].to_numpy(),
        "epci": t["epci"].to_numpy(),
        "epci_name": ident["epci_name"].to_numpy() if "epci_name" in ident else "",
        "region": ident["region"].to_numpy(),
        "population": t["population"].to_numpy(),
        "reference_period": int(fb.reference_period),
    })
    rest = t.drop(columns=["zone_name", "departement", "epci", "population"])
    out = out.join(rest.reset_index(drop=True))
    out = out.join(stats.drop(columns=["value"], errors="ignore").reindex(t.index).reset_index(drop=True))
    out["cluster_id"] = perim["cluster_id"].reindex(t.index).to_numpy()
    out["top_levers"] = levers[lang].reindex(t.index).to_numpy()
    other = "en" if lang == "fr" else "fr"
    out[f"top_levers_{other}"] = levers[other].reindex(t.index).to_numpy()
    out = out.join(covered.reindex(t.index).reset_index(drop=True))
    out = out.sort_values(["priority_rank", "zone_code"], na_position="last", kind="stable")
    for c in out.columns:
        if "rank" in c or c in ("index_decile", "n_neighbours"):
            out[c] = out[c].round().astype("Int64")
    out.attrs["lang"] = lang
    return out.reset_index(drop=True)


def read_previous(path: Path) -> pd.DataFrame | None:
    """The previous run's flag history (for hysteresis), or None."""
    if not path.exists():
        return None
    try:
        prev = pd.read_csv(path, usecols=["zone_code", "flag_history"], dtype={"zone_code": str, "flag_history": str})
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(path, f"previous priorities unreadable ({exc}); move it away to start a new history") from None
    return prev


GPKG_COLUMNS = frozenset({
    "zone_code", "zone_name", "level", "department", "epci", "epci_name", "region", "population",
    "reference_period", "deprivation_index", "index_rank", "index_decile", "predicted_change",
    "predicted_change_low", "predicted_change_high", "priority_score", "priority_score_low",
    "priority_score_high", "priority_rank", "priority_rank_department", "priority_rank_epci",
    "priority_flag", "p_priority", "n_vulnerable_domains", "hotspot", "moran_cluster", "cluster_id", "top_levers",
    "programmes", "location_share",
})

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Text cells a spreadsheet would run as formulas are prefixed with a quote."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object or pd.api.types.is_string_dtype(out[c]):
            s = out[c].astype("string")
            risky = s.str.startswith(_FORMULA_START).fillna(False)
            if risky.any():
                out[c] = s.where(~risky, "'" + s)
    return out


def write_priorities_gpkg(pri: pd.DataFrame, path: Path, data_dir: Path | None,
                          source_cache: Path | None = None) -> None:
    """The priorities with commune polygons (WGS84) as a GeoPackage layer ``priorities``
    (the main columns: the CSV has them all). The polygons are read back from
    ``source_cache`` (the feature build's parsed sources) when it holds them: a third of the
    time of parsing the source again."""
    import geopandas as gpd

    from territoria.features.sources.geometries import CommuneGeometries
    keep = [c for c in pri.columns if c in GPKG_COLUMNS or c.startswith(("domain_", "pred_", "flag_"))]
    pri = pri[[c for c in keep if not c.endswith("_exp")]]
    geoms = load_cached(CommuneGeometries(data_dir), None, source_cache, write=False)
    geoms = geoms.drop_duplicates("zone_code").set_index("zone_code")
    gdf = gpd.GeoDataFrame(pri.copy(), geometry=geoms.geometry.reindex(pri["zone_code"]).to_numpy(), crs=geoms.crs)
    gdf = gdf.to_crs("EPSG:4326")
    for c in gdf.columns:
        if gdf[c].dtype == bool:
            gdf[c] = gdf[c].astype("int8")
    write_atomic(path, lambda tmp: gdf.to_file(tmp, driver="GPKG", layer="priorities"))


# --------------------------------------------------------------------------- reuse a run
def load_engine(fb: FeatureBuild, out_dir: Path | str) -> PriorityEngine:
    """The engine of a finished run: its saved models, the index refitted on the same features."""
    out_dir = Path(out_dir)
    folder = out_dir / "models"
    if not folder.exists():
        raise DataError(folder, "no trained models: run `territoria run --out DIR` first")
    trained = {p.name: load_trained(p) for p in sorted(folder.iterdir()) if (p / "model.json").exists()}
    policy = out_dir / "priority_policy.json"
    norms = json.loads(policy.read_text(encoding="utf-8"))["norms"] if policy.exists() else None
    index_model = DeprivationIndex().fit(fb.features.set_index("zone_code"))
    return PriorityEngine(fb, index_model, trained, previous=read_previous(out_dir / "priorities.csv"),
                          norms=norms)


def run_period(out_dir: Path | str) -> int:
    """Reference period of the run in ``out_dir`` (from its ``priority_policy.json``)."""
    path = Path(out_dir) / "priority_policy.json"
    if not path.exists():
        raise DataError(path, "no finished run here: run `territoria run --out DIR` first")
    return int(json.loads(path.read_text(encoding="utf-8"))["period"])


def run_scenario(engine: PriorityEngine, sc: Scenario, out_dir: Path | str,
                 console: Console | None = None) -> pd.DataFrame:
    """Baseline vs scenario for every zone concerned; writes ``scenarios/<name>.csv``."""
    console = console or Console(quiet=True)
    console.log("baseline scores")
    base = engine.baseline()
    console.log(f"scenario {sc.name}: rebuilding features and re-scoring")
    after, zones = engine.scenario(sc)
    table = compare(base.table, after.table, zones)
    for m in engine.trained:
        b = base.table[f"pred_{m}"] if f"pred_{m}" in base.table else None
        if b is not None:
            a = after.table[f"pred_{m}"]
            table[f"pred_{m}_before"] = b.reindex(table["zone_code"]).to_numpy()
            table[f"pred_{m}_after"] = a.reindex(table["zone_code"]).to_numpy()
            table[f"pred_{m}_after_low"] = after.table[f"pred_{m}_low"].reindex(table["zone_code"]).to_numpy()
            table[f"pred_{m}_after_high"] = after.table[f"pred_{m}_high"].reindex(table["zone_code"]).to_numpy()
    table["caveat"] = CAVEAT_EN
    out = Path(out_dir) / "scenarios" / f"{sc.name}.csv"
    write_csv(csv_safe(table), out)
    meta = {"scenario": sc.model_dump(), "zones": len(zones), "caveat_en": CAVEAT_EN, "caveat_fr": CAVEAT_FR,
            "flag_changes": table["flag_change"].value_counts().to_dict()}
    write_json(meta, out.with_suffix(".json"))
    return table
