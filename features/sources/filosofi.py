"""INSEE Filosofi: disposable income and poverty per commune (six vintages) and per IRIS.

Two publication formats coexist:

* ``FILO{YYYY}_DISP_COM.csv`` (2014, 2015, 2016, 2018): "distribution des revenus
  disponibles", decimal commas, UTF-8 with BOM, secret communes dropped, no poverty rate;
* ``cc_filosofi_{YYYY}_COM.csv`` (2019, 2021): "revenus et pauvreté", secret cells are empty
  (2019) or ``s`` (2021), decimal points (2019) or commas (2021).

The IRIS file of 2021 gives DECLARED (pre-transfer) income, which is not comparable with the
communes' disposable income: its variables carry a ``declared_`` prefix.
"""

from __future__ import annotations

import pandas as pd

from territoria.features.sources.base import Coverage, Source, tidy
from territoria.readers import check_unique, commune_codes, parse_number, read_csv

# official column stem -> (registry variable, plausible range)
_COMMON = {
    "D1": ("income_d1", (0, 1e6)),
    "D9": ("income_d9", (0, 1e7)),
    "RD": ("interdecile_ratio", (0, 1000)),
    "PPSOC": ("share_social_benefits", (0, 100)),
    "PPMINI": ("share_minimum_benefits", (0, 100)),
    "PCHO": ("share_unemployment_benefits", (0, 100)),
    "PACT": ("share_activity_income", (0, 200)),
}
_CC = {
    "NBMENFISC": ("households_fiscal", (0, 2e6)),
    "NBPERSMENFISC": ("persons_fiscal", (0, 5e6)),
    "MED": ("median_income", (0, 1e6)),
    "TP60": ("poverty_rate", (0, 100)),
    "PIMP": ("share_taxed_households", (0, 100)),
    **_COMMON,
}
_DISP = {
    "NBMEN": ("households_fiscal", (0, 2e6)),
    "NBPERS": ("persons_fiscal", (0, 5e6)),
    "Q2": ("median_income", (0, 1e6)),
    **_COMMON,
}


class FilosofiCommune(Source):
    """Filosofi income and poverty per commune, income years 2014-2021.

    Examples
    --------
    >>> df = FilosofiCommune().load([2019])
    >>> row = df[(df.zone_code == "59172") & (df.variable == "median_income")]
    >>> float(row.value.iloc[0])  # Denain, 2019
    14320.0
    """

    name = "filosofi_commune"
    producer = "INSEE"
    dataset = "Filosofi - revenus, pauvreté et niveau de vie (communes)"
    level = "commune"
    files = {
        2014: "insee/filosofi/FILO2014_DISP_COM.csv",
        2015: "insee/filosofi/FILO2015_DISP_COM.csv",
        2016: "insee/filosofi/FILO2016_DISP_COM.csv",
        2018: "insee/filosofi/FILO2018_DISP_COM.csv",
        2019: "insee/filosofi/cc_filosofi_2019_COM.CSV",
        2021: "insee/filosofi/cc_filosofi_2021_COM.csv",
    }
    # Filosofi of income year N is published in the geography of 1 January N+1 (2019, 2021:
    # N+2 as stated by INSEE's metadata).
    cog_years = {2014: 2015, 2015: 2016, 2016: 2017, 2018: 2019, 2019: 2021, 2021: 2023}
    coverage = Coverage("commune", 30000, "secret communes (under 50 households) are blank or dropped")

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        yy = f"{vintage % 100:02d}"
        stems = _CC if vintage >= 2019 else _DISP
        # RD has no year suffix in the DISP format
        cols = {
            (s if (s == "RD" and vintage < 2019) else f"{s}{yy}"): meta for s, meta in stems.items()
        }
        required = ["CODGEO", *[c for c in cols if not c.startswith(("PCHO", "PACT"))]]
        raw = read_csv(path, sep=";", required=required)
        raw["CODGEO"] = commune_codes(raw["CODGEO"], path=path, column="CODGEO")
        check_unique(raw["CODGEO"], path=path, column="CODGEO")
        variables = {}
        for col, (var, (lo, hi)) in cols.items():
            if col not in raw:  # PCHO/PACT are absent from the 2014 file
                continue
            raw[col] = parse_number(raw[col], path=path, column=col, lo=lo, hi=hi)
            variables[col] = var
        return tidy(
            raw, zone_col="CODGEO", variables=variables, level="commune",
            cog_year=self.cog_year(vintage), period=vintage,
        )


class FilosofiIris(Source):
    """Filosofi 2021 per IRIS, DECLARED income (before taxes and benefits).

    Declared income is not comparable with disposable income: variables are prefixed
    ``declared_``. Covers the 16,026 IRIS of communes large enough to be split.
    """

    name = "filosofi_iris"
    producer = "INSEE"
    dataset = "Filosofi - revenus déclarés (IRIS)"
    level = "iris"
    files = {2021: "insee/filosofi/BASE_TD_FILO_IRIS_2021_DEC.csv"}
    cog_years = {2021: 2023}
    coverage = Coverage("iris", 15000)

    _COLS = {
        "DEC_MED21": ("declared_median_income", (0, 1e6)),
        "DEC_TP6021": ("declared_poverty_rate", (0, 100)),
        "DEC_D121": ("declared_income_d1", (-1e6, 1e6)),
        "DEC_D921": ("declared_income_d9", (0, 1e7)),
        "DEC_PCHO21": ("declared_share_unemployment_benefits", (0, 100)),
    }

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        raw = read_csv(path, sep=";", required=["IRIS", *self._COLS])
        raw["IRIS"] = raw["IRIS"].str.strip().str.upper()
        bad = ~raw["IRIS"].str.fullmatch(r"(?:\d{5}|2[AB]\d{3})\d{4}")
        if bad.any():
            from territoria.errors import DataError

            line = int(bad.to_numpy().nonzero()[0][0]) + 2
            raise DataError(path, f"invalid IRIS code {raw['IRIS'][bad].iloc[0]!r}", column="IRIS", line=line)
        check_unique(raw["IRIS"], path=path, column="IRIS")
        for col, (_, (lo, hi)) in self._COLS.items():
            raw[col] = parse_number(raw[col], path=path, column=col, lo=lo, hi=hi)
        return tidy(
            raw, zone_col="IRIS", variables={c: v for c, (v, _) in self._COLS.items()},
            level="iris", cog_year=self.cog_year(vintage), period=vintage,
        )
