"""Save and load a trained target without pickle: LightGBM text models plus JSON.

A run writes ``<out>/models/<measure>/`` so that later commands (``territoria scenario``,
``territoria explain``) re-score zones exactly as the run did, without retraining:

``regressor.txt`` (and ``classifier.txt`` for a hurdle model, ``spread.txt`` for normalised
intervals, ``fold<k>_regressor.txt``... for the calibration folds' models)
    LightGBM boosters in LightGBM's own text format;
``model.json``
    the target specification, design columns, best iterations, conformal quantiles, spread
    floor and the SHA-256 of each booster file (checked on load: a modified file is refused).

Only these formats are read: no Python object is ever unpickled from a run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
from sklearn.preprocessing import LabelEncoder

from territoria.digest import file_sha256
from territoria.errors import DataError
from territoria.io import write_atomic, write_json
from territoria.models.intervals import SplitConformal
from territoria.models.targets import TargetSpec
from territoria.models.trajectory import DeteriorationClassifier, HurdleRegressor, TrajectoryRegressor

FORMAT = 1


def _save_lgbm(estimator, path: Path) -> dict:
    text = estimator.booster_.model_to_string()
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return {"file": path.name, "sha256": file_sha256(path), "best_iteration": int(estimator.best_iteration_),
            "n_features": int(estimator.n_features_in_),
            "feature_names": [str(c) for c in getattr(estimator, "feature_names_in_", [])]}


def _save_model(model, folder: Path, prefix: str = "") -> dict:
    """A trajectory model's booster files (``<prefix>regressor.txt``, and
    ``<prefix>classifier.txt`` for a hurdle model) and their entries of ``model.json``."""
    doc: dict = {}
    if isinstance(model, HurdleRegressor):
        doc["regressor"] = _save_lgbm(model.regressor_, folder / f"{prefix}regressor.txt")
        if model.classifier_ is not None:
            doc["classifier"] = _save_lgbm(model.classifier_, folder / f"{prefix}classifier.txt")
            doc["classifier"]["classes"] = [int(c) for c in model.classifier_.classes_]
        doc["kind"] = "hurdle"
    else:
        doc["regressor"] = _save_lgbm(model, folder / f"{prefix}regressor.txt")
        doc["kind"] = "regressor"
    return doc


def save_trained(trained, folder: Path | str) -> Path:
    """Write a :class:`~territoria.models.backtest.TrainedTarget` to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc: dict = {"format": FORMAT, "spec": trained.spec.model_dump(), "columns": list(trained.columns),
                 **_save_model(trained.model, folder)}
    doc["folds"] = [_save_model(m, folder, f"fold{k + 1}_") for k, m in enumerate(trained.fold_models)]
    saved = {entry[part]["file"] for entry in doc["folds"] for part in ("regressor", "classifier") if part in entry}
    for stale in folder.glob("fold*_*.txt"):  # an earlier save's extra folds
        if stale.name not in saved:
            stale.unlink()
    if trained.spread_model is not None:
        doc["spread"] = _save_lgbm(trained.spread_model, folder / "spread.txt")
    conf = trained.conformal
    doc["conformal"] = {"levels": list(conf.levels), "normalised": bool(conf.normalised_),
                        "quantiles": {str(k): float(v) for k, v in conf.quantiles_.items()},
                        "n_calibration": int(conf.n_calibration_)}
    doc["spread_floor"] = float(trained.spread_floor)
    write_json(doc, folder / "model.json")
    return folder


def _load_lgbm(cls, folder: Path, entry: dict):
    path = folder / entry["file"]
    if not path.exists():
        raise DataError(path, "model file missing")
    if file_sha256(path) != entry["sha256"]:
        raise DataError(path, "model file does not match the SHA-256 recorded in model.json; refusing to load it")
    est = cls()
    est.booster_ = lgb.Booster(model_str=path.read_text(encoding="utf-8"))
    est.best_iteration_ = int(entry["best_iteration"])
    est.n_features_in_ = int(entry["n_features"])
    if entry.get("feature_names"):
        est.feature_names_in_ = np.asarray(entry["feature_names"], dtype=object)
    return est


def load_trained(folder: Path | str):
    """Read a target saved by :func:`save_trained` (a ``TrainedTarget`` without its OOF table)."""
    from territoria.models.backtest import TrainedTarget

    folder = Path(folder)
    path = folder / "model.json"
    if not path.exists():
        raise DataError(path, "no saved model here: run `territoria run` (or `train`) with this --out first")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON ({exc.msg})") from None
    if doc.get("format") != FORMAT:
        raise DataError(path, f"unsupported model format {doc.get('format')!r}")
    model = _load_model(folder, doc)
    fold_models = [_load_model(folder, entry) for entry in doc.get("folds", [])]
    spread = _load_lgbm(TrajectoryRegressor, folder, doc["spread"]) if "spread" in doc else None
    c = doc["conformal"]
    conformal = SplitConformal(c["levels"])
    conformal.normalised_ = c["normalised"]
    conformal.quantiles_ = {float(k): float(v) for k, v in c["quantiles"].items()}
    conformal.n_calibration_ = c["n_calibration"]
    return TrainedTarget(TargetSpec.model_validate(doc["spec"]), model, list(doc["columns"]), conformal,
                         spread, float(doc["spread_floor"]), meta=None, oof=None, fold_models=fold_models)


def _load_model(folder: Path, doc: dict):
    """The trajectory model described by ``doc`` (:func:`_save_model`'s entries)."""
    reg = _load_lgbm(TrajectoryRegressor, folder, doc["regressor"])
    if doc["kind"] != "hurdle":
        return reg
    model = HurdleRegressor()
    model.regressor_ = reg
    model.n_features_in_ = reg.n_features_in_
    if hasattr(reg, "feature_names_in_"):
        model.feature_names_in_ = reg.feature_names_in_
    model.classifier_ = None
    if "classifier" in doc:
        clf = _load_lgbm(DeteriorationClassifier, folder, doc["classifier"])
        clf.classes_ = np.asarray(doc["classifier"]["classes"])
        clf._le = LabelEncoder().fit(clf.classes_)
        model.classifier_ = clf
    return model
