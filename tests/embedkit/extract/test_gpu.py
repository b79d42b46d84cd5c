"""The CUDA extraction path: pinned host buffers + events, bf16 weights, meta-device loads onto the GPU, resume after
SIGKILL, and two ranks sharing one GPU. Every test is ``gpu``-marked (skipped cleanly without CUDA); run them with
``pytest -m gpu tests/embedkit/extract/test_gpu.py`` or through ``benchmarks/gpu_check.sh``.
"""
from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


def _args(model, data, out, *extra):
    return ["-m", "embedkit", "extract", "--model", str(model), "--res", "64", "--data", str(data), "--out", str(out),
            "--dtype", "float32", "--batch-size", "3", "--workers", "1", "--rows-per-shard", "4", *extra]


def test_rank_device_with_real_gpus():
    from embedkit.devices import resolve_device

    count = torch.cuda.device_count()
    for local in range(3):
        dev = resolve_device("cuda", local_rank=local)
        assert dev == torch.device("cuda", local % count)
    assert resolve_device("auto").type == "cuda"
    torch.zeros(1, device=resolve_device("cuda", local_rank=count + 1))  # a usable device, not an invalid ordinal


def test_mapper_uses_pinned_buffers_and_events_and_matches_cpu(tiny):
    from embedkit.backbones import load_backbone
    from embedkit.extract.mapper import EmbedMapper
    from embedkit.extract.pipeline import make_preset_for

    path = tiny("dinov3-vit")
    u8 = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 64, 64), dtype=np.uint8)).pin_memory()
    outs = {}
    for dev in ("cpu", "cuda"):
        bb = load_backbone(path, device=dev, precision="fp32")
        preset = make_preset_for("model", resolution=64, mean=bb.spec.mean, std=bb.spec.std, resize="pad")
        mapper = EmbedMapper(bb, preset, bb.device)
        handle = mapper.submit(u8)
        if dev == "cuda":
            host, event = handle
            assert isinstance(event, torch.cuda.Event)
            assert all(t.is_pinned() and t.device.type == "cpu" for t in host.values())
        outs[dev] = mapper.result(handle)
    for view, cpu in outs["cpu"].items():
        np.testing.assert_allclose(outs["cuda"][view], cpu, atol=2e-4, rtol=0, err_msg=view)


@pytest.mark.parametrize("kind", ["dinov3-vit", "original-dinov3-7b-style-pth", "timm-vit"])
def test_auto_precision_on_cuda_is_bf16_weights_with_fp32_norms(tiny, kind):
    from embedkit.backbones import load_backbone
    from embedkit.backbones.precision import matmul_param_names

    bb = load_backbone(tiny(kind), device="cuda")  # precision auto
    assert bb.precision == "bf16-weights"
    matmul = matmul_param_names(bb.module)
    for name, p in bb.module.named_parameters():
        assert p.device.type == "cuda"
        assert p.dtype == (torch.bfloat16 if name in matmul else torch.float32), name
    assert not any(b.is_meta for b in bb.module.buffers())
    x = torch.randn(4, 3, 64, 64, device="cuda")
    ref = load_backbone(tiny(kind), device="cuda", precision="fp32").embed(x)
    got = bb.embed(x)
    for view in ref:
        cos = torch.nn.functional.cosine_similarity(got[view], ref[view], dim=1).min().item()
        assert got[view].dtype == torch.float32 and cos > 0.999, (view, cos)


def test_meta_load_straight_onto_the_gpu_matches_cpu(tiny):
    from embedkit.backbones import load_backbone

    torch.cuda.reset_peak_memory_stats()
    gpu = load_backbone(tiny("original-dinov3-pth"), device="cuda", precision="fp32")
    cpu = load_backbone(tiny("original-dinov3-pth"), device="cpu", precision="fp32")
    x = torch.randn(2, 3, 64, 64)
    a, b = gpu.embed(x.cuda()), cpu.embed(x)
    for view in b:
        torch.testing.assert_close(a[view].cpu(), b[view], atol=1e-4, rtol=0)


def test_cuda_extract_equals_cpu_extract(tiny, phantoms, cli, tmp_path, store_reader, same_store):
    model = tiny("dinov3-vit")
    for dev in ("cpu", "cuda"):
        r = cli(*_args(model, phantoms, tmp_path / f"{dev}.zarr", "--device", dev, "--precision", "fp32")[2:])
        assert r.exit_code == 0, r.output
    same_store(store_reader(tmp_path / "cuda.zarr"), store_reader(tmp_path / "cpu.zarr"), atol=2e-4)


def test_cuda_sigkill_then_resume_equals_uninterrupted(tiny, phantoms, cli, tmp_path, module_runner, store_reader,
                                                       same_store):
    from stores import EmbeddingStore

    model = tiny("dinov3-vit")
    ref = tmp_path / "ref.zarr"
    r = cli(*_args(model, phantoms, ref, "--device", "cuda")[2:])
    assert r.exit_code == 0, r.output
    out = tmp_path / "killed.zarr"
    proc = module_runner(_args(model, phantoms, out, "--device", "cuda"), env={"EMBEDKIT_TEST_KILL_AFTER_UNITS": "2"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with EmbeddingStore.open(out) as st:
        done = st.done_units()
        assert 1 <= done.sum() < len(done)
    proc = module_runner(_args(model, phantoms, out, "--device", "cuda", "--json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["complete"] and summary["skipped"] == int(done.sum()) * 4
    assert summary["device"].startswith("cuda") and summary["precision"].startswith("bf16-matmul")
    same_store(store_reader(out), store_reader(ref))  # same device, same batches: bitwise


def test_two_ranks_share_one_gpu(tiny, phantoms, cli, tmp_path, module_runner, store_reader, same_store):
    model = tiny("dinov3-vit")
    ref = tmp_path / "ref.zarr"
    r = cli(*_args(model, phantoms, ref, "--device", "cuda")[2:])
    assert r.exit_code == 0, r.output
    out = tmp_path / "two.zarr"
    proc = module_runner(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *_args(model, phantoms, out, "--device", "cuda", "--json")],
                         env={"CUDA_VISIBLE_DEVICES": "0", "EMBEDKIT_DIST_TIMEOUT": "60"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["complete"] and summary["device"] == "cuda:0"
    same_store(store_reader(out), store_reader(ref), atol=1e-2)  # bf16: batch composition may differ per rank
