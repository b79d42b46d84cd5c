"""``embedkit extract`` end to end on CPU with tiny random backbones loaded through the normal path.

Parity is checked against each library's own forward (transformers / timm), not against our backbone wrapper.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

#: tiny kind -> (resolution, view checked for parity). DINOv2 has 14 px patches.
KINDS = {"dinov3-vit": (64, "cls"), "dinov3-convnext": (64, "pooled"), "dinov2": (56, "cls"),
         "timm-vit": (64, "cls")}


def _reference_forward(kind: str, path, pixels: torch.Tensor) -> torch.Tensor:
    """The parity view computed by the model's own library from the same pixels."""
    if kind.startswith("timm"):
        import timm

        cfg = json.loads((path / "config.json").read_text())
        args = dict(cfg.get("model_args", {}), num_classes=0, dynamic_img_size=True)
        model = timm.create_model(cfg["architecture"], pretrained=True, **args,
                                  pretrained_cfg_overlay=dict(file=str(path / "model.safetensors")))
        with torch.inference_mode():
            return model.eval().forward_features(pixels)[:, 0]
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path).eval()
    with torch.inference_mode():
        return model(pixel_values=pixels).pooler_output


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_extract_end_to_end_and_parity(kind, tiny, phantoms, cli, tmp_path):
    from embedkit.data import decode_image, load_manifest, make_preset
    from stores import EmbeddingStore

    res, view = KINDS[kind]
    out = tmp_path / "s.zarr"
    r = cli("extract", "--model", tiny(kind), "--res", res, "--data", phantoms, "--out", out, "--dtype", "float32",
            "--batch-size", "3", "--workers", "1", "--rows-per-shard", "8", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    m = load_manifest(str(phantoms))
    n = len(m.ids)
    assert summary["done"] == n and summary["failed"] == 0 and summary["skipped"] == 0 and summary["complete"]
    assert summary["peak_rss_mb"] > 0 and summary["img_per_s"] > 0

    st = EmbeddingStore.open(out)
    assert st.n_rows == n and st.filled.all() and st.done_units().all()
    assert list(st.ids) == [str(i) for i in m.ids]
    np.testing.assert_array_equal(st.labels, m.labels)
    assert list(st.label_names) == list(m.label_names)
    assert list(st.split) == [str(s) for s in m.split]
    prov = st.provenance
    assert prov["resolution"] == res and prov["dtype"] == "float32" and prov["precision"] == "fp32"
    assert len(prov["backbone"]["sha256"]) == 64
    assert prov["preprocess"]["preset"] == "model"
    assert set(prov["views"]) == set(st.views) and all(v["definition"] for v in prov["views"].values())
    assert prov["dataset"]["n_rows"] == n and prov["embedkit_version"] and prov["created"]

    # Parity: stored rows == the library's own forward on the same preprocessed tensor.
    preset = make_preset("model", resolution=res, mean=prov["backbone"]["mean"], std=prov["backbone"]["std"],
                         resize="pad")
    rows = [0, 5, n - 1]
    pixels = torch.stack([torch.as_tensor(np.asarray(preset(decode_image(m.paths[i])), dtype=np.float32))
                          for i in rows])
    ref = _reference_forward(kind, tiny(kind), pixels).numpy()
    got = st.load(view)[rows]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert np.abs(ref).max() > 1e-3  # not vacuous


def test_unknown_model_suggests_close_matches(cli, phantoms, tmp_path):
    r = cli("extract", "--model", "dinov3-vitb", "--res", 64, "--data", phantoms, "--out", tmp_path / "s.zarr")
    assert r.exit_code == 2
    assert "dinov3-vitb16" in r.stderr and "embedkit models" in r.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_bad_arguments_are_one_line_errors(cli, phantoms, tiny, tmp_path):
    r = cli("extract", "--model", tiny("dinov3-vit"), "--res", 64, "--data", phantoms, "--out", tmp_path / "s.zarr",
            "--dtype", "int8")
    assert r.exit_code == 2 and "'dtype'" in r.stderr and "int8" in r.stderr
    r = cli("extract", "--model", tiny("dinov3-vit"), "--res", 64, "--data", phantoms, "--out", tmp_path / "s.zarr",
            "--batch-size", "0")
    assert r.exit_code == 2 and "batch_size" in r.output


def test_provenance_mismatch_is_refused(cli, phantoms, tiny, tmp_path):
    from stores import EmbeddingStore

    out = tmp_path / "s.zarr"
    common = ["--data", phantoms, "--out", out, "--workers", "0", "--rows-per-shard", "8", "--limit", "8"]
    r = cli("extract", "--model", tiny("dinov3-vit"), "--res", 64, *common)
    assert r.exit_code == 0, r.output
    before = EmbeddingStore.open(out).fingerprint
    for other in (["--model", tiny("dinov3-vit"), "--res", 32], ["--model", tiny("dinov3-convnext"), "--res", 64]):
        r = cli("extract", *other, *common)
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert EmbeddingStore.open(out).fingerprint == before
    # The same command again resumes: nothing left to do.
    r = cli("extract", "--model", tiny("dinov3-vit"), "--res", 64, *common, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] == 8 and json.loads(r.stdout)["done"] == 0


def test_corrupt_image_recorded_and_strict(cli, phantoms, tiny, tmp_path):
    import pandas as pd

    from stores import EmbeddingStore

    frame = pd.read_csv(phantoms, dtype=str, keep_default_na=False)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    frame["path"] = [str(phantoms.parent / p) for p in frame["path"]]  # the copy lives elsewhere
    col = frame.columns.get_loc("path")
    frame.iloc[2, col] = str(bad)
    manifest = tmp_path / "m.csv"
    frame.to_csv(manifest, index=False)
    bad_id = frame["id"].iloc[2] if "id" in frame else str(bad)

    args = ["extract", "--model", tiny("dinov3-vit"), "--res", 64, "--data", manifest, "--workers", "1",
            "--rows-per-shard", "8", "--limit", "8"]
    r = cli(*args, "--out", tmp_path / "a.zarr")
    assert r.exit_code == 0, r.output
    assert "warning: 1 image(s) could not be read" in r.stderr and bad_id in r.stderr
    st = EmbeddingStore.open(tmp_path / "a.zarr")
    assert st.filled.sum() == 7 and not st.filled[2] and st.done_units().all()
    assert list(st.failures()) == [bad_id]
    assert "broken.png" in st.failures()[bad_id] and str(tmp_path) not in st.failures()[bad_id]
    r = cli(*args, "--out", tmp_path / "b.zarr", "--strict")
    assert r.exit_code == 1 and "could not be read" in r.stderr


def test_python_api(phantoms, tiny, tmp_path):
    import embedkit.api as ek
    from embedkit.errors import ExtractionError
    from stores import EmbeddingStore

    seen = []
    st = ek.extract(str(tiny("dinov3-vit")), str(phantoms), tmp_path / "s.zarr", res=64, features=["cls", "mean_patch"],
                    workers=0, limit=6, rows_per_shard=8, dtype="float32", progress=lambda d, t: seen.append((d, t)))
    assert isinstance(st, EmbeddingStore) and st.views == {"cls": 32, "mean_patch": 32} and st.filled.all()
    assert seen[-1] == (6, 6)
    with pytest.raises(ExtractionError, match="'precision'"):
        ek.extract(str(tiny("dinov3-vit")), str(phantoms), tmp_path / "t.zarr", res=64, precision="fp16")
