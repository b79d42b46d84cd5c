"""Consistency checks and the summary behind ``embedkit info`` (kept apart to keep embedding.py readable)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stores import _provenance as prov_mod

if TYPE_CHECKING:
    from stores.embedding import EmbeddingStore


def verify_store(st: EmbeddingStore, *, deep: bool = False) -> dict:
    """See :meth:`EmbeddingStore.verify`."""
    problems: list[str] = []
    n, root = st.n_rows, st._root
    expected = {"ids": (n,), "filled": (n,), "failures": (n,), "ledger": (st.n_units,)}
    expected.update({f"features/{v}": (n, d) for v, d in st.views.items()})
    if st.label_names:
        expected["labels"] = (n, len(st.label_names))
    if st.layout.get("has_split"):
        expected["split"] = (n,)
    expected.update({f"meta/{m}": (n,) for m in st.metadata_names})
    for name, shape in expected.items():
        if name not in root:
            problems.append(f"array '{name}' is missing")
        elif tuple(root[name].shape) != shape:
            problems.append(f"array '{name}' has shape {tuple(root[name].shape)}, expected {shape}")
    for v, arr in st._features.items():
        if str(arr.dtype) != st.dtype:
            problems.append(f"features/{v} has dtype {arr.dtype}, expected {st.dtype}")
    if problems:  # the row checks below would only repeat these
        return _result(st, problems, None, None, None)
    filled = st.filled
    failed = np.asarray(st._failures[:], dtype=object) != ""
    done = st.done_units()
    if (filled & failed).any():
        problems.append(f"{int((filled & failed).sum())} rows are both filled and recorded as failed")
    for u in np.flatnonzero(done):
        sl = st.unit_slice(int(u))
        missing = int((~(filled[sl] | failed[sl])).sum())
        if missing:
            problems.append(f"unit {u} is in the ledger but {missing} of its rows are neither filled nor failed")
    if prov_mod.fingerprint(st._provenance, st.ids) != st.fingerprint:
        problems.append("the stored fingerprint does not match provenance + ids (attrs were edited?)")
    if deep:
        for v in st.views:
            bad = 0
            for idx, x in st.iter_batches(v, batch_size=st.unit_rows * 4, dtype=None):
                bad += int((~np.isfinite(x[filled[idx]])).any(axis=1).sum())
            if bad:
                problems.append(f"features/{v}: {bad} filled rows hold NaN/inf")
    return _result(st, problems, filled, failed, done)


def _result(st: EmbeddingStore, problems: list[str], filled, failed, done) -> dict:
    from stores._layout import FORMAT_VERSION

    return {"ok": not problems, "problems": problems, "format_version": FORMAT_VERSION, "n_rows": st.n_rows,
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
