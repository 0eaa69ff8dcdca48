"""The main job end to end (``main_run`` in conftest): run record, manifest, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from territoria.pipelines.prioritise import run_prioritise
from territoria.verify import verify_run


def test_run_record_names_versions_configuration_data_and_timings(main_run):
    out = main_run.run_json.parent
    run = json.loads(main_run.run_json.read_text(encoding="utf-8"))
    assert run["reference_period"] == 2021 and run["zones"] == 34875
    assert {"features", "train", "prioritise", "report"} <= set(run["timings_s"])
    assert {"priority.yml", "models.yml", "index.yml", "parameters.yml"} <= set(run["configuration"])
    assert run["configuration"]["models.yml"]["model"]["n_estimators"] == 40  # the override was used
    assert len(run["data_files"]) > 20 and all(len(h) == 64 for h in run["data_files"].values())
    assert set(run["mlflow_runs"]) and all(len(v) == 32 for v in run["mlflow_runs"].values())
    assert (out / "manifest.json").exists()


def test_every_output_is_there_and_matches_its_inputs(main_run):
    out = main_run.run_json.parent
    for name in ("metrics.json", "predictions.parquet", "priorities.csv", "priorities.gpkg",
                 "explanations.parquet", "map.html", "report.html", "audit/model_card.md"):
        assert (out / name).exists(), name
    report = verify_run(out)
    assert report.exit_code == 0, report
    pred = pd.read_parquet(out / "predictions.parquet")
    assert pred.groupby("target")["zone_code"].nunique().min() == 34875
    assert (pred["low_90"] <= pred["high_90"]).all()
    pri = main_run.priorities.priorities
    cards = {p.stem for p in (out / "zones").glob("*.html")}
    assert cards == set(pri.loc[pri["priority_flag"].astype(bool), "zone_code"])


def test_training_again_from_scratch_gives_a_byte_identical_priority_list(main_run, feature_build,
                                                                           fast_models_conf, tmp_path):
    """Reproducibility of the whole chain, not only of prioritisation: new models trained from
    the same features and seeds (their own MLflow store, a new folder) give the same list."""
    from territoria.models.targets import load_model_config
    from territoria.pipelines.train import run_train

    config = load_model_config(fast_models_conf)
    res = run_train(feature_build, tmp_path, config=config)
    models = {tr.spec.measure: tr for tr in res.models.values()}
    # the stability step forecasts with the new models' fold models
    run_prioritise(feature_build, res.index_model, models, tmp_path, model_config=config)
    out = main_run.run_json.parent
    assert (tmp_path / "predictions.parquet").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "predictions.parquet"),
                                  pd.read_parquet(out / "predictions.parquet"))
    assert (tmp_path / "priorities.csv").read_bytes() == (out / "priorities.csv").read_bytes()


def test_explain_html_writes_the_card_of_any_zone(main_run):
    from typer.testing import CliRunner

    from territoria.cli import app

    out = main_run.run_json.parent
    pri = main_run.priorities.priorities
    code = pri.loc[~pri["priority_flag"].astype(bool), "zone_code"].iloc[0]
    card = out / "zones" / f"{code}.html"
    try:
        res = CliRunner().invoke(app, ["explain", code, "--out", str(out), "--html", "--lang", "en"])
        assert res.exit_code == 0, res.output
        html = card.read_text(encoding="utf-8")
        assert code in html and "Priority zone" in html and "<svg" in html
    finally:
        card.unlink(missing_ok=True)  # keep the run's card set equal to its flagged zones
    # an unknown zone is a DataError, which the console script prints in one line with exit code 2
    from territoria.errors import DataError

    bad = CliRunner().invoke(app, ["explain", "00000", "--out", str(out), "--html"])
    assert bad.exit_code != 0 and isinstance(bad.exception, DataError) and "00000" in str(bad.exception)
    assert not (out / "zones" / "00000.html").exists()


def test_rerun_with_same_inputs_reuses_the_champions_and_gives_the_same_list(main_run, feature_build,
                                                                             fast_models_conf, tmp_path):
    import shutil

    from territoria.pipelines.main import run_main

    src = main_run.run_json.parent
    out = tmp_path / "run"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("zones", "explain", "figures"))
    again = run_main(out, features=feature_build, models_conf=fast_models_conf)
    assert again.reused_from is not None and set(again.train.timings) == {"reuse"}
    # nor SHAP nor the fold models' forecasts are recomputed: two results per model
    assert again.priorities.results_reused == 2 * len(main_run.train.models)
    run = json.loads(again.run_json.read_text(encoding="utf-8"))
    assert run["training"] == "reused" and run["mlflow_runs"] == json.loads(main_run.run_json.read_text())["mlflow_runs"]
    # idempotent: the same list and explanations, byte for byte, and a run that verifies
    for name in ("priorities.csv", "explanations.parquet", "score_points.parquet"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert verify_run(out).exit_code == 0


def test_changed_training_output_or_configuration_means_training_again(main_run, tmp_path):
    import shutil

    from territoria.pipelines.main import TRAIN_OUTPUTS, reusable_run

    src = main_run.run_json.parent
    fingerprint = json.loads(main_run.run_json.read_text(encoding="utf-8"))["fingerprint"]
    out = tmp_path / "run"
    out.mkdir()
    for name in ("run.json", "manifest.json", *TRAIN_OUTPUTS):
        shutil.copy(src / name, out / name)
    shutil.copytree(src / "models", out / "models")
    assert reusable_run(out, fingerprint) is not None
    assert reusable_run(out, "0" * 64) is None  # other data, configuration or code
    with open(out / "predictions.parquet", "ab") as fh:  # an output edited since the run
        fh.write(b"\0")
    assert reusable_run(out, fingerprint) is None


def _readable(path: Path) -> None:
    """Raise unless ``path`` is a complete file of its kind."""
    import pyarrow.parquet as pq
    import pyogrio

    suffix = path.suffix
    if suffix == ".parquet":
        pq.read_table(path)
    elif suffix == ".csv":
        pd.read_csv(path, low_memory=False)
    elif suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".html":
        assert path.read_text(encoding="utf-8").rstrip().endswith("</html>"), path
    elif suffix == ".gpkg":
        assert pyogrio.read_info(path)["features"] > 0, path
    elif suffix == ".png":
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and data[-8:-4] == b"IEND", path
    else:
        assert path.stat().st_size > 0, path


def _outputs(out: Path) -> dict[str, bytes]:
    """The run's visible output files (the parsed-source cache, MLflow's store and atomic
    temporaries aside) and their SHA-256."""
    import hashlib

    skip = (".cache", "mlruns")
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).digest()
            for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.parts[len(out.parts)] not in skip
            and p.name != "mlflow.db"}


@pytest.mark.parametrize("stage_line, delay", [
    ("priorities, clusters and explanations", 8.0),  # during SHAP, refits, writing the list
    # after the map's line: the map, the report and the audit still to write, the zone cards'
    # worker writing (the stage's own line plus a delay could see a quick machine finish first)
    ("map of", 0.3),
])
def test_a_run_killed_mid_stage_leaves_every_previous_output_readable(main_run, fast_models_conf, tmp_path,
                                                                      stage_line, delay):
    """SIGKILL a ``territoria run`` in the middle of a stage over a folder holding a complete
    run: every output is still there and complete (the previous version or a new one, never
    half of one), and running again gives the same list and a folder that verifies."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import threading
    import time

    from territoria.pipelines.main import run_main

    out = tmp_path / "run"
    shutil.copytree(main_run.run_json.parent, out)
    before = _outputs(out)
    cli = str(Path(sys.executable).parent / "territoria")
    proc = subprocess.Popen([cli, "run", "--out", str(out), "--models-conf", str(fast_models_conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    seen = threading.Event()

    def watch():
        for line in proc.stdout:
            if stage_line in line:
                seen.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        assert seen.wait(timeout=900), f"the run never reached '{stage_line}'"
        time.sleep(delay)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    after = _outputs(out)
    assert set(before) <= set(after), sorted(set(before) - set(after))
    for name in after:
        _readable(out / name)
    # running again completes and gives the same list
    again = run_main(out, features=main_run.features, models_conf=fast_models_conf)
    assert (out / "priorities.csv").read_bytes() == (main_run.run_json.parent / "priorities.csv").read_bytes()
    assert verify_run(out).exit_code == 0 and again.reused_from is not None
