"""LightGBM's process-wide thread count: a one-thread fit keeps it at one from the first call
to the last (another value while another fold trains crashes the process), and the guard lets
work with one count run together and work with another wait."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
import threading

import lightgbm as lgb
import numpy as np
import pytest

from territoria.models.lgbm_threads import lightgbm_threads
from territoria.models.trajectory import DeteriorationClassifier, HurdleRegressor, SharedBins, TrajectoryRegressor
from territoria.models.treeshap import contributions


class _RecordingLib:
    """``lightgbm.basic._LIB`` that records the thread counts its calls set."""

    def __init__(self, lib) -> None:
        self._lib = lib
        self.count = ctypes.c_int.in_dll(lib, "LGBM_DEFAULT_NUM_THREADS")
        self.calls: list[str] = []
        self.set_to: list[tuple[str, int]] = []

    def __getattr__(self, name: str):
        fn = getattr(self._lib, name)

        def call(*args):
            before = self.count.value
            out = fn(*args)
            self.calls.append(name)
            if self.count.value != before:
                self.set_to.append((name, self.count.value))
            return out

        return call

    def start_from(self, sentinel: int) -> None:
        """Set the count to ``sentinel`` (a value no call of the test asks for) and forget the calls."""
        self.count.value = sentinel
        self.calls, self.set_to = [], []


@pytest.fixture
def recording(monkeypatch):
    lib = _RecordingLib(lgb.basic._LIB)
    monkeypatch.setattr(lgb.basic, "_LIB", lib)
    return lib


def _data(n=600, p=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    X[rng.random((n, p)) < 0.7] = 0.0  # sparse columns: LightGBM bundles them into multi-value bins
    y = X[:, 0] - X[:, 1] + rng.normal(scale=0.3, size=n)
    return X, y


def test_a_one_thread_fit_on_bins_found_with_two_threads_never_sets_another_count(recording):
    X, y = _data()
    params = {"n_estimators": 30, "min_child_samples": 5, "early_stopping_rounds": 5, "random_state": 3}
    bins = SharedBins(X, TrajectoryRegressor(**params, n_jobs=2))
    assert recording.count.value == 2  # the bins themselves were found with two threads
    recording.start_from(5)
    rows = np.arange(450)
    groups = np.repeat(np.arange(45), 10)
    reg = TrajectoryRegressor(**params, n_jobs=1).fit(X[rows], y[rows], groups=groups, bins=bins.take(rows))
    clf = DeteriorationClassifier(**params, n_jobs=1).fit(X[rows], (y[rows] > 1).astype(int), groups=groups,
                                                           bins=bins.take(rows))
    reg.predict(X[450:])
    clf.predict_proba(X[450:])
    assert {"LGBM_DatasetGetSubset", "LGBM_BoosterCreate", "LGBM_BoosterPredictForMat"} <= set(recording.calls)
    assert recording.set_to and {name for name, count in recording.set_to if count != 1} == set()


def test_a_hurdle_model_and_the_pred_contrib_fallback_keep_their_count(recording):
    X, y = _data(seed=1)
    zero = np.zeros(len(y), bool)
    zero[::7] = True
    recording.start_from(5)
    model = HurdleRegressor(regressor=TrajectoryRegressor(n_estimators=10, min_child_samples=5, n_jobs=1),
                            classifier=DeteriorationClassifier(n_estimators=10, min_child_samples=5, n_jobs=1))
    model.fit(X, y, structural_zero=zero).predict(X)
    booster = model.regressor_.booster_
    contributions(booster, X[:50], n_jobs=1)
    with lightgbm_threads(1) as threads:
        booster.predict(X[:50], pred_contrib=True, num_threads=threads)
    assert "LGBM_BoosterPredictForMat" in recording.calls
    assert recording.set_to and {name for name, count in recording.set_to if count != 1} == set()


def test_work_with_the_same_count_runs_together():
    inside = threading.Barrier(2, timeout=5)

    def work():
        with lightgbm_threads(1):
            inside.wait()  # both threads in a block at once, or the barrier breaks

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not inside.broken


def test_work_with_another_count_waits_and_is_not_starved():
    order: list[str] = []
    first_in, release_first, second_waiting = threading.Event(), threading.Event(), threading.Event()

    def one_thread_fold():
        with lightgbm_threads(1):
            order.append("fold in")
            first_in.set()
            release_first.wait(5)
            order.append("fold out")

    def two_thread_predict():
        first_in.wait(5)
        second_waiting.set()
        with lightgbm_threads(2):
            order.append("predict")

    def late_fold():
        second_waiting.wait(5)
        with lightgbm_threads(1):
            order.append("late fold")

    workers = [threading.Thread(target=f) for f in (one_thread_fold, two_thread_predict, late_fold)]
    for t in workers:
        t.start()
    second_waiting.wait(5)
    threading.Event().wait(0.2)  # the others queue up behind the first fold
    assert order == ["fold in"]
    release_first.set()
    for t in workers:
        t.join(5)
    # the two-thread block went before the one-thread block that came after it
    assert order == ["fold in", "fold out", "predict", "late fold"]


def test_nested_work_keeps_its_count():
    with lightgbm_threads(2):
        with lightgbm_threads(-1 + 3):
            pass
        with pytest.raises(RuntimeError, match="1 threads nested in work with 2 threads"):
            with lightgbm_threads(1):
                pass
    with lightgbm_threads(1):  # the failed nested block left nothing behind
        pass


# the backtest's pattern: two folds fitted at once on one thread each, on subsets of bins found
# with two threads, each predicting its rows, while a third thread forecasts with a two-thread
# model; before the guard, six runs of six died of a segmentation fault in lib_lightgbm.so
_FOLDS_AT_ONCE = textwrap.dedent("""
    import threading
    import numpy as np
    from territoria.models.trajectory import SharedBins, TrajectoryRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12000, 120))
    X[rng.random(X.shape) < 0.9] = 0.0
    y = X[:, 0] + rng.normal(size=len(X))
    params = dict(n_estimators=30, num_leaves=31, random_state=0)
    bins = SharedBins(X, TrajectoryRegressor(**params, n_jobs=2))
    forecaster = TrajectoryRegressor(n_estimators=2, n_jobs=2).fit(X[:500], y[:500])
    done = threading.Event()

    def forecasts():
        while not done.is_set():
            forecaster.predict(X[:1])

    def fold(seed):
        draw = np.random.default_rng(seed)
        for _ in range(10):
            rows = np.sort(draw.choice(len(X), len(X) // 2, replace=False))
            TrajectoryRegressor(**params, n_jobs=1).fit(X[rows], y[rows], bins=bins.take(rows)).predict(X[:2000])

    background = threading.Thread(target=forecasts)
    background.start()
    folds = [threading.Thread(target=fold, args=(seed,)) for seed in (1, 2)]
    for t in folds:
        t.start()
    for t in folds:
        t.join()
    done.set()
    background.join()
    print("folds fitted")
""")


def test_folds_fitted_at_once_beside_a_two_thread_forecast_do_not_crash_the_process():
    run = subprocess.run([sys.executable, "-c", _FOLDS_AT_ONCE], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert run.stdout.strip() == "folds fitted"
