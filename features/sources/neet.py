"""Observatoire des territoires: young people not in employment, education or training (NEET).

Share of the 15-24 year-olds who are neither in employment nor in education or training
("part des jeunes non insérés"), computed from the census for 2008, 2013 and 2018, per
commune in the geography of 2021. The file is long: one row per commune and census year
(``codgeo;libgeo;an;part_non_inseres``), with decimal commas and a UTF-8 BOM. Communes whose
share is not published (Mayotte) have an empty cell.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source
from territoria.features.sources.comparateur import tidy_levels, zone_levels
from territoria.readers import commune_codes, parse_number, read_csv

_PERIODS = (2008, 2013, 2018)


class Neet(Source):
    """Share of 15-24 year-olds not in employment, education or training (census 2008-2018).

    One vintage (2021, the year of the geography and of the release of census 2018) holding
    the three census periods 2008, 2013 and 2018. The file gives no numerator: the rate is
    weighted by ``population`` when communes are aggregated.

    Examples
    --------
    >>> df = Neet().load()
    >>> float(df[(df.zone_code == "59172") & (df.period == 2018)].value.iloc[0])  # Denain
    36.6
    """

    name = "neet"
    producer = "Observatoire des territoires (ANCT), from INSEE census"
    dataset = "Part des jeunes non insérés (15-24 ans ni en emploi ni en formation)"
    level = "commune"
    files = {2021: "social/neet_communes_2008_2013_2018.csv"}
    cog_years = {2021: 2021}
    coverage = Coverage("commune", 34500, "34,965 communes of 2021 for each census year")

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        raw = read_csv(path, sep=";", required=["codgeo", "an", "part_non_inseres"])
        raw["codgeo"] = commune_codes(raw["codgeo"], path=path, column="codgeo")
        year = parse_number(raw["an"], path=path, column="an", decimal_comma=False, secrets=(),
                            lo=1990, hi=2100)
        unexpected = ~year.isin(_PERIODS)
        if unexpected.any():
            pos = int(np.flatnonzero(unexpected.to_numpy())[0])
            raise DataError(path, f"unexpected census year {raw['an'].iloc[pos]!r} "
                            f"(expected one of {list(_PERIODS)})", column="an", line=pos + 2)
        raw["an"] = year.astype(int)
        dup = raw.duplicated(["codgeo", "an"])
        if dup.any():
            pos = int(np.flatnonzero(dup.to_numpy())[0])
            code, an = raw["codgeo"].iloc[pos], raw["an"].iloc[pos]
            raise DataError(path, f"duplicated code {code!r} for year {an} ({int(dup.sum())} duplicates)",
                            column="codgeo", line=pos + 2)
        raw["neet_rate"] = parse_number(raw["part_non_inseres"], path=path, column="part_non_inseres",
                                        lo=0, hi=100)
        raw["level"] = zone_levels(raw["codgeo"])
        frames = [
            tidy_levels(part, zone_col="codgeo", level_col="level", variables={"neet_rate": "neet_rate"},
                        cog_year=self.cog_year(vintage), period=int(period))
            for period, part in raw.groupby("an", sort=True)
        ]
        return pd.concat(frames, ignore_index=True)
