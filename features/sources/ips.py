"""Education ministry (DEPP): social position index (IPS) of schools, aggregated per commune.

The IPS ("indice de position sociale") summarises the social background of a school's pupils
from their parents' occupations (about 50 to 160; national mean about 103). Two files per school
year, one row per school (UAI) with the code of its commune (arrondissement in Paris, Lyon and
Marseille): primary schools (``fr-en-ips_ecoles``) and lower secondary schools
(``fr-en-ips_colleges``), ``;`` separated, decimal points.

The files give no pupil counts: the commune value is the SIMPLE mean of its schools' IPS, and
the number of schools with an IPS is emitted as its weight.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source, tidy
from territoria.features.sources.comparateur import zone_levels
from territoria.readers import check_unique, commune_codes, parse_number, read_csv

_YEAR = "Rentrée scolaire"
_UAI = "UAI"
_COMMUNE = "Code INSEE de la commune"
_IPS = "IPS"
_IPS_RANGE = (30.0, 200.0)
_UAI_CODE = r"\d{7}[A-Z]"


def read_ips(source: Source, vintage: int, mean_var: str, count_var: str) -> pd.DataFrame:
    """Read one IPS file and return the tidy mean IPS and number of schools per commune.

    The period is the first year of the school year (``2021-2022`` → 2021).
    """
    path = source.path(vintage)
    raw = read_csv(path, sep=";", required=[_YEAR, _UAI, _COMMUNE, _IPS])
    years = raw[_YEAR].str.strip().unique()
    if len(years) != 1 or not pd.Series(years).str.fullmatch(r"\d{4}-\d{4}").all():
        raise DataError(path, f"expected one school year like '2021-2022', found {list(years)[:3]}",
                        column=_YEAR)
    period = int(years[0][:4])
    uai = raw[_UAI].str.strip().str.upper()
    # UAI: seven digits and a check letter (0010024W); anything else is a shifted or garbled cell
    bad = ~uai.str.fullmatch(_UAI_CODE)
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        problem = "empty school identifier" if uai.iloc[pos] == "" else \
            f"invalid school identifier {raw[_UAI].iloc[pos]!r} (expected 7 digits and a letter)"
        raise DataError(path, problem, column=_UAI, line=pos + 2)
    check_unique(uai, path=path, column=_UAI)
    raw[_COMMUNE] = commune_codes(raw[_COMMUNE], path=path, column=_COMMUNE)
    raw[_IPS] = parse_number(raw[_IPS], path=path, column=_IPS, decimal_comma=True,
                             lo=_IPS_RANGE[0], hi=_IPS_RANGE[1])
    per_commune = (
        raw.groupby(_COMMUNE, sort=True)[_IPS]
        .agg(["mean", "count"])
        .rename(columns={"mean": mean_var, "count": count_var})
        .reset_index()
    )
    per_commune[count_var] = per_commune[count_var].astype(float)
    per_commune[mean_var] = per_commune[mean_var].round(2)
    per_commune["level"] = zone_levels(per_commune[_COMMUNE])
    frames = [
        tidy(part, zone_col=_COMMUNE, variables={mean_var: mean_var, count_var: count_var},
             level=str(level), cog_year=source.cog_year(vintage), period=period)
        for level, part in per_commune.groupby("level", sort=True)
    ]
    return pd.concat(frames, ignore_index=True)


class IpsEcoles(Source):
    """Mean social position index of the primary schools of each commune, 2021-2022.

    Examples
    --------
    >>> df = IpsEcoles().load()
    >>> float(df[(df.zone_code == "62048") & (df.variable == "school_ips_mean")].value.iloc[0])  # Auchel
    74.9
    """

    name = "ips_ecoles"
    producer = "Ministère de l'Éducation nationale (DEPP)"
    dataset = "Indices de position sociale des écoles"
    level = "commune"
    files = {2022: "social/fr-en-ips_ecoles_2022.csv"}
    cog_years = {2022: 2022}
    coverage = Coverage("commune", 15000, "communes with a public or private-under-contract school")

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        return read_ips(self, vintage, "school_ips_mean", "schools_with_ips")


class IpsColleges(Source):
    """Mean social position index of the collèges (lower secondary) of each commune, 2021-2022.

    Examples
    --------
    >>> df = IpsColleges().load()
    >>> float(df[(df.zone_code == "62048") & (df.variable == "college_ips_mean")].value.iloc[0])  # Auchel
    77.7
    """

    name = "ips_colleges"
    producer = "Ministère de l'Éducation nationale (DEPP)"
    dataset = "Indices de position sociale des collèges"
    level = "commune"
    files = {2022: "social/fr-en-ips_colleges_2022.csv"}
    cog_years = {2022: 2022}
    coverage = Coverage("commune", 3000, "communes with at least one collège")

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        return read_ips(self, vintage, "college_ips_mean", "colleges_with_ips")
