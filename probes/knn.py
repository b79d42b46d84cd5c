"""Cosine k-NN with temperature-weighted votes (DINO's protocol, T = 0.07), multi-label, k chosen on validation.

Train features are L2-normalised once and searched exactly with :func:`probes.retrieval.exact_neighbors` (the one
exact search of ``probes``). Each query's ``max(ks)`` neighbours are found once; for every k the score of label c is
the vote ``sum_j exp(s_j / T) y_jc / sum_j exp(s_j / T)`` over the neighbours whose label c is known — a probability
in [0, 1].

Memory: the head holds a float32 unit-norm copy of the training rows (N_train x D x 4 bytes) — the price of an exact
search; queries are converted and voted one batch at a time and the similarity block stays within 256 MiB, so
nothing else scales with N x D.
"""
from __future__ import annotations

import logging

import numpy as np

from probes._common import check_xy, rows_per_chunk, select_best
from probes.errors import ProbeError
from probes.heads import check_options
from probes.metrics import auroc, mean_over_labels
from probes.retrieval import exact_neighbors, unit_rows

logger = logging.getLogger(__name__)

DEFAULT_KS = (10, 20, 100, 200)


class KNNProbe:
    """Temperature-weighted cosine k-NN over the training rows.

    Parameters
    ----------
    ks : tuple of int
        Candidate neighbourhood sizes (clipped to the number of training rows).
    temperature : float
    query_batch : int
        Queries searched and voted at once (>= 256).
    """

    kind = "knn"

    def __init__(self, *, ks: tuple[int, ...] = DEFAULT_KS, temperature: float = 0.07, query_batch: int = 4096,
                 seed: int = 0, device: str = "cpu", **unknown) -> None:
        check_options("knn", unknown)
        if not ks or min(ks) < 1 or temperature <= 0 or query_batch < 256:
            raise ProbeError("knn needs ks >= 1, temperature > 0 and query_batch >= 256.")
        self.ks, self.temperature, self.query_batch, self.seed = tuple(sorted(set(ks))), temperature, query_batch, seed

    def fit(self, x_train, y_train, x_val, y_val) -> KNNProbe:
        """Index ``x_train (N, D)`` with labels ``y_train (N, K)``; choose k on ``(x_val, y_val)``."""
        x_train, y_train = check_xy(x_train, y_train, name="train")
        x_val, y_val = check_xy(x_val, y_val, name="val")
        self.gallery_ = unit_rows(x_train)
        self.y_train_ = np.asarray(y_train, dtype=np.float32)
        kmax = min(max(self.ks), x_train.shape[0])
        ks = sorted({min(k, kmax) for k in self.ks})
        sims, nbrs = self._search(x_val, kmax)
        self.results_ = []
        for k in ks:
            score = mean_over_labels(auroc(y_val, self._vote_batched(sims[:, :k], nbrs[:, :k])))
            self.results_.append({"k": k, "temperature": self.temperature, "val_auroc": score})
        j = select_best(np.array([r["val_auroc"] for r in self.results_]))
        if not np.isfinite(self.results_[j]["val_auroc"]):
            raise ProbeError("no label has both classes in the validation split; cannot choose k.")
        self.k_ = self.results_[j]["k"]
        self.best_val_auroc_ = float(self.results_[j]["val_auroc"])
        self.best_params_ = {"k": self.k_, "temperature": self.temperature, "metric": "cosine"}
        self.history_ = []
        return self

    def _search(self, x, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) cosine similarities and neighbour rows (best first) of the queries ``x (Q, D)``."""
        return exact_neighbors(x, self.gallery_, k, normalized=True)

    def _vote_batched(self, sims: np.ndarray, nbrs: np.ndarray) -> np.ndarray:
        # The gathered labels are (Q, k, K): vote in row blocks so they stay bounded whatever Q is.
        out = np.empty((sims.shape[0], self.y_train_.shape[1]), dtype=np.float32)
        step = rows_per_chunk(sims.shape[1] * self.y_train_.shape[1], minimum=64)
        for i in range(0, sims.shape[0], step):
            out[i : i + step] = self._vote(sims[i : i + step], nbrs[i : i + step])
        return out

    def _vote(self, sims: np.ndarray, nbrs: np.ndarray) -> np.ndarray:
        # Subtracting each row's max similarity leaves the normalised weights unchanged and avoids overflow.
        w = np.exp((sims - sims[:, :1]) / self.temperature)  # (Q, k)
        y = self.y_train_[nbrs]  # (Q, k, K)
        known = ~np.isnan(y)
        num = np.einsum("qj,qjc->qc", w, np.where(known, y, 0.0))
        den = np.einsum("qj,qjc->qc", w, known.astype(np.float32))
        with np.errstate(invalid="ignore", divide="ignore"):
            p = num / den
        # No neighbour with a known label: fall back to the training prevalence.
        prior = np.nanmean(self.y_train_, axis=0)
        return np.where(den > 0, p, prior[None, :]).astype(np.float32)

    def predict_proba(self, x) -> np.ndarray:
        """(N, K) vote fractions of the chosen k; ``x`` (N, D) is searched and voted one query batch at a time."""
        x = np.asarray(x)
        out = np.empty((x.shape[0], self.y_train_.shape[1]), dtype=np.float32)
        for i in range(0, x.shape[0], self.query_batch):
            sims, nbrs = self._search(x[i : i + self.query_batch], self.k_)
            out[i : i + self.query_batch] = self._vote(sims, nbrs)
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """What the head needs besides the training features themselves: their labels and (k, T)."""
        return {"train_labels": self.y_train_, "k": np.array([self.k_], dtype=np.int64),
                "temperature": np.array([self.temperature], dtype=np.float32)}
