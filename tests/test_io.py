"""Outputs of territoria/io.py: rounded CSVs (the values ``%.6g`` gives, written by Arrow) and
Parquet files with or without dictionaries for their floats."""

import io

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from shapely.geometry import Point

from territoria.io import round_significant, write_csv_rounded, write_parquet


def _edge_values(rng) -> np.ndarray:
    powers = 10.0 ** np.arange(-30, 30)
    return np.concatenate([
        rng.normal(size=20_000), rng.lognormal(0, 8, 20_000), rng.uniform(-1e-3, 1e-3, 20_000),
        rng.integers(0, 3_000_000, 20_000).astype(float),  # counts over a million lose digits
        np.round(rng.normal(size=20_000), 7),  # decimal ties at the seventh digit
        np.arange(1, 20_000) * 5e-7,
        powers, powers * (1 - 1e-16), powers * (1 + 2e-16),  # either side of a decade
        [999999.5, 9999995.0, 0.1234565, 1234565.0, 2.5e-7, 5e-324, 1.7976931348623157e308, -0.0, np.inf, -np.inf],
    ])


def test_round_significant_gives_the_values_printf_writes():
    x = _edge_values(np.random.default_rng(0))
    expected = np.array([float("%.6g" % v) for v in x])
    got = round_significant(x, 6)
    assert np.array_equal(got, expected)
    assert np.signbit(round_significant([-0.0]))[0]
    assert np.isnan(round_significant([np.nan, 1.0])[0])
    assert np.array_equal(round_significant([1 / 3, 2 / 3], 3), [0.333, 0.667])


def test_rounded_csv_reads_back_as_the_printf_csv(tmp_path):
    rng = np.random.default_rng(1)
    n = 500
    df = pd.DataFrame({
        "zone_code": pd.array([f"{i:05d}" for i in range(n)], dtype="string"),
        "zone_name": ["Saint-Denis, \"la\" ville\nbis" if i % 7 == 0 else None if i % 11 == 0 else f"z{i}"
                      for i in range(n)],
        "population": rng.integers(0, 3_000_000, n),
        "income": rng.integers(0, 3_000_000, n) + 0.5,
        "score": np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(0, 5, n)),
        "small": rng.normal(scale=1e-5, size=n),
        "flag": rng.random(n) < 0.5,
        "mixed": [i if i % 3 else f"v{i}" for i in range(n)],  # Python objects of several types
    })
    path = write_csv_rounded(df, tmp_path / "t.csv")
    reference = df.to_csv(index=False, lineterminator="\n", float_format="%.6g")
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "zone_code,zone_name,population,income,score,small,flag,mixed"
    dtype = {"zone_code": str, "zone_name": str, "mixed": str}
    got = pd.read_csv(path, dtype=dtype)
    pd.testing.assert_frame_equal(got, pd.read_csv(io.StringIO(reference), dtype=dtype), check_exact=True)
    assert got["score"].isna().sum() == df["score"].isna().sum()


def test_rounded_csv_keeps_whole_numbers_whole(tmp_path):
    # a count held as a float for its missing values: Paris's population, not 2.13311e+06
    df = pd.DataFrame({"population": [2_133_111.0, np.nan, 512.0], "rate": [12.3456789, 0.5, 1e-7]})
    got = pd.read_csv(write_csv_rounded(df, tmp_path / "t.csv"))
    assert got["population"].iloc[0] == 2_133_111 and np.isnan(got["population"].iloc[1])
    assert got["rate"].tolist() == [12.3457, 0.5, 1e-7]
    assert not list(tmp_path.glob(".t.csv.*"))  # written atomically, no temporary left


def test_rounded_csv_keeps_repeated_names_and_categories(tmp_path):
    df = pd.DataFrame([[1 / 3, 2.0, "a"], [np.nan, 0.5, "b"]], columns=["x", "x", "kind"])
    df["kind"] = df["kind"].astype("category")
    text = write_csv_rounded(df, tmp_path / "t.csv").read_text(encoding="utf-8")
    assert text == 'x,x,kind\n0.333333,2,"a"\n,0.5,"b"\n'


def _dictionary_encoded(path) -> dict[str, bool]:
    """Whether each column of a Parquet file has dictionary-encoded pages."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    return {meta.column(i).path_in_schema: "RLE_DICTIONARY" in str(meta.column(i).encodings)
            for i in range(meta.num_columns)}


def test_parquet_without_dictionary_encoded_reads_back_the_same(tmp_path):
    rng = np.random.default_rng(0)
    n = 2_000
    df = pd.DataFrame({
        "zone_code": pd.array(rng.choice(["01001", "2A004", "97411"], n), dtype="string[pyarrow]"),
        "period": rng.integers(2014, 2022, n), "flag": rng.random(n) < 0.5,
        "value": rng.normal(size=n), "share": pd.array(np.where(rng.random(n) < 0.1, np.nan, rng.random(n)),
                                                       dtype="Float64"),
    })
    plain = write_parquet(df, tmp_path / "plain.parquet", float_dictionary=False)
    default = write_parquet(df, tmp_path / "default.parquet")
    for path in (plain, default):
        pd.testing.assert_frame_equal(pd.read_parquet(path), df)
    # (Parquet has no dictionaries of booleans)
    assert _dictionary_encoded(plain) == {"zone_code": True, "period": True, "flag": False,
                                          "value": False, "share": False}
    # Parquet's default, which the panel keeps
    assert _dictionary_encoded(default) == {**_dictionary_encoded(plain), "value": True, "share": True}


def test_geoparquet_without_dictionary_encoded_keeps_its_geometry(tmp_path):
    gdf = gpd.GeoDataFrame({"zone_code": ["a", "b"], "value": [0.5, 1.5]},
                           geometry=[Point(0, 0), Point(1, 1)], crs="EPSG:2154")
    path = write_parquet(gdf, tmp_path / "zones.parquet", float_dictionary=False)
    back = gpd.read_parquet(path)
    assert back.crs == gdf.crs and back.geometry.equals(gdf.geometry)
    assert _dictionary_encoded(path) == {"zone_code": True, "value": False, "geometry": False}
