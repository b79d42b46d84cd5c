"""Bootstrap resampling plans shared by every run on one test set, and paired comparisons between runs.

A plan is content-addressed: its key hashes the test-set ids (in canonical, sorted order), the number of resamples,
the seed and the grouping (images, or patients for a cluster bootstrap). Two runs on the same test set therefore get
the same resamples — the comparison is paired — whether they load the saved ``.npz`` or regenerate it. The index
matrix is also saved so that the resamples can be audited and reused outside embedkit, as the reference study did
with its per-dataset ``bootstrapping_seeds_{dataset}.npy``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from probes.errors import PairingError, ProbeError
from probes.metrics import mean_over_labels

logger = logging.getLogger(__name__)

Grouping = Literal["images", "patients"]
PLAN_VERSION = 1


def ids_hash(ids: Sequence[str]) -> str:
    """sha256 (hex) of the ids in the given order, newline-joined (pass them sorted for a canonical test set)."""
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class BootstrapPlan:
    """Resamples of a test set of ``n`` rows.

    Attributes
    ----------
    index : ndarray (B, M) int32
        Draws with replacement: row indices (``grouping="images"``, M = n) or group indices (``"patients"``,
        M = number of patients).
    groups : ndarray (n,) int32 or None
        Group code of each row (patients), None for images.
    n : int
    seed : int
    grouping : {"images", "patients"}
    ids_sha256 : str
        Hash of the test ids the plan was made for ("" when unknown).
    """

    index: np.ndarray
    groups: np.ndarray | None
    n: int
    seed: int
    grouping: Grouping
    ids_sha256: str = ""

    @property
    def n_boot(self) -> int:
        return int(self.index.shape[0])

    @property
    def key(self) -> str:
        """Content address: what the plan was made from (not its bytes)."""
        g = "" if self.groups is None else hashlib.sha256(self.groups.tobytes()).hexdigest()
        doc = f"v{PLAN_VERSION}|{self.ids_sha256}|n={self.n}|B={self.n_boot}|seed={self.seed}|{self.grouping}|{g}"
        return hashlib.sha256(doc.encode()).hexdigest()

    @property
    def matrix_sha256(self) -> str:
        """sha256 of the index matrix (and group codes): two runs are paired only if these agree."""
        h = hashlib.sha256(np.ascontiguousarray(self.index, dtype=np.int32).tobytes())
        if self.groups is not None:
            h.update(np.ascontiguousarray(self.groups, dtype=np.int32).tobytes())
        return h.hexdigest()

    def counts(self, rows: slice | None = None) -> np.ndarray:
        """(B, n) multiplicity of each test row in each resample (int32); ``rows`` selects resamples."""
        idx = self.index if rows is None else self.index[rows]
        b, m = idx.shape
        flat = (idx.astype(np.int64) + (np.arange(b, dtype=np.int64) * m)[:, None]).ravel()
        c = np.bincount(flat, minlength=b * m).reshape(b, m).astype(np.int32)
        return c if self.groups is None else c[:, self.groups]

    def describe(self) -> dict:
        """JSON-able summary for metrics.json."""
        return {
            "n_boot": self.n_boot,
            "seed": self.seed,
            "grouping": self.grouping,
            "n_rows": self.n,
            "n_groups": None if self.groups is None else int(self.groups.max()) + 1 if self.groups.size else 0,
            "key": self.key,
            "matrix_sha256": self.matrix_sha256,
            "test_ids_sha256": self.ids_sha256,
        }


def bootstrap_indices(
    n: int,
    n_boot: int = 1000,
    *,
    seed: int = 0,
    groups: Sequence | np.ndarray | None = None,
    ids_sha256: str = "",
) -> BootstrapPlan:
    """Draw ``n_boot`` resamples of ``n`` rows (or of the patients in ``groups``) with replacement.

    Parameters
    ----------
    n : int
        Test-set size.
    n_boot : int
        Number of resamples (the reference study: 1,000).
    seed : int
        numpy ``default_rng`` seed; the same (n, n_boot, seed, groups) always gives the same matrix.
    groups : sequence (n,), optional
        Patient id of each row: resample patients (cluster bootstrap) and keep all their images.
    ids_sha256 : str
        Hash of the test ids (``ids_hash(sorted(ids))``), recorded in the plan's key.

    Returns
    -------
    BootstrapPlan
    """
    if n < 1 or n_boot < 1:
        raise ProbeError(f"bootstrap needs n >= 1 and n_boot >= 1; got n={n}, n_boot={n_boot}.")
    rng = np.random.default_rng(seed)
    if groups is None:
        index = rng.integers(0, n, size=(n_boot, n), dtype=np.int64).astype(np.int32)
        return BootstrapPlan(index, None, n, seed, "images", ids_sha256)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ProbeError(f"groups must have one entry per test row ({n}); got shape {g.shape}.")
    _, codes = np.unique(g.astype(str), return_inverse=True)
    m = int(codes.max()) + 1
    index = rng.integers(0, m, size=(n_boot, m), dtype=np.int64).astype(np.int32)
    return BootstrapPlan(index, codes.astype(np.int32), n, seed, "patients", ids_sha256)


def save_plan(plan: BootstrapPlan, path: str | os.PathLike) -> Path:
    """Write ``plan`` to ``path`` (.npz) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({**plan.describe(), "version": PLAN_VERSION})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    os.close(fd)
    try:
        arrays = {"index": plan.index, "meta": np.array(meta)}
        if plan.groups is not None:
            arrays["groups"] = plan.groups
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_plan(path: str | os.PathLike) -> BootstrapPlan:
    """Read a plan written by ``save_plan``; checks that its bytes still match its recorded hash."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        groups = z["groups"] if "groups" in z.files else None
        plan = BootstrapPlan(z["index"], groups, int(meta["n_rows"]), int(meta["seed"]), meta["grouping"],
                             meta["test_ids_sha256"])
    if plan.matrix_sha256 != meta["matrix_sha256"]:
        raise ProbeError(f"Bootstrap plan '{path}' is corrupt (hash mismatch). Delete it; it will be regenerated.")
    return plan


def plan_for_test_set(
    directory: str | os.PathLike,
    test_ids: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence | None = None,
) -> tuple[BootstrapPlan, Path]:
    """Load the plan for this test set from ``directory``, or make and save it.

    ``test_ids`` must be in the canonical (sorted) order the caller evaluates in; ``groups`` aligned with them.
    The file is ``<directory>/<key[:16]>.npz``.
    """
    h = ids_hash(test_ids)
    plan = bootstrap_indices(len(test_ids), n_boot, seed=seed, groups=groups, ids_sha256=h)
    path = Path(directory) / f"{plan.key[:16]}.npz"
    if path.exists():
        saved = load_plan(path)
        if saved.key != plan.key or saved.matrix_sha256 != plan.matrix_sha256:
            raise ProbeError(f"Bootstrap plan '{path}' does not match this test set. "
                             "Delete it; it will be regenerated.")
        return saved, path
    save_plan(plan, path)
    logger.info("bootstrap plan %s written (%d resamples, %s)", path, plan.n_boot, plan.grouping)
    return plan, path


def paired_compare(
    boot_a: np.ndarray,
    boot_b: np.ndarray,
    *,
    point_a: np.ndarray | None = None,
    point_b: np.ndarray | None = None,
    ci: float = 0.95,
) -> dict[str, np.ndarray]:
    """Paired bootstrap comparison of run A against run B on the same resamples.

    Parameters
    ----------
    boot_a, boot_b : array (B, K)
        A metric (e.g. AUROC) per resample and label, both computed on the *same* plan.
    point_a, point_b : array (K,), optional
        Full-test-set values; the reported ``delta`` is their difference (else the mean over resamples).
    ci : float
        Percentile interval of the difference.

    Returns
    -------
    dict
        Per label (K,) and for the mean over labels (scalar, key suffix ``_mean``): ``delta`` (A - B), ``ci_low``,
        ``ci_high``, ``p_a_le_b`` (the reference study's p: fraction of resamples where A <= B), ``p_b_le_a``,
        ``p_two_sided`` (2 x the smaller, capped at 1). NaN resamples are ignored.

    Raises
    ------
    PairingError
        If the shapes differ (different resamples or labels).
    """
    a = np.asarray(boot_a, dtype=np.float64)
    b = np.asarray(boot_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise PairingError(f"paired comparison needs resample matrices of the same shape; got {a.shape} and {b.shape}.")
    lo, hi = 50 * (1 - ci), 50 * (1 + ci)

    def _stats(x: np.ndarray, y: np.ndarray, px, py) -> dict[str, np.ndarray]:
        d = x - y
        ok = ~np.isnan(d)
        cnt = ok.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            p_ab = np.where(ok, x <= y, False).sum(axis=0) / cnt
            p_ba = np.where(ok, y <= x, False).sum(axis=0) / cnt
            delta = (px - py) if px is not None else np.nanmean(np.where(ok, d, np.nan), axis=0)
        low = np.full(d.shape[1:], np.nan)
        high = np.full(d.shape[1:], np.nan)
        cols = np.flatnonzero(np.atleast_1d(cnt) > 0)
        dd = d.reshape(d.shape[0], -1)
        for j in cols:
            col = dd[:, j][~np.isnan(dd[:, j])]
            low.flat[j], high.flat[j] = np.percentile(col, [lo, hi])
        return {"delta": delta, "ci_low": low, "ci_high": high, "p_a_le_b": p_ab, "p_b_le_a": p_ba,
                "p_two_sided": np.minimum(1.0, 2 * np.minimum(p_ab, p_ba))}

    per_label = _stats(a, b, point_a, point_b)
    ma, mb = mean_over_labels(a)[:, None], mean_over_labels(b)[:, None]
    pma = None if point_a is None else np.array([mean_over_labels(np.asarray(point_a, dtype=np.float64))])
    pmb = None if point_b is None else np.array([mean_over_labels(np.asarray(point_b, dtype=np.float64))])
    mean = _stats(ma, mb, pma, pmb)
    out = dict(per_label)
    out.update({f"{k}_mean": float(np.asarray(v).ravel()[0]) for k, v in mean.items()})
    return out
