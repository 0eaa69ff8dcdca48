"""What the notebooks in ``notebooks/`` share: one source cache, one finished run, a lock.

The planner's and the auditor's notebooks read a finished run (``territoria run --out DIR``).
Creating one on all communes takes minutes, so it is made once and shared:

* ``TERRITORIA_RUN_DIR`` set: that folder is used as it is (any finished run, e.g. ``out``);
* otherwise :func:`run_dir` creates a run with small LightGBM models (the test suite's
  ``fast_models_conf``: 40 trees, 3 folds; accuracy is measured by ``benchmarks/backtest.py``)
  under the cache folder, in ``run-<key>`` where the key digests everything the run depends
  on (data files, configuration, the package's code, the small-model settings, library
  versions). A second notebook, or a second execution, finds it ready; a file lock makes
  two notebooks started at once build it only once; an interrupted build is started over.

The cache folder is ``TERRITORIA_NOTEBOOK_CACHE`` or ``$XDG_CACHE_HOME/territoria/notebooks``
(``~/.cache/territoria/notebooks``). Its ``features/`` folder is the output folder of the
notebooks' feature builds, so its ``.cache`` of parsed official files (see
:mod:`territoria.pipelines.cache`) is shared too: only the first build reads the official
formats.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata, resources
from pathlib import Path

from territoria.errors import DataError
from territoria.paths import user_cache_dir

RUN_DIR_ENV = "TERRITORIA_RUN_DIR"
CACHE_ENV = "TERRITORIA_NOTEBOOK_CACHE"

#: LightGBM settings of the small models (as the test suite's ``fast_models_conf``)
SMALL_MODEL = {"n_estimators": 40, "learning_rate": 0.15, "num_leaves": 15}
SMALL_CV_SPLITS = 3

#: the feature stage's outputs, copied into a run folder built on a shared feature build
FEATURE_OUTPUTS = ("panel.parquet", "features.parquet", "features_meta.csv", "data_report.json")
#: a run folder is complete when this file exists (written last)
COMPLETE = ".notebook-run-complete"
#: what a finished run must hold for the notebooks
RUN_FILES = ("priorities.csv", "priority_policy.json", "explanations.parquet", "models")
#: code and configuration a run depends on (package → file patterns)
_CODE = {
    "territoria": ("*.py",),
    "territoria.features": ("*.py",),
    "territoria.features.sources": ("*.py",),
    "territoria.models": ("*.py",),
    "territoria.pipelines": ("*.py", "templates/*.j2"),
    "territoria.conf": ("*.yml", "indicators/*.yml"),
}
_LIBRARIES = ("numpy", "pandas", "scikit-learn", "lightgbm", "shap", "libpysal", "esda", "geopandas")


# --------------------------------------------------------------------------- folders
def cache_root() -> Path:
    """The notebooks' cache folder (created)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        root = Path(env)
    else:
        root = user_cache_dir() / "notebooks"
    root.mkdir(parents=True, exist_ok=True)
    return root


def features_dir() -> Path:
    """Output folder of the notebooks' feature builds; its ``.cache`` holds the parsed sources."""
    path = cache_root() / "features"
    path.mkdir(parents=True, exist_ok=True)
    return path


def work_dir(name: str) -> Path:
    """An empty folder ``<cache>/work/<name>`` for a notebook's own outputs (emptied first)."""
    path = cache_root() / "work" / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------- lock
@contextmanager
def file_lock(path: Path | str, timeout: float = 3600.0) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created) for the ``with`` block.

    ``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows: the operating system releases the
    lock when the process dies, so an interrupted notebook never leaves a stale lock behind.
    Waits up to ``timeout`` seconds, then raises ``TimeoutError``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path, "a+b") as fh:
        try:
            import fcntl

            def acquire() -> bool:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    return False

            def release() -> None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except ImportError:  # Windows
            import msvcrt

            def acquire() -> bool:
                fh.seek(0)
                try:
                    msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
                    return True
                except OSError:
                    return False

            def release() -> None:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)

        while not acquire():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: still locked by another process after {timeout:.0f} s")
            time.sleep(0.5)
        try:
            yield path
        finally:
            release()


