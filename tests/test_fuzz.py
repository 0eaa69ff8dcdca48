"""Property-based fuzzing of the readers, two CSV adapters and the scenario parser.

The property is always the same: a generated input either raises a DataError or gives a
well-typed result (a text table with the required columns, a tidy table that satisfies the
adapter's schema, a valid Scenario). Any other exception is a bug.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from territoria.errors import DataError
from territoria.features.sources.base import TIDY_SCHEMA
from territoria.features.sources.caf import CAF_COLUMNS, CafIris
from territoria.features.sources.neet import Neet
from territoria.models.scenarios import Scenario, load_scenario
from territoria.readers import SECRET_MARKERS, parse_number, read_csv
from territoria.registry import load_registry

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEPARATORS = [";", ",", "\t", "|"]
ENCODINGS = ["utf-8", "utf-8-sig", "cp1252", "utf-16"]


@st.composite
def french_numbers(draw) -> str:
    """Numbers as official files write them: thin-space thousands, decimal commas, signs."""
    value = draw(st.one_of(st.integers(-10**7, 10**9), st.floats(-1e7, 1e9, allow_nan=False)))
    text = f"{value:,.{draw(st.integers(0, 3))}f}" if draw(st.booleans()) else repr(value)
    thousands = draw(st.sampled_from(["", " ", "\u00a0", "\u202f", ","]))
    decimal = draw(st.sampled_from([".", ","]))
    text = text.replace(",", "\x00").replace(".", decimal).replace("\x00", thousands)
    return draw(st.sampled_from(["{}", " {} ", "+{}", "{}e2"])).format(text)


CELLS = st.one_of(
    french_numbers(),
    st.sampled_from(sorted(SECRET_MARKERS) + ["S", "ND", "-", "#N/A", "1,2,3", "..", "inf", "nan", "1e999"]),
    st.text(max_size=6),
)


@FUZZ
@given(st.lists(CELLS, min_size=1, max_size=30), st.booleans())
def test_parse_number_gives_floats_or_a_data_error(cells, decimal_comma):
    values = pd.Series(cells, index=pd.RangeIndex(3, 3 + len(cells)))
    try:
        out = parse_number(values, path="f.csv", column="X", decimal_comma=decimal_comma, lo=-1e12, hi=1e12)
    except DataError as exc:
        assert exc.file == "f.csv" and exc.column == "X"
        return
    assert out.dtype == float and out.index.equals(values.index)
    assert np.isfinite(out.dropna()).all() and out.dropna().between(-1e12, 1e12).all()


def _mostly(valid: st.SearchStrategy, other: st.SearchStrategy = CELLS) -> st.SearchStrategy:
    """``valid`` nine times in ten, so that files of a dozen cells are not all rejected."""
    return st.integers(0, 9).flatmap(lambda k: valid if k else other)


@st.composite
def csv_files(draw, header: list[str], rows: st.SearchStrategy, sep: str = ";", unique_by=None) -> bytes:
    """A CSV, mostly in the official separator and UTF-8, sometimes in another separator or
    encoding, with garbage lines, or cut short (mid-line or mid-character); ``unique_by`` keeps
    the zone keys of the rows distinct (duplicates are tested in test_bad_inputs.py)."""
    sep = draw(_mostly(st.just(sep), st.sampled_from(SEPARATORS)))
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=sep, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(header)
    writer.writerows(draw(st.lists(rows, min_size=1, max_size=8, unique_by=unique_by)))
    lines = buf.getvalue().splitlines(keepends=True)
    for _ in range(draw(_mostly(st.just(0), st.integers(1, 2)))):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=30)) + "\n")
    encoding = draw(_mostly(st.just("utf-8"), st.sampled_from(ENCODINGS)))
    data = "".join(lines).encode(encoding, errors="replace")
    if draw(_mostly(st.just(False), st.just(True))):
        data = data[: draw(st.integers(0, len(data)))]
    return data


def _write(root: Path, relative: str, data: bytes) -> Path:
    dest = root / relative
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return root


@FUZZ
@given(csv_files(["CODGEO", "MED", "TP60"], st.lists(CELLS, min_size=3, max_size=3)))
def test_read_csv_gives_text_columns_or_a_data_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "x.csv", data) / "x.csv"
        try:
            df = read_csv(path, sep=";", required=["CODGEO", "MED"])
        except DataError as exc:
            assert exc.file == str(path)
            event("DataError")
            return
    event("table")
    assert {"CODGEO", "MED"} <= set(df.columns) and len(df) > 0
    assert all(pd.api.types.is_string_dtype(df[c]) for c in df.columns)


NEET_ROWS = st.tuples(
    _mostly(st.sampled_from(["01001", "59172", "2A004", "75056", "1001"]),
            st.sampled_from(["ABCDE", "", "590"])),
    st.sampled_from(["Denain", "Abergement-Clémenciat", ""]),
    _mostly(st.sampled_from(["2008", "2013", "2018"]), st.sampled_from(["2019", "x", ""])),
    _mostly(st.floats(0, 100).map(lambda v: f"{v:.1f}".replace(".", ","))),
)
CAF_HEADER = ["CODGEO", "NOTE", *CAF_COLUMNS]
CAF_ROWS = st.tuples(
    _mostly(st.sampled_from(["591720101", "010040101", "2A0040000"]), st.sampled_from(["59172", "ABC"])),
    st.sampled_from(["0", "5"]),
    _mostly(st.integers(1500, 2000).map(str)),  # A: all recipients
    *[_mostly(st.one_of(st.integers(0, 1000).map(str), st.just(""))) for _ in CAF_HEADER[3:]],
)


def _load_or_error(cls, vintage, data):
    relative = cls.files[vintage]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            df = cls(_write(Path(tmp), relative, data)).load([vintage])
        except DataError as exc:
            assert Path(relative).name in exc.file
            event("DataError")
            return None
    event("tidy table")
    return df


@FUZZ
@given(csv_files(["codgeo", "libgeo", "an", "part_non_inseres"], NEET_ROWS,
                 unique_by=lambda r: (r[0].zfill(5), r[2])))
def test_neet_adapter_on_generated_files(data):
    df = _load_or_error(Neet, 2021, data)
    if df is not None:
        TIDY_SCHEMA.validate(df)
        assert df.value.dropna().between(0, 100).all()
        assert set(df.period) <= {2008, 2013, 2018}
        assert not df.duplicated(["zone_code", "period", "variable"]).any()


@FUZZ
@given(csv_files(CAF_HEADER, CAF_ROWS, unique_by=lambda r: r[0]))
def test_caf_adapter_on_generated_files(data):
    df = _load_or_error(CafIris, 2019, data)
    if df is not None:
        TIDY_SCHEMA.validate(df)
        assert df.value.dropna().between(0, 1e5).all()
        assert df.zone_code.str.fullmatch(r"(?:\d{5}|2[AB]\d{3})\d{4}").all()


# -- scenarios -------------------------------------------------------------------------------

REGISTRY = load_registry()
IDENTITY = pd.DataFrame(
    {"departement": ["59", "62", "93"], "epci": ["200043123", "246200364", "200054781"]},
    index=pd.Index(["59172", "62048", "93066"], name="zone_code"),
)
LEVERS = sorted(n for n, i in REGISTRY.indicators.items() if i.lever)[:4]
CONTEXT = sorted(n for n, i in REGISTRY.indicators.items() if not i.lever)[:2]

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True),
                    st.text(max_size=8))
CHANGES = st.lists(
    st.dictionaries(
        st.sampled_from(["indicator", "set", "add", "multiply", "other"]),
        st.one_of(st.sampled_from(LEVERS + CONTEXT + ["nonexistent"]), st.floats(-5, 5), SCALARS),
        max_size=4,
    ),
    max_size=3,
)
ZONES = st.dictionaries(
    st.sampled_from(["codes", "departements", "epcis", "all", "bogus"]),
    st.one_of(st.lists(st.sampled_from([*IDENTITY.index, "59", "62", "200043123", "00000", 1]), max_size=3),
              SCALARS),
    max_size=3,
)
STRUCTURED = st.fixed_dictionaries(
    {"zones": ZONES, "changes": CHANGES},
    optional={"name": st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}", fullmatch=True), SCALARS),
              "description": SCALARS, "extra": SCALARS},
).map(lambda d: yaml.safe_dump(d, allow_unicode=True))
VALID = st.fixed_dictionaries({
    "name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}", fullmatch=True),
    "zones": st.one_of(st.fixed_dictionaries({"codes": st.lists(st.sampled_from(list(IDENTITY.index)), min_size=1)}),
                       st.fixed_dictionaries({"departements": st.lists(st.sampled_from(["59", "62"]), min_size=1)}),
                       st.just({"all": True})),
    "changes": st.lists(st.builds(lambda ind, op, v: {"indicator": ind, op: v}, st.sampled_from(LEVERS),
                                  st.sampled_from(["set", "add", "multiply"]), st.floats(-10, 10)),
                        min_size=1, max_size=3),
}).map(yaml.safe_dump)
ANY_YAML = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8).map(yaml.safe_dump)
# free text from YAML's punctuation; tags (!!) and dates are left to the examples below
RAW_TEXT = st.text(alphabet="abcz019:- \n[]{},&*'\"#|>%@`", max_size=60)


def _check_scenario(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scenario.yml"
        path.write_text(text, encoding="utf-8")
        try:
            sc = load_scenario(path, REGISTRY, IDENTITY)
        except DataError as exc:
            assert exc.file == str(path)
            event("DataError")
            return
    event("Scenario")
    assert isinstance(sc, Scenario)
    assert all(REGISTRY.indicator(c.indicator).lever for c in sc.changes)
    assert set(sc.zones.codes) <= set(IDENTITY.index)


@FUZZ
@given(st.one_of(VALID, STRUCTURED, ANY_YAML, RAW_TEXT))
@example("name: ok\nzones: {codes: ['59172']}\nchanges: [{indicator: ftth_coverage_rate, set: 100}]\n")
@example("zones: &z {codes: *z}\nchanges: []\n")  # a recursive alias
def test_load_scenario_gives_a_scenario_or_a_data_error(text):
    _check_scenario(text)


# PyYAML raises a bare ValueError for impossible dates and bad !!int/!!float tags
@pytest.mark.parametrize("text", ["name: x\nwhen: 2021-02-30\n", "name: !!int abc\n"])
def test_load_scenario_yaml_value_errors(text, tmp_path):
    path = tmp_path / "scenario.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match="invalid YAML"):
        load_scenario(path, REGISTRY, IDENTITY)
