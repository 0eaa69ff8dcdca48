"""The main job: panel → features → index, backtest, models → priorities, explanations → reports.

``territoria run`` calls :func:`run_main`. Every stage writes its outputs atomically under
``out_dir``; at the end ``run.json`` records the versions, the configuration, the data file
hashes, the MLflow run ids and the timings per stage, and ``manifest.json`` the hashes of
every input and output (checked by ``territoria verify``).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from territoria.io import write_json
from territoria.paths import conf_dir
from territoria.settings import load_yaml
from territoria.verify import git_commit, package_versions, write_manifest

#: outputs of a run that the manifest hashes (when present)
OUTPUTS = (
    "panel.parquet", "features.parquet", "features_meta.csv", "data_report.json", "index.parquet",
    "index_weights.csv", "metrics.json", "backtest_metrics.csv", "interval_coverage_by_group.csv",
    "predictions.parquet", "priorities.csv", "priorities.gpkg", "explanations.parquet",
    "score_points.parquet", "coverage_gaps.csv", "clusters.csv", "priority_policy.json",
    "map.html", "report.html",
)


@dataclass
class MainResult:
    features: object
    train: object
    priorities: object
    timings: dict[str, float] = field(default_factory=dict)
    run_json: Path | None = None


def configuration(parameters: Path | None = None) -> dict:
    """The configuration files of the run, as read (for ``run.json``); ``parameters`` is the
    ``--conf`` file when one replaced ``conf/parameters.yml``."""
    root = conf_dir()
    files = {n: root / n for n in ["parameters.yml", "index.yml", "priority.yml", "diagnostics.yml"]}
    if parameters is not None:
        files["parameters.yml"] = Path(parameters)
    return {n: load_yaml(p) for n, p in files.items() if p.exists()}


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
    console: Console | None = None,
) -> MainResult:
    """Run every stage on a data folder (the bundled real data by default).

    ``models_conf`` replaces ``conf/models.yml``; ``features`` reuses a feature build of the
    same data (its outputs must already be in ``out_dir`` or are written there).
    """
    from territoria.models.targets import load_model_config
    from territoria.pipelines.build_features import run_build_features
    from territoria.pipelines.prioritise import run_prioritise
    from territoria.pipelines.report import run_report
    from territoria.pipelines.train import run_train

    console = console or Console(quiet=True)
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}

    def stage(name: str):
        console.rule(f"[bold]{name}")
        return time.perf_counter()

    t0 = stage("features")
    fb = features or run_build_features(data_dir=data_dir, out_dir=out_dir, conf=conf, as_of=as_of,
                                        console=console, cache=cache)
    console.print(fb.summary())
    timings["features"] = time.perf_counter() - t0

    t0 = stage("index, backtest and trajectory models")
    config = load_model_config(models_conf)
    res = run_train(fb, out_dir, as_of=as_of, tracking_uri=tracking_uri, backtest=backtest, config=config,
                    console=console)
    timings.update({f"train.{k}": v for k, v in res.timings.items()})
    timings["train"] = time.perf_counter() - t0

    t0 = stage("priorities, clusters and explanations")
    models = {tr.spec.measure: tr for tr in res.models.values()}
    pri = run_prioritise(fb, res.index_model, models, out_dir, data_dir=data_dir, lang=lang, console=console)
    timings.update({f"prioritise.{k}": v for k, v in pri.timings.items()})
    timings["prioritise"] = time.perf_counter() - t0

    t0 = stage("map, zone cards, report and audit")
    report_timings: dict[str, float] = {}
    run_report(out_dir, lang=lang, console=console, timings=report_timings)
    timings.update({f"report.{k}": v for k, v in report_timings.items()})
    timings["report"] = time.perf_counter() - t0

    run = {
        "territoria": package_versions(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "as_of": as_of,
        "reference_period": fb.reference_period,
        "lang": lang,
        "configuration": {**configuration(conf), "models.yml": config.model_dump(mode="json")},
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
    outputs = [out_dir / n for n in OUTPUTS if (out_dir / n).exists()] + [run_json]
    write_manifest(out_dir, fb.file_hashes, outputs, data_dir=data_dir)
    return MainResult(fb, res, pri, timings, run_json)
