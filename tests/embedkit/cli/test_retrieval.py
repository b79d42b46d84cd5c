"""`embedkit index / search / search-eval` end to end on real stores (CliRunner, the same code users run)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from embedkit.cli.main import app

N, D, LABELS = 600, 16, ["a", "b", "c"]


def _provenance() -> dict:
    return {
        "backbone": {"name": "synthetic", "source": "test", "id": None, "path": None, "sha256": None},
        "resolution": 32, "preprocess": {"preset": "model"},
        "views": {"cls": {"dim": D, "definition": "synthetic"}}, "dtype": "float32", "precision": "fp32",
        "dataset": {"spec": "synthetic", "n_rows": N}, "embedkit_version": "0.1.0", "created": "2026-01-01T00:00:00Z",
    }


@pytest.fixture
def synthetic_store(tmp_path):
    """600 rows: 3 images per patient (near-identical), label-driven clusters, 5 unfilled rows and one planted
    cross-split duplicate (row 599, test, is a copy of row 0, train, under another patient)."""
    from stores import EmbeddingStore

    rng = np.random.default_rng(0)
    patient = np.arange(N) // 3
    labels = (rng.random((N // 3, 3)) < 0.3).astype(np.float32)[patient]
    centres = rng.standard_normal((3, D)) * 1.5
    base = labels @ centres + rng.standard_normal((N // 3, D))[patient]
    x = (base + 0.05 * rng.standard_normal((N, D))).astype(np.float32)
    x[599] = x[0]
    split = np.where(patient % 5 == 0, "test", np.where(patient % 5 == 1, "val", "train"))
    split[:3] = "train"
    split[597:] = "test"
    pid = [f"p{p}" for p in patient]
    pid[599] = "p-copy"
    ok = np.ones(N, bool)
    ok[[10, 11, 12, 200, 400]] = False
    path = tmp_path / "syn.zarr"
    st = EmbeddingStore.create(path, ids=[f"img{i:04d}" for i in range(N)], views={"cls": D},
                               provenance=_provenance(), labels=labels, label_names=LABELS, split=list(split),
                               metadata={"patient_id": pid}, dtype="float32")
    st.write_rows(0, {"cls": x}, ok=ok)
    st.close()
    return path, x, labels, split, np.array(pid), ok


def run(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r


def test_index_then_search_by_id_vector_split_and_patient(synthetic_store):
    path, x, labels, split, pid, ok = synthetic_store
    r = run("index", path, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["factory"] == "Flat" and info["ntotal"] == ok.sum() and (path.parent / "syn.zarr.index/cls").is_dir()

    r = run("search", path, "--id", "img0030", "-k", "5", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    assert [h["id"] for h in res][:2] == ["img0031", "img0032"]  # the same patient's other images
    assert all(h["id"] != "img0030" for h in res) and all(h["id"] not in ("img0010", "img0011") for h in res)
    assert res[0]["patient_id"] == "p10" and res[0]["split"] == split[31]
    assert res[0]["labels"] == [n for n, v in zip(LABELS, labels[31]) if v == 1]

    r = run("search", path, "--id", "img0030", "-k", "5", "--exclude-same-patient", "--split", "test", "--json")
    res = json.loads(r.stdout)["results"]
    assert len(res) == 5 and all(h["patient_id"] != "p10" and h["split"] == "test" for h in res)
    rows = [h["row"] for h in res]
    # exact (flat) search: the same rows as numpy brute force under the same filters
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn[30]
    allowed = ok & (split == "test") & (pid != "p10")
    ref = np.flatnonzero(allowed)[np.argsort(-sim[allowed], kind="stable")[:5]]
    assert rows == ref.tolist()

    np.save(path.parent / "q.npy", x[123])
    r = run("search", path, "--vector", path.parent / "q.npy", "-k", "3", "--json")
    top = json.loads(r.stdout)["results"][0]
    assert top["id"] == "img0123" and top["score"] == pytest.approx(1.0, abs=1e-5)

    table = run("search", path, "--id", "img0030", "-k", "2")
    assert table.exit_code == 0 and "img0031" in table.stdout


def test_search_refuses_bad_queries(synthetic_store):
    path, *_ = synthetic_store
    assert run("index", path).exit_code == 0
    for args, msg in [(("--id", "img0010"), "no embedding"), (("--id", "nope"), "No row with id"),
                      ((), "exactly one query"), (("--id", "img0001", "--split", "holdout"), "No rows in split")]:
        r = run("search", path, *args)
        assert r.exit_code == 2 and msg in r.stderr, (args, r.stderr)
    r = run("index", path, "--features", "patch")
    assert r.exit_code == 2 and "no view 'patch'" in r.stderr


def test_stale_index_is_refused_with_the_rebuild_command(synthetic_store):
    from stores import EmbeddingStore, open_index
    from stores.errors import StaleIndexError

    path, x, *_ = synthetic_store
    assert run("index", path, "--kind", "flat").exit_code == 0
    open_index(path, features="cls").search(x[:2], 3)  # fresh: opens
    with EmbeddingStore.open(path, "r+") as st:  # resume fills a missing row: the indexed rows are out of date
        st.write_rows(10, {"cls": x[10:13]})
    r = run("search", path, "--id", "img0030")
    assert r.exit_code == 2 and f"embedkit index {path} --features cls --kind flat" in r.stderr
    with pytest.raises(StaleIndexError, match="rebuild"):
        open_index(path, features="cls")
    assert run("index", path).exit_code == 0 and run("search", path, "--id", "img0010").exit_code == 0


def test_search_eval_matches_exact_reference_and_finds_planted_duplicate(synthetic_store):
    from probes.retrieval import exact_neighbors, label_agreement

    path, x, labels, split, pid, ok = synthetic_store
    r = run("search-eval", path, "-k", "5", "--json")  # no saved index: an in-memory one (flat at this size)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    train, test = ok & (split == "train"), np.flatnonzero(ok & (split == "test"))
    _, nb = exact_neighbors(x[test], x[train], 5, query_groups=pid[test], gallery_groups=pid[train])
    ref = label_agreement(labels[test], labels[train], nb, label_names=LABELS)
    got = doc["label_agreement"]
    for name in LABELS:
        assert got["labels"][name]["precision_at_k"] == pytest.approx(ref["labels"][name]["precision_at_k"])
        assert got["labels"][name]["map_at_k"] == pytest.approx(ref["labels"][name]["map_at_k"])
    assert got["macro_precision_at_k"] > got["macro_gallery_prevalence"] + 0.2  # neighbours share labels
    dup = doc["near_duplicates"]
    # the copy of row 0 and, through it, the two other images of row 0's patient; nothing else reaches 0.98
    assert sorted((p["a"], p["b"]) for p in dup["pairs"]) == [("img0000", "img0599"), ("img0001", "img0599"),
                                                              ("img0002", "img0599")]
    assert dup["pairs"][0] == dict(dup["pairs"][0], a="img0000", split_a="train", split_b="test", patient_b="p-copy")
    assert dup["pairs"][0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    table = run("search-eval", path, "-k", "5")
    assert table.exit_code == 0 and "img0599" in table.stdout and "P@5" in table.stdout


def test_image_query_round_trip_with_tiny_backbone(tmp_path):
    import embedkit.api as ek
    from embedkit.data.phantoms import make_phantoms
    from embedkit.testing import make_tiny_backbone

    manifest = make_phantoms(tmp_path / "ph", n=9, size=64, seed=0, formats=("png8",))
    model = make_tiny_backbone("dinov3-vit", tmp_path)
    store = tmp_path / "ph.zarr"
    # float32 rows: a random tiny ViT maps all phantoms within cosine ~1e-4 of each other, below fp16 resolution
    ek.extract(str(model), str(manifest), store, res=64, features=["cls"], workers=0, dtype="float32").close()
    assert run("index", store).exit_code == 0
    import pandas as pd

    frame = pd.read_csv(manifest)
    image = manifest.parent / frame["path"][4]
    r = run("search", store, "--image", image, "-k", "3", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    assert res[0]["id"] == frame["id"][4] and res[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert res[0]["score"] > res[1]["score"]
