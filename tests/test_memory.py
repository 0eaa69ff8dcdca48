"""Freed memory handed back between stages (glibc's malloc_trim)."""

import platform

import pytest

from territoria import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_memory_trims_on_glibc():
    assert memory.release_free_memory() is True


def test_release_free_memory_is_a_no_op_without_malloc_trim(monkeypatch):
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert memory.release_free_memory() is False


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/statm")
def test_release_free_memory_returns_the_pages_of_freed_arrow_columns():
    import os

    import numpy as np
    import pandas as pd

    def resident_mb():
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6

    memory.release_free_memory()
    before = resident_mb()
    # pandas' default strings live in Arrow's memory pool, which keeps freed pages
    column = pd.Series(np.arange(4_000_000)).astype("str")
    assert resident_mb() - before > 50
    del column
    memory.release_free_memory()
    assert resident_mb() - before < 25
