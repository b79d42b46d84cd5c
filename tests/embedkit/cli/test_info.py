"""``embedkit info``: human tables, JSON, and a one-line error for a bad path."""
from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from embedkit.cli.main import app
from stores import EmbeddingStore


def _store(tmp_path):
    n = 300
    labels = np.zeros((n, 2), np.float32)
    labels[:10, 0] = 1  # 10 train positives of "Edema"
    labels[250:255, 1] = 1  # 5 test positives of "Mass"
    labels[20, 1] = np.nan
    prov = {"backbone": {"name": "dinov3-vitb16", "id": "facebook/dinov3-vitb16-pretrain-lvd1689m", "sha256": "ab"},
            "resolution": 512, "preprocess": {"preset": "paper"}, "dtype": "float16", "created": "now"}
    path = tmp_path / "nih.zarr"
    with EmbeddingStore.create(path, ids=[f"i{k}" for k in range(n)], views={"cls": 32, "mean_patch": 32},
                               provenance=prov, labels=labels, label_names=["Edema", "Mass"],
                               split=["train"] * 200 + ["val"] * 50 + ["test"] * 50, rows_per_chunk=128) as st:
        rng = np.random.default_rng(0)
        for u in st.pending_units()[:2]:  # 2 of 3 units: 256 rows, one failure
            sl = st.unit_slice(u)
            feats = {v: rng.standard_normal((sl.stop - sl.start, 32)) for v in st.views}
            st.write_unit(u, feats, failures={7: "DecodeError: truncated"} if u == 0 else None)
        fingerprint = st.fingerprint
    return path, fingerprint


def test_info_json(tmp_path):
    path, fingerprint = _store(tmp_path)
    res = CliRunner().invoke(app, ["info", str(path), "--json", "--verify"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["rows"] == 300 and doc["filled"] == 255 and doc["failures"] == 1
    assert doc["units"] == {"done": 2, "total": 3, "rows_per_unit": 128}
    assert doc["views"] == {"cls": 32, "mean_patch": 32} and doc["dtype"] == "float16"
    assert doc["labels"] == ["Edema", "Mass"]
    assert doc["positives"]["train"] == {"rows": 200, "Edema": 10, "Mass": 0}
    assert doc["positives"]["test"] == {"rows": 50, "Edema": 0, "Mass": 5}
    assert doc["positives"]["all"]["rows"] == 300
    assert doc["provenance"]["backbone"]["name"] == "dinov3-vitb16"
    assert doc["fingerprint"] == fingerprint
    assert doc["size_bytes"] > 256 * 64 * 2 and doc["files"] > 5
    assert doc["verify"]["ok"] is True


def test_info_human(tmp_path):
    path, fingerprint = _store(tmp_path)
    res = CliRunner().invoke(app, ["info", str(path)], terminal_width=200)
    assert res.exit_code == 0, res.output
    out = res.stdout
    for text in ("255 (85.0%)", "cls (32), mean_patch (32)", "float16", "dinov3-vitb16", "paper", fingerprint,
                 "Positives per split", "train (n=200)", "Edema", "units done", "2/3"):
        assert text in out, text


def test_info_bad_path_is_one_line_exit_2(tmp_path):
    res = CliRunner().invoke(app, ["info", str(tmp_path / "nope.zarr")])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: No store at") and "nope.zarr" in lines[0]
