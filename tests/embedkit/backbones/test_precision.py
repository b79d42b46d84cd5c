"""Precision modes and the meta-device load: which parameters end up bf16, exact fp32 norms, feature parity.

bf16 on this CPU is slow (no bf16 units): every model here is tiny.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn as nn

from embedkit.backbones import load_backbone
from embedkit.backbones.base import resolve_precision
from embedkit.backbones.precision import apply_precision, matmul_param_names

X = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
VIT_KINDS = ("dinov3-vit", "timm-vit", "original-dinov3-7b-style-pth")


def _model(tiny, kind):
    return f"timm:test_vit@{tiny(kind)}" if kind == "timm-test-vit-file" else tiny(kind)


def _is_norm_or_scale(name: str, module: nn.Module) -> bool:
    leaf = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
    return isinstance(leaf, (nn.LayerNorm, nn.GroupNorm)) or "norm" in name or "gamma" in name or "lambda" in name


def test_auto_is_bf16_weights_on_cuda_and_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16-weights"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("kind", [*VIT_KINDS, "dinov3-convnext", "timm-convnext"])
def test_bf16_weights_casts_matmuls_only(tiny, kind):
    bb = load_backbone(_model(tiny, kind), precision="bf16-weights")
    module = bb.module
    matmul = matmul_param_names(module)
    assert matmul
    for name, p in module.named_parameters():
        assert p.dtype == (torch.bfloat16 if name in matmul else torch.float32), name
    kept = [n for n, _ in module.named_parameters() if n not in matmul]
    assert any(_is_norm_or_scale(n, module) for n in kept)  # norms / LayerScale really are among the fp32 ones
    assert all(b.dtype != torch.bfloat16 for b in module.buffers())
    # every Linear (>99.9 % of a real ViT's parameters: the memory saving the mode exists for) is stored in bf16
    assert all(m.weight.dtype == torch.bfloat16 for m in module.modules() if isinstance(m, nn.Linear))
    assert bb.provenance()["precision"] == "bf16-matmul-weights+fp32-norms+autocast"


@pytest.mark.parametrize("kind", ["dinov3-vit", "original-dinov3-pth"])
def test_cpu_path_stays_fp32(tiny, kind):
    bb = load_backbone(_model(tiny, kind))  # auto on CPU
    assert bb.precision == "fp32"
    assert {p.dtype for p in bb.module.parameters()} == {torch.float32}
    assert bb.embed(X[:1])["cls"].dtype == torch.float32


def test_bf16_weights_equals_autocast_with_fp32_weights(tiny):
    """Autocast rounds fp32 weights to bf16 at every matmul; storing them in bf16 must change nothing else: the
    same features bit for bit, so norms, LayerScale and the residual stream are computed exactly as in fp32."""
    path = tiny("dinov3-vit")
    feats = ["cls", "mean_patch"]
    mixed = load_backbone(path, precision="bf16-weights", features=feats).embed(X)
    autocast = load_backbone(path, precision="bf16", features=feats).embed(X)
    for view in feats:
        torch.testing.assert_close(mixed[view], autocast[view], atol=0, rtol=0)


def test_bf16_weights_feature_difference_from_fp32(tiny):
    """The figure documented in embedkit.backbones.precision: close to fp32, and closer than a whole-model bf16."""
    path = tiny("dinov3-vit")
    feats = ["cls", "mean_patch"]
    ref = load_backbone(path, precision="fp32", features=feats).embed(X)
    mixed = load_backbone(path, precision="bf16-weights", features=feats).embed(X)
    whole = load_backbone(path, precision="fp32", features=feats)
    whole.module.to(torch.bfloat16)  # the former bf16-weights: norms and residual stream in bf16 too
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        old = {k: v.float() for k, v in whole._forward(X.to(torch.bfloat16)).items()}
    for view in feats:
        err = (mixed[view] - ref[view]).abs().max().item()
        cos = torch.nn.functional.cosine_similarity(mixed[view], ref[view], dim=1).min().item()
        assert 0 < err < 0.03 and cos > 0.9999, (view, err, cos)
        assert err < (old[view] - ref[view]).abs().max().item()


def test_hf_bf16_weights_keeps_exact_fp32_norms(tiny, tmp_path):
    """transformers loads in bf16; the norms and LayerScale must come back with their exact fp32 file values."""
    from safetensors.torch import load_file, save_file

    src = tiny("dinov3-vit")
    dst = tmp_path / "perturbed"
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    g = torch.Generator().manual_seed(1)
    changed = {}
    for k, v in sd.items():
        if "norm" in k or "layer_scale" in k:
            sd[k] = v + 1e-3 * torch.randn(v.shape, generator=g)  # not representable in bf16
            changed[k] = sd[k]
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    assert changed
    params = dict(load_backbone(dst, precision="bf16-weights").module.named_parameters())
    for k, v in changed.items():
        (name,) = [n for n in params if n == k or n.endswith("." + k)]  # transformers prefixes 'model.'
        assert params[name].dtype == torch.float32
        torch.testing.assert_close(params[name], v, atol=0, rtol=0)
        assert not torch.equal(v.to(torch.bfloat16).float(), v)  # the test would fail on a bf16 round trip


def test_apply_precision_converts_in_place():
    m = nn.Sequential(nn.Conv2d(3, 4, 2), nn.Conv2d(4, 4, 1), nn.LayerNorm(4), nn.Linear(4, 2)).to(torch.bfloat16)
    assert apply_precision(m, "bf16-weights") is m
    bf, f = torch.bfloat16, torch.float32
    assert [p.dtype for p in m.parameters()] == [f, f, bf, bf, f, f, bf, bf]  # the image-reading conv stays fp32
    apply_precision(m, "fp32")
    assert {p.dtype for p in m.parameters()} == {torch.float32}


# ------------------------------------------------------------------------------------------------ meta-device load
def _reference_module(tiny, kind):
    """timm's own load path (random fp32 model on the host, then the state dict copied in)."""
    from embedkit.backbones.checkpoint import read_state_dict
    from embedkit.backbones.original import timm_kwargs_for_original, timm_kwargs_for_original_convnext
    from embedkit.backbones.timm_backbones import _create_materialised

    path = tiny(kind)
    if kind.startswith("original-"):
        sd = read_state_dict(path)
        arch, kw = (timm_kwargs_for_original_convnext if "convnext" in kind else timm_kwargs_for_original)(sd)
        return _create_materialised(arch, sd, **kw)
    if kind == "timm-test-vit-file":
        return _create_materialised("test_vit", read_state_dict(path))
    cfg = json.loads((path / "config.json").read_text())
    args = {k: v for k, v in cfg.get("model_args", {}).items() if k != "num_classes"}
    pcfg = dict(cfg.get("pretrained_cfg", {}), architecture=cfg["architecture"])
    return _create_materialised(cfg["architecture"], read_state_dict(path / "model.safetensors"),
                                pretrained_cfg=pcfg, **args)


