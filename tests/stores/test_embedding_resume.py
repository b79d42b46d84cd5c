"""A writer killed with SIGKILL between (and inside) units leaves a store that reopens, resumes and ends
bit-identical to an uninterrupted write."""
from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

from stores import EmbeddingStore
from stores.errors import StoreError

# The child writes units with deterministic features; with KILL_AFTER >= 0 it SIGKILLs itself after that many units,
# first leaving a half-written next unit (features of one view overwritten, no ledger entry).
_CHILD = r"""
import os, signal, sys, json
import numpy as np
import zarr
from stores import EmbeddingStore
from stores.errors import StoreError

path, kill_after, kwargs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
st = EmbeddingStore.open_or_create(path, **kwargs)
for k, u in enumerate(st.pending_units()):
    if k == kill_after:
        sl = st.unit_slice(u)
        zarr.open_array(os.path.join(path, "features", "cls"), mode="r+")[sl] = np.full((sl.stop - sl.start, 16), 7.0)
        os.kill(os.getpid(), signal.SIGKILL)
    sl = st.unit_slice(u)
    rng = np.random.default_rng(1000 + u)
    feats = {v: rng.standard_normal((sl.stop - sl.start, d), dtype=np.float32) for v, d in st.views.items()}
    ok = np.ones(sl.stop - sl.start, bool)
    ok[::97] = False
    st.write_unit(u, feats, ok=ok, failures={sl.start + 3: "DecodeError: bad header"})
st.finalize()
st.close()
"""


def _run(path, kill_after: int, kwargs: dict) -> subprocess.CompletedProcess:
    import json

    return subprocess.run([sys.executable, "-c", _CHILD, str(path), str(kill_after), json.dumps(kwargs)],
                          capture_output=True, text=True, timeout=120)


def _arrays(path) -> dict[str, np.ndarray]:
    st = EmbeddingStore.open(path)
    out = {f"features/{v}": st.load(v, dtype=None).view(np.uint16) for v in st.views}
    out.update(filled=st.filled, ledger=st.done_units(), ids=st.ids.astype(str), labels=st.labels,
               failures=np.array(sorted(st.failures().items())))
    return out


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "unsharded"])
def test_sigkill_between_units_then_resume_is_bit_identical(tmp_path, store_kwargs, sharded):
    kwargs = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in store_kwargs.items()}
    kwargs["labels"] = np.nan_to_num(np.asarray(store_kwargs["labels"]), nan=-1.0).tolist()  # JSON has no NaN
    if not sharded:
        kwargs.update(rows_per_chunk=256, rows_per_shard=None)
    ref, killed = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    done = _run(ref, -1, kwargs)
    assert done.returncode == 0, done.stderr

    crash = _run(killed, 2, kwargs)
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    st = EmbeddingStore.open(killed)  # opens after a SIGKILL: no stale lock, exact progress
    assert st.done_units().tolist() == [True, True, False, False]
    assert st.pending_units() == [2, 3]
    assert st.filled[:512].sum() == 512 - 6 - 2 and not st.filled[512:].any()
    assert st.verify()["ok"] and st.layout["summary"] is None

    resumed = _run(killed, -1, kwargs)  # the same command again picks up units 2 and 3
    assert resumed.returncode == 0, resumed.stderr
    a, b = _arrays(ref), _arrays(killed)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    final = EmbeddingStore.open(killed)
    assert final.verify(deep=True)["ok"] and final.layout["summary"]["complete"]
    assert final.fingerprint == EmbeddingStore.open(ref).fingerprint


# The child rewrites unit U of a complete store with new features and SIGKILLs itself mid-rewrite: once the first
# view is rewritten, as the second view is about to be (fault injection at EmbeddingStore._prepare, which write_unit
# and write_rows both call once per view, between the writes of consecutive views).
_REWRITE_CHILD = r"""
import os, signal, sys
import numpy as np
from stores import EmbeddingStore
from stores.errors import StoreError

path, method, u = sys.argv[1], sys.argv[2], int(sys.argv[3])
views_seen = []
prepare = EmbeddingStore._prepare
def prepare_or_die(self, view, *args, **kwargs):
    views_seen.append(view)
    if len(views_seen) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return prepare(self, view, *args, **kwargs)
EmbeddingStore._prepare = prepare_or_die
st = EmbeddingStore.open(path, "r+")
sl = st.unit_slice(u)
rng = np.random.default_rng(2000 + u)
feats = {v: rng.standard_normal((sl.stop - sl.start, d), dtype=np.float32) for v, d in st.views.items()}
fails = {sl.start + 5: "DecodeError: rewritten"}
st.write_unit(u, feats, failures=fails) if method == "write_unit" else st.write_rows(sl.start, feats, failures=fails)
sys.exit(3)  # not reached
"""


