"""territoria.workers.SideProcess: a call run by a second process, or here when it cannot be."""

import os
import sys
import time

import pytest

from territoria import workers as workers_mod
from territoria.workers import SideProcess, SpareProcess, _alive


def test_the_call_runs_in_another_process():
    job = SideProcess(os.getpid, min_cpus=1)
    assert job.in_process
    assert job.result() != os.getpid()


def test_a_side_process_exits_once_its_call_returns_and_keeps_the_result():
    """An idle worker would hold its memory until the result is asked for, often a stage
    later in the main job: it exits as soon as its call is done."""
    job = SideProcess(os.getpid, min_cpus=1)
    deadline = time.monotonic() + 30
    while not job._future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = job._future.result()
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert job.result() == pid != os.getpid()


def test_a_spare_process_exits_once_the_call_handed_to_it_returns():
    spare = SpareProcess(min_cpus=1)
    job = spare.run(os.getpid)
    pid = job._future.result(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid) and job.result() == pid


def test_a_broken_worker_falls_back_to_this_process_with_a_warning():
    # the worker dies without answering (as a spawned child of an unguarded script does)
    job = SideProcess(os._exit, 3, fallback=lambda: "written here", min_cpus=1)
    with pytest.warns(UserWarning, match="running it here"):
        assert job.result() == "written here"


def test_without_a_second_core_the_call_runs_here():
    job = SideProcess(os.getpid, min_cpus=10_000)
    assert not job.in_process
    assert job.result() == os.getpid()


def test_an_error_in_the_call_is_raised_here():
    job = SideProcess(int, "not a number", min_cpus=1)
    with pytest.raises(ValueError, match="not a number"):
        job.result()


def test_a_data_error_in_the_worker_reaches_this_process_unchanged(tmp_path):
    """A bad input read by a worker gives the same one-line error as in this process."""
    from territoria.errors import DataError
    from territoria.readers import read_bytes

    bad = tmp_path / "missing.csv"
    with pytest.raises(DataError) as here:
        read_bytes(bad)
    job = SideProcess(read_bytes, bad, min_cpus=1)
    with pytest.raises(DataError) as there:
        job.result()
    assert str(there.value) == str(here.value) and there.value.file == str(bad)


def test_a_spare_process_runs_the_call_where_it_preloaded():
    from functools import partial
    from importlib import import_module

    from territoria.workers import SpareProcess

    module = "xml.dom.minidom"  # imported by nothing else in a fresh interpreter
    spare = SpareProcess(partial(import_module, module), min_cpus=1)
    assert spare.started
    job = spare.run(eval, f"{module!r} in __import__('sys').modules")
    assert not spare.started  # used up
    assert job.in_process and job.result() is True
    # used again: a new process, without the preload
    assert spare.run(eval, f"{module!r} in __import__('sys').modules").result() is False


def test_a_spare_process_whose_preload_fails_still_runs_the_call():
    from functools import partial
    from importlib import import_module

    from territoria.workers import SpareProcess

    spare = SpareProcess(partial(import_module, "no_such_module_here"), min_cpus=1)
    assert spare.run(os.getpid).result() != os.getpid()


def test_without_a_second_core_a_spare_process_runs_the_call_here():
    from territoria.workers import SpareProcess

    spare = SpareProcess(min_cpus=10_000)
    assert not spare.started
    assert spare.run(os.getpid).result() == os.getpid()


def test_a_closed_spare_process_is_not_used():
    from territoria.workers import SpareProcess

    spare = SpareProcess(min_cpus=1)
    spare.close()
    assert not spare.started
    assert spare.run(os.getpid).result() != os.getpid()  # a new process


