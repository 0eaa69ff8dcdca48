"""The parsed-source cache: reused while inputs are unchanged, rebuilt when a file changes."""

import pandas as pd

from territoria.features.sources.neet import Neet
from territoria.pipelines.cache import cache_key, load_cached

NEET = "social/neet_communes_2008_2013_2018.csv"


def test_cache_reused_then_invalidated(tmp_path, copy_bundled, raw_text):
    data = copy_bundled(NEET)
    src = Neet(data)
    cache = tmp_path / "cache"
    first = load_cached(src, None, cache)
    entries = list(cache.glob("neet-*.parquet"))
    assert len(entries) == 1
    pd.testing.assert_frame_equal(load_cached(src, None, cache), first)

    # a new vintage of the file (one value changed) gets a new key; the stale entry goes
    key = cache_key(src, src.vintages)
    text = raw_text(NEET).replace("01001;L'Abergement-Clémenciat;2018;18,90", "01001;L'Abergement-Clémenciat;2018;19,90")
    for p in (data / "social").glob("neet_*"):
        p.unlink()
    (data / NEET).write_text(text, encoding="utf-8")
    assert cache_key(src, src.vintages) != key
    second = load_cached(src, None, cache)
    row = second[(second.zone_code == "01001") & (second.period == 2018)]
    assert row.value.iloc[0] == 19.9
    assert len(list(cache.glob("neet-*.parquet"))) == 1


def test_damaged_entry_is_rebuilt(tmp_path, copy_bundled):
    src = Neet(copy_bundled(NEET))
    cache = tmp_path / "cache"
    good = load_cached(src, None, cache)
    entry = next(cache.glob("neet-*.parquet"))
    entry.write_bytes(b"not parquet")
    pd.testing.assert_frame_equal(load_cached(src, None, cache), good)


def test_parallel_parsing_matches_one_by_one_in_request_order(tmp_path):
    from territoria.features.sources.ips import IpsColleges
    from territoria.pipelines.cache import load_all

    requests = {"neet": (Neet(), None), "ips_colleges": (IpsColleges(), None)}
    parallel = load_all(requests, tmp_path / "cache", workers=2)
    assert list(parallel) == ["neet", "ips_colleges"]
    assert len(list((tmp_path / "cache").glob("*.parquet"))) == 2  # the workers fill the cache
    for name, (src, vintages) in requests.items():
        pd.testing.assert_frame_equal(parallel[name], src.load(vintages))


def test_read_only_cache_is_used_and_never_written(tmp_path, copy_bundled):
    """The dashboard and `territoria scenario` read a finished run's parsed sources: a
    matching entry is used, a missing or damaged one is parsed without touching the folder."""
    from territoria.features.sources.ips import IpsColleges
    from territoria.pipelines.cache import cache_path, load_all

    src = Neet(copy_bundled(NEET))
    cache = tmp_path / "run" / ".cache"
    good = load_cached(src, None, cache)
    entry = cache_path(src, None, cache)
    # a stored entry that differs from a fresh parse proves which one was read
    marked = good.assign(value=good["value"] + 1000.0)
    marked.to_parquet(entry, index=False)
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    got = load_all({"neet": (src, None), "ips_colleges": (IpsColleges(), None)}, cache, workers=1, write=False)
    pd.testing.assert_frame_equal(got["neet"], marked)
    pd.testing.assert_frame_equal(got["ips_colleges"], IpsColleges().load(None))
    entry.write_bytes(b"not parquet")
    before[entry.name] = entry.stat().st_mtime_ns
    pd.testing.assert_frame_equal(load_cached(src, None, cache, write=False), good)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before
    assert len(list(cache.iterdir())) == 1  # no entry added for ips_colleges


def test_result_cache_writes_in_the_background_and_reads_back_read_only(tmp_path):
    import numpy as np
    import pytest

    from territoria.pipelines.cache import ResultCache

    cache = ResultCache(tmp_path)
    key = cache.key("model text", pd.DataFrame({"x": [1.0, 2.0]}))
    calls = []
    out = cache.get("shap", key, lambda: calls.append(1) or {"phi": np.arange(4.0)})
    with pytest.raises(ValueError, match="read-only"):
        out["phi"][0] = 99.0  # an entry being written must not change under the writer
    cache.wait()
    assert [p.name for p in tmp_path.glob("*.npz")] == [f"shap-{key}.npz"]

    again = ResultCache(tmp_path)
    back = again.get("shap", key, lambda: calls.append(1) or {"phi": np.zeros(4)})
    assert calls == [1] and again.hits == 1
    assert back["phi"].tolist() == [0.0, 1.0, 2.0, 3.0] and not back["phi"].flags.writeable
    again.prune()  # only the entry asked for is kept
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_result_cache_write_error_is_raised_by_wait(tmp_path, monkeypatch):
    import numpy as np
    import pytest

    from territoria.errors import OutputError
    from territoria.pipelines import cache as cache_module

    def disk_full(path, arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module, "_save_npz", disk_full)
    cache = cache_module.ResultCache(tmp_path)
    assert cache.get("shap", "k", lambda: {"phi": np.ones(3)})["phi"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(OutputError, match="shap-k.npz: no space left on the device"):
        cache.prune()
    assert not list(tmp_path.iterdir())  # no half-written entry


def test_result_cache_serves_an_entry_still_being_written(tmp_path, monkeypatch):
    import threading

    import numpy as np

    from territoria.pipelines import cache as cache_module

    release, save = threading.Event(), cache_module._save_npz

    def slow_save(path, arrays):
        release.wait(10)
        save(path, arrays)

    monkeypatch.setattr(cache_module, "_save_npz", slow_save)
    cache = cache_module.ResultCache(tmp_path)
    calls = []
    first = cache.get("folds", "k", lambda: calls.append(1) or {"folds": np.arange(3.0)})
    second = cache.get("folds", "k", lambda: calls.append(1) or {"folds": np.zeros(3)})
    assert calls == [1] and second["folds"] is first["folds"]
    release.set()
    cache.wait()
    assert cache_module.ResultCache(tmp_path).get("folds", "k", lambda: {})["folds"].tolist() == [0.0, 1.0, 2.0]