def _rewrite(st: EmbeddingStore, method: str, u: int, views: dict[str, int]) -> None:
    """The child's rewrite, uninterrupted (same features, same failure)."""
    sl = st.unit_slice(u)
    rng = np.random.default_rng(2000 + u)
    feats = {v: rng.standard_normal((sl.stop - sl.start, d), dtype=np.float32) for v, d in views.items()}
    fails = {sl.start + 5: "DecodeError: rewritten"}
    if method == "write_unit":
        st.write_unit(u, feats, failures=fails)
    else:
        st.write_rows(sl.start, feats, failures=fails)


def _complete_store(path, kwargs: dict, unit_feats) -> EmbeddingStore:
    st = EmbeddingStore.create(path, **kwargs)
    for u in range(st.n_units):
        sl = st.unit_slice(u)
        st.write_unit(u, unit_feats(u, sl.stop - sl.start, st.views), failures={sl.start + 3: "DecodeError: x"})
    return st


@pytest.mark.parametrize("method", ["write_unit", "write_rows"])
@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "unsharded"])
def test_sigkill_while_rewriting_a_done_unit_leaves_it_pending(tmp_path, store_kwargs, unit_feats, method, sharded):
    kwargs = dict(store_kwargs)
    if not sharded:
        kwargs.update(rows_per_chunk=256, rows_per_shard=None)
    ref = _complete_store(tmp_path / "ref.zarr", kwargs, unit_feats)
    _rewrite(ref, method, 1, ref.views)  # the uninterrupted rewrite
    ref.close()
    _complete_store(tmp_path / "killed.zarr", kwargs, unit_feats).close()
    old = EmbeddingStore.open(tmp_path / "killed.zarr")
    old_cls, old_patch = old.load("cls", dtype=None), old.load("mean_patch", dtype=None)

    crash = subprocess.run([sys.executable, "-c", _REWRITE_CHILD, str(tmp_path / "killed.zarr"), method, "1"],
                           capture_output=True, text=True, timeout=120)
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    st = EmbeddingStore.open(tmp_path / "killed.zarr")
    sl = st.unit_slice(1)
    # The kill did land mid-rewrite: unit 1's first view is new, its second view (and the others' data) still old.
    new_cls = EmbeddingStore.open(tmp_path / "ref.zarr").load("cls", dtype=None)
    np.testing.assert_array_equal(st.load("cls", dtype=None)[sl], new_cls[sl])
    assert not np.array_equal(new_cls[sl], old_cls[sl], equal_nan=True)
    np.testing.assert_array_equal(st.load("mean_patch", dtype=None), old_patch)
    # ... and the store says so: unit 1 is pending, verify agrees with the ledger.
    assert st.done_units().tolist() == [True, False, True, True]
    assert st.pending_units() == [1]
    report = st.verify()
    assert report["ok"], report["problems"]
    assert report["n_done_units"] == 3 and report["complete"] is False

    with EmbeddingStore.open(tmp_path / "killed.zarr", "r+") as resumed:  # finishing the rewrite
        _rewrite(resumed, method, 1, resumed.views)
    a, b = _arrays(tmp_path / "ref.zarr"), _arrays(tmp_path / "killed.zarr")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert b["ledger"].all() and EmbeddingStore.open(tmp_path / "killed.zarr").verify(deep=True)["ok"]


def test_invalid_rewrite_of_a_done_unit_changes_nothing(tmp_path, store_kwargs, unit_feats):
    st = _complete_store(tmp_path / "s.zarr", store_kwargs, unit_feats)
    before = _arrays(tmp_path / "s.zarr")
    sl = st.unit_slice(2)
    bad = {"cls": np.zeros((sl.stop - sl.start, 16)), "mean_patch": np.zeros((sl.stop - sl.start, 7))}
    with pytest.raises(StoreError, match="mean_patch"):
        st.write_unit(2, bad)
    with pytest.raises(StoreError, match="mean_patch"):
        st.write_rows(sl.start, bad)
    after = _arrays(tmp_path / "s.zarr")
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
