"""Bad-input corpus: every CSV-like adapter × every kind of malformed file.

Each variant is derived from a slice of the real bundled file (title lines, header and the
first rows). A variant must either raise a DataError naming the file (and the column or line
where it applies) and the problem, or be read as the official format intends; never another
exception. Adapter-specific cases live in ``tests/sources/``; this file checks the same
contract uniformly.
"""

from __future__ import annotations

import csv
import functools
import io
import zipfile
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from territoria.errors import DataError
from territoria.features.sources.arcep import ArcepFtth, ArcepMobileSites
from territoria.features.sources.caf import CafIris
from territoria.features.sources.comparateur import Comparateur, ComparateurCommunes2024
from territoria.features.sources.filosofi import FilosofiCommune, FilosofiIris
from territoria.features.sources.france_services import FranceServices
from territoria.features.sources.ips import IpsColleges
from territoria.features.sources.irep import Irep
from territoria.features.sources.neet import Neet
from territoria.features.sources.qpv_stats import OnpvQpvDemography, OnpvQpvIncome
from territoria.paths import bundled_data_dir, resolve_data_file

N_ROWS = 300
THIN = "\u202f"


@dataclass(frozen=True)
class Case:
    """An adapter and the roles of some columns of its file (names, or positions without header)."""

    id: str
    cls: type
    vintage: int
    relative: str
    sep: str
    code: str  # zone (or facility) code column
    value: str  # a numeric column
    rate: str | None = None  # a percentage column, when the file has one
    required: str | None = None  # a required column (default: ``value``)
    title_lines: int = 0
    fields: tuple[str, ...] = ()  # the adapter's names of the fields of a file without header
    decimal_comma: bool = True  # does the format accept "12,5" in ``value``?
    commune_codes: bool = False  # codes are communes, harmonised later to the target COG
    member: str | None = None  # zip member holding the table
    # variant -> expected outcome, where it differs from the default of the variant
    overrides: dict = field(default_factory=dict)


# expected outcomes: a DataError matching a pattern, or a table read as the format intends
SAME = ("same",)  # identical to the slice's own output
NAN = ("nan",)  # identical except values that became missing
LOADS = ("loads",)  # a valid table (differences are checked by the variant itself)
DECIMAL = ("decimal",)  # one value read with its other decimal mark (at most 0.5 apart)


def ERR(pattern: str) -> tuple:
    return ("error", pattern)


