"""A grid of linear heads over learning rate x weight decay, trained together in one pass (DINOv2/v3 style).

All H = len(lrs) x len(weight_decays) heads live in one weight tensor (D, H*K). Each batch is read once and
standardised once; one matmul ``(B, D) @ (D, H*K)`` gives every head's logits, the masked BCE gradient of the summed
losses is computed in closed form, and one more matmul gives every head's weight gradient. Heads share nothing but
the input, so the sum trains each exactly as if it were trained alone. Adam with a per-head learning rate and a
per-head L2 weight decay (added to the gradient, as ``torch.optim.Adam(weight_decay=...)`` does) is applied
element-wise to the whole tensor; its fixed point is the L2-regularised logistic regression that scikit-learn
solves, so the weight-decay axis plays the role of sklearn's ``C`` (roughly ``wd = 1 / (C * N * K)``).

Speed: the two matmuls are nearly all the work, so (1) their inputs are bfloat16 (float32 accumulation) where the
hardware has bfloat16 matrix units (``compute_dtype="auto"``: CUDA with bf16, CPUs with AMX / AVX512-BF16), while
the weights, Adam state, sigmoid and validation logits stay float32; and (2) successive halving: after each
epoch the heads ranked in the lower half on validation stop training (``keep_fraction``, never below
``min_heads``), so the matmuls of a whole run cost about two epochs of the full grid. A stopped head keeps its best
weights and score; its row in ``results_`` says how many epochs it trained. Per step the work is a handful of
whole-tensor ops (per-row label factors precomputed, bias kept as the last row of the weights), as every op costs a
thread-pool round trip on a busy CPU.

Memory: the features stay in their own dtype (a float16 store stays float16; on CUDA the matrix is moved to the
device once, in that dtype). Mean and std come from one streaming float64 pass over train; each mini-batch is
gathered, standardised and converted only when it is used, and validation / prediction run in bounded chunks —
there is never a float32 copy of the matrix (extra memory is O(batch x D + D x H x K + M_val x H x K + N x K)).

After each epoch every training head is scored on validation (mean AUROC over labels, unknown labels masked) and
its best weights so far are kept; training stops when the best head has not improved for ``patience`` epochs. The
chosen head is the best on validation — the test split plays no part.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from probes._common import check_xy, positive_weights, resolve_device, rows_per_chunk, select_best, standardizer
from probes.errors import ProbeError
from probes.heads import FitProgress
from probes.metrics import mean_over_labels

logger = logging.getLogger(__name__)

DEFAULT_LRS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2)
DEFAULT_WDS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
ComputeDtype = Literal["auto", "float32", "bfloat16"]


@dataclass(frozen=True, kw_only=True)
class LinearGridConfig:
    """Hyperparameters of the linear grid (8 x 5 = 40 heads by default)."""

    lrs: tuple[float, ...] = DEFAULT_LRS  # Adam learning rates
    weight_decays: tuple[float, ...] = DEFAULT_WDS  # L2 penalty added to the gradient (Adam-style, coupled)
    batch_size: int | None = None  # None: n // 16 clipped to [256, 4096] (>= 16 steps per epoch when possible)
    max_epochs: int = 30
    patience: int = 3  # epochs without a better best head before stopping
    keep_fraction: float = 0.5  # successive halving: share of the training heads kept after each epoch (1 = all)
    min_heads: int = 4  # halving never leaves fewer heads training than this
    compute_dtype: ComputeDtype = "auto"  # dtype of the two matmuls' inputs (accumulation is always float32)
    pos_weight: bool = True  # BCE pos_weight = neg/pos per label (the reference study's default)
    seed: int = 0
    device: str = "cpu"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


def _matmul_dtype(name: str, dev):
    """The torch dtype of the training matmuls: bfloat16 where the device has bfloat16 matrix units."""
    import torch

    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    # Without AMX / AVX512-BF16 a bfloat16 GEMM is emulated and slower than float32 (private probes: default False).
    fast = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return torch.bfloat16 if fast else torch.float32


class LinearGridProbe:
    """Many linear heads trained in one pass; the best on validation is kept.

    Parameters
    ----------
    config : LinearGridConfig, optional
    **overrides
        Fields of ``LinearGridConfig`` (e.g. ``seed=1``, ``device="cuda"``), and three shorthands shared with the
        other heads: ``lr`` (float) replaces the lr axis by that single value, so the grid becomes one head per
        weight decay; ``epochs`` (int) sets ``max_epochs`` (early stopping still applies; ``patience=epochs``
        trains them all); ``batch_size`` (int) fixes the batch size.

    Attributes (after ``fit``)
    --------------------------
    best_params_ : dict
        ``lr``, ``weight_decay``, ``epoch`` of the chosen head, ``n_heads``, ``epochs_run``, ``batch_size``,
        ``compute_dtype``, ``seed``.
    best_val_auroc_ : float
    results_ : list[dict]
        One row per head: lr, weight_decay, best val mean AUROC, best epoch, epochs trained (halving stops some).
    history_ : list[dict]
        Per epoch: epoch, heads trained, best val mean AUROC over them, seconds.
    coef_ : ndarray (D, K), intercept_ : ndarray (K,), mean_ : ndarray (D,), scale_ : ndarray (D,)

    Raises
    ------
    ProbeError
        Unknown option, empty grid, or a non-positive batch size / epoch count / patience / min_heads, or a
        keep_fraction outside (0, 1].

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
        for short, field in (("lr", "lrs"), ("epochs", "max_epochs")):
            if short in overrides:
                if field in overrides:
                    raise ProbeError(f"Give the linear grid either '{short}' or '{field}', not both.")
                value = overrides.pop(short)
                overrides[field] = (value,) if short == "lr" else value
        try:
            self.config = LinearGridConfig(**{**base, **overrides})
        except TypeError as exc:
            raise ProbeError(f"unknown linear-grid option: {exc}") from None
        c = self.config
        bad_bs = c.batch_size is not None and (not isinstance(c.batch_size, int) or c.batch_size < 1)
        if not c.lrs or not c.weight_decays or bad_bs or c.max_epochs < 1 or c.patience < 1 or c.min_heads < 1:
            raise ProbeError("The linear grid needs >= 1 lr and weight decay, batch_size >= 1, max_epochs >= 1, "
                             "patience >= 1, min_heads >= 1.")
        if min(c.lrs) <= 0:
            raise ProbeError(f"The linear grid's learning rates must be > 0. Got {c.lrs}.")
        if not 0 < c.keep_fraction <= 1:
            raise ProbeError(f"The 'keep_fraction' option of the linear grid must be in (0, 1]. Got {c.keep_fraction}.")
        if c.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise ProbeError(f"compute_dtype must be 'auto', 'float32' or 'bfloat16'; got {c.compute_dtype!r}.")

    @property
    def n_heads(self) -> int:
        return len(self.config.lrs) * len(self.config.weight_decays)

    def fit(self, x_train, y_train, x_val, y_val, *, progress=None) -> LinearGridProbe:
        """Train every head on ``(x_train, y_train)``; keep each head's best epoch and the best head on val.

        Parameters
        ----------
        x_train : array (N, D) float
            float16 or float32; kept in its dtype (batches are converted when used).
        y_train : array (N, K) float, NaN = unknown
        x_val : array (M, D) float
        y_val : array (M, K) float, NaN = unknown
        progress : callable(dict), optional
            Receives step and epoch events (:class:`probes.heads.FitProgress`).

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
        mdt = _matmul_dtype(c.compute_dtype, dev)
        n, d = x_train.shape
        k = y_train.shape[1]
        bs = c.batch_size or int(np.clip(n // 16, 256, 4096))
        grid = [(lr, wd) for lr in c.lrs for wd in c.weight_decays]
        h = len(grid)
        self.mean_, self.scale_ = standardizer(x_train)
        pw = positive_weights(y_train) if c.pos_weight else np.ones(k, dtype=np.float32)
        self.pos_weight_ = pw

        gen = torch.Generator().manual_seed(c.seed)
        mean = torch.from_numpy(self.mean_).to(dev)
        inv = torch.from_numpy(1.0 / self.scale_).to(dev)
        shift = -mean * inv  # (x - mean) * inv == x * inv + shift: one fused pass per batch
        # Zero-copy on CPU (torch shares the numpy buffer, float16 included); one transfer in the stored dtype on CUDA.
        xt = torch.from_numpy(np.ascontiguousarray(x_train)).to(dev)
        xv = torch.from_numpy(np.ascontiguousarray(x_val)).to(dev)
        # d/dz of BCE-with-logits with pos_weight is sigmoid(z) * (1 + (pw - 1) y) - pw y. Its two label-only factors
        # (masked where y is unknown) are per row, so they are computed once; each batch gathers them and scales
        # them by 1 / (its known cells): every head's loss is the mean over its known (row, label) cells.
        known = ~np.isnan(y_train)
        fac = np.empty((n, 2 * k), dtype=np.float32)  # (N, 2K), built in place: labels can be large too
        np.copyto(fac[:, k:], y_train)
        np.copyto(fac[:, k:], 0.0, where=~known)
        np.multiply(fac[:, k:], pw - 1, out=fac[:, :k])
        fac[:, :k] += known  # (1 + (pw - 1) y) where known, 0 where unknown
        fac[:, k:] *= -pw
        fac_t = torch.from_numpy(fac).to(dev)
        known_rows = known.sum(axis=1)

        # Zero init: the problem is convex, and identical starts make the grid a clean comparison of lr x wd.
        # Training state covers the active heads only (column j: head active[j // K], label j % K).
        active = np.arange(h)
        col = lambda heads: torch.from_numpy(_columns(heads, k)).to(dev)  # noqa: E731
        st = _AdamGrid(d, k, [lr for lr, _ in grid], [wd for _, wd in grid], betas=c.betas, eps=c.eps, device=dev)
        best = st.wb.clone()  # (D + 1, H*K): each head's best weights, bias in the last row
        best_score = np.full(h, -np.inf)
        best_epoch = np.zeros(h, dtype=int)
        trained = np.zeros(h, dtype=int)
        self.history_ = []
        stale = 0
        top = -np.inf
        xbuf = torch.empty(min(bs, n), d, dtype=mdt, device=dev)
        report = FitProgress(progress, epochs=c.max_epochs, steps=-(-n // bs))
        for epoch in range(1, c.max_epochs + 1):
            t0 = time.perf_counter()
            ha = active.size
            perm = torch.randperm(n, generator=gen)
            perm_np = perm.numpy()
            perm = perm.to(dev)
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                nb = idx.numel()
                # Standardised straight into the matmul dtype; the gather is a fresh tensor, never the caller's buffer.
                xb = torch.addcmul(shift, xt.index_select(0, idx), inv, out=xbuf[:nb])
                ac = fac_t.index_select(0, idx).mul_(1.0 / max(1, int(known_rows[perm_np[i : i + bs]].sum())))
                w, b = st.weights(mdt)
                z = torch.sigmoid_(torch.addmm(b, xb, w).float()).view(nb, ha, k)
                g = torch.addcmul(ac[:, None, k:], z, ac[:, None, :k]).to(mdt).view(nb, ha * k)
                st.step(xb.T @ g, g.sum(0, dtype=torch.float32))
                report.step(epoch, i // bs + 1)
            trained[active] += 1
            val = self._val_scores(xv, st.wb, y_val, ha, k, shift=shift, inv=inv)
            improved = val > best_score[active]
            if improved.any():
                best[:, col(active[improved])] = st.wb[:, torch.from_numpy(np.repeat(improved, k)).to(dev)]
                best_score[active[improved]] = val[improved]
                best_epoch[active[improved]] = epoch
            epoch_top = float(np.max(np.where(np.isnan(val), -np.inf, val)))
            self.history_.append({"epoch": epoch, "heads": int(ha), "best_val_auroc": epoch_top,
                                  "seconds": time.perf_counter() - t0})
            logger.info("linear grid epoch %d (%d heads): best val mean AUROC %.4f", epoch, ha, epoch_top)
            report.epoch(epoch, val_auroc=epoch_top, heads=int(ha))
            if epoch_top > top + 1e-5:
                top, stale = epoch_top, 0
            else:
                stale += 1
                if stale >= c.patience:
                    break
            keep = max(c.min_heads, math.ceil(ha * c.keep_fraction))
            if keep < ha:
                # Successive halving on the best val score so far (ties: grid order); kept heads carry their state on.
                order = np.sort(np.lexsort((active, -np.nan_to_num(best_score[active], nan=-np.inf)))[:keep])
                st.keep(col(order))
                active = active[order]
        report.finish()
        if not np.isfinite(best_score).any():
            raise ProbeError("no label has both classes in the validation split; cannot select a head. "
                             "Use a larger validation split.")
        j = select_best(best_score)
        lr, wd = grid[j]
        self.results_ = [
            {"lr": g[0], "weight_decay": g[1], "val_auroc": float(best_score[i]), "best_epoch": int(best_epoch[i]),
             "epochs_trained": int(trained[i])}
            for i, g in enumerate(grid)
        ]
        self.best_params_ = {"lr": lr, "weight_decay": wd, "epoch": int(best_epoch[j]), "n_heads": h,
                             "epochs_run": len(self.history_), "batch_size": bs,
                             "compute_dtype": str(mdt).removeprefix("torch."), "seed": c.seed}
        self.best_val_auroc_ = float(best_score[j])
        chosen = best[:, j * k : (j + 1) * k].cpu().numpy()
        self.coef_, self.intercept_ = chosen[:-1].copy(), chosen[-1].copy()
        return self

    @staticmethod
    def _val_scores(xv, wb, y_val, h: int, k: int, *, shift, inv) -> np.ndarray:
        """(H,) val mean AUROC of every training head.

        Val rows are standardised in float32 chunks of <= 2 MiB (out of place: ``xv`` may share the caller's
        buffer); their float32 logits fill one (M, H*K) array.
        """
        import torch

        m, d = xv.shape
        z = np.empty((m, h * k), dtype=np.float32)
        step = rows_per_chunk(d, budget=2 << 20)
        for i in range(0, m, step):
            xb = torch.addcmul(shift, xv[i : i + step], inv)
            z[i : i + step] = torch.addmm(wb[-1], xb, wb[:-1]).cpu().numpy()
        return np.asarray(mean_over_labels(_auroc_heads(y_val, z, h, k)))

    def decision_function(self, x, *, chunk: int | None = None) -> np.ndarray:
        """(N, K) logits of the chosen head; ``x`` (N, D) is converted to float32 one bounded chunk at a time."""
        x = np.asarray(x)
        out = np.empty((x.shape[0], self.coef_.shape[1]), dtype=np.float32)
        chunk = chunk or rows_per_chunk(x.shape[1], budget=2 << 20)
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


class _AdamGrid:
    """Adam over the weights of the training heads: one (D + 1, H*K) float32 tensor, the bias in the last row.

    Each column has its head's learning rate and coupled L2 weight decay (the bias is not decayed, as in sklearn).
    Written as a handful of whole-tensor ops: on a shared CPU every op pays a thread-pool round trip.
    """

    def __init__(self, d: int, k: int, lrs: list[float], wds: list[float], *, betas, eps: float, device) -> None:
        import torch

        self.wb = torch.zeros(d + 1, len(lrs) * k, device=device)
        self.m, self.v = torch.zeros_like(self.wb), torch.zeros_like(self.wb)
        self.lr = torch.tensor(lrs, dtype=torch.float32, device=device).repeat_interleave(k)
        self.wd = torch.tensor(wds, dtype=torch.float32, device=device).repeat_interleave(k)
        self.betas, self.eps, self.t = betas, eps, 0

    def weights(self, dtype):
        """(D, H*K) weights and (H*K,) bias in ``dtype`` for the forward matmul."""
        wb = self.wb.to(dtype)
        return wb[:-1], wb[-1]

    def step(self, gw, gb) -> None:
        """One Adam step from the summed-loss gradients ``gw`` (D, H*K) (any float dtype) and ``gb`` (H*K,)."""
        import torch

        b1, b2 = self.betas
        self.t += 1
        g = torch.cat([gw, gb[None]]).float()  # cat promotes a bfloat16 gw to float32 in the same pass
        g[:-1].addcmul_(self.wb[:-1], self.wd)  # coupled L2: Adam's fixed point is sklearn's L2-regularised optimum
        self.m.lerp_(g, 1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
        # lr * (m / bc1) / (sqrt(v / bc2) + eps), with the bias corrections moved into two scalars.
        denom = self.v.sqrt().add_(self.eps * math.sqrt(bc2))
        self.wb.addcdiv_(self.m * self.lr, denom, value=-math.sqrt(bc2) / bc1)

    def keep(self, cols) -> None:
        """Keep only the given columns (int64 tensor) of the weights, moments and per-column rates."""
        self.wb, self.m, self.v = (t.index_select(1, cols) for t in (self.wb, self.m, self.v))
        self.lr, self.wd = self.lr[cols], self.wd[cols]


def _columns(heads: np.ndarray, k: int) -> np.ndarray:
    """Weight columns (int64) of the given heads, head-major: head i owns columns i*K .. i*K + K - 1."""
    return (np.asarray(heads, dtype=np.int64)[:, None] * k + np.arange(k)).ravel()


def _auroc_heads(y: np.ndarray, z: np.ndarray, h: int, k: int) -> np.ndarray:
    """(H, K) AUROC of every head's logits ``z`` (M, H*K) against ``y`` (M, K); equals ``metrics.auroc_many``.

    Each (head, label) score row is sorted as one contiguous row (``auroc_many`` sorts strided columns, several
    times slower at grid sizes). Without ties a positive's rank is its sorted position; rows whose scores tie
    (float32 logits of 10k rows usually do somewhere) get midranks, the rule of ``auroc_many`` (a test checks both).
    """
    out = np.full((h, k), np.nan)
    zt = z.reshape(z.shape[0], h, k)
    for j in range(k):
        known = ~np.isnan(y[:, j])
        pos = y[known, j] == 1.0
        p, q = int(pos.sum()), int((~pos).sum())
        if p == 0 or q == 0:
            continue
        a = np.ascontiguousarray(zt[known, :, j].T)  # (H, M_known)
        order = np.argsort(a, axis=1)
        sa = np.take_along_axis(a, order, axis=1)
        ps = pos[order]  # (H, M_known): is the r-th smallest score a positive
        out[:, j] = ps @ np.arange(1, a.shape[1] + 1, dtype=np.float64)
        tied = np.flatnonzero(np.any(sa[:, 1:] == sa[:, :-1], axis=1))
        if tied.size:
            out[tied, j] = _midrank_sums(sa[tied], ps[tied])
        out[:, j] = (out[:, j] - p * (p + 1) / 2) / (p * q)
    return out


def _midrank_sums(sa: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """(T,) sum of the positives' 1-based midranks; ``sa`` (T, M) sorted scores per row, ``ps`` their positivity."""
    m = sa.shape[1]
    idx = np.arange(m)
    first = np.ones(sa.shape, dtype=bool)
    first[:, 1:] = sa[:, 1:] != sa[:, :-1]
    last = np.ones(sa.shape, dtype=bool)
    last[:, :-1] = first[:, 1:]
    start = np.maximum.accumulate(np.where(first, idx, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, idx, m - 1)[:, ::-1], axis=1)[:, ::-1]
    return np.sum((0.5 * (start + end) + 1.0) * ps, axis=1)
