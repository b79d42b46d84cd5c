"""`embedkit demo` runs the real pipeline end to end, offline, and leaves a usable store and probe run behind."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from embedkit.cli.main import app


def test_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--n", "90", "--size", "64", "--res", "32"])
    assert result.exit_code == 0, result.output

    from stores import EmbeddingStore

    st = EmbeddingStore.open(out / "phantoms.zarr")
    assert st.filled.all() and st.n_rows == 90
    assert st.provenance["backbone"]["source"] == "transformers"
    assert st.verify()["ok"]

    metrics = json.loads((out / "runs" / "linear" / "metrics.json").read_text())
    assert metrics["store"]["fingerprint"] == st.fingerprint
    # The large structural finding is learnable even from a tiny random backbone; the nodule (sub-pixel at 32 px) is not.
    assert metrics["test"]["per_label"]["cardiomegaly"]["auroc"]["value"] > 0.6
    assert (out / "phantoms.zarr.index" / "mean_patch" / "index.json").exists()


def test_demo_rejects_a_resolution_that_is_not_a_patch_multiple(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--res", "40"])
    assert result.exit_code == 2
    assert "multiple of 16" in result.output