CASES = [
    Case("filosofi_commune", FilosofiCommune, 2021, "insee/filosofi/cc_filosofi_2021_COM.csv", ";",
         "CODGEO", "NBMENFISC21", rate="TP6021", commune_codes=True),
    Case("filosofi_iris", FilosofiIris, 2021, "insee/filosofi/BASE_TD_FILO_IRIS_2021_DEC.csv", ";",
         "IRIS", "DEC_MED21", rate="DEC_TP6021"),
    Case("comparateur", Comparateur, 2022, "insee/comparateur/base_cc_comparateur_csv.zip", ";",
         "CODGEO", "P18_POP", decimal_comma=False, commune_codes=True, member="base_cc_comparateur.CSV"),
    Case("comparateur_2024", ComparateurCommunes2024, 2024, "insee/comparateur/communes_2024_extract.csv",
         ",", "insee_com", "population_2021", decimal_comma=False, commune_codes=True,
         # one row per (commune, postal code): identical duplicates are the format
         overrides={"duplicated_code": SAME}),
    Case("caf", CafIris, 2019, "social/data_CAF_2019_IRIS.csv", ";", "CODGEO", "A",
         decimal_comma=False),
    Case("neet", Neet, 2021, "social/neet_communes_2008_2013_2018.csv", ";", "codgeo",
         "part_non_inseres", rate="part_non_inseres", commune_codes=True),
    Case("ips_colleges", IpsColleges, 2022, "social/fr-en-ips_colleges_2022.csv", ";",
         "UAI", "IPS", required="Code INSEE de la commune",
         # a school without IPS is left out of its commune's mean, not a missing commune
         overrides={"secret_s": LOADS, "secret_nd": LOADS, "secret_empty": LOADS}),
    Case("ips_colleges_commune", IpsColleges, 2022, "social/fr-en-ips_colleges_2022.csv", ";",
         "Code INSEE de la commune", "IPS", commune_codes=True,
         overrides={"secret_s": LOADS, "secret_nd": LOADS, "secret_empty": LOADS}),
    Case("irep", Irep, 2021, "environment/irep_industrial_sites_2021.csv", ",", "establishment_id",
         "latitude", fields=("establishment_id", "name", "latitude", "longitude", "water_stations",
                             "air_stations"), decimal_comma=False,
         overrides={
             # no header: a missing or extra field is a line of the wrong length
             "missing_column": ERR(r"line 1: line 1 has 5 fields, the official format has 6"),
             "extra_column": ERR(r"line 1: 7 fields where the header has 6"),
             # coordinates are never secret
             "secret_s": ERR(r"line 1: column 'latitude': non-numeric value 's'"),
             "secret_nd": ERR(r"line 1: column 'latitude': non-numeric value 'nd'"),
             "secret_empty": ERR(r"line 1: column 'latitude': empty value"),
             "huge": ERR(r"line 1: column 'latitude': latitude 1e\+12 outside \[-90, 90\]"),
             "negative": ERR(r"line 1: column 'latitude': \(-5, .*\) is outside France"),
             "invalid_code": ERR(r"line 1: column 'establishment_id': invalid establishment id"),
         }),
    Case("arcep_ftth", ArcepFtth, 2017, "arcep/arcep_ftth_communes_T3-2017_T1-2018.csv", ",",
         "Code commune", "T4 2017", required="Champ", title_lines=4, commune_codes=True,
         overrides={"secret_s": NAN}),
    Case("arcep_mobile_sites", ArcepMobileSites, 2018,
         "arcep/2018_01_Sites_mobiles_2G_3G_4G_France_metropolitaine_L93.csv", ";", "Operateur", "X",
         decimal_comma=False,
         overrides={
             # several antennas of one site are merged: a repeated row is not an error
             "duplicated_code": SAME,
             "secret_s": ERR(r"line 2: column 'X': non-numeric value 's'"),
             "secret_nd": ERR(r"line 2: column 'X': non-numeric value 'nd'"),
             "secret_empty": ERR(r"line 2: column 'X': non-numeric value ''"),
             "huge": ERR(r"line 2: column 'X': .*outside the Lambert-93 extent"),
             "negative": ERR(r"line 2: column 'X': \(-5, .*\) is outside the Lambert-93 extent"),
             "invalid_code": ERR(r"line 2: column 'Operateur': not a French operator code"),
         }),
    Case("onpv_qpv_demography", OnpvQpvDemography, 2022, "designations/qpv_stats_onpv/DEMO_2022.csv",
         ";", "CODGEO", "POP_MUN", rate="TX_TOT_0A24"),
    Case("onpv_qpv_income", OnpvQpvIncome, 2019, "designations/qpv_stats_onpv/REVN_2019.csv", ";",
         "CODGEO", "DISP_Q2", rate="TP60"),
]


@dataclass
class Table:
    """A slice of an official file as cells: title lines, header and rows."""

    titles: list[str]
    header: list[str] | None
    rows: list[list[str]]
    bom: bool

    def col(self, case: Case, role: str) -> int:
        return (self.header or list(case.fields)).index(getattr(case, role))

    def text(self, sep: str) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=sep, lineterminator="\n")
        if self.header is not None:
            writer.writerow(self.header)
        writer.writerows(self.rows)
        return "".join(t + "\n" for t in self.titles) + buf.getvalue()


def _raw(case: Case) -> bytes:
    from territoria.readers import read_bytes, read_zip_member

    path = resolve_data_file(bundled_data_dir(), case.relative)
    return read_zip_member(path, case.member) if case.member else read_bytes(path)


_SLICES: dict[str, Table] = {}


