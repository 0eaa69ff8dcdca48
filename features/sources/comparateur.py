"""INSEE "comparateur de territoires": census counts per commune (and municipal arrondissement).

Two editions are read:

* ``base_cc_comparateur_csv.zip`` (January 2022, COG 2021): census RP 2013 and 2018
  (population, dwellings by category, jobs, actives and unemployed 15-64), domiciled births and
  deaths 2020, establishments 2018. One ``;`` CSV member, one row per commune and per municipal
  arrondissement of Paris, Lyon and Marseille. Census counts are weighted estimates and are
  therefore not integers: they are kept as floats. Its Filosofi 2019 columns are ignored (read
  by :mod:`~territoria.features.sources.filosofi`).
* ``communes_2024_extract.csv`` (June 2024, COG 2024): census RP 2015 and 2021, births and
  deaths 2022, area. ``,`` separated, one row per (commune, postal code): rows are deduplicated
  on ``insee_com`` after checking that the duplicates agree.

The count variables defined here (``population``, ``households``, ``dwellings``,
``vacant_dwellings``, ``actives_15_64``, ``unemployed_15_64``, ``area_km2``...) are the shared
census vocabulary of the registry: other adapters weight their rates with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source, tidy
from territoria.readers import (
    check_unique,
    commune_codes,
    decode_text,
    parse_number,
    read_csv,
    read_zip_member,
)

#: municipal arrondissements of Paris (75101-75120), Marseille (13201-13216), Lyon (69381-69389)
ARM_CODE = r"^(?:751(?:0[1-9]|1\d|20)|132(?:0[1-9]|1[0-6])|6938[1-9])$"

_COUNT_MAX = 3e6  # no commune counts more than 3 million persons, dwellings or jobs
_AREA_MAX = 20000.0  # km2; the largest commune (Maripasoula, Guyane) has 18,360 km2


def zone_levels(codes: pd.Series) -> pd.Series:
    """``"arm"`` for municipal arrondissement codes, ``"commune"`` otherwise.

    Examples
    --------
    >>> zone_levels(pd.Series(["75101", "75056", "69385", "13055"])).tolist()
    ['arm', 'commune', 'arm', 'commune']
    """
    return pd.Series(
        np.where(codes.str.match(ARM_CODE), "arm", "commune"), index=codes.index, dtype=object
    )


def tidy_levels(
    wide: pd.DataFrame,
    *,
    zone_col: str,
    level_col: str,
    variables: dict[str, str],
    cog_year: int,
    period: int,
) -> pd.DataFrame:
    """:func:`~territoria.features.sources.base.tidy` for a table mixing several levels."""
    frames = [
        tidy(part, zone_col=zone_col, variables=variables, level=str(level),
             cog_year=cog_year, period=period)
        for level, part in wide.groupby(level_col, sort=True)
    ]
    return pd.concat(frames, ignore_index=True)


# official column -> (registry variable, period, plausible range)
_CC_COLUMNS: dict[str, tuple[str, int, tuple[float, float]]] = {
    "P18_POP": ("population", 2018, (0, _COUNT_MAX)),
    "P13_POP": ("population", 2013, (0, _COUNT_MAX)),
    "NAISD20": ("births", 2020, (0, 1e5)),
    "DECESD20": ("deaths", 2020, (0, 1e5)),
    "P18_MEN": ("households", 2018, (0, _COUNT_MAX)),
    "P18_LOG": ("dwellings", 2018, (0, _COUNT_MAX)),
    "P18_RP": ("main_residences", 2018, (0, _COUNT_MAX)),
    "P18_RSECOCC": ("secondary_homes", 2018, (0, _COUNT_MAX)),
    "P18_LOGVAC": ("vacant_dwellings", 2018, (0, _COUNT_MAX)),
    "P18_RP_PROP": ("owner_occupied", 2018, (0, _COUNT_MAX)),
    "P18_EMPLT": ("jobs", 2018, (0, _COUNT_MAX)),
    "P13_EMPLT": ("jobs", 2013, (0, _COUNT_MAX)),
    "P18_POP1564": ("population_15_64", 2018, (0, _COUNT_MAX)),
    "P18_ACT1564": ("actives_15_64", 2018, (0, _COUNT_MAX)),
    "P18_CHOM1564": ("unemployed_15_64", 2018, (0, _COUNT_MAX)),
    "ETTOT18": ("establishments", 2018, (0, 1e6)),
}
#: the area (``SUPERF``) is repeated for each census period so that densities can be computed
_CC_CENSUS_PERIODS = (2013, 2018)


class Comparateur(Source):
    """Comparateur de territoires, January 2022 edition: census 2013 and 2018 (COG 2021).

    One vintage (the edition year) holding several periods: population and jobs in 2013 and
    2018, housing, households and labour force in 2018, births and deaths in 2020,
    establishments at the end of 2018, and the area in the geography of 2021 (repeated for
    2013 and 2018, so that densities can be computed).
    Municipal arrondissements get the level ``"arm"``; Paris, Lyon and Marseille also appear
    as whole communes. Mayotte's rows are empty for the census (secret → missing).

    Examples
    --------
    >>> df = Comparateur().load()
    >>> sel = df[(df.zone_code == "62048") & (df.period == 2018)].set_index("variable").value
    >>> round(float(100 * sel["unemployed_15_64"] / sel["actives_15_64"]), 1)  # Auchel
    25.6
    """

    name = "comparateur"
    producer = "INSEE"
    dataset = "Comparateur de territoires (recensement 2013-2018, établissements 2018)"
    level = "commune"
    files = {2022: "insee/comparateur/base_cc_comparateur_csv.zip"}
    cog_years = {2022: 2021}
    coverage = Coverage("commune", 34500, "34,965 communes and 45 municipal arrondissements")
    member = "base_cc_comparateur.CSV"

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        if not path.exists():
            raise DataError(path, "file not found (check --data or the bundled data folder)")
        text = decode_text(read_zip_member(path, self.member), path)
        where = f"{path}!{self.member}"
        raw = read_csv(Path(where), sep=";", required=["CODGEO", "SUPERF", *_CC_COLUMNS], text=text)
        raw["CODGEO"] = commune_codes(raw["CODGEO"], path=where, column="CODGEO")
        check_unique(raw["CODGEO"], path=where, column="CODGEO")
        raw["level"] = zone_levels(raw["CODGEO"])
        frames = []
        by_period: dict[int, dict[str, str]] = {}
        for col, (var, period, (lo, hi)) in _CC_COLUMNS.items():
            raw[col] = parse_number(raw[col], path=where, column=col, decimal_comma=False, lo=lo, hi=hi)
            by_period.setdefault(period, {})[col] = var
        raw["SUPERF"] = parse_number(raw["SUPERF"], path=where, column="SUPERF", decimal_comma=False,
                                     lo=0, hi=_AREA_MAX)
        for period in _CC_CENSUS_PERIODS:
            by_period[period]["SUPERF"] = "area_km2"
        for period, variables in sorted(by_period.items()):
            frames.append(
                tidy_levels(raw, zone_col="CODGEO", level_col="level", variables=variables,
                            cog_year=self.cog_year(vintage), period=period)
            )
        return pd.concat(frames, ignore_index=True)


# communes_2024_extract column -> (registry variable, period, plausible range)
_EXTRACT_COLUMNS: dict[str, tuple[str, int, tuple[float, float]]] = {
    "population_2021": ("population", 2021, (0, _COUNT_MAX)),
    "population_2015": ("population", 2015, (0, _COUNT_MAX)),
    "menages_2021": ("households", 2021, (0, _COUNT_MAX)),
    "naissances_2022": ("births", 2022, (0, 1e5)),
    "deces_2022": ("deaths", 2022, (0, 1e5)),
    "pop_15_64_totale_2021": ("population_15_64", 2021, (0, _COUNT_MAX)),
    "pop_15_64_active_2021": ("actives_15_64", 2021, (0, _COUNT_MAX)),
    "pop_15_64_chomage_2021": ("unemployed_15_64", 2021, (0, _COUNT_MAX)),
}
_EXTRACT_CENSUS_PERIODS = (2015, 2021)  # the area is repeated for each census period
_CENSUS_COLUMNS = [c for c, (v, *_) in _EXTRACT_COLUMNS.items() if v not in ("births", "deaths")]
_KEPT_TYPES = {"COM": "commune", "ARM": "arm"}
_KNOWN_TYPES = {"COM", "ARM", "COMD", "COMA"}


class ComparateurCommunes2024(Source):
    """Extract of the comparateur de territoires, June 2024: census 2015 and 2021 (COG 2024).

    The file has one row per (commune, postal code), plus rows for delegated communes
    (``commune_type`` ``COMD``) that repeat the code and the statistics of the commune whose
    chief town they are. Kept: real communes (``COM``, level ``"commune"``) and municipal
    arrondissements (``ARM``, level ``"arm"``; the file has no row for Paris, Lyon and
    Marseille as a whole). Duplicated codes must carry identical statistics, otherwise the
    file is rejected. The area is repeated for 2015 and 2021. Mayotte's census counts are
    published as 0 (Mayotte is outside the census cycle): they become missing.

    Examples
    --------
    >>> df = ComparateurCommunes2024().load()
    >>> sel = df[(df.zone_code == "59172") & (df.variable == "population") & (df.period == 2021)]
    >>> float(sel.value.iloc[0])  # Denain
    20640.0
    """

    name = "comparateur_2024"
    producer = "INSEE"
    dataset = "Comparateur de territoires, extrait communes (recensement 2015-2021)"
    level = "commune"
    files = {2024: "insee/comparateur/communes_2024_extract.csv"}
    cog_years = {2024: 2024}
    coverage = Coverage("commune", 34500, "34,931 communes and 45 municipal arrondissements")

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        required = ["insee_com", "commune_type", "superficie_km2", *_EXTRACT_COLUMNS]
        raw = read_csv(path, sep=",", required=required)
        raw["insee_com"] = commune_codes(raw["insee_com"], path=path, column="insee_com")
        types = raw["commune_type"].str.strip().str.upper()
        unknown = ~types.isin(_KNOWN_TYPES)
        if unknown.any():
            pos = int(np.flatnonzero(unknown.to_numpy())[0])
            raise DataError(path, f"unknown commune type {raw['commune_type'].iloc[pos]!r}",
                            column="commune_type", line=pos + 2)
        for col, (_, _, (lo, hi)) in _EXTRACT_COLUMNS.items():
            raw[col] = parse_number(raw[col], path=path, column=col, decimal_comma=False, lo=lo, hi=hi)
        raw["superficie_km2"] = parse_number(raw["superficie_km2"], path=path, column="superficie_km2",
                                             decimal_comma=False, lo=0, hi=_AREA_MAX)
        raw["level"] = types.map(_KEPT_TYPES)
        kept = raw[raw["level"].notna()]
        kept = _deduplicate(kept, path, "insee_com", [*_EXTRACT_COLUMNS, "superficie_km2", "level"])
        mayotte = kept["insee_com"].str.startswith("976")
        kept.loc[mayotte, _CENSUS_COLUMNS] = kept.loc[mayotte, _CENSUS_COLUMNS].replace(0.0, np.nan)
        by_period: dict[int, dict[str, str]] = {}
        for col, (var, period, _) in _EXTRACT_COLUMNS.items():
            by_period.setdefault(period, {})[col] = var
        for period in _EXTRACT_CENSUS_PERIODS:
            by_period[period]["superficie_km2"] = "area_km2"
        frames = [
            tidy_levels(kept, zone_col="insee_com", level_col="level", variables=variables,
                        cog_year=self.cog_year(vintage), period=period)
            for period, variables in sorted(by_period.items())
        ]
        return pd.concat(frames, ignore_index=True)


def _deduplicate(df: pd.DataFrame, path: Path, key: str, columns: list[str]) -> pd.DataFrame:
    """One row per ``key``; a DataError if two rows of the same code disagree on ``columns``.

    ``df`` keeps the RangeIndex of the file's data rows, used for the line in messages.
    """
    dup = df[key].duplicated(keep=False)
    if dup.any():
        rows = df.loc[dup, [key, *columns]]
        # NaN == NaN for this comparison
        spread = rows.groupby(key, sort=False)[columns].nunique(dropna=False)
        bad = spread[(spread > 1).any(axis=1)]
        if len(bad):
            code = bad.index[0]
            column = next(c for c in columns if bad.loc[code, c] > 1)
            # the index is the row position in the file (rows dropped before keep their label)
            line = int(df.index[df[key] == code][1]) + 2
            raise DataError(
                path,
                f"duplicated code {code!r} with different statistics ({len(bad)} codes disagree)",
                column=column,
                line=line,
            )
    return df.drop_duplicates(key, keep="first").copy()


__all__ = [
    "ARM_CODE",
    "Comparateur",
    "ComparateurCommunes2024",
    "tidy_levels",
    "zone_levels",
]
