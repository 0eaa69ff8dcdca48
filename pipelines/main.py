"""The main job: panel → features → index, backtest, models → priorities, explanations → reports.

``territoria run`` calls :func:`run_main`. Every stage writes its outputs atomically under
``out_dir``; at the end ``run.json`` records the versions, the configuration, the data file
hashes, the MLflow run ids and the timings per stage, and ``manifest.json`` the hashes of
every input and output (checked by ``territoria verify``).

Training is skipped when ``out_dir`` holds a run of the same inputs: its ``run.json`` has the
same fingerprint (data file hashes, configuration, ``as_of``, code version and commit) and its
models and training outputs are unchanged since (SHA-256 of the manifest and of the saved
models). The saved champions are then reused; ``retrain=True`` (``--retrain``) forces training.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from territoria.digest import FileDigests, file_sha256
from territoria.errors import OutputError, os_problem
from territoria.io import write_json
from territoria.memory import configure_allocators, fewer_collections, release_free_memory
from territoria.models.backtest import FeatureCache
from territoria.models.targets import load_model_config
from territoria.paths import conf_dir
from territoria.pipelines.build_features import run_build_features
from territoria.pipelines.prioritise import programme_job, run_prioritise
from territoria.pipelines.report import EARLY_CARD_WORKER_SHARE, panel_series, run_report, start_cards
from territoria.pipelines.train import run_train
from territoria.settings import load_parameters, load_yaml
from territoria.verify import git_commit, package_versions, write_manifest

#: outputs of a run that the manifest hashes (when present)
OUTPUTS = (
    "panel.parquet", "features.parquet", "features_meta.csv", "data_report.json", "index.parquet",
    "index_weights.csv", "metrics.json", "backtest_metrics.csv", "interval_coverage_by_group.csv",
    "predictions.parquet", "priorities.csv", "priorities.gpkg", "explanations.parquet",
    "score_points.parquet", "coverage_gaps.csv", "clusters.csv", "priority_policy.json",
    "map.html", "report.html",
)


#: outputs of the training stage that a reused run must still hold unchanged
TRAIN_OUTPUTS = ("index.parquet", "index_weights.csv", "predictions.parquet")


@dataclass
class MainResult:
    features: object
    train: object
    priorities: object
    timings: dict[str, float] = field(default_factory=dict)
    run_json: Path | None = None
    reused_from: str | None = None


def configuration(parameters: Path | None = None) -> dict:
    """The configuration files of the run, as read (for ``run.json``); ``parameters`` is the
    ``--conf`` file when one replaced ``conf/parameters.yml``."""
    root = conf_dir()
    files = {n: root / n for n in ["parameters.yml", "index.yml", "priority.yml", "diagnostics.yml"]}
    if parameters is not None:
        files["parameters.yml"] = Path(parameters)
    return {n: load_yaml(p) for n, p in files.items() if p.exists()}


def run_fingerprint(file_hashes: dict, configuration_doc: dict, as_of: int | None) -> str:
    """SHA-256 of what determines the trained models: input hashes, configuration, ``as_of``
    and the code (versions of territoria and LightGBM, git commit)."""
    versions = package_versions()
    doc = {"data_files": file_hashes, "configuration": configuration_doc, "as_of": as_of,
           "code": {k: versions.get(k) for k in ("territoria", "lightgbm", "scikit-learn")},
           "git_commit": git_commit()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def reusable_run(out_dir: Path, fingerprint: str) -> dict | None:
    """``run.json`` of the previous run in ``out_dir`` when its training can be reused, else ``None``.

    Reusable: same fingerprint, saved models present, and the training outputs still have the
    hashes the manifest recorded (a file edited or deleted since means training again).
    """
    try:
        previous = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if previous.get("fingerprint") != fingerprint or not previous.get("mlflow_runs"):
        return None
    models = out_dir / "models"
    if not models.is_dir() or not any((p / "model.json").exists() for p in models.iterdir()):
        return None
    recorded = manifest.get("outputs", {})
    for name in TRAIN_OUTPUTS:
        path = out_dir / name
        if name not in recorded or not path.is_file() or file_sha256(path) != recorded[name]:
            return None
    return previous


def _reuse_training(fb, out_dir: Path, previous: dict, console: Console):
    """A :class:`~territoria.pipelines.train.TrainResult` from the saved champions of ``out_dir``."""
    import pandas as pd

    from territoria.models.persist import load_trained
    from territoria.pipelines.train import TrainResult, compute_index

    t0 = time.perf_counter()
    index, _, index_model = compute_index(fb)
    models = {p.name: load_trained(p) for p in sorted((out_dir / "models").iterdir())
              if (p / "model.json").exists()}
    console.log(f"training skipped: data and configuration unchanged since the run of "
                f"{previous.get('created', 'this folder')}; {len(models)} saved models reused "
                f"(--retrain to train again)")
    return TrainResult(index=index, predictions=pd.read_parquet(out_dir / "predictions.parquet"),
                       index_model=index_model, run_ids=dict(previous["mlflow_runs"]),
                       models={m.spec.name: m for m in models.values()},
                       timings={"reuse": time.perf_counter() - t0})


@fewer_collections
def run_main(
    out_dir: Path | str,
    *,
    data_dir: Path | None = None,
    conf: Path | None = None,
    as_of: int | None = None,
    cache: bool = True,
    tracking_uri: str | None = None,
    lang: str = "fr",
    backtest: bool = True,
    models_conf: Path | None = None,
    features=None,
    retrain: bool = False,
    console: Console | None = None,
) -> MainResult:
    """Run every stage on a data folder (the bundled real data by default).

    ``models_conf`` replaces ``conf/models.yml``; ``features`` reuses a feature build of the
    same data (its outputs must already be in ``out_dir`` or are written there); ``retrain``
    trains even when ``out_dir`` holds reusable models of the same inputs. The process's
    allocators are set for a long job first (:func:`territoria.memory.configure_allocators`),
    and its garbage collector runs less often (:func:`territoria.memory.fewer_collections`).
    """
    console = console or Console(quiet=True)
    out_dir = Path(out_dir)
    try:  # an output folder that cannot be made fails now, not after the sources are parsed
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(out_dir, os_problem(exc)) from exc
    timings: dict[str, float] = {}
    configure_allocators()  # large temporaries reused within a stage, returned between stages

    def stage(name: str):
        release_free_memory()  # the previous stage's freed temporaries
        console.rule(f"[bold]{name}")
        return time.perf_counter()

    t0 = stage("features")
    side = {}

    def start_side_jobs() -> None:
        # the programme table needs the data folder only: a worker reads it while the panel,
        # built on one core, leaves the other idle
        side["programmes"] = programme_job(data_dir, load_parameters(conf).target_cog)

    try:
        if features is None:
            fb = run_build_features(data_dir=data_dir, out_dir=out_dir, conf=conf, as_of=as_of,
                                    console=console, cache=cache, sources_read=start_side_jobs)
        else:
            start_side_jobs()
            fb = features
        console.print(fb.summary())
        timings["features"] = time.perf_counter() - t0

        t0 = stage("index, backtest and trajectory models")
        config = load_model_config(models_conf)
        config_doc = {**configuration(conf), "models.yml": config.model_dump(mode="json")}
        fingerprint = run_fingerprint(fb.file_hashes, config_doc, as_of)
        previous = None if retrain else reusable_run(out_dir, fingerprint)
        if previous is not None:
            res = _reuse_training(fb, out_dir, previous, console)
        else:
            res = run_train(fb, out_dir, as_of=as_of, tracking_uri=tracking_uri, backtest=backtest,
                            config=config, console=console, wait_for_tracking=False)
        timings.update({f"train.{k}": v for k, v in res.timings.items()})
        timings["train"] = time.perf_counter() - t0
    except BaseException:
        for job in side.values():
            job.close()
        raise

    t0 = stage("priorities, clusters and explanations")
    models = {tr.spec.measure: tr for tr in res.models.values()}
    cards = []
    # the cards' series, taken before the stage frees the panel (the card worker and this
    # process then do not scan panel.parquet for them)
    series = panel_series(fb.panel) if features is None else None

    def start_report_cards(priorities) -> None:
        # the report's card worker starts once the tables the cards read are written, and
        # uses the core the rest of the stage leaves idle (benchmarks/README.md, twenty-first
        # measurement)
        flagged = priorities.loc[priorities["priority_flag"], "zone_code"].tolist()
        cards.append(start_cards(out_dir, lang, flagged, share=EARLY_CARD_WORKER_SHARE, series=series))

    try:
        pri = run_prioritise(fb, res.index_model, models, out_dir, data_dir=data_dir, lang=lang, console=console,
                             model_config=config, forecasts=res.predictions, programmes=side.get("programmes"),
                             release_panel=features is None, priorities_written=start_report_cards)
        timings.update({f"prioritise.{k}": v for k, v in pri.timings.items()})
        # the MLflow runs, logged by a worker meanwhile, are in the store the report hashes
        t1 = time.perf_counter()
        res.wait_for_tracking()
        timings["prioritise.tracking_wait"] = time.perf_counter() - t1
    except BaseException:
        if res.tracking is not None:  # the worker finishes logging its runs and exits
            res.tracking.close()
        for job in cards:  # the card worker finishes its cards (atomically) and exits
            job.close()
        raise
    timings["prioritise"] = time.perf_counter() - t0
    # the report reads the outputs back from disk
    FeatureCache.of(fb).clear()
    if features is None:  # a caller's build is left whole
        fb.release_panel()

    t0 = stage("map, zone cards, report and audit")
    report_timings: dict[str, float] = {}
    digests = FileDigests()  # the lineage hashes the outputs, the manifest reads them back
    run_report(out_dir, lang=lang, console=console, timings=report_timings, digests=digests,
               cards=cards[0] if cards else None)
    timings.update({f"report.{k}": v for k, v in report_timings.items()})
    timings["report"] = time.perf_counter() - t0

    run = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fingerprint,
        "training": "reused" if previous is not None else "trained",
        "reused_from": previous.get("created") if previous is not None else None,
        "territoria": package_versions(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "as_of": as_of,
        "reference_period": fb.reference_period,
        "lang": lang,
        "configuration": config_doc,
        "models_conf": str(models_conf) if models_conf else "conf/models.yml",
        "data_dir": str(data_dir) if data_dir else "bundled",
        "data_files": fb.file_hashes,
        "mlflow_runs": res.run_ids,
        "tracking_uri": tracking_uri or f"sqlite:///{(out_dir / 'mlflow.db').resolve()}",
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "zones": int(len(pri.priorities)),
        "priority_zones": int(pri.priorities["priority_flag"].sum()),
    }
    run_json = write_json(run, out_dir / "run.json")
    # relative to out_dir, as write_manifest reads them (out_dir itself may be relative: `--out out`)
    outputs = ([Path(n) for n in OUTPUTS if (out_dir / n).exists()]
               + sorted(p.relative_to(out_dir) for p in (out_dir / "audit").glob("*") if p.is_file())
               + [run_json.relative_to(out_dir)])
    write_manifest(out_dir, fb.file_hashes, outputs, data_dir=data_dir, digests=digests)
    return MainResult(fb, res, pri, timings, run_json,
                      reused_from=previous.get("created") if previous is not None else None)
