"""Commune geometries and ANCT display layers: the real files and malformed GeoParquet variants."""

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from territoria.errors import DataError
from territoria.features.sources.geometries import (
    FRANCE_BOXES,
    TOWNHALL_MAX_DISTANCE,
    CommuneGeometries,
    DisplayLayers,
    polygonal_part,
)

REL = "geometries/communes_simplified.parquet"


@pytest.fixture(scope="module")
def adapter():
    return CommuneGeometries()


@pytest.fixture(scope="module")
def communes(adapter):
    return adapter.load()


@pytest.fixture(scope="module")
def raw_sample(data_dir):
    """40 real rows of the file (COM, COMD, ARM), to derive malformed variants from."""
    raw = gpd.read_parquet(data_dir / REL)
    com = raw[(raw["type"] == "COM") & raw.geometry.notna() & raw["mairie_lon"].notna()].head(30)
    other = raw[raw["type"].isin(["COMD", "ARM"]) & raw.geometry.notna()].head(10)
    return pd.concat([com, other]).reset_index(drop=True)


def _write(tmp_path, gdf):
    dest = tmp_path / REL
    dest.parent.mkdir(parents=True, exist_ok=True)
    gdf.to_parquet(dest)
    return tmp_path


# -- the real file ---------------------------------------------------------------------------


def test_shape_columns_and_crs(communes):
    assert isinstance(communes, gpd.GeoDataFrame)
    assert communes.crs.to_epsg() == 4326
    assert list(communes.columns) == [
        "zone_code",
        "zone_type",
        "name",
        "population",
        "townhall_lon",
        "townhall_lat",
        "townhall_imputed",
        "geometry",
    ]
    # COM only by default: one row per current commune (COG 2026 less the overseas collectivities)
    assert len(communes) == 34875
    assert communes.zone_type.eq("COM").all()
    assert communes.zone_code.is_unique


def test_published_values(communes):
    denain = communes.set_index("zone_code").loc["59172"]
    assert denain["name"] == "Denain"
    assert denain.geometry.contains(shapely.Point(denain.townhall_lon, denain.townhall_lat))
    # Saint-Denis absorbed Pierrefitte-sur-Seine (93059) on 1 January 2025
    assert "93066" in set(communes.zone_code) and "93059" not in set(communes.zone_code)


def test_missing_geometries_kept_and_counted(adapter, communes):
    # 135 rows of the file have no geometry (8 communes, 93 delegated communes, 34 Marseille sectors)
    assert adapter.stats["file_rows"] == 37530
    assert adapter.stats["file_missing_geometry"] == 135
    assert adapter.stats["missing_geometry"] == 8 == communes.geometry.isna().sum()
    assert "12218" in set(communes.zone_code[communes.geometry.isna()])  # Conques-en-Rouergue
    assert any("8 rows without geometry" in p for p in adapter.problems)


def test_all_returned_geometries_valid_and_polygonal(communes):
    geoms = communes.geometry[communes.geometry.notna()]
    assert shapely.is_valid(geoms.to_numpy()).all()
    assert set(geoms.geom_type) <= {"Polygon", "MultiPolygon"}


def test_townhalls_missing_or_wrong_are_replaced(adapter, communes):
    c = communes.set_index("zone_code")
    # Vincey (88513): the file gives its latitude as longitude too (48.34, 48.34)
    assert c.loc["88513", "townhall_imputed"]
    assert c.loc["88513", "townhall_lon"] == pytest.approx(6.3, abs=0.2)
    # Sainte-Anne (97128): longitude sign lost (61.4 instead of -61.4)
    assert c.loc["97128", "townhall_lon"] < -61
    assert adapter.stats["townhall_wrong"] > 300 and adapter.stats["townhall_missing"] == 50
    located = communes[communes.geometry.notna()]
    pts = shapely.points(located.townhall_lon.to_numpy(), located.townhall_lat.to_numpy())
    assert (shapely.distance(pts, located.geometry.to_numpy()) <= TOWNHALL_MAX_DISTANCE).all()
    # neither town hall nor polygon: coordinates unknown, not invented
    assert communes.townhall_lon.isna().sum() == adapter.stats["townhall_unknown"] == 5


def test_arrondissements_on_request():
    geo = CommuneGeometries(include_arm=True).load()
    assert set(geo.zone_type) == {"COM", "ARM"}
    assert {"75101", "13201", "69381"} <= set(geo.zone_code)
    with pytest.raises(ValueError, match="unknown commune types"):
        CommuneGeometries(types=("SRM",))


# -- malformed variants ----------------------------------------------------------------------


def test_invalid_polygon_repaired(tmp_path, raw_sample):
    bad = raw_sample.copy()
    bowtie = shapely.Polygon([(5.0, 46.0), (5.1, 46.1), (5.1, 46.0), (5.0, 46.1), (5.0, 46.0)])
    bad.loc[0, "geometry"] = bowtie
    assert not bowtie.is_valid
    adapter = CommuneGeometries(_write(tmp_path, bad))
    geo = adapter.load()
    fixed = geo.set_index("zone_code").loc[bad.loc[0, "code"], "geometry"]
    assert fixed.is_valid and fixed.geom_type in ("Polygon", "MultiPolygon")
    assert fixed.area == pytest.approx(bowtie.buffer(0).area + 0.005, rel=0.6)
    assert adapter.stats["repaired_geometry"] == 1
    assert polygonal_part(shapely.LineString([(0, 0), (1, 1)])) is None


