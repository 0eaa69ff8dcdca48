"""IREP adapter on the real header-less file and malformed variants."""

import pytest

from territoria.errors import DataError
from territoria.features.sources.irep import Irep, in_france

F = "environment/irep_industrial_sites_2021.csv"


@pytest.fixture(scope="module")
def irep():
    return Irep().load()


def test_real_points(irep):
    assert len(irep) == 9831 and irep.point_id.is_unique
    assert str(irep.crs) == "EPSG:4326"
    # line 1: '5519671,SCEA DES MENHIRS,48.4384298,-2.007299,{},{}'
    first = irep[irep.point_id == "5519671"].iloc[0]
    assert first["name"] == "SCEA DES MENHIRS"
    assert (first.geometry.x, first.geometry.y) == (-2.007299, 48.4384298)
    assert first.n_water_stations == 0 and first.air_stations == ""
    # line 5: a brickworks near 9 air-quality stations, '{01000274,...,01046000}'
    brick = irep[irep.point_id == "56200649"].iloc[0]
    assert brick.n_air_stations == 9 and brick.air_stations.startswith("01000274,01036000")
    # La Réunion (line 384, 'PALAIS DE LA VIANDE', -20.9682716, 55.287043) is in France
    assert irep[irep.point_id == "59700404"].geometry.y.iloc[0] == pytest.approx(-20.9682716)
    assert set(irep.category) == {"irep_facility"} and irep.zone_code.isna().all()


def test_in_france_boxes():
    assert in_france([48.85, 41.9, 16.25, -21.1, -12.8, 4.9], [2.35, 8.7, -61.6, 55.5, 45.15, -52.3]).all()
    assert not in_france([2.35, 0.0], [48.85, 0.0]).any()


def _lines(raw_text, n=8):
    return raw_text(F).splitlines()[:n]


def test_swapped_and_out_of_range_coordinates(variant, raw_text):
    lines = _lines(raw_text)
    lines[2] = "54902442,BOISSELIER Olivier (EARL),-0.8855198,47.5215888,{},{}"
    with pytest.raises(DataError, match=r"line 3: column 'latitude': latitude and longitude are swapped"):
        Irep(variant(F, "\n".join(lines))).load()
    lines = _lines(raw_text)
    lines[1] = "52902265,EARL DU MANOIR,147.88,-4.288567,{},{}"
    with pytest.raises(DataError, match=r"line 2: column 'latitude': latitude 147.88 outside \[-90, 90\]"):
        Irep(variant(F, "\n".join(lines))).load()
    lines = _lines(raw_text)
    lines[3] = "5402816,EARL LES FERMES,6751108,739168,{},{}"  # Lambert-93 metres, not degrees
    with pytest.raises(DataError, match=r"line 4: column 'latitude': latitude 6.75111e\+06 outside"):
        Irep(variant(F, "\n".join(lines))).load()
    lines = _lines(raw_text)
    lines[3] = "5402816,EARL LES FERMES,0.0,0.0,{},{}"
    with pytest.raises(DataError, match=r"line 4: column 'latitude': \(0, 0\) is outside France"):
        Irep(variant(F, "\n".join(lines))).load()


def test_garbage_and_duplicates(variant, raw_text):
    lines = _lines(raw_text)
    lines[4] = lines[4].replace("50.274131", "50,274131")  # decimal comma splits the line
    with pytest.raises(DataError, match=r"line 5"):
        Irep(variant(F, "\n".join(lines))).load()
    lines = _lines(raw_text)
    lines[1] = "52902265,EARL DU MANOIR,N47.88,-4.288567,{},{}"
    with pytest.raises(DataError, match=r"line 2: column 'latitude': non-numeric value 'N47.88'"):
        Irep(variant(F, "\n".join(lines))).load()
    lines = _lines(raw_text)
    with pytest.raises(DataError, match=r"column 'establishment_id': duplicated code '5519671'"):
        Irep(variant(F, "\n".join([*lines, lines[0]]))).load()
    lines = _lines(raw_text)
    lines[1] = lines[1].replace(",{},{}", ",{},FR38003")
    with pytest.raises(DataError, match=r"line 2: column 'air_stations': station list is not of the form"):
        Irep(variant(F, "\n".join(lines))).load()
    lines = _lines(raw_text)
    lines[1] = "EARL,EARL DU MANOIR,47.88,-4.288567,{},{}"
    with pytest.raises(DataError, match=r"line 2: column 'establishment_id': invalid establishment id"):
        Irep(variant(F, "\n".join(lines))).load()


def test_format_errors(variant, raw_text):
    lines = _lines(raw_text)
    with pytest.raises(DataError, match="wrong separator: line 1 is split by ';'"):
        Irep(variant(F, "\n".join(lines).replace(",", ";"))).load()
    with pytest.raises(DataError, match="empty file"):
        Irep(variant(F, "")).load()
    # a header line is not part of the official format
    header = "id,name,latitude,longitude,water,air"
    with pytest.raises(DataError, match=r"line 1: column 'establishment_id': invalid establishment id \(expected digits\): 'id'"):
        Irep(variant(F, "\n".join([header, *lines]))).load()
    with pytest.raises(DataError, match=r"line 1 has 4 fields"):
        Irep(variant(F, "5519671,SCEA DES MENHIRS,48.4384298,-2.007299\n")).load()
