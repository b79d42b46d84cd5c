"""Every extension point is a registry: these tests iterate them, so a new head or adapter is tested on arrival.

Probe heads (:mod:`probes.heads`) each fit a tiny problem; dataset adapters (:mod:`embedkit.data.adapters`) each
build manifest rows from their synthetic on-disk fixture (``tests/embedkit/data/fixtures.py``); help texts list what
the registries hold.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedkit.cli.main import app
from embedkit.data.adapters import Adapter, list_adapters
from probes.heads import HEADS, head_help, list_heads, make_probe
from probes.synthetic import make_multilabel_features

_spec = importlib.util.spec_from_file_location("embedkit_data_fixtures",
                                               Path(__file__).parent / "data" / "fixtures.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

#: Options that keep each head's fit to a second on the tiny problem (a head not named here uses its defaults).
_FAST = {"linear": {"lrs": (1e-2,), "weight_decays": (0.0,), "max_epochs": 3},
         "mlp": {"lrs": (1e-3,), "max_epochs": 3}, "sklearn": {"Cs": (1.0,)}, "knn": {"ks": (5, 10)}}


def _help(*command: str) -> str:
    r = CliRunner().invoke(app, [*command, "--help"], terminal_width=400)
    assert r.exit_code == 0, r.output
    return " ".join(r.stdout.split())


@pytest.mark.parametrize("spec", list_heads(), ids=lambda s: s.name)
def test_every_registered_head_fits_a_tiny_problem(spec):
    x, y = make_multilabel_features(300, 16, 3, rank=4, signal=3.0, seed=0, missing=0.05)
    probe = make_probe(spec.name, seed=0, **_FAST.get(spec.name, {})).fit(x[:180], y[:180], x[180:240], y[180:240])
    p = probe.predict_proba(x[240:])
    assert p.shape == (60, 3) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert probe.kind == spec.name and probe.best_val_auroc_ > 0.6  # the signal is strong: better than chance
    assert spec.accepted_options() and spec.description and spec.name in head_help()
    assert isinstance(probe.state_dict(), dict)


def test_head_registry_names_match_the_classes_and_refuse_unknown_options():
    from probes.errors import ProbeError

    assert HEADS == tuple(h.name for h in list_heads())
    for spec in list_heads():
        assert spec.load().kind == spec.name
        with pytest.raises(ProbeError, match="option"):
            make_probe(spec.name, no_such_option=1)
    with pytest.raises(ProbeError, match="Choose one of " + ", ".join(HEADS)):
        make_probe("svm")


def test_knn_head_uses_the_exact_path_and_matches_faiss():
    """The k-NN head's neighbours are exact_neighbors', and equal faiss's exact inner-product search."""
    import faiss

    from probes.retrieval import exact_neighbors, unit_rows

    x, y = make_multilabel_features(400, 16, 2, rank=4, seed=1)
    probe = make_probe("knn", ks=(7,)).fit(x[:300], y[:300], x[300:350], y[300:350])
    sims, nbrs = probe._search(x[350:], 7)
    ref_s, ref_i = exact_neighbors(x[350:], x[:300], 7)
    flat = faiss.IndexFlatIP(16)
    flat.add(unit_rows(x[:300]))
    f_s, f_i = flat.search(unit_rows(x[350:]), 7)
    assert (nbrs == ref_i).all() and (nbrs == f_i).all()
    np.testing.assert_allclose(sims, f_s, atol=1e-5)


def _adapter_root(name: str, tmp_path: Path) -> Path:
    if name == "dicom":  # any DICOM folder: the phantoms' DICOM files are one
        from embedkit.data.phantoms import make_phantoms

        return make_phantoms(tmp_path / "dicom", n=6, size=32, formats=("dicom",)).parent
    maker = f"make_{name.replace('-', '_')}"
    builder = getattr(fixtures, maker, None)
    assert builder is not None, f"adapter {name!r} has no {maker} in tests/embedkit/data/fixtures.py"
    return builder(tmp_path / name)


@pytest.mark.parametrize("spec", list_adapters(), ids=lambda s: s.name)
def test_every_registered_adapter_builds_rows_from_its_fixture(spec, tmp_path):
    from embedkit.data import load_manifest

    module = spec.load()
    assert isinstance(module, Adapter)
    root = _adapter_root(spec.name, tmp_path)
    m = load_manifest(f"{spec.name}:{root}", views="all", allow_leak=True)
    assert len(m.frame) > 0 and m.frame["id"].is_unique
    for alias in spec.aliases:
        assert len(load_manifest(f"{alias}:{root}", views="all", allow_leak=True).frame) == len(m.frame)


def test_help_texts_list_the_registries():
    from stores.index import KINDS

    manifest_help = _help("manifest")
    extract_help = _help("extract")
    for spec in list_adapters():
        assert spec.name in manifest_help and spec.name in extract_help
    index_help = _help("index")
    assert all(kind in index_help for kind in KINDS)


def test_probe_head_option_is_generated_from_the_registry(tmp_path):
    from typer.testing import CliRunner

    from embedkit.cli.main import app

    result = CliRunner().invoke(app, ["probe", "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    for spec in list_heads():
        assert f"{spec.name}: {' '.join(spec.description.split())}" in text
    bad = CliRunner().invoke(app, ["probe", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "run"), "--head", "svm"])
    assert bad.exit_code == 2 and " | ".join(HEADS) in " ".join(bad.output.replace("│", " ").split())
