"""The command line: bad input ends with one clear line and exit code 2, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from territoria.paths import bundled_data_dir

CLI = str(Path(sys.executable).parent / "territoria")


def _run(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def _data_with(tmp_path, relative, content):
    """A data folder linking every bundled file, with ``relative`` replaced by ``content``."""
    root = tmp_path / "data"
    bundle = bundled_data_dir()
    for src in bundle.rglob("*"):
        if src.is_file():
            dest = root / src.relative_to(bundle)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(src)
    target = root / relative
    for old in (target, target.with_name(target.name + ".gz")):
        if old.is_symlink() or old.exists():
            old.unlink()
    target.write_text(content, encoding="utf-8")
    return root


def test_malformed_file_gives_one_line_and_exit_2(tmp_path):
    data = _data_with(tmp_path, "insee/filosofi/cc_filosofi_2019_COM.CSV", "CODGEO,MED19\n01001,1\n")
    res = _run("run", "--data", str(data), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr + res.stdout
    err = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    assert "cc_filosofi_2019_COM.CSV" in err[0] and "wrong separator" in err[0]
    assert not (tmp_path / "out" / "features.parquet").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="a file size limit (RLIMIT_FSIZE)")
def test_an_output_that_cannot_be_written_gives_one_line_and_exit_1(tmp_path):
    import resource

    def small_files():  # a 2 MB file size limit: the first larger output fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024**2, 2 * 1024**2))

    env = {**os.environ, "COLUMNS": "200"}
    out = tmp_path / "out"
    res = subprocess.run([CLI, "run", "--out", str(out)], capture_output=True, text=True, env=env, timeout=600,
                         preexec_fn=small_files)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr + res.stdout
    err = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "file size limit" in err[0]
    named = Path(err[0].removeprefix("error: ").split(": ")[0])
    assert named.parent.is_relative_to(out) and not named.name.startswith(".")
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # no half-written file left
    assert not (out / "run.json").exists()


def test_an_output_folder_that_cannot_be_made_fails_at_once(tmp_path):
    (tmp_path / "a_file").write_text("", encoding="utf-8")
    res = _run("run", "--out", str(tmp_path / "a_file" / "out"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"error: {tmp_path / 'a_file' / 'out'}: Not a directory" in res.stderr
    assert "town halls" not in res.stderr  # before the sources are read


def test_bad_parameters_file(tmp_path):
    conf = tmp_path / "params.yml"
    conf.write_text("reference_period: soon\n", encoding="utf-8")
    res = _run("run", "--conf", str(conf), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "params.yml" in res.stderr and "reference_period" in res.stderr
    assert "Traceback" not in res.stderr


def test_data_check_reports_each_file(tmp_path):
    data = _data_with(tmp_path, "social/neet_communes_2008_2013_2018.csv", "")
    res = _run("data", "check", "--data", str(data))
    assert res.returncode == 2
    assert "neet" in res.stdout and "empty file" in res.stdout
    assert "filosofi_commune" in res.stdout  # the other files are still checked and listed
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_data_check_on_the_bundle_is_clean():
    res = _run("data", "check")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "all files ok" in res.stdout


def test_help_shows_the_optional_extra_in_brackets():
    # rich reads "[tune]" as markup and drops it unless escaped
    res = _run("tune", "--help")
    assert res.returncode == 0 and "territoria[tune]" in res.stdout
