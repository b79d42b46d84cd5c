"""EmbeddingStore: round trip, refusal paths (provenance, format version, lock), reading, plain zarr/xarray."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from stores import FORMAT_VERSION, EmbeddingStore
from stores.errors import FormatVersionError, ProvenanceMismatchError, StoreError, StoreLockedError


def _fill(st: EmbeddingStore, unit_feats, *, fail_rows: dict[int, str] | None = None) -> dict[str, np.ndarray]:
    """Write every pending unit; returns the full float32 arrays that were written."""
    full = {v: np.full((st.n_rows, d), np.nan, np.float32) for v, d in st.views.items()}
    for u in st.pending_units():
        sl = st.unit_slice(u)
        feats = unit_feats(u, sl.stop - sl.start, st.views)
        fails = {r: m for r, m in (fail_rows or {}).items() if sl.start <= r < sl.stop}
        st.write_unit(u, feats, failures=fails)
        for v in feats:
            full[v][sl] = feats[v]
    return full


def _bits(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint16 if x.dtype == np.float16 else np.uint32)


def test_round_trip_every_array_and_provenance(tmp_path, store_kwargs, unit_feats):
    path = tmp_path / "s.zarr"
    with EmbeddingStore.create(path, **store_kwargs) as st:
        assert st.n_units == 4 and st.unit_rows == 256 and st.pending_units() == [0, 1, 2, 3]
        full = _fill(st, unit_feats, fail_rows={5: "DecodeError: truncated file", 600: ""})
        st.finalize()
    st = EmbeddingStore.open(path)
    kw = store_kwargs
    assert st.n_rows == 1000 and st.views == {"cls": 16, "mean_patch": 8} and st.dtype == "float16"
    assert st.ids.tolist() == kw["ids"]
    np.testing.assert_array_equal(st.labels, kw["labels"])  # NaN positions included
    assert st.labels.dtype == np.float32 and st.label_names == kw["label_names"]
    assert st.split.tolist() == kw["split"]
    assert sorted(st.metadata_names) == ["age", "dataset", "patient_id", "sex"]
    assert st.metadata("patient_id").tolist() == kw["metadata"]["patient_id"]
    np.testing.assert_array_equal(st.metadata("age"), np.asarray(kw["metadata"]["age"], np.float32))
    assert st.metadata("study_id") is None
    assert st.provenance == kw["provenance"]
    assert len(st.fingerprint) == 64 and int(st.fingerprint, 16) >= 0
    assert st.failures() == {"img00005": "DecodeError: truncated file", "img00600": "failed"}
    filled = st.filled
    assert filled.sum() == 998 and not filled[5] and not filled[600]
    for v in st.views:
        got = st.load(v, dtype=None)
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got[filled], full[v][filled].astype(np.float16))
        assert np.isnan(got[~filled]).all()  # failed rows read as NaN, never as stale values
    assert st.done_units().all() and st.pending_units() == []
    report = st.verify(deep=True)
    assert report["ok"], report["problems"]
    assert report["n_filled"] == 998 and report["n_failed"] == 2 and report["complete"]
    assert st.layout["summary"]["complete"] is True and st.layout["format_version"] == FORMAT_VERSION


def test_fingerprint_recipe_is_reproducible_from_plain_json(tmp_path, store_kwargs):
    import hashlib

    st = EmbeddingStore.create(tmp_path / "s.zarr", **store_kwargs)
    prov = {k: v for k, v in store_kwargs["provenance"].items() if k != "created"}
    doc = json.dumps({"ids": store_kwargs["ids"], "provenance": prov}, sort_keys=True, separators=(",", ":"),
                     ensure_ascii=True)
    assert st.fingerprint == hashlib.sha256(doc.encode()).hexdigest()
    other = dict(store_kwargs, provenance=dict(store_kwargs["provenance"], created="2030-01-01"), overwrite=True)
    st.close()
    assert EmbeddingStore.create(tmp_path / "s.zarr", **other).fingerprint == st.fingerprint  # 'created' is volatile
    other = dict(store_kwargs, ids=[i + "x" for i in store_kwargs["ids"]], overwrite=True)
    assert EmbeddingStore.create(tmp_path / "t.zarr", **other).fingerprint != st.fingerprint


def test_load_split_mask_concat_and_iter_batches(tmp_path, store_kwargs, unit_feats):
    st = EmbeddingStore.create(tmp_path / "s.zarr", **store_kwargs)
    full = _fill(st, unit_feats)
    ref = np.concatenate([full["cls"], full["mean_patch"]], axis=1).astype(np.float16).astype(np.float32)
    both = st.load("cls+mean_patch")
    assert both.dtype == np.float32 and both.shape == (1000, 24)
    np.testing.assert_array_equal(both, ref)
    split = np.asarray(store_kwargs["split"])
    np.testing.assert_array_equal(st.load("cls+mean_patch", split="test"), ref[split == "test"])
    mask = np.zeros(1000, bool)
    mask[[3, 257, 999]] = True
    np.testing.assert_array_equal(st.load("cls+mean_patch", split="train", mask=mask), ref[[3, 257]])
    seen = [idx for idx, x in st.iter_batches("cls", batch_size=300) if np.array_equal(x, ref[idx, :16])]
    assert np.array_equal(np.concatenate(seen), np.arange(1000))
    rows = np.array([999, 0, 500, 0, 42])
    out = [(idx, x) for idx, x in st.iter_batches("mean_patch+cls", batch_size=2, rows=rows)]
    np.testing.assert_array_equal(np.concatenate([i for i, _ in out]), rows)
    np.testing.assert_array_equal(np.concatenate([x for _, x in out]),
                                  np.concatenate([ref[rows, 16:], ref[rows, :16]], axis=1))
    with pytest.raises(StoreError, match="Unknown view 'patch'"):
        st.load("cls+patch")
    with pytest.raises(StoreError, match="batch_size"):
        next(st.iter_batches("cls", batch_size=0))


def test_write_rows_by_index_fills_ledger_when_units_complete(tmp_path, store_kwargs, unit_feats):
    st = EmbeddingStore.create(tmp_path / "s.zarr", **store_kwargs)
    feats = unit_feats(0, 1000, st.views)
    st.write_rows(0, {v: x[:300] for v, x in feats.items()})  # unit 0 whole, unit 1 partly
    assert st.done_units().tolist() == [True, False, False, False]
    assert st.filled.sum() == 300 and st.pending_units() == [1, 2, 3]
    st.write_rows(300, {v: x[300:] for v, x in feats.items()}, ok=np.arange(700) != 10)
    assert st.done_units().all() and st.failures() == {"img00310": "failed"}
    np.testing.assert_array_equal(st.load("cls")[:300], feats["cls"][:300].astype(np.float16).astype(np.float32))
    assert st.verify()["ok"]


def test_write_errors_are_typed_and_actionable(tmp_path, store_kwargs, unit_feats):
    st = EmbeddingStore.create(tmp_path / "s.zarr", **store_kwargs)
    feats = unit_feats(0, 256, st.views)
    with pytest.raises(StoreError, match="Missing view 'mean_patch'"):
        st.write_unit(0, {"cls": feats["cls"]})
    with pytest.raises(StoreError, match=r"must have shape \(256, 8\)"):
        st.write_unit(0, {"cls": feats["cls"], "mean_patch": feats["cls"]})
    with pytest.raises(StoreError, match="Unit 9 is out of range"):
        st.write_unit(9, feats)
    assert not st.done_units().any()  # nothing half-recorded
    st.close()
    ro = EmbeddingStore.open(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="read-only"):
        ro.write_unit(0, feats)
    with pytest.raises(StoreError, match="already exists"):
        EmbeddingStore.create(tmp_path / "s.zarr", **store_kwargs)
    with pytest.raises(StoreError, match="unique"):
        EmbeddingStore.create(tmp_path / "d.zarr", **dict(store_kwargs, ids=["a"] * 1000))
    with pytest.raises(StoreError, match="No store at"):
        EmbeddingStore.open(tmp_path / "missing.zarr")


def test_provenance_mismatch_is_refused_naming_both(tmp_path, store_kwargs, make_prov):
    path = tmp_path / "nih.zarr"
    EmbeddingStore.create(path, **store_kwargs).close()
    other = dict(store_kwargs, provenance=make_prov(backbone="dinov3-7b"))
    with pytest.raises(ProvenanceMismatchError) as err:
        EmbeddingStore.open_or_create(path, **other)
    msg = str(err.value)
    assert "was written by dinov3-vitb16 @512 (preprocess=paper)" in msg
    assert "refusing to append dinov3-7b @512 (preprocess=paper)" in msg and "backbone" in msg
    with pytest.raises(ProvenanceMismatchError, match="@224.*differs in: resolution"):
        EmbeddingStore.open_or_create(path, **dict(store_kwargs, provenance=make_prov(resolution=224)))
    with pytest.raises(ProvenanceMismatchError, match="preprocess=model"):
        EmbeddingStore.open_or_create(path, **dict(store_kwargs, provenance=make_prov(preset="model")))
    with pytest.raises(ProvenanceMismatchError, match="dtype"):
        EmbeddingStore.open_or_create(path, **dict(store_kwargs, dtype="float32"))
    with pytest.raises(ProvenanceMismatchError, match="ids differ"):
        EmbeddingStore.open_or_create(path, **dict(store_kwargs, ids=sorted(store_kwargs["ids"], reverse=True)))
    # The refusals released the lock; a compatible resume (a new 'created' time) is accepted.
    same = dict(store_kwargs, provenance=dict(store_kwargs["provenance"], created="later"))
    with EmbeddingStore.open_or_create(path, **same) as st:
        assert st.pending_units() == [0, 1, 2, 3]


def test_unknown_format_version_is_refused(tmp_path, store_kwargs):
    path = tmp_path / "s.zarr"
    EmbeddingStore.create(path, **store_kwargs).close()
    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    doc = dict(root.attrs["embedkit_store"], format_version=99)
    root.attrs.update({"embedkit_store": doc})
    with pytest.raises(FormatVersionError, match="format_version 99.*reads format_version 1 or 2"):
        EmbeddingStore.open(path)
    root.attrs.update({"embedkit_store": None})
    with pytest.raises(StoreError, match="not an embedding store"):
        EmbeddingStore.open(path)


def test_second_writer_refused_in_process_and_from_another_process(tmp_path, store_kwargs):
    path = tmp_path / "s.zarr"
    st = EmbeddingStore.create(path, **store_kwargs)
    with pytest.raises(StoreLockedError, match=r"pid \d+ on host .*delete '.*writer.lock'"):
        EmbeddingStore.open(path, "r+")
    code = ("import sys\nfrom stores import EmbeddingStore\nfrom stores.errors import StoreLockedError\n"
            "try:\n    EmbeddingStore.open(sys.argv[1], 'r+')\nexcept StoreLockedError as e:\n"
            "    print(e); sys.exit(3)\nsys.exit(0)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    import os

    assert f"pid {os.getpid()}" in proc.stdout
    assert EmbeddingStore.open(path).n_rows == 1000  # readers never need the lock
    st.close()
    EmbeddingStore.open(path, "r+").close()  # released on close


def test_ranks_of_one_run_share_the_store_and_own_disjoint_units(tmp_path, store_kwargs, unit_feats):
    path = tmp_path / "s.zarr"
    r0 = EmbeddingStore.create(path, **store_kwargs, rank=0, world_size=2, run_id="run-A")
    r1 = EmbeddingStore.open(path, "r+", rank=1, world_size=2, run_id="run-A")  # after the barrier
    assert r0.pending_units() == [0, 2] and r1.pending_units() == [1, 3]
    with pytest.raises(StoreLockedError):
        EmbeddingStore.open(path, "r+")  # a lone writer cannot join
    with pytest.raises(StoreLockedError, match="another run"):
        EmbeddingStore.open(path, "r+", rank=1, world_size=2, run_id="run-B")
    with pytest.raises(StoreError, match="belongs to rank 1"):
        r0.write_unit(1, unit_feats(1, 256, r0.views))
    for st in (r1, r0):
        for u in st.pending_units():
            sl = st.unit_slice(u)
            st.write_unit(u, unit_feats(u, sl.stop - sl.start, st.views))
    r1.close()
    assert r0.finalize()["complete"] and r0.verify()["ok"]
    r0.close()


def test_plain_zarr_and_xarray_read_the_store(tmp_path, store_kwargs, unit_feats):
    xr = pytest.importorskip("xarray")
    path = tmp_path / "s.zarr"
    with EmbeddingStore.create(path, **store_kwargs) as st:
        full = _fill(st, unit_feats)
    g = zarr.open_group(str(path), mode="r", use_consolidated=False)
    assert g.attrs["embedkit_store"]["format_version"] == 2
    cls = g["features/cls"]
    assert cls.shape == (1000, 16) and cls.dtype == np.float16
    assert cls.metadata.dimension_names == ("row", "feature_cls")
    np.testing.assert_array_equal(_bits(cls[:]), _bits(full["cls"].astype(np.float16)))
    assert list(np.asarray(g["ids"][:3], dtype=object)) == store_kwargs["ids"][:3]
    assert g["labels"].attrs["label_names"] == store_kwargs["label_names"]
    assert np.asarray(g["ledger"][:]).tolist() == [1, 1, 1, 1]

    feats = xr.open_zarr(str(path), group="features", consolidated=False)
    assert feats["cls"].dims == ("row", "feature_cls")
    np.testing.assert_array_equal(feats["mean_patch"].values, full["mean_patch"].astype(np.float16))
    top = xr.open_zarr(str(path), consolidated=False)
    assert top["labels"].dims == ("row", "label")
    assert list(top["label"].values) == store_kwargs["label_names"]
    assert str(top["ids"].values[0]) == "img00000" and top["filled"].values.all()
    meta = xr.open_zarr(str(path), group="meta", consolidated=False)
    assert str(meta["sex"].values[1]) == "F"


def test_default_layout_is_one_chunk_per_unit_of_a_few_mib(tmp_path, provenance):
    st = EmbeddingStore.create(tmp_path / "s.zarr", ids=[str(i) for i in range(10000)], views={"cls": 768},
                               provenance=provenance)
    layout = st.layout
    assert layout["rows_per_shard"] is None and layout["rows_per_chunk"] == 4096 == st.unit_rows
    assert 1 << 20 <= layout["rows_per_chunk"] * 768 * 2 <= 8 << 20
    assert st.n_units == 3


def test_raw_fast_path_files_are_byte_identical_to_zarrs_own(tmp_path, store_kwargs, unit_feats):
    """Unsharded uncompressed views are written/read straight to chunk files: the bytes must be zarr's own."""
    kw = dict(store_kwargs, rows_per_chunk=256, rows_per_shard=None)
    path = tmp_path / "raw.zarr"
    with EmbeddingStore.create(path, **kw) as st:
        assert all(st.is_raw(v) for v in st.views)
        full = _fill(st, unit_feats, fail_rows={999: "bad"})  # the edge unit (232 rows) has a failure too
    st = EmbeddingStore.open(path)
    for view, dim in st.views.items():
        expect = full[view].astype(np.float16)
        expect[999] = np.nan
        ref = zarr.create_array(store=str(tmp_path / f"ref_{view}"), shape=(1000, dim), dtype="float16",
                                chunks=(256, dim), compressors=None, filters=None, fill_value=np.nan,
                                config={"write_empty_chunks": True})
        ref[:] = expect
        for c in range(4):
            ours = (path / "features" / view / "c" / str(c) / "0").read_bytes()
            theirs = (tmp_path / f"ref_{view}" / "c" / str(c) / "0").read_bytes()
            assert ours == theirs, (view, c)
        plain = zarr.open_array(str(path / "features" / view), mode="r")[:]
        np.testing.assert_array_equal(_bits(plain), _bits(expect))
        np.testing.assert_array_equal(_bits(st.load(view, dtype=None)), _bits(expect))
        rows = np.array([999, 3, 700, 255, 256, 3])
        (_, got), = list(st.iter_batches(view, batch_size=10, rows=rows, dtype=None))
        np.testing.assert_array_equal(_bits(got), _bits(expect[rows]))
    ref_filled = zarr.create_array(store=str(tmp_path / "ref_filled"), shape=(1000,), dtype="bool", chunks=(256,),
                                   compressors=None, fill_value=False, config={"write_empty_chunks": False})
    ref_filled[:] = st.filled
    for c in range(4):
        assert (path / "filled" / "c" / str(c)).read_bytes() == (tmp_path / "ref_filled" / "c" / str(c)).read_bytes()
    assert not list(path.rglob("*.partial"))
