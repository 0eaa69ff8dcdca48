"""One call run by another process while this process goes on with other work.

The main job is mostly one Python thread: on a machine with two cores, output that needs
nothing more from the run (the SHAP figures, most zone cards) is written by a second process
while the first one carries on. The process is not forked from this one: the parent has
LightGBM, OpenMP and Arrow threads, which a fork would copy in an undefined state. Where the
platform has it, it is forked from a fork server: a process started once, without threads,
which imported :data:`PRELOAD` (pandas, Arrow, the source adapters, the report); each worker
then starts with those modules instead of importing them again (0.5-0.6 s of CPU each, seven
workers in the main job). Elsewhere it is spawned.

A new process re-imports the calling script; a script without ``if __name__ ==
"__main__":`` breaks the pool, and the call is then run here (with a warning), so the outputs
are the same either way.

Importing MLflow or shap takes a second or two of CPU. A :class:`SpareProcess` is started
while a core is idle (the main process alone in a single-threaded step) and imports what a
call will need; the call is handed to it later (:meth:`SpareProcess.run`).

Side work has slack: its result is needed later. A side process runs at background priority
(nice :data:`BACKGROUND_NICE`), so that it takes the core the main process leaves idle rather
than a share of both while the main process runs two threads (two LightGBM folds, Arrow
encoding): at equal priority a side process takes a third of two cores then. When the main
process has to wait for it, its priority is restored first, or a machine busy with other work
would starve it. Restoring a priority needs the right to raise one (``CAP_SYS_NICE``, or an
``RLIMIT_NICE`` of 20); without it, side processes keep the normal priority
(:func:`can_restore_priority`). Linux only, where each thread has its own nice value. Side
threads keep the normal priority: a thread at low priority that holds the GIL while other
work takes the cores stalls every thread of its process (measured: a design matrix built by
such a thread during the cross-validation made the backtest up to 30 % slower).

Examples
--------
>>> job = SideProcess(sorted, [3, 1, 2], min_cpus=10_000)  # too few cores here: run in place
>>> job.result()
[1, 2, 3]
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_all_start_methods, get_context

from territoria.memory import collect_as_long_job


#: modules the fork server imports once, for every worker forked from it ("__main__": the
#: calling script, which a worker imports anyway; territoria.fork_server: the server's own
#: exit). shap (with matplotlib) is for the SHAP figures' worker: 1.7 s of imports the server
#: does while the main job imports on its own core, rather than in the busy prioritise stage
PRELOAD = ("territoria.fork_server", "__main__", "territoria.pipelines.cache", "territoria.pipelines.report", "territoria.models.programmes",
           "shap")


#: nice value of side processes (:class:`SideProcess`, :class:`SpareProcess`)
BACKGROUND_NICE = 19


@functools.lru_cache(maxsize=1)
def can_restore_priority() -> bool:
    """True where this process may lower a thread's priority and raise it back (Linux, with
    ``CAP_SYS_NICE`` or an ``RLIMIT_NICE`` that allows it): tried on a throwaway thread."""
    if not sys.platform.startswith("linux"):
        return False
    restored = []

    def probe() -> None:
        tid = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        if nice >= 19:  # already the lowest: nothing to lower
            return
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice + 1)
            os.setpriority(os.PRIO_PROCESS, tid, nice)
            restored.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, name="priority-probe")
    thread.start()
    thread.join()
    return bool(restored)


def _nice() -> int:
    """The calling thread's nice value on Linux (each thread has its own); 0 elsewhere, where
    side work keeps the normal priority."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) if sys.platform.startswith("linux") else 0


def _to_background() -> None:
    """Lower the calling thread (and the threads it starts later) to :data:`BACKGROUND_NICE`."""
    if _nice() < BACKGROUND_NICE:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def restore_priority(tids: list[int], nice: int) -> None:
    """Set the threads ``tids`` back to ``nice`` (threads that ended are skipped)."""
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass


