"""Official priority designations (ACV, PVD, QPV, ZRR, AFR, ZFU, ZRD, BER, BUD, AMI centres-bourgs).

These are the OUTCOME of past policy: a reference table to validate the engine against and to
display (which priority zones no programme covers yet), NEVER model inputs or index features.

Every adapter returns the same long table, validated by :data:`DESIGNATION_SCHEMA`: one row
per (commune, programme, period, source) with ``zone_code`` (commune code in the COG of the
source), ``programme``, ``period`` (year of the designation), ``status`` (the source's own
words, e.g. ``classée``, ``QPV codes: QN05901M, ...``) and ``source`` (adapter name).

Adapters and files (``designations/`` folder):

* :class:`ActionCoeurDeVille`: ``action_coeur_de_ville_2018.csv`` (ACV, 245 communes);
* :class:`PetitesVillesDeDemain`: ``petites_villes_de_demain_2020-01.csv`` (PVD, 1,606
  communes: the file's 1,607th row is a template row, ``999999 Trifouilly-les-Oies``, dropped
  and reported);
* :class:`Qpv2024`: ``anct_qpv2024_centroides_par_commune.geojson`` (824 communes with a QPV of
  the 2024 generation) and, for maps, ``anct_qpv2024_polygones.geojson`` (:meth:`Qpv2024.polygons`,
  incomplete: 1,343 of the 1,493 QPV);
* :class:`ZrrClassification`: ``diffusion-zonages-zrr-cog2021.xls`` (ZRR 2017 amended 2018,
  COG 2017 sheet; the COG 2021 sheet of this copy is truncated, detected and reported);
* :class:`AnctZonings2019`: ``anct_zonages_superposeur_2019.csv``, ANCT's zonings catalogue
  2019 by commune NAME without codes (matched to the COG, see
  :mod:`~territoria.features.sources.commune_names`), with the perimeters of
  ``anct_{zrr,afr,zfu,zrd,ber,bud,acv}_2019.topojson`` and
  ``anct_communes_avec_qpv_2019_dissolved.geojson`` for map layers
  (:meth:`AnctZonings2019.perimeters`).
"""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source, SourceReport, file_sha256
from territoria.features.sources.commune_names import DUPLICATE, NameIndex, match_names
from territoria.features.sources.geometries import (
    bounds_centres,
    check_france_points,
    check_wgs84,
    read_vector,
)
from territoria.paths import resolve_data_file
from territoria.readers import check_columns, check_unique, commune_codes, read_bytes, read_csv

log = logging.getLogger(__name__)

PROGRAMMES = (
    "ACV",
    "PVD",
    "QPV2024",
    "QPV2015",
    "ZRR",
    "AFR",
    "ZFU",
    "ZRD",
    "BER",
    "BUD",
    "AMI_CB",
)

DESIGNATION_SCHEMA = pa.DataFrameSchema(
    {
        "zone_code": pa.Column(
            str, pa.Check.str_matches(r"^(?:\d{5}|2[AB]\d{3})$"), nullable=False
        ),
        "programme": pa.Column(str, pa.Check.isin(list(PROGRAMMES))),
        "period": pa.Column(int, pa.Check.in_range(1990, 2100)),
        "status": pa.Column(str, pa.Check.str_length(min_value=1)),
        "source": pa.Column(str),
    },
    unique=["zone_code", "programme", "period", "source"],
    strict=True,
    coerce=True,
)

_QPV2024_CODE = re.compile(r"^QN(?:\d{3}|02[AB])\d{2}[A-Z]$")


def designations(codes, programme: str, period: int, status, source: str) -> pd.DataFrame:
    """A designation table in the shared format (``status`` a string or one per code)."""
    codes = pd.Series(list(codes), dtype=str)
    return pd.DataFrame(
        {
            "zone_code": codes,
            "programme": programme,
            "period": int(period),
            "status": list(status) if not isinstance(status, str) else status,
            "source": source,
        }
    )


