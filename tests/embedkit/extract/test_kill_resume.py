"""Pre-emption, the hard way: SIGKILL an extract at >= 20 moments (store creation, units and finalisation), re-run
it at once (no sleep, while the killed run's loader workers still live) and compare with an uninterrupted run.

Kill points are file operations: a process forked for one attempt installs an audit hook (``sys.addaudithook``)
that SIGKILLs it just before its k-th open/rename/remove/mkdir under ``--out``. A fork server imports torch and
embedkit once, so 40+ runs take seconds each rather than an interpreter start-up each.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
KILL_ENV = "EMBEDKIT_TEST_KILL_AFTER_UNITS"

_SERVER = r"""
import json, os, signal, sys, traceback
import torch
torch.set_num_threads(1)  # deterministic and fork-safe: no OpenMP pool in the server
from embedkit.extract.run import run_extract

model, data, base, plan_file = sys.argv[1:5]
KW = dict(res=32, batch_size=4, workers=1, dtype="float32", rows_per_shard=8, device="cpu", precision="fp32")
EVENTS = {"open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate", "shutil.rmtree"}


def run(out, kill_at=0, record=None):
    pid = os.fork()
    if pid:
        return os.waitpid(pid, 0)[1]
    me, seen = os.getpid(), []
    def hook(event, args):
        if event in EVENTS and os.getpid() == me and args and isinstance(args[0], (str, bytes, os.PathLike)):
            p = os.fsdecode(args[0])
            if p.startswith(out):
                seen.append(event + " " + p[len(out):])
                if len(seen) == kill_at:
                    os.kill(me, signal.SIGKILL)
    sys.addaudithook(hook)
    try:
        run_extract(model, data, out, **KW)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    if record:
        with open(record, "w") as f:
            json.dump(seen, f)
    os._exit(0)


# Warm up in the server (lazy imports of the model code, decoders, zarr): each forked run then starts hot.
run_extract(model, data, os.path.join(base, "warmup.zarr"), **KW)
status = run(os.path.join(base, "ref.zarr"), record=os.path.join(base, "events.json"))
print(json.dumps({"ref": os.waitstatus_to_exitcode(status)}), flush=True)
plan = json.loads(sys.stdin.readline())
for i, k in enumerate(plan):
    out = os.path.join(base, f"kill{i}.zarr")
    first = os.waitstatus_to_exitcode(run(out, kill_at=k))
    second = os.waitstatus_to_exitcode(run(out))  # the requeue: at once, the killed run's workers still alive
    print(json.dumps({"k": k, "out": out, "first": first, "second": second}), flush=True)
"""


@pytest.fixture(scope="module")
def small_phantoms(tmp_path_factory) -> Path:
    """40 PNG phantoms of 32 px."""
    from embedkit.data.phantoms import make_phantoms

    return Path(make_phantoms(tmp_path_factory.mktemp("ph40"), n=40, size=32, seed=3, formats=("png8",)))


def _kill_plan(events: list[str], n: int, seed: int) -> list[int]:
    """``n`` kill points (1-based event numbers): 7 in creation, 7 in finalising, the rest among the units.

    Creation ends at the first feature-chunk write; finalisation starts after the last ledger entry is written
    (renamed into place: later events under ``ledger/`` are the finalisation's and the report's reads).
    """
    first_unit = next(i for i, e in enumerate(events) if "/features/" in e and "/c/" in e)
    last_ledger = max(i for i, e in enumerate(events) if e.startswith("os.rename") and "/ledger/c/" in e)
    rng = np.random.default_rng(seed)
    creation, units, final = (np.arange(1, first_unit + 1), np.arange(first_unit + 1, last_ledger + 2),
                              np.arange(last_ledger + 2, len(events) + 1))
    assert len(creation) >= 7 and len(final) >= 7, (len(creation), len(final))
    ks = {1}  # before anything exists
    ks |= set(rng.choice(creation, size=min(7, len(creation)), replace=False).tolist())
    ks |= set(rng.choice(final, size=min(7, len(final)), replace=False).tolist())
    ks |= set(rng.choice(units, size=min(n - len(ks), len(units)), replace=False).tolist())
    return sorted(int(k) for k in ks)


def _read_all(path: Path) -> dict:
    import zarr

    from stores import EmbeddingStore

    with EmbeddingStore.open(path) as st:
        out = {f"view:{v}": st.load(v, dtype=None).view(np.uint32) for v in st.views}
        out.update(filled=st.filled, done=st.done_units(), ids=np.asarray(st.ids).astype(str),
                   failures=st.failures(), labels=st.labels, fingerprint=st.fingerprint, verify=st.verify()["ok"])
        summary = dict(st.layout["summary"] or {})
    summary.pop("finalized", None)
    out["summary"] = summary
    out["checksums"] = zarr.open_array(str(path / "checksums"), mode="r")[:]
    return out


def test_sigkill_at_21_moments_then_immediate_rerun_equals_uninterrupted(tiny, small_phantoms, tmp_path):
    model = tiny("dinov3-vit")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(model), str(small_phantoms), str(tmp_path), "-"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=ROOT)
    try:
        assert json.loads(server.stdout.readline()) == {"ref": 0}, server.stderr.read()[-3000:]
        events = json.loads((tmp_path / "events.json").read_text())
        plan = _kill_plan(events, 21, seed=11)
        server.stdin.write(json.dumps(plan) + "\n")
        server.stdin.flush()
        results = [json.loads(server.stdout.readline()) for _ in plan]
        assert server.wait(timeout=600) == 0, server.stderr.read()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
    log = server.stderr.read()
    assert len(plan) >= 20
    assert all(r["first"] == -signal.SIGKILL for r in results), (results, log[-3000:])
    assert all(r["second"] == 0 for r in results), (results, log[-3000:])
    ref = _read_all(tmp_path / "ref.zarr")
    for r in results:
        got = _read_all(Path(r["out"]))
        assert got.keys() == ref.keys()
        for key in ref:
            if isinstance(ref[key], np.ndarray):
                np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{key} after a kill at event {r['k']}")
            else:
                assert got[key] == ref[key], (key, r["k"])


def _start(args: list[str], log: Path, env_extra: dict | None = None) -> subprocess.Popen:
    """An extract whose output goes to a file: a pipe would make us wait for the orphaned loader workers too."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT), **(env_extra or {}))
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "embedkit", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT)


