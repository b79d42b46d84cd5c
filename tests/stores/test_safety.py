"""Outputs never destroy what isn't theirs, and a creation killed at any file operation completes on re-run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stores import EmbeddingStore, ImageCache
from stores.errors import StoreError
from stores.index import build_index, index_dir, load_index, save_index

ROOT = Path(__file__).resolve().parents[2]


def _store_kw(provenance) -> dict:
    return dict(ids=[f"r{i}" for i in range(40)], views={"cls": 8, "mean_patch": 4}, provenance=provenance,
                labels=np.eye(40, 3, dtype=np.float32), label_names=["a", "b", "c"], split=["train"] * 40,
                metadata={"age": [float(i) for i in range(40)], "sex": ["F", "M"] * 20}, rows_per_chunk=16)


def _cache_kw() -> dict:
    return dict(ids=[f"r{i}" for i in range(10)], resolution=8, provenance={"resolution": 8, "preprocess": {}},
                labels=np.zeros((10, 2), np.float32), split=["train"] * 10, metadata={"sex": ["F"] * 10},
                unit_rows=4)


def _thesis_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "thesis"
    (folder / "figures").mkdir(parents=True)
    (folder / "draft.tex").write_text("chapter 1")
    (folder / "figures" / "f1.png").write_bytes(b"png")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("kind", ["store", "cache"])
def test_a_foreign_folder_is_never_cleared(tmp_path, provenance, kind, overwrite):
    folder = _thesis_folder(tmp_path)
    before = _files(folder)
    make = (lambda p, **kw: EmbeddingStore.create(p, **_store_kw(provenance), **kw)) if kind == "store" else (
        lambda p, **kw: ImageCache.create(p, **_cache_kw(), **kw))
    with pytest.raises(StoreError, match="non-empty folder that is not an? .*Choose a new path") as err:
        make(folder, overwrite=overwrite)
    assert "\n" not in str(err.value)
    assert _files(folder) == before  # not one byte touched, and no lock folder left behind
    opener = EmbeddingStore.open_or_create if kind == "store" else ImageCache.open_or_create
    kw = _store_kw(provenance) if kind == "store" else _cache_kw()
    with pytest.raises(StoreError, match="not a"):
        opener(folder, **kw)
    assert _files(folder) == before


@pytest.mark.parametrize("target", [".", "..", "~", "file"])
def test_special_paths_and_files_are_refused(tmp_path, provenance, target, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "notes.txt").write_text("keep me")
    path = {"~": Path.home(), "file": work / "notes.txt"}.get(target, Path(target))
    for make in (lambda: EmbeddingStore.create(path, **_store_kw(provenance), overwrite=True),
                 lambda: ImageCache.create(path, **_cache_kw(), overwrite=True)):
        with pytest.raises(StoreError, match="Refusing to use|is a file"):
            make()
    assert (work / "notes.txt").read_text() == "keep me" and sorted(os.listdir(work)) == ["notes.txt"]


def test_overwrite_replaces_only_the_same_kind(tmp_path, provenance):
    store, cache = tmp_path / "s.zarr", tmp_path / "c.zarr"
    EmbeddingStore.create(store, **_store_kw(provenance)).close()
    ImageCache.create(cache, **_cache_kw()).close()
    with pytest.raises(StoreError, match="holds an image cache; refusing"):
        EmbeddingStore.create(cache, **_store_kw(provenance), overwrite=True)
    with pytest.raises(StoreError, match="holds an embedding store; refusing"):
        ImageCache.create(store, **_cache_kw(), overwrite=True)
    assert ImageCache.is_cache(cache) and EmbeddingStore.open(store).n_rows == 40
    with pytest.raises(StoreError, match="already exists"):
        EmbeddingStore.create(store, **_store_kw(provenance))
    kw = _store_kw(provenance)
    kw["ids"] = [f"x{i}" for i in range(40)]
    with EmbeddingStore.create(store, **kw, overwrite=True) as st:  # same kind: replaced
        assert st.ids[0] == "x0"
    with ImageCache.create(cache, **dict(_cache_kw(), resolution=4, provenance={"resolution": 4}),
                           overwrite=True) as c:
        assert c.resolution == 4


def test_empty_folder_and_bad_arguments(tmp_path, provenance):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    EmbeddingStore.create(empty, **_store_kw(provenance)).close()  # an empty folder (mkdir'd by a script) is fine
    EmbeddingStore.create(tmp_path / "keep.zarr", **_store_kw(provenance)).close()
    before = _files(tmp_path / "keep.zarr")
    bad = dict(_store_kw(provenance), labels=np.zeros((3, 2)))
    with pytest.raises(StoreError, match="labels"):  # argument errors before anything is touched
        EmbeddingStore.create(tmp_path / "keep.zarr", **bad, overwrite=True)
    with pytest.raises(StoreError, match="labels"):
        ImageCache.create(tmp_path / "keep.zarr", **dict(_cache_kw(), labels=np.zeros((3, 2))), overwrite=True)
    assert _files(tmp_path / "keep.zarr") == before
    assert not (tmp_path / "new.zarr").exists()
    with pytest.raises(StoreError):
        EmbeddingStore.create(tmp_path / "new.zarr", **bad)
    assert not (tmp_path / "new.zarr").exists()


def test_index_folder_safety_and_atomic_replace(tmp_path):
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    index, info = build_index(x, kind="flat", store_fingerprint="a" * 64, features="cls")
    folder = index_dir(tmp_path / "run.zarr", "cls")
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a faiss index"):
        save_index(folder, index, info)
    assert (folder / "notes.txt").read_text() == "mine"
    (folder / "notes.txt").unlink()
    save_index(folder, index, info)
    index2, info2 = build_index(x[:100], kind="flat", store_fingerprint="b" * 64, features="cls")
    save_index(folder, index2, info2)  # replaces our own index
    assert load_index(folder, expected_fingerprint="b" * 64).ntotal == 100
    assert sorted(p.name for p in folder.parent.iterdir()) == ["cls"]  # no temporary folders left
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        save_index(tmp_path / "afile", index, info)


# The child forks once per kill point: the forked process installs an audit hook that SIGKILLs it just before its
# k-th file operation (open, rename, remove, mkdir, rmdir) under the target, then creates. The parent then runs the
# same call again (no sleep), fills every unit and compares with a reference made without a kill.
_CREATE_KILLER = r"""
import json, os, signal, sys
import numpy as np
from stores import EmbeddingStore, ImageCache

