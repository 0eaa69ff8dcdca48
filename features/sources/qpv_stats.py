"""ONPV statistics per priority neighbourhood (QPV, 2015 generation), files 2017-2022.

The Observatoire national de la politique de la ville publishes one file per theme and year:

* ``DEMO_{YYYY}.csv``: population (census), age, foreigners, households, CAF recipients
  (2020: ``data_DEMO_2020_V1_QP.csv``, without the QPV name column, plain numbers, no BOM);
* ``IPRO_{YYYY}.csv``: employment rate, precarious / limited-duration jobs, job seekers;
* ``REVN_{YYYY}.csv``: Filosofi declared and disposable income, poverty rate, income shares.

Format: ``;`` separated, UTF-8 with BOM, French numbers (``6 056``, ``52,1``), blank =
secret, dozens of empty trailing columns, an ``Ensemble`` row for all QPV (dropped). Headers
vary by year: the share of precarious jobs ``TX_TOT_EPREC`` (2017-2020) becomes the share of
limited-duration jobs ``TX_TOT_EDLIM`` (2021-2022); both map to
``qpv_share_precarious_jobs``.

``zone_code`` is the QPV code (``QP059050``), level ``qpv``. ``period`` is the year of the
ONPV file, not of the underlying source (the 2017-2020 files carry the population of the 2013
census, the 2021-2022 ones that of the 2018 census; the income of year N-3 or so).
``cog_year`` is 2015, the year of the QPV geography (decree 2014-1750), not a COG.
The files name the communes of each QPV (``LIB_COM``), without codes:
:meth:`OnpvQpvDemography.qpv_communes` matches them within the QPV's department.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source, tidy
from territoria.readers import check_unique, parse_number, read_csv

QPV_CODE = re.compile(r"^QP(?:\d{3}|\d{2}[AB])\d{3}$")
QPV_GEOGRAPHY_YEAR = 2015

_RATE = (0.0, 100.0)
_COUNT = (0.0, 1e6)
_INCOME = (0.0, 1e6)


class _OnpvQpv:
    """Shared reading of the ONPV files (a mixin, not an adapter: subclasses are
    ``(_OnpvQpv, Source)`` and set ``files`` and ``VARIABLES``)."""

    producer = "ONPV / ANCT (INSEE, CNAF, Pôle emploi sources)"
    level = "qpv"
    coverage = Coverage("qpv", 1300, "QPV of the 2015 generation")
    #: registry variable -> (accepted headers, first found wins; plausible range; required)
    VARIABLES: dict[str, tuple[tuple[str, ...], tuple[float, float], bool]] = {}

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        raw = read_csv(path, sep=";", required=["CODGEO"])
        raw = raw[[c for c in raw.columns if c and not c.startswith("Unnamed")]]
        raw.columns = [c.strip() for c in raw.columns]
        raw["CODGEO"] = raw["CODGEO"].str.strip().str.upper()
        raw = raw[raw["CODGEO"].str.lower() != "ensemble"].reset_index(drop=True)
        if raw.empty:
            raise DataError(path, "no QPV rows (only the 'Ensemble' row)")
        bad = ~raw["CODGEO"].str.match(QPV_CODE)
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                path, f"invalid QPV code {raw['CODGEO'].iloc[pos]!r}", column="CODGEO", line=pos + 2
            )
        check_unique(raw["CODGEO"], path=path, column="CODGEO")
        variables = {}
        for var, (headers, (lo, hi), required) in self.VARIABLES.items():
            col = next((h for h in headers if h in raw.columns), None)
            if col is None:
                if required:
                    from territoria.readers import check_columns

                    check_columns(raw, [headers[-1]], path)
                continue
            if col in variables:  # two variables from one column would melt badly
                continue
            raw[col] = parse_number(raw[col], path=path, column=col, lo=lo, hi=hi)
            variables[col] = var
        return tidy(
            raw,
            zone_col="CODGEO",
            variables=variables,
            level="qpv",
            cog_year=QPV_GEOGRAPHY_YEAR,
            period=vintage,
        )

    def cog_year(self, vintage: int) -> int | None:
        return QPV_GEOGRAPHY_YEAR if vintage in self.files else None


class OnpvQpvDemography(_OnpvQpv, Source):
    """ONPV demography per QPV: population, age, foreigners, households, CAF recipients.

    Examples
    --------
    >>> df = OnpvQpvDemography().load([2022])
    >>> row = df[(df.zone_code == "QP001001") & (df.variable == "qpv_population")]
    >>> float(row.value.iloc[0])  # Grande Reyssouze Terre des Fleurs, Bourg-en-Bresse
    6490.0
    """

    name = "onpv_qpv_demography"
    dataset = "Observatoire national de la politique de la ville - démographie des QPV"
    files = {
        2017: "designations/qpv_stats_onpv/DEMO_2017.csv",
        2018: "designations/qpv_stats_onpv/DEMO_2018.csv",
        2019: "designations/qpv_stats_onpv/DEMO_2019.csv",
        2020: "designations/qpv_stats_onpv/data_DEMO_2020_V1_QP.csv",
        2021: "designations/qpv_stats_onpv/DEMO_2021.csv",
        2022: "designations/qpv_stats_onpv/DEMO_2022.csv",
    }
    cog_years = {y: QPV_GEOGRAPHY_YEAR for y in files}
    VARIABLES = {
        "qpv_population": (("POP_MUN",), _COUNT, True),
        "qpv_share_under_25": (("TX_TOT_0A24",), _RATE, True),
        "qpv_share_60_plus": (("TX_TOT_60ETPLUS",), _RATE, True),
        "qpv_share_foreigners": (("TX_TOT_ET",), _RATE, True),
        "qpv_share_single_person_households": (("TX_TOT_MEN1",), _RATE, False),
        "qpv_share_large_households": (("TX_TOT_MEN6",), _RATE, False),
        "qpv_youth_index": (("IND_JEUNE",), (0.0, 100.0), False),
        "qpv_caf_recipients": (("A",), _COUNT, False),
        "qpv_caf_covered_persons": (("PERCOU",), _COUNT, False),
    }

    def qpv_communes(self, vintage: int = 2022, name_index=None) -> pd.DataFrame:
        """Communes of each QPV: ``zone_code`` (QPV), ``qpv_name``, ``departement``,
        ``commune_name`` and ``commune_code`` (matched by name within the QPV's department
        in the COG 2021 then 2026; ``None`` when absent or ambiguous, never guessed).
        """
        path = self.path(vintage)
        raw = read_csv(path, sep=";", required=["CODGEO", "LIB_COM"])
        raw = raw[raw["CODGEO"].str.strip().str.match(QPV_CODE)]
        if name_index is None:
            from territoria.features.sources.cog import Cog
            from territoria.features.sources.commune_names import NameIndex

            cog = Cog(self.data_dir)
            name_index = NameIndex({y: cog.read_vintage(y) for y in (2021, 2026)})
        rows = []
        for code, qname, communes in zip(
            raw["CODGEO"].str.strip(),
            raw.get("LIBGEO", pd.Series([""] * len(raw), index=raw.index)),
            raw["LIB_COM"],
        ):
            dep = code[2:5].lstrip("0") if code[2:5].isdigit() else code[3:5]
            dep = dep.zfill(2) if len(dep) < 2 else dep
            for commune in [c.strip() for c in communes.split(",") if c.strip()]:
                cands = [c for c in name_index.candidates(commune) if c.departement == dep]
                best = [c for c in cands if cands and c.rank == cands[0].rank]
                rows.append((code, qname, dep, commune, best[0].code if len(best) == 1 else None))
        return pd.DataFrame(
            rows, columns=["zone_code", "qpv_name", "departement", "commune_name", "commune_code"]
        )


class OnpvQpvEmployment(_OnpvQpv, Source):
    """ONPV employment per QPV: employment rate, precarious jobs, registered job seekers."""

    name = "onpv_qpv_employment"
    dataset = (
        "Observatoire national de la politique de la ville - insertion professionnelle des QPV"
    )
    files = {y: f"designations/qpv_stats_onpv/IPRO_{y}.csv" for y in range(2017, 2023)}
    cog_years = {y: QPV_GEOGRAPHY_YEAR for y in files}
    VARIABLES = {
        "qpv_employment_rate": (("TX_TOT_EMPL",), _RATE, True),
        "qpv_share_precarious_jobs": (("TX_TOT_EPREC", "TX_TOT_EDLIM"), _RATE, True),
        "qpv_jobseekers_abc": (("ABC",), _COUNT, False),
    }


class OnpvQpvIncome(_OnpvQpv, Source):
    """ONPV income per QPV (Filosofi): median income, deciles, poverty rate, income shares."""

    name = "onpv_qpv_income"
    dataset = "Observatoire national de la politique de la ville - revenus des QPV"
    files = {y: f"designations/qpv_stats_onpv/REVN_{y}.csv" for y in (2017, 2018, 2019, 2021, 2022)}
    cog_years = {y: QPV_GEOGRAPHY_YEAR for y in files}
    VARIABLES = {
        "qpv_median_disposable_income": (("DISP_Q2",), _INCOME, True),
        "qpv_poverty_rate": (("TP60",), _RATE, True),
        "qpv_median_declared_income": (("DECUC_Q2",), _INCOME, False),
        "qpv_disposable_income_d1": (("DISP_D1",), _INCOME, False),
        "qpv_disposable_income_d9": (("DISP_D9",), _INCOME, False),
        "qpv_share_social_benefits": (("PPSOC",), _RATE, False),
        "qpv_share_activity_income": (("PACT",), (0.0, 200.0), False),
        "qpv_share_taxed_households": (("PMIMP",), _RATE, False),
    }
