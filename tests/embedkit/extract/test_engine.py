"""Engine pieces in isolation: batch plans, rank discovery, the runner with a real sink, device normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embedkit.errors import ExtractionError
from embedkit.extract.dist import DistEnv, ProcessGroup, detect_env
from embedkit.extract.engine import ImageMapper, run_units
from embedkit.extract.reader import CacheBatches, FileBatches, make_loader, plan_batches
from stores.image_cache import ImageCache


def test_plan_batches_never_straddle_units():
    plan = plan_batches([(0, slice(0, 5)), (2, slice(10, 13))], 2)
    assert [(b.unit, b.start, b.stop) for b in plan] == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (2, 10, 12), (2, 12, 13)]


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, DistEnv()),
        ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, DistEnv(1, 4, 1, "torchrun")),
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}, DistEnv(5, 8, 1, "slurm")),
        # torchrun's variables win over Slurm's (torchrun launched inside an allocation).
        ({"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, DistEnv(0, 2, 0, "torchrun")),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, DistEnv(launcher="slurm")),
    ],
)
def test_detect_env(environ, expected):
    assert detect_env(environ) == expected


@pytest.mark.parametrize("environ", [{"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}])
def test_detect_env_rejects_nonsense(environ):
    with pytest.raises(ExtractionError):
        detect_env(environ)


def test_single_process_group_is_a_no_op():
    with ProcessGroup(DistEnv()) as group:
        group.barrier()
        assert group.all_ok(True) and not group.all_ok(False)


class _Preset:
    """A stand-in with the preset's to_uint8 contract, to test the runner without the data layer's choices."""

    def to_uint8(self, img):
        return (np.resize(img, (8, 8)) * 255).round().astype(np.uint8)

    def load(self, path):
        from embedkit.data import decode_image

        return self.to_uint8(decode_image(path))


def _pngs(tmp_path, n, bad=()):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / "imgs" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        if i in bad:
            p.write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 255, (10, 12), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("workers", [0, 2])
def test_runner_writes_units_records_failures_and_resumes(tmp_path, workers):
    from embedkit.data import decode_image

    paths = _pngs(tmp_path, 11, bad={4})
    ids = [f"i{k}" for k in range(11)]
    cache = ImageCache.create(tmp_path / "c.zarr", ids=ids, resolution=8, provenance={}, unit_rows=4)
    units = cache.pending_units()[:2]  # a first "run" does two units only
    plan = plan_batches([(u, cache.unit_slice(u)) for u in units], 3)
    stats = run_units(make_loader(FileBatches(plan, paths, _Preset(), 8), workers=workers, pin_memory=False),
                      ImageMapper(8), cache)
    assert (stats.rows_done, stats.rows_failed, stats.units_written) == (7, 1, 2)
    assert cache.done_units().tolist() == [True, True, False]
    reason = cache.failures()["i4"]
    assert reason.startswith("DecodeError") and str(tmp_path) not in reason  # no directory names in the store
    plan = plan_batches([(u, cache.unit_slice(u)) for u in cache.pending_units()], 3)
    stats = run_units(make_loader(FileBatches(plan, paths, _Preset(), 8), workers=workers, pin_memory=False),
                      ImageMapper(8), cache)
    assert stats.units_written == 1 and cache.done_units().all()
    expected = np.stack([_Preset().to_uint8(decode_image(p)) if i != 4 else np.zeros((8, 8), np.uint8)
                         for i, p in enumerate(paths)])
    np.testing.assert_array_equal(cache.read(slice(0, 11)), expected)
    # The cache reader serves the same images back, with the failure reason of the empty row.
    items = list(make_loader(CacheBatches(plan_batches([(0, slice(0, 11))], 5), cache.path), workers=workers,
                             pin_memory=False))
    np.testing.assert_array_equal(torch.cat([it["images"] for it in items]).numpy(), expected)
    assert [r for it in items for r in it["reasons"]][4] == reason


def test_runner_rejects_out_of_order_units(tmp_path):
    cache = ImageCache.create(tmp_path / "c.zarr", ids=list("abcd"), resolution=8, provenance={}, unit_rows=2)
    item = {"images": torch.zeros(1, 8, 8, dtype=torch.uint8), "ok": torch.ones(1, dtype=torch.bool), "reasons": [""]}
    bad = [dict(item, unit=0, start=0, stop=1), dict(item, unit=1, start=2, stop=3)]
    with pytest.raises(ExtractionError, match="incomplete"):
        run_units(bad, ImageMapper(8), cache)
    assert not cache.done_units().any()  # nothing half-done was written


@pytest.mark.parametrize("name", ["model", "paper"])
def test_device_normalisation_matches_preset(tiny, name):
    """The CUDA path normalises uint8 on the device; its formula must equal preset.to_tensor exactly."""
    from embedkit.backbones import load_backbone
    from embedkit.extract.mapper import EmbedMapper
    from embedkit.extract.pipeline import make_preset_for

    bb = load_backbone(tiny("dinov3-vit"), device="cpu", precision="fp32")
    preset = make_preset_for(name, resolution=32, mean=bb.spec.mean, std=bb.spec.std, resize="pad")
    u8 = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8))
    mapper = EmbedMapper(bb, preset, torch.device("cpu"))
    mapper._init_device_norm()
    ref = torch.as_tensor(np.asarray(preset.to_tensor(u8.numpy()), dtype=np.float32))
    torch.testing.assert_close(mapper._device_pixels(u8), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(mapper.pixels(u8), ref, atol=0, rtol=0)
