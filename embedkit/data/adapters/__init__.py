"""Dataset adapters: turn a public CXR dataset's own files into manifest rows, without opening an image.

An adapter is a module with

``build_rows(root: Path, *, blank: str, **options) -> pandas.DataFrame``
    One row per image (per image and reader for ``readers='per-reader'``). Columns: ``id`` (unique), ``path``
    (absolute), optional ``patient_id``, ``study_id``, ``split`` (the official one: train/val/test/''), ``view``
    (the dataset's own view string), ``frontal`` (bool), ``sex`` (M/F/O/''), ``age`` (years, float), ``dataset``,
    ``reader_id``; every other column is a label with float values 1 / 0 / -1 (uncertain) / NaN (unknown), blanks
    already read per ``blank`` ('zeros': not mentioned = negative; 'nan': not mentioned = unknown).
``BLANK``
    The adapter's default reading of blank cells (or None where the dataset has no blanks).
``OPTIONS``
    ``{name: allowed values or None}``: adapter-specific options (e.g. VinDr's ``readers``).
``PAPER_LABELS``
    ``{output label: (source label, ...)}``: the reference study's label subset (paper-protocol.md §1); several
    sources are merged (1 if any is 1, else -1 if any is -1, else 0 if any is 0, else unknown).

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

from embedkit.errors import DataError

#: adapter name -> module implementing it (imported on first use).
ADAPTERS: dict[str, str] = {
    "nih": "embedkit.data.adapters.nih",
    "chexpert": "embedkit.data.adapters.chexpert",
    "mimic": "embedkit.data.adapters.mimic",
    "padchest": "embedkit.data.adapters.padchest",
    "vindr": "embedkit.data.adapters.vindr",
    "vindr-pcxr": "embedkit.data.adapters.vindr_pcxr",
    "dicom": "embedkit.data.adapters.dicom_dir",
}

#: Other spellings people type.
ALIASES: dict[str, str] = {
    "cxr14": "nih", "chestx-ray14": "nih", "chestxray14": "nih", "mimic-cxr": "mimic", "mimic-cxr-jpg": "mimic",
    "vindr-cxr": "vindr", "pcxr": "vindr-pcxr", "pedi": "vindr-pcxr", "pedicxr": "vindr-pcxr",
}

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
    return importlib.import_module(ADAPTERS[canonical_name(name)])


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
