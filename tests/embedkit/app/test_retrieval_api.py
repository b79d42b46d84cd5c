"""``embedkit.api`` for index / search / search_eval and info / models / manifest / phantoms, called directly.

Real stores, a real faiss index saved beside them, real phantoms; results are checked against numpy brute force and
against what the matching command prints with ``--json``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import embedkit.api as ek
from embedkit.cli.main import app
from embedkit.errors import EmbedkitError
from stores.errors import StoreError

N, D, LABELS = 240, 12, ["a", "b"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """240 rows, 2 images per patient; row 239 (test) is a copy of row 0 (train) under another patient."""
    from stores import EmbeddingStore

    rng = np.random.default_rng(1)
    patient = np.arange(N) // 2
    labels = (rng.random((N // 2, 2)) < 0.4).astype(np.float32)[patient]
    x = (labels @ rng.standard_normal((2, D)) * 2 + rng.standard_normal((N, D))).astype(np.float32)
    x[239] = x[0]
    split = np.where(patient % 4 == 0, "test", np.where(patient % 4 == 1, "val", "train"))
    split[:2], split[238:] = "train", "test"
    pid = np.array([f"p{p}" for p in patient], dtype=object)
    pid[239] = "p-copy"
    prov = {"backbone": {"name": "synthetic", "source": "test", "id": None, "path": None, "sha256": None},
            "resolution": 32, "preprocess": {"preset": "model"}, "views": {"cls": {"dim": D}},
            "dtype": "float32", "precision": "fp32", "dataset": {"spec": "synthetic", "n_rows": N}}
    path = tmp_path_factory.mktemp("retrieval") / "s.zarr"
    st = EmbeddingStore.create(path, ids=[f"img{i:04d}" for i in range(N)], views={"cls": D}, provenance=prov,
                               labels=labels, label_names=LABELS, split=list(split),
                               metadata={"patient_id": list(pid)}, dtype="float32")
    st.write_rows(0, {"cls": x})
    st.finalize()
    st.close()
    return path, x, labels, split, pid


def _cosine_top(x, query_row, allowed, k):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn[query_row]
    return np.flatnonzero(allowed)[np.argsort(-sim[allowed], kind="stable")[:k]]


def test_index_and_search_return_objects_that_match_brute_force(store):
    path, x, labels, split, pid = store
    built = ek.index(path, kind="flat")
    assert built.info["factory"] == "Flat" and built.info["ntotal"] == N and built.path.is_dir()
    assert built.to_dict()["path"] == str(built.path)

    res = ek.search(path, query_id="img0010", k=4, split="test", exclude_same_patient=True)
    allowed = (split == "test") & (pid != pid[10])
    assert [r["row"] for r in res.results] == _cosine_top(x, 10, allowed, 4).tolist()
    assert res.query == {"id": "img0010", "row": 10} and res.metric == "cosine" and res.index == "Flat"
    assert all(r["labels"] == [n for n, v in zip(LABELS, labels[r["row"]]) if v == 1] for r in res.results)

    by_vector = ek.search(path, vector=x[77], k=1)  # an array works as well as a .npy file
    assert by_vector.results[0]["id"] == "img0077" and by_vector.results[0]["score"] == pytest.approx(1.0, abs=1e-5)

    cli = CliRunner().invoke(app, ["search", str(path), "--id", "img0010", "-k", "4", "--split", "test",
                                   "--exclude-same-patient", "--json"])
    assert cli.exit_code == 0 and json.loads(cli.stdout) == json.loads(json.dumps(res.to_dict()))


def test_search_eval_agrees_with_the_exact_path_and_finds_the_planted_copy(store):
    from probes.retrieval import exact_neighbors, label_agreement

    path, x, labels, split, pid = store
    said: list[str] = []
    res = ek.search_eval(path, k=5, dup_threshold=0.999, say=said.append)
    train, test = split == "train", np.flatnonzero(split == "test")
    _, nb = exact_neighbors(x[test], x[train], 5, query_groups=pid[test], gallery_groups=pid[train])
    ref = label_agreement(labels[test], labels[train], nb, label_names=LABELS)
    for name in LABELS:
        assert res.label_agreement["labels"][name]["map_at_k"] == pytest.approx(ref["labels"][name]["map_at_k"])
    assert res.label_agreement["same_patient_excluded"] is True
    pairs = res.near_duplicates["pairs"]
    assert [(p["a"], p["b"]) for p in pairs] == [("img0000", "img0239")] and pairs[0]["patient_b"] == "p-copy"
    assert res.to_dict()["near_duplicates"]["n_pairs"] == 1
    assert said == [] or "building one in memory" in said[0]


@pytest.mark.parametrize("call, match", [
    (lambda p: ek.index(p, kind="annoy"), "'kind' parameter of index"),
    (lambda p: ek.index(p, metric="dot"), "'metric' parameter of index"),
    (lambda p: ek.index(p, features="patch"), "no view 'patch'"),
    (lambda p: ek.search(p), "exactly one query"),
    (lambda p: ek.search(p, query_id="img0001", vector=np.zeros(D)), "exactly one query"),
    (lambda p: ek.search(p, query_id="img0001", k=0), "'k' parameter of search"),
    (lambda p: ek.search(p, query_id="nobody"), "No row with id"),
    (lambda p: ek.search(p, vector=np.zeros(D + 1)), f"one vector of {D} values"),
    (lambda p: ek.search(p, vector=np.zeros(D), exclude_same_patient=True), "needs --id"),
    (lambda p: ek.search(p, query_id="img0001", split="holdout"), "No rows in split"),
    (lambda p: ek.search_eval(p, k=0), "'k' parameter of search-eval"),
])
def test_bad_arguments_raise_typed_errors(store, call, match):
    path = store[0]
    ek.index(path, kind="flat")
    with pytest.raises((EmbedkitError, StoreError), match=match):
        call(path)


def test_info_models_phantoms_and_manifest(tmp_path, store):
    from embedkit.app.catalog import ModelInfo

    info = ek.info(store[0], verify=True)
    assert info.summary["rows"] == N and info.summary["filled"] == N and info.ok

    models = ek.models()
    assert models and all(isinstance(m, ModelInfo) and m.embed_dim > 0 for m in models)
    cli = CliRunner().invoke(app, ["models", "--json"])
    assert cli.exit_code == 0 and [b["name"] for b in json.loads(cli.stdout)["backbones"]] == [m.name for m in models]

    ph = ek.phantoms(tmp_path / "ph", n=12, size=32, formats=("png8",), images_per_patient=2)
    assert ph.manifest.is_file() and ph.summary["rows"] == 12 and ph.summary["patients"] == 6
    m = ek.manifest(ph.manifest, tmp_path / "m.csv")
    assert m.out.is_file() and m.summary["rows"] == 12 and m.summary["missing"] == 0
    assert m.to_dict()["spec"]["labels"] == "full"