def _extract_args(model, data, out, *extra) -> list[str]:
    return ["extract", "--model", str(model), "--res", "32", "--data", str(data), "--out", str(out),
            "--dtype", "float32", "--batch-size", "4", "--workers", "2", "--rows-per-shard", "8", *extra]


def _children_of(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_sigkill_with_loader_workers_frees_the_lock_at_once(tiny, small_phantoms, tmp_path, cli):
    import psutil

    from stores import EmbeddingStore

    out = tmp_path / "s.zarr"
    proc = _start(_extract_args(tiny("dinov3-vit"), small_phantoms, out), tmp_path / "a.log", {KILL_ENV: "2"})
    workers: list[int] = []
    while proc.poll() is None:  # note the loader workers while the run lives
        workers = _children_of(proc.pid) or workers
        time.sleep(0.02)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "a.log").read_text()[-2000:]
    alive = [w for w in workers if psutil.pid_exists(w)]
    # The requeue, at once: the writer lock is free while the killed run's loader workers are still alive
    # (they notice their parent's death only after a few seconds).
    with EmbeddingStore.open(out, "r+") as st:
        assert 1 <= st.done_units().sum() < st.n_units
    assert alive, "the loader workers died with their parent: this run did not exercise the lock"
    r = cli(*_extract_args(tiny("dinov3-vit"), small_phantoms, out))  # and the same command completes
    assert r.exit_code == 0, r.output
    assert EmbeddingStore.open(out).done_units().all()


def test_info_verify_names_damaged_units_and_rerun_rewrites_exactly_them(tiny, small_phantoms, tmp_path, cli,
                                                                         store_reader, same_store):
    from stores import EmbeddingStore

    model = tiny("dinov3-vit")
    ref, out = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    for p in (ref, out):
        r = cli(*_extract_args(model, small_phantoms, p, "--workers", "0"))
        assert r.exit_code == 0, r.output
    view = next(iter(EmbeddingStore.open(out).views))
    (out / "features" / view / "c" / "3" / "0").unlink()                       # deleted
    f = out / "features" / view / "c" / "1" / "0"
    f.write_bytes(f.read_bytes()[:-5])                                         # truncated
    f = out / "features" / view / "c" / "4" / "0"
    data = bytearray(f.read_bytes())
    data[8] ^= 0x10                                                            # altered
    f.write_bytes(bytes(data))

    r = cli("info", str(out), "--verify", "--json")
    assert r.exit_code == 1, r.output
    ver = json.loads(r.stdout)["verify"]
    assert ver["damaged_units"] == [1, 3, 4] and ver["marked_pending"] == [1, 3, 4]
    assert any("unit 4" in p and "altered" in p for p in ver["problems"])
    r = cli(*_extract_args(model, small_phantoms, out, "--workers", "0", "--json"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["done"] == 3 * 8  # exactly the three damaged units were rewritten
    same_store(store_reader(out), store_reader(ref))
    r = cli("info", str(out), "--verify")
    assert r.exit_code == 0 and "verify: ok" in r.stdout
