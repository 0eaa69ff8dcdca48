"""MLflow tracking of trainings, and the model registry that prediction loads from.

Embedded by default: with ``out_dir`` and no ``tracking_uri``, runs and the model registry
live in a local SQLite file inside the run's output folder (``sqlite:///<out>/mlflow.db``)
and artifacts under ``<out>/mlruns``; no server is needed. ``tracking_uri`` points anywhere
MLflow can (another SQLite file, ``http://host:5000``...); the registry is then the same URI.
Browse an embedded store with::

    mlflow ui --backend-store-uri sqlite:///out/mlflow.db

(the ``ui`` command needs the full ``mlflow`` package; ``mlflow-skinny`` is enough to log,
register and load.)

What one training logs (:func:`log_training`): parameters, metrics of the model and of the
baselines (a flat or nested mapping, or a table), the feature list with its registry metadata
(``features/features.csv``), the data files' SHA-256 (``data/data_hashes.json`` and a
fingerprint tag), the LightGBM booster (MLflow ``lightgbm`` flavour, saved by
``mlflow.lightgbm.save_model`` in LightGBM's own text format, with a signature naming the
features) and the SHAP values (``shap/shap_values.parquet``).

The best model is registered with :func:`register_champion` (alias ``champion``);
:func:`load_champion` resolves ``models:/<name>@champion`` in the project's registry.

Safety: models are only loaded from the registry given by the caller (embedded store of an
output folder, or an explicit ``tracking_uri``) or from an explicit local path
(:func:`load_model_path`), and only as a LightGBM text model: a registered model whose flavour
would need unpickling is refused, and the model file's SHA-256 recorded at registration must
match. Loading therefore never executes code from the artifact store.

MLflow is imported lazily (it takes seconds), telemetry is disabled
(``MLFLOW_DISABLE_TELEMETRY``), and MLflow's and Alembic's INFO logs are silenced. Runs are
created with ``MlflowClient`` (not ``mlflow.start_run``): no global active run, and no git
inspection of the working directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.paths import user_cache_dir

DEFAULT_EXPERIMENT = "territoria"
CHAMPION_ALIAS = "champion"
MODEL_ARTIFACT = "model"
TAG_MODEL_SHA = "territoria.model_sha256"
TAG_DATA_FINGERPRINT = "territoria.data_fingerprint"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_MAX_PARAM_LEN = 6000
_BATCH = 100


# --------------------------------------------------------------------------- set-up


def _quiet() -> None:
    """No telemetry, no progress bars, no INFO logs from MLflow and Alembic."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow's SQL store triggers this SQLAlchemy 2.1 deprecation itself; nothing to act on
    warnings.filterwarnings(
        "ignore", message=r"The ``noload`` loader strategy", category=DeprecationWarning
    )
    import mlflow  # noqa: F401  (configures its loggers on import: quieten them afterwards)

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))


def preload(store: TrackingStore | None = None) -> None:
    """Import what :func:`log_runs` needs (MLflow, its LightGBM flavour and SQL store, the
    TreeSHAP kernels) and open ``store`` (a new embedded store creates its tables then: 0.9 s):
    a :class:`territoria.workers.SpareProcess` does it while a core is idle."""
    _quiet()
    import lightgbm  # noqa: F401
    import mlflow.lightgbm  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
    from mlflow import MlflowClient  # noqa: F401
    from mlflow.models import ModelSignature  # noqa: F401

    import territoria.models.treeshap  # noqa: F401

    if store is not None:
        store.client()


def default_tracking_uri(out_dir: Path | str) -> str:
    """The embedded store of an output folder: ``sqlite:///<out>/mlflow.db`` (absolute)."""
    return f"sqlite:///{(Path(out_dir).resolve() / 'mlflow.db').as_posix()}"