class _Designation(Source):
    """Shared output schema of the designation adapters (abstract: no ``read_vintage``)."""

    kind = "reference"
    level = "commune"
    producer = "ANCT"

    def __init__(self, data_dir: Path | str | None = None) -> None:
        super().__init__(data_dir)
        #: what was dropped or could not be used when reading, in words
        self.problems: list[str] = []

    def schema(self) -> pa.DataFrameSchema:
        return DESIGNATION_SCHEMA

    def _problem(self, path: Path, text: str) -> None:
        self.problems.append(text)
        log.warning("%s: %s", path, text)

    def check(self) -> list[SourceReport]:
        """The base report; what was dropped or left unmatched is noted in ``coverage``."""
        reports = super().check()
        notes = "; ".join(self.problems)
        for rep in reports:
            if notes and not rep.problems:
                rep.coverage = f"{rep.coverage} ({notes})"
        return reports


class ActionCoeurDeVille(_Designation):
    """Action Cœur de Ville (2018): the 245 communes of the programme's 222 conventions.

    Examples
    --------
    >>> acv = ActionCoeurDeVille().load()
    >>> "59172" in set(acv.zone_code)  # Denain
    True
    """

    name = "acv"
    dataset = "Action Cœur de Ville - communes lauréates"
    files = {2018: "designations/action_coeur_de_ville_2018.csv"}
    cog_years = {2018: 2018}
    coverage = Coverage("commune", 240)

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        raw = read_csv(path, sep=",", required=["insee_com", "id_acv", "lib_com"])
        codes = commune_codes(raw["insee_com"], path=path, column="insee_com")
        check_unique(codes, path=path, column="insee_com")
        return designations(codes, "ACV", vintage, "lauréate", self.name)


class PetitesVillesDeDemain(_Designation):
    """Petites Villes de Demain: 1,606 communes (list of the programme's launch).

    The file carries one template row (``999999``, "Trifouilly-les-Oies", department 99)
    that is dropped and reported in :attr:`problems`; any other invalid code is an error.
    """

    name = "pvd"
    dataset = "Petites Villes de Demain - communes lauréates"
    files = {2020: "designations/petites_villes_de_demain_2020-01.csv"}
    cog_years = {2020: 2020}
    coverage = Coverage("commune", 1500)

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        self.problems = []
        raw = read_csv(path, sep=",", required=["insee_com", "lib_com", "insee_dep"])
        template = raw["insee_com"].str.strip().str.fullmatch(r"9{5,6}") | (
            raw["insee_dep"].str.strip() == "99"
        )
        if template.any():
            shown = ", ".join(
                f"{c} {n}" for c, n in zip(raw["insee_com"][template], raw["lib_com"][template])
            )
            self._problem(path, f"{int(template.sum())} template row(s) dropped ({shown})")
            raw = raw[~template].reset_index(drop=True)
        if raw.empty:
            raise DataError(path, "no commune rows (only template rows)")
        codes = commune_codes(raw["insee_com"], path=path, column="insee_com")
        check_unique(codes, path=path, column="insee_com")
        return designations(codes, "PVD", vintage, "lauréate", self.name)


