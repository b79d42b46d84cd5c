"""A 200k x 768 float16 store (~300 MiB of features) is iterated in batches without loading it."""
from __future__ import annotations

import tracemalloc

import numpy as np
import psutil

from stores import EmbeddingStore

N, D, BATCH = 200_000, 768, 8192


def test_iter_batches_memory_is_bounded_by_the_batch(tmp_path, provenance):
    path = tmp_path / "big.zarr"
    block = np.random.default_rng(0).standard_normal((4096, D), dtype=np.float32).astype(np.float16)
    with EmbeddingStore.create(path, ids=[f"r{i}" for i in range(N)], views={"cls": D}, provenance=provenance,
                               durable=False) as st:
        for u in st.pending_units():
            sl = st.unit_slice(u)
            x = block[: sl.stop - sl.start].copy()
            x[:, 0] = np.arange(sl.start, sl.stop) % 2048  # the row number, split into two float16-exact parts
            x[:, 1] = np.arange(sl.start, sl.stop) // 2048
            st.write_unit(u, {"cls": x})

    st = EmbeddingStore.open(path)
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    tracemalloc.start()
    rows = peak_rss = 0
    checksum = 0.0
    for idx, x in st.iter_batches("cls", batch_size=BATCH):
        assert x.shape == (len(idx), D) and x.dtype == np.float32
        np.testing.assert_array_equal(x[:, 0] + 2048 * x[:, 1], idx.astype(np.float32))
        rows += len(idx)
        checksum += float(x[:, 2].sum())
        peak_rss = max(peak_rss, proc.memory_info().rss - rss0)
    _, peak_traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert rows == N
    store_bytes = N * D * 2
    batch_bytes = BATCH * D * 4
    assert peak_traced < 4 * batch_bytes, (peak_traced, batch_bytes)  # ~2 batches live (f16 read + f32 copy)
    assert peak_rss < store_bytes / 3, (peak_rss, store_bytes)
    assert np.isfinite(checksum)