# --------------------------------------------------------------------------- configuration
def small_models_conf(path: Path | str, key_targets: list[str] | None = None) -> Path:
    """Write ``conf/models.yml`` with the small models to ``path`` and return it.

    ``key_targets`` (target names) keeps only those as key targets (the ones the training
    stage backtests and trains), e.g. ``["median_income_2019_2021"]``.
    """
    import yaml

    from territoria.paths import conf_dir

    doc = yaml.safe_load((conf_dir() / "models.yml").read_text(encoding="utf-8"))
    doc["model"].update(SMALL_MODEL)
    doc["cv"]["n_splits"] = SMALL_CV_SPLITS
    doc["intervals"]["normalised"] = False
    if key_targets is not None:
        unknown = sorted(set(key_targets) - set(doc["targets"]))
        if unknown:
            raise DataError("conf/models.yml", f"unknown target(s) {', '.join(unknown)}")
        for name, spec in doc["targets"].items():
            spec["key"] = name in key_targets
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def content_key() -> str:
    """Digest of what a small-model run on the bundled data depends on (20 hex digits).

    The data files (``TERRITORIA_DATA`` or the bundle), the configuration, the package's code
    and templates, the small-model settings and the versions of Python and of the libraries
    that compute it: any change gives another key, hence a new run.
    """
    import platform

    from territoria import __version__
    from territoria.paths import bundled_data_dir

    h = hashlib.sha256()
    h.update(f"territoria {__version__}|python {platform.python_version()}|".encode())
    h.update(json.dumps({"model": SMALL_MODEL, "n_splits": SMALL_CV_SPLITS}, sort_keys=True).encode())
    for lib in _LIBRARIES:
        try:
            h.update(f"|{lib} {metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"|{lib} -".encode())
    data = bundled_data_dir()
    files = [("data", data, p) for p in sorted(data.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    for package, patterns in _CODE.items():
        folder = Path(str(resources.files(package)))
        for pattern in patterns:
            files += [(package, folder, p) for p in sorted(folder.glob(pattern)) if p.is_file()]
    for label, folder, p in files:
        h.update(f"\n{label}/{p.relative_to(folder).as_posix()}:".encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------- features and run
def build_features(as_of: int | None = None, data_dir: Path | None = None, console=None):
    """``run_build_features`` into :func:`features_dir` (parsed sources cached there).

    Serialised by a lock so that two notebooks started together parse the official files once.
    """
    from territoria.pipelines.build_features import run_build_features

    folder = features_dir()
    with file_lock(cache_root() / "features.lock"):
        return run_build_features(data_dir=data_dir, out_dir=folder, as_of=as_of, console=console)


def check_run_dir(path: Path | str) -> Path:
    """``path`` if it holds a finished run, else a :class:`DataError` naming what is missing."""
    path = Path(path)
    missing = [n for n in RUN_FILES if not (path / n).exists()]
    if missing:
        raise DataError(path, f"not a finished run (missing {', '.join(missing)}): run "
                              f"`territoria run --out {path}` first, or unset {RUN_DIR_ENV}")
    return path


def run_dir(console=None) -> Path:
    """A finished run for the notebooks: ``TERRITORIA_RUN_DIR``, or the cached small-model run.

    The cached run is built (features, index, backtest, models, priorities, explanations,
    reports: :func:`territoria.pipelines.main.run_main`) on first use, under a lock; older
    cached runs (other keys) are removed once the new one is complete.
    """
    env = os.environ.get(RUN_DIR_ENV)
    if env:
        return check_run_dir(env)
    root = cache_root()
    key = content_key()
    dest = root / f"run-{key}"
    if (dest / COMPLETE).exists():
        return dest
    with file_lock(root / f"run-{key}.lock"):
        if (dest / COMPLETE).exists():  # built by another process while we waited
            return dest
        if dest.exists():  # an interrupted build: start over
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        from territoria.pipelines.main import run_main

        t0 = time.perf_counter()
        fb = build_features(console=console)
        for name in FEATURE_OUTPUTS:
            shutil.copyfile(features_dir() / name, dest / name)
        conf = small_models_conf(root / "conf" / f"models_small-{key}.yml")
        run_main(dest, features=fb, models_conf=conf, console=console)
        (dest / COMPLETE).write_text(
            json.dumps({"key": key, "seconds": round(time.perf_counter() - t0, 1)}) + "\n", encoding="utf-8")
    _prune(root, keep=dest)
    return dest


def _prune(root: Path, keep: Path) -> None:
    """Remove cached runs of other keys that no process is building."""
    for old in root.glob("run-*"):
        if old == keep or not old.is_dir():
            continue
        lock = root / f"{old.name}.lock"
        try:
            with file_lock(lock, timeout=0):
                shutil.rmtree(old, ignore_errors=True)
            lock.unlink(missing_ok=True)
        except TimeoutError:
            continue


def run_features(run: Path | str, console=None):
    """The feature build a run was made from (same data folder and reference period), with the
    sources cached in :func:`features_dir`: what ``load_engine`` needs to re-score zones."""
    from territoria.pipelines.prioritise import run_period
    from territoria.settings import load_parameters

    run = Path(run)
    period = run_period(run)
    data_dir = None
    record = run / "run.json"
    if record.exists():
        recorded = json.loads(record.read_text(encoding="utf-8")).get("data_dir", "bundled")
        data_dir = None if recorded in (None, "bundled") else Path(recorded)
    as_of = period if period != load_parameters().reference_period else None
    return build_features(as_of=as_of, data_dir=data_dir, console=console)
