"""The tidy explanation rows and the plain-language levers (mechanics on small synthetic
matrices; the real run's explanations are checked in test_prioritise_pipeline)."""

import numpy as np
import pandas as pd
import pytest

from territoria.models.explain import largest_first, tidy_contributions
from territoria.models.levers import lever_sentences


@pytest.mark.parametrize("seed", range(5))
def test_largest_first_is_the_stable_sort_even_with_ties(seed):
    rng = np.random.default_rng(seed)
    # few distinct values, so that ties straddle the cut in many rows (zeros above all)
    A = rng.integers(0, 4, size=(300, 40)).astype(float) * rng.integers(0, 2, size=(300, 40))
    A[:100] = rng.random((100, 40))  # and rows without ties
    for top in (0, 1, 5, 20, 39):
        expected = np.argsort(-A, axis=1, kind="stable")[:, :top]
        assert np.array_equal(largest_first(A, top), expected)
    assert np.array_equal(largest_first(A, 40), np.argsort(-A, axis=1, kind="stable"))


def test_tidy_rows_keep_the_largest_contributions_in_order_and_add_up():
    rng = np.random.default_rng(0)
    zones = pd.Index(["59350", "01001", "2A004", "75056"], name="zone_code")
    cols = [f"f{i}" for i in range(6)]
    C = pd.DataFrame(rng.normal(size=(4, 6)), index=zones, columns=cols)
    C.iloc[1, [2, 4]] = 5.0  # a tie: f2 before f4
    C.iloc[3, :3] = 0.0  # features the trees never use
    X = pd.DataFrame(rng.normal(size=(4, 6)), index=zones, columns=cols)
    meta = pd.DataFrame({"feature": cols, "indicator": cols, "domain": ["economic"] * 3 + ["residential"] * 3,
                         "is_lever": [True, False] * 3, "transform": "level", "label_en": cols, "label_fr": cols})
    base, output = np.full(4, 0.5), 0.5 + C.sum(axis=1).to_numpy()
    tidy = tidy_contributions("m", C, X, base, output, meta, top=2)

    assert list(tidy["zone_code"].drop_duplicates()) == sorted(zones)  # zones in code order
    assert (tidy.dtypes[["zone_code", "model", "feature", "domain"]] == "str").all()
    assert len(tidy) == 4 * 3 and set(tidy["model"]) == {"m"}
    z = tidy[tidy["zone_code"] == "01001"]
    assert list(z["feature"]) == ["f2", "f4", "(other features)"]
    assert list(z["domain"]) == ["economic", "residential", "other"]
    assert list(z["is_lever"]) == [True, True, False]
    assert z["feature_value"].iloc[0] == X.loc["01001", "f2"] and np.isnan(z["feature_value"].iloc[2])
    for code, rows in tidy.groupby("zone_code"):
        kept = rows["contribution"].to_numpy()[:2]
        assert np.all(np.abs(kept[0]) >= np.abs(kept[1]))
        assert set(rows["feature"].iloc[:2]) == set(C.loc[code].abs().nlargest(2).index)
        assert rows["contribution"].sum() + rows["base_value"].iloc[0] == pytest.approx(rows["model_output"].iloc[0])
    full = tidy_contributions("m", C, X, base, output, meta, top=None)
    assert len(full) == 4 * 6 and list(full.loc[full["zone_code"] == "59350", "feature"]) == cols


@pytest.mark.parametrize("unit, value, lang, expected", [
    ("%", 35.2, "fr", "Taux (35,2\u00a0% en 2018, 2e décile le plus bas du département) augmente le score de 0,12"),
    ("EUR", 21450.0, "fr", "Taux (21\u202f450 € en 2018, 2e décile le plus bas du département) augmente le score de 0,12"),
    ("km", 12.46, "fr", "Taux (12,5 km en 2018, 2e décile le plus bas du département) augmente le score de 0,12"),
    ("", 1234.0, "fr", "Taux (1\u202f234 en 2018, 2e décile le plus bas du département) augmente le score de 0,12"),
    ("%", 35.2, "en", "Taux (35.2% in 2018, 2nd lowest decile of its department) raises the score by 0.12"),
    ("EUR", 21450.0, "en", "Taux (21,450 EUR in 2018, 2nd lowest decile of its department) raises the score by 0.12"),
    ("", 150.3, "en", "Taux (150 in 2018, 2nd lowest decile of its department) raises the score by 0.12"),
])
def test_lever_sentences_format_figures_as_each_language_writes_them(unit, value, lang, expected):
    assert lever_sentences("Taux", [value], unit, 2018, [2.0], [0.123], lang, from_top=False) == [expected]


def test_lever_sentences_leave_out_what_is_unknown():
    nan = float("nan")
    assert lever_sentences("Rate", [nan, 4.0, nan], "%", nan, [1.0, nan, nan], [-0.5, 0.25, 1.0], "en") == [
        "Rate (1st highest decile of its department) lowers the score by 0.50",
        "Rate (4.0%) raises the score by 0.25",
        "Rate raises the score by 1.00",
    ]
    assert lever_sentences("Taux", [3.0], "%", None, [1.0], [0.5], "fr") == [
        "Taux (3,0\u00a0%, 1er décile le plus élevé du département) augmente le score de 0,50"]


def test_shap_figures_are_the_same_images_for_the_same_inputs(tmp_path):
    """shap shuffles and jitters the points: seeded, two drawings are byte-identical, and
    numpy's global generator is left as the caller had it."""
    from territoria.models.shap_figures import plot_global

    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(400, 4)), columns=["a", "b", "c", "d"])
    phi = pd.DataFrame(X.to_numpy() * [1.0, 0.5, 0.2, 0.1], columns=X.columns)
    np.random.seed(11)
    expected_next = np.random.get_state()[1].copy()
    images = []
    for k in range(2):
        paths = plot_global("demo", phi, X, tmp_path / str(k), hints=pd.DataFrame(
            {"feature": ["a", "b", "c"], "interacts_most_with": ["b", "a", "a"]}))
        images.append([p.read_bytes() for p in paths])
    assert len(images[0]) == 4 and images[0] == images[1]
    assert (np.random.get_state()[1] == expected_next).all()
