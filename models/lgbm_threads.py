"""LightGBM's thread count, one per process: concurrent LightGBM work must agree on it.

LightGBM keeps the number of threads of its OpenMP regions in one variable of the process
(``LGBM_DEFAULT_NUM_THREADS``). Every call of its C API that takes parameters sets it from
``num_threads``; a call without ``num_threads`` (a plain ``Booster.predict``, for instance)
resets it to OpenMP's default, the machine's cores. Building a booster sizes per-thread
buffers from that variable, then opens parallel regions that read it again. When another
thread sets another count in between, a region has more threads than buffers and the
process dies of a segmentation fault in ``lib_lightgbm.so`` (seen in the backtest's folds,
fitted two at a time on one thread each, while a subset was cut with two threads and a
prediction left the count to OpenMP).

:func:`lightgbm_threads` guards every LightGBM call of the package that takes a thread
count: calls in several threads run at once only with the same count, and a thread asking
for another count waits until the others have finished. Each call also passes its count
to LightGBM explicitly (:func:`num_threads_param`), so that none falls back to the default.

Examples
--------
>>> with lightgbm_threads(1) as n:
...     n
1
>>> num_threads_param(None), num_threads_param(-1), num_threads_param(2)
(0, 0, 2)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: the count of the LightGBM work in progress, its number of holders, and the counts waited
#: for, in the order of arrival
_state = threading.Condition()
_count: int | None = None
_holders = 0
_queue: list[int] = []
#: this thread's count and depth of nested guards
_local = threading.local()


def num_threads_param(n_jobs: int | None) -> int:
    """LightGBM's ``num_threads`` for ``n_jobs`` (0, LightGBM's "OpenMP default", when
    ``n_jobs`` is None or not positive, as scikit-learn's ``-1``)."""
    return int(n_jobs) if n_jobs is not None and int(n_jobs) > 0 else 0


@contextmanager
def lightgbm_threads(n_jobs: int | None) -> Iterator[int]:
    """Hold LightGBM's process-wide thread count at ``num_threads_param(n_jobs)`` for the block.

    Blocks of other threads with the same count run at the same time; a block with another
    count waits until they have left. Blocks enter in their order of arrival where counts
    differ: one with the current count that comes after a waiting one with another count
    waits behind it, so that neither is starved. A nested block of the same thread must ask
    for the same count.

    Yields
    ------
    int
        The ``num_threads`` to pass to LightGBM.

    Raises
    ------
    RuntimeError
        When a thread already in a block asks for another count (it would wait for itself).
    """
    global _count, _holders
    n = num_threads_param(n_jobs)
    depth = getattr(_local, "depth", 0)
    if depth:
        if _local.count != n:
            raise RuntimeError(f"LightGBM work with {n} threads nested in work with {_local.count} threads")
        _local.depth = depth + 1
        try:
            yield n
        finally:
            _local.depth = depth
        return
    ticket = [n]  # a list of its own: removed from the queue by identity
    with _state:
        _queue.append(ticket)
        try:
            while (_holders and _count != n) or any(t[0] != n for t in _queue[:_position(ticket)]):
                _state.wait()
        finally:
            del _queue[_position(ticket)]
            _state.notify_all()  # a block queued behind this one may go now (or if the wait failed)
        _count = n
        _holders += 1
    _local.count, _local.depth = n, 1
    try:
        yield n
    finally:
        _local.depth = 0
        with _state:
            _holders -= 1
            if not _holders:
                _count = None
            _state.notify_all()


def _position(ticket: list[int]) -> int:
    return next(i for i, t in enumerate(_queue) if t is ticket)