def _slice(case: Case) -> Table:
    """The first rows of the real file, cached per file."""
    if case.relative not in _SLICES:
        data = _raw(case)
        text = data.decode("utf-8-sig")
        lines = text.splitlines()
        titles = lines[:case.title_lines]
        header = not case.fields
        parsed = list(csv.reader(lines[case.title_lines:case.title_lines + header + N_ROWS],
                                 delimiter=case.sep))
        _SLICES[case.relative] = Table(titles, parsed[0] if header else None, parsed[header:],
                                       data.startswith(b"\xef\xbb\xbf"))
    t = _SLICES[case.relative]
    return Table(list(t.titles), list(t.header) if t.header else None, [list(r) for r in t.rows], t.bom)


def _first_row(case: Case, table: Table, col: int, pattern: str = r"^-?\d") -> int:
    """Index of the first zone row whose cell in ``col`` matches ``pattern`` (a published number).

    The ONPV files open with an ``Ensemble`` row (all QPV), dropped by the adapter: skipped.
    """
    code = table.col(case, "code")
    cells = pd.Series([r[col] if r[code].lower() != "ensemble" else "" for r in table.rows])
    return int(np.flatnonzero(cells.str.match(pattern))[0])


def _drop_column(case, t: Table) -> Table:
    col = t.col(case, "required") if case.required else t.col(case, "value")
    if t.header is not None:
        del t.header[col]
    for r in t.rows:
        del r[col]
    return t


def _rename_column(case, t: Table):
    if t.header is None:
        return None
    col = t.col(case, "required") if case.required else t.col(case, "value")
    name = t.header[col]
    t.header[col] = name.lower() if name.lower() != name else name.upper()
    return t


def _extra_column(case, t: Table) -> Table:
    if t.header is not None:
        t.header.append("EXTRA_COLUMN")
    for r in t.rows:
        r.append("x")
    return t


def _mixed_encoding(case, t: Table):
    """UTF-8 with one line in Windows-1252 (two files concatenated)."""
    text = t.text(case.sep)
    lines = text.splitlines(keepends=True)
    accented = [i for i, ln in enumerate(lines) if not ln.isascii()]
    if len(accented) < 2:
        return None
    i = accented[-1]
    return b"".join(ln.encode("cp1252", "replace") if j == i else ln.encode("utf-8")
                    for j, ln in enumerate(lines))


def _decimal(case, t: Table) -> Table:
    col = t.col(case, "value")
    row = _first_row(case, t, col)
    cell = t.rows[row][col].replace(THIN, "").replace("\u00a0", "").replace(" ", "")
    t.rows[row][col] = (cell.replace(",", ".") if "," in cell
                        else cell.replace(".", ",") if "." in cell else cell + ",5")
    return t


def _thousands(case, t: Table):
    col = t.col(case, "value")
    try:
        row = _first_row(case, t, col, r"^\d{4,}$")
    except IndexError:
        return None
    cell = t.rows[row][col]
    t.rows[row][col] = cell[:-3] + THIN + cell[-3:]
    return t


def _set_cell(role: str, value: str):
    def edit(case, t: Table):
        if getattr(case, role) is None:
            return None
        col = t.col(case, role)
        t.rows[_first_row(case, t, col if role != "code" else t.col(case, "value"))][col] = value
        return t
    return edit


def _duplicate(case, t: Table) -> Table:
    t.rows.append(list(t.rows[_first_row(case, t, t.col(case, "code"), ".")]))
    return t


def _truncate(case, t: Table) -> str:
    text = t.text(case.sep).rstrip("\n")
    last = text.rfind("\n") + 1
    cut = last + (len(text) - last) // 2
    assert text[last:cut].count(case.sep) < text[last:].count(case.sep)
    return text[:cut]


def _stray_separator(case, t: Table) -> Table:
    """The first data row has one field too many (pandas would shift every column)."""
    t.rows[0].insert(1, "")
    return t


