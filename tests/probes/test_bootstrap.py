"""Bootstrap plans (determinism, clusters, files), CI coverage, paired comparisons."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from probes.bootstrap import (
    bootstrap_indices,
    ids_hash,
    load_plan,
    paired_compare,
    plan_for_test_set,
    save_plan,
)
from probes.errors import PairingError, ProbeError
from probes.evaluate import evaluate
from probes.metrics import resampled_metrics


def test_plan_is_deterministic_and_seed_dependent():
    a = bootstrap_indices(50, 20, seed=3)
    b = bootstrap_indices(50, 20, seed=3)
    c = bootstrap_indices(50, 20, seed=4)
    assert np.array_equal(a.index, b.index) and a.key == b.key and a.matrix_sha256 == b.matrix_sha256
    assert not np.array_equal(a.index, c.index) and a.key != c.key
    counts = a.counts()
    assert counts.shape == (20, 50) and (counts.sum(axis=1) == 50).all()
    np.testing.assert_array_equal(counts[5], np.bincount(a.index[5], minlength=50))


def test_cluster_bootstrap_resamples_whole_patients():
    groups = np.repeat(np.arange(10), 3).astype(str)  # 10 patients x 3 images
    plan = bootstrap_indices(30, 50, seed=0, groups=groups)
    assert plan.grouping == "patients" and plan.index.shape == (50, 10)
    c = plan.counts()
    # Every image of a patient has that patient's multiplicity.
    assert (c.reshape(50, 10, 3) == c.reshape(50, 10, 3)[:, :, :1]).all()
    assert (c.sum(axis=1) == 30).all()
    assert plan.key != bootstrap_indices(30, 50, seed=0).key


def test_plan_files_are_reused_and_checked(tmp_path):
    ids = [f"img{i:03d}" for i in range(40)]
    p1, path1 = plan_for_test_set(tmp_path, ids, n_boot=30, seed=1)
    mtime = path1.stat().st_mtime_ns
    p2, path2 = plan_for_test_set(tmp_path, ids, n_boot=30, seed=1)
    assert path1 == path2 and path2.stat().st_mtime_ns == mtime
    assert p1.matrix_sha256 == p2.matrix_sha256 and p1.ids_sha256 == ids_hash(ids)
    _, other = plan_for_test_set(tmp_path, ids[:-1], n_boot=30, seed=1)
    assert other != path1
    bad = load_plan(path1)
    save_plan(bad, tmp_path / "copy.npz")
    assert load_plan(tmp_path / "copy.npz").matrix_sha256 == bad.matrix_sha256
    np.savez(tmp_path / "corrupt.npz", index=bad.index[::-1], meta=np.load(path1)["meta"])
    with pytest.raises(ProbeError, match="corrupt"):
        load_plan(tmp_path / "corrupt.npz")


def test_percentile_ci_covers_known_binormal_auroc():
    # 200 independent binormal problems with AUROC = Phi(d / sqrt 2), 300 resamples each.
    rng = np.random.default_rng(11)
    d, n, reps = 1.0, 300, 200
    truth = norm.cdf(d / np.sqrt(2))
    y = (rng.random((n, reps)) < 0.3).astype(float)
    s = rng.normal(size=(n, reps)) + d * y
    boot = resampled_metrics(y, s, bootstrap_indices(n, 300, seed=0).counts())["auroc"]
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    coverage = np.mean((lo <= truth) & (truth <= hi))
    assert 0.90 <= coverage <= 0.99, coverage


def test_evaluate_reports_cis_around_the_point_estimate():
    rng = np.random.default_rng(12)
    y = (rng.random((400, 3)) < 0.3).astype(float)
    s = y + rng.normal(size=(400, 3))
    ev = evaluate(y, s, plan=bootstrap_indices(400, 200, seed=0), thresholds=np.zeros(3), label_names=list("abc"))
    point, mean, sd, lo, hi = ev.mean_interval("auroc")
    assert lo < point < hi and abs(mean - point) < 0.01 and sd > 0
    d = ev.to_dict()
    assert set(d["per_label"]["a"]) >= {"threshold", "auroc", "ap", "accuracy", "f1", "sensitivity"}
    assert d["bootstrap"]["n_boot"] == 200


def test_paired_compare_p_values_and_intervals():
    rng = np.random.default_rng(13)
    y = (rng.random((300, 2)) < 0.4).astype(float)
    good = y + 0.5 * rng.normal(size=(300, 2))
    bad = y + 2.0 * rng.normal(size=(300, 2))
    w = bootstrap_indices(300, 300, seed=0).counts()
    bg, bb = resampled_metrics(y, good, w)["auroc"], resampled_metrics(y, bad, w)["auroc"]
    st = paired_compare(bg, bb)
    assert (st["delta"] > 0.1).all() and (st["ci_low"] > 0).all()
    assert st["p_a_le_b_mean"] < 0.01 and st["p_b_le_a_mean"] > 0.99
    same = paired_compare(bg, bg)
    assert same["delta_mean"] == 0 and same["p_a_le_b_mean"] == 1.0
    with pytest.raises(PairingError):
        paired_compare(bg, bb[:-1])


def test_patient_resampling_covers_clustered_data_and_image_resampling_does_not():
    # 1,000 simulated problems, 300 patients x 4 images each; a patient's images share its label and a random
    # effect (sd 1) on top of image noise (sd 0.5), so images of one patient are strongly correlated. Pairs of a
    # positive and a negative image always come from two patients, so the image-level AUROC estimates
    # Phi(d / sqrt(2 (su^2 + se^2))) without bias.
    rng = np.random.default_rng(1)
    n_pat, per, reps, d, su, se = 300, 4, 1000, 1.0, 1.0, 0.5
    groups = np.repeat(np.arange(n_pat), per).astype(str)
    y = np.repeat((rng.random((n_pat, reps)) < 0.3).astype(float), per, axis=0)
    s = (d * y + np.repeat(rng.normal(scale=su, size=(n_pat, reps)), per, axis=0)
         + rng.normal(scale=se, size=(n_pat * per, reps)))
    truth = norm.cdf(d / np.sqrt(2 * (su**2 + se**2)))

    def coverage(plan):
        boot = resampled_metrics(y, s, plan.counts())["auroc"]
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
        return np.mean((lo <= truth) & (truth <= hi))

    patients = coverage(bootstrap_indices(n_pat * per, 300, seed=1, groups=groups))
    images = coverage(bootstrap_indices(n_pat * per, 300, seed=1))
    assert patients >= 0.93, patients
    assert images < 0.85, images  # resampling images treats correlated images as independent: CIs too narrow
