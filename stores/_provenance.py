"""Provenance helpers: canonical JSON, the store fingerprint, and the refuse-to-mix check."""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from stores.errors import StoreError

#: Provenance keys left out of the fingerprint: they change between otherwise identical runs.
VOLATILE_KEYS = ("created",)

#: Backbone keys whose difference means different features.
_BACKBONE_KEYS = ("name", "source", "id", "hub_id", "sha256")


def normalize(provenance: Mapping[str, Any]) -> dict:
    """Round-trip ``provenance`` through JSON (tuples become lists), as the store will hold it.

    Raises
    ------
    StoreError
        The provenance is not JSON-serialisable.
    """
    if not isinstance(provenance, Mapping):
        raise StoreError(f"The 'provenance' parameter must be a dict. Got {type(provenance).__name__}.")
    try:
        return json.loads(json.dumps(dict(provenance), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"The provenance must be plain JSON (str/number/bool/None/list/dict, no NaN): {exc}.") from None


def strict(obj: Any) -> Any:
    """``obj`` with NaN/inf -> None and numpy scalars/arrays -> Python, for strict JSON (``allow_nan=False``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return strict(obj.tolist())
    return obj


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def fingerprint(provenance: Mapping[str, Any], ids: Sequence[str]) -> str:
    """sha256 (hex) of ``canonical_json({"ids": [...], "provenance": provenance minus VOLATILE_KEYS})``.

    Parameters
    ----------
    provenance : dict
        The provenance document (as stored).
    ids : sequence of str, shape (N,)
        Row ids in store order.
    """
    stable = {k: v for k, v in provenance.items() if k not in VOLATILE_KEYS}
    doc = {"ids": [str(i) for i in ids], "provenance": stable}
    return hashlib.sha256(canonical_json(doc).encode("ascii")).hexdigest()


def describe(provenance: Mapping[str, Any]) -> str:
    """Short human label: ``dinov3-vitb16 @512 (preprocess=paper)``."""
    bb = provenance.get("backbone") or {}
    name = bb.get("name") or bb.get("id") or bb.get("hub_id") or bb.get("path") or "unknown backbone"
    pre = provenance.get("preprocess") or {}
    preset = pre.get("preset", "?") if isinstance(pre, Mapping) else pre
    return f"{name} @{provenance.get('resolution', '?')} (preprocess={preset})"


def _identity(provenance: Mapping[str, Any]) -> dict:
    bb = provenance.get("backbone") or {}
    backbone = {k: bb.get(k) for k in _BACKBONE_KEYS}
    if not bb.get("sha256"):  # without a weights hash, the path is all that tells two checkpoints apart
        backbone["path"] = bb.get("path")
    return {"backbone": backbone, "resolution": provenance.get("resolution"),
            "preprocess": provenance.get("preprocess"), "views": provenance.get("views"),
            "dtype": provenance.get("dtype")}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Names of the identity fields (backbone, resolution, preprocess, views, dtype) that differ."""
    a, b = _identity(old), _identity(new)
    return [k for k in a if a[k] != b[k]]
