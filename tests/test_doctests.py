"""The runnable examples in the docstrings stay true."""

import doctest
import importlib

import pytest

MODULES = [
    "territoria.errors",
    "territoria.readers",
    "territoria.registry",
    "territoria.features.harmonise",
    "territoria.features.access",
    "territoria.features.spatial",
    "territoria.features.sources.cog",
    "territoria.features.sources.filosofi",
    "territoria.models.explain",
    "territoria.models.clusters",
    "territoria.features.iris",
    "territoria.features.grid_join",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
