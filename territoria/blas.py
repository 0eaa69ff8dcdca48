"""OpenBLAS's idle threads: asleep at once rather than spinning.

After each call it runs on several threads, OpenBLAS keeps its worker threads polling for
the next call for 2^28 clock cycles (about 0.1 s) before they sleep. In the main job the
other threads and processes (LightGBM's folds, Arrow's encoders, the side processes) have
work for both cores, and that polling took 3.9-4.9 core-seconds of a run (``perf``
profiles, benchmarks/README.md). ``OPENBLAS_THREAD_TIMEOUT=4``, OpenBLAS's minimum (2^4
cycles), puts them to sleep at once: the results are the same, since the threads split
each call the same way, and waking a sleeping thread costs microseconds against calls of
milliseconds.
"""

from __future__ import annotations

import os
import sys

#: OpenBLAS's polling time of an idle thread, as a power of two of clock cycles (4 to 30)
OPENBLAS_TIMEOUT = ("OPENBLAS_THREAD_TIMEOUT", "4")


def configure_blas_threads() -> bool:
    """Put OpenBLAS's idle threads to sleep at once, in this process and the worker processes
    it starts afterwards, unless the user exported a timeout.

    OpenBLAS reads the variable when it is loaded (with numpy): returns whether this process
    takes it, i.e. numpy was not imported yet (new processes take it in any case).

    Examples
    --------
    >>> isinstance(configure_blas_threads(), bool)
    True
    """
    name, value = OPENBLAS_TIMEOUT
    os.environ.setdefault(name, value)
    return "numpy" not in sys.modules