@dataclass(frozen=True)
class TrackingStore:
    """Where runs, models and artifacts go."""

    tracking_uri: str
    artifact_root: str | None = None  # only for the embedded store

    def client(self):
        _quiet()
        from mlflow import MlflowClient

        db = _sqlite_file(self.tracking_uri)
        if db is not None and not db.exists():
            _seed_store(db)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for other stores."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or ":memory:" in uri:
        return None
    path = uri[len(prefix):].split("?", 1)[0]
    return Path(path) if path else None


def empty_store_template() -> Path:
    """An empty SQLite store of this MLflow version, without its ``Default`` experiment, in
    the user's cache (:func:`territoria.paths.user_cache_dir`), built there if missing or
    damaged (``scripts/install.sh`` builds it at set-up).

    MLflow builds a new store by running its ~60 schema migrations: 0.9-1.1 s of CPU for
    every run's new output folder, against 0.05 s to copy this file. MLflow then adds the
    ``Default`` experiment as in a store it built (its artifact location depends on the
    working directory).
    """
    _quiet()
    import mlflow

    path = user_cache_dir() / "mlflow" / f"empty-store-{mlflow.__version__}.db"
    if _is_empty_store(path):
        return path
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        db = Path(tmp) / path.name
        SqlAlchemyStore(f"sqlite:///{db.as_posix()}", Path(tmp).as_uri()).engine.dispose()
        with contextlib.closing(sqlite3.connect(db)) as con, con:
            con.execute("DELETE FROM experiments WHERE experiment_id = 0")
        os.replace(db, path)
    return path


def _is_empty_store(path: Path) -> bool:
    """``path`` is an SQLite store with a schema version and no experiment."""
    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as con:
            return (con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
                    and con.execute("SELECT count(*) FROM experiments").fetchone()[0] == 0)
    except sqlite3.Error:
        return False


def _seed_store(db: Path) -> None:
    """Create the store file ``db`` as a copy of :func:`empty_store_template`; nothing (MLflow
    then builds it) when the template cannot be built or ``db`` appeared meanwhile."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        template = empty_store_template()
        db.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=db.parent) as tmp:
            copy = Path(tmp) / db.name
            shutil.copyfile(template, copy)
            os.link(copy, db)  # never replaces a store another process has just created
    except (OSError, RuntimeError, sqlite3.Error, MlflowException, SQLAlchemyError):  # RuntimeError: no home
        pass


def tracking_store(
    out_dir: Path | str | None = None, tracking_uri: str | None = None
) -> TrackingStore:
    """The store to use: ``tracking_uri`` when given, else the embedded one of ``out_dir``."""
    if tracking_uri:
        return TrackingStore(tracking_uri=str(tracking_uri))
    if out_dir is None:
        raise ValueError("give out_dir (embedded store) or tracking_uri")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return TrackingStore(
        tracking_uri=default_tracking_uri(out), artifact_root=(out / "mlruns").as_uri()
    )


def _experiment_id(client, store: TrackingStore, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=store.artifact_root)


# --------------------------------------------------------------------------- flattening


def flatten_params(params: Mapping[str, Any] | None, prefix: str = "") -> dict[str, str]:
    """Nested parameters as ``a.b`` keys with string values (truncated to MLflow's limit)."""
    out: dict[str, str] = {}
    for k, v in (params or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, key + "."))
            continue
        if isinstance(v, (list, tuple)):
            text = json.dumps(list(v), default=str)
        elif isinstance(v, Path):
            text = v.as_posix()
        else:
            text = str(v)
        out[_clean_key(key)] = (
            text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 1] + "…"
        )
    return out


def _clean_key(key: str) -> str:
    """A valid MLflow key: letters, digits, ``_ - . / : space`` only."""
    key = key.replace("@", "_at_").replace("%", "pct").replace("²", "2")
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", key)


def _number(v) -> float | None:
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return None


