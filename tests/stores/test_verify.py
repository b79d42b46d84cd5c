"""verify() finds missing, truncated and altered feature chunks by unit, and a resume rewrites exactly those units."""
from __future__ import annotations

import numpy as np
import pytest

from stores import EmbeddingStore
from stores.errors import StoreError


def _fill(path, kwargs, unit_feats) -> None:
    with EmbeddingStore.create(path, **kwargs) as st:
        for u in range(st.n_units):
            sl = st.unit_slice(u)
            st.write_unit(u, unit_feats(u, sl.stop - sl.start, st.views))
        st.finalize()


def _chunk(path, view: str, u: int):
    files = sorted((path / "features" / view / "c").glob(f"{u}/*"))
    assert len(files) == 1
    return files[0]


def _damage(path) -> None:
    _chunk(path, "cls", 1).unlink()                                        # deleted
    f = _chunk(path, "mean_patch", 2)
    f.write_bytes(f.read_bytes()[:-7])                                     # truncated
    f = _chunk(path, "cls", 0)
    data = bytearray(f.read_bytes())
    data[100] ^= 0x01                                                      # altered, same size
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "unsharded"])
def test_verify_names_damaged_units_and_repair_requeues_exactly_them(tmp_path, store_kwargs, unit_feats, sharded):
    kwargs = dict(store_kwargs) if sharded else dict(store_kwargs, rows_per_chunk=256, rows_per_shard=None)
    ref, path = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    _fill(ref, kwargs, unit_feats)
    _fill(path, kwargs, unit_feats)
    assert EmbeddingStore.open(path).verify()["ok"]
    _damage(path)

    report = EmbeddingStore.open(path).verify()
    assert not report["ok"] and report["damaged_units"] == [0, 1, 2]
    text = " | ".join(report["problems"])
    assert "unit 1: features/cls chunk file is missing" in text
    assert "unit 2: features/mean_patch chunk file is truncated" in text
    assert "unit 0: features/cls chunk file was altered" in text
    with pytest.raises(StoreError, match="read-only"):
        EmbeddingStore.open(path).verify(repair=True)

    with EmbeddingStore.open(path, "r+") as st:
        assert st.verify(repair=True)["marked_pending"] == [0, 1, 2]
        assert st.pending_units() == [0, 1, 2]
        for u in st.pending_units():  # what a resumed extract does
            sl = st.unit_slice(u)
            st.write_unit(u, unit_feats(u, sl.stop - sl.start, st.views))
    a, b = EmbeddingStore.open(ref), EmbeddingStore.open(path)
    for v in a.views:
        np.testing.assert_array_equal(a.load(v, dtype=None).view(np.uint16), b.load(v, dtype=None).view(np.uint16))
    assert b.verify()["ok"] and b.done_units().all()


def test_resume_requeues_missing_and_truncated_chunks_by_itself(tmp_path, store_kwargs, unit_feats):
    path = tmp_path / "s.zarr"
    _fill(path, store_kwargs, unit_feats)
    _chunk(path, "cls", 3).unlink()
    f = _chunk(path, "mean_patch", 1)
    f.write_bytes(f.read_bytes()[:10])
    with EmbeddingStore.open_or_create(path, **store_kwargs) as st:  # the resume entry point: a stat per chunk
        assert st.pending_units() == [1, 3]


def test_store_without_checksums_still_verifies_sizes(tmp_path, store_kwargs, unit_feats):
    """A store written before checksums existed (no 'checksums' array) opens, verifies and resumes."""
    import shutil

    path = tmp_path / "s.zarr"
    kwargs = dict(store_kwargs, rows_per_chunk=256, rows_per_shard=None)
    _fill(path, kwargs, unit_feats)
    shutil.rmtree(path / "checksums")
    st = EmbeddingStore.open(path)
    assert st.verify()["ok"]
    f = _chunk(path, "cls", 2)
    f.write_bytes(f.read_bytes()[:-2])
    assert EmbeddingStore.open(path).verify()["damaged_units"] == [2]
