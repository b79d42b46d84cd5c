"""Pre-emption and scale-out, with real processes: SIGKILL mid-run then resume; torchrun with 2 CPU ranks (gloo).

The kill uses the engine's documented test hook ``EMBEDKIT_TEST_KILL_AFTER_UNITS=k`` (the process SIGKILLs itself
right after its k-th unit is durably written), which is what a pre-empted job looks like to the store.
"""
from __future__ import annotations

import json
import signal

import numpy as np


def _args(model, data, out, *extra):
    return ["-m", "embedkit", "extract", "--model", str(model), "--res", "64", "--data", str(data), "--out", str(out),
            "--dtype", "float32", "--batch-size", "3", "--workers", "1", "--rows-per-shard", "4", *extra]


def test_sigkill_then_resume_equals_uninterrupted(tiny, phantoms, cli, tmp_path, module_runner, store_reader,
                                                  same_store):
    from stores import EmbeddingStore

    model = tiny("dinov3-vit")
    ref = tmp_path / "ref.zarr"
    r = cli(*_args(model, phantoms, ref)[2:])
    assert r.exit_code == 0, r.output

    out = tmp_path / "killed.zarr"
    proc = module_runner(_args(model, phantoms, out), env={"EMBEDKIT_TEST_KILL_AFTER_UNITS": "2"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with EmbeddingStore.open(out) as st:
        done = st.done_units()
        assert 1 <= done.sum() < len(done)  # really interrupted mid-run

    proc = module_runner(_args(model, phantoms, out, "--json"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["skipped"] == int(done.sum()) * 4 and summary["complete"]
    same_store(store_reader(out), store_reader(ref))


def test_torchrun_two_ranks_equals_one_process(tiny, phantoms, cli, tmp_path, module_runner, store_reader,
                                               same_store):
    model = tiny("dinov3-vit")
    ref = tmp_path / "ref.zarr"
    r = cli(*_args(model, phantoms, ref)[2:])
    assert r.exit_code == 0, r.output

    out = tmp_path / "ddp.zarr"
    proc = module_runner(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *_args(model, phantoms, out, "--json")], timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # rank 0 alone prints
    assert summary["world_size"] == 2 and summary["complete"]
    a, b = store_reader(out), store_reader(ref)
    # Units map to the same batches in both runs; only thread counts differ, hence a float tolerance.
    same_store(a, b, atol=1e-5)
    assert np.asarray(a["done"]).all()


def test_torchrun_two_ranks_cache_images_equals_one_process(phantoms, cli, tmp_path, module_runner):
    from stores.image_cache import ImageCache

    common = ["--res", "64", "--data", str(phantoms), "--unit-rows", "4", "--workers", "1"]
    ref = tmp_path / "ref-cache.zarr"
    r = cli("cache-images", *common, "--out", str(ref))
    assert r.exit_code == 0, r.output

    out = tmp_path / "ddp-cache.zarr"
    proc = module_runner(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "embedkit", "cache-images", *common, "--out", str(out)], timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = ImageCache.open(out), ImageCache.open(ref)
    assert a.done_units().all() and list(a.ids) == list(b.ids)
    np.testing.assert_array_equal(np.asarray(a.images[:]), np.asarray(b.images[:]))
    np.testing.assert_array_equal(np.asarray(a.filled[:]), np.asarray(b.filled[:]))
    # The lock was released when the ranks closed: a new writer may open the cache.
    ImageCache.open(out, "r+").close()