def flatten_metrics(metrics: Mapping[str, Any] | pd.DataFrame | None) -> dict[str, float]:
    """Metrics as ``name → value`` with ``/``-joined keys; non-numeric and non-finite skipped.

    Accepted shapes:

    * flat mapping ``{"model/spearman": 0.61}``;
    * nested mapping ``{"lightgbm": {"spearman": 0.61}, "persistence": {...}}`` →
      ``lightgbm/spearman``, ``persistence/spearman`` (any depth);
    * a wide table (rows: models, possibly a MultiIndex such as target × model; columns:
      metrics) → ``<row keys>/<metric>``;
    * a long table with ``metric`` and ``value`` columns; every other non-numeric column
      is part of the key (e.g. ``target``, ``model``).
    """
    out: dict[str, float] = {}
    if metrics is None:
        return out
    if isinstance(metrics, pd.DataFrame):
        df = metrics
        if {"metric", "value"} <= set(df.columns):
            keys = [
                c
                for c in df.columns
                if c not in ("metric", "value") and not pd.api.types.is_numeric_dtype(df[c])
            ]
            for _, row in df.iterrows():
                v = _number(row["value"])
                if v is not None:
                    parts = [str(row[k]) for k in keys if pd.notna(row[k])] + [str(row["metric"])]
                    out[_clean_key("/".join(parts))] = v
            return out
        for idx, row in df.iterrows():
            parts = [str(p) for p in (idx if isinstance(idx, tuple) else (idx,))]
            for col, val in row.items():
                v = _number(val)
                if v is not None:
                    out[_clean_key("/".join([*parts, str(col)]))] = v
        return out

    def walk(m: Mapping, prefix: str) -> None:
        for k, val in m.items():
            key = f"{prefix}{k}"
            if isinstance(val, Mapping):
                walk(val, key + "/")
            else:
                v = _number(val)
                if v is not None:
                    out[_clean_key(key)] = v

    walk(metrics, "")
    return out


def _jsonable(obj):
    if isinstance(obj, pd.DataFrame):
        return json.loads(obj.to_json(orient="table", index=True, default_handler=str))
    return obj


def feature_table(features: pd.DataFrame | Sequence[str], registry=None) -> pd.DataFrame:
    """The feature list with registry metadata (a FeatureBuild ``meta`` table is kept as is,
    restricted to nothing; a list of names is completed from the registry: the indicator is
    the name before ``__``)."""
    if isinstance(features, pd.DataFrame):
        return features.reset_index(drop=True)
    from territoria.registry import load_registry

    reg = registry or load_registry()
    rows = []
    for name in features:
        ind_name = str(name).split("__")[0]
        ind = reg.indicators.get(ind_name)
        rows.append(
            {
                "feature": str(name),
                "indicator": ind.name if ind else None,
                "domain": ind.domain if ind else None,
                "direction": ind.direction if ind else None,
                "is_lever": bool(ind.lever) if ind else None,
                "source": ind.source if ind else None,
                "label_en": ind.label_en if ind else None,
                "label_fr": ind.label_fr if ind else None,
            }
        )
    return pd.DataFrame(rows)


def data_fingerprint(hashes: Mapping[str, str]) -> str:
    """One SHA-256 over the sorted (file, hash) pairs: equal iff the same data were read."""
    text = json.dumps(dict(sorted(hashes.items())), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- model


def as_booster(model):
    """The LightGBM Booster of ``model`` (a Booster, or an estimator with ``booster_``)."""
    import lightgbm as lgb

    if isinstance(model, lgb.Booster):
        return model
    booster = getattr(model, "booster_", None)
    if isinstance(booster, lgb.Booster):
        return booster
    raise TypeError(
        f"expected a LightGBM Booster or an estimator with booster_, got {type(model).__name__}"
    )


def _save_booster(booster, path: Path) -> Path:
    """Save a Booster as an MLflow model (lightgbm flavour, text format) at ``path``."""
    import lightgbm as lgb
    import mlflow.lightgbm
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("double", n) for n in booster.feature_name()]),
        outputs=Schema([ColSpec("double")]),
    )
    # pip requirements given explicitly: MLflow would otherwise infer them by importing the
    # model in a subprocess, which takes seconds
    mlflow.lightgbm.save_model(
        booster, str(path), signature=signature, pip_requirements=[f"lightgbm=={lgb.__version__}"]
    )
    return path


