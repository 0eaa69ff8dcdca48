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