class Qpv2024(_Designation):
    """Communes with a priority neighbourhood (QPV) of the 2024 generation: 824 communes.

    ``status`` lists the commune's QPV codes (``QPV codes: QN05901M, QN05902M``); one QPV
    may straddle several communes. :meth:`qpv_list` gives one row per (commune, QPV) and
    :meth:`polygons` the QPV pieces for map layers (incomplete: about 150 QPV have no polygon
    in this file).
    """

    name = "qpv_2024"
    dataset = "Quartiers prioritaires de la politique de la ville 2024 - communes"
    files = {2024: "designations/anct_qpv2024_centroides_par_commune.geojson"}
    cog_years = {2024: 2024}
    coverage = Coverage("commune", 800)
    POLYGONS = "designations/anct_qpv2024_polygones.geojson"

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        table = self._communes(path)
        status = ["QPV codes: " + ", ".join(codes) for codes in table["qpv_codes"]]
        return designations(table["zone_code"], "QPV2024", vintage, status, self.name)

    def _communes(self, path: Path) -> pd.DataFrame:
        gdf = read_vector(path)
        if gdf.empty:
            raise DataError(path, "empty file: no features")
        check_columns(gdf, ["insee_com", "code_qp"], path)
        codes = commune_codes(gdf["insee_com"], path=path, column="insee_com", header_lines=0)
        check_unique(codes, path=path, column="insee_com")
        qpv = [_qpv_codes(v, path, i) for i, v in enumerate(gdf["code_qp"])]
        names = gdf["lib_qp"] if "lib_qp" in gdf else pd.Series([""] * len(gdf))
        return pd.DataFrame(
            {"zone_code": codes, "qpv_codes": qpv, "qpv_names": names.fillna("").astype(str)}
        )

    def qpv_list(self, vintage: int = 2024) -> pd.DataFrame:
        """One row per (commune, QPV): ``zone_code, qpv_code, qpv_name`` (name when unambiguous)."""
        table = self._communes(self.path(vintage))
        rows = []
        for code, qpvs, names in table.itertuples(index=False):
            split = [n.strip() for n in names.split(",")]
            ok = len(split) == len(qpvs)
            rows.extend((code, q, split[k] if ok else None) for k, q in enumerate(qpvs))
        return pd.DataFrame(rows, columns=["zone_code", "qpv_code", "qpv_name"])

    def polygons(self):
        """QPV 2024 pieces (one multipolygon per commune): ``zone_code, qpv_codes, geometry``.

        For map layers only. The file is INCOMPLETE: the QPV listed by the communes file but
        absent here are counted in :attr:`problems`.
        """
        path = resolve_data_file(self.data_dir, self.POLYGONS)
        gdf = read_vector(path)
        if gdf.empty:
            raise DataError(path, "empty file: no features")
        check_columns(gdf, ["insee_com", "code_qp"], path)
        check_wgs84(gdf, path)
        check_france_points(bounds_centres(gdf.geometry.to_numpy()), path, "geometry")
        codes = commune_codes(gdf["insee_com"], path=path, column="insee_com", header_lines=0)
        qpv = [_qpv_codes(v, path, i) for i, v in enumerate(gdf["code_qp"])]
        out = gdf.assign(zone_code=codes, qpv_codes=[", ".join(q) for q in qpv])[
            ["zone_code", "qpv_codes", "geometry"]
        ]
        listed = {q for qs in self._communes(self.path(2024))["qpv_codes"] for q in qs}
        drawn = {q for qs in qpv for q in qs}
        if listed - drawn:
            self._problem(
                path,
                f"polygons incomplete: {len(listed - drawn)} of the {len(listed)} QPV 2024 have no polygon",
            )
        return out.set_crs("EPSG:4326", allow_override=True).reset_index(drop=True)

    def check(self) -> list[SourceReport]:
        """The communes file's report, plus one for the (incomplete) polygons file."""
        reports = super().check()
        path = resolve_data_file(self.data_dir, self.POLYGONS)
        rep = SourceReport(self.name, f"{self.dataset} - polygons (display)", "2024", str(path))
        try:
            rep.sha256 = file_sha256(path)
            self.problems = []
            rep.rows = rep.zones = len(self.polygons())
            rep.coverage = f"{rep.rows} communes" + (
                f" ({self.problems[0]})" if self.problems else ""
            )
        except DataError as exc:
            rep.problems.append(str(exc))
        return [*reports, rep]


def _qpv_codes(value, path: Path, i: int) -> list[str]:
    codes = [c.strip() for c in str(value).split(",") if c.strip()]
    if not codes:
        raise DataError(path, "commune without QPV code", column="code_qp", line=i + 1)
    for c in codes:
        if not _QPV2024_CODE.match(c):
            raise DataError(path, f"invalid QPV code {c!r}", column="code_qp", line=i + 1)
    return codes


# --------------------------------------------------------------------------------------------
# ZRR


_ZRR_STATUS = {
    "C": "classée",
    "P": "partiellement classée",
    "A": "classée (sortante en 2017, bénéficie des effets du classement depuis 2018)",
    "M": "classée (sortante en 2017, zone de montagne, bénéficie des effets du classement)",
    "D": "classée (baisse de population depuis 40 ans)",
    "NC": "non classée",
}
_ZRR_COLUMNS = ["CODGEO", "LIBGEO", "ZRR_SIMP", "ZONAGE_ZRR"]