def shap_frame(booster, X: pd.DataFrame) -> pd.DataFrame:
    """Exact TreeSHAP values of ``X`` (:func:`territoria.models.treeshap.contributions`): one
    column per feature plus ``base_value`` (the expected value, as in ``explanations.parquet``);
    same index as X. Multiclass models are not supported."""
    from territoria.models.treeshap import contributions

    names = booster.feature_name()
    contrib = contributions(booster, X[names].to_numpy(dtype=float))
    if contrib.shape[1] != len(names) + 1:
        raise ValueError("SHAP values of multiclass models are not supported")
    return pd.DataFrame(contrib, index=X.index, columns=[*names, "base_value"])


# --------------------------------------------------------------------------- logging


def _log_batches(
    client, run_id: str, params: dict[str, str], metrics: dict[str, float], tags: dict[str, str]
) -> None:
    from mlflow.entities import Metric, Param, RunTag

    ts = int(time.time() * 1000)
    p = [Param(k, v) for k, v in params.items()]
    t = [RunTag(k, str(v)) for k, v in tags.items()]
    m = [Metric(k, v, ts, 0) for k, v in metrics.items()]
    for i in range(0, len(p), _BATCH):
        client.log_batch(run_id, params=p[i : i + _BATCH])
    for i in range(0, len(t), _BATCH):
        client.log_batch(run_id, tags=t[i : i + _BATCH])
    for i in range(0, len(m), 10 * _BATCH):
        client.log_batch(run_id, metrics=m[i : i + 10 * _BATCH])


