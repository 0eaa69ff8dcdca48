"""Run manifests: which inputs and code produced a run's outputs, and whether they still match.

:func:`write_manifest` records, at the end of a run, the SHA-256 of every input file and of
every output, the versions of the packages that computed them, the Python version and the git
commit of the code. :func:`verify_run` (``territoria verify DIR``) recomputes the hashes and
says which files are missing or were modified since.

``DIR/manifest.json``::

    {"data_dir": "/path/to/data",                 # inputs are relative to it
     "inputs": {"insee/filosofi/...csv.gz": "<sha256>", ...},
     "outputs": {"features.parquet": "<sha256>", ...},   # relative to DIR
     "versions": {"python": "3.12.3", "pandas": "3.1.0", ...},
     "git_commit": "<sha1>" or null, "created": "<ISO time>"}

The input hashes of ``DIR/data_report.json`` (written by the feature stage, ``files``) and of an
optional ``DIR/lineage.json`` (same keys as the manifest: ``data_dir``, ``inputs``,
``outputs``) are checked as well.
"""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from territoria.digest import FileDigests, file_sha256
from territoria.errors import DataError
from territoria.io import write_json
from territoria.paths import bundled_data_dir

MANIFEST = "manifest.json"
#: Packages whose version is recorded: the ones that compute or write the outputs.
PACKAGES = ("territoria", "pandas", "numpy", "lightgbm", "scikit-learn", "shap", "geopandas",
            "mlflow-skinny")
#: Files of a run folder that list expected hashes, and the keys holding input hashes.
_RECORDS = {MANIFEST: ("inputs",), "data_report.json": ("files",), "lineage.json": ("inputs", "files")}


def package_versions() -> dict[str, str | None]:
    """Python version and installed version of each of :data:`PACKAGES` (``None`` if absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo: Path | None = None) -> str | None:
    """Commit of the code (``git rev-parse HEAD``), or ``None`` outside a git checkout."""
    repo = repo or Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = res.stdout.strip()
    return commit or None


def write_manifest(
    out_dir: Path | str,
    inputs: dict[str, str],
    outputs: list[Path],
    *,
    data_dir: Path | str | None = None,
    digests: FileDigests | None = None,
) -> Path:
    """Write ``out_dir/manifest.json`` for a finished run.

    Parameters
    ----------
    out_dir : Path
        Run folder; the manifest is written there (atomically).
    inputs : dict of str to str
        Input files relative to ``data_dir`` → SHA-256, as the feature stage records them
        (``FeatureBuild.file_hashes``, ``files`` of ``data_report.json``).
    outputs : list of Path
        Output files (absolute, or relative to ``out_dir``); hashed now.
    data_dir : Path, optional
        Folder the inputs are relative to (the bundled data by default).
    digests : FileDigests, optional
        The run's digests of files it already hashed (its lineage's).

    Returns
    -------
    Path
        The manifest written.
    """
    out_dir = Path(out_dir)
    digest = digests if digests is not None else file_sha256
    hashed = {}
    for p in outputs:
        p = Path(p) if Path(p).is_absolute() else out_dir / p
        if not p.is_file():
            raise DataError(p, "output listed for the manifest does not exist")
        hashed[_relative(p, out_dir)] = digest(p)
    hashed.pop(MANIFEST, None)  # the manifest cannot hold its own hash
    doc = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data_dir": str(Path(data_dir) if data_dir is not None else bundled_data_dir()),
        "inputs": dict(inputs),
        "outputs": hashed,
        "versions": package_versions(),
        "git_commit": git_commit(),
    }
    return write_json(doc, out_dir / MANIFEST)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # an output outside the run folder keeps its absolute path
        return str(path.resolve())


@dataclass(frozen=True)
class FileCheck:
    """One recorded hash compared with the file on disk."""

    kind: str  # "input" or "output"
    name: str  # as recorded (relative to the data dir or the run folder)
    path: Path
    status: str  # "ok", "missing" or "modified"
    recorded_in: str

    def line(self) -> str:
        return f"{self.kind} {self.name}: {self.status} (recorded in {self.recorded_in}; {self.path})"


@dataclass
class VerifyReport:
    """What :func:`verify_run` found: one check per recorded file."""

    out_dir: Path
    data_dir: Path
    checks: list[FileCheck] = field(default_factory=list)

    @property
    def problems(self) -> list[FileCheck]:
        return [c for c in self.checks if c.status != "ok"]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        """0 when every file matches its recorded hash, 2 otherwise."""
        return 0 if self.ok else 2

    def lines(self) -> list[str]:
        n_in = sum(c.kind == "input" for c in self.checks)
        head = (f"{len(self.checks) - n_in} outputs and {n_in} inputs checked: "
                + ("all match" if self.ok else f"{len(self.problems)} missing or modified"))
        return [head, *(c.line() for c in self.problems)]


def _load(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not a valid JSON record ({exc})") from None
    if not isinstance(doc, dict):
        raise DataError(path, "expected a JSON object")
    return doc


def _hashes(doc: dict, key: str, path: Path) -> dict[str, str]:
    value = doc.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DataError(path, f"'{key}' must map file names to SHA-256 strings")
    return value


def verify_run(out_dir: Path | str, data_dir: Path | str | None = None) -> VerifyReport:
    """Recompute the hashes recorded in a run folder and report missing or modified files.

    Parameters
    ----------
    out_dir : Path
        Run folder holding ``manifest.json`` and/or ``data_report.json`` (``lineage.json``
        is read when present).
    data_dir : Path, optional
        Folder of the inputs; by default the one recorded in the run, or the bundled data when
        the recorded folder no longer exists.

    Raises
    ------
    DataError
        When the folder records no hashes at all, or a record is not valid JSON.
    """
    out_dir = Path(out_dir)
    docs = {name: _load(out_dir / name) for name in _RECORDS if (out_dir / name).is_file()}
    if not docs:
        raise DataError(out_dir, f"no {MANIFEST} or data_report.json: not a run folder")
    if data_dir is None:
        recorded = [Path(d["data_dir"]) for d in docs.values() if d.get("data_dir")]
        data_dir = next((d for d in recorded if d.is_dir()), bundled_data_dir())
    report = VerifyReport(out_dir, Path(data_dir))
    seen = set()
    for name, doc in docs.items():
        expected = [("input", Path(data_dir), k) for k in _RECORDS[name]]
        expected.append(("output", out_dir, "outputs"))
        for kind, root, key in expected:
            for rel, sha in _hashes(doc, key, out_dir / name).items():
                if (kind, rel, sha) in seen:
                    continue
                seen.add((kind, rel, sha))
                path = root / rel
                status = ("missing" if not path.is_file()
                          else "ok" if file_sha256(path) == sha else "modified")
                report.checks.append(FileCheck(kind, rel, path, status, name))
    return report
