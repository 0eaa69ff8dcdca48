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
