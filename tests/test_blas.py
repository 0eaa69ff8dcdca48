"""OpenBLAS's idle threads put to sleep at once (territoria/blas.py)."""

import os
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import os, sys
    import territoria.cli  # what `territoria` imports before its commands run
    from territoria.blas import configure_blas_threads
    taken = configure_blas_threads()
    print(taken, os.environ["OPENBLAS_THREAD_TIMEOUT"])
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