class ZrrClassification(_Designation):
    """Rural revitalisation zones (ZRR): classification of 16 March 2017, amended 22 February 2018.

    Read from the ``Classement ZRR (COG 2017)`` sheet (35,416 communes; 5 title rows, a row of
    labels, then the ``CODGEO, LIBGEO, ZRR_SIMP, ZONAGE_ZRR`` header). Returns the classified
    communes (17,976: ``C``, ``P`` and the ``A``, ``M``, ``D`` variants of ``C``) with
    ``status`` ``classée``, ``partiellement classée`` or ``classée (...)``;
    ``include_unclassified=True`` also returns the ``non classée`` ones.

    The ``Classement ZRR (COG 2021)`` sheet of the bundled copy is truncated (2 communes):
    :meth:`read_vintage` reports it in :attr:`problems` and :meth:`read_sheet` refuses it.

    Examples
    --------
    >>> zrr = ZrrClassification().load()
    >>> zrr[zrr.zone_code == "14061"].status.iloc[0]  # Souleuvre-en-Bocage
    'classée'
    """

    name = "zrr"
    dataset = "Zones de revitalisation rurale - classement des communes"
    files = {2017: "designations/diffusion-zonages-zrr-cog2021.xls"}
    cog_years = {2017: 2017}
    coverage = Coverage("commune", 15000, "classified communes only")
    SHEETS = {2017: "Classement ZRR (COG 2017)", 2021: "Classement ZRR (COG 2021)"}
    MIN_ROWS = 30000

    def __init__(
        self, data_dir: Path | str | None = None, *, include_unclassified: bool = False
    ) -> None:
        super().__init__(data_dir)
        self.include_unclassified = include_unclassified

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        self.problems = []
        book = _open_xls(path)
        table = self.read_sheet(2017, book=book)
        other = self.SHEETS[2021]
        if other in book.sheet_names():
            n = max(0, book.sheet_by_name(other).nrows - 6)
            if n < self.MIN_ROWS:
                self._problem(
                    path,
                    f"sheet '{other}' is truncated ({n} communes; a complete sheet has about 35,000): "
                    f"the '{self.SHEETS[2017]}' sheet is used",
                )
        if not self.include_unclassified:
            table = table[table["code"] != "NC"]
        status = table["code"].map(_ZRR_STATUS)
        return designations(table["zone_code"], "ZRR", vintage, status, self.name)

    def read_sheet(self, cog_year: int, *, book=None) -> pd.DataFrame:
        """One sheet as ``zone_code, name, simple, code`` (``code`` the ZONAGE_ZRR letter)."""
        path = self.path(2017)
        book = book or _open_xls(path)
        sheet_name = self.SHEETS.get(cog_year)
        if sheet_name not in book.sheet_names():
            raise DataError(path, f"no sheet '{sheet_name}' (found: {book.sheet_names()})")
        sheet = book.sheet_by_name(sheet_name)
        rows = [sheet.row_values(r) for r in range(sheet.nrows)]
        table = parse_zrr_rows(rows, path, sheet_name)
        if len(table) < self.MIN_ROWS:
            raise DataError(
                path,
                f"sheet '{sheet_name}' is truncated: {len(table)} communes where a complete sheet "
                "has about 35,000",
            )
        return table


def parse_zrr_rows(rows: list[list], path: Path, sheet: str = "") -> pd.DataFrame:
    """Parse the cells of a ZRR sheet (title rows, header row with ``CODGEO``, data rows)."""
    where = f" of sheet '{sheet}'" if sheet else ""
    header_at = next(
        (i for i, r in enumerate(rows[:15]) if "CODGEO" in [str(c).strip() for c in r]), None
    )
    if header_at is None:
        if not rows:
            raise DataError(path, f"empty sheet{where}")
        found = [str(c) for r in rows[:15] for c in r if str(c).strip()][:8]
        raise DataError(
            path,
            f"no header row with CODGEO in the first 15 rows{where} (found: {found})",
            column="CODGEO",
        )
    header = [str(c).strip() for c in rows[header_at]]
    df = pd.DataFrame([r[: len(header)] for r in rows[header_at + 1 :]], columns=header)
    check_columns(df, _ZRR_COLUMNS, path)
    df = df[_ZRR_COLUMNS]
    df["CODGEO"] = df["CODGEO"].map(_cell_code)
    df = df[df["CODGEO"] != ""].reset_index(drop=True)
    if df.empty:
        raise DataError(path, f"header only: no data rows{where}")
    first = header_at + 2  # spreadsheet row number of the first data row
    codes = commune_codes(df["CODGEO"], path=path, column="CODGEO", header_lines=first - 1)
    check_unique(codes, path=path, column="CODGEO")
    letter = df["ZONAGE_ZRR"].astype(str).str.split(" - ").str[0].str.strip()
    bad = ~letter.isin(list(_ZRR_STATUS))
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            path,
            f"unknown ZRR classification {df['ZONAGE_ZRR'].iloc[pos]!r}",
            column="ZONAGE_ZRR",
            line=first + pos,
        )
    return pd.DataFrame(
        {
            "zone_code": codes,
            "name": df["LIBGEO"].astype(str),
            "simple": df["ZRR_SIMP"],
            "code": letter,
        }
    )


