"""``--out`` never destroys what is not the command's own: a folder holding someone's thesis.docx, a file, ``.`` and
``..`` are refused (one line, exit 2, nothing changed); ``--overwrite`` replaces only an output of the same kind."""
from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from embedkit.cli.main import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(r):
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    return r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")


@pytest.fixture
def thesis(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "thesis.docx").write_bytes(b"three years of work")
    return folder


def _intact(folder):
    return sorted(p.name for p in folder.iterdir()) == ["thesis.docx"] and \
        (folder / "thesis.docx").read_bytes() == b"three years of work"


def _rows(manifest):
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


def test_phantoms_overwrite_replaces_only_a_phantom_folder(tmp_path, thesis):
    out = tmp_path / "ph"
    assert invoke("phantoms", "--out", out, "--n", "8", "--size", "32").exit_code == 0
    r = invoke("phantoms", "--out", out, "--n", "4", "--size", "32")
    assert refused(r) and "--overwrite" in r.stderr and len(_rows(out / "manifest.csv")) == 8
    r = invoke("phantoms", "--out", out, "--n", "4", "--size", "32", "--overwrite")
    assert r.exit_code == 0, r.output
    assert len(_rows(out / "manifest.csv")) == 4 and len(list((out / "images").rglob("*.*"))) == 4
    for args in (["--overwrite"], []):
        r = invoke("phantoms", "--out", thesis, "--n", "4", "--size", "32", *args)
        assert refused(r) and "not a phantom folder" in r.stderr and _intact(thesis)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("phantoms", "--out", empty, "--n", "4", "--size", "32").exit_code == 0


def test_manifest_overwrite_replaces_only_a_manifest(tmp_path, thesis):
    assert invoke("phantoms", "--out", tmp_path / "ph", "--n", "6", "--size", "32").exit_code == 0
    src, out = tmp_path / "ph" / "manifest.csv", tmp_path / "m.csv"
    assert invoke("manifest", src, "--out", out).exit_code == 0
    before = out.read_bytes()
    r = invoke("manifest", src, "--out", out, "--views", "all")
    assert refused(r) and out.read_bytes() == before
    assert invoke("manifest", src, "--out", out, "--overwrite").exit_code == 0
    r = invoke("manifest", src, "--out", thesis / "thesis.docx", "--overwrite")
    assert refused(r) and "not a manifest CSV" in r.stderr and _intact(thesis)
    assert refused(invoke("manifest", src, "--out", thesis, "--overwrite")) and _intact(thesis)


def test_dot_and_dotdot_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for args in (["phantoms", "--out", ".", "--n", "4", "--size", "32"], ["phantoms", "--out", "..", "--n", "4"],
                 ["demo", "--out", "."], ["manifest", "x.csv", "--out", ".."]):
        r = invoke(*args)
        assert refused(r), (args, r.output)
    assert list(work.iterdir()) == [] and sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]


def test_extract_and_cache_refuse_a_foreign_folder_but_resume_their_own(tmp_path, thesis):
    from embedkit.testing import make_tiny_backbone

    assert invoke("phantoms", "--out", tmp_path / "ph", "--n", "6", "--size", "32").exit_code == 0
    manifest = tmp_path / "ph" / "manifest.csv"
    model = make_tiny_backbone("dinov3-vit", tmp_path)
    base = ["extract", "--model", model, "--res", "32", "--data", manifest, "--workers", "0"]
    assert refused(invoke(*base, "--out", thesis)) and _intact(thesis)
    cache = ["cache-images", "--data", manifest, "--res", "32", "--workers", "0"]
    assert refused(invoke(*cache, "--out", thesis)) and _intact(thesis)
    store = tmp_path / "s.zarr"
    assert invoke(*base, "--out", store).exit_code == 0
    r = invoke(*base, "--out", store, "--json")  # its own store: resumed (nothing left to do)
    assert r.exit_code == 0 and '"done": 0' in r.stdout
    # an image cache is not an embedding store, and the other way round
    assert invoke(*cache, "--out", tmp_path / "c.zarr").exit_code == 0
    assert refused(invoke(*base, "--out", tmp_path / "c.zarr"))
    assert refused(invoke(*cache, "--out", store))


def test_index_replaces_its_own_index_but_not_a_foreign_folder(tmp_path):
    import numpy as np

    from stores import EmbeddingStore

    n, d = 50, 4
    prov = {"backbone": {"name": "synthetic", "source": "test"}, "resolution": 32, "preprocess": {"preset": "model"},
            "views": {"cls": {"dim": d}}, "dtype": "float32", "precision": "fp32", "dataset": {"spec": "syn"}}
    store = tmp_path / "s.zarr"
    st = EmbeddingStore.create(store, ids=[f"i{i}" for i in range(n)], views={"cls": d}, provenance=prov,
                               dtype="float32")
    st.write_rows(0, {"cls": np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)})
    st.finalize()
    st.close()
    assert invoke("index", store).exit_code == 0
    assert invoke("index", store, "--kind", "flat").exit_code == 0  # its own index: rebuilt
    folder = tmp_path / "s.zarr.index" / "cls"
    (folder / "index.json").unlink()
    (folder / "thesis.docx").write_text("mine")
    r = invoke("index", store)
    assert refused(r) and "not a faiss index folder" in r.stderr and (folder / "thesis.docx").read_text() == "mine"


def test_demo_refuses_a_foreign_folder_and_a_file(tmp_path, thesis):
    assert refused(invoke("demo", "--out", thesis)) and _intact(thesis)
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    assert refused(invoke("demo", "--out", afile)) and afile.read_text() == "keep"
