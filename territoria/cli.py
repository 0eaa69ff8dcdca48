"""The ``territoria`` command line.

Bad input never ends in a traceback: a :class:`~territoria.errors.DataError` is printed as one
line naming the file and the problem, and the command exits with code 2. An output that cannot
be written (:class:`~territoria.errors.OutputError`: no space left, no permission) or another
operating-system error is printed the same way, with exit code 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from territoria.blas import configure_blas_threads
from territoria.errors import DataError, OutputError, os_problem
from territoria.memory import configure_allocators, freeze_at_exit

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Prioritisation engine for territorial inequalities in France.",
)
data_app = typer.Typer(no_args_is_help=True, help="Inspect or rebuild a data folder.")
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

DataOpt = Annotated[
    Optional[Path],
    typer.Option("--data", help="Data folder laid out like the bundle (default: bundled real data)."),
]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder.")]
ConfOpt = Annotated[Optional[Path], typer.Option("--conf", help="Parameters file (default conf/parameters.yml).")]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Re-read every source instead of using <out>/.cache.")
]
AsOfOpt = Annotated[
    Optional[int], typer.Option("--as-of", help="Use only data for periods up to this year.")
]


ModelsConfOpt = Annotated[
    Optional[Path], typer.Option("--models-conf", help="Models file (default conf/models.yml).")
]
LangOpt = Annotated[str, typer.Option("--lang", help="Language of texts: fr or en.")]

TrackingOpt = Annotated[
    Optional[str],
    typer.Option("--tracking-uri", help="MLflow tracking URI (default: sqlite store in --out)."),
]


def prepare_long_job() -> None:
    """Settings of a long job, before the imports that load numpy and OpenBLAS, which read
    theirs then: OpenBLAS's idle threads asleep at once
    (:func:`~territoria.blas.configure_blas_threads`) and the allocators
    (:func:`~territoria.memory.configure_allocators`). The commune stages reuse their large
    temporaries; the grid's Dask workers, which would each keep theirs, are left alone."""
    configure_blas_threads()
    configure_allocators()


def _features(data, out, conf, as_of, no_cache):
    prepare_long_job()
    from territoria.pipelines.build_features import run_build_features

    fb = run_build_features(
        data_dir=data, out_dir=out, conf=conf, as_of=as_of, console=console, cache=not no_cache
    )
    console.print(fb.summary())
    return fb


@app.command()
def run(
    data: DataOpt = None,
    out: OutOpt = Path("out"),
    conf: ConfOpt = None,
    as_of: AsOfOpt = None,
    no_cache: NoCacheOpt = False,
    tracking_uri: TrackingOpt = None,
    lang: LangOpt = "fr",
    models_conf: ModelsConfOpt = None,
    retrain: Annotated[bool, typer.Option(
        "--retrain", help="Train even when --out holds models of the same data and configuration.")] = False,
    level: Annotated[str, typer.Option(
        "--level", help="Zones ranked: commune (every commune) or iris (the IRIS of the communes divided "
                        "into IRIS; outputs in <out>/iris).")] = "commune",
    iris_contours: Annotated[Optional[Path], typer.Option(
        "--iris-contours", help="IGN CONTOURS-IRIS file (.gpkg or .shp) to draw the IRIS on the IRIS map "
                                "(default: the communes divided into IRIS).")] = None,
    iris_conf: Annotated[Optional[Path], typer.Option(
        "--iris-conf", help="IRIS level parameters (default conf/iris.yml).")] = None,
) -> None:
    """Main job on the bundled real data: features, index, backtest, models, forecasts,
    priorities, clusters and explanations; ``run.json`` and ``manifest.json`` at the end.
    Models of a previous run in --out are reused when data, configuration and code are unchanged.
    With ``--level iris``: the same for the IRIS, under ``<out>/iris``."""
    from territoria.workers import start_fork_server

    # the workers' fork server imports their modules while this process imports the stages;
    # it inherits the settings, so they come first
    prepare_long_job()
    start_fork_server()
    from territoria.pipelines.main import run_main

    if level not in ("commune", "iris"):
        raise DataError("--level", f"unknown level '{level}' (commune or iris)")
    if lang not in ("fr", "en"):
        raise DataError("--lang", f"unknown language '{lang}' (fr or en)")
    if level == "iris":
        from territoria.pipelines.iris import run_iris

        console.rule("[bold]features")
        fb = _features(data, out, conf, as_of, no_cache)
        console.rule("[bold]IRIS level")
        res = run_iris(fb, out, config=iris_conf, lang=lang, contours=iris_contours, data_dir=data,
                       tracking_uri=tracking_uri, console=console)
        _print_iris_summary(res, lang)
        return

    res = run_main(out, data_dir=data, conf=conf, as_of=as_of, cache=not no_cache,
                   tracking_uri=tracking_uri, lang=lang, models_conf=models_conf, retrain=retrain,
                   console=console)
    _print_train_summary(res.train, out)
    _print_priority_summary(res.priorities.priorities, out, lang)
    total = sum(v for k, v in res.timings.items() if "." not in k)
    console.print(f"done in {total / 60:.1f} min; run record: {res.run_json}; check it later with "
                  f"`territoria verify {out}`")


