"""The notebooks of ``notebooks/`` execute end to end on the bundled data, and stay light.

Each notebook runs in a fresh Jupyter kernel (nbclient, as nbmake does): a failing cell or
assertion fails the test. The notebooks reuse this session's expensive fixtures instead of
rebuilding them: ``TERRITORIA_RUN_DIR`` points them at ``main_run`` (the small-model run of
every commune), and their cache starts with the parsed sources of ``feature_build``, so the
notebooks' own feature builds skip reading the official formats.
``pytest --nbmake notebooks/`` runs them alone (building the cached run on first use).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from territoria import notebooks as nbh
from territoria.errors import DataError
from territoria.notebooks import CACHE_ENV, RUN_DIR_ENV

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PAIRS = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def test_three_notebooks_paired_with_percent_scripts():
    assert PAIRS == ["01_data_scientist", "02_planner", "03_auditor"]
    for stem in PAIRS:
        assert (NOTEBOOKS / f"{stem}.py").exists(), f"{stem}.py (jupytext pair) missing"


@pytest.mark.parametrize("stem", PAIRS)
def test_stored_notebook_matches_its_script_and_has_no_outputs(stem):
    """The .ipynb is what the .py says (``jupytext --sync``), stored without outputs."""
    jupytext = pytest.importorskip("jupytext")
    nb = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text(encoding="utf-8"))
    assert nb["metadata"]["jupytext"]["formats"] == "ipynb,py:percent"
    for cell in nb["cells"]:
        assert not cell.get("outputs") and cell.get("execution_count") is None, f"{stem}: stored outputs"
    script = jupytext.read(NOTEBOOKS / f"{stem}.py")
    stored = [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    assert stored == [(c["cell_type"], c["source"]) for c in script.cells], \
        f"{stem}.ipynb and {stem}.py differ: run `jupytext --sync notebooks/{stem}.py`"


# --------------------------------------------------------------------------- the shared helper
def test_run_dir_from_the_environment_must_be_a_finished_run(tmp_path, monkeypatch):
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path))
    with pytest.raises(DataError, match="not a finished run"):
        nbh.run_dir()
    for name in ("priorities.csv", "priority_policy.json", "explanations.parquet"):
        (tmp_path / name).write_text("x")
    (tmp_path / "models").mkdir()
    assert nbh.run_dir() == tmp_path


def test_cached_run_is_reused_without_rebuilding(tmp_path, monkeypatch):
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(nbh, "content_key", lambda: "k1")
    done = tmp_path / "run-k1"
    done.mkdir()
    (done / nbh.COMPLETE).write_text("{}")

    def no_rebuild(*a, **k):
        raise AssertionError("rebuilt a complete run")

    monkeypatch.setattr("territoria.pipelines.main.run_main", no_rebuild)
    assert nbh.run_dir() == done


def test_content_key_follows_the_data_files(tmp_path, monkeypatch):
    for name, text in (("a", "1"), ("b", "2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.csv").write_text(text)
    keys = []
    for name in ("a", "b", "a"):
        monkeypatch.setenv("TERRITORIA_DATA", str(tmp_path / name))
        keys.append(nbh.content_key())
    assert keys[0] == keys[2] != keys[1] and len(keys[0]) == 20


def test_file_lock_excludes_another_process(tmp_path):
    import subprocess
    import sys

    lock = tmp_path / "x.lock"
    code = ("import sys, time; from territoria.notebooks import file_lock\n"
            "with file_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError):
            with nbh.file_lock(lock, timeout=0.2):
                pass
    finally:
        proc.kill()
        proc.wait()
    with nbh.file_lock(lock, timeout=5):  # released when its holder died
        pass


def test_small_models_conf_keeps_only_the_chosen_key_targets(tmp_path):
    from territoria.models.targets import load_model_config

    conf = load_model_config(nbh.small_models_conf(tmp_path / "m.yml", key_targets=["median_income_2019_2021"]))
    assert [s.name for s in conf.key_targets()] == ["median_income_2019_2021"]
    assert conf.model["n_estimators"] == nbh.SMALL_MODEL["n_estimators"] and conf.cv.n_splits == 3
    with pytest.raises(DataError, match="unknown target"):
        nbh.small_models_conf(tmp_path / "n.yml", key_targets=["nope"])


# --------------------------------------------------------------------------- execution
@pytest.fixture(scope="module")
def notebook_env(main_run, feature_build, tmp_path_factory):
    """Environment of the notebooks' kernels: the session's run and a primed source cache."""
    cache = tmp_path_factory.mktemp("notebook_cache")
    shutil.copytree(feature_build.out_dir / ".cache", cache / "features" / ".cache")
    return {RUN_DIR_ENV: str(main_run.run_json.parent), CACHE_ENV: str(cache)}


@pytest.mark.slow
@pytest.mark.parametrize("stem", PAIRS)
def test_notebook_executes(stem, notebook_env, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for k, v in notebook_env.items():
        monkeypatch.setenv(k, v)  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    t0 = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=900, startup_timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    seconds = time.perf_counter() - t0
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 2, f"{stem}: {images} figure(s) shown"
    print(f"{stem}: executed in {seconds:.0f} s, {images} figures")
