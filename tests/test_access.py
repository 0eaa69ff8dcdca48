"""Access features: great-circle distances, nearest facility, counts and decay around town halls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from territoria.errors import DataError
from territoria.features.access import (
    count_within,
    distance_to_nearest,
    distance_weighted_count,
    haversine_km,
    territory_of,
)

PARIS_HDV = (2.3522, 48.8566)
LILLE_HDV = (3.0700, 50.6310)


def test_haversine_known_distances():
    assert haversine_km(*PARIS_HDV, *LILLE_HDV) == pytest.approx(204, abs=3)
    assert haversine_km(0.0, 0.0, 0.0, 1.0) == pytest.approx(111.195, abs=0.01)
    assert haversine_km(*PARIS_HDV, *PARIS_HDV) == 0.0
    # vectorised, symmetric, NaN-propagating
    d = haversine_km(np.array([2.3522, np.nan]), np.array([48.8566, 0.0]), 3.07, 50.631)
    assert d.shape == (2,) and np.isnan(d[1])
    back = haversine_km(*LILLE_HDV, *PARIS_HDV)
    assert back == pytest.approx(haversine_km(*PARIS_HDV, *LILLE_HDV))


def test_territory_of():
    codes = pd.Series(["59172", "2A004", "2B033", "97101", "97411", "97611"], index=list("abcdef"))
    t = territory_of(codes)
    assert t.tolist() == ["metro", "metro", "metro", "971", "974", "976"]
    assert list(t.index) == list("abcdef")


def origins_along_meridian(n: int = 5, step_deg: float = 0.01) -> pd.DataFrame:
    return pd.DataFrame(
        {"zone_code": [f"z{i}" for i in range(n)], "lon": 0.0, "lat": np.arange(n) * step_deg}
    )


def test_distance_to_nearest_matches_brute_force():
    rng = np.random.default_rng(1)
    o = pd.DataFrame(
        {
            "zone_code": [f"o{i}" for i in range(200)],
            "lon": rng.uniform(-4, 8, 200),
            "lat": rng.uniform(42, 51, 200),
        }
    )
    t = pd.DataFrame({"lon": rng.uniform(-4, 8, 50), "lat": rng.uniform(42, 51, 50)})
    got = distance_to_nearest(o, t)
    brute = haversine_km(
        o["lon"].to_numpy()[:, None], o["lat"].to_numpy()[:, None], t["lon"], t["lat"]
    ).min(axis=1)
    np.testing.assert_allclose(got.to_numpy(), brute, rtol=1e-9, atol=1e-6)
    assert got.name == "distance_km" and list(got.index) == list(o["zone_code"])


def test_zero_distance_when_commune_has_the_facility():
    o = pd.DataFrame(
        {
            "zone_code": ["paris", "lille"],
            "lon": [PARIS_HDV[0], LILLE_HDV[0]],
            "lat": [PARIS_HDV[1], LILLE_HDV[1]],
        }
    )
    # targets = town halls of the communes hosting a post office
    hosts = o[o["zone_code"] == "lille"][["lon", "lat"]]
    d = distance_to_nearest(o, hosts)
    assert d["lille"] == 0.0 and d["paris"] == pytest.approx(204, abs=3)
    # targets = facility points 3 km from the town hall, tagged with their commune
    desk = pd.DataFrame(
        {"lon": [LILLE_HDV[0]], "lat": [LILLE_HDV[1] + 0.027], "zone_code": ["lille"]}
    )
    assert distance_to_nearest(o, desk)["lille"] == 0.0
    apart = distance_to_nearest(o, desk, same_zone_zero=False)
    assert apart["lille"] == pytest.approx(3.0, abs=0.05)


def test_group_restriction_and_missing_group_target():
    o = pd.DataFrame(
        {
            "zone_code": ["59172", "97411", "97302"],
            "lon": [3.39, 55.45, -52.3],
            "lat": [50.33, -20.88, 4.9],
        }
    )
    o["territory"] = territory_of(o["zone_code"]).to_numpy()
    t = pd.DataFrame(
        {"lon": [LILLE_HDV[0], 55.48], "lat": [LILLE_HDV[1], -21.0], "territory": ["metro", "974"]}
    )
    d = distance_to_nearest(o, t, group="territory")
    assert d["59172"] == pytest.approx(haversine_km(3.39, 50.33, *LILLE_HDV))
    assert d["97411"] < 20
    assert np.isnan(d["97302"])  # no target in Guyane: missing, not 7,000 km
    ungrouped = distance_to_nearest(o, t)
    assert ungrouped["97302"] > 6000
    counts = count_within(o, t, 50.0, group="territory")
    assert counts.tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(DataError, match="territory"):
        distance_to_nearest(o, t.drop(columns="territory"), group="territory")


def test_count_within_synthetic():
    o = origins_along_meridian()  # 0, 1.11, 2.22, 3.34, 4.45 km north of (0, 0)
    t = pd.DataFrame({"lon": [0.0, 0.0], "lat": [0.0, 0.04]})
    c1 = count_within(o, t, 1.0)
    assert c1.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]  # only the targets at the town halls
    c2 = count_within(o, t, 2.5)
    assert c2.tolist() == [1.0, 1.0, 2.0, 1.0, 1.0]  # z2 is 2.22 km from both targets
    assert c2.name == "n_within_2.5km"


def test_distance_weighted_count_decay_and_weights():
    o = pd.DataFrame({"zone_code": ["A", "B"], "lon": [0.0, np.nan], "lat": [0.0, np.nan]})
    t = pd.DataFrame(
        {"lon": 0.0, "lat": [0.0, 0.03, 0.07, 0.5], "tonnes": [10.0, 1.0, np.nan, 100.0]}
    )
    d = haversine_km(0.0, 0.0, 0.0, t["lat"].to_numpy())  # 0, 3.34, 7.78, 55.6 km
    out = distance_weighted_count(o, t, radii=(2, 5, 10), decay_km=2.0)
    assert list(out.columns) == ["n_within_2km", "n_within_5km", "n_within_10km", "decay_weighted"]
    assert out.loc["A"].tolist()[:3] == [1.0, 2.0, 3.0]
    assert out.loc["A", "decay_weighted"] == pytest.approx(np.exp(-d[:3] / 2.0).sum())
    assert out.loc["B"].isna().all()  # no town hall
    weighted = distance_weighted_count(o, t, radii=(5,), decay_km=None, weight="tonnes")
    assert list(weighted.columns) == ["n_within_5km"]
    assert weighted.loc["A", "n_within_5km"] == 11.0  # missing weight counts 0
    with pytest.raises(DataError, match="radii"):
        distance_weighted_count(o, t, radii=(0,))
    with pytest.raises(DataError, match="nope"):
        distance_weighted_count(o, t, weight="nope")


def test_no_target_gives_nan_distance_and_zero_counts():
    o = origins_along_meridian(2)
    empty = pd.DataFrame({"lon": [np.nan], "lat": [np.nan]})
    assert distance_to_nearest(o, empty).isna().all()
    assert (count_within(o, empty, 5.0) == 0).all()


@pytest.mark.parametrize(
    "origins, match",
    [
        (pd.DataFrame({"zone_code": ["a"], "lon": [600000.0], "lat": [6e6]}), "WGS84"),
        (pd.DataFrame({"zone_code": ["a"], "lat": [0.0]}), "lon"),
        (pd.DataFrame({"zone_code": ["a", "a"], "lon": [0.0, 1.0], "lat": [0.0, 1.0]}), "dupl"),
        (pd.DataFrame({"code": ["a"], "lon": [0.0], "lat": [0.0]}), "zone_code"),
    ],
)
def test_bad_origins_raise(origins, match):
    with pytest.raises(DataError, match=match):
        distance_to_nearest(origins, pd.DataFrame({"lon": [0.0], "lat": [0.0]}))


def test_real_town_halls(data_dir):
    """Nearest prefecture town hall for communes of Nord and La Réunion, within territory."""
    gdf = pd.read_parquet(
        data_dir / "geometries" / "communes_simplified.parquet",
        columns=["code", "type", "mairie_lon", "mairie_lat"],
    )
    wanted = gdf["code"].str[:2].eq("59") | gdf["code"].str[:3].eq("974")
    gdf = gdf[(gdf["type"] == "COM") & wanted]
    o = pd.DataFrame({"zone_code": gdf["code"], "lon": gdf["mairie_lon"], "lat": gdf["mairie_lat"]})
    o["territory"] = territory_of(o["zone_code"]).to_numpy()
    prefectures = o[o["zone_code"].isin(["59350", "97411"])]  # Lille, Saint-Denis
    d = distance_to_nearest(o, prefectures, group="territory").dropna()
    assert d["59350"] == 0.0 and d["97411"] == 0.0
    xy = o.set_index("zone_code")[["lon", "lat"]]
    assert d["59172"] == pytest.approx(haversine_km(*xy.loc["59172"], *xy.loc["59350"]))
    assert 35 < d["59172"] < 55  # Denain - Lille
    assert d[d.index.str.startswith("974")].max() < 80  # La Réunion is ~70 km across
    assert d[d.index.str.startswith("59")].max() < 130
