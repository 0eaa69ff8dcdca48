"""Digests of values: keys of the caches that hold results computed from them."""

from __future__ import annotations

import hashlib

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
