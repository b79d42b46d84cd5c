"""Presets: `paper` against a hand-written reference of its five steps; `model` geometry and normalisation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from embedkit.data.presets import IMAGENET_MEAN, IMAGENET_STD, equalize_hist, make_preset
from embedkit.errors import EmbedkitError


def reference_equalize_hist(u8: np.ndarray) -> np.ndarray:
    """OpenCV's equalizeHist (imgproc/src/histogram.cpp) transcribed loop by loop, float32 arithmetic."""
    hist = [0] * 256
    for v in u8.ravel().tolist():
        hist[v] += 1
    i = 0
    while not hist[i]:
        i += 1
    total = u8.size
    if hist[i] == total:
        return np.full_like(u8, i)
    scale = np.float32(255.0) / np.float32(total - hist[i])
    lut = [0] * 256
    lut[i] = 0
    s = 0
    for j in range(i + 1, 256):
        s += hist[j]
        lut[j] = int(min(255, max(0, np.rint(np.float32(s) * scale))))  # saturate_cast<uchar>(float)
    return np.array(lut, dtype=np.uint8)[u8]


def reference_paper(img: np.ndarray, r: int) -> np.ndarray:
    """The reference study's five steps (arXiv 2510.07191, github.com/tayebiarasteh/vit-med), written independently of the
    library."""
    h, w = img.shape
    z = ndimage.zoom(img.astype(np.float64), (r / h, r / w), order=2)  # 1. stretch-resize
    z = (z - z.min()) / (z.max() - z.min())  # 2. min-max
    u8 = np.clip(np.round(z * 255), 0, 255).astype(np.uint8)  # 3. img_as_ubyte: rint(x * 255)
    eq = reference_equalize_hist(u8)  # 4. equalizeHist
    return np.stack([eq, eq, eq]).astype(np.float32) / 255.0  # 5. three channels, [0, 1]


def smooth_image(h: int = 37, w: int = 53, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy) + 0.05 * rng.standard_normal((h, w))
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.mark.parametrize("r", [16, 64])
def test_paper_equals_reference(r):
    img = smooth_image()
    pre = make_preset("paper", resolution=r)
    got = pre(img)
    assert got.dtype == torch.float32 and got.shape == (3, r, r)
    np.testing.assert_array_equal(got.numpy(), reference_paper(img, r))


def test_equalize_hist_matches_transcription_on_edge_cases():
    rng = np.random.default_rng(1)
    cases = [
        rng.integers(0, 256, (31, 17)).astype(np.uint8),
        rng.integers(200, 210, (8, 8)).astype(np.uint8),  # narrow range, first bin far from 0
        np.full((5, 5), 77, np.uint8),  # one level: stays as it is
        np.array([[0, 255]], np.uint8),
        (rng.beta(2, 8, (40, 40)) * 255).astype(np.uint8),
    ]
    for u8 in cases:
        np.testing.assert_array_equal(equalize_hist(u8), reference_equalize_hist(u8))
    assert (equalize_hist(np.full((5, 5), 77, np.uint8)) == 77).all()


def test_equalize_hist_matches_opencv_when_available():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(2)
    for _ in range(50):
        u8 = (rng.beta(2, 5, tuple(rng.integers(1, 60, 2))) * 255).astype(np.uint8)
        np.testing.assert_array_equal(equalize_hist(u8), cv2.equalizeHist(u8))


def test_paper_constant_image_is_black():
    out = make_preset("paper", resolution=8).to_uint8(np.full((5, 7), 0.3, np.float32))
    assert out.shape == (8, 8) and (out == 0).all()


def test_model_pad_preserves_aspect_and_centres():
    pre = make_preset("model", resolution=64)
    tall = pre.to_uint8(np.ones((100, 50), np.float32))  # resized to 64 x 32, 16 columns of padding each side
    assert (tall[:, 16:48] == 255).all() and (tall[:, :16] == 0).all() and (tall[:, 48:] == 0).all()
    wide = pre.to_uint8(np.ones((30, 120), np.float32))  # 16 x 64, 24 rows each side
    assert (wide[24:40] == 255).all() and (wide[:24] == 0).all() and (wide[40:] == 0).all()
    stretch = make_preset("model", resolution=64, resize="stretch").to_uint8(np.ones((30, 120), np.float32))
    assert (stretch == 255).all()


