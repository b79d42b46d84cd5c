"""Reading a saved head (``head.safetensors`` of a run) back into something that scores new feature rows.

``probes.report.write_run`` saves the chosen head's ``state_dict()`` with JSON-encoded metadata (``head``,
``features``, ``labels``, ``chosen``, ``store_fingerprint``). The linear and sklearn heads save the standardiser and
the weights (``mean``, ``scale``, ``coef`` (D, K), ``intercept``); the mlp head saves its ``nn.Sequential``
parameters, from which the layer sizes are read back. A knn head saves only its training labels (the training
features live in the store it was trained on), so it cannot score new rows on its own and is refused.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probes.errors import ProbeError


@dataclass(frozen=True)
class LoadedHead:
    """A trained head read from disk.

    Attributes
    ----------
    kind : str
        ``linear``, ``sklearn`` or ``mlp``.
    features : str
        The view(s) it was trained on (``cls`` or ``cls+mean_patch``).
    labels : list[str] (K)
    in_dim : int
        Feature dimension D it expects.
    tensors : dict name -> ndarray
    metadata : dict
    """

    kind: str
    features: str
    labels: list[str]
    in_dim: int
    tensors: dict[str, np.ndarray] = field(repr=False)
    metadata: dict = field(default_factory=dict, repr=False)

    def decision_function(self, x, *, chunk: int = 65536) -> np.ndarray:
        """(N, K) float32 logits of feature rows ``x`` (N, D), converted to float32 one chunk at a time."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ProbeError(f"The {self.kind} head expects (N, {self.in_dim}) features ({self.features}); "
                             f"got shape {x.shape}.")
        out = np.empty((x.shape[0], len(self.labels)), dtype=np.float32)
        for i in range(0, x.shape[0], chunk):
            out[i : i + chunk] = self._logits(np.asarray(x[i : i + chunk], dtype=np.float32))
        return out

    def predict_proba(self, x) -> np.ndarray:
        """(N, K) probabilities (sigmoid of the logits)."""
        z = self.decision_function(x)
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)

    def _logits(self, xb: np.ndarray) -> np.ndarray:
        t = self.tensors
        if self.kind in ("linear", "sklearn"):
            return ((xb - t["mean"]) / t["scale"]) @ t["coef"] + t["intercept"]
        return _mlp_forward(t, xb)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _mlp_forward(t: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The DinoNet head (``probes.mlp.build_mlp``) in eval mode: LN, Linear, GELU, LN, (Dropout), Linear."""
    h = _layer_norm(x, t["0.weight"], t["0.bias"])
    h = _gelu(h @ t["1.weight"].T + t["1.bias"])
    h = _layer_norm(h, t["3.weight"], t["3.bias"])
    return (h @ t["5.weight"].T + t["5.bias"]).astype(np.float32)


def load_head(path: str | os.PathLike) -> LoadedHead:
    """Read ``head.safetensors`` written by a probe run.

    Parameters
    ----------
    path : str or path-like
        The file, or the run directory holding it.

    Returns
    -------
    LoadedHead

    Raises
    ------
    ProbeError
        Missing file, a knn head, or arrays that do not fit the recorded head kind.

    Examples
    --------
    >>> head = load_head("runs/nih-linear")            # doctest: +SKIP
    >>> head.predict_proba(x).shape                    # doctest: +SKIP
    (N, K)
    """
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir():
        p = p / "head.safetensors"
    if not p.exists():
        raise ProbeError(f"No trained head at '{p}'. Only probe runs of a linear, sklearn or mlp head save one.")
    with safe_open(str(p), framework="numpy") as f:
        raw = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = {k: json.loads(v) for k, v in raw.items()}
    kind, labels = meta.get("head"), list(meta.get("labels") or [])
    if kind == "knn":
        raise ProbeError(f"'{p}' is a knn head: it votes among its training rows, which the file does not hold, "
                         "so it cannot score new data. Use a linear, sklearn or mlp head.")
    need = {"linear": ("coef", "intercept", "mean", "scale"), "sklearn": ("coef", "intercept", "mean", "scale"),
            "mlp": ("0.weight", "1.weight", "3.weight", "5.weight", "5.bias")}.get(kind)
    if need is None:
        raise ProbeError(f"'{p}' records head {kind!r}; this embedkit reads linear, sklearn and mlp heads.")
    missing = [k for k in need if k not in tensors]
    if missing:
        raise ProbeError(f"'{p}' lacks the {kind} head arrays {', '.join(missing)}; the file is damaged.")
    tensors = {k: v.astype(np.float32) for k, v in tensors.items()}
    in_dim = int(tensors["coef"].shape[0] if kind != "mlp" else tensors["1.weight"].shape[1])
    k_out = int(tensors["coef"].shape[1] if kind != "mlp" else tensors["5.weight"].shape[0])
    if len(labels) != k_out:
        raise ProbeError(f"'{p}' names {len(labels)} labels for {k_out} outputs; the file is damaged.")
    return LoadedHead(kind=kind, features=str(meta.get("features")), labels=labels, in_dim=in_dim,
                      tensors=tensors, metadata=meta)
