"""The feature stage on all communes of the bundled real data (one build per test session)."""

import json

import numpy as np
import pandas as pd
import pytest

from territoria.features.harmonise import code_mapping, harmonise
from territoria.features.panel import commune_universe
from territoria.features.sources.comparateur import Comparateur
from territoria.features.sources.cog import Cog
from territoria.registry import DOMAINS, load_registry


def test_outputs_written_for_every_commune(feature_build):
    out = feature_build.out_dir
    for name in ("panel.parquet", "features.parquet", "features_meta.csv", "data_report.json"):
        assert (out / name).stat().st_size > 0, name
    features = pd.read_parquet(out / "features.parquet")
    universe = commune_universe(Cog().read_vintage(2026))
    assert set(features.zone_code) == set(universe.code)
    assert features.zone_code.is_unique
    # overseas departments are in, with their own territory
    assert features.zone_code.str.startswith("974").sum() == 24
    report = json.loads((out / "data_report.json").read_text())
    assert report["target_cog"] == 2026 and len(report["files"]) > 40


def test_every_feature_carries_registry_metadata(feature_build):
    reg = load_registry()
    meta = feature_build.meta.set_index("feature")
    feats = [c for c in feature_build.features.columns if c in meta.index]
    id_cols = {"zone_code", "zone_name", "departement", "region", "epci", "zone", "reference_period"}
    assert set(feature_build.features.columns) - id_cols == set(feats)
    for name, row in meta.iterrows():
        ind = reg.indicator(row.indicator)
        assert row.domain == ind.domain in DOMAINS
        assert row.is_lever == ind.lever
    assert meta.loc["unemployment_rate__gap_nbr", "transform"] == "gap_nbr"


def test_denain_published_values_reach_the_features(feature_build):
    f = feature_build.features.set_index("zone_code")
    denain = f.loc["59172"]
    # Filosofi 2021 (latest vintage <= 2021): median 14,890 EUR, poverty rate 43 %
    assert denain.median_income == 14890
    assert denain.poverty_rate == 43
    assert denain.median_income__chg == 14890 - 14320  # 2019 -> 2021
    assert denain.dist_post_office == 0  # Denain has a post office (BPE 2013)
    # BPE closures and openings 2009 -> 2013 are absolute changes of facility counts
    assert "n_post_office__chg" in f.columns and f.n_post_office__chg.dropna().abs().max() < 50
    # population changes are relative (%), between the two latest censuses <= t
    panel = feature_build.panel
    pop = panel[(panel.zone_code == "59172") & (panel.measure == "population")].set_index("period").value
    prev = pop[pop.index < 2021].index.max()
    assert denain.population__chg == pytest.approx((pop[2021] / pop[prev] - 1) * 100)
    gap = denain.unemployment_rate__gap_nbr
    assert gap == pytest.approx(denain.unemployment_rate - denain.unemployment_rate__nbr_mean)


def test_no_leakage_from_later_vintages(feature_build):
    features, meta = feature_build.features_at(2018)
    assert meta.period_to.max() <= 2018
    assert not meta.feature.str.startswith("poverty_rate").any()  # first published for 2019
    f = features.set_index("zone_code")
    # Denain's median income at t = 2018 is the 2018 vintage, not 2019 or 2021
    assert f.loc["59172", "median_income"] == 14030
    assert (features.reference_period == 2018).all()


def test_access_measures_are_reused_between_periods_and_retaken_when_facilities_change(feature_build):
    from territoria.features.build import FeatureSet, add_access, zone_cube

    fb = feature_build

    def access(panel, t, memo):
        fs = FeatureSet(fb.identity.index)
        add_access(fs, zone_cube(panel, t), fb.townhalls, fb.points, load_registry(), fb.params.features, t, memo=memo)
        return fs.frame()

    memo: dict = {}
    at_2016 = access(fb.panel, 2016, memo)
    measured = len(memo)
    assert measured >= 9  # one per facility of conf/parameters.yml
    at_2014 = access(fb.panel, 2014, memo)  # the same BPE vintage (2013), no points file yet
    assert len(memo) == measured
    pd.testing.assert_frame_equal(at_2014, access(fb.panel, 2014, None))
    pd.testing.assert_frame_equal(at_2016, access(fb.panel, 2016, None))

    # a post office opens (BPE 2013) in a commune that had none: its distance is measured again
    panel = fb.panel.copy()
    none = panel.index[(panel["measure"] == "n_post_office") & (panel["period"] == 2013) & (panel["value"] == 0)
                       & (panel["level"] == "commune")]
    row = none[0]
    zone = panel.at[row, "zone_code"]
    assert at_2016.at[zone, "dist_post_office"] > 0
    panel.loc[row, "value"] = 1.0
    opened = access(panel, 2016, memo)
    assert len(memo) == measured + 1
    assert opened.at[zone, "dist_post_office"] == 0
    pd.testing.assert_frame_equal(opened, access(panel, 2016, None))


