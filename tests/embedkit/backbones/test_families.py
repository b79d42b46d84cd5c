"""The backbone-family registry: every family builds its tiny models, every spec names a family, help lists them."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from embedkit.backbones import BackboneFamily, get_family, list_backbones, list_families, load_backbone, register_family
from embedkit.backbones.families import family_for_model_type
from embedkit.errors import ModelError
from embedkit.testing import TINY_KINDS

FAMILIES = list_families()
#: How a tiny kind is passed as --model when its saved path alone is not enough.
_REFERENCE = {"timm-test-vit-file": "timm:test_vit@{path}"}


def test_every_tiny_kind_belongs_to_one_family():
    owners = [k for f in FAMILIES for k in f.tiny_kinds]
    assert sorted(owners) == sorted(TINY_KINDS), "each embedkit.testing kind must be listed by exactly one family"


@pytest.mark.parametrize("family,kind", [(f, k) for f in FAMILIES for k in f.tiny_kinds],
                         ids=lambda v: v.name if isinstance(v, BackboneFamily) else v)
def test_family_builds_its_tiny_models(tiny, family, kind):
    import torch

    ref = _REFERENCE.get(kind, "{path}").format(path=tiny(kind))
    bb = load_backbone(ref)
    assert bb.spec.loader == family.name
    assert bb.provenance()["loader"].startswith(f"{family.library}.")
    if family.arch is not None:
        assert bb.spec.family == family.arch
    out = bb.embed(torch.rand(1, 3, 64, 64))
    assert {k: v.shape[1] for k, v in out.items()} == bb.views


@pytest.mark.parametrize("spec", list_backbones(), ids=lambda s: s.name)
def test_every_registered_spec_names_a_family_of_its_library(spec):
    family = get_family(spec.loader)
    assert family.library == spec.source
    assert family.arch in (None, spec.family)
    if family.library == "transformers" and family.license != "unknown":  # a family-wide licence (DINOv2, DINOv3)
        assert spec.license == family.license


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.model_types], ids=lambda f: f.name)
def test_model_types_map_back_to_their_family(family):
    for mtype in family.model_types:
        assert family_for_model_type(mtype) is family


def test_unknown_family_and_model_type_and_duplicates_are_refused():
    with pytest.raises(ModelError, match="No backbone family 'onnx'"):
        get_family("onnx")
    with pytest.raises(ModelError, match="'mae' of 'x' is not supported; supported transformers model types: "
                                         "dinov3_vit"):
        family_for_model_type("mae", what="'x'")
    with pytest.raises(ModelError, match="already registered"):
        register_family(FAMILIES[0])
    dino = get_family("dinov2")
    with pytest.raises(ModelError, match="'dinov2' already belongs to family 'dinov2'"):
        register_family(BackboneFamily(name="other", library="transformers", load=dino.load, description="x",
                                       arch="vit", model_types=("dinov2",), layers=dino.layers))
    with pytest.raises(ModelError, match="needs model_types"):
        BackboneFamily(name="half", library="transformers", load=dino.load, description="x")


def test_models_lists_every_family():
    from embedkit.cli.main import app

    result = CliRunner().invoke(app, ["models", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for family in FAMILIES:
        assert family.name in text
    doc = json.loads(CliRunner().invoke(app, ["models", "--json"]).stdout)
    assert [f["name"] for f in doc["families"]] == [f.name for f in FAMILIES]
    assert {r["loader"] for r in doc["backbones"]} <= {f.name for f in FAMILIES}