def test_a_spare_process_that_dies_while_preloading_falls_back_to_this_process():
    import warnings
    from functools import partial

    from territoria.workers import SpareProcess

    spare = SpareProcess(partial(os._exit, 3), min_cpus=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # warned when the break shows only at result()
        assert spare.run(os.getpid, fallback=lambda: "written here").result() == "written here"


def test_workers_exit_when_the_main_process_is_killed(tmp_path):
    """A killed main job (SIGKILL, out-of-memory killer) leaves no worker waiting forever."""
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "workers.pid"
    script = (
        "import os, time\n"
        "from territoria.workers import SpareProcess\n"
        "if __name__ == '__main__':\n"
        "    spares = [SpareProcess(min_cpus=1) for _ in range(2)]  # two idle workers\n"
        "    pids = [spare._pool.submit(os.getpid).result() for spare in spares]\n"
        f"    open({str(pid_file)!r}, 'w').write(' '.join(map(str, pids)))\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while time.time() < deadline and not (pid_file.exists() and len(pid_file.read_text().split()) == 2):
        time.sleep(0.2)
    workers = [int(p) for p in pid_file.read_text().split()]
    assert all(_alive(w) for w in workers)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    alive, deadline = workers, time.time() + 15
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [w for w in workers if _alive(w)]
    assert not alive, f"workers {alive} outlived their killed parent"


def test_workers_start_with_the_fork_servers_modules():
    """Where the platform has a fork server, a worker is forked from it with the modules of
    PRELOAD already imported, instead of importing them again (0.5-0.6 s of CPU each)."""
    import multiprocessing

    from territoria import workers

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork server on this platform: workers are spawned")
    assert workers.worker_context().get_start_method() == "forkserver"
    modules = [m for m in workers.PRELOAD if m != "__main__"]  # the script is __mp_main__ there
    probe = "[m in __import__('sys').modules for m in {!r}]".format(modules)
    with workers.worker_pool(1) as pool:
        assert pool.submit(eval, probe).result() == [True] * len(modules)
        assert pool.submit(os.getppid).result() != os.getpid()  # forked by the server


def test_without_a_fork_server_workers_are_spawned(monkeypatch):
    """A fork server that cannot start (no Unix sockets in a sandbox) leaves spawned workers
    and a warning, not a failed run."""
    import multiprocessing
    from multiprocessing import forkserver

    from territoria import workers

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork server on this platform")

    def refuse():
        raise OSError("Unix sockets are not allowed here")

    monkeypatch.setattr(forkserver, "ensure_running", refuse)
    workers.worker_context.cache_clear()
    try:
        with pytest.warns(UserWarning, match="spawned"):
            assert workers.worker_context().get_start_method() == "spawn"
        assert SideProcess(os.getpid, min_cpus=1).result() != os.getpid()
    finally:
        workers.worker_context.cache_clear()


def test_workers_see_the_environment_of_when_they_start(monkeypatch):
    """A fork server keeps the environment it started with; a worker still sees the
    variables set since (``TERRITORIA_DATA`` pointing every command at newer files)."""
    from territoria import workers

    workers.start_fork_server()
    monkeypatch.setenv("TERRITORIA_DATA", "/newer/files")
    monkeypatch.delenv("TERRITORIA_TEST_UNSET", raising=False)
    probe = "[__import__('os').environ.get(k) for k in ('TERRITORIA_DATA', 'TERRITORIA_TEST_UNSET')]"
    with workers.worker_pool(1) as pool:
        assert pool.submit(eval, probe).result() == ["/newer/files", None]


def _gc_state():
    import gc

    return gc.get_threshold(), gc.get_freeze_count() > 0


def test_workers_collect_garbage_as_the_main_job_does():
    """A worker's modules are frozen out of the garbage collector and its thresholds are the
    long job's: MLflow's worker spent a third of its Python time collecting."""
    from territoria.memory import LONG_JOB_GC_THRESHOLD
    from territoria.workers import worker_pool

    with worker_pool(1) as pool:
        assert pool.submit(_gc_state).result() == (LONG_JOB_GC_THRESHOLD, True)


def _thread_nice() -> int:
    import threading

    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _nice_after(seconds: float, done: str | None = None) -> int:
    """The calling thread's nice value after ``seconds``; ``done`` is created then."""
    time.sleep(seconds)
    nice = _thread_nice()
    if done:
        open(done, "w").close()
    return nice


def _wait_for(path) -> None:
    deadline = time.time() + 30
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.05)
    assert os.path.exists(path), "the side call did not finish"


needs_restorable_priority = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and (os.cpu_count() or 1) >= 2 and workers_mod.can_restore_priority()),
    reason="background priority needs Linux, two cores and the right to restore a priority")


@needs_restorable_priority
def test_side_work_runs_at_background_priority_until_waited_for(tmp_path):
    """A side process takes the core the main process leaves idle (nice 19); one the main
    process waits for gets this thread's priority back, or a busy machine would starve it."""
    own = _thread_nice()
    done = tmp_path / "done"
    job = SideProcess(_nice_after, 0.0, str(done))
    _wait_for(done)  # finished before anyone waited: it ran in the background
    assert job.result() == workers_mod.BACKGROUND_NICE
    assert SideProcess(_nice_after, 1.0).result() == own  # waited for while it sleeps
    assert _thread_nice() == own  # this thread's priority is untouched


@needs_restorable_priority
def test_a_spare_process_runs_its_call_in_the_background_and_parsing_workers_do_not(tmp_path):
    done = tmp_path / "done"
    job = SpareProcess(preload=int).run(_nice_after, 0.0, str(done))
    _wait_for(done)
    assert job.result() == workers_mod.BACKGROUND_NICE
    assert SpareProcess().run(_nice_after, 1.0).result() == _thread_nice()
    with workers_mod.worker_pool(1) as pool:  # the source-parsing pool: the main work
        assert pool.submit(_thread_nice).result() == _thread_nice()

