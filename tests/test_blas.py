"""OpenBLAS's idle threads put to sleep at once (territoria/blas.py)."""

import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import os, sys
    import territoria.cli  # what `territoria` imports before its commands run
    from territoria.blas import configure_blas_threads
    taken = configure_blas_threads()
    print(taken, os.environ["OPENBLAS_THREAD_TIMEOUT"])
""")

# CPU time of the process while it sleeps 0.1 s after matrix products on several threads:
# OpenBLAS's idle threads poll for about 0.1 s by default
IDLE_CPU = textwrap.dedent("""
    import sys, time
    if sys.argv[1] == "command":
        from territoria.cli import prepare_long_job
        prepare_long_job()  # what `territoria run` and `territoria features` do first
    import numpy as np
    a = np.random.default_rng(0).normal(size=(600, 600))
    for _ in range(3):
        a @ a
    start = time.process_time()
    time.sleep(0.1)
    print(time.process_time() - start)
""")


def _probe(env):
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_the_command_line_sets_the_timeout_before_numpy_loads_openblas():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    # OpenBLAS reads the variable once, when numpy loads it: the CLI must not import numpy first
    assert _probe(env) == ["True", "4"]


def test_an_exported_timeout_is_kept():
    assert _probe({**os.environ, "OPENBLAS_THREAD_TIMEOUT": "20"}) == ["True", "20"]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS runs on one thread: nothing polls")
def test_openblas_threads_sleep_after_a_product_in_a_commands_process():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}

    def idle_cpu(mode):
        out = subprocess.run([sys.executable, "-c", IDLE_CPU, mode], env=env, capture_output=True, text=True,
                             check=True)
        return float(out.stdout)

    assert idle_cpu("command") < 0.02
    # without the setting (or set after numpy loaded OpenBLAS) a thread polls for about 0.1 s
    # (2^28 clock cycles): the test can tell
    assert idle_cpu("plain") > 0.04
