"""Every view equals what the model itself computes on the same tensor (fp32, <= 1e-5)."""
from __future__ import annotations

import pytest
import torch

from embedkit.backbones import load_backbone

ATOL = 1e-5
HF_VITS = {"dinov3-vit": 4, "dinov3-vit-7b-style": 4, "dinov2": 0, "dinov2-reg": 4}


def _close(a, b):
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def _grid_ref(patch_tokens, h, w, g):
    # Independent of adaptive_avg_pool2d: average each (h/g x w/g) block by reshaping.
    b, _, d = patch_tokens.shape
    x = patch_tokens.reshape(b, g, h // g, g, w // g, d).mean(dim=(2, 4))  # (B, g, g, D)
    return x.reshape(b, -1)


@pytest.mark.parametrize("kind", sorted(HF_VITS))
def test_hf_vit_views_match_own_forward(tiny, kind):
    from transformers import AutoModel

    path = tiny(kind)
    feats = ["cls", "mean_tokens", "mean_patch", "patch_grid_2x2", "cls_layers_last2", "cls_layer_-1", "cls_layer_0"]
    if HF_VITS[kind]:
        feats.append("mean_registers")
    bb = load_backbone(path, features=feats, precision="fp32")
    ref_model = AutoModel.from_pretrained(path).eval()
    p = bb.spec.patch_size
    x = torch.randn(2, 3, 4 * p, 4 * p, generator=torch.Generator().manual_seed(1))
    got = bb.embed(x)
    with torch.inference_mode():
        ref = ref_model(pixel_values=x, output_hidden_states=True)
    lhs, r = ref.last_hidden_state, HF_VITS[kind]
    norm = ref_model.norm if kind.startswith("dinov3") else ref_model.layernorm
    assert bb.views == {f: v.shape[1] for f, v in got.items()}
    assert all(v.dtype == torch.float32 for v in got.values())
    _close(got["cls"], ref.pooler_output)
    _close(got["mean_tokens"], lhs.mean(1))
    _close(got["mean_patch"], lhs[:, 1 + r:].mean(1))
    _close(got["patch_grid_2x2"], _grid_ref(lhs[:, 1 + r:], 4, 4, 2))
    _close(got["cls_layer_-1"], got["cls"])
    with torch.inference_mode():
        hs = ref.hidden_states  # embeddings + one per block
        _close(got["cls_layer_0"], norm(hs[1])[:, 0])
        _close(got["cls_layers_last2"], torch.cat([norm(hs[-2])[:, 0], norm(hs[-1])[:, 0]], 1))
    if r:
        _close(got["mean_registers"], lhs[:, 1:1 + r].mean(1))
    assert not torch.allclose(got["cls"], got["mean_tokens"])  # the views are not accidentally the same


@pytest.mark.parametrize("kind", ["dinov3-convnext", "convnext"])
def test_hf_convnext_views_match_own_forward(tiny, kind):
    from transformers import AutoModel

    path = tiny(kind)
    feats = ["pooled", "stage1_pooled", "stage2_pooled", "stage3_pooled", "stage4_pooled", "patch_grid_2x2"]
    bb = load_backbone(path, features=feats)
    ref_model = AutoModel.from_pretrained(path).eval()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    got = bb.embed(x)
    with torch.inference_mode():
        ref = ref_model(pixel_values=x, output_hidden_states=True)
    _close(got["pooled"], ref.pooler_output)
    maps = ref.hidden_states[-4:]  # the four stage outputs, NCHW
    for s in range(4):
        _close(got[f"stage{s + 1}_pooled"], maps[s].mean(dim=(-2, -1)))
    last = maps[-1].permute(0, 2, 3, 1).reshape(2, -1, maps[-1].shape[1])
    _close(got["patch_grid_2x2"], _grid_ref(last, 4, 4, 2))
    assert bb.views["stage1_pooled"] == 16 and bb.views["patch_grid_2x2"] == 4 * 64


def test_timm_vit_views_match_timm_own_loader(tiny):
    import timm

    path = tiny("timm-vit")
    bb = load_backbone(path, features=["cls", "mean_tokens", "mean_patch", "cls_layers_last2"])
    ref_model = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0,
                                  dynamic_img_size=True).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    got = bb.embed(x)
    with torch.inference_mode():
        tokens = ref_model.forward_features(x)
        _close(got["cls"], ref_model.forward_head(tokens, pre_logits=True))
        inter = ref_model.forward_intermediates(x, indices=2, intermediates_only=True, output_fmt="NLC",
                                                return_prefix_tokens=True, norm=False)
        # forward_intermediates gives (patch tokens, prefix tokens) per block, before the final norm
        cls_ref = torch.cat([ref_model.norm(prefix[:, 0]) for _, prefix in inter], dim=1)
    _close(got["mean_tokens"], tokens.mean(1))
    _close(got["mean_patch"], tokens[:, 1:].mean(1))
    _close(got["cls_layers_last2"], cls_ref)


