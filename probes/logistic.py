"""The reference implementation: scikit-learn ``LogisticRegression`` (lbfgs), one binary model per label, over a
C sweep, on standardised features; C chosen by validation mean AUROC.

Rows whose label is unknown (NaN) are dropped for that label only (one-vs-rest cannot mask, hence the loop over
labels). ``pos_weight`` becomes ``class_weight={0: 1, 1: neg/pos}``, the same objective as the torch heads' BCE.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from probes._common import check_xy, positive_weights, select_best, standardizer
from probes.errors import ProbeError
from probes.heads import check_options
from probes.metrics import auroc, mean_over_labels

logger = logging.getLogger(__name__)

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 7))


class LogisticSweepProbe:
    """One-vs-rest L2 logistic regression per C; the best C on validation is kept.

    Parameters
    ----------
    Cs : tuple of float
        Inverse regularisation strengths (sklearn's C).
    max_iter : int
    pos_weight : bool
    n_jobs : int
        Labels fitted in parallel (joblib threads).
    """

    kind = "sklearn"

    def __init__(self, *, Cs: tuple[float, ...] = DEFAULT_CS, max_iter: int = 1000, pos_weight: bool = True,
                 n_jobs: int = 1, seed: int = 0, device: str = "cpu", **unknown) -> None:
        check_options("sklearn", unknown)
        if not Cs or min(Cs) <= 0:
            raise ProbeError("The sklearn head needs at least one C > 0.")
        self.Cs, self.max_iter, self.pos_weight, self.n_jobs, self.seed = tuple(Cs), max_iter, pos_weight, n_jobs, seed

    def _fit_c(self, xs: np.ndarray, y: np.ndarray, c: float, pw: np.ndarray):
        from joblib import Parallel, delayed
        from sklearn.linear_model import LogisticRegression

        def one(k: int):
            known = ~np.isnan(y[:, k])
            yk = y[known, k]
            if np.unique(yk).size < 2:
                return None  # constant label: predicted by its prior below
            m = LogisticRegression(C=c, max_iter=self.max_iter, class_weight={0: 1.0, 1: float(pw[k])},
                                   random_state=self.seed)
            m.fit(xs[known], yk)
            return m.coef_[0].astype(np.float32), float(m.intercept_[0])

        fits = Parallel(n_jobs=self.n_jobs, prefer="threads")(delayed(one)(k) for k in range(y.shape[1]))
        coef = np.zeros((xs.shape[1], y.shape[1]), dtype=np.float32)
        icpt = np.zeros(y.shape[1], dtype=np.float32)
        for k, f in enumerate(fits):
            if f is None:
                p = np.nanmean(y[:, k]) if np.any(~np.isnan(y[:, k])) else 0.5
                icpt[k] = np.log(max(p, 1e-6) / max(1 - p, 1e-6))
            else:
                coef[:, k], icpt[k] = f
        return coef, icpt

    def fit(self, x_train, y_train, x_val, y_val) -> LogisticSweepProbe:
        """Fit one model per label for each C on ``(x_train (N, D), y_train (N, K))``; pick C on val."""
        x_train, y_train = check_xy(x_train, y_train, name="train")
        x_val, y_val = check_xy(x_val, y_val, name="val")
        self.mean_, self.scale_ = standardizer(x_train)
        xs = (np.asarray(x_train, dtype=np.float32) - self.mean_) / self.scale_
        xv = (np.asarray(x_val, dtype=np.float32) - self.mean_) / self.scale_
        pw = positive_weights(y_train) if self.pos_weight else np.ones(y_train.shape[1], dtype=np.float32)
        self.pos_weight_ = pw
        self.results_, fits = [], []
        for c in self.Cs:
            t0 = time.perf_counter()
            coef, icpt = self._fit_c(xs, y_train, c, pw)
            score = mean_over_labels(auroc(y_val, xv @ coef + icpt))
            self.results_.append({"C": c, "val_auroc": score, "seconds": time.perf_counter() - t0})
            fits.append((coef, icpt))
        j = select_best(np.array([r["val_auroc"] for r in self.results_]))
        if not np.isfinite(self.results_[j]["val_auroc"]):
            raise ProbeError("no label has both classes in the validation split; cannot choose C.")
        self.coef_, self.intercept_ = fits[j]
        self.best_val_auroc_ = float(self.results_[j]["val_auroc"])
        self.best_params_ = {"C": self.Cs[j], "solver": "lbfgs", "max_iter": self.max_iter}
        self.history_ = []
        return self

    def decision_function(self, x) -> np.ndarray:
        """(N, K) logits of the chosen C."""
        return ((np.asarray(x, dtype=np.float32) - self.mean_) / self.scale_) @ self.coef_ + self.intercept_

    def predict_proba(self, x) -> np.ndarray:
        """(N, K) probabilities."""
        return (0.5 * (1.0 + np.tanh(0.5 * self.decision_function(x)))).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays of the chosen model, for safetensors."""
        return {"coef": self.coef_, "intercept": self.intercept_, "mean": self.mean_, "scale": self.scale_,
                "pos_weight": self.pos_weight_}
