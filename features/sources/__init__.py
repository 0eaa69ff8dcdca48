"""One adapter per official dataset; :func:`all_sources` lists them all.

Adapters are discovered from the modules of this package: adding a source means adding one
module with one :class:`~territoria.features.sources.base.Source` subclass and its registry
entries in ``conf/indicators/``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from territoria.features.sources.base import Source


def all_sources() -> dict[str, type[Source]]:
    """Every adapter class, by its ``name``."""
    found: dict[str, type[Source]] = {}
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Source) and obj is not Source and not inspect.isabstract(obj):
                if obj.__module__ == module.__name__:
                    found[obj.name] = obj
    return dict(sorted(found.items()))
