"""Format version 1 still opens: the committed fixtures (written by the version-1 code) read back array by array."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stores import FORMAT_VERSION, EmbeddingStore, ImageCache
from stores import _provenance as prov_mod
from stores.errors import StoreError

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_v1", FIXTURES / "make_v1.py")
V1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(V1)


@pytest.fixture
def v1_store(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURES / "v1_store", tmp_path / "v1_store"))


@pytest.fixture
def v1_cache(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURES / "v1_cache", tmp_path / "v1_cache"))


def _check_columns(obj, age) -> None:
    assert obj.ids.tolist() == V1.ids()
    np.testing.assert_array_equal(obj.labels, V1.labels())  # NaN where NaN
    assert obj.label_names == V1.LABEL_NAMES
    assert obj.split.tolist() == V1.SPLIT
    assert obj.metadata_names == ["age", "patient_id"]
    assert obj.metadata("patient_id").tolist() == V1.metadata()["patient_id"]
    np.testing.assert_array_equal(obj.metadata("age"), age)
    assert obj.filled.tolist() == [True, True, True, False, False]
    assert obj.failures() == {f"img{V1.FAILED_ROW}": V1.FAILURE}
    assert obj.failure_reasons(slice(2, 4)).tolist() == ["", V1.FAILURE]
    assert obj.done_units().tolist() == [True, True, False] and obj.pending_units() == [2]
    assert obj.format_version == 1 and obj.n_rows == V1.N and obj.n_units == 3


def test_format_version_is_2():
    assert FORMAT_VERSION == 2


def test_v1_store_reads_every_array(v1_store):
    st = EmbeddingStore.open(v1_store)
    _check_columns(st, np.array([30, 31, np.nan, 50, 60], np.float32))
    assert st.views == V1.VIEWS and st.dtype == "float16"
    for view in V1.VIEWS:
        x = st.load(view)
        np.testing.assert_array_equal(x[:3], V1.features(view)[:3])
        assert np.isnan(x[3:]).all()  # the failed row and the pending unit read as NaN
        idx, batch = next(st.iter_batches(view, batch_size=V1.N, rows=np.array([2, 0])))
        np.testing.assert_array_equal(batch, V1.features(view)[[2, 0]])
    np.testing.assert_array_equal(st.load("cls+mean_patch", split="train"),
                                  np.concatenate([V1.features("cls"), V1.features("mean_patch")], 1)[:2])
    assert st.provenance == V1.PROVENANCE
    assert st.fingerprint == prov_mod.fingerprint(V1.PROVENANCE, V1.ids())  # the v1 rule is the v2 rule
    assert st.layout["summary"]["complete"] is False and st.layout["summary"]["n_filled"] == 3
    report = st.verify(deep=True)
    assert report["ok"], report["problems"]
    assert report["format_version"] == 1 and report["n_done_units"] == 2
    assert st.summary()["format_version"] == 1


def test_v1_store_resumes_in_place(v1_store):
    kw = dict(ids=V1.ids(), views=V1.VIEWS, provenance=V1.PROVENANCE, labels=V1.labels(),
              label_names=V1.LABEL_NAMES, split=V1.SPLIT, metadata=V1.metadata(), rows_per_chunk=2)
    with EmbeddingStore.open_or_create(v1_store, **kw) as st:
        assert st.pending_units() == [2]
        st.write_unit(2, {v: V1.features(v)[4:] for v in V1.VIEWS})
        st.finalize()
    st = EmbeddingStore.open(v1_store)
    assert st.done_units().all() and st.format_version == 1 and st.verify()["ok"]
    np.testing.assert_array_equal(st.load("cls")[4], V1.features("cls")[4])


def test_v1_cache_reads_every_array(v1_cache):
    cache = ImageCache.open(v1_cache)
    # The version-1 cache stored a numeric column holding None as strings (version 2: float32 with NaN).
    _check_columns(cache, np.array(["30.0", "31.0", "", "50.0", "60.0"], dtype=object))
    assert cache.resolution == 4 and cache.images_per_chunk == 1 and cache.mode == "r"
    imgs = cache.read(slice(0, V1.N))
    np.testing.assert_array_equal(imgs[:3], V1.images()[:3])
    assert not imgs[3:].any()  # the failed row and the pending unit stay empty
    assert cache.provenance == V1.CACHE_PROVENANCE and len(cache.fingerprint) == 64
    summary = json.loads((v1_cache / "zarr.json").read_text())["attributes"]["embedkit_image_cache"]
    assert summary["n_filled"] == 3 and summary["complete"] is False  # v1 kept the counts at top level
    report = cache.verify()
    assert report["ok"], report["problems"]
    assert ImageCache.is_cache(v1_cache)


def test_v1_cache_is_not_resumed_but_can_be_recreated(v1_cache):
    kw = dict(ids=V1.ids(), resolution=4, provenance=V1.CACHE_PROVENANCE, unit_rows=2)
    with pytest.raises(StoreError, match="format version 1.*re-create it") as err:
        ImageCache.open(v1_cache, "r+")
    assert "\n" not in str(err.value)
    with pytest.raises(StoreError, match="re-create it"):
        ImageCache.open_or_create(v1_cache, **kw)
    assert ImageCache.open(v1_cache).done_units().tolist() == [True, True, False]  # untouched
    with ImageCache.create(v1_cache, overwrite=True, **kw) as cache:
        assert cache.format_version == 2 and cache.pending_units() == [0, 1, 2]
        for u in cache.pending_units():
            cache.write_unit(u, {"images": V1.images()[cache.unit_slice(u)]})
    cache = ImageCache.open(v1_cache)
    np.testing.assert_array_equal(cache.read(slice(0, V1.N)), V1.images())
    assert sorted(p.name for p in v1_cache.iterdir()) == [
        "checksums", "failures", "filled", "ids", "images", "ledger", "zarr.json"]
    assert cache.verify()["ok"]
