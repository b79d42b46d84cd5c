"""DINOv2 (patch 14) at 512 and 1024, as the reference study ran it: the grid is floored, the leftover pixels
(512 - 36*14 = 8, 1024 - 73*14 = 2) never enter a patch, and provenance says so."""
from __future__ import annotations

import pytest
import torch

from embedkit.backbones import load_backbone
from embedkit.errors import ModelError

FEATS = ["cls", "mean_tokens", "mean_patch", "patch_grid_4x4"]


@pytest.mark.parametrize("kind", ["dinov2", "dinov2-reg"])
def test_dinov2_at_512_equals_its_own_forward_and_ignores_the_last_8_pixels(tiny, kind):
    from transformers import AutoModel

    path = tiny(kind)
    bb = load_backbone(path, features=FEATS, precision="fp32")
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    got = bb.embed(x)
    ref_model = AutoModel.from_pretrained(path).eval()
    with torch.inference_mode():
        lhs = ref_model(pixel_values=x).last_hidden_state
    r = 4 if kind == "dinov2-reg" else 0
    assert lhs.shape[1] == 1 + r + 36 * 36  # the study's forward: a 36x36 grid
    torch.testing.assert_close(got["mean_tokens"], lhs.mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(got["mean_patch"], lhs[:, 1 + r:].mean(1), atol=1e-5, rtol=0)
    # Pixels 504..511 of each side are ignored: changing them changes nothing.
    y = x.clone()
    y[..., 504:, :] = 5.0
    y[..., :, 504:] = -5.0
    again = bb.embed(y)
    for name in FEATS:
        torch.testing.assert_close(again[name], got[name], atol=0, rtol=0)
    # ...while the last used pixel row does matter (the test would notice an off-by-one).
    z = x.clone()
    z[..., 503, :] = 5.0
    assert not torch.equal(bb.embed(z)["mean_tokens"], got["mean_tokens"])


def test_provenance_records_the_patch_grid_and_ignored_pixels(tiny):
    bb = load_backbone(tiny("dinov2"), features=["cls"], precision="fp32")
    g512 = bb.provenance(resolution=512)["input_geometry"]
    assert (g512["grid"], g512["used_pixels"], g512["ignored_pixels"]) == ([36, 36], 504, 8)
    assert "never enter a patch" in g512["rule"]
    g1024 = bb.input_geometry(1024)
    assert (g1024["grid"], g1024["used_pixels"], g1024["ignored_pixels"]) == ([73, 73], 1022, 2)
    assert bb.input_geometry(518)["ignored_pixels"] == 0 and bb.input_geometry(518)["rule"] == "exact tiling"
    assert "input_geometry" not in bb.provenance()


def test_dinov2_at_1024_runs(tiny):
    bb = load_backbone(tiny("dinov2"), features=["mean_tokens", "patch_grid_2x2"], precision="fp32")
    out = bb.embed(torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1)))
    assert out["mean_tokens"].shape == (1, 32) and torch.isfinite(out["patch_grid_2x2"]).all()


def test_other_vits_still_refuse_partial_patches(tiny):
    bb = load_backbone(tiny("dinov3-vit"), features=["cls"], precision="fp32")
    with pytest.raises(ModelError, match="not a multiple of the patch size 16"):
        bb.embed(torch.zeros(1, 3, 100, 100))


def test_extract_paper_protocol_with_dinov2_at_512(tiny, tmp_path):
    """End to end: the study's DINOv2-at-512 run (paper preset, mean_tokens) is extracted, not refused, and the
    store's rows equal the model's own forward on the reference-preprocessed pixels."""
    import numpy as np
    from transformers import AutoModel

    import embedkit.api as ek
    from embedkit.data import make_preset
    from embedkit.data.phantoms import make_phantoms

    manifest = make_phantoms(tmp_path / "ph", n=3, size=96, seed=0)
    st = ek.extract(str(tiny("dinov2")), str(manifest), tmp_path / "s.zarr", res=512, preprocess="paper",
                    features=["mean_tokens"], device="cpu", precision="fp32", dtype="float32", workers=0,
                    batch_size=3)
    prov = st.provenance
    assert prov["backbone"]["input_geometry"]["ignored_pixels"] == 8
    assert prov["backbone"]["input_geometry"]["grid"] == [36, 36]
    assert "integer image" in prov["preprocess"]["interpolation"]
    pre = make_preset("paper", resolution=512)
    root = manifest.parent
    paths = [root / line.split(",")[0] for line in manifest.read_text().splitlines()[1:]]
    pixels = torch.stack([pre(pre.decode(p)) for p in paths])
    with torch.inference_mode():
        ref = AutoModel.from_pretrained(tiny("dinov2")).eval()(pixel_values=pixels).last_hidden_state.mean(1)
    np.testing.assert_allclose(np.asarray(st.load("mean_tokens")), ref.numpy(), atol=1e-5)