def test_as_of_stage_keeps_the_earlier_periods_of_later_files(feature_build, tmp_path):
    """``run --as-of 2018`` builds its own panel: periods up to 2018 of every file, including
    the census 2013 and 2018 series of files published later (the comparateur), which the
    stage used to drop with the whole file (25 measures, population and unemployment among
    them). The result is the full panel cut at 2018, and the same features as derived from it."""
    import shutil

    from territoria.pipelines.build_features import run_build_features

    shutil.copytree(feature_build.out_dir / ".cache", tmp_path / ".cache")  # parsed sources, not results
    fb18 = run_build_features(out_dir=tmp_path, as_of=2018)
    full = feature_build.panel[feature_build.panel["period"] <= 2018]
    assert fb18.panel["period"].max() == 2018 and fb18.reference_period == 2018
    assert set(fb18.panel["measure"].unique()) == set(full["measure"].unique())
    assert {"population", "unemployment_rate", "vacancy_rate"} <= set(fb18.panel["measure"].unique())
    key = ["zone_code", "level", "period", "measure", "source"]
    a = fb18.panel.sort_values(key).reset_index(drop=True)
    b = full.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    derived, _ = feature_build.features_at(2018)
    pd.testing.assert_frame_equal(fb18.features.set_index("zone_code").sort_index(),
                                  derived.set_index("zone_code").sort_index(), check_like=True)


def test_iris_rows_know_their_commune(feature_build):
    panel = feature_build.panel
    iris = panel[panel.level == "iris"]
    assert len(iris) > 100_000
    assert iris.parent_commune.notna().mean() > 0.99
    denain_iris = iris[iris.parent_commune == "59172"]
    assert denain_iris.zone_code.str.startswith("59172").all() and len(denain_iris) > 0


def test_released_panel_is_read_back_identical_and_a_rewritten_file_is_refused(feature_build, tmp_path):
    import dataclasses
    import shutil

    from territoria.errors import DataError

    shutil.copy(feature_build.out_dir / "panel.parquet", tmp_path / "panel.parquet")
    fb = dataclasses.replace(feature_build, out_dir=tmp_path)  # shares the frames, not the caller's object
    assert fb.release_panel()
    assert "panel" not in vars(fb) and not fb.release_panel()  # nothing left to free
    pd.testing.assert_frame_equal(fb.panel, feature_build.panel)
    assert fb.release_panel()
    (tmp_path / "panel.parquet").write_bytes(b"another run's panel")
    with pytest.raises(DataError, match="panel.parquet.*rewritten"):
        fb.panel


def test_census_totals_conserved_by_harmonisation():
    census = Comparateur().load()
    res = harmonise(census, code_mapping(Cog().read_vintage(2026)), load_registry(), target_cog=2026)
    assert res.unmapped.empty
    communes = census[census.level == "commune"]  # arrondissements duplicate Paris, Lyon, Marseille
    for var in ("population", "households", "dwellings"):
        for period in (2013, 2018):
            raw = communes[(communes.variable == var) & (communes.period == period)].value.sum()
            out = res.table[(res.table.variable == var) & (res.table.period == period)].value.sum()
            if np.isnan(raw) or raw == 0:
                continue
            assert out == pytest.approx(raw, rel=1e-12), (var, period)


def _pivot_cube(panel: pd.DataFrame, t: int, level: str) -> pd.DataFrame:
    """The zone cube by a plain pivot of the long panel (the reference)."""
    rows = panel[(panel["level"] == level) & (panel["period"] <= t)]
    wide = rows.pivot(index="zone_code", columns=["measure", "period"], values="value").astype(float)
    wide = wide.sort_index().sort_index(axis=1)
    wide.columns = pd.MultiIndex.from_tuples(list(wide.columns), names=["measure", "period"])
    return wide


def test_zone_cube_is_the_pivot_of_the_panel_and_follows_changed_values(feature_build):
    """The cube read from the panel's cached codes is the pivot of the long panel at every
    ``t`` and level, and a value changed in place since is read, not the cached one."""
    from territoria.features.build import zone_cube
    from territoria.features.panel import measure_rows, panel_codes
    from territoria.models.targets import measure_at

    deps = feature_build.identity.index[feature_build.identity["departement"].isin(["59", "2A", "971"])]
    panel = feature_build.panel
    panel = panel[panel["zone_code"].isin(deps) | panel["parent_commune"].isin(deps)].reset_index(drop=True)
    for level, t in (("commune", 2013), ("commune", 2021), ("iris", 2019)):
        cube = zone_cube(panel, t, level)
        ref = _pivot_cube(panel, t, level)
        pd.testing.assert_frame_equal(cube, ref, check_names=False, check_column_type=False, check_index_type=False)
        assert list(cube.index) == sorted(cube.index) and cube.index.name == "zone_code"
    assert panel_codes(panel) is panel_codes(panel)
    rows = measure_rows(panel, "median_income")
    pd.testing.assert_frame_equal(rows, panel[panel["measure"] == "median_income"])
    before = zone_cube(panel, 2021)
    i = int(rows.index[(rows["level"] == "commune") & (rows["period"] == 2021)][0])
    zone = panel.at[i, "zone_code"]
    panel.loc[i, "value"] = -5.0
    assert zone_cube(panel, 2021).at[zone, ("median_income", 2021)] == -5.0 != before.at[zone, ("median_income", 2021)]
    assert measure_at(panel, "median_income", 2021)[zone] == -5.0
