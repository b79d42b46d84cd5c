"""The reference study's frozen-feature head: LayerNorm -> Linear(D, 512) -> GELU -> LayerNorm -> Dropout(0.3) ->
Linear(512, K), trained with AdamW on a masked, positively-weighted BCE; selected by validation mean AUROC over
epochs (early stopping) and a small learning-rate sweep.

No per-feature standardisation: the head's first LayerNorm normalises each row, as in the reference study. The
features stay in their own dtype (float16 stays float16; moved to CUDA once, in that dtype); each mini-batch and
each prediction chunk is converted to float32 only when it is used, so there is never a float32 copy of the matrix.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from probes._common import check_xy, positive_weights, resolve_device, rows_per_chunk
from probes.errors import ProbeError
from probes.metrics import auroc, mean_over_labels

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MLPConfig:
    """Hyperparameters of the MLP head."""

    lrs: tuple[float, ...] = (1e-4, 1e-3)  # AdamW learning rates tried in turn
    weight_decay: float = 0.0  # the reference study's config value
    hidden: int = 512
    dropout: float = 0.3
    batch_size: int = 512
    max_epochs: int = 50
    patience: int = 5
    pos_weight: bool = True
    seed: int = 0
    device: str = "cpu"


def build_mlp(d: int, k: int, *, hidden: int = 512, dropout: float = 0.3):
    """The DinoNet head of the reference study as an ``nn.Sequential``."""
    from torch import nn

    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.LayerNorm(hidden),
                         nn.Dropout(dropout), nn.Linear(hidden, k))


def masked_bce(logits, y, pos_weight):
    """Mean BCE-with-logits over the known (non-NaN) cells of ``y`` (B, K), with per-label ``pos_weight`` (K,)."""
    import torch
    import torch.nn.functional as F

    known = ~torch.isnan(y)
    loss = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(y, nan=0.0), pos_weight=pos_weight,
                                              reduction="none")
    return (loss * known).sum() / known.sum().clamp_min(1)


class MLPProbe:
    """MLP head with early stopping on validation mean AUROC.

    Attributes (after ``fit``)
    --------------------------
    best_params_ : dict (lr, weight_decay, epoch), best_val_auroc_ : float, results_ : list[dict],
    history_ : list[dict], model_ : nn.Module (best weights, eval mode, on CPU)
    """

    kind = "mlp"

    def __init__(self, config: MLPConfig | None = None, **overrides) -> None:
        base = asdict(config) if config is not None else {}
        try:
            self.config = MLPConfig(**{**base, **overrides})
        except TypeError as exc:
            raise ProbeError(f"unknown mlp option: {exc}") from None
        if not self.config.lrs or self.config.max_epochs < 1 or self.config.batch_size < 1:
            raise ProbeError("The mlp head needs >= 1 lr, max_epochs >= 1 and batch_size >= 1.")

    def fit(self, x_train, y_train, x_val, y_val) -> MLPProbe:
        """Train on ``(x_train (N, D), y_train (N, K))``; select on ``(x_val (M, D), y_val (M, K))``.

        ``x_train`` and ``x_val`` may be float16 or float32; they are kept in their dtype.
        """
        import torch

        c = self.config
        x_train, y_train = check_xy(x_train, y_train, name="train")
        x_val, y_val = check_xy(x_val, y_val, name="val")
        dev = resolve_device(c.device)
        n, d = x_train.shape
        k = y_train.shape[1]
        pw = positive_weights(y_train) if c.pos_weight else np.ones(k, dtype=np.float32)
        self.pos_weight_ = pw
        pw_t = torch.from_numpy(pw).to(dev)
        xt = torch.from_numpy(np.ascontiguousarray(x_train)).to(dev)  # zero-copy on CPU, stored dtype on CUDA
        yt = torch.from_numpy(np.ascontiguousarray(y_train)).to(dev)
        self.results_, self.history_ = [], []
        # Initialisation and dropout draw from torch's global RNG: fork it so fitting leaves the caller's alone.
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            best = self._sweep(c, xt, yt, x_val, y_val, pw_t, dev, n, d, k)
        if best[1] is None:
            raise ProbeError("no label has both classes in the validation split; cannot select the mlp head.")
        self.best_val_auroc_ = float(best[0])
        self.best_params_ = {**best[2], "hidden": c.hidden, "dropout": c.dropout, "batch_size": c.batch_size,
                             "seed": c.seed}
        self.model_ = build_mlp(d, k, hidden=c.hidden, dropout=c.dropout)
        self.model_.load_state_dict(best[1])
        self.model_.eval()
        return self

    def _sweep(self, c, xt, yt, x_val, y_val, pw_t, dev, n: int, d: int, k: int):
        import torch

        best = (-np.inf, None, None)
        for lr in c.lrs:
            torch.manual_seed(c.seed)  # same init for every lr: the sweep compares learning rates only
            gen = torch.Generator().manual_seed(c.seed)
            model = build_mlp(d, k, hidden=c.hidden, dropout=c.dropout).to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=c.weight_decay)
            run_best, run_epoch, run_state, stale = -np.inf, 0, None, 0
            for epoch in range(1, c.max_epochs + 1):
                t0 = time.perf_counter()
                model.train()
                perm = torch.randperm(n, generator=gen).to(dev)
                for i in range(0, n, c.batch_size):
                    idx = perm[i : i + c.batch_size]
                    loss = masked_bce(model(xt[idx].float()), yt[idx], pw_t)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                score = mean_over_labels(auroc(y_val, self._predict(model, x_val, dev)))
                self.history_.append({"lr": lr, "epoch": epoch, "val_auroc": score,
                                      "seconds": time.perf_counter() - t0})
                if score > run_best + 1e-5:
                    run_best, run_epoch, stale = score, epoch, 0
                    run_state = {kk: v.detach().cpu().clone() for kk, v in model.state_dict().items()}
                else:
                    stale += 1
                    if stale >= c.patience:
                        break
            self.results_.append({"lr": lr, "weight_decay": c.weight_decay, "val_auroc": run_best,
                                  "best_epoch": run_epoch})
            if run_state is not None and run_best > best[0]:
                best = (run_best, run_state, {"lr": lr, "weight_decay": c.weight_decay, "epoch": run_epoch})
        return best

    @staticmethod
    def _predict(model, x, dev, chunk: int | None = None) -> np.ndarray:
        """(N, K) logits; ``x`` (N, D) goes through the model in float32 chunks of bounded size."""
        import torch

        model.eval()
        k = model[-1].out_features
        out = np.empty((x.shape[0], k), dtype=np.float32)
        chunk = chunk or rows_per_chunk(x.shape[1])
        with torch.no_grad():
            for i in range(0, x.shape[0], chunk):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + chunk])).to(dev).float()
                out[i : i + chunk] = model(xb).float().cpu().numpy()
        return out

    def decision_function(self, x) -> np.ndarray:
        """(N, K) logits of the selected model."""
        import torch

        return self._predict(self.model_, np.asarray(x), torch.device("cpu"))

    def predict_proba(self, x) -> np.ndarray:
        """(N, K) probabilities."""
        z = self.decision_function(x)
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The selected model's parameters (``nn.Sequential`` names), for safetensors."""
        out = {k: v.detach().cpu().numpy() for k, v in self.model_.state_dict().items()}
        out["pos_weight"] = self.pos_weight_
        return out