def log_training(
    *,
    out_dir: Path | str | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | pd.DataFrame | None = None,
    features: pd.DataFrame | Sequence[str] | None = None,
    data_hashes: Mapping[str, str] | None = None,
    model=None,
    shap_values: pd.DataFrame | None = None,
    shap_data: pd.DataFrame | None = None,
    tags: Mapping[str, str] | None = None,
    artifacts: Mapping[str, Path | str | Sequence[Path | str]] | None = None,
) -> str:
    """Log one training as an MLflow run and return its run id.

    Parameters
    ----------
    out_dir, tracking_uri : the embedded store of ``out_dir``, or another tracking URI.
    params : parameters (nested mappings flattened to ``a.b``; the full mapping is also
        logged as ``params.json``).
    metrics : model and baseline metrics (see :func:`flatten_metrics` for accepted shapes;
        the original structure is also logged as ``metrics/metrics.json``).
    features : the feature metadata table (``FeatureBuild.meta`` restricted to the model's
        features) or a list of feature names (completed from the registry).
    data_hashes : data file → SHA-256 (``FeatureBuild.file_hashes``).
    model : a LightGBM Booster (or an estimator with ``booster_``), logged under ``model/``.
    shap_values : SHAP values (zones × features); or ``shap_data`` (the rows to explain) to
        compute them with the booster's TreeSHAP.
    artifacts : extra files, artifact folder → path(s) (e.g. ``{"outputs": "out/metrics.json"}``).
    """
    store = tracking_store(out_dir, tracking_uri)
    client = store.client()
    exp_id = _experiment_id(client, store, experiment)
    from territoria import __version__ as version

    run = client.create_run(exp_id, run_name=run_name, tags={"territoria.version": str(version)})
    run_id = run.info.run_id
    try:
        booster = as_booster(model) if model is not None else None
        flat_params = flatten_params(params)
        flat_metrics = flatten_metrics(metrics)
        all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if data_hashes:
            all_tags[TAG_DATA_FINGERPRINT] = data_fingerprint(data_hashes)
        with tempfile.TemporaryDirectory(prefix="territoria-mlflow-") as tmp:
            tmp = Path(tmp)
            if params:
                _write_json(tmp / "params" / "params.json", params)
                client.log_artifacts(run_id, str(tmp / "params"))
            if metrics is not None:
                _write_json(tmp / "metrics" / "metrics.json", _jsonable(metrics))
                client.log_artifacts(run_id, str(tmp / "metrics"), "metrics")
            if features is not None:
                table = feature_table(features)
                flat_params.setdefault("n_features", str(len(table)))
                (tmp / "features").mkdir()
                table.to_csv(tmp / "features" / "features.csv", index=False, lineterminator="\n")
                client.log_artifacts(run_id, str(tmp / "features"), "features")
            if data_hashes:
                _write_json(tmp / "data" / "data_hashes.json", dict(sorted(data_hashes.items())))
                client.log_artifacts(run_id, str(tmp / "data"), "data")
            if booster is not None:
                model_dir = _save_booster(booster, tmp / MODEL_ARTIFACT)
                all_tags[TAG_MODEL_SHA] = _sha256(model_dir / "model.lgb")
                flat_params.setdefault("model.num_trees", str(booster.num_trees()))
                client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
            if shap_values is None and shap_data is not None:
                if booster is None:
                    raise ValueError("shap_data needs a model to compute SHAP values")
                shap_values = shap_frame(booster, shap_data)
            if shap_values is not None:
                (tmp / "shap").mkdir()
                sv = (
                    shap_values.reset_index()
                    if shap_values.index.name
                    else shap_values.reset_index(drop=True)
                )
                sv.to_parquet(tmp / "shap" / "shap_values.parquet", index=False)
                client.log_artifacts(run_id, str(tmp / "shap"), "shap")
        for folder, paths in (artifacts or {}).items():
            for p in [paths] if isinstance(paths, (str, Path)) else paths:
                p = Path(p)
                if p.is_dir():
                    client.log_artifacts(run_id, str(p), f"{folder}/{p.name}")
                else:
                    client.log_artifact(run_id, str(p), folder)
        _log_batches(client, run_id, flat_params, flat_metrics, all_tags)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def log_runs(runs: Sequence[Mapping[str, Any]], out_dir: Path | str | None = None,
             tracking_uri: str | None = None) -> dict[str, str]:
    """Log each run of ``runs`` (:func:`log_training`'s keyword arguments, ``run_name``
    included, plus ``model_name``) and register its model as that name's champion; returns
    run name → run id.

    A run's SHAP values are computed here from its ``shap_data``: the main job hands the
    runs to a worker process (:class:`territoria.workers.SideProcess`), which imports MLflow,
    explains the sample and writes the store while the priorities are computed.
    """
    ids = {}
    for run in runs:
        run = dict(run)
        name = run.pop("model_name")
        run_id = log_training(out_dir=out_dir, tracking_uri=tracking_uri, **run)
        register_champion(run_id, name, out_dir=out_dir, tracking_uri=tracking_uri)
        ids[run["run_name"]] = run_id
    return ids


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True, default=str) + "\n",
        encoding="utf-8",
    )


# --------------------------------------------------------------------------- registry


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise DataError(
            "model registry", f"invalid model name {name!r} (letters, digits, _ . - only)"
        )
    return name


def register_champion(
    run_id: str,
    name: str,
    *,
    out_dir: Path | str | None = None,
    tracking_uri: str | None = None,
    alias: str = CHAMPION_ALIAS,
    description: str | None = None,
):
    """Register the model of ``run_id`` under ``name`` and give the new version ``alias``.

    Returns the MLflow ``ModelVersion`` (``.version``, ``.run_id``, ``.source``). The model
    file's SHA-256 logged with the run is copied to the version's tags; loading checks it.
    """
    _check_name(name)
    store = tracking_store(out_dir, tracking_uri)
    client = store.client()
    from mlflow.exceptions import MlflowException

    run = client.get_run(run_id)
    sha = run.data.tags.get(TAG_MODEL_SHA)
    if sha is None:
        raise DataError("model registry", f"run {run_id} has no logged model to register")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=description)
    source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}"
    mv = client.create_model_version(
        name, source=source, run_id=run_id, tags={TAG_MODEL_SHA: sha}, description=description
    )
    for _ in range(100):  # file and SQL stores are READY at once; remote ones may take a moment
        if client.get_model_version(name, mv.version).status == "READY":
            break
        time.sleep(0.1)
    client.set_registered_model_alias(name, alias, mv.version)
    return client.get_model_version(name, mv.version)


