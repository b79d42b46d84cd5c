"""``info``, ``models``, ``manifest`` and ``phantoms``: what a store, the backbone registry and a dataset hold.

Each function returns a frozen dataclass whose ``to_dict()`` is what the matching command prints with ``--json``.
Output-path safety (refusing a foreign ``--out``) is the command line's; these functions write where they are told.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["StoreInfo", "ModelInfo", "ManifestResult", "PhantomsResult", "store_info", "list_models",
           "build_manifest", "write_phantoms"]


@dataclass(frozen=True)
class StoreInfo:
    """What :func:`store_info` found.

    Attributes
    ----------
    path : Path
    summary : dict
        :meth:`stores.EmbeddingStore.summary` (rows, filled, failures, units, views, dtype, labels, positives per
        split, provenance, fingerprint, size) plus ``verify`` when asked: ``ok``, ``problems``, ``damaged_units``
        and ``marked_pending`` (or ``requeue_error``).
    """

    path: Path
    summary: dict

    @property
    def ok(self) -> bool:
        """False when a verification was asked for and found problems."""
        return bool(self.summary.get("verify", {}).get("ok", True))

    def to_dict(self) -> dict:
        """The document ``embedkit info --json`` prints."""
        return dict(self.summary)


def store_info(store: str | os.PathLike, *, verify: bool = False) -> StoreInfo:
    """Rows, completion, views, labels per split, provenance, fingerprint and size of a store.

    Parameters
    ----------
    store : str or PathLike
        An embedding store directory (``*.zarr``).
    verify : bool
        Also check shapes, ledger against filled rows and the fingerprint; damaged units are marked pending so that
        re-running the extract command rewrites exactly them (when the writer lock can be taken).

    Returns
    -------
    StoreInfo

    Raises
    ------
    StoreError
        Not a store, or one of an unknown format version.

    Examples
    --------
    >>> store_info("runs/nih.zarr").summary["filled"]  # doctest: +SKIP
    """
    from stores import EmbeddingStore

    with EmbeddingStore.open(store) as st:
        doc = st.summary()
        path = Path(st.path)
        if verify:
            doc["verify"] = st.verify()
    if verify and doc["verify"]["damaged_units"]:
        doc["verify"]["marked_pending"] = _requeue(path, doc["verify"])
    return StoreInfo(path=path, summary=doc)


def _requeue(path: Path, ver: dict) -> list[int]:
    """Mark the damaged units pending so that re-running extract rewrites exactly them (needs the writer lock)."""
    from stores import EmbeddingStore
    from stores.errors import StoreError

    try:
        with EmbeddingStore.open(path, "r+") as st:
            st.mark_pending(ver["damaged_units"])
    except (StoreError, OSError) as exc:  # a running writer, a read-only filesystem: report, do not fail
        ver["requeue_error"] = str(exc).splitlines()[0]
        return []
    return list(ver["damaged_units"])


@dataclass(frozen=True)
class ModelInfo:
    """One registered backbone and whether its weights are in the local Hugging Face cache."""

    name: str
    source: str
    id: str | None
    family: str
    embed_dim: int
    patch_size: int
    num_registers: int
    mean: list[float]
    std: list[float]
    license: str
    gated: bool
    default_views: list[str]
    weights_local: bool
    weights_path: str | None
    notes: str
    loader: str


def list_models() -> list[ModelInfo]:
    """The registered backbones; weight presence is looked up in the local hub cache, never on the network.

    Returns
    -------
    list of ModelInfo

    Examples
    --------
    >>> [m.name for m in list_models()][:1]  # doctest: +SKIP
    ['dinov3-vits16']
    """
    from embedkit.backbones import list_backbones
    from embedkit.backbones.resolve import cached_hub_files

    rows = []
    for spec in list_backbones():
        repo = spec.weights_repo
        files = cached_hub_files(repo, need_config=spec.source == "transformers") if repo else None
        rows.append(ModelInfo(
            name=spec.name, source=spec.source, id=spec.hub_id, family=spec.family, embed_dim=spec.embed_dim,
            patch_size=spec.patch_size, num_registers=spec.num_registers, mean=list(spec.mean), std=list(spec.std),
            license=spec.license, gated=spec.gated, default_views=list(spec.default_views),
            weights_local=files is not None, weights_path=str(files[-1].parent) if files else None, notes=spec.notes,
            loader=spec.loader))
    return rows


def models_document(models: Sequence[ModelInfo]) -> dict:
    """The document ``embedkit models --json`` prints: ``{"backbones": [...], "families": [...]}`` (the registered
    backbone families: name, library, arch, transformers model types, description)."""
    from embedkit.backbones import list_families

    families = [{"name": f.name, "library": f.library, "arch": f.arch, "model_types": list(f.model_types),
                 "description": f.description} for f in list_families()]
    return {"backbones": [asdict(m) for m in models], "families": families}


@dataclass(frozen=True)
class ManifestResult:
    """A written manifest CSV and its summary (rows, patients, missing files, prevalence per split, spec)."""

    out: Path
    summary: dict

    def to_dict(self) -> dict:
        """The document ``embedkit manifest --json`` prints."""
        return dict(self.summary)


def build_manifest(data: str | os.PathLike, out: str | os.PathLike, *, labels: str | Sequence[str] = "full",
                   uncertain: str = "zeros", blank: str | None = None, views: str = "frontal",
                   unknown_view: str = "drop", split: str | None = None, strict: bool = False,
                   allow_leak: bool = False, adapter_options: Mapping[str, str] | None = None) -> ManifestResult:
    """Write a manifest CSV from ``ADAPTER:ROOT`` or re-check a manifest CSV (images are never opened).

    Parameters
    ----------
    data : str or PathLike
        ``ADAPTER:ROOT`` (see :data:`embedkit.data.adapters.ADAPTERS`) or a manifest CSV.
    out : str or PathLike
        The CSV to write (atomically).
    labels, uncertain, blank, views, unknown_view, split, strict, allow_leak, adapter_options
        As :func:`embedkit.data.manifest.load_manifest`.

    Returns
    -------
    ManifestResult

    Raises
    ------
    DataError, LeakageError

    Examples
    --------
    >>> build_manifest("chexpert:/data/CheXpert-v1.0-small", "chexpert.csv").summary["rows"]  # doctest: +SKIP
    """
    from embedkit.data.manifest import load_manifest

    m = load_manifest(data, labels=labels, uncertain=uncertain, blank=blank, views=views, split=split,
                      strict=strict, allow_leak=allow_leak, adapter_options=dict(adapter_options or {}),
                      unknown_view=unknown_view)
    written = m.write_csv(out)
    return ManifestResult(out=written, summary={"out": str(written), **m.summary(), "spec": m.spec()})


@dataclass(frozen=True)
class PhantomsResult:
    """Written phantoms: the manifest path and the summary (rows, patients, prevalence per split)."""

    manifest: Path
    summary: dict

    def to_dict(self) -> dict:
        """The document ``embedkit phantoms --json`` prints."""
        return dict(self.summary)


def write_phantoms(out: str | os.PathLike, *, n: int = 200, size: int = 128, seed: int = 0,
                   formats: Sequence[str] = ("png8", "png16", "dicom"),
                   images_per_patient: int = 3) -> PhantomsResult:
    """Write deterministic radiograph-like phantoms with labelled findings and their manifest into ``out``.

    Parameters
    ----------
    out : str or PathLike
        Folder for ``images/`` and ``manifest.csv``.
    n, size, seed, formats, images_per_patient
        As :func:`embedkit.data.phantoms.make_phantoms`; the same arguments give the same bytes.

    Returns
    -------
    PhantomsResult

    Raises
    ------
    DataError
        A bad argument (named in the message).

    Examples
    --------
    >>> write_phantoms("phantoms", n=30, size=64).summary["rows"]  # doctest: +SKIP
    30
    """
    from embedkit.data.phantoms import make_phantoms, summarize

    manifest = make_phantoms(out, n=n, size=size, seed=seed, images_per_patient=images_per_patient,
                             formats=tuple(formats))
    return PhantomsResult(manifest=manifest, summary=summarize(manifest))
