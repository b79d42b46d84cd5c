"""Consistency checks of a unit-ledger artefact and the summary behind ``embedkit info``.

Reads the artefact through its public properties only (``unit_arrays``, ``checksum_records``, ``group``, ...).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stores import _provenance as prov_mod
from stores._zarrio import chunk_path, file_checksum

if TYPE_CHECKING:
    from stores._ledger import UnitLedger
    from stores.embedding import EmbeddingStore


def damaged_units(st: UnitLedger, units, *, read: bool) -> dict[int, list[str]]:
    """Done units whose unit-array chunk files are missing, truncated or (``read``) altered: unit -> problems.

    Sizes are checked against the size recorded with the unit's checksum (or, for a store written before
    checksums, the raw layout's fixed chunk size); with ``read`` every file is read and its crc32c compared.
    """
    from stores._ledger import unit_coords

    records = st.checksum_records()
    out: dict[int, list[str]] = {}
    for u in (int(x) for x in units):
        for i, (name, arr) in enumerate(st.unit_arrays.items()):
            path = chunk_path(arr, st.path, unit_coords(arr, u))
            rec = records[u, i] if records is not None and records[u, i, 1] >= 0 else None
            expected = int(rec[1]) if rec is not None else (
                int(np.prod(arr.chunks)) * arr.dtype.itemsize if st.is_raw(name) else None)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                out.setdefault(u, []).append(f"unit {u}: {arr.path} chunk file is missing")
                continue
            if expected is not None and size != expected:
                what = "truncated" if size < expected else "too long"
                out.setdefault(u, []).append(f"unit {u}: {arr.path} chunk file is {what} "
                                             f"({size} bytes, expected {expected})")
            elif read and rec is not None:
                got = file_checksum(path)
                if got is None or got[0] != int(rec[0]):
                    out.setdefault(u, []).append(f"unit {u}: {arr.path} chunk file was altered "
                                                 "(crc32c differs from the one recorded when it was written)")
    return out


def verify_store(st: UnitLedger, *, deep: bool = False, repair: bool = False) -> dict:
    """See :meth:`stores._ledger.UnitLedger.verify`."""
    problems: list[str] = []
    root = st.group
    for name, (shape, dtype) in st.expected_arrays().items():
        if name not in root:
            problems.append(f"array '{name}' is missing")
        elif tuple(root[name].shape) != shape:
            problems.append(f"array '{name}' has shape {tuple(root[name].shape)}, expected {shape}")
        elif dtype is not None and str(root[name].dtype) != dtype:
            problems.append(f"{name} has dtype {root[name].dtype}, expected {dtype}")
    if problems:  # the row checks below would only repeat these
        return _result(st, problems, None, None, None)
    filled = st.filled
    failed = st.failure_reasons() != ""
    done = st.done_units()
    if (filled & failed).any():
        problems.append(f"{int((filled & failed).sum())} rows are both filled and recorded as failed")
    bad = damaged_units(st, np.flatnonzero(done), read=True)
    for u in np.flatnonzero(done):
        sl = st.unit_slice(int(u))
        missing = int((~(filled[sl] | failed[sl])).sum())
        if missing:
            bad.setdefault(int(u), []).append(
                f"unit {u} is in the ledger but {missing} of its rows are neither filled nor failed")
    problems.extend(p for u in sorted(bad) for p in bad[u])
    # Version-1 image caches hashed their provenance alone (creation time included): nothing to recompute.
    if (st.format_version >= 2 or st.KIND == "embeddings") and \
            prov_mod.fingerprint(st.provenance, st.ids) != st.fingerprint:
        problems.append("the stored fingerprint does not match provenance + ids (attrs were edited?)")
    if deep:
        problems.extend(st.deep_problems(filled))
    result = _result(st, problems, filled, failed, done, sorted(bad))
    if repair and bad:
        st.mark_pending(sorted(bad))
        result["marked_pending"] = sorted(bad)
    return result


def _result(st: UnitLedger, problems: list[str], filled, failed, done, bad_units=()) -> dict:
    return {"ok": not problems, "problems": problems, "damaged_units": [int(u) for u in bad_units],
            "format_version": st.format_version, "n_rows": st.n_rows,
            "n_filled": None if filled is None else int(filled.sum()),
            "n_failed": None if failed is None else int(failed.sum()),
            "n_units": st.n_units, "n_done_units": None if done is None else int(done.sum()),
            "complete": None if done is None else bool(done.all())}


def summarize(st: EmbeddingStore) -> dict:
    """See :meth:`EmbeddingStore.summary`."""
    size, files = st.size_on_disk()
    labels, split = st.labels, st.split
    per_split: dict[str, dict[str, int]] = {}
    if labels is not None:
        groups = {"all": np.ones(st.n_rows, bool)}
        if split is not None:
            groups.update({str(s) or "(none)": split == s for s in sorted(set(split.tolist()))})
        for g, m in groups.items():
            sub = labels[m]
            per_split[g] = {"rows": int(m.sum()),
                            **{name: int(np.nansum(sub[:, k] == 1)) for k, name in enumerate(st.label_names)}}
    done = st.done_units()
    layout = st.layout
    return {
        "path": str(st.path), "format_version": layout["format_version"], "rows": st.n_rows,
        "filled": int(st.filled.sum()), "failures": len(st.failures()),
        "units": {"done": int(done.sum()), "total": st.n_units, "rows_per_unit": st.unit_rows},
        "views": st.views, "dtype": st.dtype,
        "chunking": {"rows_per_chunk": layout["rows_per_chunk"], "rows_per_shard": layout["rows_per_shard"]},
        "labels": st.label_names, "positives": per_split, "metadata": st.metadata_names,
        "provenance": st.provenance, "fingerprint": st.fingerprint,
        "size_bytes": size, "files": files, "summary": layout.get("summary"),
    }