def _cell_code(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{int(value):05d}"
    return str(value).strip()


def _open_xls(path: Path):
    import xlrd

    data = read_bytes(path)
    if not data:
        raise DataError(path, "empty file")
    try:
        return xlrd.open_workbook(file_contents=data, on_demand=True)
    except xlrd.XLRDError as exc:
        raise DataError(path, f"not a readable .xls workbook ({exc})") from None
    except (ValueError, IndexError, KeyError, struct.error, AssertionError) as exc:
        # xlrd raises assorted errors on corrupt compound documents
        raise DataError(
            path, f"not a readable .xls workbook ({type(exc).__name__}: {exc})"
        ) from None


# --------------------------------------------------------------------------------------------
# ANCT zonings catalogue 2019 (names only)


#: superposeur layer -> (programme, sorted by department, leading articles dropped)
_LAYERS = {
    "zrr zonage": ("ZRR", True, True),
    "afr zonage": ("AFR", True, True),
    "zfu zonage": ("ZFU", True, True),
    "zrd zonage": ("ZRD", True, True),
    "acv zonage": ("ACV", False, False),
    "amicb zonage": ("AMI_CB", False, False),
}
_PERIMETERS = {
    "ZRR": "designations/anct_zrr_2019.topojson",
    "AFR": "designations/anct_afr_2019.topojson",
    "ZFU": "designations/anct_zfu_2019.topojson",
    "ZRD": "designations/anct_zrd_2019.topojson",
    "BER": "designations/anct_ber_2019.topojson",
    "BUD": "designations/anct_bud_2019.topojson",
    "ACV": "designations/anct_acv_2019.topojson",
    "QPV2015": "designations/anct_communes_avec_qpv_2019_dissolved.geojson",
}
_DEFAULT_STATUS = {"ACV": "lauréate", "AMI_CB": "lauréate"}
_LOST_COLUMNS = ["programme", "id", "name", "reason", "candidates"]


class AnctZonings2019(_Designation):
    """ANCT zonings catalogue 2019 ("superposeur"): communes by NAME, matched to COG codes.

    The catalogue lists the communes of each zoning by name only, without code nor
    department. Names are matched to the COG 2021 (then 2026) current, delegated and
    associated communes (:func:`~territoria.features.sources.commune_names.match_names`):
    ZRR, AFR, ZFU and ZRD lists are sorted by department and omit leading articles
    (``Mans`` for Le Mans), which the matching uses; the rows of ACV, ZFU and ZRD come with
    their own polygon in the perimeter files, which resolves homonyms; ACV pairs
    (``Castres - Mazamet``) are split. BER and BUD zones (employment areas, mining basin)
    are given as zones, not communes: their communes are the current communes whose town hall
    lies in the zone's perimeter (COG 2026 codes; 401 for BER, 160 for BUD where the
    catalogue counts 404 and 159). EPCI-level zonings of the catalogue
    (contrats de ruralité, cités éducatives, CTE, CPIER, CDT) are not communes and are left
    out.

    ``zone_code`` is thus in the COG 2021 (2026 for the few names only found there, and
    BER/BUD); ``period`` is 2019; ``status`` is the catalogue's own text (its ZRR label
    "Partiellement classée" is given to the fully classified communes: 13,652 of them are
    ``C - Classée`` in the official ZRR file; use :class:`ZrrClassification` for ZRR status).

    After :meth:`read_vintage`, :attr:`unmatched_` lists every row that could not be matched
    (``programme, id, name, reason, candidates``), :attr:`duplicates_` the rows naming a
    commune already matched by another row (ACV pairs are listed once per commune), and
    :attr:`summary_` counts rows, matched, duplicates and unmatched per programme and method.
    Nothing is dropped silently.

    Parameters
    ----------
    name_index : NameIndex, optional
        Prebuilt index of COG names (built from ``cog/communes_cog2021.json`` and
        ``communes_cog2026.json`` of the data folder otherwise).
    locations : DataFrame, optional
        Town halls of the communes, as returned by :func:`commune_locations` (read from
        ``geometries/communes_simplified.parquet`` otherwise; geometric checks are skipped if
        that file is absent).
    """

    name = "anct_zonages_2019"
    dataset = "Catalogue des zonages ANCT 2019 (superposeur), communes par nom"
    files = {2019: "designations/anct_zonages_superposeur_2019.csv"}
    cog_years = {2019: 2021}
    coverage = Coverage("commune", 20000)
    _REQUIRED = ["id", "lib", "perimetre", "nbcom", "info1", "layer"]

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        name_index: NameIndex | None = None,
        locations: pd.DataFrame | None = None,
    ) -> None:
        super().__init__(data_dir)
        self._index = name_index
        self._location_table = locations
        self._locations: dict | None = None
        self.unmatched_ = pd.DataFrame(columns=_LOST_COLUMNS)
        self.duplicates_ = pd.DataFrame(columns=_LOST_COLUMNS)
        self.summary_ = pd.DataFrame()

    # -- reference tables ---------------------------------------------------------------------

    def name_index(self) -> NameIndex:
        if self._index is None:
            from territoria.features.sources.cog import Cog

            cog = Cog(self.data_dir)
            self._index = NameIndex({y: cog.read_vintage(y) for y in (2021, 2026)})
        return self._index

    def location_table(self) -> pd.DataFrame:
        """Town halls of current, delegated and associated communes (COG 2026)."""
        if self._location_table is None:
            self._location_table = commune_locations(self.data_dir)
        return self._location_table

    def locations(self) -> dict:
        """``{code: point}``: town hall (or representative point), current communes first."""
        if self._locations is None:
            loc = self.location_table()
            self._locations = dict(zip(loc["zone_code"], loc["geometry"]))
        return self._locations

    # -- reading --------------------------------------------------------------------------------

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        self.problems = []
        raw = read_csv(path, sep=",", required=self._REQUIRED)
        raw = raw.rename(columns={"lib": "name"})
        raw["name"] = raw["name"].str.strip()
        known = raw["layer"].isin(list(_LAYERS) + ["ber zonage", "bud zonage"])
        if not known.any():
            raise DataError(
                path,
                f"no commune zoning layer (found: {sorted(raw['layer'].unique())[:8]})",
                column="layer",
            )
        frames, lost, twins, summary = [], [], [], []
        for layer, (programme, ordered, no_article) in _LAYERS.items():
            rows = raw[raw["layer"] == layer].reset_index(drop=True)
            if rows.empty:
                self._problem(path, f"no rows for {programme} (layer '{layer}')")
                continue
            rows = _split_pairs(rows) if programme == "ACV" else rows
            rows["status"] = (
                rows["info1"].str.strip().replace("", _DEFAULT_STATUS.get(programme, "désignée"))
            )
            rows = rows.join(self._row_geometries(programme, rows))
            locations = self.locations() if rows["geometry"].notna().any() else None
            matched, unmatched = match_names(
                rows,
                self.name_index(),
                ordered_by_departement=ordered,
                articles_dropped=no_article,
                locations=locations,
                same=["status"],
            )
            frames.append(
                designations(matched["zone_code"], programme, vintage, matched["status"], self.name)
            )
            dup = unmatched["reason"].str.startswith(DUPLICATE)
            lost.append(unmatched[~dup].assign(programme=programme)[_LOST_COLUMNS])
            twins.append(unmatched[dup].assign(programme=programme)[_LOST_COLUMNS])
            counts = matched["method"].value_counts()
            summary.append(
                {
                    "programme": programme,
                    "rows": len(rows),
                    "matched": len(matched),
                    "duplicates": int(dup.sum()),
                    "unmatched": int((~dup).sum()),
                    **{f"by {k}": int(v) for k, v in counts.items()},
                }
            )
        for programme in ("BER", "BUD"):
            zones = raw[raw["layer"] == f"{programme.lower()} zonage"]
            if zones.empty:
                continue
            inside = self._communes_in_perimeter(programme)
            frames.append(
                designations(inside["zone_code"], programme, vintage, inside["status"], self.name)
            )
            summary.append(
                {
                    "programme": programme,
                    "rows": len(zones),
                    "matched": len(inside),
                    "duplicates": 0,
                    "unmatched": 0,
                    "by perimeter (COG 2026)": len(inside),
                }
            )
        self.unmatched_ = pd.concat(lost, ignore_index=True) if lost else self.unmatched_.iloc[0:0]
        self.duplicates_ = (
            pd.concat(twins, ignore_index=True) if twins else self.duplicates_.iloc[0:0]
        )
        self.summary_ = pd.DataFrame(summary).fillna(0)
        counts = [c for c in self.summary_.columns if c != "programme"]
        self.summary_[counts] = self.summary_[counts].astype(int)
        if len(self.unmatched_):
            self._problem(
                path,
                f"{len(self.unmatched_)} names not matched to a commune code (see unmatched_): "
                + ", ".join(
                    f"{p} {n}" for p, n in self.unmatched_["programme"].value_counts().items()
                ),
            )
        return pd.concat(frames, ignore_index=True)

    def _row_geometries(self, programme: str, rows: pd.DataFrame) -> pd.DataFrame:
        """The row's own polygon in the perimeter file (when it has one feature per row) and
        the department where it lies (ANCT display departments: the perimeter files draw the
        overseas departments next to the mainland, like the display layers)."""
        out = pd.DataFrame(
            {"geometry": [None] * len(rows), "departement_hint": [None] * len(rows)},
            index=rows.index,
            dtype=object,
        )
        rel = _PERIMETERS.get(programme)
        if rel is None or not resolve_data_file(self.data_dir, rel).exists():
            return out
        try:
            per = self.perimeters(programme)
        except DataError as exc:
            self._problem(Path(rel), f"perimeters unusable for matching: {exc}")
            return out
        if len(per) < 2:  # dissolved perimeter: no per-row geometry
            return out
        per = per.assign(departement_hint=self._display_departement(per))
        by_id = per.drop_duplicates("id").set_index("id")
        known = rows["id"].isin(by_id.index)
        out.loc[known, "geometry"] = rows.loc[known, "id"].map(by_id.geometry).to_numpy()
        out.loc[known, "departement_hint"] = (
            rows.loc[known, "id"].map(by_id["departement_hint"]).to_numpy()
        )
        return out

    def _display_departement(self, gdf) -> list:
        """Department of each feature's representative point in the ANCT display layer."""
        import geopandas as gpd
        from territoria.features.sources.geometries import DisplayLayers

        try:
            deps = DisplayLayers(self.data_dir).departements()
        except DataError as exc:
            log.warning("no display departments (%s): homonyms resolved without them", exc)
            return [None] * len(gdf)
        pts = gpd.GeoDataFrame(geometry=gdf.geometry.representative_point(), crs="EPSG:4326")
        joined = gpd.sjoin(pts, deps[["code", "geometry"]], predicate="within", how="left")
        joined = joined[~joined.index.duplicated()]
        return [c if isinstance(c, str) else None for c in joined["code"].reindex(pts.index)]

    def _communes_in_perimeter(self, programme: str) -> pd.DataFrame:
        """Current communes (COG 2026) whose town hall lies in the zone's perimeter."""
        import geopandas as gpd

        per = self.perimeters(programme)
        loc = self.location_table()
        if loc.empty:
            self._problem(
                Path(_PERIMETERS[programme]),
                f"{programme}: no commune locations, communes not derived",
            )
            return pd.DataFrame({"zone_code": pd.Series(dtype=str), "status": pd.Series(dtype=str)})
        pts = gpd.GeoDataFrame(loc[loc["zone_type"] == "COM"], geometry="geometry", crs="EPSG:4326")
        joined = gpd.sjoin(pts, per[["name", "geometry"]], predicate="within", how="inner")
        joined = joined.drop_duplicates("zone_code")
        return pd.DataFrame(
            {
                "zone_code": joined["zone_code"].to_numpy(),
                "status": (joined["name"] + " (commune dans le périmètre)").to_numpy(),
            }
        )

    # -- map layers -----------------------------------------------------------------------------

    def perimeters(self, programme: str):
        """Perimeter of a zoning for map layers: ``programme, id, name, n_communes, geometry``.

        Programmes: ZRR, AFR, ZFU, ZRD, BER, BUD, ACV (2019 TopoJSON, read with GDAL's
        TopoJSON driver) and QPV2015 (union of the communes containing a QPV of the 2015
        generation). ZRR and AFR are single dissolved multipolygons; ZFU, ZRD and ACV have
        one polygon per commune; BER and BUD one per zone. Simplified shapes, and the overseas
        departments are drawn next to the mainland (as in :class:`DisplayLayers`): for maps
        only, never distances.
        """
        if programme not in _PERIMETERS:
            raise DataError(
                self.name, f"no perimeter for '{programme}'; available: {sorted(_PERIMETERS)}"
            )
        path = resolve_data_file(self.data_dir, _PERIMETERS[programme])
        gdf = read_vector(path)
        if gdf.empty:
            raise DataError(path, "empty file: no features")
        check_wgs84(gdf, path)
        if gdf.geometry.isna().any():
            raise DataError(path, f"{int(gdf.geometry.isna().sum())} features without geometry")
        check_france_points(bounds_centres(gdf.geometry.to_numpy()), path, "geometry")
        if programme == "QPV2015":
            check_columns(gdf, ["codgeo", "libgeo"], path)
            out = gdf.assign(id=gdf["codgeo"].astype(str), name=gdf["libgeo"], n_communes=np.nan)
        else:
            check_columns(gdf, ["id", "lib", "nbcom"], path)
            out = gdf.assign(
                id=gdf["id"].astype(str),
                name=gdf["lib"],
                n_communes=pd.to_numeric(gdf["nbcom"], errors="coerce"),
            )
        invalid = ~out.geometry.is_valid
        if invalid.any():
            import shapely
            from territoria.features.sources.geometries import polygonal_part

            out.loc[invalid, "geometry"] = [
                polygonal_part(g) for g in shapely.make_valid(out.geometry[invalid].to_numpy())
            ]
        out = out.assign(programme=programme)[["programme", "id", "name", "n_communes", "geometry"]]
        return out.set_crs("EPSG:4326", allow_override=True).reset_index(drop=True)

    def check(self) -> list[SourceReport]:
        """The catalogue's report, plus one per perimeter file."""
        reports = super().check()
        for programme, rel in _PERIMETERS.items():
            path = resolve_data_file(self.data_dir, rel)
            rep = SourceReport(
                self.name, f"{programme} perimeter 2019 (display)", "2019", str(path)
            )
            try:
                rep.sha256 = file_sha256(path)
                rep.rows = rep.zones = len(self.perimeters(programme))
                rep.coverage = f"{rep.rows} features"
            except DataError as exc:
                rep.problems.append(str(exc))
            reports.append(rep)
        return reports


