"""Cache of parsed sources, keyed by the files' content and the adapter's code; and
:class:`ResultCache`, results computed from exactly identified inputs.

Reading the official formats (xlsx crosstabs, zipped CSV, French numbers) is the slowest part
of a run. A source's validated output is stored as (Geo)Parquet under the cache folder and
reused only while the file hashes, the adapter's source code, the shared readers and the
package version are all unchanged; anything else rebuilds it.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

import territoria
from territoria import readers
from territoria.digest import value_digest
from territoria.features.sources import base
from territoria.features.sources.base import Source, file_sha256
from territoria.io import write_atomic, write_parquet
from territoria.workers import worker_pool


def cache_key(src: Source, vintages: list[int]) -> str:
    """Digest of everything the parsed output depends on."""
    h = hashlib.sha256()
    h.update(f"{territoria.__version__}|{src.name}|{sorted(vintages)}".encode())
    for module in (inspect.getmodule(type(src)), base, readers):
        h.update(Path(inspect.getsourcefile(module)).read_bytes())
    for v in sorted(vintages):
        h.update(file_sha256(src.path(v)).encode())
    return h.hexdigest()[:20]


def cache_path(src: Source, vintages: list[int] | None, cache_dir: Path) -> Path:
    """Cache entry of ``src.load(vintages)`` (it may not exist yet)."""
    vintages = list(vintages) if vintages is not None else src.vintages
    return Path(cache_dir) / f"{src.name}-{cache_key(src, vintages)}.parquet"


def load_cached(src: Source, vintages: list[int] | None, cache_dir: Path | None, write: bool = True) -> pd.DataFrame:
    """``src.load(vintages)``, through the cache when ``cache_dir`` is given (read only, a
    missing entry parsed but not stored, when ``write`` is false)."""
    vintages = list(vintages) if vintages is not None else src.vintages
    if cache_dir is None:
        return src.load(vintages)
    path = cache_path(src, vintages, cache_dir)
    if path.exists():
        try:
            return gpd.read_parquet(path) if src.kind != "table" and _is_geo(path) else pd.read_parquet(path)
        except (OSError, ValueError):
            if write:
                path.unlink(missing_ok=True)  # a damaged entry is rebuilt, never trusted
    df = src.load(vintages)
    if not write:
        return df
    for stale in Path(cache_dir).glob(f"{src.name}-*.parquet"):
        stale.unlink(missing_ok=True)
    write_parquet(df, path)
    return df


def load_all(
    requests: dict[str, tuple[Source, list[int] | None]],
    cache_dir: Path | None,
    workers: int | None = None,
    write: bool = True,
) -> dict[str, pd.DataFrame]:
    """:func:`load_cached` of several sources, parsing the uncached ones in parallel.

    Parsing the official formats is CPU-bound and the sources are independent, so sources
    missing from the cache are parsed in worker processes (one per core by default, the
    largest files first); cached entries are read here. The result follows the order of
    ``requests`` whatever the order the workers finish in.

    Parameters
    ----------
    requests : dict
        ``name -> (source, vintages)`` (``None`` for every vintage).
    cache_dir : Path or None
        As in :func:`load_cached` (``None``: no cache, every source is parsed).
    workers : int, optional
        Worker processes; ``1`` parses in this process.
    write : bool
        Store the newly parsed sources in ``cache_dir`` (false: use the cache read only).
    """
    todo = [
        name for name, (src, vintages) in requests.items()
        if cache_dir is None or not cache_path(src, vintages, cache_dir).exists()
    ]
    workers = min(workers or os.cpu_count() or 1, len(todo))
    parsed = {}
    if workers > 1:
        todo.sort(key=lambda name: -_input_bytes(*requests[name]))
        # new processes (the fork server's or spawned), not forks of this one: forking a process
        # that runs Arrow threads may deadlock
        try:
            with worker_pool(workers) as pool:
                if cache_dir is not None and write:
                    # the workers store their tables, read back below as a warm run reads
                    # them: faster than pickling them back through a pipe (7 s of the
                    # workers' time for the bundled sources)
                    for f in [pool.submit(_parse_into_cache, *requests[name], cache_dir) for name in todo]:
                        f.result()
                else:
                    futures = {name: pool.submit(load_cached, *requests[name], cache_dir, write) for name in todo}
                    parsed = {name: f.result() for name, f in futures.items()}
        except BrokenProcessPool:
            # e.g. a calling script without ``if __name__ == "__main__":``, which new
            # workers re-run: parse here instead
            warnings.warn("parallel parsing failed (is the calling script guarded by "
                          "`if __name__ == '__main__'`?): parsing sources one by one", stacklevel=2)
            parsed = {}
    return {
        name: parsed[name] if name in parsed else load_cached(src, vintages, cache_dir, write)
        for name, (src, vintages) in requests.items()
    }


def _parse_into_cache(src: Source, vintages: list[int] | None, cache_dir: Path) -> None:
    load_cached(src, vintages, cache_dir, write=True)


def _input_bytes(src: Source, vintages: list[int] | None) -> int:
    """Size of a source's files: a proxy of its parsing time, to schedule the largest first."""
    paths = [src.path(v) for v in (vintages if vintages is not None else src.vintages)]
    return sum(p.stat().st_size for p in paths if p.exists())


