"""A run's identity, read from the store's provenance: the display names probes and reports print.

embedkit knows its backbone registry names and dataset adapters, so the names are worked out here and passed to
``probes`` as plain strings (``probes`` never parses a model or dataset name).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# Sources whose own name says nothing about the dataset: the rows' ``dataset`` column or the file name does.
_GENERIC_ADAPTERS = ("manifest", "image_cache", "cache", "", None)


def backbone_names(backbone: dict) -> tuple[str, str, str]:
    """(full name, initialization, architecture) of a backbone provenance block.

    The registry names read ``<initialization>-<architecture><patch>[-...]`` (``dinov3-vitb16``,
    ``dinov2-vits14``, ``dinov3-convnext-base``); the architecture loses its patch size, and every ConvNeXt is
    ``convnext``, as in the reference study's tables. Another name keeps its source as the initialization.

    >>> backbone_names({"name": "dinov3-vitb16"})
    ('dinov3-vitb16', 'dinov3', 'vitb')
    >>> backbone_names({"name": "dinov3-convnext-base"})[1:]
    ('dinov3', 'convnext')
    """
    name = str(backbone.get("name") or backbone.get("id") or "unknown")
    short = name.split("/")[-1].split(":")[-1]
    init, _, arch = short.partition("-")
    if not arch:
        init, arch = str(backbone.get("source") or "unknown"), short
    arch = arch.split("-pretrain")[0]
    if arch.startswith("convnext"):
        return name, init, "convnext"
    rest = arch[3:]
    if arch.startswith("vit") and rest.isalnum():
        return name, init, "vit" + rest.rstrip("0123456789")  # "b16" -> "b", "7b16" -> "7b"
    return name, init, arch


def dataset_names(spec: dict, dataset_column: Sequence[str] | None = None) -> tuple[str, str]:
    """(dataset, adapter) of a store's ``provenance['dataset']`` block.

    The adapter names the dataset (``nih``, ``chexpert`` ...). A plain manifest or an image cache names it by the
    rows' ``dataset`` column when every row agrees, else by the manifest's file name.

    >>> dataset_names({"adapter": "nih", "data": "nih:/data/nih"})
    ('nih', 'nih')
    >>> dataset_names({"adapter": "manifest", "data": "/x/phantoms/manifest.csv"}, ["phantom", "phantom"])
    ('phantom', 'manifest')
    """
    adapter = spec.get("adapter")
    if adapter not in _GENERIC_ADAPTERS:
        return str(adapter), str(adapter)
    values = {str(v) for v in dataset_column if str(v).strip()} if dataset_column is not None else set()
    if len(values) == 1:
        return values.pop(), str(adapter or "manifest")
    data = str(spec.get("data") or spec.get("source") or spec.get("spec") or "unknown")
    return Path(data).stem or "unknown", str(adapter or "manifest")


def run_identity(provenance: dict, dataset_column: Sequence[str] | None = None) -> dict:
    """What ``metrics.json['provenance']`` records: display names plus the facts that tell runs apart.

    Parameters
    ----------
    provenance : dict
        The store's provenance document.
    dataset_column : sequence (N,) of str, optional
        The store's per-row ``dataset`` metadata.

    Returns
    -------
    dict
        ``dataset``, ``adapter``, ``initialization``, ``backbone``, ``image_size``, ``backbone_name``,
        ``backbone_id``, ``backbone_sha256``, ``source``, ``preprocess``, ``store_dtype``, ``precision``,
        ``data``, ``embedkit_version``.
    """
    bb = provenance.get("backbone") or {}
    spec = provenance.get("dataset") or {}
    name, init, arch = backbone_names(bb)
    dataset, adapter = dataset_names(spec, dataset_column)
    return {"dataset": dataset, "adapter": adapter, "initialization": init, "backbone": arch,
            "image_size": provenance.get("resolution"), "backbone_name": name, "backbone_id": bb.get("id"),
            "backbone_sha256": bb.get("sha256"), "source": bb.get("source"),
            "preprocess": (provenance.get("preprocess") or {}).get("preset"), "store_dtype": provenance.get("dtype"),
            "precision": provenance.get("precision"), "data": spec.get("data") or spec.get("spec"),
            "embedkit_version": provenance.get("embedkit_version")}
