"""Kendall's tau-b against a reference sorted once: scipy's values, ties included."""

import numpy as np
import pytest
from scipy import stats

from territoria.models.kendall import KendallReference


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_tau_equals_scipys_with_and_without_ties(decimals):
    rng = np.random.default_rng(7)
    for n in (2, 3, 17, 250, 1001):
        x = rng.normal(size=n)
        y = x + rng.normal(size=n)
        if decimals is not None:  # ties in both vectors, and pairs tied in both
            x, y = np.round(x, decimals), np.round(y, decimals)
        ref = KendallReference(x)
        for other in (y, -y, x, rng.permutation(y)):
            # bit for bit (NaN where scipy gives NaN: two constant values)
            np.testing.assert_equal(ref.tau(other), float(stats.kendalltau(x, other).statistic))


def test_tau_is_nan_where_scipys_is():
    ref = KendallReference(np.array([1.0, 2.0, 3.0]))
    assert np.isnan(ref.tau(np.array([1.0, np.nan, 2.0])))
    assert np.isnan(ref.tau(np.array([4.0, 4.0, 4.0])))  # y constant
    assert np.isnan(KendallReference(np.ones(4)).tau(np.arange(4.0)))  # reference constant


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="finite"):
        KendallReference(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="expected 3 scores"):
        KendallReference(np.arange(3.0)).tau(np.arange(4.0))
