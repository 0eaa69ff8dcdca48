"""INSEE BPE (Base permanente des équipements): public-service facilities per commune.

Two publication formats are read:

* ``bpe2009.xlsx``, ``bpe2013.xlsx``: crosstabs (one row per commune, one column per facility
  type, ``Total de NB_EQUIP`` first), as exported from INSEE's "ensemble" file. Title rows may
  precede the header: it is the first row whose first cell names the commune code column
  (``INSEECOM``, ``depcom``, ``CODGEO``...). Empty cells mean no facility (zero). Labels differ
  by accents between vintages (``Ecole``/``École``) and long ones are cut at 64 characters;
  they are matched after folding accents and case. Post agencies, relay points, stations and
  public-service houses only exist in the nomenclature from 2013 on;
* ``bpe18_enseignement.csv`` (2018): education facilities only, one row per IRIS (``59172_0101``,
  or the bare commune code for communes not split into IRIS), facility type (``TYPEQU``) and
  characteristics, with ``NB_EQUIP`` facilities; ``EP`` flags priority education (REP/REP+:
  ``1``, ``0``, ``X`` not applicable). Aggregated to communes and, for communes split into
  IRIS, to IRIS (level ``iris``, 9-character codes).

Paris, Lyon and Marseille appear as municipal arrondissements (``75101``...): they are emitted
at level ``arm`` (harmonisation sums them into their commune). Communes absent from a file have
no facility of any listed type: the BPE is exhaustive, so a missing count means zero.

Counts are located facilities, not access: distances to the nearest facility (feature stage)
measure access better, in particular for rare facilities (maternity, emergency, station).
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source, tidy
from territoria.readers import (
    check_columns, check_unique, commune_codes, cell_text, parse_number, read_csv, read_first_sheet,
)

#: Municipal arrondissements of Paris, Lyon and Marseille.
PLM_ARRONDISSEMENT = r"^(?:751(?:0[1-9]|1\d|20)|6938[1-9]|132(?:0[1-9]|1[0-6]))$"

_CODE_LABELS = ("inseecom", "depcom", "codgeo", "code commune", "com", "insee_com")

# registry variable -> (first vintage in the nomenclature, facility-type labels summed)
_CROSSTAB: dict[str, tuple[int, tuple[str, ...]]] = {
    "n_post_office": (2009, ("Bureau de poste",)),
    "n_postal_agency": (2013, ("Agence postale communale", "Relais poste commerçant")),
    "n_public_service_house": (2013, ("Relais (RSP) et Maison (MSP) de Service public",)),
    "n_gendarmerie": (2009, ("Gendarmerie",)),
    "n_police": (2009, ("Police",)),
    "n_gp": (2009, ("Médecin omnipraticien",)),
    "n_pharmacy": (2009, ("Pharmacie",)),
    "n_maternity": (2009, ("Maternité",)),
    "n_emergency": (2009, ("Urgences",)),
    "n_school_primary": (2009, (
        "École maternelle",
        "Classe maternelle de regroupement pédagogique intercommunal (RPI",
        "École élémentaire",
        "Classe élémentaire de regroupement pédagogique intercommunal (RP",
    )),
    "n_college": (2009, ("Collège",)),
    "n_lycee": (2009, (
        "Lycée d'enseignement général et/ou technologique",
        "Lycée d'enseignement professionnel",
        "Lycée technique et/ou professionnel agricole",
    )),
    "n_station": (2013, (
        "Gare avec train à grande vitesse (TAGV)",
        "Gare sous convention avec les conseils régionaux ou les STIF",
        "Gare sous convention avec l'Etat",
    )),
}

# BPE 2018 education types (TYPEQU) -> registry variable, comparable with the crosstabs
_TYPEQU = {
    "C101": "n_school_primary", "C102": "n_school_primary",  # maternelle (+ RPI dispersé)
    "C104": "n_school_primary", "C105": "n_school_primary",  # élémentaire (+ RPI dispersé)
    "C201": "n_college",
    "C301": "n_lycee", "C302": "n_lycee", "C303": "n_lycee",  # LGT, LP, lycée agricole
}
#: Types carrying the priority-education flag (0/1): schools, collèges, LGT and LP.
_EP_TYPES = ("C101", "C102", "C104", "C105", "C201", "C301", "C302")
_REQUIRED_2018 = ["DEPCOM", "DCIRIS", "AN", "TYPEQU", "EP", "NB_EQUIP"]


def fold(label: object) -> str:
    """Label folded for matching: no accents, lower case, single spaces.

    Examples
    --------
    >>> fold("  École   élémentaire ")
    'ecole elementaire'
    """
    text = unicodedata.normalize("NFKD", str(label))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(text.lower().split())


def zone_levels(codes: pd.Series) -> pd.Series:
    """``arm`` for municipal arrondissements of Paris, Lyon and Marseille, ``commune`` otherwise."""
    return pd.Series(
        np.where(codes.str.match(PLM_ARRONDISSEMENT), "arm", "commune"), index=codes.index
    )


class Bpe(Source):
    """BPE facility counts per commune: 2009 and 2013 crosstabs, 2018 education extract.

    Examples
    --------
    >>> df = Bpe().load([2013])
    >>> row = df[(df.zone_code == "59172") & (df.variable == "n_gp")]
    >>> float(row.value.iloc[0])  # Denain, 2013: 25 general practitioners
    25.0
    """

    name = "bpe"
    producer = "INSEE"
    dataset = "Base permanente des équipements (BPE)"
    level = "commune"
    files = {
        2009: "insee/bpe/bpe2009.xlsx",
        2013: "insee/bpe/bpe2013.xlsx",
        2018: "insee/bpe/bpe18_enseignement.csv",
    }
    cog_years = {2009: 2009, 2013: 2013, 2018: 2018}
    coverage = Coverage(
        "commune", 20000,
        "2009/2013 crosstabs list the ~34,700-35,200 communes with a facility; the 2018 "
        "education extract the ~22,300 communes with a school",
    )

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        if str(self.path(vintage)).endswith(".xlsx"):
            return self._read_crosstab(vintage)
        return self._read_education(vintage)

    # -- 2009, 2013: crosstab workbooks ------------------------------------------------------
    def _read_crosstab(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        header, rows, first_row = _crosstab_rows(path)
        folded = {fold(h): i for i, h in enumerate(header) if h is not None}
        wide = pd.DataFrame({"code": [cell_text(r[0]) for r in rows]}, dtype=object)
        code_col = str(header[0])
        wide["code"] = commune_codes(
            wide["code"].fillna(""), path=path, column=code_col, header_lines=first_row - 1
        )
        check_unique(wide["code"], path=path, column=code_col)
        cells: dict[str, pd.Series] = {}
        variables = {}
        width = len(header)
        # a rectangular sheet (calamine pads its rows) is transposed once, in C
        columns = list(zip(*rows)) if all(len(r) == width for r in rows) else None
        for var, (since, labels) in _CROSSTAB.items():
            if vintage < since:
                continue
            total = pd.Series(0.0, index=wide.index)
            for label in labels:
                idx = folded.get(fold(label))
                if idx is None:
                    check_columns(pd.DataFrame(columns=[str(h) for h in header]), [label], path)
                if label not in cells:
                    column = columns[idx] if columns is not None else [_cell(r, idx) for r in rows]
                    cells[label] = _column_counts(column, path, str(header[idx]), first_row - 1)
                total = total + cells[label]
            wide[var] = total
            variables[var] = var
        out = tidy(wide, zone_col="code", variables=variables, level="commune",
                   cog_year=self.cog_year(vintage), period=vintage)
        out["level"] = zone_levels(out["zone_code"])
        return out

    # -- 2018: education extract per IRIS ----------------------------------------------------
    def _read_education(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        raw = read_csv(path, sep=";", required=_REQUIRED_2018)
        raw["DEPCOM"] = commune_codes(raw["DEPCOM"], path=path, column="DEPCOM")
        iris = raw["DCIRIS"].str.strip().str.upper()
        ok = iris.str.fullmatch(r"(?:\d{5}|2[AB]\d{3})(?:_\d{4})?")
        ok &= iris.str[:5] == raw["DEPCOM"]
        _first_bad(ok, path, "DCIRIS", raw["DCIRIS"],
                   "invalid IRIS code (expected DEPCOM or DEPCOM_NNNN)")
        years = raw["AN"].str.strip()
        _first_bad(years == str(vintage), path, "AN", years, f"year is not {vintage}")
        typequ = raw["TYPEQU"].str.strip().str.upper()
        _first_bad(typequ.str.fullmatch(r"[A-G]\d{3}"), path, "TYPEQU", raw["TYPEQU"],
                   "invalid facility type")
        ep = raw["EP"].str.strip().str.upper()
        _first_bad(ep.isin(["0", "1", "X"]), path, "EP", raw["EP"],
                   "priority-education flag is not 0, 1 or X")
        n = strict_number(raw["NB_EQUIP"], path=path, column="NB_EQUIP", lo=0, hi=1000)
        _first_bad(n == n.round(), path, "NB_EQUIP", raw["NB_EQUIP"],
                   "not a whole number of facilities")
        keys = [c for c in raw.columns if c != "NB_EQUIP"]
        dup = raw.duplicated(keys)
        if dup.any():
            pos = int(np.flatnonzero(dup.to_numpy())[0])
            raise DataError(
                path, f"duplicated row for {iris.iloc[pos]} {typequ.iloc[pos]} (the format has one "
                "row per IRIS, facility type and characteristics)", line=pos + 2,
            )

        in_scope = typequ.isin(_EP_TYPES) & ep.isin(["0", "1"])
        priority = in_scope & (ep == "1")
        masks = {var: typequ.isin([t for t, v in _TYPEQU.items() if v == var])
                 for var in dict.fromkeys(_TYPEQU.values())}
        masks["n_school_ep_scope"] = in_scope
        masks["n_school_priority_education"] = priority
        masks["n_college_priority_education"] = priority & (typequ == "C201")
        counts = pd.DataFrame(
            {var: np.where(m.to_numpy(), n.to_numpy(), 0.0) for var, m in masks.items()}
        )
        counts["commune"] = raw["DEPCOM"].to_numpy()
        # 59172_0101 -> 591720101
        counts["iris"] = iris.str.replace("_", "", regex=False).to_numpy()
        variables = {v: v for v in [*masks, "share_school_priority_education"]}

        def aggregate(frame: pd.DataFrame, zone: str, level: str) -> pd.DataFrame:
            wide = frame.groupby(zone, sort=True)[list(masks)].sum().reset_index()
            scope = wide["n_school_ep_scope"].replace(0.0, np.nan)
            share = 100 * wide["n_school_priority_education"] / scope
            wide["share_school_priority_education"] = share
            return tidy(wide, zone_col=zone, variables=variables, level=level,
                        cog_year=self.cog_year(vintage), period=vintage)

        communes = aggregate(counts, "commune", "commune")
        communes["level"] = zone_levels(communes["zone_code"])
        # IRIS only where the commune is split (a bare commune code is not an IRIS)
        split = aggregate(counts[counts["iris"].str.len() == 9], "iris", "iris")
        return pd.concat([communes, split], ignore_index=True)


def _crosstab_rows(path) -> tuple[list, list[list], int]:
    """Header, data rows and sheet row (1-based) of the first data row of a crosstab."""
    sheet = read_first_sheet(path)
    header, header_row = None, 0
    for i, row in enumerate(sheet[:30]):
        first = row[0] if row else None
        if isinstance(first, str) and fold(first) in _CODE_LABELS:
            header, header_row = [h if h != "" else None for h in row], i + 1
            break
    if header is None:
        raise DataError(
            path, "no header row found: no row of the first 30 starts with a commune code "
            "column (INSEECOM, DEPCOM, CODGEO)"
        )
    rows = sheet[header_row:]
    # a pivot table may end with blank rows and a grand-total row
    while rows and (not any(v != "" for v in rows[-1]) or _is_total(rows[-1][0])):
        rows.pop()
    if not rows:
        raise DataError(path, "header only: the file has no data rows")
    return header, rows, header_row + 1


def _is_total(first: object) -> bool:
    """A pivot table's grand-total row (``Total général``, ``Total Résultat``)."""
    return isinstance(first, str) and fold(first).startswith("total")


