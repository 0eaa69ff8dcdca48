"""The runnable examples in the docstrings stay true: every module of the package that has
some is collected (a new module's examples are tested without being listed here)."""

import doctest
import importlib
import inspect
import re
from pathlib import Path

import pytest

PACKAGES = ["territoria", "territoria.features", "territoria.features.sources", "territoria.models",
            "territoria.pipelines"]
_EXAMPLE = re.compile(r"^\s*>>> (?!.*doctest: \+SKIP)", re.MULTILINE)


def _modules_with_examples() -> list[str]:
    names = []
    for package in PACKAGES:
        folder = Path(inspect.getfile(importlib.import_module(package))).parent
        for path in sorted(folder.glob("*.py")):
            if path.stem != "__init__" and _EXAMPLE.search(path.read_text(encoding="utf-8")):
                names.append(f"{package}.{path.stem}")
    return names


MODULES = _modules_with_examples()


def test_examples_are_collected():
    # the search itself works: modules known to carry examples are found
    assert {"territoria.models.baselines", "territoria.features.spatial", "territoria.registry"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
