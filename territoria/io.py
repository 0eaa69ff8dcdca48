"""Atomic output writing: a file is either its previous version or the complete new one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


@contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name ends with the final extension: format drivers check it (GeoPackage)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(path: Path | str, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp)`` then move the temporary file onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_parquet(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a (Geo)DataFrame as (Geo)Parquet, atomically."""
    return write_atomic(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_csv(df: pd.DataFrame, path: Path | str, **options) -> Path:
    """Write a CSV (UTF-8, ``\\n`` line ends) atomically; ``options`` go to ``to_csv``."""
    return write_atomic(path, lambda tmp: df.to_csv(tmp, index=False, lineterminator="\n", **options))


def write_json(obj, path: Path | str) -> Path:
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True, default=str) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
