"""Freed memory handed back between stages (glibc's malloc_trim), reused within them
(configure_allocators)."""

import os
import platform
import subprocess
import sys
import textwrap

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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_configure_allocators_reuses_freed_blocks_instead_of_mapping_them_again():
    # in a fresh interpreter each: the setting is process-wide
    code = textwrap.dedent("""
        import resource, sys
        import numpy as np
        from territoria import memory
        if sys.argv[1] == "keep":
            assert memory.configure_allocators()
        np.ones(8_000_000).sum()  # 64 MB, over glibc's largest default mmap threshold
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            np.ones(8_000_000).sum()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], env=env, check=True,
                                       capture_output=True, text=True).stdout)
              for mode in ("default", "keep")}
    assert faults["keep"] * 10 < faults["default"], faults


def test_configure_allocators_passes_its_settings_to_workers_and_keeps_the_users(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    monkeypatch.setattr(memory, "_libc", lambda: None)  # this process's allocator left alone
    assert memory.configure_allocators() is False
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(1 << 30)
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_configure_allocators_sets_arrow_and_numpy_unless_the_user_chose():
    code = ("import numpy, pyarrow as pa; from numpy._core.multiarray import _get_madvise_hugepage; "
            "from territoria import memory; memory.configure_allocators(); "
            "print(pa.default_memory_pool().backend_name, _get_madvise_hugepage())")
    env = {k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "NUMPY_MADVISE_HUGEPAGE")}
    chosen = {}
    for user in ({}, {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc", "NUMPY_MADVISE_HUGEPAGE": "1"}):
        chosen[bool(user)] = subprocess.run([sys.executable, "-c", code], env={**env, **user}, check=True,
                                            capture_output=True, text=True).stdout.split()
    assert chosen == {False: ["system", "False"], True: ["jemalloc", "True"]}
    # set before numpy and pyarrow are imported (as the commands do): they take the variables
    # when imported, and OpenBLAS is not loaded by the call
    later = ("import sys; from territoria import memory; memory.configure_allocators(); "
             "loaded = 'numpy' in sys.modules; "
             "import pyarrow as pa; from numpy._core.multiarray import _get_madvise_hugepage; "
             "print(loaded, pa.default_memory_pool().backend_name, _get_madvise_hugepage())")
    out = subprocess.run([sys.executable, "-c", later], env=env, check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "system", "False"]


def test_objects_alive_at_exit_are_frozen_out_of_the_collector():
    """A process that ends with its work (the command, the fork server) does not walk its
    live objects in the interpreter's final collections: they are frozen by then."""
    code = textwrap.dedent("""
        import atexit, gc
        # registered first, so it runs last: after freeze_at_exit's handler
        atexit.register(lambda: print(gc.get_freeze_count() > 0, len(gc.get_objects()) < 100))
        from territoria.memory import freeze_at_exit
        freeze_at_exit()
        import pandas  # objects alive at exit
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
