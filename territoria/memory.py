"""Giving freed memory back to the system between the stages of a long job.

pandas and numpy free their large temporaries, but the allocators keep the freed pages, so a
process's resident memory only grows: the next stage's peak then stacks on the previous
stage's leftovers. Two allocators hold them: glibc's arenas (numpy arrays; ``malloc_trim(0)``
returns them: 0.70 GB after the feature stage of the main job, 0.34 GB after training) and
Arrow's memory pool, which backs pandas' string columns and Parquet reads (``release_unused``:
reading the communes' panel and freeing it leaves 1.2 GB resident until it is called).
Measured figures are in benchmarks/README.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> bool:
    """Return the free pages of Arrow's memory pool and of glibc's allocator to the system.

    Returns whether glibc's were (False where glibc is not the allocator: macOS, Windows,
    musl); Arrow's pool is released wherever pyarrow is installed.

    Examples
    --------
    >>> isinstance(release_free_memory(), bool)
    True
    """
    try:
        import pyarrow
    except ImportError:  # pandas without pyarrow: no Arrow-backed columns to release
        pass
    else:
        pyarrow.default_memory_pool().release_unused()
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
