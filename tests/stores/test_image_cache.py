"""stores.image_cache: layout, ledger, resume compatibility, failures, units for parallel writers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from stores.errors import FormatVersionError, ProvenanceMismatchError, StoreError, StoreLockedError
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
    assert doc["embedkit_image_cache"]["format_version"] == 2
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
    cache.close()
    again = ImageCache.open_or_create(tmp_path / "c.zarr", ids=_ids(5), resolution=8, provenance=PROV, unit_rows=2)
    assert again.pending_units() == [1, 2]
    again.close()
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
    info = reopened.layout["summary"]
    assert info["complete"] and info["n_filled"] == 5 and info["n_failed"] == 0 and info["n_done_units"] == 3
    assert (reopened.read(slice(0, 5)) == 9).all()


def test_second_writer_is_refused_until_the_first_closes(cache, tmp_path):
    path = tmp_path / "c.zarr"
    cache.write_unit(0, {"images": np.ones((2, 8, 8), np.uint8)})
    me = f"pid {os.getpid()}"
    with pytest.raises(StoreLockedError, match=f"Image cache '.*' is being written by {me} on host"):
        ImageCache.open(path, "r+")
    with pytest.raises(StoreLockedError, match=me):
        ImageCache.open_or_create(path, ids=_ids(5), resolution=8, provenance=PROV, unit_rows=2)
    with pytest.raises(StoreLockedError, match=me):  # and it deletes nothing
        ImageCache.create(path, ids=_ids(3), resolution=8, provenance=PROV, overwrite=True)
    reader = ImageCache.open(path)  # readers take no lock
    assert reader.done_units().tolist() == [True, False, False]
    with pytest.raises(StoreError, match="read-only"):
        reader.write_unit(1, {"images": np.ones((2, 8, 8), np.uint8)})

    cache.close()
    with pytest.raises(StoreError, match="closed"):
        cache.write_unit(1, {"images": np.ones((2, 8, 8), np.uint8)})
    with ImageCache.open(path, "r+") as again:  # after close, a new writer gets in and resumes
        assert again.pending_units() == [1, 2]
        again.write_unit(1, {"images": np.full((2, 8, 8), 5, np.uint8)})
    resumed = ImageCache.open_or_create(path, ids=_ids(5), resolution=8, provenance=PROV, unit_rows=2)
    assert resumed.pending_units() == [2]
    resumed.close()
    replaced = ImageCache.create(path, ids=_ids(3), resolution=8, provenance=PROV, overwrite=True)
    assert replaced.n_rows == 3 and not replaced.done_units().any()


def test_ranks_of_one_run_share_the_lock(tmp_path):
    path = tmp_path / "c.zarr"
    rank0 = ImageCache.create(path, ids=_ids(5), resolution=8, provenance=PROV, unit_rows=2, rank=0, world_size=2,
                              run_id="job-1")
    rank1 = ImageCache.open(path, "r+", rank=1, world_size=2, run_id="job-1")
    assert rank0.pending_units() == [0, 2] and rank1.pending_units() == [1]
    rank1.write_unit(1, {"images": np.ones((2, 8, 8), np.uint8)})
    with pytest.raises(StoreError, match="belongs to rank 0"):
        rank1.write_unit(0, {"images": np.ones((2, 8, 8), np.uint8)})
    with pytest.raises(StoreLockedError, match="held by another run"):
        ImageCache.open(path, "r+", rank=1, world_size=2, run_id="job-2")
    with pytest.raises(StoreLockedError, match="being written by"):  # a lone writer cannot join
        ImageCache.open(path, "r+")
    with pytest.raises(StoreError, match="Only rank 0 finalizes"):
        rank1.finalize()
    with pytest.raises(StoreError, match="Only rank 0 creates"):
        ImageCache.create(tmp_path / "d.zarr", ids=_ids(2), resolution=8, provenance=PROV, rank=1, world_size=2)
    rank1.close()
    rank0.finalize()
    rank0.close()
    ImageCache.open(path, "r+").close()


_HOLDER = r"""
import sys
from stores.image_cache import ImageCache
cache = ImageCache.open(sys.argv[1], "r+")
print("locked", flush=True)
sys.stdin.read()  # hold the lock until killed
"""


def test_sigkilled_writer_releases_the_lock(cache, tmp_path):
    path = tmp_path / "c.zarr"
    cache.close()
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=f"pid {child.pid} "):
            ImageCache.open(path, "r+")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    ImageCache.open(path, "r+").close()  # the kernel dropped the killed writer's lock


def test_a_forked_child_dropping_the_cache_keeps_the_parents_lock(cache, tmp_path):
    pid = os.fork()
    if pid == 0:  # a loader worker that closes its copy of the writer (as garbage collection would)
        cache.close()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()} "):
        ImageCache.open(tmp_path / "c.zarr", "r+")
    cache.write_unit(0, {"images": np.ones((2, 8, 8), np.uint8)})  # still the writer


def test_plain_xarray_reads_the_cache(cache, tmp_path):
    xr = pytest.importorskip("xarray")
    cache.write_unit(0, {"images": np.full((2, 8, 8), 7, dtype=np.uint8)})
    cache.close()
    ds = xr.open_zarr(str(tmp_path / "c.zarr"), consolidated=False)
    assert ds["images"].dims == ("row", "y", "x") and ds["labels"].dims == ("row", "label")
    assert int(ds["images"][1, 3, 3]) == 7 and bool(ds["filled"][0]) and not bool(ds["filled"][4])