@pytest.mark.parametrize("kind", ["original-dinov3-pth", "original-dinov3-7b-style-pth",
                                  "original-dinov3-convnext-pth", "timm-vit", "timm-convnext", "timm-test-vit-file"])
def test_meta_device_load_matches_the_materialised_load(tiny, kind, monkeypatch):
    import timm

    calls = []
    real = timm.create_model

    def spy(*args, **kwargs):
        calls.append((kwargs.get("pretrained"), torch.empty(0).device.type))
        return real(*args, **kwargs)

    model = _model(tiny, kind)  # built (on the host, tiny) before the spy goes in
    monkeypatch.setattr(timm, "create_model", spy)
    bb = load_backbone(model, precision="fp32")
    monkeypatch.setattr(timm, "create_model", real)
    # only ever built on the meta device (spec shapes, then the model): never a random fp32 model on the host
    assert calls and set(calls) == {(False, "meta")}
    ref = _reference_module(tiny, kind).eval()
    got = bb.module.state_dict()
    want = ref.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    for (name, b), (_, rb) in zip(bb.module.named_buffers(), ref.named_buffers()):
        assert not b.is_meta and torch.equal(b, rb), name  # computed buffers (RoPE) rebuilt after the meta build
    with torch.inference_mode():
        torch.testing.assert_close(bb.module.forward_features(X), ref.forward_features(X), atol=0, rtol=0)