def test_timm_convnext_views_match_timm_own_loader(tiny):
    import timm

    path = tiny("timm-convnext")
    bb = load_backbone(path, features=["pooled", "stage2_pooled", "stage4_pooled"])
    ref_model = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    got = bb.embed(x)
    with torch.inference_mode():
        _close(got["pooled"], ref_model.forward_head(ref_model.forward_features(x), pre_logits=True))
        maps = ref_model.forward_intermediates(x, intermediates_only=True)
    _close(got["stage2_pooled"], maps[1].mean(dim=(-2, -1)))
    _close(got["stage4_pooled"], maps[3].mean(dim=(-2, -1)))


def test_timm_name_with_weights_file(tiny):
    import timm
    from safetensors.torch import load_file

    path = tiny("timm-test-vit-file")
    bb = load_backbone(f"timm:test_vit@{path}", features=["cls"])
    ref_model = timm.create_model("test_vit", pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    ref_model.load_state_dict(load_file(str(path)))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        _close(bb.embed(x)["cls"], ref_model.forward_head(ref_model.forward_features(x), pre_logits=True))
    assert bb.provenance()["path"] == str(path)


@pytest.mark.parametrize("kind", ["original-dinov3-pth", "original-dinov3-7b-style-pth"])
def test_original_dinov3_checkpoint_hf_timm_parity(tiny, kind):
    """One fake original Meta checkpoint, loaded by embedkit (timm Eva) and mapped into transformers' DINOv3ViTModel."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from embedkit.backbones.checkpoint import dinov3_original_to_hf, read_state_dict

    path = tiny(kind)
    bb = load_backbone(path, features=["cls", "mean_tokens", "mean_patch", "mean_registers", "cls_layers_last2"])
    assert bb.spec.embed_dim == 128 and bb.spec.num_registers == 4 and bb.spec.source == "timm"
    swiglu = "7b" in kind
    cfg = DINOv3ViTConfig(hidden_size=128, intermediate_size=256 if swiglu else 512, num_hidden_layers=2,
                          num_attention_heads=2, num_register_tokens=4, patch_size=16, proj_bias=True,
                          use_gated_mlp=swiglu, hidden_act="silu" if swiglu else "gelu",
                          query_bias=not swiglu, value_bias=not swiglu)
    hf = DINOv3ViTModel(cfg).eval()
    missing, unexpected = hf.load_state_dict(dinov3_original_to_hf(read_state_dict(path)), strict=False)
    assert not unexpected and all("rope" in k or "inv_freq" in k for k in missing), (missing, unexpected)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    got = bb.embed(x)
    with torch.inference_mode():
        lhs = hf(pixel_values=x).last_hidden_state
    _close(got["cls"], lhs[:, 0])
    _close(got["mean_tokens"], lhs.mean(1))
    _close(got["mean_patch"], lhs[:, 5:].mean(1))
    _close(got["mean_registers"], lhs[:, 1:5].mean(1))


def test_bf16_autocast_outputs_float32_and_close(tiny):
    path = tiny("dinov3-vit")
    x = torch.randn(1, 3, 32, 32)
    ref = load_backbone(path, precision="fp32", features=["cls"]).embed(x)["cls"]
    bb = load_backbone(path, precision="bf16", features=["cls"])
    got = bb.embed(x)["cls"]
    assert got.dtype == torch.float32 and bb.provenance()["precision"] == "bf16-autocast"
    torch.testing.assert_close(got, ref, atol=0.1, rtol=0.05)
    assert not torch.equal(got, ref)  # it really ran in bf16
