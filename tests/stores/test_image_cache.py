"""stores.image_cache: layout, ledger, resume compatibility, failures, units for parallel writers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from stores.errors import FormatVersionError, ProvenanceMismatchError, StoreError
from stores.image_cache import ImageCache

PROV = {"resolution": 8, "preprocess": {"preset": "model", "resize": "pad"}, "dataset": {"spec": "x.csv"}}


def _ids(n):
    return [f"img{i:03d}" for i in range(n)]


@pytest.fixture
def cache(tmp_path):
    labels = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0], [np.nan, 1]], dtype=np.float32)
    return ImageCache.create(
        tmp_path / "c.zarr", ids=_ids(5), resolution=8, provenance=PROV, labels=labels, label_names=["a", "b"],
        split=["train", "train", "val", "test", ""], metadata={"age": [30.0, 41.0, np.nan, 50.0, 60.0],
                                                               "sex": ["F", "M", None, "F", "M"]},
        unit_rows=2,
    )


def test_create_describes_itself(cache, tmp_path):
    doc = json.loads((tmp_path / "c.zarr" / "zarr.json").read_text())["attributes"]
    assert doc["embedkit_image_cache"]["format_version"] == 1
    assert doc["provenance"] == PROV and len(doc["fingerprint"]) == 64
    assert ImageCache.is_cache(tmp_path / "c.zarr") and not ImageCache.is_cache(tmp_path)
    assert cache.n_rows == 5 and cache.resolution == 8 and cache.n_units == 3
    assert [cache.unit_slice(u) for u in range(3)] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert list(cache.ids) == _ids(5)
    np.testing.assert_array_equal(cache.labels[[0, 2]], [[1, 0], [1, 1]])
    assert np.isnan(cache.labels[1, 1]) and cache.label_names == ["a", "b"]
    assert list(cache.split) == ["train", "train", "val", "test", ""]
    assert cache.metadata_names == ["age", "sex"] and list(cache.metadata("sex")) == ["F", "M", "", "F", "M"]
    assert cache.metadata("nope") is None
    assert not cache.filled.any() and cache.pending_units() == [0, 1, 2]


def test_write_unit_ledger_and_failures(cache):
    imgs = np.arange(2 * 64, dtype=np.uint8).reshape(2, 8, 8)
    cache.write_unit(1, {"images": imgs}, failures={3: "DecodeError: truncated\nfile"})
    assert cache.done_units().tolist() == [False, True, False]
    assert cache.filled.tolist() == [False, False, True, False, False]
    assert cache.failures() == {"img003": "DecodeError: truncated file"}
    np.testing.assert_array_equal(cache.read(slice(2, 3))[0], imgs[0])
    assert not cache.read(slice(3, 4)).any()  # a failed row stays empty
    assert cache.pending_units() == [0, 2]
    # Ranks split the pending units without overlap.
    assert sorted(cache.pending_units(0, 2) + cache.pending_units(1, 2)) == [0, 2]
    assert set(cache.pending_units(0, 2)).isdisjoint(cache.pending_units(1, 2))


def test_write_unit_rejects_bad_input(cache, tmp_path):
    with pytest.raises(StoreError, match="shape"):
        cache.write_unit(0, {"images": np.zeros((3, 8, 8), np.uint8)})
    with pytest.raises(StoreError, match="uint8"):
        cache.write_unit(0, {"images": np.zeros((2, 8, 8), np.float32)})
    with pytest.raises(StoreError, match="outside unit"):
        cache.write_unit(0, {"images": np.zeros((2, 8, 8), np.uint8)}, failures={4: "x"})
    with pytest.raises(StoreError, match="read-only"):
        ImageCache.open(tmp_path / "c.zarr").write_unit(0, {"images": np.zeros((2, 8, 8), np.uint8)})


def test_open_or_create_resumes_and_refuses_mismatch(cache, tmp_path):
    cache.write_unit(0, {"images": np.ones((2, 8, 8), np.uint8)})
    again = ImageCache.open_or_create(tmp_path / "c.zarr", ids=_ids(5), resolution=8, provenance=PROV, unit_rows=2)
    assert again.pending_units() == [1, 2]
    other = dict(PROV, preprocess={"preset": "paper", "resize": "stretch"})
    with pytest.raises(ProvenanceMismatchError, match="preprocess"):
        ImageCache.open_or_create(tmp_path / "c.zarr", ids=_ids(5), resolution=8, provenance=other)
    with pytest.raises(ProvenanceMismatchError, match="resolution"):
        ImageCache.open_or_create(tmp_path / "c.zarr", ids=_ids(5), resolution=8, provenance=dict(PROV, resolution=16))
    with pytest.raises(ProvenanceMismatchError, match="ids"):
        ImageCache.open_or_create(tmp_path / "c.zarr", ids=_ids(4), resolution=8, provenance=PROV)


def test_create_validates(tmp_path):
    with pytest.raises(StoreError, match="unique"):
        ImageCache.create(tmp_path / "a.zarr", ids=["x", "x"], resolution=8, provenance=PROV)
    with pytest.raises(StoreError, match="multiple"):
        ImageCache.create(tmp_path / "b.zarr", ids=_ids(3), resolution=8, provenance=PROV, unit_rows=3,
                          images_per_chunk=2)
    ImageCache.create(tmp_path / "c.zarr", ids=_ids(3), resolution=8, provenance=PROV)
    with pytest.raises(StoreError, match="already exists"):
        ImageCache.create(tmp_path / "c.zarr", ids=_ids(3), resolution=8, provenance=PROV)
    with pytest.raises(FileNotFoundError):
        ImageCache.open(tmp_path / "missing.zarr")


def test_unknown_format_version_is_rejected(cache, tmp_path):
    meta = tmp_path / "c.zarr" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["embedkit_image_cache"]["format_version"] = 99
    meta.write_text(json.dumps(doc))
    with pytest.raises(FormatVersionError, match="99"):
        ImageCache.open(tmp_path / "c.zarr")


def test_finalize_records_counts(cache):
    for u in range(cache.n_units):
        sl = cache.unit_slice(u)
        cache.write_unit(u, {"images": np.full((sl.stop - sl.start, 8, 8), 9, np.uint8)},
                         ok=np.array([True] * (sl.stop - sl.start)))
    cache.finalize()
    reopened = ImageCache.open(cache.path)
    info = reopened._group.attrs["embedkit_image_cache"]
    assert info["complete"] and info["n_filled"] == 5 and info["n_failed"] == 0
    assert (reopened.read(slice(0, 5)) == 9).all()
