"""The indicator registry: typed validation and the metadata later stages rely on."""

import pytest

from territoria.errors import DataError
from territoria.registry import DOMAINS, load_registry


def test_registry_loads_and_every_indicator_is_complete():
    reg = load_registry()
    assert reg.indicators, "the registry is empty"
    for ind in reg.indicators.values():
        assert ind.domain in DOMAINS
        assert ind.label_fr and ind.label_en and ind.unit and ind.source
    assert reg.indicator("poverty_rate").direction == "higher_is_worse"
    assert reg.indicator("median_income").sign == -1


def test_designations_are_not_indicators():
    """Programmes (QPV, ZRR, ACV, PVD...) are reference tables, never model inputs."""
    from territoria.features.sources import all_sources

    reg = load_registry()
    sources = all_sources()
    reference = {name for name, cls in sources.items() if cls.kind == "reference"}
    assert {"cog", "commune_geometries"} <= reference
    for entry in [*reg.indicators.values(), *reg.variables.values()]:
        assert entry.source not in reference, entry.name
    for name in reg.indicators:
        assert not name.startswith(("is_", "in_", "zrr", "acv", "pvd", "afr", "qpv2024")), name


def _write(tmp_path, text):
    (tmp_path / "x.yml").write_text(text, encoding="utf-8")
    load_registry.cache_clear()
    return tmp_path


def test_unknown_domain_is_named(tmp_path):
    folder = _write(
        tmp_path,
        """
variables:
  - {name: a, source: s, kind: count, unit: u, label_en: a, label_fr: a}
indicators:
  - {name: a, label_en: a, label_fr: a, domain: happiness, direction: higher_is_worse,
     lever: true, unit: u, definition: {variable: a}, source: s}
""",
    )
    with pytest.raises(DataError, match=r"x.yml: indicators 'a': domain"):
        load_registry(folder)


def test_rate_without_weight_and_dangling_reference(tmp_path):
    folder = _write(
        tmp_path,
        "variables:\n  - {name: r, source: s, kind: rate, unit: '%', label_en: r, label_fr: r}\n",
    )
    with pytest.raises(DataError, match="needs a weight"):
        load_registry(folder)
    folder = _write(
        tmp_path,
        "variables:\n  - {name: r, source: s, kind: rate, unit: '%', weight: nope, label_en: r, label_fr: r}\n",
    )
    with pytest.raises(DataError, match="unknown variable 'nope'"):
        load_registry(folder)


def test_duplicate_and_bad_yaml(tmp_path):
    entry = "  - {name: a, source: s, kind: count, unit: u, label_en: a, label_fr: a}\n"
    with pytest.raises(DataError, match="defined twice"):
        load_registry(_write(tmp_path, "variables:\n" + entry + entry))
    with pytest.raises(DataError, match="invalid YAML"):
        load_registry(_write(tmp_path, "variables: [\n"))
