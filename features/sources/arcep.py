"""ARCEP: fixed very-high-speed (FttH) deployment per commune, and mobile sites (points).

FttH observatory (``arcep_ftth_communes_T3-2017_T1-2018.csv`` and
``arcep_ftth_communes_infos_T1-2018.csv``): comma-separated, four title lines before the header,
NO-BREAK-SPACE thousands separators and ``-`` for none (zero). The deployment file has TWO rows
per commune, told apart by ``Champ``: ``Locaux Raccordables`` (premises connectable to FttH) and
``Catégorie`` (ARCEP's coverage class: 0 = none, 5 = under 10 %, 10 = 10-25 %, 25 = 25-50 %,
50 = 50-80 %, 80 = 80 % and more), one column per quarter (``T3 2017``, ``T4 2017``,
``T1 2018``). The period of a vintage is the LAST quarter of that year in the file: T4 2017 for
2017, T1 2018 (the only 2018 quarter here) for 2018; T3 2017 is not used. The information file
gives the dwellings (``Logements``) and establishments (``Établissements``) of each commune,
whose sum is the premises count ARCEP divides by: it exists for T1 2018 only, so the coverage
rate is computed for 2018 only. The rate is capped at 100 % as ARCEP does (connectable premises
exceed the premises estimate in ~700 communes, where the estimate is out of date).

Mobile sites (``2018_01_Sites_mobiles_2G_3G_4G_France_metropolitaine_L93.csv``): ``;``
separated, one row per operator site, Lambert-93 metres (EPSG:2154), technology flags 0/1.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source, tidy
from territoria.features.sources.bpe import zone_levels
from territoria.paths import resolve_data_file
from territoria.readers import check_unique, commune_codes, parse_number, read_csv

log = logging.getLogger(__name__)

_TITLE_LINES = 4
_HEADER_LINES = _TITLE_LINES + 1
_CONNECTABLE = "Locaux Raccordables"
_CLASS = "Catégorie"
_CLASSES = (0, 5, 10, 25, 50, 80)
_QUARTER = re.compile(r"^T([1-4]) (\d{4})$")


class ArcepFtth(Source):
    """FttH connectable premises, coverage class and coverage rate per commune, 2017-2018.

    Examples
    --------
    >>> df = ArcepFtth().load([2018])
    >>> row = df[(df.zone_code == "93066") & (df.variable == "ftth_connectable")]
    >>> float(row.value.iloc[0])  # Saint-Denis, T1 2018
    11571.0
    """

    name = "arcep_ftth"
    producer = "ARCEP"
    dataset = "Observatoire du très haut débit fixe: déploiements FttH par commune"
    level = "commune"
    files = {
        2017: "arcep/arcep_ftth_communes_T3-2017_T1-2018.csv",
        2018: "arcep/arcep_ftth_communes_T3-2017_T1-2018.csv",
    }
    #: Dwellings and establishments (the premises), per vintage.
    premises_files = {2018: "arcep/arcep_ftth_communes_infos_T1-2018.csv"}
    cog_years = {2017: 2018, 2018: 2018}
    coverage = Coverage("commune", 34000, "two rows per commune (connectable premises, class)")

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        wide = self._deployment(vintage)
        if vintage in self.premises_files:
            prem = self._premises(vintage)
            wide = wide.merge(prem, on="code", how="outer")
            rate = 100 * wide["ftth_connectable"] / wide["ftth_premises"].replace(0.0, np.nan)
            wide["ftth_coverage_rate"] = rate.clip(upper=100.0)
        variables = {c: c for c in wide.columns if c != "code"}
        out = tidy(wide, zone_col="code", variables=variables, level="commune",
                   cog_year=self.cog_year(vintage), period=vintage)
        out["level"] = zone_levels(out["zone_code"])
        return out

    def _deployment(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        raw = read_csv(path, sep=",", skiprows=_TITLE_LINES, required=["Code commune", "Champ"])
        quarter = _quarter_of(raw.columns, vintage, path)
        raw["Code commune"] = commune_codes(
            raw["Code commune"], path=path, column="Code commune", header_lines=_HEADER_LINES
        )
        champ = raw["Champ"].str.strip()
        bad = ~champ.isin([_CONNECTABLE, _CLASS])
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(path, f"unknown row kind {champ.iloc[pos]!r} (expected "
                            f"'{_CONNECTABLE}' or '{_CLASS}')", column="Champ",
                            line=pos + 1 + _HEADER_LINES)
        value = parse_number(raw[quarter], path=path, column=quarter, none_marker="-",
                             lo=0, hi=5e6, header_lines=_HEADER_LINES)
        is_class = (champ == _CLASS).to_numpy()
        odd = is_class & ~value.isin(_CLASSES).to_numpy()
        if odd.any():
            pos = int(np.flatnonzero(odd)[0])
            raise DataError(path, f"unknown coverage class {value.iloc[pos]:g} (expected one of "
                            f"{list(_CLASSES)})", column=quarter, line=pos + 1 + _HEADER_LINES)
        parts = {}
        for kind, var in ((_CONNECTABLE, "ftth_connectable"), (_CLASS, "ftth_coverage_class")):
            sel = (champ == kind).to_numpy()
            if not sel.any():
                raise DataError(path, f"no '{kind}' rows: the format has two rows per commune",
                                column="Champ")
            codes = raw.loc[sel, "Code commune"]
            check_unique(codes, path=path, column="Code commune")
            parts[var] = pd.Series(value[sel].to_numpy(), index=codes.to_numpy())
        wide = pd.DataFrame(parts)
        wide.index.name = "code"
        return wide.reset_index()

    def _premises(self, vintage: int) -> pd.DataFrame:
        path = resolve_data_file(self.data_dir, self.premises_files[vintage])
        cols = {"Logements": "ftth_dwellings", "Établissements": "ftth_establishments"}
        raw = read_csv(path, sep=",", skiprows=_TITLE_LINES, required=["Code commune", *cols])
        code = commune_codes(raw["Code commune"], path=path, column="Code commune",
                             header_lines=_HEADER_LINES)
        check_unique(code, path=path, column="Code commune")
        out = pd.DataFrame({"code": code})
        for col, var in cols.items():
            out[var] = parse_number(raw[col], path=path, column=col, none_marker="-",
                                    lo=0, hi=5e6, header_lines=_HEADER_LINES)
        out["ftth_premises"] = out["ftth_dwellings"] + out["ftth_establishments"]
        return out


def _quarter_of(columns, vintage: int, path) -> str:
    """Column of the last quarter of ``vintage`` in the file (``T4 2017`` for 2017)."""
    quarters = {c: _QUARTER.match(c) for c in columns}
    found = sorted(
        (int(m.group(1)), c) for c, m in quarters.items() if m and int(m.group(2)) == vintage
    )
    if not found:
        shown = [c for c, m in quarters.items() if m] or "none"
        raise DataError(path, f"no quarter column of {vintage} (expected 'T1 {vintage}'..'T4 "
                        f"{vintage}'; found: {shown})", column=f"T4 {vintage}")
    return found[-1][1]


# -- mobile sites ---------------------------------------------------------------------------

#: Mobile network codes (MCC-MNC) of the French operators.
OPERATORS = {"20801": "Orange", "20810": "SFR", "20815": "Free Mobile", "20820": "Bouygues Telecom"}
#: Lambert-93 extent of mainland France and Corsica, in metres (x, y).
L93_X = (50_000.0, 1_300_000.0)
L93_Y = (6_000_000.0, 7_150_000.0)


class ArcepMobileSites(Source):
    """Mobile network sites (2G/3G/4G) of the four operators, mainland France, January 2018.

    One point per operator site, category ``mobile_site``, with ``operator``, ``operator_code``
    and boolean ``has_2g``, ``has_3g``, ``has_4g``. Rows repeating the same operator and
    coordinates (469 in the 2018 file: several antennas of one site) are merged, their
    technologies combined. One row without coordinates (``#N/A``) is dropped. 1,472 Orange
    sites carry no technology flag: they are kept (all flags false). ``zone_code`` is empty:
    the feature stage joins points to communes spatially.

    Examples
    --------
    >>> pts = ArcepMobileSites().load()
    >>> int(pts.has_4g.sum()) > 40000
    True
    """

    name = "arcep_mobile_sites"
    producer = "ARCEP"
    dataset = "Sites mobiles 2G/3G/4G (France métropolitaine)"
    kind = "points"
    level = "point"
    files = {2018: "arcep/2018_01_Sites_mobiles_2G_3G_4G_France_metropolitaine_L93.csv"}
    cog_years = {2018: None}
    coverage = Coverage("point", 60000, "~76,700 operator sites in January 2018")

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        from pyproj import Transformer
        import shapely

        path = self.path(vintage)
        techs = {"2G": "has_2g", "3G": "has_3g", "4G": "has_4g"}
        raw = read_csv(path, sep=";", required=["Operateur", "X", "Y", *techs])
        op = raw["Operateur"].str.strip()
        _first_bad(op.str.fullmatch(r"208\d{2}"), path, "Operateur", op,
                   "not a French operator code (MCC-MNC 208xx)")
        # '#N/A' is an Excel lookup failure: a site without coordinates
        xy = {c: parse_number(raw[c], path=path, column=c, secrets={"#n/a"}, decimal_comma=False)
              for c in ("X", "Y")}
        missing = xy["X"].isna() | xy["Y"].isna()
        one_missing = xy["X"].isna() ^ xy["Y"].isna()
        if one_missing.any():
            pos = int(np.flatnonzero(one_missing.to_numpy())[0])
            col = "X" if np.isnan(xy["X"].iloc[pos]) else "Y"
            raise DataError(path, "coordinate missing", column=col, line=pos + 2)
        _check_l93(xy["X"], xy["Y"], path, ~missing)
        flags = {}
        for col, var in techs.items():
            cell = raw[col].str.strip()
            _first_bad(cell.isin(["0", "1"]), path, col, raw[col], "technology flag is not 0 or 1")
            flags[var] = cell == "1"
        sites = pd.DataFrame({"operator_code": op, "x": xy["X"], "y": xy["Y"], **flags})
        if missing.any():
            log.info("%s: %d site(s) without coordinates dropped", path, int(missing.sum()))
        sites = sites[~missing.to_numpy()]
        sites = sites.groupby(["operator_code", "x", "y"], as_index=False, sort=False)[
            list(techs.values())].max()
        lon, lat = Transformer.from_crs("EPSG:2154", "EPSG:4326", always_xy=True).transform(
            sites["x"].to_numpy(), sites["y"].to_numpy()
        )
        return pd.DataFrame({
            "point_id": sites["operator_code"] + "_" + sites["x"].map("{:.0f}".format)
            + "_" + sites["y"].map("{:.0f}".format),
            "category": "mobile_site",
            "period": vintage,
            "zone_code": pd.Series(None, index=sites.index, dtype=object),
            "geometry": shapely.points(lon, lat),
            "operator_code": sites["operator_code"],
            "operator": sites["operator_code"].map(OPERATORS).fillna("other"),
            **{v: sites[v].astype(bool) for v in techs.values()},
        }).reset_index(drop=True)


def _check_l93(x: pd.Series, y: pd.Series, path, located: pd.Series) -> None:
    """Raise a DataError naming the line of the first point outside mainland Lambert-93."""
    xin = x.between(*L93_X)
    yin = y.between(*L93_Y)
    bad = (located & ~(xin & yin)).to_numpy()
    if not bad.any():
        return
    pos = int(np.flatnonzero(bad)[0])
    xv, yv = x.iloc[pos], y.iloc[pos]
    line = pos + 2
    if L93_Y[0] <= xv <= L93_Y[1] and L93_X[0] <= yv <= L93_X[1]:
        raise DataError(path, f"X and Y are swapped ({xv:g}, {yv:g})", column="X", line=line)
    if abs(xv) <= 180 and abs(yv) <= 90:
        raise DataError(path, f"coordinates ({xv:g}, {yv:g}) look like degrees: wrong CRS, the "
                        "official file is in Lambert-93 metres (EPSG:2154)", column="X", line=line)
    col = "X" if not xin.iloc[pos] else "Y"
    raise DataError(path, f"({xv:g}, {yv:g}) is outside the Lambert-93 extent of mainland "
                    f"France (X {L93_X}, Y {L93_Y}): wrong CRS?", column=col, line=line)


def _first_bad(ok: pd.Series, path, column: str, values: pd.Series, problem: str) -> None:
    ok = ok.fillna(False).to_numpy(bool)
    if not ok.all():
        pos = int(np.flatnonzero(~ok)[0])
        raise DataError(path, f"{problem}: {values.iloc[pos]!r}", column=column, line=pos + 2)
