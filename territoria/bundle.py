"""Build the compact data bundle the project carries, from a folder of raw official files.

Text files (CSV, JSON, GeoJSON, TopoJSON, XLS) are stored gzip-compressed (``name.gz``);
files that are already compressed (xlsx, zip, parquet) are copied as they are. Adapters read
both forms, so a folder of raw official files works as ``--data`` too.

Rebuild the bundle with::

    territoria data bundle ../shared/data data
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from rich.progress import track

from territoria.errors import DataError

_ALREADY_COMPRESSED = {".xlsx", ".zip", ".parquet", ".gz"}
_KEEP_PLAIN = {"SOURCES.md", "__init__.py"}


def build_bundle(raw_dir: Path, out_dir: Path) -> list[Path]:
    """Copy every file of ``raw_dir`` into ``out_dir``, gzipping text files reproducibly."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise DataError(raw_dir, "not a folder of raw official files")
    files = sorted(p for p in raw_dir.rglob("*") if p.is_file())
    if not files:
        raise DataError(raw_dir, "empty folder: no files to bundle")
    written = []
    for src in track(files, description="bundling"):
        rel = src.relative_to(raw_dir)
        if src.suffix.lower() in _ALREADY_COMPRESSED or src.name in _KEEP_PLAIN:
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        else:
            dest = out_dir / rel.with_name(rel.name + ".gz")
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".tmp")
            # mtime=0 so that the same input gives byte-identical archives
            with open(src, "rb") as fin, open(tmp, "wb") as raw_out:
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw_out, compresslevel=9, mtime=0) as gz:
                    shutil.copyfileobj(fin, gz)
            tmp.replace(dest)
        written.append(dest)
    return written