def _garbage_line(case, t: Table) -> Table:
    t.rows.insert(len(t.rows) // 2, ["<html><body>503 Service Unavailable</body></html>"])
    return t


def _older_cog(case, t: Table):
    # 01003 is among the anciensCodes of 01165 in the COG 2026: a file in an older geography
    # may still carry it
    return _set_cell("code", "01003")(case, t) if case.commune_codes else None


def _unknown_code(case, t: Table):
    return _set_cell("code", "01999")(case, t) if case.commune_codes else None


# variant -> (how to build it from the slice, default expected outcome)
VARIANTS = {
    "missing_column": (_drop_column, ERR(r"column '{required}': missing column")),
    "renamed_column": (_rename_column, ERR(r"column '{required}': missing column \(renamed\? found")),
    "extra_column": (_extra_column, SAME),
    "wrong_separator": (lambda c, t: t.text(";" if c.sep == "," else ","), ERR("wrong separator")),
    "windows_1252": (lambda c, t: t.text(c.sep).replace(THIN, "\u00a0").encode("cp1252"), SAME),
    "mixed_encodings": (_mixed_encoding, ERR(r"line \d+: mixed encodings")),
    "bom_toggled": (lambda c, t: ("" if t.bom else "\ufeff") + t.text(c.sep), SAME),
    "decimal_mark": (_decimal, None),  # depends on case.decimal_comma
    "thin_space_thousands": (_thousands, SAME),
    "secret_s": (_set_cell("value", "s"), NAN),
    "secret_nd": (_set_cell("value", "nd"), NAN),
    "secret_empty": (_set_cell("value", ""), NAN),
    "duplicated_code": (_duplicate, ERR("duplicated code")),
    "older_cog_code": (_older_cog, LOADS),
    "unknown_code": (_unknown_code, LOADS),
    "invalid_code": (_set_cell("code", "AB-12"), ERR(r"column '{code}': invalid .*'AB-12'")),
    "empty_file": (lambda c, t: "", ERR("empty file")),
    "header_only": (lambda c, t: None if c.fields else "".join(x + "\n" for x in t.titles)
                    + c.sep.join(t.header) + "\n", ERR("header only")),
    "truncated_mid_line": (_truncate, ERR(r"line \d+: \d+ fields where the header has \d+ "
                                          r"\(truncated file or cut line\)")),
    "stray_separator": (_stray_separator, ERR(r"line \d+: \d+ fields where the header has \d+ "
                                              r"\(stray separator or shifted row\)")),
    "garbage_line": (_garbage_line, ERR(r"line \d+: 1 fields where the header has")),
    "huge": (_set_cell("value", "1e12"), ERR(r"column '{value}': value 1000000000000.0 outside the plausible range")),
    "infinite": (_set_cell("value", "inf"), ERR(r"column '{value}': non-numeric value 'inf'")),
    "negative": (_set_cell("value", "-5"), ERR(r"column '{value}': value -5.0 outside the plausible range")),
    "rate_250": (_set_cell("rate", "250"), ERR(r"column '{rate}': value 250.0 outside the plausible range")),
    "rate_negative": (_set_cell("rate", "-3"), ERR(r"column '{rate}': value -3.0 outside the plausible range")),
}


def _expected(case: Case, name: str):
    if name in case.overrides:
        return case.overrides[name]
    if name == "decimal_mark":
        return DECIMAL if case.decimal_comma else ERR(r"column '{value}': non-numeric value")
    return VARIANTS[name][1]


def _params():
    out = []
    for case in CASES:
        for name, (build, _) in VARIANTS.items():
            if build(case, _slice(case)) is not None:
                out.append(pytest.param(case, name, id=f"{case.id}-{name}"))
    return out


def _write(root: Path, case: Case, content) -> Path:
    data = content.text(case.sep) if isinstance(content, Table) else content
    data = data.encode("utf-8") if isinstance(data, str) else data
    dest = root / case.relative
    dest.parent.mkdir(parents=True, exist_ok=True)
    if case.member:
        with zipfile.ZipFile(dest, "w") as zf:
            zf.writestr(case.member, data)
    else:
        dest.write_bytes(data)
    return root


_BASELINES: dict[str, pd.DataFrame] = {}


def _baseline(case: Case, tmp_path: Path) -> pd.DataFrame:
    if case.id not in _BASELINES:
        root = _write(tmp_path / "baseline", case, _slice(case))
        _BASELINES[case.id] = _load(case, root)
    return _BASELINES[case.id]


def _load(case: Case, root: Path) -> pd.DataFrame:
    return case.cls(root).load([case.vintage])


def _compare(case: Case, df: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """Rows of the baseline and the variant, side by side (tables) or as is (points)."""
    if case.cls.kind == "points":
        key = ["point_id"]
        a, b = base[key + ["geometry"]].assign(wkt=base.geometry.to_wkt()), df.assign(wkt=df.geometry.to_wkt())
        m = a[key + ["wkt"]].merge(b[key + ["wkt"]], on=key, how="outer", suffixes=("_base", "_new"), indicator=True)
        return m.assign(value_base=m.wkt_base, value_new=m.wkt_new)
    key = ["zone_code", "level", "period", "variable"]
    return base.merge(df, on=key, how="outer", suffixes=("_base", "_new"), indicator=True)


@pytest.mark.parametrize(("case", "name"), _params())
def test_bad_input(case, name, tmp_path):
    build, _ = VARIANTS[name]
    expected = _expected(case, name)
    root = _write(tmp_path / "variant", case, build(case, _slice(case)))
    fmt = {"required": case.required or case.value, "value": case.value, "rate": case.rate, "code": case.code}
    if expected[0] == "error":
        with pytest.raises(DataError) as info:
            _load(case, root)
        message = str(info.value)
        assert Path(case.relative).name in message  # the file is named
        assert len(message.splitlines()) == 1
        import re

        assert re.search(expected[1].format(**fmt), message), message
        return
    df = _load(case, root)  # validated against the adapter's schema by load()
    base = _baseline(case, tmp_path)
    m = _compare(case, df, base)
    changed = ~((m.value_base == m.value_new) | (m.value_base.isna() & m.value_new.isna()))
    if expected is SAME:
        assert (m["_merge"] == "both").all() and not changed.any(), m[changed].head()
    elif expected is NAN:
        assert (m["_merge"] == "both").all()
        assert changed.any() and m.loc[changed, "value_new"].isna().all(), m[changed].head()
    elif expected is DECIMAL:
        assert (m["_merge"] == "both").all() and changed.sum() <= 1
        assert ((m.value_new - m.value_base)[changed].abs() <= 0.5).all(), m[changed]
    elif name in ("older_cog_code", "unknown_code"):
        _check_harmonisation(case, df, name)
    else:
        assert len(df) and len(m)


@functools.cache
def _mapping() -> pd.DataFrame:
    from territoria.features.harmonise import code_mapping
    from territoria.features.sources.cog import Cog

    return code_mapping(Cog().read_vintage(2026))


def _check_harmonisation(case: Case, df: pd.DataFrame, name: str) -> None:
    """Adapters keep the file's codes; harmonisation maps former codes and reports unknown ones."""
    from territoria.features.harmonise import harmonise
    from territoria.registry import load_registry

    code = "01003" if name == "older_cog_code" else "01999"
    assert code in set(df.zone_code)  # emitted as published, with the file's COG year
    assert set(df.cog_year) == {case.cls().cog_year(case.vintage)}
    res = harmonise(df, _mapping(), load_registry(), target_cog=2026)
    assert code not in set(res.table.zone_code)
    if name == "older_cog_code":
        assert "01165" in set(res.table.zone_code) and res.unmapped.empty
    else:  # reported, never dropped silently
        assert set(res.unmapped.zone_code) == {"01999"}


# -- points: geometries of tiny synthetic files in the official formats -------------------------

FS = "anct/anct_france_services_2020-10.geojson"


def _france_services(geometries: list) -> str:
    feats = [{"type": "Feature", "geometry": g,
              "properties": {"MATRICULE": i + 1, "lib_france_services": f"desk {i}", "insee_com": "59172"}}
             for i, g in enumerate(geometries)]
    return json.dumps({"type": "FeatureCollection", "features": feats,
                       "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}}})


DENAIN = {"type": "Point", "coordinates": [3.3958, 50.3286]}


@pytest.mark.parametrize(("geometry", "pattern"), [
    (None, "feature 2: geometry is not a point with numeric coordinates"),
    ({"type": "Point", "coordinates": []}, "feature 2: geometry is not a point"),
    ({"type": "Polygon", "coordinates": [[[3, 50], [3.1, 50], [3, 50.1], [3, 50]]]}, "feature 2: geometry is not a point"),
    ({"type": "Point", "coordinates": [0.0, 0.0]}, r"feature 2: \(0, 0\) is outside France.*wrong CRS"),
    ({"type": "Point", "coordinates": [float("nan"), 50.0]}, r"feature 2: \(50, nan\) is outside France"),
    ({"type": "Point", "coordinates": [-73.98, 40.75]}, r"feature 2: \(40.75, -73.98\) is outside France"),
], ids=["null", "empty", "polygon", "null-island", "nan", "new-york"])
def test_france_services_bad_geometries(variant, geometry, pattern):
    root = variant(FS, _france_services([DENAIN, geometry]))
    with pytest.raises(DataError, match=pattern) as info:
        FranceServices(root).load()
    assert "anct_france_services_2020-10.geojson" in str(info.value)


def test_france_services_valid_tiny_file(variant):
    pts = FranceServices(variant(FS, _france_services([DENAIN]))).load()
    assert str(pts.crs) == "EPSG:4326" and (pts.geometry.x.iloc[0], pts.geometry.y.iloc[0]) == (3.3958, 50.3286)


@pytest.mark.parametrize(("line", "pattern"), [
    ("1234567,X,nan,3.39,{},{}", r"line 1: column 'latitude': non-numeric value 'nan'"),
    ("1234567,X,,3.39,{},{}", r"line 1: column 'latitude': empty value"),
    ("1234567,X,-21.1,55.5,{},{}", None),  # La Réunion is in France
    ("1234567,X,40.42,-3.7,{},{}", r"line 1: column 'latitude': \(40.42, -3.7\) is outside France"),
])
def test_irep_coordinates(variant, line, pattern):
    root = variant("environment/irep_industrial_sites_2021.csv", line + "\n")
    if pattern is None:
        assert Irep(root).load().geometry.y.iloc[0] == -21.1
        return
    with pytest.raises(DataError, match=pattern):
        Irep(root).load()


@pytest.mark.parametrize(("row", "pattern"), [
    ("20801;652469;6862035;1;1;1", None),  # Paris, Lambert-93
    ("20801;652469;;1;1;1", r"line 2: column 'Y': non-numeric value ''"),
    ("20801;nan;6862035;1;1;1", r"line 2: column 'X': non-numeric value 'nan'"),
    ("20801;1e9;6862035;1;1;1", r"line 2: column 'X': .*outside the Lambert-93 extent"),
])
def test_mobile_sites_coordinates(variant, row, pattern):
    root = variant("arcep/2018_01_Sites_mobiles_2G_3G_4G_France_metropolitaine_L93.csv",
                   "Operateur;X;Y;2G;3G;4G\n" + row + "\n")
    if pattern is None:
        pt = ArcepMobileSites(root).load().geometry.iloc[0]
        assert pt.x == pytest.approx(2.35, abs=0.01) and pt.y == pytest.approx(48.86, abs=0.01)
        return
    with pytest.raises(DataError, match=pattern):
        ArcepMobileSites(root).load()


# -- the command line ------------------------------------------------------------------------


def test_data_check_on_a_folder_with_one_broken_file(copy_bundled, raw_text, monkeypatch):
    """``territoria data check --data DIR``: the broken file is reported, exit code 2."""
    from typer.testing import CliRunner

    import territoria.features.sources as sources
    from territoria.cli import app

    # two adapters keep the check small; the full bundle is checked by tests/test_cli.py
    monkeypatch.setattr(sources, "all_sources", lambda: {"ips_colleges": IpsColleges, "neet": Neet})
    root = copy_bundled("social/fr-en-ips_colleges_2022.csv")
    text = raw_text("social/neet_communes_2008_2013_2018.csv")
    (root / "social" / "neet_communes_2008_2013_2018.csv").write_text(text[: len(text) // 2], encoding="utf-8")
    res = CliRunner().invoke(app, ["data", "check", "--data", str(root)], env={"COLUMNS": "400"})
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == ["1 file(s) with problems"]
    neet = next(ln for ln in res.stdout.splitlines() if "neet" in ln)
    assert "fields where the header has 4 (truncated file or cut line)" in neet
    assert "ok" in next(ln for ln in res.stdout.splitlines() if "ips_colleges" in ln)
