"""stores._ledger: one unit-ledger protocol under the embedding store and the image cache."""
from __future__ import annotations

import ast
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stores import EmbeddingStore, ImageCache
from stores import _provenance as prov_mod
from stores._ledger import UnitLedger

ROOT = Path(__file__).resolve().parents[2]
CACHE_PROV = {"resolution": 8, "preprocess": {"preset": "model"}, "dataset": {"spec": "x.csv"},
              "created": "2026-01-01T00:00:00Z"}
LEDGER_ARRAYS = {"ids", "filled", "failures", "checksums", "ledger"}


def _ids(n):
    return [f"img{i:03d}" for i in range(n)]


def _full_cache(path, **kw):
    cache = ImageCache.create(path, ids=_ids(5), resolution=8, provenance=CACHE_PROV, unit_rows=2, **kw)
    for u in cache.pending_units():
        sl = cache.unit_slice(u)
        cache.write_unit(u, {"images": np.full((sl.stop - sl.start, 8, 8), 10 + u, np.uint8)},
                         failures={sl.start: "DecodeError: x"} if u == 1 else None)
    return cache


def test_both_artefacts_share_one_vocabulary_and_lock(tmp_path, provenance):
    assert issubclass(EmbeddingStore, UnitLedger) and issubclass(ImageCache, UnitLedger)
    st = EmbeddingStore.create(tmp_path / "s.zarr", ids=_ids(5), views={"cls": 4}, provenance=provenance,
                               metadata={"age": [1, 2, 3, 4, 5]})
    cache = ImageCache.create(tmp_path / "c.zarr", ids=_ids(5), resolution=8, provenance=CACHE_PROV,
                              metadata={"age": [1, 2, 3, 4, 5]})
    for obj in (st, cache):
        names = set(obj.group.array_keys()) | set(obj.group.group_keys())
        assert LEDGER_ARRAYS | {"meta"} <= names
        assert (obj.path / "ledger" / "writer.lock").is_file()
        assert obj.group["ledger"].dtype == np.uint8 and obj.format_version == 2
        assert obj.layout["summary"] is None
    assert list(cache.group["checksums"].attrs["arrays"]) == ["images"]
    assert list(st.group["checksums"].attrs["arrays"]) == ["features/cls"]


def test_cache_fingerprint_is_provenance_without_timestamps_plus_ids(tmp_path):
    a = ImageCache.create(tmp_path / "a.zarr", ids=_ids(5), resolution=8, provenance=CACHE_PROV)
    later = dict(CACHE_PROV, created="2027-06-01T12:00:00Z")
    b = ImageCache.create(tmp_path / "b.zarr", ids=_ids(5), resolution=8, provenance=later)
    c = ImageCache.create(tmp_path / "c.zarr", ids=_ids(4), resolution=8, provenance=CACHE_PROV)
    assert a.fingerprint == b.fingerprint == prov_mod.fingerprint(CACHE_PROV, _ids(5))
    assert c.fingerprint != a.fingerprint


def test_cache_units_carry_checksums_and_verify_repairs_them(tmp_path):
    cache = _full_cache(tmp_path / "c.zarr")
    assert cache.verify()["ok"]
    rec = cache.checksum_records()
    assert rec.shape == (3, 1, 2) and (rec[:, 0, 1] > 0).all()
    shard = tmp_path / "c.zarr" / "images" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = cache.verify()
    assert not report["ok"] and report["damaged_units"] == [1]
    assert report["problems"] == ["unit 1: images chunk file was altered (crc32c differs from the one recorded "
                                  "when it was written)"]
    assert cache.verify(repair=True)["marked_pending"] == [1] and cache.pending_units() == [1]
    cache.close()
    # A truncated shard is caught on resume by itself (a stat), and the rewrite restores the unit.
    again = ImageCache.open_or_create(tmp_path / "c.zarr", ids=_ids(5), resolution=8, provenance=CACHE_PROV,
                                      unit_rows=2)
    assert again.pending_units() == [1]
    again.write_unit(1, {"images": np.full((2, 8, 8), 11, np.uint8)}, failures={2: "DecodeError: x"})
    shard0 = tmp_path / "c.zarr" / "images" / "c" / "0" / "0" / "0"
    shard0.write_bytes(shard0.read_bytes()[:-3])
    again.close()
    with ImageCache.open_or_create(tmp_path / "c.zarr", ids=_ids(5), resolution=8, provenance=CACHE_PROV,
                                   unit_rows=2) as resumed:
        assert resumed.pending_units() == [0]
        resumed.write_unit(0, {"images": np.full((2, 8, 8), 10, np.uint8)})
        assert resumed.verify()["ok"] and resumed.done_units().all()
        assert resumed.read(slice(0, 5))[:, 0, 0].tolist() == [10, 10, 0, 11, 12]


_KILL_MID_REWRITE = r"""
import os, signal, sys
import numpy as np
from stores import ImageCache

def die(self, *args, **kwargs):  # SIGKILL just before the unit's data is written
    os.kill(os.getpid(), signal.SIGKILL)

ImageCache._unit_block = die
cache = ImageCache.open(sys.argv[1], "r+")
cache.write_unit(1, {"images": np.full((2, 8, 8), 99, np.uint8)})
sys.exit(3)  # not reached
"""


def test_cache_rewrite_of_a_done_unit_is_pending_until_finished(tmp_path):
    _full_cache(tmp_path / "c.zarr").close()
    crash = subprocess.run([sys.executable, "-c", _KILL_MID_REWRITE, str(tmp_path / "c.zarr")], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    cache = ImageCache.open(tmp_path / "c.zarr")
    assert cache.done_units().tolist() == [True, False, True] and cache.pending_units() == [1]


@pytest.mark.parametrize("module", ["_verify.py"])
def test_verify_reads_only_public_attributes(module):
    tree = ast.parse((ROOT / "stores" / module).read_text())
    private = sorted({node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                      and node.attr.startswith("_") and not node.attr.startswith("__")
                      and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))})
    assert private == []