@app.command()
def features(
    data: DataOpt = None,
    out: OutOpt = Path("out"),
    conf: ConfOpt = None,
    as_of: AsOfOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Build ``panel.parquet`` and ``features.parquet`` (the first stage of ``run``)."""
    _features(data, out, conf, as_of, no_cache)


@app.command()
def train(
    data: DataOpt = None,
    out: OutOpt = Path("out"),
    conf: ConfOpt = None,
    as_of: AsOfOpt = None,
    no_cache: NoCacheOpt = False,
    tracking_uri: TrackingOpt = None,
    skip_backtest: Annotated[bool, typer.Option("--skip-backtest", help="Only fit and forecast.")] = False,
) -> None:
    """Fit the trajectory models, log them to MLflow and forecast every commune."""
    from territoria.pipelines.train import run_train

    fb = _features(data, out, conf, as_of, no_cache)
    res = run_train(
        fb, out, as_of=as_of, tracking_uri=tracking_uri, backtest=not skip_backtest, console=console
    )
    _print_train_summary(res, out)


@app.command()
def backtest(
    data: DataOpt = None,
    out: OutOpt = Path("out"),
    conf: ConfOpt = None,
    as_of: AsOfOpt = None,
    no_cache: NoCacheOpt = False,
    classifier: Annotated[bool, typer.Option(
        "--classifier", help="Also score the deterioration classifier (ROC AUC, Brier, reliability).")] = False,
) -> None:
    """Score the models and the baselines on the same spatially blocked folds."""
    from territoria.pipelines.train import run_backtest_stage

    fb = _features(data, out, conf, as_of, no_cache)
    result = run_backtest_stage(fb, out, console, as_of=as_of, classifier=True if classifier else None)
    console.print(result.table())
    console.print(f"metrics in {out / 'metrics.json'}")


@app.command()
def tune(
    target: Annotated[str, typer.Option("--target", help="Target name of conf/models.yml.")],
    data: DataOpt = None,
    out: OutOpt = Path("out"),
    conf: ConfOpt = None,
    as_of: AsOfOpt = None,
    no_cache: NoCacheOpt = False,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Number of trials (the defaults first).")] = 30,
    timeout: Annotated[
        Optional[float], typer.Option("--timeout", help="Start no new trial after SECONDS.")
    ] = None,
) -> None:
    """Search LightGBM parameters of a target with optuna (optional: pip install "territoria\\[tune]")."""
    from territoria.models.targets import target_spec
    from territoria.models.tuning import require_optuna, tune_target

    # fail before the feature build: missing optuna, unknown target, target after --as-of
    require_optuna()
    spec = target_spec(target)
    if as_of is not None and spec.end > as_of:
        raise DataError("conf/models.yml", f"target '{target}' ends in {spec.end}, after --as-of {as_of}")
    fb = _features(data, out, conf, as_of, no_cache)
    res = tune_target(fb, target, n_trials=trials, timeout=timeout, log=console.log)
    paths = res.write(out)
    table = Table(title=f"Tuning {target}: {len(res.trials)} trials, {res.elapsed_s:.0f} s")
    for col in ("", "defaults", "best"):
        table.add_column(col)
    table.add_row("spearman (CV)", f"{res.default_score:.4f}", f"{res.best_score:.4f}")
    for k, v in res.best_params.items():
        d = res.default_params.get(k)
        if d != v:
            table.add_row(k, f"{d:.4g}" if isinstance(d, float) else str(d),
                          f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    console.print(f"trials in {paths['json']}; conf/models.yml `model:` block in {paths['params']}")


def _print_train_summary(res, out: Path) -> None:
    top = res.index.sort_values("index_rank").head(10)
    table = Table(title="Most deprived communes (composite index)")
    for col in ("rank", "commune", "code", "department", "index"):
        table.add_column(col)
    for r in top.itertuples():
        table.add_row(str(int(r.index_rank)), str(r.zone_name), r.zone_code, str(r.departement),
                      f"{r.deprivation_index:.1f}")
    console.print(table)
    if res.backtest is not None:
        console.print(res.backtest.table())
    elif (out / "metrics.json").exists():  # reused models: the backtest of the run that trained them
        import json

        import pandas as pd

        ratios = pd.DataFrame(json.loads((out / "metrics.json").read_text(encoding="utf-8")).get("ratios", []))
        if len(ratios):
            console.print("backtest of the reused models (metrics.json):")
            console.print(ratios.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    console.print(
        f"{len(res.predictions):,} forecasts (with 80 % and 90 % intervals) in {out / 'predictions.parquet'}; "
        f"MLflow runs: {', '.join(res.run_ids) or 'none'}"
    )


def _print_priority_summary(pri, out: Path, lang: str) -> None:
    top = pri.head(10)
    fr = lang == "fr"
    table = Table(title="Zones prioritaires" if fr else "Priority zones")
    for col in ("rang", "commune", "code", "dép.", "score", "intervalle 80 %", "leviers") if fr else \
            ("rank", "commune", "code", "dept", "score", "80 % interval", "levers"):
        table.add_column(col, overflow="fold")
    for r in top.itertuples():
        table.add_row(str(int(r.priority_rank)), str(r.zone_name), r.zone_code, str(r.department),
                      f"{r.priority_score:.1f}", f"{r.priority_score_low:.1f}–{r.priority_score_high:.1f}",
                      str(r.top_levers)[:160])
    console.print(table)
    n = int(pri["priority_flag"].sum())
    console.print(f"{n:,} priority zones; outputs: {out / 'priorities.csv'}, {out / 'priorities.gpkg'}, "
                  f"{out / 'explanations.parquet'}")


def _print_iris_summary(res, lang: str) -> None:
    fr = lang == "fr"
    console.print((res.out_dir / "backtest_table.txt").read_text(encoding="utf-8"))
    table = Table(title="IRIS prioritaires" if fr else "Priority IRIS")
    for col in ("rang", "IRIS", "code", "dép.", "score", "intervalle 80 %", "leviers") if fr else \
            ("rank", "IRIS", "code", "dept", "score", "80 % interval", "levers"):
        table.add_column(col, overflow="fold")
    for r in res.priorities.head(10).itertuples():
        table.add_row(str(int(r.priority_rank)), str(r.zone_name), r.zone_code, str(r.department),
                      f"{r.priority_score:.1f}", f"{r.priority_score_low:.1f}–{r.priority_score_high:.1f}",
                      str(getattr(r, f"top_levers_{lang}") or "")[:90])
    console.print(table)
    total = sum(res.timings.values())
    console.print(f"{int(res.priorities['priority_flag'].sum()):,} priority IRIS of "
                  f"{len(res.priorities):,}; outputs in {res.out_dir} (priorities.csv, map.html, zones/, "
                  f"metrics.json); IRIS stage {total:.0f} s")


@app.command()
def explain(
    code: Annotated[str, typer.Argument(
        help="Zone code: an INSEE commune code (COG of the run) or a 9-character IRIS code (IRIS run).")],
    out: OutOpt = Path("out"),
    lang: LangOpt = "fr",
    html: Annotated[bool, typer.Option("--html", help="Write the zone's card <out>/zones/<code>.html "
                                                      "(<out>/iris/zones/ for an IRIS).")] = False,
) -> None:
    """A zone's priority score, rank, interval and top levers, from a finished run; with
    ``--html``, its zone card (any zone, flagged or not). IRIS codes read ``<out>/iris``."""
    import re

    from territoria.pipelines.explain_zone import zone_explanation
    from territoria.pipelines.iris_report import IRIS_CODE, iris_explanation, write_iris_card

    if re.fullmatch(IRIS_CODE, code.strip()):
        console.print(iris_explanation(out, code, lang=lang))
        if html:
            console.print(f"IRIS card: {write_iris_card(out, code, lang=lang)}")
        return

    console.print(zone_explanation(out, code, lang=lang))
    if html:
        from territoria.pipelines.report import write_zone_card

        console.print(f"zone card: {write_zone_card(out, code, lang=lang)}")


@app.command()
def report(
    out: OutOpt = Path("out"),
    lang: LangOpt = "fr",
) -> None:
    """Map, zone cards, planner's report, audit files and figures of a finished run."""
    from territoria.pipelines.report import run_report

    paths = run_report(out, lang=lang, console=console)
    n_cards = len(list(Path(paths["zones"]).glob("*.html"))) if "zones" in paths else 0
    console.print(f"map {paths['map']}, report {paths['report']}, {n_cards:,} zone cards in {paths['zones']}, "
                  f"audit in {Path(paths['model_card']).parent}, figures in {Path(paths['priority_map_png']).parent}")


@app.command()
def scenario(
    file: Annotated[Path, typer.Argument(help="Scenario YAML (see docs/SCENARIOS.md).")],
    data: DataOpt = None,
    out: OutOpt = Path("out"),
    conf: ConfOpt = None,
) -> None:
    """Change lever indicators for some zones, re-score and compare with the run's baseline."""
    from territoria.models.scenarios import CAVEAT_EN, load_scenario
    from territoria.pipelines.build_features import run_build_features
    from territoria.pipelines.prioritise import load_engine, run_period, run_scenario
    from territoria.registry import load_registry
    from territoria.settings import load_parameters

    period = run_period(out)
    fb = run_build_features(data_dir=data, out_dir=None, conf=conf, console=console,
                            as_of=period if period != load_parameters(conf).reference_period else None,
                            source_cache=out / ".cache")
    sc = load_scenario(file, load_registry(), fb.identity)
    engine = load_engine(fb, out)
    table = run_scenario(engine, sc, out, console=console)
    inside = table[table["in_scenario"]]
    console.print(
        f"scenario {sc.name}: {len(inside):,} zones changed; mean score change "
        f"{inside['score_change'].mean():+.2f}; {int((table['flag_change'] == 'leaves the list').sum())} leave "
        f"and {int((table['flag_change'] == 'enters the list').sum())} enter the priority list."
    )
    console.print(f"[italic]{CAVEAT_EN}[/italic]")
    console.print(f"comparison in {out / 'scenarios' / (sc.name + '.csv')}")


@app.command()
def counterfactual(
    code: Annotated[str, typer.Argument(help="Zone code (INSEE commune code, COG of the run).")],
    data: DataOpt = None,
    out: OutOpt = Path("out"),
    conf: ConfOpt = None,
) -> None:
    """The smallest lever change found that takes a zone out of the priority list."""
    from territoria.models.scenarios import CAVEAT_EN
    from territoria.pipelines.build_features import run_build_features
    from territoria.pipelines.prioritise import load_engine, run_period
    from territoria.settings import load_parameters

    period = run_period(out)
    fb = run_build_features(data_dir=data, out_dir=None, conf=conf, console=console,
                            as_of=period if period != load_parameters(conf).reference_period else None,
                            source_cache=out / ".cache")
    engine = load_engine(fb, out)
    res = engine.counterfactual(engine.baseline(), code.strip())
    console.print(f"{code}: priority score {res['score']:.1f}, list threshold {res['threshold']:.1f}")
    if res["moves"].empty:
        console.print("already outside the list" if res["score"] < res["threshold"] else "no lever move lowers the score")
    else:
        table = Table(title="lever changes (greedy search, steps of 1/10 of the national 5-95 % range)")
        for col in ("indicator", "current", "target", "change", "unit"):
            table.add_column(col)
        for r in res["moves"].itertuples():
            table.add_row(r.indicator, f"{r.current:.2f}", f"{r.target:.2f}", f"{r.change:+.2f}", r.unit)
        console.print(table)
        verdict = "leaves the list" if res["leaves_list"] else "still above the threshold after the bounded search"
        console.print(f"score after: {res['final_score']:.1f} — {verdict}")
    if res["flagged_by_cumulated_burdens"]:
        console.print("note: the zone is also flagged for cumulated burdens, which this search does not lift")
    console.print(f"[italic]{CAVEAT_EN}[/italic]")


@app.command()
def verify(
    out: Annotated[Path, typer.Argument(help="Run folder (holding manifest.json).")] = Path("out"),
    data: DataOpt = None,
) -> None:
    """Check that a run's outputs and inputs still match the hashes recorded with them."""
    from territoria.verify import verify_run

    report = verify_run(out, data_dir=data)
    head, *problems = report.lines()
    console.print(head, highlight=False)
    for line in problems:
        err_console.print(escape(line), highlight=False, soft_wrap=True)
    raise typer.Exit(report.exit_code)


@data_app.command("check")
def data_check(data: DataOpt = None) -> None:
    """Validate a data folder and report, file by file, what was found."""
    from territoria.features.sources import all_sources
    from territoria.paths import bundled_data_dir

    folder = data or bundled_data_dir()
    table = Table(title=f"Data check: {folder}")
    for col in ("adapter", "dataset", "vintage", "file", "rows", "coverage", "status"):
        table.add_column(col, overflow="fold")
    n_problems = 0
    for cls in all_sources().values():
        for rep in cls(folder).check():
            status = "ok" if rep.ok else "; ".join(rep.problems)
            n_problems += not rep.ok
            table.add_row(
                rep.adapter, rep.dataset, rep.vintage, Path(rep.file).name, str(rep.rows), rep.coverage,
                status if rep.ok else f"[red]{status}[/red]",
            )
    console.print(table)
    if n_problems:
        err_console.print(f"{n_problems} file(s) with problems")
        raise typer.Exit(2)
    console.print("all files ok")


@data_app.command("bundle")
def data_bundle(
    raw: Annotated[Path, typer.Argument(help="Folder of raw official files (e.g. ../shared/data).")],
    dest: Annotated[Path, typer.Argument(help="Bundle folder to write (the repository's data/).")] = Path("data"),
) -> None:
    """Rebuild the compact data bundle from the raw official files."""
    from territoria.bundle import build_bundle

    written = build_bundle(raw, dest)
    size = sum(p.stat().st_size for p in written) / 1e6
    console.print(f"{len(written)} files, {size:.1f} MB in {dest}")


@app.command()
def dashboard(
    out: OutOpt = Path("out"),
    host: Annotated[str, typer.Option(
        "--host", help="Address to serve on. Default 127.0.0.1: only this machine can open the app.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8501,
    lang: LangOpt = "fr",
) -> None:
    """Local web app of a finished run: national map, ranked table, zone detail, live scenarios."""
    from territoria.pipelines.dashboard import check_host, check_run_dir, streamlit_args

    run_dir = check_run_dir(out)
    args = streamlit_args(run_dir, host=host.strip(), port=port, lang=lang)
    if not check_host(host):
        err_console.print(f"[bold yellow]warning:[/bold yellow] serving on {escape(host)}: anyone who can reach "
                          f"this address sees the run's outputs", highlight=False)
    console.print(f"dashboard of {run_dir} on http://{host.strip()}:{port} (Ctrl+C to stop)", highlight=False)
    # streamlit's own command line, in this process: stopping `territoria dashboard` stops the server
    from streamlit.web.cli import main as streamlit_main

    streamlit_main(args=args, prog_name="streamlit")


@app.command()
def grid(
    out: OutOpt = Path("out"),
    cells: Annotated[int, typer.Option(
        "--cells", min=1000, help="Cells of the SYNTHETIC grid to draw (not real data; ignored with --input).")] = 2_300_000,
    input_path: Annotated[Optional[Path], typer.Option(
        "--input", help="Grid table: a parquet file or a folder of parquet parts (see docs/GRID.md).")] = None,
    engine: Annotated[str, typer.Option("--engine", help="local (one process) or dask.")] = "local",
    scheduler: Annotated[Optional[str], typer.Option(
        "--scheduler", help="Dask scheduler address, e.g. tcp://host:8786 (default: a LocalCluster).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Workers of the default LocalCluster.")] = 2,
    threads: Annotated[int, typer.Option("--threads", help="LightGBM threads of the local engine.")] = 2,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed (default: conf/grid.yml).")] = None,
    conf: Annotated[Optional[Path], typer.Option("--conf", help="Grid configuration (default conf/grid.yml).")] = None,
    write_features: Annotated[bool, typer.Option(
        "--write-features", help="Also write the feature matrix per partition (grid_features/).")] = False,
    join_communes: Annotated[Optional[bool], typer.Option(
        "--join-communes/--no-join-communes",
        help="Give each cell the commune containing its centre (spatial join on the commune polygons of "
             "--data; default: only when the input has no parent_commune/department columns).")] = None,
    data: DataOpt = None,
) -> None:
    """200 m grid: features, LightGBM and SHAP for every cell, locally or on a Dask cluster."""
    import os

    # LightGBM's OpenMP threads otherwise spin while they wait: on a machine shared with other
    # jobs, 2 spinning threads trained ~10x slower than 1 (measured); set before LightGBM loads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from territoria.pipelines.grid import run_grid, summary_lines

    res = run_grid(out, input_path=input_path, n_cells=cells, engine=engine, scheduler=scheduler,
                   n_workers=workers, threads=threads, seed=seed, conf=conf, write_features=write_features,
                   join_communes=join_communes, data_dir=data, console=console)
    for line in summary_lines(res):
        console.print(line, highlight=False)
    console.print(f"outputs: {res.paths['cells']}, {res.paths['shap']}/, {res.paths['run']}", highlight=False)


def main() -> None:
    """Console-script entry point: one-line errors; exit code 2 on bad input, 1 on an output
    that cannot be written or another operating-system error."""
    freeze_at_exit()  # the process ends with the command
    try:
        app()
    except DataError as exc:
        _print_error(str(exc))
        sys.exit(1 if isinstance(exc, OutputError) else 2)
    except OSError as exc:
        _print_error(f"{exc.filename}: {os_problem(exc)}" if exc.filename else os_problem(exc))
        sys.exit(1)


def _print_error(message: str) -> None:
    # escaped: a message may hold brackets (`pip install territoria[tune]`) that are not markup
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
