"""Dataset adapters: turn a public CXR dataset's own files into manifest rows, without opening an image.

Every adapter is one registered :class:`AdapterSpec` below (name, module, description, aliases); ``--data`` parsing,
``embedkit manifest --help`` and the tests that build rows from every adapter's fixture read the registry. The
module implements :class:`Adapter`:

``build_rows(root: Path, *, blank: str, **options) -> pandas.DataFrame``
    One row per image (per image and reader for ``readers='per-reader'``). Columns: ``id`` (unique), ``path``
    (absolute), optional ``patient_id``, ``study_id``, ``split`` (the official one: train/val/test/''), ``view``
    (the dataset's own view string), ``frontal`` (bool), ``sex`` (M/F/O/''), ``age`` (years, float), ``dataset``,
    ``reader_id``; every other column is a label with float values 1 / 0 / -1 (uncertain) / NaN (unknown), blanks
    already read per ``blank`` ('zeros': not mentioned = negative; 'nan': not mentioned = unknown).
``BLANK`` (optional)
    The adapter's default reading of blank cells (or None where the dataset has no blanks).
``OPTIONS`` (optional; without it any keyword is passed through)
    ``{name: allowed values or None}``: adapter-specific options (e.g. VinDr's ``readers``).
``PAPER_LABELS`` (optional)
    ``{output label: (source label, ...)}``: the label subset of the reference study (Tayebi Arasteh et al.,
    arXiv 2510.07191, github.com/tayebiarasteh/vit-med); several sources are merged (1 if any is 1, else -1 if any
    is -1, else 0 if any is 0, else unknown).

Modules are imported lazily, so ``embedkit --help`` never pays for pandas.
"""
from __future__ import annotations

import difflib
import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from embedkit.errors import DataError


@runtime_checkable
class Adapter(Protocol):
    """What an adapter module provides (``BLANK``, ``OPTIONS``, ``PAPER_LABELS`` and ``LABELS`` are optional)."""

    def build_rows(self, root: Path, **options: Any) -> Any:
        """One manifest row per image under ``root`` (a pandas DataFrame; columns in the module docstring)."""


@dataclass(frozen=True)
class AdapterSpec:
    """One dataset adapter.

    Attributes
    ----------
    name : str
        The ``ADAPTER`` of ``ADAPTER:ROOT``.
    module : str
        The module implementing :class:`Adapter` (imported on first use).
    description : str
        One line for help texts.
    aliases : tuple of str
        Other spellings people type.
    """

    name: str
    module: str
    description: str
    aliases: tuple[str, ...] = ()

    def load(self) -> ModuleType:
        """The adapter module."""
        return importlib.import_module(self.module)


_REGISTRY: dict[str, AdapterSpec] = {}
#: adapter name -> module implementing it (imported on first use); filled by :func:`register_adapter`.
ADAPTERS: dict[str, str] = {}
#: Other spellings people type -> adapter name; filled by :func:`register_adapter`.
ALIASES: dict[str, str] = {}


def register_adapter(spec: AdapterSpec) -> AdapterSpec:
    """Add a dataset adapter to the registry (name and aliases must be new); returns ``spec``."""
    taken = [n for n in (spec.name, *spec.aliases) if n in ADAPTERS or n in ALIASES]
    if taken:
        raise DataError(f"Adapter name {taken[0]!r} is already registered.")
    _REGISTRY[spec.name] = spec
    ADAPTERS[spec.name] = spec.module
    ALIASES.update({alias: spec.name for alias in spec.aliases})
    return spec


def list_adapters() -> list[AdapterSpec]:
    """The registered adapters, in registration order."""
    return list(_REGISTRY.values())


def adapter_names() -> str:
    """``nih, chexpert, ...``: the registered names, for help texts."""
    return ", ".join(_REGISTRY)


register_adapter(AdapterSpec("nih", "embedkit.data.adapters.nih", "NIH ChestX-ray14: Data_Entry_2017*.csv + PNGs",
                             aliases=("cxr14", "chestx-ray14", "chestxray14")))
register_adapter(AdapterSpec("chexpert", "embedkit.data.adapters.chexpert",
                             "CheXpert (v1.0 or -small): train/valid/test CSVs"))
register_adapter(AdapterSpec("mimic", "embedkit.data.adapters.mimic",
                             "MIMIC-CXR-JPG: metadata, split and CheXpert/NegBio label CSVs",
                             aliases=("mimic-cxr", "mimic-cxr-jpg")))
register_adapter(AdapterSpec("padchest", "embedkit.data.adapters.padchest",
                             "PadChest: the labels CSV, every report term a label"))
register_adapter(AdapterSpec("vindr", "embedkit.data.adapters.vindr",
                             "VinDr-CXR: per-reader image labels (majority, any or per-reader)",
                             aliases=("vindr-cxr",)))
register_adapter(AdapterSpec("vindr-pcxr", "embedkit.data.adapters.vindr_pcxr",
                             "VinDr-PCXR (paediatric): image label CSVs", aliases=("pcxr", "pedi", "pedicxr")))
register_adapter(AdapterSpec("dicom", "embedkit.data.adapters.dicom_dir",
                             "any folder of DICOM files, header-only, identifiers pseudonymised, no labels"))

_DATA_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]+):(.*)$", re.S)
_QUERY_RE = re.compile(r"^[A-Za-z_][\w-]*=[^&=]*(?:&[A-Za-z_][\w-]*=[^&=]*)*$")


@dataclass(frozen=True)
class DataSource:
    """A parsed ``--data`` string: an adapter and its root, or a manifest CSV (``adapter is None``)."""

    data: str
    adapter: str | None
    root: Path
    options: dict[str, str] = field(default_factory=dict)


def canonical_name(name: str) -> str:
    """The registry key for ``name`` (aliases resolved); DataError with a close match when unknown."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in ADAPTERS:
        return key
    choices = sorted(set(ADAPTERS) | set(ALIASES))
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    hint = f"Did you mean '{ALIASES.get(close[0], close[0])}'? " if close else ""
    raise DataError(f"Unknown dataset adapter '{name}'. {hint}Known adapters: {', '.join(sorted(ADAPTERS))}; "
                    f"or pass a manifest CSV path.")


def get_adapter(name: str) -> ModuleType:
    """Import and return the adapter module for ``name`` (aliases accepted)."""
    return _REGISTRY[canonical_name(name)].load()


def parse_data(data: str) -> DataSource:
    """Split a ``--data`` string into adapter, root and options.

    ``ADAPTER:ROOT`` (optionally ``ADAPTER:ROOT?key=value&key=value`` for adapter options) or a manifest CSV path.
    An existing file always counts as a CSV; a one-letter prefix is a Windows drive, not an adapter.

    Examples
    --------
    >>> parse_data("vindr:/data/vindr?readers=any").options
    {'readers': 'any'}
    """
    text = str(data).strip()
    match = _DATA_RE.match(text)
    if match is None or os.path.isfile(text):
        return DataSource(data=text, adapter=None, root=Path(text).expanduser())
    name, rest = match.group(1), match.group(2)
    options: dict[str, str] = {}
    if "?" in rest:
        head, _, query = rest.rpartition("?")
        if _QUERY_RE.match(query):
            rest = head
            options = dict(part.split("=", 1) for part in query.split("&"))
    if not rest:
        raise DataError(f"'{text}' names adapter '{name}' but no ROOT; write it as {name}:/path/to/dataset.")
    return DataSource(data=text, adapter=canonical_name(name), root=Path(rest).expanduser(), options=options)
