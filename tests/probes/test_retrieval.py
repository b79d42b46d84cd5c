"""probes.retrieval: exact neighbours with group exclusion, label agreement (parity with sklearn AP), duplicates."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from probes.errors import ProbeError
from probes.retrieval import cross_split_duplicates, exact_neighbors, label_agreement


def test_exact_neighbors_match_brute_force_and_exclude_groups():
    rng = np.random.default_rng(0)
    g, q = rng.standard_normal((300, 12)), rng.standard_normal((40, 12))
    groups_g, groups_q = rng.integers(0, 30, 300), rng.integers(0, 30, 40)
    s, nb = exact_neighbors(q, g, 5, query_groups=groups_q, gallery_groups=groups_g, block=7)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sim = qn @ gn.T
    sim[groups_q[:, None] == groups_g[None, :]] = -np.inf
    ref = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(nb, ref)
    np.testing.assert_allclose(s, np.take_along_axis(sim, ref, 1), atol=1e-5)
    assert not (groups_g[nb] == groups_q[:, None]).any()
    d2, nb2 = exact_neighbors(q, g, 3, metric="l2")
    ref2 = np.argsort(((q[:, None] - g[None]) ** 2).sum(-1), axis=1)[:, :3]
    np.testing.assert_array_equal(nb2, ref2)
    assert (np.diff(d2, axis=1) >= 0).all()


def test_exact_neighbors_pad_when_groups_leave_too_few():
    g = np.eye(4)
    s, nb = exact_neighbors(g[:1], g, 4, query_groups=np.array([0]), gallery_groups=np.array([0, 0, 1, 1]))
    assert sorted(nb[0, :2]) == [2, 3] and (nb[0, 2:] == -1).all() and np.isnan(s[0, 2:]).all()


def test_label_agreement_hand_example():
    gallery = np.array([[1, 0], [0, 1], [1, np.nan], [0, 0]], dtype=np.float32)
    queries = np.array([[1, 0], [1, 1], [np.nan, 0]], dtype=np.float32)
    nb = np.array([[0, 1, 2], [2, 3, -1], [0, 1, 2]])
    out = label_agreement(queries, gallery, nb, label_names=["a", "b"])
    a, b = out["labels"]["a"], out["labels"]["b"]
    # label a: positive queries 0 and 1 (query 2 unknown); R_a = 2
    assert a["n_queries"] == 2
    assert a["precision_at_k"] == pytest.approx(((1 + 0 + 1) + (1 + 0 + 0)) / 6)
    ap0 = (1 / 1 + 2 / 3) / 2  # hits at ranks 1 and 3
    ap1 = (1 / 1) / 2
    assert a["map_at_k"] == pytest.approx((ap0 + ap1) / 2)
    # label b: only query 1 positive; its neighbours 2 (unknown) and 3 (neg) and none -> no hit
    assert b["n_queries"] == 1 and b["precision_at_k"] == 0.0 and b["map_at_k"] == 0.0
    assert a["gallery_prevalence"] == pytest.approx(2 / 4) and b["gallery_prevalence"] == pytest.approx(1 / 3)
    assert out["macro_precision_at_k"] == pytest.approx((a["precision_at_k"] + 0.0) / 2)


def test_map_at_full_depth_equals_sklearn_average_precision():
    rng = np.random.default_rng(1)
    gallery = (rng.random((50, 3)) < 0.3).astype(np.float32)
    queries = np.ones((20, 3), np.float32)
    scores = rng.standard_normal((20, 50))
    nb = np.argsort(-scores, axis=1)  # every gallery row ranked
    out = label_agreement(queries, gallery, nb)
    for j in range(3):
        ref = np.mean([average_precision_score(gallery[:, j], scores[i]) for i in range(20)])
        assert out["labels"][f"label_{j}"]["map_at_k"] == pytest.approx(ref, rel=1e-6)


def test_label_agreement_rejects_mismatched_shapes():
    with pytest.raises(ProbeError, match="neighbour lists"):
        label_agreement(np.zeros((3, 2)), np.zeros((5, 2)), np.zeros((2, 4), int))
    with pytest.raises(ProbeError, match="label names"):
        label_agreement(np.zeros((2, 2)), np.zeros((5, 2)), np.zeros((2, 4), int), label_names=["x"])


def test_cross_split_duplicates_dedup_and_filter():
    split = np.array(["train", "train", "test", "test", "val"])
    rows = np.arange(5)
    nb = np.array([[2, 1], [0, 3], [0, 3], [2, 1], [0, -1]])
    sc = np.array([[0.99, 0.995], [0.995, 0.97], [0.99, 0.999], [0.999, 0.97], [0.981, np.nan]], np.float32)
    pairs, sims = cross_split_duplicates(rows, nb, sc, split, threshold=0.98)
    # (0,1) same split and (2,3) same split are ignored; (0,2) seen twice, kept once; (1,3) is below threshold
    assert pairs.tolist() == [[0, 2], [0, 4]]
    np.testing.assert_allclose(sims, [0.99, 0.981], rtol=1e-6)
    none, _ = cross_split_duplicates(rows, nb, sc, split, threshold=0.9999)
    assert none.shape == (0, 2)
