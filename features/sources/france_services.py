"""ANCT France services: one-stop public-service desks (points with their commune code).

Two GeoJSON snapshots of 2020 are published, with different schemas:

* February 2020 (534 desks, the first labelled ones): ``MATRICULE`` as a float, ``COMMUNE``,
  ``LABELLISATION``; its point geometries are written ``[latitude, longitude]``, against the
  GeoJSON rule (``[longitude, latitude]``, which the declared CRS84 also implies): the adapter
  reads them in that order, and any point that is not in France that way is an error;
* October 2020 (908 desks): ``MATRICULE`` as an integer, ``FORMAT_FS`` (labelled desk or
  ``Antenne``), ``categorie`` (``FS``, ``FS itinerante``, ``Antenne``, ``Antenne itinerante``),
  geometries in the GeoJSON order. Two Corsican desks carry truncated commune codes (``2B14``,
  ``2B10``, both at Ponte-Leccia, Morosaglia): their ``zone_code`` is left empty, to be
  filled by the spatial join of the feature stage.

Both snapshots belong to 2020. :class:`FranceServices` reads the October one (the complete
network of 2020, period 2020); :class:`FranceServicesFebruary2020` reads the February one, for
the roll-out only. Loading both into one table would count every early desk twice.
"""

from __future__ import annotations

import json
import re
from typing import ClassVar

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source
from territoria.features.sources.irep import check_france_lonlat
from territoria.readers import check_columns, commune_codes, read_text

_WGS84 = {"urn:ogc:def:crs:ogc:1.3:crs84", "epsg:4326", "urn:ogc:def:crs:epsg::4326", "crs84"}
_REQUIRED = ["MATRICULE", "lib_france_services", "insee_com"]
#: Corsican codes that lost a digit (``2B14``): not repairable, left to the spatial join.
_TRUNCATED_CORSICA = re.compile(r"^2[AB]\d{1,2}$")


class FranceServices(Source):
    """France services desks, October 2020 (points, WGS84).

    Category ``france_services``; ``zone_code`` is the INSEE commune code (COG 2020); extra
    columns ``name``, ``antenna`` (a secondary desk attached to a main one) and ``itinerant``
    (a bus serving several places from this base).

    Examples
    --------
    >>> pts = FranceServices().load()
    >>> pts[pts.zone_code == "93066"].name.tolist()  # Saint-Denis
    ['Saint-Denis']
    """

    name = "france_services"
    producer = "ANCT"
    dataset = "France services: espaces labellisés"
    kind = "points"
    level = "point"
    files = {2020: "anct/anct_france_services_2020-10.geojson"}
    cog_years = {2020: 2020}
    coverage = Coverage("point", 800, "908 desks in October 2020")
    #: Order of the two coordinates in the geometries of each vintage.
    axis_order: ClassVar[dict[int, str]] = {2020: "lonlat"}

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        import shapely

        path = self.path(vintage)
        props, coords = _features(path)
        check_columns(props, _REQUIRED, path)
        n = len(props)
        mat = pd.to_numeric(props["MATRICULE"], errors="coerce")
        bad = (mat.isna() | (mat != mat.round())).to_numpy()
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise DataError(path, f"feature {pos + 1}: invalid MATRICULE "
                            f"{props['MATRICULE'].iloc[pos]!r}", column="MATRICULE")
        ids = "fs-" + mat.astype("int64").astype(str)
        dup = ids.duplicated()
        if dup.any():
            raise DataError(path, f"duplicated MATRICULE {mat[dup].iloc[0]:g} ({int(dup.sum())} "
                            "duplicates)", column="MATRICULE")
        a, b = coords[:, 0], coords[:, 1]
        lon, lat = (a, b) if self.axis_order[vintage] == "lonlat" else (b, a)
        check_france_lonlat(pd.Series(lat), pd.Series(lon), path=path, lat_col="geometry",
                            lon_col="geometry", header_lines=0, item="feature")
        zone = _zone_codes(props["insee_com"], path)
        category = props["categorie"] if "categorie" in props else pd.Series("", index=props.index)
        fmt = props["FORMAT_FS"] if "FORMAT_FS" in props else pd.Series("", index=props.index)
        roaming = props["ITINERANCE"] if "ITINERANCE" in props else pd.Series("", index=props.index)
        category, fmt, roaming = (s.fillna("").astype(str).str.strip().str.lower()
                                  for s in (category, fmt, roaming))
        return pd.DataFrame({
            "point_id": ids,
            "category": "france_services",
            "period": vintage,
            "zone_code": zone,
            "geometry": shapely.points(lon, lat),
            "name": props["lib_france_services"].fillna("").astype(str).str.strip(),
            "antenna": (fmt == "antenne") | category.str.startswith("antenne"),
            "itinerant": (roaming == "oui") | category.str.endswith("itinerante"),
        }, index=pd.RangeIndex(n))


class FranceServicesFebruary2020(FranceServices):
    """France services desks, February 2020: the first 534 labelled desks (roll-out only).

    Its geometries are ``[latitude, longitude]`` (see the module notes).

    Examples
    --------
    >>> len(FranceServicesFebruary2020().load())
    534
    """

    name = "france_services_2020_02"
    dataset = "France services: espaces labellisés (février 2020)"
    files = {2020: "anct/anct_france_services_2020-02.geojson"}
    coverage = Coverage("point", 450, "534 desks in February 2020")
    axis_order = {2020: "latlon"}


def _features(path) -> tuple[pd.DataFrame, np.ndarray]:
    """Properties (one row per feature) and point coordinates of a GeoJSON FeatureCollection."""
    text = read_text(path)
    if not text.strip():
        raise DataError(path, "empty file: no header and no rows")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg})", line=exc.lineno) from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise DataError(path, "not a GeoJSON FeatureCollection")
    crs = ((doc.get("crs") or {}).get("properties") or {}).get("name")
    if crs is not None and str(crs).lower() not in _WGS84:
        raise DataError(path, f"wrong CRS {crs!r}: the official files are in WGS84 (CRS84)",
                        column="geometry")
    feats = doc.get("features")
    if not isinstance(feats, list) or not feats:
        raise DataError(path, "header only: the collection has no features")
    props, coords = [], np.empty((len(feats), 2))
    for i, f in enumerate(feats):
        geom = (f or {}).get("geometry") or {}
        xy = geom.get("coordinates")
        if geom.get("type") != "Point" or not isinstance(xy, list) or len(xy) < 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in xy[:2]
        ):
            raise DataError(path, f"feature {i + 1}: geometry is not a point with numeric "
                            f"coordinates ({str(geom)[:80]})", column="geometry")
        coords[i] = xy[:2]
        props.append((f or {}).get("properties") or {})
    return pd.DataFrame(props), coords


def _zone_codes(values: pd.Series, path) -> pd.Series:
    """Commune codes normalised; truncated Corsican codes become empty (spatial join later)."""
    text = values.fillna("").astype(str).str.strip().str.upper()
    truncated = text.str.match(_TRUNCATED_CORSICA)
    try:
        codes = commune_codes(text.mask(truncated, "00000"), path=path, column="insee_com",
                              header_lines=0)
    except DataError as exc:
        raise DataError(path, f"feature {exc.line}: {exc.problem}", column=exc.column) from None
    return codes.astype(object).mask(truncated, None)