kind, base, ks, kw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
fault = sys.argv[5]  # "kill": SIGKILL at the k-th operation; "enospc": it fails with ENOSPC (a full disk)
cls = EmbeddingStore if kind == "store" else ImageCache
EVENTS = {"open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate", "shutil.rmtree"}

def fill(obj):
    for u in obj.pending_units():
        sl = obj.unit_slice(u)
        n = sl.stop - sl.start
        if kind == "store":
            rng = np.random.default_rng(u)
            obj.write_unit(u, {v: rng.standard_normal((n, d)) for v, d in obj.views.items()})
        else:
            obj.write_unit(u, {"images": np.full((n, 8, 8), u, np.uint8)})
    obj.finalize()
    obj.close()

def snapshot(path):
    obj = cls.open(path)
    if kind == "store":
        return {"x": [obj.load(v).tolist() for v in obj.views], "ids": obj.ids.tolist(), "labels": obj.labels.tolist(),
                "done": obj.done_units().tolist(), "fp": obj.fingerprint, "ok": obj.verify()["ok"]}
    return {"x": np.asarray(obj.images[:]).tolist(), "ids": obj.ids.tolist(), "done": obj.done_units().tolist(),
            "labels": obj.labels.tolist()}

ref = os.path.join(base, "ref")
fill(cls.open_or_create(ref, **kw))
want = snapshot(ref)
results = []
for k in ks:
    path = os.path.join(base, f"k{k}")
    # Another kind of pre-existing state first: half the kill points overwrite a complete store of our own.
    if k % 2:
        fill(cls.open_or_create(path, **kw))
    pid = os.fork()
    if pid == 0:
        count = [0]
        def hook(event, args, path=path):
            if event in EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
                if os.fsdecode(args[0]).startswith(path):
                    count[0] += 1
                    if count[0] == k and fault == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    if count[0] == k:
                        raise OSError(28, "No space left on device", os.fsdecode(args[0]))
        sys.addaudithook(hook)
        try:
            cls.create(path, **kw, overwrite=True) if k % 2 else cls.open_or_create(path, **kw)
        except BaseException as exc:
            with open(path + ".err", "w") as f:
                f.write(type(exc).__name__ + ": " + str(exc))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status)
    try:  # what a reader sees now: a store, or one StoreError line
        cls.open(path)
        state = "opens"
    except Exception as exc:
        state = type(exc).__name__ + ": " + str(exc).splitlines()[0]
    fill(cls.open_or_create(path, **kw))  # the same command, run again at once
    err = open(path + ".err").read() if os.path.exists(path + ".err") else None
    results.append({"k": k, "killed": killed, "state": state, "same": snapshot(path) == want, "error": err})
print(json.dumps(results))
"""


@pytest.mark.parametrize("fault", ["kill", "enospc"])
@pytest.mark.parametrize("kind", ["store", "cache"])
def test_creation_killed_or_out_of_space_at_any_file_operation_completes_on_rerun(tmp_path, provenance, kind, fault):
    kw = _store_kw(provenance) if kind == "store" else _cache_kw()
    kw = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    if kind == "store":
        kw["durable"] = False  # fsync guards against power loss, not kills: off here for speed
    # A creation makes ~175 (store) / ~140 (cache) file operations, an overwrite ~200 more: spread the kill points
    # over all of them (odd k: overwrite of a complete store, even k: fresh creation or resume).
    top = 380 if kind == "store" else 300
    ks = sorted({int(k) for k in np.linspace(1, top, 18)} | {2, 3})
    proc = subprocess.run([sys.executable, "-c", _CREATE_KILLER, kind, str(tmp_path), json.dumps(ks), json.dumps(kw),
                           fault], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    assert all(r["same"] for r in results), [r for r in results if not r["same"]]
    if fault == "enospc":
        failed = [r for r in results if r["error"]]
        assert len(failed) >= 6
        # One actionable line, a StoreError (never a bare OSError/KeyError traceback), saying to re-run.
        assert all(r["error"].startswith("StoreError: ") and "\n" not in r["error"] for r in failed), failed
        assert any("No space left on device" in r["error"] and "re-run the same command" in r["error"]
                   for r in failed)
        return
    killed = [r for r in results if r["killed"]]
    assert len(killed) >= 12  # the kill points really fell inside creation
    # A half-created store never opens as a store: it says so in one line.
    assert any("never completely created" in r["state"] for r in killed)
    assert all(r["state"] == "opens" or r["state"].startswith(("StoreError", "FileNotFoundError")) for r in killed)


def test_readers_may_open_the_current_directory(tmp_path, provenance, monkeypatch):
    EmbeddingStore.create(tmp_path / "s.zarr", **_store_kw(provenance)).close()
    monkeypatch.chdir(tmp_path / "s.zarr")
    assert EmbeddingStore.open(".").n_rows == 40  # only writers refuse '.'
    with pytest.raises(StoreError, match="Refusing to use '.'"):
        EmbeddingStore.open_or_create(".", **_store_kw(provenance))
