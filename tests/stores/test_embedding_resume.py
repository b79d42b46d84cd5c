"""A writer killed with SIGKILL between (and inside) units leaves a store that reopens, resumes and ends
bit-identical to an uninterrupted write."""
from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

from stores import EmbeddingStore

# The child writes units with deterministic features; with KILL_AFTER >= 0 it SIGKILLs itself after that many units,
# first leaving a half-written next unit (features of one view overwritten, no ledger entry).
_CHILD = r"""
import os, signal, sys, json
import numpy as np
import zarr
from stores import EmbeddingStore

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
