"""The registry of the study's backbones, and `embedkit models`."""
from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from embedkit.backbones import BackboneSpec, list_backbones, register_backbone
from embedkit.backbones.spec import is_hub_id
from embedkit.errors import ModelError

SPECS = list_backbones()
STUDY = ["dinov3-vits16", "dinov3-vitb16", "dinov3-vitl16", "dinov3-vith16plus", "dinov3-7b",
         "dinov3-convnext-tiny", "dinov3-convnext-small", "dinov3-convnext-base", "dinov3-convnext-large",
         "dinov2-vits14", "dinov2-vitb14", "dinov2-vitl14", "dinov2-vitg14", "dinov2-vits14-reg", "dinov2-vitb14-reg",
         "dinov2-vitl14-reg", "dinov2-vitg14-reg", "imagenet-vitb16", "imagenet-convnext-base"]


def test_study_models_are_registered():
    names = [s.name for s in SPECS]
    assert set(STUDY) <= set(names) and len(names) == len(set(names))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_spec_is_complete(spec):
    assert spec.embed_dim > 0 and spec.patch_size in (14, 16, 32) and spec.num_registers in (0, 4)
    assert len(spec.mean) == 3 and len(spec.std) == 3 and all(0 < s < 1 for s in spec.std)
    assert spec.license in ("dinov3-license", "apache-2.0") and spec.default_views
    if spec.source == "transformers":
        assert is_hub_id(spec.hub_id) and spec.hub_id.startswith("facebook/")
    else:
        assert re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", spec.hub_id)
    if spec.name.startswith("dinov3-"):
        assert spec.gated and spec.license == "dinov3-license"
        assert spec.num_registers == (0 if "convnext" in spec.name else 4)


def test_known_facts():
    by = {s.name: s for s in SPECS}
    assert by["dinov3-7b"].hub_id == "facebook/dinov3-vit7b16-pretrain-lvd1689m" and by["dinov3-7b"].embed_dim == 4096
    assert by["dinov3-convnext-base"].embed_dim == 1024 and by["dinov3-convnext-base"].family == "convnext"
    assert by["imagenet-vitb16"].mean == (0.5, 0.5, 0.5)  # the AugReg in21k cfg, not ImageNet's
    assert by["dinov2-vitb14"].mean == (0.485, 0.456, 0.406)  # not BitImageProcessor's CLIP default
    assert by["dinov2-vitg14-reg"].hub_id == "facebook/dinov2-with-registers-giant"


def test_timm_names_exist_in_timm():
    import timm
    from timm.models import get_pretrained_cfg

    for spec in (s for s in SPECS if s.source == "timm"):
        assert spec.hub_id in timm.list_models(pretrained=True)
        cfg = get_pretrained_cfg(spec.hub_id).to_dict()
        assert tuple(cfg["mean"]) == spec.mean and tuple(cfg["std"]) == spec.std
        assert cfg["hf_hub_id"] == spec.weights_repo
    # the reference study's (deprecated) name is an alias of the registered one
    from timm.models._registry import _deprecated_models

    assert _deprecated_models.get("vit_base_patch16_224_in21k") == "vit_base_patch16_224.augreg_in21k"


def test_duplicate_registration_refused():
    spec = SPECS[0]
    with pytest.raises(ModelError, match="already registered"):
        register_backbone(spec)
    with pytest.raises(ModelError, match="source"):
        BackboneSpec(name="x", source="onnx", hub_id=None, embed_dim=1, patch_size=1, num_registers=0,
                     mean=(0, 0, 0), std=(1, 1, 1), license="x")


def test_models_json_lists_everything_offline(empty_hub_cache):
    from embedkit.cli.main import app

    repo = empty_hub_cache / "models--facebook--dinov2-small"
    snap = repo / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"x")
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["backbones"]
    assert [r["name"] for r in rows] == [s.name for s in SPECS]
    local = {r["name"] for r in rows if r["weights_local"]}
    assert local == {"dinov2-vits14"}
    row = next(r for r in rows if r["name"] == "dinov3-vitb16")
    assert row["embed_dim"] == 768 and row["gated"] and row["license"] == "dinov3-license"


def test_models_table(empty_hub_cache):
    from embedkit.cli.main import app

    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "dinov3-7b" in result.stdout and "facebook/dinov3-vit7b16-pretrain-lvd1689m" in result.stdout