def _threads_of(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:  # the process ended
        return []


class SideProcess:
    """Start ``fn(*args)`` in a one-process pool (:func:`worker_pool`) when the machine has at
    least ``min_cpus`` cores; :meth:`result` waits for it.

    The process runs at background priority where that can be undone (module doc): if the call
    is still running when :meth:`result` is asked for, its priority is restored to this
    thread's. ``fallback`` (default: ``fn(*args)``) is what :meth:`result` runs in this process
    when there is no second core or the pool broke; it must give the same outputs.
    """

    def __init__(self, fn: Callable, *args, fallback: Callable | None = None, min_cpus: int = 2,
                 _pool: ProcessPoolExecutor | None = None, _pid: Future | None = None) -> None:
        self.fn, self.args = fn, args
        self.fallback = fallback or (lambda: fn(*args))
        self._pool = self._future = None
        self._pid, self._nice = _pid, _nice()
        if _pool is None and (os.cpu_count() or 1) >= min_cpus:
            _pool, self._pid = _background_pool()
        if _pool is not None:
            self._pool = _pool
            try:
                self._future = self._pool.submit(fn, *args)
            except BrokenProcessPool:  # the spare process died while preloading: run it here
                self.close()
            else:
                # the process exits as soon as its call returns (the result is kept): an idle
                # worker would hold its memory until :meth:`result` is asked for, often a stage later
                self._future.add_done_callback(functools.partial(_shut_down, self._pool))

    @property
    def in_process(self) -> bool:
        """True when the call runs in a second process."""
        return self._pool is not None

    def result(self):
        """The call's result (computed here if there is no second process or it failed)."""
        if self._pool is None:
            return self.fallback()
        try:
            if self._pid is not None and not self._future.done():
                restore_priority(_threads_of(self._pid.result()), self._nice)
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


def _shut_down(pool: ProcessPoolExecutor, done: Future) -> None:
    """Let ``pool``'s processes exit once the call of ``done`` is (a done-callback).

    The callback may run in the pool's manager thread while it holds the lock that
    ``shutdown`` takes (a broken pool sets its futures' errors so): the shutdown is asked for
    from a thread of its own. A broken or cancelled call's pool is being shut down already.
    """
    if done.cancelled() or isinstance(done.exception(), BrokenProcessPool):
        return
    try:
        threading.Thread(target=pool.shutdown, kwargs={"wait": False}, name="side-process-exit",
                         daemon=True).start()
    except RuntimeError:  # the interpreter is exiting: its pools are shut down anyway
        pass


def worker_pool(workers: int, background: bool = False) -> ProcessPoolExecutor:
    """A pool of ``workers`` new processes (:func:`worker_context`) with this process's
    environment, that exit if this process is killed (:func:`exit_with_parent`), at
    background priority if ``background``."""
    return ProcessPoolExecutor(workers, mp_context=worker_context(), initializer=_start_worker,
                               initargs=(os.getpid(), dict(os.environ), background))


def _background_pool() -> tuple[ProcessPoolExecutor, Future | None]:
    """A one-process pool for side work, and the future of its process id when it runs at
    background priority (None where that could not be undone: normal priority)."""
    background = can_restore_priority()
    pool = worker_pool(1, background=background)
    return pool, pool.submit(os.getpid) if background else None


def _start_worker(owner: int, environ: dict[str, str], background: bool = False) -> None:
    """A worker takes its owner's environment as it is now (a fork server's workers would
    otherwise have the server's, fixed when it started: ``TERRITORIA_DATA`` set since would
    not reach them) and exits with it.

    Its garbage collector runs as the main job's does (:func:`territoria.memory.collect_as_long_job`):
    the modules imported so far (the fork server's) are frozen out of it, so a collection
    does not walk them (nor copy their pages, shared with the server), and collections are
    rarer. Importing MLflow took 0.85 x the CPU time.
    """
    os.environ.clear()
    os.environ.update(environ)
    if background:
        _to_background()
    exit_with_parent(owner)
    collect_as_long_job()


@functools.lru_cache(maxsize=1)
def worker_context():
    """The multiprocessing context of the workers: the fork server, started by the first
    call, which imports :data:`PRELOAD` once, where the platform has one and it starts;
    spawn otherwise."""
    if "forkserver" in get_all_start_methods():
        from multiprocessing import forkserver

        ctx = get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))
        try:
            forkserver.ensure_running()
            return ctx
        except OSError as exc:  # e.g. no Unix sockets in a sandbox
            warnings.warn(f"no fork server ({exc}): worker processes are spawned", stacklevel=2)
    return get_context("spawn")


def start_fork_server() -> None:
    """Start the workers' fork server now, so that it imports :data:`PRELOAD` while this
    process is busy importing on one core (``territoria run`` calls it first). Its
    environment is this process's now: set what the workers must inherit before."""
    worker_context()


def exit_with_parent(owner: int, interval: float = 0.5) -> None:
    """In a worker process: exit as soon as ``owner`` (the process whose pool it serves) is
    gone.

    A pool's idle worker waits for its next call forever: when the main job is killed
    (SIGKILL, the out-of-memory killer), its workers would live on, holding their memory.
    A daemon thread checks every ``interval`` seconds. A worker forked from the fork server
    is not the owner's child, and the server outlives the owner while workers hold its
    liveness pipe: the owner itself is watched, not the worker's parent.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent and _alive(owner):
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie, killed but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc: kill's answer
        return True


class SpareProcess:
    """A worker process started now, which runs ``preload()`` (imports, typically) while
    this process goes on; :meth:`run` later hands it the call that needs them.

    Start one just before a single-threaded step, so that the preloading takes the idle core
    rather than a core the later steps need. Without ``min_cpus`` cores nothing is started and
    :meth:`run` runs the call here when its result is asked for, as :class:`SideProcess` does.

    Examples
    --------
    >>> spare = SpareProcess(min_cpus=10_000)          # too few cores here: nothing started
    >>> spare.run(sorted, [3, 1, 2]).result()
    [1, 2, 3]
    """

    def __init__(self, preload: Callable | None = None, min_cpus: int = 2) -> None:
        self.min_cpus = min_cpus
        self._pool = self._pid = None
        if (os.cpu_count() or 1) >= min_cpus:
            self._pool, self._pid = _background_pool()
            if preload is not None:
                self._pool.submit(preload)  # an import error shows again when the call runs

    @property
    def started(self) -> bool:
        """True while a process is waiting for its call."""
        return self._pool is not None

    def run(self, fn: Callable, *args, fallback: Callable | None = None) -> SideProcess:
        """``fn(*args)`` in the spare process (which is then used up), as a :class:`SideProcess`."""
        pool, self._pool = self._pool, None
        if pool is None:  # never started, or already used: a new process when there are the cores
            return SideProcess(fn, *args, fallback=fallback, min_cpus=self.min_cpus)
        return SideProcess(fn, *args, fallback=fallback, _pool=pool, _pid=self._pid)

    def close(self) -> None:
        """Stop the process if no call was handed to it."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
