"""Resolution, offline behaviour, safe checkpoint loading, hashing, precision and provenance."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from embedkit.backbones import get_spec, load_backbone, resolve_backbone
from embedkit.backbones.hashing import file_sha256
from embedkit.errors import ModelError, WeightsNotFoundError


def test_unknown_model_suggests_close_matches():
    with pytest.raises(ModelError) as err:
        load_backbone("dinov3-vitb")
    msg = str(err.value)
    assert "Unknown model 'dinov3-vitb'" in msg and "'dinov3-vitb16'" in msg and "embedkit models" in msg
    with pytest.raises(ModelError, match="Did you mean 'dinov3-7b'"):
        get_spec("dinov3-7")


def test_missing_gated_weights_offline_names_files_and_steps(empty_hub_cache):
    with pytest.raises(WeightsNotFoundError) as err:
        load_backbone("dinov3-vitb16")
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("config.json", "model.safetensors", "HF_HUB_OFFLINE", "hf auth login",
                 "hf download facebook/dinov3-vitb16-pretrain-lvd1689m --local-dir D", "--model D", ".pth"):
        assert part in msg, part


def test_missing_timm_weights_offline(empty_hub_cache):
    with pytest.raises(WeightsNotFoundError, match=r"timm/vit_base_patch16_224\.augreg_in21k.*model\.safetensors"):
        load_backbone("imagenet-vitb16")


def test_unknown_hub_id_offline_is_weights_not_found(empty_hub_cache):
    with pytest.raises(WeightsNotFoundError, match="someorg/some-model"):
        resolve_backbone("someorg/some-model")


def test_folder_without_weights(tmp_path, tiny):
    src = tiny("dinov3-vit")
    dst = tmp_path / "no-weights"
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    with pytest.raises(WeightsNotFoundError, match="model.safetensors"):
        load_backbone(dst)


def test_hub_id_loads_from_local_cache_only(tiny, empty_hub_cache):
    # A generic hub id resolved from a (fake) cache snapshot: the same from_pretrained path as real hub models.
    repo = empty_hub_cache / "models--someorg--tiny-dinov2"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for f in tiny("dinov2").iterdir():
        if f.name.endswith((".json", ".safetensors")) and "sha256" not in f.name:
            shutil.copy(f, snap / f.name)
    bb = load_backbone("someorg/tiny-dinov2", features=["cls"])
    prov = bb.provenance()
    assert prov["id"] == "someorg/tiny-dinov2" and prov["path"] is None
    assert prov["sha256"] == hashlib.sha256((snap / "model.safetensors").read_bytes()).hexdigest()
    assert bb.input_mean == (0.485, 0.456, 0.406)  # explicit ImageNet mean, not BitImageProcessor's CLIP default


def test_registered_name_with_wrong_weights_is_refused(tiny, empty_hub_cache):
    repo = empty_hub_cache / "models--facebook--dinov2-small"
    snap = repo / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny("dinov2") / name, snap / name)
    with pytest.raises(ModelError, match="do not match 'dinov2-vits14'.*384"):
        load_backbone("dinov2-vits14")


class _Exploit:
    """Unpickling this would create a marker file: weights_only must refuse before that happens."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_custom_class_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 8), "payload": _Exploit(marker)}, ckpt)
    with pytest.raises(ModelError, match="weights_only=True"):
        load_backbone(ckpt)
    assert not marker.exists()


def test_checkpoint_of_unknown_layout_asks_for_a_name(tmp_path):
    ckpt = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2, 2)}, str(ckpt))
    with pytest.raises(ModelError, match="MODEL@FILE"):
        load_backbone(ckpt)


def test_sha256_is_cached_by_size_and_mtime(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"abc" * 1000)
    true = hashlib.sha256(f.read_bytes()).hexdigest()
    assert file_sha256(f) == true
    side = f.with_name(f.name + ".embedkit-sha256.json")
    doc = json.loads(side.read_text())
    side.write_text(json.dumps({**doc, "sha256": "cached"}))
    assert file_sha256(f) == "cached"  # served from the sidecar, not re-hashed
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert file_sha256(f) == true  # mtime changed: hashed again


def test_provenance_records_weights_and_views(tiny):
    path = tiny("dinov3-vit")
    bb = load_backbone(path, features=["cls", "mean_tokens", "patch_grid_2x2"])
    prov = bb.provenance()
    assert prov["sha256"] == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert prov["path"] == str(path.resolve()) and prov["source"] == "transformers"
    assert (prov["embed_dim"], prov["patch_size"], prov["num_registers"]) == (32, 16, 4)
    assert prov["precision"] == "fp32" and prov["mean"] == [0.485, 0.456, 0.406]
    assert prov["views"]["patch_grid_2x2"]["dim"] == 128
    assert "ALL output tokens" in bb.view_definitions["mean_tokens"]
    assert json.loads(json.dumps(prov)) == prov


def test_precision_and_device_rules(tiny):
    path = tiny("dinov3-vit")
    with pytest.raises(ModelError, match="fp16"):
        load_backbone(path, precision="fp16")
    with pytest.raises(ModelError, match="precision"):
        load_backbone(path, precision="int8")
    assert load_backbone(path).precision == "fp32"  # auto on CPU
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            load_backbone(path, device="cuda")


