"""Shared fixtures: the bundled real data, and data folders holding one malformed file."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from territoria.paths import bundled_data_dir, resolve_data_file


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data bundled with the project."""
    return bundled_data_dir()


def _raw_text(relative: str, encoding: str = "utf-8-sig") -> str:
    """Decoded text of a bundled file (gunzipped), to derive malformed variants from."""
    path = resolve_data_file(bundled_data_dir(), relative)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode(encoding)


def _write_variant(root: Path, relative: str, content: str | bytes) -> Path:
    """Write ``content`` at ``root/relative`` (plain, not gzipped) and return ``root``.

    An adapter built with ``data_dir=root`` then reads the variant instead of the bundle.
    """
    dest = Path(root) / relative
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        dest.write_text(content, encoding="utf-8")
    else:
        dest.write_bytes(content)
    return Path(root)


def _copy_bundled(root: Path, relative: str) -> Path:
    """Copy one bundled file (as stored) under ``root``; returns ``root``."""
    src = resolve_data_file(bundled_data_dir(), relative)
    dest = Path(root) / src.relative_to(bundled_data_dir())
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return Path(root)


@pytest.fixture
def raw_text():
    """``raw_text(relative)``: decoded text of a bundled file."""
    return _raw_text


@pytest.fixture
def variant(tmp_path):
    """``variant(relative, content)``: a data folder where ``relative`` holds ``content``."""
    return lambda relative, content: _write_variant(tmp_path, relative, content)


@pytest.fixture
def copy_bundled(tmp_path):
    """``copy_bundled(relative)``: a data folder holding a copy of one bundled file."""
    return lambda relative: _copy_bundled(tmp_path, relative)


@pytest.fixture(scope="session")
def feature_build(tmp_path_factory):
    """The feature stage run once on all communes of the bundled data (about a minute).

    Shared by every test that needs the real panel or feature matrix: its outputs are in
    ``feature_build.out_dir``; ``feature_build.features_at(t)`` rebuilds features at another
    origin without reloading the sources.
    """
    from territoria.pipelines.build_features import run_build_features

    return run_build_features(out_dir=tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="session")
def fast_models_conf(tmp_path_factory):
    """``conf/models.yml`` with small LightGBM models and 3 folds: the pipeline's mechanics at a
    fraction of the cost (accuracy is measured by benchmarks/backtest.py, not by tests)."""
    import yaml

    from territoria.paths import conf_dir

    doc = yaml.safe_load((conf_dir() / "models.yml").read_text(encoding="utf-8"))
    doc["model"].update(n_estimators=40, learning_rate=0.15, num_leaves=15)
    doc["cv"]["n_splits"] = 3
    doc["intervals"]["normalised"] = False
    path = tmp_path_factory.mktemp("conf") / "models_fast.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def main_run(feature_build, fast_models_conf, tmp_path_factory):
    """The main job end to end on all communes (features reused, small models): every stage
    and output of ``territoria run``."""
    import shutil

    from territoria.pipelines.main import run_main

    out = tmp_path_factory.mktemp("run")
    for name in ("panel.parquet", "features.parquet", "features_meta.csv", "data_report.json"):
        shutil.copy(feature_build.out_dir / name, out / name)
    return run_main(out, features=feature_build, models_conf=fast_models_conf)
