"""CNAF: households receiving family and social benefits (CAF recipients) per IRIS, 2016-2020.

One ``;`` file per year, one row per IRIS of the communes split into IRIS (about 13,000),
counts at 31 December. Formats vary by year:

* 2016-2017: UTF-8 with BOM, names of the IRIS and commune, thousands separated by a narrow
  no-break space (``1 997``), two extra columns on benefit dependence (``APRES50``,
  ``APRES100``) that later years dropped;
* 2018: same labels, plain thousands;
* 2019-2020: codes only (``CODGEO;NOTE;A;...``).

Empty cells are statistical secret (IRIS with few recipients; ``NOTE`` non-zero): missing.
Shares are computed over CAF recipients (``A``), the only denominator in the file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source, tidy
from territoria.readers import check_unique, parse_number, read_csv

_IRIS = r"^(?:\d{5}|2[AB]\d{3})\d{4}$"
_MAX = 1e5  # no IRIS counts 100,000 recipients or covered persons

#: official column -> registry variable (same names every year)
CAF_COLUMNS: dict[str, str] = {
    "A": "caf_recipients",
    "PERCOU": "caf_covered_persons",
    "AI": "caf_single_no_child",
    "AM": "caf_lone_parents",
    "ACSSENF": "caf_couples_no_child",
    "ACAVENF": "caf_couples_with_children",
    "AC3ENF": "caf_large_families",
    "ENF": "caf_children",
    "A_NETUD_24": "caf_young_non_students",
    "AAL": "caf_housing_aid",
    "AAPL": "caf_apl",
    "AAAH": "caf_aah",
    "APPA": "caf_activity_bonus",
    "ARSAS": "caf_rsa",
}
#: columns published only in some years
OPTIONAL_COLUMNS: dict[str, str] = {
    "APRES50": "caf_benefit_dependent_50",
    "APRES100": "caf_benefit_dependent_100",
}


class CafIris(Source):
    """CAF recipients per IRIS, 31 December 2016 to 2020.

    The IRIS geography follows the communes of about the following year, except 2016: the 2016
    file still has the communes merged into Cherbourg-en-Cotentin (2016) and Annecy (2017),
    the 2017 file those merged into Les Sables-d'Olonne and Évry-Courcouronnes (2019).

    Examples
    --------
    >>> df = CafIris().load([2019])
    >>> float(df[(df.zone_code == "591720101") & (df.variable == "caf_rsa")].value.iloc[0])  # Denain
    215.0
    """

    name = "caf_iris"
    producer = "CNAF"
    dataset = "Allocataires CAF par IRIS (prestations légales)"
    level = "iris"
    files = {y: f"social/data_CAF_{y}_IRIS.csv" for y in range(2016, 2021)}
    cog_years = {2016: 2015, 2017: 2017, 2018: 2019, 2019: 2020, 2020: 2021}
    coverage = Coverage("iris", 12500, "IRIS of the communes split into IRIS, secret ones included")

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        raw = read_csv(path, sep=";", required=["CODGEO", *CAF_COLUMNS])
        raw["CODGEO"] = raw["CODGEO"].str.strip().str.upper()
        bad = ~raw["CODGEO"].str.match(_IRIS)
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(path, f"invalid IRIS code {raw['CODGEO'].iloc[pos]!r}",
                            column="CODGEO", line=pos + 2)
        check_unique(raw["CODGEO"], path=path, column="CODGEO")
        variables = {}
        for col, var in {**CAF_COLUMNS, **OPTIONAL_COLUMNS}.items():
            if col not in raw:
                continue
            raw[col] = parse_number(raw[col], path=path, column=col, decimal_comma=False, lo=0, hi=_MAX)
            variables[col] = var
        _check_subsets(raw, path)
        return tidy(raw, zone_col="CODGEO", variables=variables, level="iris",
                    cog_year=self.cog_year(vintage), period=vintage)


def _check_subsets(raw: pd.DataFrame, path) -> None:
    """Recipients of one benefit cannot outnumber all recipients (columns shifted or swapped)."""
    for col in ("AAL", "ARSAS", "AAAH", "APPA", "AM"):
        over = raw[col] > raw["A"]
        if over.any():
            pos = int(np.flatnonzero(over.to_numpy())[0])
            raise DataError(
                path, f"{raw[col].iloc[pos]:g} recipients of {col} exceed all recipients "
                f"A = {raw['A'].iloc[pos]:g} (shifted columns?)", column=col, line=pos + 2,
            )
