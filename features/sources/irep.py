"""Géorisques IREP: facilities declaring pollutant releases (registre des émissions polluantes).

``irep_industrial_sites_2021.csv`` has NO header line. Its six comma-separated fields are the
establishment id, the name (quoted when it holds a comma), latitude, longitude (WGS84 decimal
degrees), and the ids of nearby water- and air-quality monitoring stations as ``{id,id,...}``
(``{}`` = none). The list covers industry and large livestock farms, in mainland France,
Corsica and the overseas departments; it gives no emission quantities. Establishment ids are
unique in the real file: a repeated id is an error.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source
from territoria.features.sources.bpe import strict_number
from territoria.readers import check_unique, read_csv, read_text

_FIELDS = ["establishment_id", "name", "latitude", "longitude", "water_stations", "air_stations"]

#: (lat_min, lat_max, lon_min, lon_max) of the parts of France with communes in the COG.
FRANCE_BOXES = {
    "mainland and Corsica": (41.0, 51.6, -5.8, 10.0),
    "Guadeloupe": (15.8, 16.6, -61.9, -60.9),
    "Martinique": (14.3, 14.95, -61.3, -60.75),
    "Guyane": (2.0, 6.0, -54.7, -51.5),
    "La Réunion": (-21.5, -20.8, 55.1, 55.95),
    "Mayotte": (-13.1, -12.5, 44.9, 45.4),
    "Saint-Pierre-et-Miquelon": (46.7, 47.2, -56.5, -56.1),
    "Saint-Martin, Saint-Barthélemy": (17.8, 18.2, -63.2, -62.7),
}


def in_france(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """True where (lat, lon) falls in mainland France, Corsica or an overseas department."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    ok = np.zeros(lat.shape, bool)
    for la0, la1, lo0, lo1 in FRANCE_BOXES.values():
        ok |= (lat >= la0) & (lat <= la1) & (lon >= lo0) & (lon <= lo1)
    return ok


def check_france_lonlat(
    lat: pd.Series, lon: pd.Series, *, path, lat_col: str, lon_col: str,
    header_lines: int = 1, item: str = "line",
) -> None:
    """Raise a DataError on the first point that is not in France, saying if it is swapped.

    ``item="feature"`` numbers GeoJSON features instead of lines in the message.
    """
    lat_a, lon_a = lat.to_numpy(float), lon.to_numpy(float)
    bad = ~in_france(lat_a, lon_a)
    if not bad.any():
        return
    pos = int(np.flatnonzero(bad)[0])
    la, lo = lat_a[pos], lon_a[pos]
    num = pos + 1 + header_lines
    line = num if item == "line" else None
    where = "" if item == "line" else f"{item} {num}: "
    if abs(la) > 90:
        raise DataError(path, f"{where}latitude {la:g} outside [-90, 90]: latitude and longitude "
                        "swapped?", column=lat_col, line=line)
    if in_france(np.array([lo]), np.array([la]))[0]:
        raise DataError(path, f"{where}latitude and longitude are swapped ({la:g}, {lo:g})",
                        column=lat_col, line=line)
    col = lat_col if not any(b[0] <= la <= b[1] for b in FRANCE_BOXES.values()) else lon_col
    raise DataError(path, f"{where}({la:g}, {lo:g}) is outside France (mainland, Corsica, "
                    "overseas departments): wrong CRS or garbled coordinates",
                    column=col, line=line)


class Irep(Source):
    """IREP facilities declaring pollutant releases, 2021 (points, WGS84).

    Category ``irep_facility``; extra columns ``name``, ``water_stations`` and
    ``air_stations`` (comma-separated station ids, empty when none) and their counts
    ``n_water_stations``, ``n_air_stations``. ``zone_code`` is empty: the feature stage joins
    points to communes spatially.

    Examples
    --------
    >>> pts = Irep().load()
    >>> len(pts)
    9831
    """

    name = "irep"
    producer = "Ministère de la Transition écologique (Géorisques)"
    dataset = "IREP - registre des émissions polluantes: établissements"
    kind = "points"
    level = "point"
    files = {2021: "environment/irep_industrial_sites_2021.csv"}
    cog_years = {2021: None}
    coverage = Coverage("point", 8000, "9,831 establishments in 2021")

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        import shapely

        path = self.path(vintage)
        text = read_text(path)
        _check_fields(text, path)
        raw = read_csv(path, sep=",", header=None, names=_FIELDS, text=text)
        ids = raw["establishment_id"].str.strip()
        _first_bad(ids.str.fullmatch(r"\d{5,12}"), path, "establishment_id", ids,
                   "invalid establishment id (expected digits)")
        check_unique(ids, path=path, column="establishment_id")
        coords = {c: strict_number(raw[c], path=path, column=c, decimal_comma=False, header_lines=0)
                  for c in ("latitude", "longitude")}
        check_france_lonlat(coords["latitude"], coords["longitude"], path=path,
                            lat_col="latitude", lon_col="longitude", header_lines=0)
        stations = {}
        for col in ("water_stations", "air_stations"):
            cell = raw[col].str.strip()
            _first_bad(cell.str.fullmatch(r"\{[^{}]*\}"), path, col, cell,
                       "station list is not of the form {id,id,...}")
            inner = cell.str[1:-1].str.replace(" ", "", regex=False)
            stations[col] = inner
            stations[f"n_{col}"] = inner.map(lambda s: len(s.split(",")) if s else 0)
        return pd.DataFrame({
            "point_id": ids,
            "category": "irep_facility",
            "period": vintage,
            "zone_code": pd.Series(None, index=raw.index, dtype=object),
            "geometry": shapely.points(
                coords["longitude"].to_numpy(), coords["latitude"].to_numpy()
            ),
            "name": raw["name"].str.strip(),
            **stations,
        })


def _check_fields(text: str, path) -> None:
    """The first line must split into the six fields of the official format."""
    first = next((ln for ln in text.splitlines() if ln.strip()), None)
    if first is None:
        return  # read_csv reports the empty file
    fields = next(csv.reader(io.StringIO(first)))
    if len(fields) >= len(_FIELDS):
        return
    for other in (";", "\t", "|"):
        if other in first:
            shown = "tab" if other == "\t" else repr(other)
            raise DataError(path, f"wrong separator: line 1 is split by {shown} but the official "
                            "format uses ','", line=1)
    raise DataError(path, f"line 1 has {len(fields)} fields, the official format has "
                    f"{len(_FIELDS)} (id, name, latitude, longitude, water and air stations)",
                    line=1)


def _first_bad(ok: pd.Series, path, column: str, values: pd.Series, problem: str) -> None:
    ok = ok.fillna(False).to_numpy(bool)
    if not ok.all():
        pos = int(np.flatnonzero(~ok)[0])
        raise DataError(path, f"{problem}: {values.iloc[pos]!r}", column=column, line=pos + 1)
