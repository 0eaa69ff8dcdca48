"""Where the bundled data and the configuration live, for editable installs and wheels alike."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def bundled_data_dir() -> Path:
    """Folder of the real data the project carries (`data/` in the repository).

    ``TERRITORIA_DATA`` overrides it, so that a user can point every command at newer files.
    """
    env = os.environ.get("TERRITORIA_DATA")
    if env:
        return Path(env)
    return Path(str(resources.files("territoria.data")))


def user_cache_dir() -> Path:
    """The user's cache folder for territoria (not created): ``$XDG_CACHE_HOME/territoria``,
    ``~/.cache/territoria`` by default. What it holds can be rebuilt at any time."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "territoria"


def conf_dir() -> Path:
    """Folder of the committed configuration (`conf/` in the repository)."""
    return Path(str(resources.files("territoria.conf")))


def resolve_data_file(data_dir: Path, relative: str) -> Path:
    """Path of ``relative`` under ``data_dir``, accepting the bundle's gzip copy (``.gz``).

    The bundle stores text files gzip-compressed to stay small; a folder of raw official files
    (as downloaded from the producer) is read the same way.
    """
    plain = Path(data_dir) / relative
    if plain.exists():
        return plain
    gz = plain.with_name(plain.name + ".gz")
    if gz.exists():
        return gz
    return plain
