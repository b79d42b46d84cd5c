"""The `paper` preset is the reference study's preprocessing, pixel for pixel.

The reference (``normalizer_resizer`` of github.com/tayebiarasteh/vit-med, the code of arXiv 2510.07191) is re-implemented here literally with
OpenCV, scipy and pydicom — the same calls in the same order — and compared with ``Preset.load`` (the path the
extraction reader uses) on phantom PNG8, PNG16 and DICOM (MONOCHROME1 and MONOCHROME2) files, square and
non-square, at a downscaling and an upscaling resolution. Every pixel must be identical.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import zoom

from embedkit.data.decode import decode_raw
from embedkit.data.phantoms import make_phantoms
from embedkit.data.presets import make_preset

cv2 = pytest.importorskip("cv2")
pydicom = pytest.importorskip("pydicom")

RESOLUTIONS = (64, 224)


def _img_as_ubyte(image: np.ndarray) -> np.ndarray:
    """``skimage.util.img_as_ubyte`` (scikit-image when installed, else its float->uint8 branch transcribed)."""
    try:
        from skimage.util import img_as_ubyte
    except ImportError:
        if np.min(image) < -1.0 or np.max(image) > 1.0:
            raise ValueError("Images of type float must be between -1 and 1.") from None
        image_out = np.multiply(image, 255, dtype=np.float64)
        np.rint(image_out, out=image_out)
        np.clip(image_out, 0, 255, out=image_out)
        return image_out.astype(np.uint8)
    return img_as_ubyte(image)


def reference(path: Path, size: int) -> np.ndarray:
    """chestx ``normalizer_resizer`` with HEIGHT = WIDTH = size, statement by statement."""
    dicom = path.suffix == ".dcm"
    if dicom:
        ref_ds = pydicom.dcmread(path)
        img = ref_ds.pixel_array
    else:
        image = cv2.imread(str(path))
        img = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    resize_ratio = np.divide((size, size), img.shape)
    img = zoom(img, resize_ratio, order=2)
    min_ = np.min(img)
    max_ = np.max(img)
    scale = max_ - min_
    img = (img - min_) / scale
    img = _img_as_ubyte(img)
    if dicom and ref_ds[0x0028, 0x0004].value == "MONOCHROME1":
        img = np.invert(img)
    return cv2.equalizeHist(img)


def _crop_png(src: Path, dst: Path, rows: int, cols: int) -> Path:
    with Image.open(src) as im:
        arr = np.asarray(im)
    Image.fromarray(np.ascontiguousarray(arr[:rows, :cols])).save(dst)
    return dst


def _crop_dicom(src: Path, dst: Path, rows: int, cols: int) -> Path:
    ds = pydicom.dcmread(src)
    arr = ds.pixel_array[:rows, :cols]
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds.save_as(dst)
    return dst


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory) -> dict[str, list[Path]]:
    """Phantom files by kind: png8, png16, dicom-mono1, dicom-mono2 (square 128 px and non-square 128x97 / 83x128)."""
    root = tmp_path_factory.mktemp("paper-exact")
    manifest = make_phantoms(root, n=12, size=128, seed=3)
    files = sorted((root / "images").iterdir())
    out: dict[str, list[Path]] = {"png8": [], "png16": [], "dicom-mono1": [], "dicom-mono2": []}
    for f in files:
        if f.suffix == ".dcm":
            mono = pydicom.dcmread(f, stop_before_pixels=True).PhotometricInterpretation
            out["dicom-mono1" if mono == "MONOCHROME1" else "dicom-mono2"].append(f)
        else:
            out["png16" if f.stem.endswith("_16") else "png8"].append(f)
    assert manifest.exists() and all(len(v) >= 2 for v in out.values()), {k: len(v) for k, v in out.items()}
    crops = root / "crops"
    crops.mkdir()
    for kind in list(out):
        first = out[kind][0]
        crop = _crop_dicom if kind.startswith("dicom") else _crop_png
        out[kind].append(crop(first, crops / f"{first.stem}_wide{first.suffix}", 128, 97))
        out[kind].append(crop(out[kind][1], crops / f"{out[kind][1].stem}_tall{first.suffix}", 83, 128))
    return out


@pytest.mark.parametrize("size", RESOLUTIONS)
@pytest.mark.parametrize("kind", ["png8", "png16", "dicom-mono1", "dicom-mono2"])
def test_paper_preset_is_bit_exact(phantom_files, kind, size):
    pre = make_preset("paper", resolution=size)
    shapes = set()
    for path in phantom_files[kind]:
        want = reference(path, size)
        got = pre.load(path)
        assert got.dtype == np.uint8 and got.shape == (size, size)
        identical = float(np.mean(got == want))
        assert identical == 1.0, f"{path.name} @{size}: {identical:.4%} identical pixels"
        shapes.add(decode_raw(path).pixels.shape)
    assert len(shapes) >= 2  # square and non-square sources


def test_sixteen_bit_png_is_read_as_opencv_does(phantom_files):
    path = phantom_files["png16"][0]
    raw = decode_raw(path)
    with Image.open(path) as im:
        full = np.asarray(im).astype(np.uint16)
    np.testing.assert_array_equal(raw.pixels, cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY))
    np.testing.assert_array_equal(raw.pixels, (full >> 8).astype(np.uint8))  # the high byte, not v*255/65535
    assert raw.reader == "opencv-imread-color" and raw.photometric == ""


def test_dicom_is_the_raw_pixel_array(phantom_files):
    for kind in ("dicom-mono1", "dicom-mono2"):
        path = phantom_files[kind][0]
        raw = decode_raw(path)
        ds = pydicom.dcmread(path)
        assert raw.photometric == ds.PhotometricInterpretation and raw.reader == "pydicom-pixel_array"
        assert raw.pixels.dtype == ds.pixel_array.dtype  # no rescale slope/intercept, no VOI
        np.testing.assert_array_equal(raw.pixels, ds.pixel_array)


def test_colour_and_jpeg_sources_match_opencv(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:61, 0:77]
    rgb = np.stack([(xx * 3) % 256, (yy * 4 + xx) % 256, (128 + 60 * np.sin(xx / 5.0))], -1)
    rgb = np.clip(rgb + rng.integers(-30, 30, rgb.shape), 0, 255).astype(np.uint8)
    paths = [tmp_path / "rgb.png", tmp_path / "rgba.png", tmp_path / "gray.jpg", tmp_path / "rgb.jpg"]
    Image.fromarray(rgb).save(paths[0])
    Image.fromarray(np.dstack([rgb, rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)])).save(paths[1])
    Image.fromarray(rgb[..., 1]).save(paths[2], quality=90)
    Image.fromarray(rgb).save(paths[3], quality=85)
    pre = make_preset("paper", resolution=48)
    for path in paths:
        want = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)
        np.testing.assert_array_equal(decode_raw(path).pixels, want, err_msg=path.name)
        np.testing.assert_array_equal(pre.load(path), reference(path, 48), err_msg=path.name)


def test_extraction_reader_uses_the_raw_decoder(phantom_files):
    from embedkit.extract.reader import BatchSpec, FileBatches

    paths = [str(p) for kind in ("png16", "dicom-mono1") for p in phantom_files[kind][:2]]
    pre = make_preset("paper", resolution=64)
    item = FileBatches([BatchSpec(0, 0, len(paths))], paths, pre, 64)[0]
    assert bool(item["ok"].all())
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(np.asarray(item["images"][i]), reference(Path(path), 64))


def test_paper_params_record_the_reference_steps():
    params = make_preset("paper", resolution=512).params()
    assert "integer image" in params["interpolation"]
    assert "v>>8" in params["reader"]["raster"] and "no VOI" in params["reader"]["dicom"]
    assert "MONOCHROME1" in params["intensity"] and params["mean"] is None
