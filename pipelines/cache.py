"""Cache of parsed sources, keyed by the files' content and the adapter's code.

Reading the official formats (xlsx crosstabs, zipped CSV, French numbers) is the slowest part
of a run. A source's validated output is stored as (Geo)Parquet under the cache folder and
reused only while the file hashes, the adapter's source code, the shared readers and the
package version are all unchanged; anything else rebuilds it.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import geopandas as gpd
import pandas as pd

import territoria
from territoria import readers
from territoria.features.sources import base
from territoria.features.sources.base import Source, file_sha256
from territoria.io import write_parquet


def cache_key(src: Source, vintages: list[int]) -> str:
    """Digest of everything the parsed output depends on."""
    h = hashlib.sha256()
    h.update(f"{territoria.__version__}|{src.name}|{sorted(vintages)}".encode())
    for module in (inspect.getmodule(type(src)), base, readers):
        h.update(Path(inspect.getsourcefile(module)).read_bytes())
    for v in sorted(vintages):
        h.update(file_sha256(src.path(v)).encode())
    return h.hexdigest()[:20]


def load_cached(src: Source, vintages: list[int] | None, cache_dir: Path | None) -> pd.DataFrame:
    """``src.load(vintages)``, through the cache when ``cache_dir`` is given."""
    vintages = list(vintages) if vintages is not None else src.vintages
    if cache_dir is None:
        return src.load(vintages)
    path = Path(cache_dir) / f"{src.name}-{cache_key(src, vintages)}.parquet"
    if path.exists():
        try:
            return gpd.read_parquet(path) if src.kind != "table" and _is_geo(path) else pd.read_parquet(path)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged entry is rebuilt, never trusted
    df = src.load(vintages)
    for stale in Path(cache_dir).glob(f"{src.name}-*.parquet"):
        stale.unlink(missing_ok=True)
    write_parquet(df, path)
    return df


def _is_geo(path: Path) -> bool:
    import pyarrow.parquet as pq

    return b"geo" in (pq.read_schema(path).metadata or {})
