"""France services adapters on the two 2020 GeoJSON snapshots and malformed variants."""

import json

import pytest

from territoria.errors import DataError
from territoria.features.sources.france_services import FranceServices, FranceServicesFebruary2020

OCT = "anct/anct_france_services_2020-10.geojson"
FEB = "anct/anct_france_services_2020-02.geojson"


@pytest.fixture(scope="module")
def october():
    return FranceServices().load()


@pytest.fixture(scope="module")
def february():
    return FranceServicesFebruary2020().load()


def test_october_saint_denis_and_schema(october):
    assert len(october) == 908 and october.point_id.is_unique
    assert str(october.crs) == "EPSG:4326" and set(october.period) == {2020}
    # MATRICULE 668, insee_com 93066, LATITUDE 48.94259, LONGITUDE 2.381631
    sd = october[october.zone_code == "93066"].iloc[0]
    assert sd.point_id == "fs-668" and sd["name"] == "Saint-Denis"
    assert (sd.geometry.x, sd.geometry.y) == (2.381631, 48.94259)
    # categorie: 42 'Antenne' + 10 'Antenne itinerante'; ITINERANCE 'Oui' 53 times
    assert october.antenna.sum() == 52 and october.itinerant.sum() == 53


def test_truncated_corsican_codes_left_to_spatial_join(october):
    # 'insee_com': '2B14' (MOROSAGLIA) and '2B10' (PONTE-LECCIA) lost a digit
    assert october.zone_code.isna().sum() == 2
    assert october.zone_code.dropna().str.fullmatch(r"\d{5}|2[AB]\d{3}").all()


def test_february_axis_order_is_read_as_published(february, october):
    # February geometries are [lat, lon]: [48.94259, 2.381631] for Saint-Denis
    assert len(february) == 534
    sd = february[february.point_id == "fs-668"].iloc[0]
    assert (sd.geometry.x, sd.geometry.y) == (2.381631, 48.94259) and sd.zone_code == "93066"
    # MATRICULE is stable: 533 of the 534 February desks are still listed in October
    assert len(set(february.point_id) & set(october.point_id)) == 533
    assert not february.antenna.any() and february.itinerant.sum() == 19


@pytest.fixture(scope="module")
def small():
    """The first five October features, as a GeoJSON document to alter."""
    from territoria.paths import bundled_data_dir, resolve_data_file
    from territoria.readers import read_text

    doc = json.loads(read_text(resolve_data_file(bundled_data_dir(), OCT)))
    doc["features"] = doc["features"][:5]
    return doc


def _doc(small, edit=None):
    doc = json.loads(json.dumps(small))
    if edit:
        edit(doc)
    return json.dumps(doc)


def _swap(doc, i=2):
    xy = doc["features"][i]["geometry"]["coordinates"]
    xy.reverse()


def test_swapped_coordinates_and_wrong_crs(variant, small):
    with pytest.raises(DataError, match=r"column 'geometry': feature 3: latitude and longitude are swapped"):
        FranceServices(variant(OCT, _doc(small, _swap))).load()

    def lambert(doc):
        doc["features"][1]["geometry"]["coordinates"] = [652469.0, 6862035.0]
    with pytest.raises(DataError, match=r"feature 2: latitude 6.86204e\+06 outside \[-90, 90\]"):
        FranceServices(variant(OCT, _doc(small, lambert))).load()

    def crs(doc):
        doc["crs"]["properties"]["name"] = "urn:ogc:def:crs:EPSG::2154"
    with pytest.raises(DataError, match=r"wrong CRS 'urn:ogc:def:crs:EPSG::2154'"):
        FranceServices(variant(OCT, _doc(small, crs))).load()


def test_february_written_in_lonlat_order_is_an_error(variant, small):
    # the October (lon, lat) geometries are swapped for the February reader
    with pytest.raises(DataError, match="feature 1: latitude and longitude are swapped"):
        FranceServicesFebruary2020(variant(FEB, _doc(small))).load()


def test_missing_property_garbage_and_duplicates(variant, small):
    def rename(doc):
        for f in doc["features"]:
            f["properties"]["code_insee"] = f["properties"].pop("insee_com")
    with pytest.raises(DataError, match=r"anct_france_services_2020-10.geojson: column 'insee_com': missing column"):
        FranceServices(variant(OCT, _doc(small, rename))).load()

    def garbage(doc):
        doc["features"][3]["properties"]["insee_com"] = "Paris"
    with pytest.raises(DataError, match=r"column 'insee_com': feature 4: invalid commune code 'PARIS'"):
        FranceServices(variant(OCT, _doc(small, garbage))).load()

    def text_coord(doc):
        doc["features"][0]["geometry"]["coordinates"] = ["5.82", "46.10"]
    with pytest.raises(DataError, match="feature 1: geometry is not a point with numeric coordinates"):
        FranceServices(variant(OCT, _doc(small, text_coord))).load()

    def dup(doc):
        doc["features"][4]["properties"]["MATRICULE"] = doc["features"][0]["properties"]["MATRICULE"]
    with pytest.raises(DataError, match="column 'MATRICULE': duplicated MATRICULE 1"):
        FranceServices(variant(OCT, _doc(small, dup))).load()


def test_empty_invalid_and_no_features(variant, small):
    with pytest.raises(DataError, match="empty file"):
        FranceServices(variant(OCT, "")).load()
    with pytest.raises(DataError, match="not valid JSON"):
        FranceServices(variant(OCT, _doc(small)[:-40])).load()
    with pytest.raises(DataError, match="header only: the collection has no features"):
        FranceServices(variant(OCT, _doc(small, lambda d: d.update(features=[])))).load()
    with pytest.raises(DataError, match="not a GeoJSON FeatureCollection"):
        FranceServices(variant(OCT, "[1, 2]")).load()