def test_wrong_crs_lambert93(tmp_path, raw_sample):
    with pytest.raises(DataError, match=r"communes_simplified.parquet: CRS is EPSG:2154 \(metres"):
        CommuneGeometries(_write(tmp_path, raw_sample.to_crs(2154))).load()


def test_metres_declared_as_wgs84(tmp_path, raw_sample):
    lambert = raw_sample.to_crs(2154).set_crs(4326, allow_override=True)
    with pytest.raises(DataError, match="not longitude/latitude degrees.*Lambert-93"):
        CommuneGeometries(_write(tmp_path, lambert)).load()


def test_swapped_coordinates(tmp_path, raw_sample):
    swapped = raw_sample.copy()
    swapped["geometry"] = shapely.transform(swapped.geometry.to_numpy(), lambda xy: xy[:, ::-1])
    with pytest.raises(DataError, match="longitude and latitude appear swapped"):
        CommuneGeometries(_write(tmp_path, swapped)).load()


def test_swapped_townhalls(tmp_path, raw_sample):
    swapped = raw_sample.copy()
    swapped[["mairie_lon", "mairie_lat"]] = swapped[["mairie_lat", "mairie_lon"]].to_numpy()
    with pytest.raises(
        DataError, match="column 'mairie_lon': town-hall longitude and latitude appear swapped"
    ):
        CommuneGeometries(_write(tmp_path, swapped)).load()


def test_one_wrong_townhall_is_imputed(tmp_path, raw_sample):
    one = raw_sample.copy()
    one.loc[3, "mairie_lon"] = -one.loc[3, "mairie_lon"]  # sign lost, as in the real file
    geo = CommuneGeometries(_write(tmp_path, one)).load().set_index("zone_code")
    row = geo.loc[one.loc[3, "code"]]
    assert row.townhall_imputed and row.geometry.contains(
        shapely.Point(row.townhall_lon, row.townhall_lat)
    )


def test_empty_file_and_no_rows(tmp_path, raw_sample):
    with pytest.raises(DataError, match="empty file: no rows"):
        CommuneGeometries(_write(tmp_path, raw_sample.iloc[0:0])).load()
    (tmp_path / REL).write_bytes(b"")
    with pytest.raises(DataError, match=r"empty file \(0 bytes\)"):
        CommuneGeometries(tmp_path).load()
    (tmp_path / REL).write_text("code;type\n01001;COM\n")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        CommuneGeometries(tmp_path).load()


def test_missing_geometry_column(tmp_path, raw_sample):
    dest = tmp_path / REL
    dest.parent.mkdir(parents=True)
    pd.DataFrame(raw_sample.drop(columns="geometry")).to_parquet(dest)
    with pytest.raises(DataError, match="column 'geometry': no geometry column"):
        CommuneGeometries(tmp_path).load()


def test_missing_column_and_duplicated_code(tmp_path, raw_sample):
    with pytest.raises(DataError, match=r"column 'nom': missing column"):
        CommuneGeometries(_write(tmp_path, raw_sample.rename(columns={"nom": "libelle"}))).load()
    dup = pd.concat([raw_sample, raw_sample.iloc[[0]]], ignore_index=True)
    with pytest.raises(DataError, match=f"duplicated code '{raw_sample.loc[0, 'code']} COM'"):
        CommuneGeometries(_write(tmp_path, dup)).load()


def test_no_rows_of_requested_type(tmp_path, raw_sample):
    with pytest.raises(DataError, match="no rows of type COMA"):
        CommuneGeometries(_write(tmp_path, raw_sample), types=("COMA",)).load()


# -- display layers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def display():
    return DisplayLayers()


def test_display_layers(display):
    deps, epci, regs = display.departements(), display.epci(), display.regions()
    assert len(deps) == 101 and len(regs) == 18
    assert len(epci) == 1255 and epci.code.is_unique  # pieces cut by department are dissolved
    assert deps.set_index("code").loc["59", "name"] == "Nord"
    assert list(epci.columns) == ["code", "name", "departement", "region", "geometry"]
    assert all(g.crs.to_epsg() == 4326 for g in (deps, epci, regs))
    assert "never" in DisplayLayers.__doc__ and "distances" in DisplayLayers.__doc__


def test_display_drom_are_moved(display):
    guadeloupe = display.departements().set_index("code").loc["971", "geometry"].centroid
    x0, x1, y0, y1 = FRANCE_BOXES["guadeloupe"]
    assert not (x0 <= guadeloupe.x <= x1 and y0 <= guadeloupe.y <= y1)
    assert -10 < guadeloupe.x < 10 and 40 < guadeloupe.y < 52  # next to the mainland


def test_display_check_and_errors(display, tmp_path):
    reports = display.check()
    assert [r.ok for r in reports] == [True, True, True]
    assert [r.zones for r in reports] == [101, 1255, 18]
    with pytest.raises(DataError, match="no layer 'communes'"):
        display.layer("communes")
    bad = tmp_path / "geometries" / "anct_regions_drom_repositioned.geojson"
    bad.parent.mkdir(parents=True)
    bad.write_text("")
    with pytest.raises(DataError, match="anct_regions_drom_repositioned.geojson: empty file"):
        DisplayLayers(tmp_path).regions()
    bad.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", '
        '"properties": {"insee_reg": "11", "lib_reg": "IDF"}, "geometry": '
        '{"type": "Point", "coordinates": [48.85, 2.35]}}]}'
    )
    with pytest.raises(DataError, match="swapped"):
        DisplayLayers(tmp_path).regions()
    assert np.isfinite(FRANCE_BOXES["metro"]).all()
