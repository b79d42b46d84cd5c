"""The reference study's frozen-feature head: LayerNorm -> Linear(D, 512) -> GELU -> LayerNorm -> Dropout(0.3) ->
Linear(512, K), trained with AdamW on a masked, positively-weighted BCE.

Two selection rules (``select``):

- ``"val_auroc"`` (default): the epoch of best validation mean AUROC, with early stopping (``patience``) and a
  small learning-rate sweep (``lrs``);
- ``"val_loss"``: the epoch of lowest validation loss (the same masked, ``pos_weight``-ed BCE as training) — the
  reference study's "best model whenever validation loss improves". With ``patience=None`` every epoch of the
  budget runs (the study's fixed epoch budget); ``lr=1e-5, batch_size=30, drop_last=True`` complete its recipe
  (``embedkit.protocols`` holds it as the ``paper`` protocol).

No per-feature standardisation: the head's first LayerNorm normalises each row, as in the reference study. The
features stay in their own dtype (float16 stays float16; moved to CUDA once, in that dtype); each mini-batch and
each prediction chunk is converted to float32 only when it is used, so there is never a float32 copy of the matrix.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from probes._common import check_xy, positive_weights, resolve_device, rows_per_chunk
from probes.errors import ProbeError
from probes.heads import FitProgress, ProgressFn
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
    patience: int | None = 5  # epochs without improvement before stopping; None = run the whole budget
    drop_last: bool = False  # skip the last incomplete mini-batch of each epoch (torch DataLoader's drop_last)
    select: Literal["val_auroc", "val_loss"] = "val_auroc"
    pos_weight: bool = True
    seed: int = 0
    device: str = "cpu"


SELECT_RULES = ("val_auroc", "val_loss")


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
    """MLP head selected on validation mean AUROC (default) or validation loss.

    Parameters
    ----------
    config : MLPConfig, optional
    **overrides
        ``MLPConfig`` fields, plus ``lr`` (one learning rate, for ``lrs=(lr,)``) and ``epochs`` (``max_epochs``).

    Attributes (after ``fit``)
    --------------------------
    best_params_ : dict (lr, weight_decay, epoch, and the recipe), best_val_auroc_ : float (at the selected
    epoch), best_val_loss_ : float, results_ : list[dict], history_ : list[dict] (val_auroc and val_loss per epoch),
    model_ : nn.Module (best weights, eval mode, on CPU)
    """

    kind = "mlp"

    def __init__(self, config: MLPConfig | None = None, **overrides) -> None:
        base = asdict(config) if config is not None else {}
        # The CLI's head options: one learning rate (``lr``) and an epoch budget (``epochs``).
        for short, full in (("lr", "lrs"), ("epochs", "max_epochs")):
            if short in overrides:
                if full in overrides:
                    raise ProbeError(f"Give the mlp head either '{short}' or '{full}', not both.")
                value = overrides.pop(short)
                overrides[full] = (value,) if short == "lr" else value
        try:
            self.config = MLPConfig(**{**base, **overrides})
        except TypeError as exc:
            raise ProbeError(f"unknown mlp option: {exc}") from None
        c = self.config
        if not c.lrs or min(c.lrs) <= 0 or c.max_epochs < 1 or c.batch_size < 1:
            raise ProbeError("The mlp head needs lr > 0 (>= 1 of them), epochs >= 1 and batch_size >= 1. "
                             f"Got lrs={c.lrs}, epochs={c.max_epochs}, batch_size={c.batch_size}.")
        if c.patience is not None and c.patience < 1:
            raise ProbeError(f"The 'patience' option of the mlp head must be >= 1 or None. Got {c.patience}.")
        if c.select not in SELECT_RULES:
            raise ProbeError(f"The 'select' option of the mlp head must be one of {', '.join(SELECT_RULES)}. "
                             f"Got {c.select!r}.")

    def fit(self, x_train, y_train, x_val, y_val, *, progress: ProgressFn | None = None) -> MLPProbe:
        """Train on ``(x_train (N, D), y_train (N, K))``; select on ``(x_val (M, D), y_val (M, K))``.

        ``x_train`` and ``x_val`` may be float16 or float32; they are kept in their dtype. ``progress`` receives
        step and epoch events (:class:`probes.heads.FitProgress`; epoch events carry ``lr``, the epoch's mean
        training ``loss``, ``val_loss`` and ``val_auroc``).
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
        if c.drop_last and n < c.batch_size:
            raise ProbeError(f"drop_last with batch_size {c.batch_size} leaves no batch of the {n} training rows; "
                             "lower --batch-size.")
        pw_t = torch.from_numpy(pw).to(dev)
        xt = torch.from_numpy(np.ascontiguousarray(x_train)).to(dev)  # zero-copy on CPU, stored dtype on CUDA
        yt = torch.from_numpy(np.ascontiguousarray(y_train)).to(dev)
        self.results_, self.history_ = [], []
        # Initialisation and dropout draw from torch's global RNG: fork it so fitting leaves the caller's alone.
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            best = self._sweep(c, xt, yt, x_val, y_val, pw_t, dev, n, d, k, progress)
        if best[1] is None:
            raise ProbeError("no label has both classes in the validation split; cannot select the mlp head.")
        self.best_val_auroc_ = float(best[2]["val_auroc"])
        self.best_val_loss_ = float(best[2]["val_loss"])
        self.best_params_ = {k: best[2][k] for k in ("lr", "weight_decay", "epoch")}
        self.best_params_.update(hidden=c.hidden, dropout=c.dropout, batch_size=c.batch_size, seed=c.seed,
                                 select=c.select, drop_last=c.drop_last, epochs=c.max_epochs, patience=c.patience)
        self.model_ = build_mlp(d, k, hidden=c.hidden, dropout=c.dropout)
        self.model_.load_state_dict(best[1])
        self.model_.eval()
        return self

    def _sweep(self, c, xt, yt, x_val, y_val, pw_t, dev, n: int, d: int, k: int, progress):
        """Train one run per lr; return ``(criterion, state, info)`` of the selected epoch (criterion: higher is
        better, i.e. AUROC or minus the loss)."""
        import torch

        by_loss = c.select == "val_loss"
        stop = n - c.batch_size + 1 if c.drop_last else n
        yv = torch.from_numpy(np.ascontiguousarray(y_val, dtype=np.float32))
        best = (-np.inf, None, None)
        report = FitProgress(progress, epochs=c.max_epochs, steps=len(range(0, stop, c.batch_size)), runs=len(c.lrs))
        for run, lr in enumerate(c.lrs):
            torch.manual_seed(c.seed)  # same init for every lr: the sweep compares learning rates only
            gen = torch.Generator().manual_seed(c.seed)
            model = build_mlp(d, k, hidden=c.hidden, dropout=c.dropout).to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=c.weight_decay)
            run_best, run_info, run_state, stale = -np.inf, None, None, 0
            for epoch in range(1, c.max_epochs + 1):
                t0 = time.perf_counter()
                model.train()
                perm = torch.randperm(n, generator=gen).to(dev)
                loss_sum = torch.zeros((), device=dev)  # summed on the device: no sync per step
                for step, i in enumerate(range(0, stop, c.batch_size), 1):
                    idx = perm[i : i + c.batch_size]
                    loss = masked_bce(model(xt[idx].float()), yt[idx], pw_t)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss_sum += loss.detach()
                    report.step(epoch, step, run=run)
                logits = self._predict(model, x_val, dev)
                score = mean_over_labels(auroc(y_val, logits))
                val_loss = float(masked_bce(torch.from_numpy(logits), yv, pw_t.cpu()))
                self.history_.append({"lr": lr, "epoch": epoch, "val_auroc": score, "val_loss": val_loss,
                                      "seconds": time.perf_counter() - t0})
                crit = -val_loss if by_loss else score
                # AUROC must improve by 1e-5 (noise); a loss counts when strictly lower, as in the reference.
                if crit > run_best + (0.0 if by_loss else 1e-5) and (by_loss or np.isfinite(score)):
                    run_best, stale = crit, 0
                    run_info = {"lr": lr, "weight_decay": c.weight_decay, "epoch": epoch, "val_auroc": score,
                                "val_loss": val_loss}
                    run_state = {kk: v.detach().cpu().clone() for kk, v in model.state_dict().items()}
                else:
                    stale += 1
                stopping = epoch == c.max_epochs or (c.patience is not None and stale >= c.patience)
                report.epoch(epoch, run=run, last=stopping, lr=lr, loss=float(loss_sum) / report.steps,
                             val_loss=val_loss, val_auroc=score)
                if stopping:
                    break
            self.results_.append({"lr": lr, "weight_decay": c.weight_decay,
                                  "val_auroc": run_info["val_auroc"] if run_info else float("nan"),
                                  "val_loss": run_info["val_loss"] if run_info else float("nan"),
                                  "best_epoch": run_info["epoch"] if run_info else 0})
            if run_state is not None and run_best > best[0]:
                best = (run_best, run_state, run_info)
        if by_loss and best[2] is not None and not np.isfinite(best[2]["val_auroc"]):
            return (-np.inf, None, None)  # no label with both classes: refuse, as the AUROC rule does
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
