"""THIRD-PARTY census shares (2011, 2016, 2022) computed by a local observatory.

Percentages of age groups, tenure, vacancy, household types, unemployment, diplomas and
occupations derived from INSEE's census (RP 2011, 2016, 2022) by the observatory project
``vincentroue/ptod-observatoire-territorial``: per IRIS for five departments (13, 14, 59, 62,
93) and per commune or municipal arrondissement of 5,000 inhabitants or more. No licence is
stated and the method is not documented: these are stop-gap estimates for the age and housing
measures that the official files bundled here lack. Every variable is flagged ``third_party``
and labelled "(third-party estimate)".

Quirks handled:

* column names end with the census year (``log_vac_pct_22`` → period 2022);
* the commune file carries a France row (``00FR``), dropped;
* in zones of a few dozen inhabitants some shares exceed 100 % (e.g. unemployment 119.8 % in
  an IRIS of 8 inhabitants): values outside [0, 100] are set missing when the zone has fewer
  than 200 inhabitants, and rejected otherwise;
* the IRIS files are in the IRIS geography of 2024 but omit Pierrefitte-sur-Seine (93059),
  which merged into Saint-Denis in 2025; the commune file is in the geography of 2025.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source, tidy
from territoria.features.sources.comparateur import zone_levels
from territoria.readers import check_columns, check_unique, commune_codes, parse_number, read_bytes

_PERIODS = {"11": 2011, "16": 2016, "22": 2022}
_TINY = 200  # inhabitants under which a share above 100 % is noise, not a broken file
_SHARE = (0.0, 100.0)

#: official column stem -> (registry variable, plausible range); the stem + "_11/_16/_22"
_STEMS: dict[str, tuple[str, tuple[float, float]]] = {
    "dm_0014_pct": ("cd_share_under_15", _SHARE),
    "dmv_75p_pct": ("cd_share_75_plus", _SHARE),
    "dmv_iv_ind": ("cd_ageing_index", (0.0, 5000.0)),
    "log_prop_pct": ("cd_owner_share", _SHARE),
    "log_lochlm_pct": ("cd_social_housing_share", _SHARE),
    "log_vac_pct": ("cd_vacancy_rate", _SHARE),
    "log_ressec_pct": ("cd_secondary_home_share", _SHARE),
    "men_mono_pct": ("cd_lone_parent_share", _SHARE),
    "men_seul_pct": ("cd_single_person_share", _SHARE),
    "soc_txchom_1564": ("cd_unemployment_rate", _SHARE),
    "soc_txchom_1524": ("cd_youth_unemployment_rate", _SHARE),
    "eco_txemp_1564": ("cd_employment_rate", _SHARE),
    "dsp_dipl_infbac_pct": ("cd_below_bac_share", _SHARE),
    "dsp_dipl_supbac2_pct": ("cd_higher_education_share", _SHARE),
    "dsp_csp_ouvriers_pct": ("cd_blue_collar_share", _SHARE),
    "dsp_csp_cadres_pct": ("cd_managers_share", _SHARE),
}
_POP = {"P11_POP": 2011, "P16_POP": 2016, "P22_POP": 2022}
_POP_MAX = 3e6


def read_parquet_table(path: Path, required: list[str]) -> pd.DataFrame:
    """A parquet table with clear errors: missing file, unreadable, empty, missing columns."""
    data = read_bytes(path)
    try:
        df = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several unrelated types
        raise DataError(path, f"not a readable parquet file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:120]})") from None
    if df.empty:
        raise DataError(path, "empty table: no rows")
    df.columns = [str(c).strip() for c in df.columns]
    check_columns(df, required, path)
    return df.reset_index(drop=True)


def _numbers(values: pd.Series, path: Path, column: str, lo: float, hi: float | None) -> pd.Series:
    """Floats (parquet numeric or text columns alike) checked against ``[lo, hi]``; row numbers
    in messages count from 1."""
    if pd.api.types.is_numeric_dtype(values):
        text = values.astype(float).map(repr)
    else:
        text = values.astype(str)
    return parse_number(text, path=path, column=column, decimal_comma=False, lo=lo, hi=hi, header_lines=0)


def _shares(df: pd.DataFrame, path: Path, pop: dict[int, pd.Series]) -> dict[int, dict[str, pd.Series]]:
    """Every available share column, by period, with the tiny-zone rule applied."""
    out: dict[int, dict[str, pd.Series]] = {}
    for stem, (var, (lo, hi)) in _STEMS.items():
        for suffix, period in _PERIODS.items():
            col = f"{stem}_{suffix}"
            if col not in df:
                continue
            values = _numbers(df[col], path, col, lo, None)
            size = pop.get(period, pop.get(max(pop)))
            over = values > hi
            tiny = size < _TINY
            values = values.mask(over & tiny)
            still = values > hi
            if still.any():
                pos = int(np.flatnonzero(still.to_numpy())[0])
                raise DataError(path, f"value {values.iloc[pos]} outside the plausible range [{lo}, {hi}]",
                                column=col, line=pos + 1)
            out.setdefault(period, {})[var] = values
    return out


def _emit(codes: pd.Series, levels: pd.Series, by_period: dict[int, dict[str, pd.Series]],
          cog_year: int) -> pd.DataFrame:
    frames = []
    for period, columns in sorted(by_period.items()):
        wide = pd.DataFrame({"zone_code": codes, "level": levels, **columns})
        for level, part in wide.groupby("level", sort=True):
            frames.append(tidy(part, zone_col="zone_code", variables={c: c for c in columns},
                               level=str(level), cog_year=cog_year, period=period))
    return pd.concat(frames, ignore_index=True)


class CensusDerivedIris(Source):
    """Third-party census shares per IRIS, departments 13, 14, 59, 62 and 93.

    One file per department: the vintage keys are the DEPARTMENT numbers (every file holds the
    periods 2011, 2016 and 2022). Communes not split into IRIS appear once, with the code
    ``<commune>0000``.

    Examples
    --------
    >>> df = CensusDerivedIris().load([59])
    >>> sel = df[(df.zone_code == "591720101") & (df.period == 2022)].set_index("variable").value
    >>> float(sel["cd_unemployment_rate"])  # Denain, Faubourg du Château
    25.81
    """

    name = "census_derived_iris"
    producer = "Observatoire territorial (third party), from INSEE census"
    dataset = "Indicateurs dérivés du recensement 2011-2016-2022 par IRIS (estimation tierce)"
    licence = "none stated (third-party estimates)"
    third_party = True
    level = "iris"
    files = {d: f"insee/census_derived/agg_iris_{d}.parquet" for d in (13, 14, 59, 62, 93)}
    cog_years = {d: 2024 for d in (13, 14, 59, 62, 93)}
    coverage = Coverage("iris", 500, "per department file: 605 (93) to 1,345 (59) IRIS")

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        required = ["code", "COM", *_POP, "soc_txchom_1564_22", "log_vac_pct_22", "dmv_75p_pct_22"]
        df = read_parquet_table(path, required)
        codes = df["code"].astype(str).str.strip().str.upper()
        bad = ~codes.str.match(r"^(?:\d{5}|2[AB]\d{3})\d{4}$")
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(path, f"invalid IRIS code {df['code'].iloc[pos]!r}", column="code", line=pos + 1)
        check_unique(codes, path=path, column="code")
        dep = f"{vintage:02d}"
        foreign = ~codes.str.startswith(dep)
        if foreign.any():
            pos = int(np.flatnonzero(foreign.to_numpy())[0])
            raise DataError(path, f"IRIS {codes.iloc[pos]!r} is not in department {dep}",
                            column="code", line=pos + 1)
        pop = {period: _numbers(df[col], path, col, 0, _POP_MAX) for col, period in _POP.items()}
        by_period = _shares(df, path, pop)
        for period, values in pop.items():
            by_period.setdefault(period, {})["cd_population"] = values
        levels = pd.Series("iris", index=codes.index)
        return _emit(codes, levels, by_period, self.cog_year(vintage))


class CensusDerivedCommunes(Source):
    """Third-party census shares per commune (and municipal arrondissement) of 5,000+ inhabitants.

    Most shares are given for 2022 only; the ageing index, employment rate and some
    occupations also for 2011 and/or 2016. Paris, Lyon and Marseille appear both as communes
    and through their arrondissements (level ``"arm"``).

    Examples
    --------
    >>> df = CensusDerivedCommunes().load()
    >>> sel = df[(df.zone_code == "59172") & (df.period == 2022)].set_index("variable").value
    >>> float(sel["cd_vacancy_rate"])  # Denain
    12.04
    """

    name = "census_derived_communes"
    producer = "Observatoire territorial (third party), from INSEE census"
    dataset = "Indicateurs dérivés du recensement 2011-2016-2022, communes de 5 000 habitants et plus"
    licence = "none stated (third-party estimates)"
    third_party = True
    level = "commune"
    files = {2025: "insee/census_derived/agg_commARM_5Khab.parquet"}
    cog_years = {2025: 2025}
    coverage = Coverage("commune", 2000, "2,191 communes and arrondissements of 5,000+ inhabitants")

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        required = ["code", "P22_POP", "soc_txchom_1564_22", "log_vac_pct_22", "dmv_75p_pct_22"]
        df = read_parquet_table(path, required)
        france = df["code"].astype(str).str.strip().str.upper().eq("00FR")
        if france.all():
            raise DataError(path, "empty table: only the France row")
        # the France row is kept while parsing, so that row numbers in messages stay right
        codes = commune_codes(df["code"].astype(str).mask(france, "00000"), path=path, column="code",
                              header_lines=0)
        check_unique(codes[~france], path=path, column="code")
        pop = {2022: _numbers(df["P22_POP"], path, "P22_POP", 0, _POP_MAX)}
        by_period = _shares(df, path, pop)
        by_period[2022]["cd_population"] = pop[2022]
        keep = ~france
        by_period = {p: {v: s[keep] for v, s in cols.items()} for p, cols in by_period.items()}
        return _emit(codes[keep], zone_levels(codes[keep]), by_period, self.cog_year(vintage))
