"""Digests: of values (keys of the caches that hold results computed from them) and of files
(the lineage of inputs and outputs)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd


def value_digest(*parts, seed: str = "") -> str:
    """Digest of strings, bytes, numbers, arrays and DataFrames (values, index and columns),
    96 bits in hexadecimal; ``seed`` starts it (a code version, for keys kept on disk).

    Examples
    --------
    >>> value_digest("model text", np.array([1.0, 2.0])) == value_digest("model text", np.array([1.0, 2.0]))
    True
    >>> value_digest(np.array([True, False])) == value_digest(np.array([False, True]))
    False
    """
    h = hashlib.sha256(seed.encode())
    for p in parts:
        if isinstance(p, pd.DataFrame):
            h.update(repr(list(p.columns)).encode())
            h.update(pd.util.hash_pandas_object(p, index=True).to_numpy().tobytes())
        elif isinstance(p, (pd.Series, pd.Index)):
            h.update(pd.util.hash_pandas_object(p, index=False).to_numpy().tobytes())
        elif isinstance(p, np.ndarray):
            h.update(f"{p.dtype}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).tobytes() if p.dtype != object else repr(p.tolist()).encode())
        elif isinstance(p, bytes):
            h.update(p)
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.hexdigest()[:24]


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes, in hexadecimal (read by 1 MiB blocks).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> file_sha256(f.name)[:16]
    'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FileDigests:
    """:func:`file_sha256` of the files of one run, each file hashed once while it is unchanged.

    A run's lineage and its manifest list the same outputs (270 MB for all communes): the
    second list reads their digests here. A file is known by its path, inode, size and
    modification time, so a file replaced (a new inode) or rewritten is hashed again. Meant
    for the span of one run, whose outputs are not edited in place meanwhile.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> digests = FileDigests()
    >>> digests(f.name) == digests(f.name) == file_sha256(f.name) and len(digests)
    1
    """

    def __init__(self) -> None:
        self._known: dict[tuple, str] = {}

    def __len__(self) -> int:
        return len(self._known)

    def __call__(self, path: Path | str) -> str:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        digest = self._known.get(key)
        if digest is None:
            digest = self._known[key] = file_sha256(path)
        return digest