def _cell(row: list, idx: int):
    return row[idx] if idx < len(row) and row[idx] != "" else None


def _column_counts(column, path, column_name: str, header_lines: int) -> pd.Series:
    """Facility counts of one crosstab column's cells (:func:`_counts`). Numbers as the
    workbook stores them (floats, empty cells) are checked at once; a column with text cells
    goes through the strict parser, which names the bad line."""
    values = [0.0 if v == "" or v is None else v for v in column]
    if all(type(v) is float for v in values):
        counts = np.array(values)
        if ((counts >= 0) & (counts <= 5000) & (counts == np.round(counts))).all():
            return pd.Series(counts)
    raw = pd.Series([None if v == "" else v for v in column], dtype=object)
    return _counts(raw, path, column_name, header_lines)


def _counts(raw: pd.Series, path, column: str, header_lines: int) -> pd.Series:
    """Facility counts of one crosstab column: empty cells are zero; whole numbers only."""
    text = raw.map(lambda v: "0" if v is None or (isinstance(v, str) and not v.strip()) else str(v))
    out = strict_number(text, path=path, column=column, decimal_comma=False,
                        lo=0, hi=5000, header_lines=header_lines)
    _first_bad(out == out.round(), path, column, text, "not a whole number of facilities",
               header_lines=header_lines)
    return out


def strict_number(
    values: pd.Series, *, path, column: str, header_lines: int = 1, **kw
) -> pd.Series:
    """:func:`~territoria.readers.parse_number` where no cell may be empty or secret.

    An empty cell raises a DataError naming its line (``parse_number`` with an empty
    ``secrets`` set is not usable: it fails inside pyarrow).
    """
    empty = values.astype(str).str.strip().eq("") | values.isna()
    _first_bad(~empty, path, column, values, "empty value", header_lines=header_lines)
    return parse_number(values, path=path, column=column, secrets=("",),
                        header_lines=header_lines, **kw)


def _first_bad(ok: pd.Series, path, column: str, values: pd.Series, problem: str,
               header_lines: int = 1) -> None:
    """Raise a DataError naming the line of the first row where ``ok`` is false."""
    ok = ok.fillna(False).to_numpy(bool)
    if not ok.all():
        pos = int(np.flatnonzero(~ok)[0])
        raise DataError(path, f"{problem}: {values.iloc[pos]!r}", column=column,
                        line=pos + 1 + header_lines)

