"""decode_image / read_dicom_header: every format against an independent reference computed in the test."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, PngImagePlugin
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, RLELossless, generate_uid

from embedkit.data.decode import decode_image, missing_plugin_message, read_dicom_header
from embedkit.errors import DecodeError

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # offline; get_testdata_file may download


@pytest.fixture(autouse=True)
def _salt(monkeypatch):
    monkeypatch.setenv("EMBEDKIT_SALT", "test-salt")


def make_dicom(path: Path, stored: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
               window: tuple[float, float] | None = None, voi_lut: list[int] | None = None,
               slope_intercept: tuple[float, float] | None = None, signed: bool = False, **tags) -> Path:
    """A DX file with ``stored`` as its raw pixel values (DX For-Presentation SOP class, explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if slope_intercept is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope_intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new(0x00283006, "US", voi_lut)
        ds.VOILUTSequence = [item]
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(h: int = 8, w: int = 10, lo: int = 100, hi: int = 4000) -> np.ndarray:
    return np.linspace(lo, hi, h * w).round().astype(np.uint16).reshape(h, w)


def ref_window(x: np.ndarray, center: float, width: float, y_min: float, y_max: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), written out, normalised to [0, 1]."""
    c, w = center - 0.5, width - 1
    y = ((x - c) / w + 0.5) * (y_max - y_min) + y_min
    y = np.where(x <= c - w / 2, y_min, np.where(x > c + w / 2, y_max, y))
    return (y - y_min) / (y_max - y_min)


# ----------------------------------------------------------------------------------------------------------- PNG
def test_png8_exact(tmp_path):
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == (16, 16)
    np.testing.assert_array_equal(out, (arr / 255.0).astype(np.float32))


def test_png16_keeps_uint16_precision(tmp_path):
    arr = np.array([[1000, 1001], [0, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png")
    assert out[0, 1] - out[0, 0] == pytest.approx(1 / 65535, rel=1e-4)
    assert out[1, 0] == 0.0 and out[1, 1] == 1.0


def test_png16_with_sbit_unscaled_values_use_the_declared_depth(tmp_path):
    arr = np.array([[0, 2048], [4095, 1]], dtype=np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([12]))
    Image.fromarray(arr).save(tmp_path / "s.png", pnginfo=info)
    np.testing.assert_allclose(decode_image(tmp_path / "s.png"), arr / 4095.0, atol=1e-7)
    # Values beyond 12 bits mean the writer did scale (PNG-conformant): full 16-bit range then.
    arr[0, 0] = 65535
    Image.fromarray(arr).save(tmp_path / "t.png", pnginfo=info)
    np.testing.assert_allclose(decode_image(tmp_path / "t.png"), arr / 65535.0, atol=1e-7)


def test_rgb_and_rgba_become_luminance(tmp_path):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    expected = np.array([[0.299, 0.587, 0.114], [200 / 255] * 3], dtype=np.float32)
    np.testing.assert_allclose(decode_image(tmp_path / "rgb.png"), expected, atol=1e-6)
    rgba = np.dstack([rgb, np.full((2, 3), 7, np.uint8)])  # alpha is ignored
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_allclose(decode_image(tmp_path / "rgba.png"), expected, atol=1e-6)


def test_jpeg_gray_and_rgb_match_pillow(tmp_path):
    yy, xx = np.mgrid[0:32, 0:48]
    gray = (128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.jpg", quality=95)
    ref = np.asarray(Image.open(tmp_path / "g.jpg"), dtype=np.float64) / 255
    np.testing.assert_allclose(decode_image(tmp_path / "g.jpg"), ref, atol=1e-7)
    Image.fromarray(np.dstack([gray, gray, gray])).save(tmp_path / "c.jpg", quality=95)
    ref = np.asarray(Image.open(tmp_path / "c.jpg").convert("L"), dtype=np.float64) / 255
    np.testing.assert_allclose(decode_image(tmp_path / "c.jpg"), ref, atol=1 / 255 + 1e-6)  # Pillow rounds


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_and_garbage_files_raise_decode_error(tmp_path, suffix):
    arr = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match=f"cut{suffix}"):
        decode_image(tmp_path / f"cut{suffix}")
    (tmp_path / f"junk{suffix}").write_bytes(b"not an image at all" * 10)
    with pytest.raises(DecodeError, match="junk"):
        decode_image(tmp_path / f"junk{suffix}")


def test_missing_file_raises_decode_error(tmp_path):
    with pytest.raises(DecodeError, match="nope.png"):
        decode_image(tmp_path / "nope.png")


# --------------------------------------------------------------------------------------------------------- DICOM
def test_pydicom_cr_monochrome1_rescale_window_against_written_out_formula():
    path = PYDICOM_FILES / "dicomdirtests" / "77654033" / "CR1" / "6154"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array.astype(np.float64)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    y_min, y_max = intercept, (2**ds.BitsStored - 1) * slope + intercept
    unit = ref_window(raw * slope + intercept, float(ds.WindowCenter), float(ds.WindowWidth), y_min, y_max)
    np.testing.assert_allclose(decode_image(path), 1.0 - unit, atol=1e-6)


def test_monochrome1_is_inverted_so_air_is_dark(tmp_path):
    stored = ramp()
    m2 = decode_image(make_dicom(tmp_path / "m2.dcm", stored))
    m1 = decode_image(make_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-7)
    assert m2[0, 0] == 0.0 and m2[-1, -1] == 1.0  # no VOI: min-max
    assert m1[-1, -1] == 0.0  # the largest stored value of a MONOCHROME1 image is black


def test_window_clips_and_scales(tmp_path):
    stored = ramp()
    out = decode_image(make_dicom(tmp_path / "w.dcm", stored, window=(2000, 1000)))
    expected = ref_window(stored.astype(np.float64), 2000, 1000, 0, 4095)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert (out[stored <= 1500] == 0).all() and (out[stored > 2500] == 1).all()


def test_rescale_slope_intercept_then_window(tmp_path):
    stored = ramp()
    out = decode_image(make_dicom(tmp_path / "r.dcm", stored, slope_intercept=(2.0, -1000.0), window=(3000, 4000)))
    y_min, y_max = -1000.0, 4095 * 2.0 - 1000
    np.testing.assert_allclose(out, ref_window(stored * 2.0 - 1000, 3000, 4000, y_min, y_max), atol=1e-6)
    # without a window the rescale is linear, so min-max removes it
    plain = decode_image(make_dicom(tmp_path / "p.dcm", stored, slope_intercept=(2.0, -1000.0)))
    np.testing.assert_allclose(plain, (stored - 100.0) / 3900.0, atol=1e-6)


def test_voi_lut_sequence_is_preferred_over_window(tmp_path):
    lut = [int(round(65535 * np.sqrt(i / 4095))) for i in range(4096)]  # a non-linear LUT, 16-bit output
    stored = ramp()
    out = decode_image(make_dicom(tmp_path / "v.dcm", stored, voi_lut=lut, window=(2000, 100)))
    expected = np.asarray(lut, dtype=np.float64)[stored] / 65535
    np.testing.assert_allclose(out, expected, atol=1e-6)
    inv = decode_image(make_dicom(tmp_path / "v1.dcm", stored, voi_lut=lut, photometric="MONOCHROME1"))
    np.testing.assert_allclose(inv, 1.0 - expected, atol=1e-6)


def test_bits_stored_masks_unused_high_bits(tmp_path):
    stored = ramp()
    clean = decode_image(make_dicom(tmp_path / "c.dcm", stored, window=(2000, 3000)))
    dirty = decode_image(make_dicom(tmp_path / "d.dcm", stored | 0xF000, window=(2000, 3000)))
    np.testing.assert_array_equal(clean, dirty)


def test_16_bit_dicom_keeps_single_steps(tmp_path):
    stored = np.array([[0, 1], [32768, 65535]], dtype=np.uint16)
    out = decode_image(make_dicom(tmp_path / "b.dcm", stored, bits_stored=16))
    assert out[0, 1] == pytest.approx(1 / 65535, rel=1e-4)
    assert out[1, 1] == 1.0


def test_signed_pixels(tmp_path):
    stored = np.array([[-1000, 0], [500, 1000]], dtype=np.int16)
    out = decode_image(make_dicom(tmp_path / "s.dcm", stored, bits_stored=16, signed=True))
    np.testing.assert_allclose(out, (stored + 1000.0) / 2000.0, atol=1e-7)


def test_rle_compressed_equals_uncompressed(tmp_path):
    stored = ramp(16, 12)
    plain_path = make_dicom(tmp_path / "u.dcm", stored, photometric="MONOCHROME1", window=(2000, 3000))
    ds = pydicom.dcmread(plain_path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(decode_image(tmp_path / "rle.dcm"), decode_image(plain_path))


def test_jpeg_lossless_via_pylibjpeg_equals_rle():
    pytest.importorskip("libjpeg", reason="pylibjpeg-libjpeg not installed")
    jpeg_ll = PYDICOM_FILES / "SC_rgb_jpeg_gdcm.dcm"
    assert pydicom.dcmread(jpeg_ll, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    out = decode_image(jpeg_ll)
    np.testing.assert_array_equal(out, decode_image(PYDICOM_FILES / "SC_rgb_rle.dcm"))
    rgb = pydicom.dcmread(PYDICOM_FILES / "SC_rgb_rle.dcm").pixel_array.astype(np.float64) / 255
    np.testing.assert_allclose(out, rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-6)


def test_missing_plugin_error_names_the_plugin(monkeypatch):
    from pydicom.pixels import get_decoder

    # Third-party state only: pretend no JPEG-lossless plugin is installed.
    monkeypatch.setattr(get_decoder(JPEGLosslessSV1), "_available", {})
    with pytest.raises(DecodeError) as info:
        decode_image(PYDICOM_FILES / "SC_rgb_jpeg_gdcm.dcm")
    msg = str(info.value)
    assert "SC_rgb_jpeg_gdcm.dcm" in msg and "pylibjpeg-libjpeg" in msg and "pip install 'embedkit[dicom]'" in msg
    assert "JPEG Lossless" in msg and "\n" not in msg


def test_missing_plugin_message_text():
    assert missing_plugin_message("1.2.840.10008.1.2.4.80") == (
        "transfer syntax 'JPEG-LS Lossless Image Compression' (1.2.840.10008.1.2.4.80) needs pylibjpeg-libjpeg "
        "(or pyjpegls / python-gdcm): pip install 'embedkit[dicom]'"
    )


def test_corrupt_dicom_raises_without_identifying_values(tmp_path):
    path = make_dicom(tmp_path / "x.dcm", ramp(), PatientName="SECRET^PERSON", PatientID="SECRET-ID-42")
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-40])
    with pytest.raises(DecodeError) as info:
        decode_image(tmp_path / "cut.dcm")
    assert "cut.dcm" in str(info.value) and "SECRET" not in str(info.value)
    (tmp_path / "head.dcm").write_bytes(data[:200])
    with pytest.raises(DecodeError, match="head.dcm"):
        decode_image(tmp_path / "head.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 50)
    with pytest.raises(DecodeError, match="junk.dcm"):
        decode_image(tmp_path / "junk.dcm")


def test_read_dicom_header_returns_only_safe_fields(tmp_path):
    secrets = dict(PatientName="SECRET^PERSON", PatientID="SECRET-ID-42", PatientBirthDate="19600315",
                   StudyDate="20200314", StudyInstanceUID="1.2.3.999", InstitutionName="SECRET HOSPITAL",
                   PatientSex="F", ViewPosition="PA")
    path = make_dicom(tmp_path / "h.dcm", ramp(), **secrets)
    header = read_dicom_header(path)
    assert header["view"] == "PA" and header["sex"] == "F"
    assert header["age"] == 59.0  # birthday not reached on the study date
    assert (header["rows"], header["cols"], header["bits_stored"]) == (8, 10, 12)
    text = repr(header)
    for value in ("SECRET", "19600315", "20200314", "1.2.3.999", str(pydicom.dcmread(path).SOPInstanceUID)):
        assert value not in text
    assert len(header["patient_id"]) == 16 and header["patient_id"] != header["study_id"]
    assert read_dicom_header(path, salt="other")["patient_id"] != header["patient_id"]
    assert read_dicom_header(path)["patient_id"] == header["patient_id"]


def test_read_dicom_header_patient_age_wins(tmp_path):
    path = make_dicom(tmp_path / "a.dcm", ramp(), PatientAge="006M", PatientBirthDate="19000101",
                      StudyDate="20200101")
    assert read_dicom_header(path)["age"] == 0.5
