"""Memory of a long job: reused within a stage, given back to the system between stages.

pandas and numpy free their large temporaries, but the allocators keep the freed pages, so a
process's resident memory only grows: the next stage's peak then stacks on the previous
stage's leftovers. Two allocators hold them: glibc's arenas (numpy arrays; ``malloc_trim(0)``
returns them: 0.70 GB after the feature stage of the main job, 0.34 GB after training) and
Arrow's memory pool, which backs pandas' string columns and Parquet reads (``release_unused``:
reading the communes' panel and freeing it leaves 1.2 GB resident until it is called).
Measured figures are in benchmarks/README.md.

Within a stage the opposite holds: glibc maps every block over its (adaptive, at most 32 MB)
``mmap`` threshold afresh and unmaps it when freed, so each design matrix, ``hstack`` or
LightGBM dataset of the backtest has its pages mapped and zeroed by the kernel again (a
fifth of the main job's CPU time was the kernel's). :func:`configure_allocators` keeps such
blocks for reuse until :func:`release_free_memory` returns them between stages, and takes
fresh memory in small pages, which a virtual machine's host backs far faster than huge ones.
The main job returns memory between its stages, and within a stage only where most of what
the process holds has just been freed and worker processes are alive beside it: once the
panel's source tables are coded (:func:`territoria.features.panel.build_panel`), and in the
scoring stage once the panel and the design matrices, then the SHAP tables, are freed (1.1-1.8
GB of free memory held then). Each trim makes the next steps take their pages back one fault
at a time (trims after every step cost 1.5 core-seconds of the kernel's); these few cost no
measurable time. With the worker processes exiting as soon as their call returns and the
panel's keys categorical, they took the whole job's peak, workers included, from 3.1-3.3 to
2.4-2.5 GB (benchmarks/README.md, twenty-sixth measurement).
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import gc
import os
import sys
from collections.abc import Callable

#: glibc's allocator settings of a long job: blocks up to 1 GB from the heap, which keeps up
#: to 1 GB free (``release_free_memory`` trims it); mallopt takes a C int
GLIBC_MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": 1 << 30, "MALLOC_TRIM_THRESHOLD_": 1 << 30}
ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL"
NUMPY_HUGEPAGE = "NUMPY_MADVISE_HUGEPAGE"
_MALLOPT = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


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


def configure_allocators() -> bool:
    """Make a long job reuse the memory its stages free and take fresh memory cheaply, in
    this process and in the worker processes it starts afterwards.

    * glibc's ``mmap`` and trim thresholds (``GLIBC_MALLOC_SETTINGS``, with ``mallopt`` here
      and in the environment, which new workers' allocators read at start): large blocks
      come from the heap and stay there for reuse until :func:`release_free_memory` returns
      them between stages;
    * glibc as Arrow's allocator too (``ARROW_DEFAULT_MEMORY_POOL=system``): Arrow's mimalloc
      pool hands freed pages back at once, and the feature stage, which builds its panel on
      Arrow strings, spent a quarter of its time getting them again;
    * no transparent huge pages for numpy's arrays (``NUMPY_MADVISE_HUGEPAGE=0``): on a
      virtual machine whose host takes back the guest's free 2 MB blocks (free page
      reporting), each fresh huge page is a fault on the host. Allocating 500 MB took 5.2 s
      with them and 0.2 s without on the project's VM.

    Settings the user exported are left as they are. Not for a Dask cluster's workers, which
    would each keep their freed memory: the 2.3 M-cell grid benchmark's peak went from 6.1
    to 8.6 GB with the first two. Returns whether glibc took its settings (False where glibc
    is not the allocator: macOS, Windows, musl; the other settings are then left alone).

    Examples
    --------
    >>> {name: value >> 20 for name, value in GLIBC_MALLOC_SETTINGS.items()}  # MB
    {'MALLOC_MMAP_THRESHOLD_': 1024, 'MALLOC_TRIM_THRESHOLD_': 1024}
    """
    for name, value in GLIBC_MALLOC_SETTINGS.items():
        os.environ.setdefault(name, str(value))
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    try:
        values = {name: int(os.environ[name]) for name in GLIBC_MALLOC_SETTINGS}
    except ValueError:  # an exported value glibc would ignore too
        return False
    if not all(libc.mallopt(_MALLOPT[name], value) == 1 for name, value in values.items()):
        return False
    # pyarrow and numpy read their variables when imported: set here only where they already
    # are, since importing them here would load OpenBLAS before a caller's settings for it
    # (territoria.blas)
    if os.environ.setdefault(ARROW_POOL, "system") == "system" and "pyarrow" in sys.modules:
        import pyarrow

        pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    if os.environ.setdefault(NUMPY_HUGEPAGE, "0") == "0" and "numpy" in sys.modules:
        try:
            from numpy._core.multiarray import _set_madvise_hugepage
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _set_madvise_hugepage
        _set_madvise_hugepage(False)
    return True


#: the cyclic garbage collector's thresholds during a long job (Python's default: 700, 10, 10)
LONG_JOB_GC_THRESHOLD = (20_000, 20, 20)


def collect_as_long_job() -> tuple[int, int, int]:
    """Freeze the objects alive now (the imported modules) out of the cyclic garbage
    collector and set its thresholds to :data:`LONG_JOB_GC_THRESHOLD`; returns the previous
    thresholds. The main job (:func:`fewer_collections`) and its worker processes
    (:mod:`territoria.workers`) collect this way."""
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*LONG_JOB_GC_THRESHOLD)
    return previous


def fewer_collections(fn: Callable) -> Callable:
    """Run ``fn`` with the objects alive at its start (the imported modules) frozen out of
    the cyclic garbage collector and fewer collections (:data:`LONG_JOB_GC_THRESHOLD`); the
    previous settings are restored after.

    pandas and scikit-learn create and drop millions of small containers: with the default
    thresholds the main job ran 2,100 collections, 1.4 s of its main thread, most of it in
    full collections walking every imported module's objects again (635 collections and 0.6 s
    with these).

    Examples
    --------
    >>> before = gc.get_threshold()
    >>> fewer_collections(gc.get_threshold)() == LONG_JOB_GC_THRESHOLD, gc.get_threshold() == before
    (True, True)
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = collect_as_long_job()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.set_threshold(*previous)
            gc.unfreeze()

    return wrapper


def freeze_at_exit() -> None:
    """Freeze the objects still alive when this process exits out of the cyclic garbage
    collector (an ``atexit`` handler).

    The interpreter's finalisation runs full collections that walk every live object: the
    imported modules and whatever a command left, 0.6 s of a core after a main job, and
    0.5 s in the workers' fork server, which holds the job's output pipe open meanwhile
    (benchmarks/README.md, nineteenth measurement). Objects are still freed as their
    modules are cleared; only cycles are left to the system. For a process that ends with
    its work: the ``territoria`` command and the fork server.
    """
    atexit.register(gc.freeze)