def test_bad_views_and_inputs(tiny):
    with pytest.raises(ModelError, match="no register tokens"):
        load_backbone(tiny("dinov2"), features=["mean_registers"])
    with pytest.raises(ModelError, match="Valid views"):
        load_backbone(tiny("dinov3-vit"), features=["pooled"])
    with pytest.raises(ModelError, match="1..2"):
        load_backbone(tiny("dinov3-vit"), features=["cls_layers_last3"])
    with pytest.raises(ModelError, match="stages are numbered"):
        load_backbone(tiny("convnext"), features=["stage5_pooled"])
    bb = load_backbone(tiny("dinov3-vit"), features=["cls"])
    with pytest.raises(ModelError, match="multiple of the patch size"):
        bb.embed(torch.zeros(1, 3, 40, 40))
    with pytest.raises(ModelError, match=r"\(B, 3, R, R\)"):
        bb.embed(torch.zeros(3, 32, 32))


def test_default_views_per_family(tiny):
    assert list(load_backbone(tiny("dinov3-vit")).views) == ["cls", "mean_tokens", "mean_patch"]
    assert list(load_backbone(tiny("dinov3-convnext")).views) == ["pooled"]


def test_model_at_file_checks_the_weights(tiny):
    # A registered DINOv3 name with an original checkpoint of another width is refused, not silently loaded.
    with pytest.raises(ModelError, match="do not match 'dinov3-vitb16'"):
        load_backbone(f"dinov3-vitb16@{tiny('original-dinov3-pth')}")
    with pytest.raises(ModelError, match="not an original-format DINOv3"):
        load_backbone("dinov3-vitb16", weights=tiny("dinov3-vit") / "model.safetensors")


def test_original_dinov3_convnext_pth_matches_transformers(tmp_path):
    # HF weights -> original Meta layout .pth -> load_backbone (timm + its ConvNeXt filter) == HF's own outputs.
    from embedkit.testing import dinov3_convnext_hf_to_original, tiny_dinov3_convnext

    torch.manual_seed(0)
    model = tiny_dinov3_convnext()
    ckpt = tmp_path / "dinov3_convnext_tiny_test.pth"
    torch.save(dinov3_convnext_hf_to_original(model.state_dict()), ckpt)
    bb = load_backbone(ckpt, features=["pooled", "stage1_pooled", "stage2_pooled", "stage3_pooled", "stage4_pooled"])
    assert bb.spec.family == "convnext" and bb.spec.name == "dinov3-convnext:dinov3_convnext_tiny_test"
    assert bb.views == {"pooled": 64, "stage1_pooled": 16, "stage2_pooled": 32, "stage3_pooled": 48,
                        "stage4_pooled": 64}
    x = torch.randn(2, 3, 96, 96)
    out = bb.embed(x)
    with torch.no_grad():
        ref = model(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(out["pooled"], ref.pooler_output, atol=1e-5, rtol=0)
    for i in range(1, 5):
        torch.testing.assert_close(out[f"stage{i}_pooled"], ref.hidden_states[i].mean((2, 3)), atol=1e-5, rtol=0)
    assert bb.provenance()["sha256"] == file_sha256(ckpt)


def test_original_convnext_size_maps_to_the_registry(tmp_path):
    # Only the shapes matter for the spec: a stub with the released depths/widths (dwconv + stem tensors only).
    from embedkit.backbones.checkpoint import DINOV3_CONVNEXT_SIZES
    from embedkit.backbones.original import spec_from_checkpoint

    for size in ("tiny", "small", "base"):
        depths, dims = DINOV3_CONVNEXT_SIZES[size]
        sd = {"downsample_layers.0.0.weight": torch.zeros(dims[0], 3, 4, 4)}
        sd.update({f"stages.{i}.{j}.dwconv.weight": torch.zeros(d, 1, 1, 1)
                   for i, (n, d) in enumerate(zip(depths, dims)) for j in range(n)})
        torch.save(sd, tmp_path / f"{size}.pth")
        spec = spec_from_checkpoint(tmp_path / f"{size}.pth")
        assert (spec.name, spec.embed_dim, spec.source) == (f"dinov3-convnext-{size}", dims[-1], "timm")
        sd["head.weight"] = torch.zeros(1000, dims[-1])  # Meta's classic ConvNeXt: same layout, with a classifier
        torch.save(sd, tmp_path / f"classic-{size}.pth")
        assert spec_from_checkpoint(tmp_path / f"classic-{size}.pth").name == f"convnext:classic-{size}"


def test_truncated_original_convnext_pth_is_a_model_error(tiny, tmp_path):
    good = tiny("original-dinov3-convnext-pth")
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match="weights_only=True"):
        load_backbone(bad)
    (tmp_path / "garbage.pth").write_bytes(os.urandom(4096))
    with pytest.raises(ModelError, match="weights_only=True"):
        load_backbone(tmp_path / "garbage.pth")
