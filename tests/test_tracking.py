"""MLflow tracking: log → register → load by alias → same predictions, all in tmp_path.

One embedded store is logged to per module; the tests read it back with MlflowClient.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

lgb = pytest.importorskip("lightgbm")
pytest.importorskip("mlflow")

from territoria.errors import DataError  # noqa: E402
from territoria.models import tracking as tr  # noqa: E402

MODEL_NAME = "territoria-test"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A small LightGBM model on synthetic data, logged and registered as champion."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame(
        rng.normal(size=(300, 4)),
        columns=["median_income", "poverty_rate__chg", "unemployment_rate__gap_nbr", "noise"],
        index=pd.Index([f"{i:05d}" for i in range(300)], name="zone_code"),
    )
    y = 2 * X["median_income"] - X["poverty_rate__chg"] + rng.normal(scale=0.5, size=300)
    booster = lgb.train(
        {
            "objective": "regression",
            "verbose": -1,
            "seed": 7,
            "deterministic": True,
            "num_threads": 1,
        },
        lgb.Dataset(X, y),
        num_boost_round=25,
    )
    out = tmp_path_factory.mktemp("run")
    metrics = {
        "lightgbm": {"spearman": 0.61, "precision@10%": 0.42, "r2": float("nan")},
        "persistence": {"spearman": 0.40},
    }
    run_id = tr.log_training(
        out_dir=out,
        run_name="synthetic",
        params={
            "lightgbm": {"learning_rate": 0.1, "num_leaves": 31},
            "seed": 7,
            "target": "income",
        },
        metrics=metrics,
        features=list(X.columns),
        data_hashes={"filosofi/a.csv": "ab" * 32, "cog/b.csv": "cd" * 32},
        model=booster,
        shap_data=X,
    )
    mv = tr.register_champion(run_id, MODEL_NAME, out_dir=out)
    return {"out": out, "run_id": run_id, "mv": mv, "X": X, "booster": booster}


def test_embedded_store_lives_in_the_output_folder(logged):
    out = logged["out"]
    assert (out / "mlflow.db").exists()
    assert (out / "mlruns").is_dir()
    assert tr.default_tracking_uri(out) == f"sqlite:///{(out / 'mlflow.db').resolve().as_posix()}"


def test_round_trip_by_alias_gives_identical_predictions(logged):
    model = tr.load_champion(MODEL_NAME, out_dir=logged["out"])
    X = logged["X"]
    np.testing.assert_array_equal(model.predict(X), logged["booster"].predict(X))
    # columns are reordered by name; extra columns are ignored
    shuffled = X[list(reversed(X.columns))].assign(extra=1.0)
    np.testing.assert_array_equal(model.predict(shuffled), logged["booster"].predict(X))
    assert model.version == str(logged["mv"].version)
    assert model.run_id == logged["run_id"]
    assert model.model_uri == f"models:/{MODEL_NAME}@champion"
    with pytest.raises(DataError, match="noise"):
        model.predict(X.drop(columns="noise"))


def test_tracking_uri_points_to_the_same_store(logged):
    uri = tr.default_tracking_uri(logged["out"])
    model = tr.load_champion(MODEL_NAME, uri)
    np.testing.assert_array_equal(
        model.predict(logged["X"]), logged["booster"].predict(logged["X"])
    )


def test_params_metrics_and_tags_read_back(logged):
    from mlflow import MlflowClient

    uri = tr.default_tracking_uri(logged["out"])
    run = MlflowClient(tracking_uri=uri).get_run(logged["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["lightgbm.learning_rate"] == "0.1"
    assert run.data.params["seed"] == "7"
    assert run.data.params["n_features"] == "4"
    assert run.data.metrics["lightgbm/spearman"] == pytest.approx(0.61)
    assert run.data.metrics["lightgbm/precision_at_10pct"] == pytest.approx(0.42)
    assert run.data.metrics["persistence/spearman"] == pytest.approx(0.40)
    assert "lightgbm/r2" not in run.data.metrics  # NaN is not logged
    assert run.data.tags[tr.TAG_DATA_FINGERPRINT] == tr.data_fingerprint(
        {"filosofi/a.csv": "ab" * 32, "cog/b.csv": "cd" * 32}
    )
    assert len(run.data.tags[tr.TAG_MODEL_SHA]) == 64


def test_artifacts_present(logged, tmp_path):
    from mlflow import MlflowClient

    uri = tr.default_tracking_uri(logged["out"])
    client = MlflowClient(tracking_uri=uri)
    rid = logged["run_id"]
    top = {a.path for a in client.list_artifacts(rid)}
    assert {"model", "features", "data", "shap", "metrics", "params.json"} <= top
    model_files = {a.path for a in client.list_artifacts(rid, "model")}
    assert {"model/MLmodel", "model/model.lgb"} <= model_files

    local = tmp_path / "dl"
    local.mkdir()
    feats = pd.read_csv(client.download_artifacts(rid, "features/features.csv", str(local)))
    assert list(feats["feature"]) == list(logged["X"].columns)
    row = feats.set_index("feature").loc["poverty_rate__chg"]
    assert row["indicator"] == "poverty_rate" and row["domain"] == "economic"
    hashes = json.loads(
        open(client.download_artifacts(rid, "data/data_hashes.json", str(local))).read()
    )
    assert hashes["cog/b.csv"] == "cd" * 32
    shap = pd.read_parquet(client.download_artifacts(rid, "shap/shap_values.parquet", str(local)))
    assert list(shap.columns) == ["zone_code", *logged["X"].columns, "base_value"]
    # TreeSHAP values add up to the prediction
    pred = logged["booster"].predict(logged["X"])
    np.testing.assert_allclose(
        shap.drop(columns="zone_code").sum(axis=1), pred, rtol=1e-6, atol=1e-6
    )


def test_alias_moves_to_a_new_champion(logged):
    mv2 = tr.register_champion(logged["run_id"], MODEL_NAME, out_dir=logged["out"])
    assert int(mv2.version) == int(logged["mv"].version) + 1
    assert tr.load_champion(MODEL_NAME, out_dir=logged["out"]).version == str(mv2.version)


def test_unknown_model_and_bad_names_are_refused(logged):
    with pytest.raises(DataError, match="no model"):
        tr.load_champion("nothing-here", out_dir=logged["out"])
    with pytest.raises(DataError, match="invalid model name"):
        tr.load_champion("../evil", out_dir=logged["out"])


def test_pickled_models_are_refused(logged, tmp_path):
    """Only LightGBM text models are loaded: a folder whose flavour needs unpickling is not."""
    import yaml

    src = tr.load_champion(MODEL_NAME, out_dir=logged["out"])
    folder = tmp_path / "m"
    folder.mkdir()
    src.booster.save_model(str(folder / "model.lgb"))
    conf = {
        "flavors": {
            "lightgbm": {"data": "model.pkl", "model_class": "lightgbm.sklearn.LGBMRegressor"}
        }
    }
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))
    with pytest.raises(DataError, match="only LightGBM text models"):
        tr.load_model_path(folder)
    conf = {"flavors": {"lightgbm": {"data": "model.lgb", "model_class": "lightgbm.basic.Booster"}}}
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))
    np.testing.assert_array_equal(
        tr.load_model_path(folder).predict(logged["X"]), src.predict(logged["X"])
    )
    np.testing.assert_array_equal(
        tr.load_model_path(folder / "model.lgb").predict(logged["X"]), src.predict(logged["X"])
    )


def test_flatten_metrics_accepts_tables():
    wide = pd.DataFrame({"spearman": [0.6, 0.4], "mae": [1.0, 1.2]}, index=["lightgbm", "ridge"])
    assert tr.flatten_metrics(wide) == {
        "lightgbm/spearman": 0.6,
        "lightgbm/mae": 1.0,
        "ridge/spearman": 0.4,
        "ridge/mae": 1.2,
    }
    long = pd.DataFrame(
        {
            "target": ["income", "income"],
            "model": ["lightgbm", "persistence"],
            "metric": ["R²", "spearman"],
            "value": [0.3, np.nan],
        }
    )
    assert tr.flatten_metrics(long) == {"income/lightgbm/R2": 0.3}
    assert tr.flatten_params({"a": {"b": [1, 2]}, "c": None}) == {"a.b": "[1, 2]", "c": "None"}


def test_log_training_is_quiet(logged, capfd):
    """Logging prints nothing: no MLflow INFO lines (such as the schema creation of a new
    store), no warnings, telemetry off."""
    import logging
    import os
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rid = tr.log_training(out_dir=logged["out"], params={"a": 1}, metrics={"m": 1.0})
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert len(rid) == 32
    assert logging.getLogger("mlflow").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("alembic").getEffectiveLevel() >= logging.WARNING
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_preload_opens_the_store_that_runs_are_then_logged_to(logged, tmp_path):
    """The MLflow worker's preload creates the embedded store's tables ahead of the runs;
    a run logged afterwards lands in that store."""
    from mlflow import MlflowClient

    store = tr.tracking_store(tmp_path)
    tr.preload(store)
    assert (tmp_path / "mlflow.db").stat().st_size > 0
    run_id = tr.log_training(out_dir=tmp_path, run_name="after-preload", params={"seed": 1},
                             metrics={"lightgbm": {"spearman": 0.5}}, features=list(logged["X"].columns),
                             model=logged["booster"])
    client = MlflowClient(tracking_uri=store.tracking_uri)
    assert client.get_run(run_id).data.params["seed"] == "1"


def test_new_stores_are_copies_of_an_empty_template_in_the_users_cache(logged, tmp_path, monkeypatch):
    """The first new store builds the template (an empty store without experiments) in the
    user's cache; later ones copy it, get MLflow's Default experiment as a built store does,
    and take runs without touching the template."""
    from mlflow import MlflowClient

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = tr.tracking_store(tmp_path / "a")
    first.client()
    template = tr.empty_store_template()
    assert template.parent == tmp_path / "cache" / "territoria" / "mlflow"
    before = template.read_bytes()
    run_id = tr.log_training(out_dir=tmp_path / "b", run_name="copied", params={"seed": 2},
                             metrics={"lightgbm": {"spearman": 0.5}}, features=list(logged["X"].columns),
                             model=logged["booster"])
    client = MlflowClient(tracking_uri=tr.tracking_store(tmp_path / "b").tracking_uri)
    assert client.get_run(run_id).data.params["seed"] == "2"
    assert [e.name for e in client.search_experiments(order_by=["name"])] == ["Default", tr.DEFAULT_EXPERIMENT]
    assert [e.name for e in first.client().search_experiments()] == ["Default"]
    assert template.read_bytes() == before
    assert (tmp_path / "b" / "mlflow.db").stat().st_ino != template.stat().st_ino


def test_a_damaged_template_is_rebuilt_and_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = tr.empty_store_template()
    template.write_bytes(b"not an SQLite file" * 64)
    assert [e.name for e in tr.tracking_store(tmp_path / "a").client().search_experiments()] == ["Default"]
    assert template.read_bytes().startswith(b"SQLite format 3")
    (tmp_path / "file").write_text("a file, not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # the cache cannot be created
    assert [e.name for e in tr.tracking_store(tmp_path / "b").client().search_experiments()] == ["Default"]