@dataclass
class LoadedModel:
    """A registered (or explicitly located) LightGBM model, ready to predict."""

    booster: Any
    feature_names: list[str]
    model_uri: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None

    def predict(self, X, **kwargs) -> np.ndarray:
        """Predictions for X (a DataFrame is reordered to the model's features; a missing
        feature raises a DataError naming it)."""
        if isinstance(X, pd.DataFrame):
            missing = [c for c in self.feature_names if c not in X.columns]
            if missing:
                raise DataError(self.model_uri, "feature missing from the input", column=missing[0])
            X = X[self.feature_names]
        return self.booster.predict(X, **kwargs)


def _load_lightgbm_dir(path: Path, model_uri: str, expected_sha: str | None = None) -> LoadedModel:
    """Load an MLflow lightgbm-flavour folder as a Booster, refusing anything pickled."""
    import lightgbm as lgb
    import yaml

    mlmodel = path / "MLmodel"
    if not mlmodel.exists():
        raise DataError(path, "not an MLflow model folder (no MLmodel file)")
    conf = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
    flavor = (conf.get("flavors") or {}).get("lightgbm")
    if not flavor:
        raise DataError(mlmodel, "not a LightGBM model (no lightgbm flavour)")
    data = str(flavor.get("data", ""))
    if flavor.get(
        "model_class", "lightgbm.basic.Booster"
    ) != "lightgbm.basic.Booster" or not data.endswith((".lgb", ".txt")):
        raise DataError(
            mlmodel, f"refusing to load '{data}': only LightGBM text models are loaded (no pickle)"
        )
    model_file = (path / data).resolve()
    if path.resolve() not in model_file.parents:
        raise DataError(mlmodel, f"model file '{data}' lies outside the model folder")
    if expected_sha is not None and _sha256(model_file) != expected_sha:
        raise DataError(model_file, "SHA-256 differs from the one recorded at registration")
    booster = lgb.Booster(model_file=str(model_file))
    return LoadedModel(
        booster=booster, feature_names=list(booster.feature_name()), model_uri=model_uri
    )


def load_champion(
    name: str,
    tracking_uri: str | None = None,
    *,
    out_dir: Path | str | None = None,
    alias: str = CHAMPION_ALIAS,
) -> LoadedModel:
    """Load ``models:/<name>@<alias>`` from the project's registry (``tracking_uri``, or the
    embedded store of ``out_dir``); the result has ``.predict(X)``."""
    _check_name(name)
    store = tracking_store(out_dir, tracking_uri)
    client = store.client()
    from mlflow.exceptions import MlflowException

    uri = f"models:/{name}@{alias}"
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise DataError(
            store.tracking_uri, f"no model {uri} in this registry ({exc.message})"
        ) from None
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="territoria-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=mv.source, dst_path=tmp, tracking_uri=store.tracking_uri
        )
        model = _load_lightgbm_dir(
            Path(local), uri, expected_sha=(mv.tags or {}).get(TAG_MODEL_SHA)
        )
    model.name, model.version, model.run_id = name, str(mv.version), mv.run_id
    return model


def load_model_path(path: Path | str) -> LoadedModel:
    """Load a model from an explicit local path: an MLflow lightgbm model folder, or a
    LightGBM text model file (``.txt``/``.lgb``)."""
    import lightgbm as lgb

    path = Path(path)
    if path.is_dir():
        return _load_lightgbm_dir(path, path.as_posix())
    if path.is_file() and path.suffix in (".txt", ".lgb"):
        booster = lgb.Booster(model_file=str(path))
        return LoadedModel(
            booster=booster, feature_names=list(booster.feature_name()), model_uri=path.as_posix()
        )
    raise DataError(path, "not a model folder nor a LightGBM text model (.txt, .lgb)")