def test_model_resize_is_torch_bilinear_antialiased():
    img = smooth_image(90, 90)
    pre = make_preset("model", resolution=30)
    expected = torch.nn.functional.interpolate(torch.from_numpy(img)[None, None], size=(30, 30), mode="bilinear",
                                               align_corners=False, antialias=True)[0, 0].clamp(0, 1).numpy()
    np.testing.assert_array_equal(pre.to_uint8(img), np.rint(expected.astype(np.float64) * 255).astype(np.uint8))
    checker = (np.indices((90, 90)).sum(0) % 2).astype(np.float32)  # anti-aliasing averages it to grey
    assert abs(float(pre.to_uint8(checker).mean()) - 127.5) < 3
    bicubic = make_preset("model", resolution=30, interpolation="bicubic")
    assert bicubic.params()["interpolation"] == "bicubic"
    assert not np.array_equal(bicubic.to_uint8(img), pre.to_uint8(img))


def test_model_to_tensor_applies_mean_std_per_channel():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    pre = make_preset("model", resolution=4, mean=mean, std=std)
    u8 = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    t = pre.to_tensor(u8)
    assert t.shape == (3, 4, 4) and t.dtype == torch.float32
    for c in range(3):
        np.testing.assert_allclose(t[c].numpy(), (u8 / 255.0 - mean[c]) / std[c], rtol=1e-6, atol=1e-6)
    batch = pre.to_tensor(np.stack([u8, u8[::-1]]))
    assert batch.shape == (2, 3, 4, 4)
    torch.testing.assert_close(batch[0], t)
    default = make_preset("model", resolution=4)
    assert (default.mean, default.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_call_equals_two_steps_and_is_deterministic():
    img = smooth_image(50, 40)
    before = img.copy()
    for pre in (make_preset("model", resolution=32), make_preset("paper", resolution=32)):
        u1, u2 = pre.to_uint8(img), pre.to_uint8(img)
        assert u1.dtype == np.uint8 and u1.shape == (32, 32)
        np.testing.assert_array_equal(u1, u2)
        torch.testing.assert_close(pre(img), pre.to_tensor(u1), rtol=0, atol=0)
    np.testing.assert_array_equal(img, before)  # the input is never modified


def test_params_are_complete_and_json():
    model = make_preset("model", resolution=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    paper = make_preset("paper", resolution=224)
    for pre in (model, paper):
        params = json.loads(json.dumps(pre.params()))
        assert params["resolution"] == 224 and params["preset"] == pre.name
    assert model.params()["mean"] == [0.5, 0.5, 0.5] and paper.params()["mean"] is None
    assert model.params() != make_preset("model", resolution=224, mean=(0.5,) * 3, std=(0.5,) * 3,
                                         resize="stretch").params()
    assert model.params() == make_preset("model", resolution=224, mean=[0.5] * 3, std=[0.5] * 3).params()


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="fancy", resolution=8), "Unknown preprocessing preset"),
    (dict(name="model", resolution=0), "resolution"),
    (dict(name="model", resolution=8, resize="crop"), "resize"),
    (dict(name="model", resolution=8, interpolation="nearest"), "interpolation"),
    (dict(name="paper", resolution=8, mean=(0.5,) * 3), "no mean/std"),
    (dict(name="model", resolution=8, std=(0, 1, 1)), "std"),
])
def test_bad_arguments(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(EmbedkitError, match=match):
        make_preset(name, **kwargs)


def test_bad_inputs():
    pre = make_preset("model", resolution=8)
    with pytest.raises(EmbedkitError, match="grayscale"):
        pre.to_uint8(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(EmbedkitError, match="uint8"):
        pre.to_tensor(np.zeros((8, 8), np.float32))