def _is_geo(path: Path) -> bool:
    import pyarrow.parquet as pq

    return b"geo" in (pq.read_schema(path).metadata or {})


class ResultCache:
    """Arrays computed from exactly identified inputs, stored as ``.npz`` files in a folder.

    A rerun on unchanged models and features (``territoria run`` reusing its champions) reads
    the SHAP values and the bootstrap forecasts instead of recomputing them: the key is a
    digest of everything the result depends on (a model's text, a design matrix's values and
    columns, parameters, code version). ``folder=None`` computes every time.
    :meth:`prune` removes the entries no lookup of this run asked for.

    New entries are written by a background thread while the caller goes on (NumPy and the
    file writes release the GIL); :meth:`wait` (called by :meth:`prune`) waits for them. The
    arrays returned are read-only: one being written must not change.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> cache = ResultCache(Path(tempfile.mkdtemp()))
    >>> key = cache.key("model text", pd.DataFrame({"x": [1.0, 2.0]}))
    >>> calls = []
    >>> compute = lambda: calls.append(1) or {"phi": np.array([0.5, 1.5])}
    >>> cache.get("shap", key, compute)["phi"].tolist(), cache.get("shap", key, compute)["phi"].tolist(), len(calls)
    ([0.5, 1.5], [0.5, 1.5], 1)
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.used: set[str] = set()
        self.hits = 0
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list = []
        self._in_flight: dict[str, dict[str, np.ndarray]] = {}  # entries being written
        self._lock = threading.Lock()  # lookups may come from two threads

    @staticmethod
    def key(*parts) -> str:
        """Digest of strings, bytes, numbers, arrays and DataFrames (values, index and columns)
        and of the package's version (:func:`~territoria.digest.value_digest`)."""
        return value_digest(*parts, seed=f"{territoria.__version__}")

    def get(self, name: str, key: str, compute) -> dict[str, np.ndarray]:
        """``compute()`` (a dict of arrays), read from the folder when an entry has this key."""
        if self.folder is None:
            return compute()
        path = self.folder / f"{name}-{key}.npz"
        with self._lock:
            self.used.add(path.name)
            in_flight = self._in_flight.get(path.name)
        if in_flight is not None:
            return in_flight
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as f:
                    out = {k: f[k] for k in f.files}
                with self._lock:
                    self.hits += 1
                return _read_only(out)
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # a damaged entry is recomputed, never trusted
        out = _read_only(compute())
        self.folder.mkdir(parents=True, exist_ok=True)

        def write() -> None:
            try:
                write_atomic(path, lambda tmp: _save_npz(tmp, out))
            finally:
                with self._lock:
                    self._in_flight.pop(path.name, None)

        with self._lock:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="result-cache")
            self._in_flight[path.name] = out
            self._pending.append(self._writer.submit(write))
        return out

    def wait(self) -> None:
        """Wait for the entries being written (an error writing one is raised here)."""
        with self._lock:
            pending, self._pending = self._pending, []
            writer, self._writer = self._writer, None
        try:
            for job in pending:
                job.result()
        finally:
            if writer is not None:
                writer.shutdown(wait=True)

    def prune(self) -> None:
        """Wait for the entries being written, then remove those no :meth:`get` of this cache
        asked for."""
        self.wait()
        if self.folder is None or not self.folder.is_dir():
            return
        for p in self.folder.glob("*.npz"):
            if p.name not in self.used:
                p.unlink(missing_ok=True)


def _read_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for a in arrays.values():
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
    return arrays


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to the name
        np.savez(f, **arrays)
