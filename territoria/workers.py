"""One call run by a spawned process while this process goes on with other work.

The main job is mostly one Python thread: on a machine with two cores, output that needs
nothing more from the run (the SHAP figures, most zone cards) is written by a second process
while the first one carries on. The process is spawned, not forked: the parent has LightGBM,
OpenMP and Arrow threads, which a fork would copy in an undefined state.

A spawned process re-imports the calling script; a script without ``if __name__ ==
"__main__":`` breaks the pool, and the call is then run here (with a warning), so the outputs
are the same either way.

Examples
--------
>>> job = SideProcess(sorted, [3, 1, 2], min_cpus=10_000)  # too few cores here: run in place
>>> job.result()
[1, 2, 3]
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context


class SideProcess:
    """Start ``fn(*args)`` in a spawned one-process pool (when the machine has at least
    ``min_cpus`` cores); :meth:`result` waits for it.

    ``fallback`` (default: ``fn(*args)``) is what :meth:`result` runs in this process when
    there is no second core or the pool broke; it must give the same outputs.
    """

    def __init__(self, fn: Callable, *args, fallback: Callable | None = None, min_cpus: int = 2) -> None:
        self.fn, self.args = fn, args
        self.fallback = fallback or (lambda: fn(*args))
        self._pool = self._future = None
        if (os.cpu_count() or 1) >= min_cpus:
            self._pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
            self._future = self._pool.submit(fn, *args)

    @property
    def in_process(self) -> bool:
        """True when the call runs in a second process."""
        return self._pool is not None

    def result(self):
        """The call's result (computed here if there is no second process or it failed)."""
        if self._pool is None:
            return self.fallback()
        try:
            return self._future.result()
        except BrokenProcessPool:
            warnings.warn(f"the worker process running {getattr(self.fn, '__name__', self.fn)} failed (is the "
                          "calling script guarded by `if __name__ == '__main__'`?): running it here",
                          stacklevel=2)
            return self.fallback()
        finally:
            self.close()

    def close(self) -> None:
        """Stop waiting: shut the pool down (a running call is not interrupted)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