def _split_pairs(rows: pd.DataFrame) -> pd.DataFrame:
    """``Castres - Mazamet`` → one row per commune (same id and status)."""
    parts = rows.assign(name=rows["name"].str.split(r"\s+-\s+", regex=True)).explode("name")
    return parts.reset_index(drop=True)


def commune_locations(data_dir: Path | str | None = None) -> pd.DataFrame:
    """Town hall (or representative point) of every commune code of the geometries file:
    ``zone_code, zone_type, geometry`` (points), current communes first, one row per code."""
    import shapely
    from territoria.features.sources.geometries import CommuneGeometries

    empty = pd.DataFrame({"zone_code": [], "zone_type": [], "geometry": []})
    try:
        geo = CommuneGeometries(data_dir, types=("COM", "ARM", "COMD", "COMA")).read_vintage(2025)
    except DataError as exc:
        log.warning("no commune locations (%s): geometric checks skipped", exc)
        return empty
    geo = pd.DataFrame(geo[geo["townhall_lon"].notna()])
    rank = geo["zone_type"].map({"COM": 0, "ARM": 1, "COMD": 2, "COMA": 2})
    geo = geo.assign(rank=rank).sort_values(["rank", "zone_code"]).drop_duplicates("zone_code")
    points = shapely.points(geo["townhall_lon"].to_numpy(), geo["townhall_lat"].to_numpy())
    return pd.DataFrame(
        {
            "zone_code": geo["zone_code"].to_numpy(),
            "zone_type": geo["zone_type"].to_numpy(),
            "geometry": points,
        }
    )
