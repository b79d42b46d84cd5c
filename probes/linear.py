"""A grid of linear heads over learning rate x weight decay, trained together in one pass (DINOv2/v3 style).

All H = len(lrs) x len(weight_decays) heads live in one weight tensor (D, H*K). Each batch is read once and
standardised once; one matmul ``(B, D) @ (D, H*K)`` gives every head's logits, the masked BCE gradient of the summed
losses is computed in closed form, and one more matmul gives every head's weight gradient. Heads share nothing but
the input, so the sum trains each exactly as if it were trained alone. Adam with a per-head learning rate and a
per-head L2 weight decay (added to the gradient, as ``torch.optim.Adam(weight_decay=...)`` does) is applied
element-wise to the whole tensor; its fixed point is the L2-regularised logistic regression that scikit-learn
solves, so the weight-decay axis plays the role of sklearn's ``C`` (roughly ``wd = 1 / (C * N * K)``).

Memory: the features stay in their own dtype (a float16 store stays float16; on CUDA the matrix is moved to the
device once, in that dtype). Mean and std come from one streaming float64 pass over train; each mini-batch is
gathered, converted to float32 and standardised only when it is used, and validation / prediction run in bounded
chunks — there is never a float32 copy of the matrix (extra memory is O(batch x D + D x H x K + M_val x H x K)).

After each epoch every head is scored on validation (mean AUROC over labels, unknown labels masked) and its best
weights so far are kept; training stops when the best head has not improved for ``patience`` epochs. The chosen head
is the best on validation — the test split plays no part.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from probes._common import check_xy, positive_weights, resolve_device, rows_per_chunk, select_best, standardizer
from probes.errors import ProbeError
from probes.metrics import auroc_many, mean_over_labels

logger = logging.getLogger(__name__)

DEFAULT_LRS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2)
DEFAULT_WDS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True, kw_only=True)
class LinearGridConfig:
    """Hyperparameters of the linear grid (8 x 5 = 40 heads by default)."""

    lrs: tuple[float, ...] = DEFAULT_LRS  # AdamW learning rates
    weight_decays: tuple[float, ...] = DEFAULT_WDS  # L2 penalty added to the gradient (Adam-style, coupled)
    batch_size: int | None = None  # None: n // 16 clipped to [256, 4096] (>= 16 steps per epoch when possible)
    max_epochs: int = 30
    patience: int = 3  # epochs without a better best head before stopping
    pos_weight: bool = True  # BCE pos_weight = neg/pos per label (the reference study's default)
    seed: int = 0
    device: str = "cpu"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


class LinearGridProbe:
    """Many linear heads trained in one pass; the best on validation is kept.

    Parameters
    ----------
    config : LinearGridConfig, optional
    **overrides
        Fields of ``LinearGridConfig`` (e.g. ``seed=1``, ``device="cuda"``).

    Attributes (after ``fit``)
    --------------------------
    best_params_ : dict
        ``lr``, ``weight_decay``, ``epoch`` of the chosen head.
    best_val_auroc_ : float
    results_ : list[dict]
        One row per head: lr, weight_decay, best val mean AUROC, best epoch.
    history_ : list[dict]
        Per epoch: epoch, best val mean AUROC over heads, seconds.
    coef_ : ndarray (D, K), intercept_ : ndarray (K,), mean_ : ndarray (D,), scale_ : ndarray (D,)

    Examples
    --------
    >>> from probes.synthetic import make_multilabel_features
    >>> x, y = make_multilabel_features(600, 16, 2, rank=4, seed=0)
    >>> p = LinearGridProbe(max_epochs=3).fit(x[:400], y[:400], x[400:500], y[400:500])
    >>> p.predict_proba(x[500:]).shape
    (100, 2)
    """

    kind = "linear"

    def __init__(self, config: LinearGridConfig | None = None, **overrides) -> None:
        base = asdict(config) if config is not None else {}
        try:
            self.config = LinearGridConfig(**{**base, **overrides})
        except TypeError as exc:
            raise ProbeError(f"unknown linear-grid option: {exc}") from None
        c = self.config
        bad_bs = c.batch_size is not None and c.batch_size < 1
        if not c.lrs or not c.weight_decays or bad_bs or c.max_epochs < 1 or c.patience < 1:
            raise ProbeError("The linear grid needs >= 1 lr and weight decay, batch_size >= 1, max_epochs >= 1, "
                             "patience >= 1.")

    @property
    def n_heads(self) -> int:
        return len(self.config.lrs) * len(self.config.weight_decays)

    def fit(self, x_train, y_train, x_val, y_val) -> LinearGridProbe:
        """Train every head on ``(x_train, y_train)``; keep each head's best epoch and the best head on val.

        Parameters
        ----------
        x_train : array (N, D) float
            float16 or float32; kept in its dtype (batches are converted to float32 when used).
        y_train : array (N, K) float, NaN = unknown
        x_val : array (M, D) float
        y_val : array (M, K) float, NaN = unknown

        Returns
        -------
        self
        """
        import torch

        c = self.config
        x_train, y_train = check_xy(x_train, y_train, name="train")
        x_val, y_val = check_xy(x_val, y_val, name="val")
        if x_val.shape[1] != x_train.shape[1] or y_val.shape[1] != y_train.shape[1]:
            raise ProbeError("train and val have different feature or label dimensions.")
        dev = resolve_device(c.device)
        n, d = x_train.shape
        k = y_train.shape[1]
        bs = c.batch_size or int(np.clip(n // 16, 256, 4096))
        grid = [(lr, wd) for lr in c.lrs for wd in c.weight_decays]
        h = len(grid)
        hk = h * k
        self.mean_, self.scale_ = standardizer(x_train)
        pw = positive_weights(y_train) if c.pos_weight else np.ones(k, dtype=np.float32)
        self.pos_weight_ = pw

        gen = torch.Generator().manual_seed(c.seed)
        mean = torch.from_numpy(self.mean_).to(dev)
        inv = torch.from_numpy(1.0 / self.scale_).to(dev)
        # Zero-copy on CPU (torch shares the numpy buffer, float16 included); one transfer in the stored dtype on CUDA.
        xt = torch.from_numpy(np.ascontiguousarray(x_train)).to(dev)
        yt = torch.from_numpy(np.ascontiguousarray(y_train)).to(dev)
        xv = torch.from_numpy(np.ascontiguousarray(x_val)).to(dev)
        pw_t = torch.from_numpy(pw).to(dev)  # (K,); weight column j belongs to head j // K, label j % K
        lr_t = torch.tensor([lr for lr, _ in grid], dtype=torch.float32, device=dev).repeat_interleave(k)
        wd_t = torch.tensor([wd for _, wd in grid], dtype=torch.float32, device=dev).repeat_interleave(k)

        # Zero init: the problem is convex, and identical starts make the grid a clean comparison of lr x wd.
        w = torch.zeros(d, hk, device=dev)
        b = torch.zeros(hk, device=dev)
        m_w, v_w = torch.zeros_like(w), torch.zeros_like(w)
        m_b, v_b = torch.zeros_like(b), torch.zeros_like(b)
        best_w, best_b = w.clone(), b.clone()
        best_score = np.full(h, -np.inf)
        best_epoch = np.zeros(h, dtype=int)
        b1, b2 = c.betas
        step = 0
        self.history_ = []
        stale = 0
        top = -np.inf
        for epoch in range(1, c.max_epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=gen).to(dev)
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                # index_select returns a fresh tensor, so the in-place ops never touch the caller's (shared) buffer.
                xb = xt.index_select(0, idx).float().sub_(mean).mul_(inv)  # (B, D) float32, this batch only
                yb = yt.index_select(0, idx)  # (B, K)
                known = ~torch.isnan(yb)
                # Each head's loss is a mean over its known (row, label) cells; heads' losses are summed.
                scale = known.float() / known.sum().clamp_min(1)
                yb = torch.nan_to_num(yb, nan=0.0)
                # d/dz of BCE-with-logits with pos_weight: sigmoid(z) * (1 + (pw - 1) y) - pw y, masked and scaled;
                # the label-only factors are computed once per batch and broadcast over the H heads.
                a = ((1 + (pw_t - 1) * yb) * scale).unsqueeze(1)  # (B, 1, K)
                c_ = (pw_t * yb * scale).unsqueeze(1)
                z = torch.addmm(b, xb, w).view(-1, h, k)
                g = torch.sigmoid_(z).mul_(a).sub_(c_).view(-1, hk)
                gw = xb.T @ g
                gb = g.sum(0)
                step += 1
                bc1, bc2 = 1 - b1**step, 1 - b2**step
                gw.addcmul_(w, wd_t)  # coupled L2: Adam's fixed point is then sklearn's L2-regularised optimum
                for p, gp, m_, v_ in ((w, gw, m_w, v_w), (b, gb, m_b, v_b)):
                    m_.mul_(b1).add_(gp, alpha=1 - b1)
                    v_.mul_(b2).addcmul_(gp, gp, value=1 - b2)
                    denom = v_.div(bc2).sqrt_().add_(c.eps)
                    p.sub_(m_.div(bc1).div_(denom).mul_(lr_t))
            val = self._val_scores(xv, w, b, y_val, h, k, mean=mean, inv=inv)
            improved = val > best_score
            if improved.any():
                cols = torch.from_numpy(np.repeat(improved, k)).to(dev)
                best_w[:, cols] = w[:, cols]
                best_b[cols] = b[cols]
                best_score[improved] = val[improved]
                best_epoch[improved] = epoch
            epoch_top = float(np.max(np.where(np.isnan(val), -np.inf, val)))
            self.history_.append({"epoch": epoch, "best_val_auroc": epoch_top, "seconds": time.perf_counter() - t0})
            logger.info("linear grid epoch %d: best val mean AUROC %.4f", epoch, epoch_top)
            if epoch_top > top + 1e-5:
                top, stale = epoch_top, 0
            else:
                stale += 1
                if stale >= c.patience:
                    break
        if not np.isfinite(best_score).any():
            raise ProbeError("no label has both classes in the validation split; cannot select a head. "
                             "Use a larger validation split.")
        j = select_best(best_score)
        lr, wd = grid[j]
        self.results_ = [
            {"lr": g[0], "weight_decay": g[1], "val_auroc": float(best_score[i]), "best_epoch": int(best_epoch[i])}
            for i, g in enumerate(grid)
        ]
        self.best_params_ = {"lr": lr, "weight_decay": wd, "epoch": int(best_epoch[j]), "n_heads": h,
                             "epochs_run": len(self.history_), "batch_size": bs, "seed": c.seed}
        self.best_val_auroc_ = float(best_score[j])
        self.coef_ = best_w[:, j * k : (j + 1) * k].cpu().numpy().copy()
        self.intercept_ = best_b[j * k : (j + 1) * k].cpu().numpy().copy()
        return self

    @staticmethod
    def _val_scores(xv, w, b, y_val, h: int, k: int, *, mean, inv) -> np.ndarray:
        """Every head's val mean AUROC; val rows are standardised chunk by chunk into one (M, H*K) logit array."""
        import torch

        m, d = xv.shape
        z = np.empty((m, h * k), dtype=np.float32)
        step = rows_per_chunk(d)
        with torch.no_grad():
            for i in range(0, m, step):
                xb = (xv[i : i + step].float() - mean).mul_(inv)  # out of place: xv may share the caller's buffer
                z[i : i + step] = torch.addmm(b, xb, w).cpu().numpy()
        return np.asarray(mean_over_labels(auroc_many(y_val, z.reshape(-1, h, k))))

    def decision_function(self, x, *, chunk: int | None = None) -> np.ndarray:
        """(N, K) logits of the chosen head; ``x`` (N, D) is converted to float32 one bounded chunk at a time."""
        x = np.asarray(x)
        out = np.empty((x.shape[0], self.coef_.shape[1]), dtype=np.float32)
        chunk = chunk or rows_per_chunk(x.shape[1])
        for i in range(0, x.shape[0], chunk):
            xb = np.array(x[i : i + chunk], dtype=np.float32)
            xb -= self.mean_
            xb /= self.scale_
            out[i : i + chunk] = xb @ self.coef_ + self.intercept_
        return out

    def predict_proba(self, x) -> np.ndarray:
        """(N, K) probabilities (sigmoid of the chosen head's logits)."""
        z = self.decision_function(x)
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays of the chosen head, for safetensors."""
        return {"coef": self.coef_, "intercept": self.intercept_, "mean": self.mean_, "scale": self.scale_,
                "pos_weight": self.pos_weight_}

