"""Run manifests and ``territoria verify``: hashes recorded, then missing or modified files found."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from territoria.cli import app
from territoria.digest import FileDigests, file_sha256
from territoria.errors import DataError
from territoria.verify import MANIFEST, PACKAGES, verify_run, write_manifest

CLI = str(Path(sys.executable).parent / "territoria")


@pytest.fixture
def run_dir(tmp_path):
    """A small run: two input files in a data folder, two outputs and a data report."""
    data = tmp_path / "data"
    (data / "insee").mkdir(parents=True)
    (data / "insee" / "a.csv").write_text("CODGEO;X\n01001;1\n", encoding="utf-8")
    (data / "b.json").write_text("{}", encoding="utf-8")
    out = tmp_path / "out"
    (out / "models").mkdir(parents=True)
    (out / "features.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 10 + b"PAR1")
    (out / "models" / "m.txt").write_text("tree\n", encoding="utf-8")
    inputs = {rel: file_sha256(data / rel) for rel in ("insee/a.csv", "b.json")}
    # the feature stage's report, as pipelines/build_features.py writes it
    (out / "data_report.json").write_text(json.dumps({"data_dir": str(data), "files": inputs}))
    write_manifest(out, inputs, [out / "features.parquet", Path("models/m.txt")], data_dir=data)
    return out, data


def test_manifest_content(run_dir):
    out, data = run_dir
    doc = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert doc["data_dir"] == str(data)
    assert set(doc["inputs"]) == {"insee/a.csv", "b.json"}
    assert doc["outputs"] == {
        "features.parquet": file_sha256(out / "features.parquet"),
        "models/m.txt": file_sha256(out / "models" / "m.txt"),
    }
    assert set(doc["versions"]) == {"python", *PACKAGES}
    assert doc["versions"]["pandas"] and doc["versions"]["territoria"]
    # this test runs from a git checkout: the commit is a full SHA-1
    assert doc["git_commit"] is None or len(doc["git_commit"]) == 40


def test_run_digests_hash_a_file_once_until_it_is_replaced_or_rewritten(run_dir, monkeypatch):
    import territoria.digest as digest

    out, data = run_dir
    hashed = []
    monkeypatch.setattr(digest, "file_sha256", lambda p: hashed.append(Path(p).name) or file_sha256(p))
    digests = FileDigests()
    target = out / "features.parquet"
    first = digests(target)
    assert digests(target) == first == file_sha256(target) and hashed == ["features.parquet"]
    # the manifest reads the lineage's digests: the same file is not read again
    write_manifest(out, {}, [target], data_dir=data, digests=digests)
    assert hashed == ["features.parquet"]
    # a run's digests start empty: the first to hash a file (the lineage) keeps it for the next
    fresh = FileDigests()
    write_manifest(out, {}, [target], data_dir=data, digests=fresh)
    assert len(fresh) == 1 and hashed == ["features.parquet"] * 2
    hashed.clear()
    assert json.loads((out / MANIFEST).read_text())["outputs"] == {"features.parquet": first}
    # replaced as the writers do (a new file renamed over it), or rewritten in place: hashed again
    (out / "new.parquet").write_bytes(b"other bytes")
    os.replace(out / "new.parquet", target)
    assert digests(target) == file_sha256(target) != first
    with open(target, "ab") as fh:
        fh.write(b"!")
    assert digests(target) == file_sha256(target)
    assert hashed == ["features.parquet"] * 2


def test_verify_passes_then_names_the_modified_output(run_dir):
    out, _ = run_dir
    report = verify_run(out)
    assert report.ok and report.exit_code == 0
    assert len(report.checks) == 4  # data_report repeats the manifest's inputs: checked once
    target = out / "features.parquet"
    data = bytearray(target.read_bytes())
    data[100] ^= 1  # one bit of one byte
    target.write_bytes(bytes(data))
    report = verify_run(out)
    assert report.exit_code == 2
    assert [(c.kind, c.name, c.status) for c in report.problems] == [("output", "features.parquet", "modified")]
    assert "features.parquet: modified" in "\n".join(report.lines())


def test_removed_input_is_named(run_dir):
    out, data = run_dir
    (data / "insee" / "a.csv").unlink()
    report = verify_run(out)
    assert report.exit_code == 2
    assert {(c.kind, c.name, c.status) for c in report.problems} == {("input", "insee/a.csv", "missing")}


def test_lineage_is_checked_when_present(run_dir):
    out, _ = run_dir
    (out / "lineage.json").write_text(json.dumps({"outputs": {"models/m.txt": "0" * 64}}))
    report = verify_run(out)
    assert [(c.name, c.status, c.recorded_in) for c in report.problems] == [
        ("models/m.txt", "modified", "lineage.json")
    ]


def test_not_a_run_folder_and_broken_manifest(tmp_path):
    with pytest.raises(DataError, match="not a run folder"):
        verify_run(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"manifest.json: not a valid JSON record"):
        verify_run(tmp_path)
    (tmp_path / MANIFEST).write_text('{"inputs": {"a.csv": 3}}', encoding="utf-8")
    with pytest.raises(DataError, match="'inputs' must map file names to SHA-256 strings"):
        verify_run(tmp_path)


def test_manifest_refuses_a_missing_output(tmp_path):
    with pytest.raises(DataError, match="output listed for the manifest does not exist"):
        write_manifest(tmp_path, {}, [Path("nothing.parquet")])


def test_cli_exit_codes(run_dir):
    out, data = run_dir
    runner = CliRunner()
    res = runner.invoke(app, ["verify", str(out)])
    assert res.exit_code == 0 and "all match" in res.stdout
    (out / "models" / "m.txt").write_text("other tree\n", encoding="utf-8")
    res = runner.invoke(app, ["verify", str(out), "--data", str(data)])
    assert res.exit_code == 2
    assert "output models/m.txt: modified" in res.stderr


def test_console_script_prints_one_line_for_an_unreadable_manifest(tmp_path):
    (tmp_path / MANIFEST).write_text("[1, 2", encoding="utf-8")
    res = subprocess.run([CLI, "verify", str(tmp_path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("error:") and "manifest.json" in res.stderr
