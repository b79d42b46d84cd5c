"""``embedkit cache-images`` round trip, extract-from-cache == extract-from-files, and no DICOM identifiers in stores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def test_cache_round_trip_and_extract_from_cache_equals_files(cli, phantoms, tiny, tmp_path, store_reader,
                                                              same_store):
    from embedkit.data import decode_image, load_manifest, make_preset
    from stores.image_cache import ImageCache

    cache = tmp_path / "c.zarr"
    r = cli("cache-images", "--data", phantoms, "--res", 64, "--out", cache, "--unit-rows", "8", "--workers", "1",
            "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["complete"]
    m = load_manifest(str(phantoms))
    c = ImageCache.open(cache)
    assert list(c.ids) == [str(i) for i in m.ids] and c.filled.all() and c.resolution == 64
    np.testing.assert_array_equal(c.labels, m.labels)
    assert list(c.split) == [str(s) for s in m.split]
    preset = make_preset("model", resolution=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize="pad")
    for i in (0, 7, len(m.ids) - 1):
        np.testing.assert_array_equal(c.read(slice(i, i + 1))[0], preset.to_uint8(decode_image(m.paths[i])))
    assert c.provenance["resolution"] == 64 and "mean" not in c.provenance["preprocess"]

    # Re-running resumes (nothing to do).
    r = cli("cache-images", "--data", phantoms, "--res", 64, "--out", cache, "--unit-rows", "8", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["done"] == 0

    model = tiny("dinov3-vit")
    common = ["--model", model, "--res", 64, "--dtype", "float32", "--batch-size", "4", "--rows-per-shard", "8"]
    assert cli("extract", *common, "--data", phantoms, "--out", tmp_path / "files.zarr").exit_code == 0
    r = cli("extract", *common, "--data", cache, "--out", tmp_path / "cache.zarr")
    assert r.exit_code == 0, r.output
    same_store(store_reader(tmp_path / "cache.zarr"), store_reader(tmp_path / "files.zarr"))

    # A cache written at another resolution or with another resize is refused in one line.
    r = cli("extract", *common[:2], "--res", 32, *common[4:], "--data", cache, "--out", tmp_path / "x.zarr")
    assert r.exit_code == 2 and "64 px" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("extract", *common, "--resize", "stretch", "--data", cache, "--out", tmp_path / "y.zarr")
    assert r.exit_code == 2 and "preprocessing" in r.stderr


def _identifiers(manifest: Path) -> set[str]:
    import pandas as pd
    import pydicom

    values = set()
    for path in pd.read_csv(manifest, dtype=str)["path"]:
        p = Path(path) if Path(path).is_absolute() else manifest.parent / path
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        for tag in ("PatientName", "PatientID", "PatientBirthDate"):
            value = str(ds.get(tag, "") or "").strip()
            values.update(v for v in [value, *value.split("^")] if len(v) >= 4)
    return values


def test_no_dicom_identifiers_reach_the_store(cli, dicom_phantoms, tiny, tmp_path):
    secrets = _identifiers(dicom_phantoms)
    assert secrets, "the DICOM phantoms should carry identifying values to look for"
    cache, out = tmp_path / "c.zarr", tmp_path / "s.zarr"
    r = cli("cache-images", "--data", dicom_phantoms, "--res", 32, "--out", cache)
    assert r.exit_code == 0, r.output
    r = cli("extract", "--model", tiny("dinov3-vit"), "--res", 32, "--data", dicom_phantoms, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    leaks = []
    for root in (cache, out):
        for f in root.rglob("*"):
            if f.is_file():
                blob = f.read_bytes()
                leaks += [f"{f.relative_to(tmp_path)}: {s}" for s in secrets if s.encode() in blob]
    assert not leaks, leaks
    assert not [s for s in secrets if s in r.stdout + r.stderr]
    # Chunks may be compressed, so also read every text the store and the cache hold, decoded.
    from stores import EmbeddingStore
    from stores.image_cache import ImageCache

    st, c = EmbeddingStore.open(out), ImageCache.open(cache)
    texts = [json.dumps(st.provenance), json.dumps(c.provenance), json.dumps(st.failures()), json.dumps(c.failures())]
    texts += [" ".join(map(str, st.ids)), " ".join(map(str, c.ids))]
    texts += [" ".join(map(str, st.metadata(n))) for n in st.metadata_names]
    texts += [" ".join(map(str, c.metadata(n))) for n in c.metadata_names]
    assert not [s for s in secrets for t in texts if s in t]
