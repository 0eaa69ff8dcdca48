"""`territoria tune`: optuna search on the department-blocked CV, reproducible, optional."""

import json
import sys

import pytest
import yaml

from territoria.models.targets import load_model_config
from territoria.models.tuning import (
    OptionalDependencyError,
    require_optuna,
    search_space,
    tune_target,
)

TARGET = "median_income_2019_2021"
MAX_ESTIMATORS = 30


def _small_config():
    """conf/models.yml with tiny boosters, so that a trial takes seconds."""
    config = load_model_config()
    # one thread: on a shared 2-core machine two LightGBM threads wait on each other (6x slower)
    return config.model_copy(update={"model": {**config.model, "n_estimators": 20, "learning_rate": 0.1,
                                                "n_jobs": 1}})


def _tune(fb, n_trials):
    return tune_target(fb, TARGET, config=_small_config(), n_trials=n_trials, max_estimators=MAX_ESTIMATORS)


@pytest.fixture(scope="module")
def tuned(feature_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    res = _tune(feature_build, n_trials=2)
    return out, res, res.write(out)


def test_json_holds_best_default_and_every_trial(tuned):
    out, res, paths = tuned
    assert paths["json"] == out / "tuning" / f"{TARGET}.json"
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert doc["target"] == TARGET and doc["scheme"] == "cv_departement" and doc["seed"] == 42
    trials = doc["trials"]
    assert [t["number"] for t in trials] == [0, 1]
    assert all(t["state"] == "COMPLETE" for t in trials)
    # the first trial is the configuration's defaults, scored on the same folds as the others
    defaults = _small_config().model
    assert {k: trials[0][k] for k in doc["search_space"]} == {k: defaults[k] for k in doc["search_space"]}
    assert doc["default_score"] == trials[0]["score"]
    assert doc["best_score"] == max(t["score"] for t in trials)
    assert doc["best_score"] >= doc["default_score"]  # guaranteed: the defaults are a trial
    assert 0.2 < doc["default_score"] < 1.0
    assert all(t["n_estimators"] <= MAX_ESTIMATORS for t in trials)
    best = next(t for t in trials if t["score"] == doc["best_score"])
    assert {k: best[k] for k in doc["search_space"]} == {k: doc["best_params"][k] for k in doc["search_space"]}
    # fixed parameters are kept, so the block replaces conf/models.yml's `model:` as a whole
    assert doc["best_params"]["early_stopping_rounds"] == defaults["early_stopping_rounds"]
    assert doc["n_scored"] > 1000 and doc["budget"]["completed"] == 2


def test_params_yaml_is_a_model_block(tuned):
    out, res, paths = tuned
    doc = yaml.safe_load(paths["params"].read_text(encoding="utf-8"))
    assert doc == {"model": res.best_params}


def test_same_seed_same_trials_and_best_params(tuned, feature_build):
    _, first, _ = tuned
    again = _tune(feature_build, n_trials=2)
    assert again.best_params == first.best_params
    assert again.best_score == first.best_score
    cols = ["score", *first.search_space]
    assert again.trials[cols].equals(first.trials[cols])


def test_search_space_holds_the_defaults():
    space = search_space({"learning_rate": 0.5, "num_leaves": 31, "n_estimators": 400}, max_estimators=200)
    assert space["learning_rate"][:2] == (0.01, 0.5)  # widened to the default
    assert space["num_leaves"][:2] == (8, 128)
    assert space["n_estimators"][:2] == (50, 200)  # the default is capped at max_estimators


def test_missing_optuna_is_one_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(OptionalDependencyError, match=r"pip install territoria\[tune\]"):
        require_optuna()
    with pytest.raises(OptionalDependencyError):
        tune_target(None, TARGET)  # before any work

    from territoria import cli

    monkeypatch.setattr(sys, "argv", ["territoria", "tune", "--target", TARGET, "--out", "unused"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install territoria[tune]" in err[0] and "Traceback" not in err[0]
