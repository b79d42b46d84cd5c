"""Decode one radiograph file (PNG 8/16-bit, JPEG, DICOM, anything Pillow reads) to float32 grayscale in [0, 1].

Conventions, whatever the format: shape (H, W), dtype float32, 0 = black = air, 1 = white = dense.

- **PNG**: 8-bit → v/255; 16-bit → v/65535 (full uint16 precision kept). A 16-bit grayscale PNG whose ``sBIT``
  chunk declares *s* < 16 significant bits and whose values all fit in *s* bits was written unscaled (a common
  non-conformance: the PNG spec says such samples are scaled up); it is read as v/(2^s − 1).
- **JPEG / other Pillow formats**: EXIF orientation applied (as ``cv2.imread`` does), then as above.
- **Colour** (RGB, RGBA, palette, YBR DICOM): alpha dropped, luminance Y = 0.299 R + 0.587 G + 0.114 B
  (ITU-R BT.601, the weights of Pillow's and OpenCV's gray conversion), computed in float.
- **DICOM** (pydicom; BitsStored is honoured by pydicom's decoders, higher bits are masked):
  1. modality LUT or RescaleSlope/Intercept (``apply_modality_lut``);
  2. VOI: the first VOI LUT Sequence item if present, else the first WindowCenter/WindowWidth
     (``apply_voi_lut(prefer_lut=True)``, LINEAR / LINEAR_EXACT / SIGMOID as the file says);
  3. to [0, 1]: a VOI LUT by its own output range (min..max of LUTData); a window by its output range
     (pydicom's y_min..y_max); with no VOI, per-image min–max of the modality values;
  4. MONOCHROME1 (and MONOCHROME2 with PresentationLUTShape INVERSE) inverted, x → 1 − x, so air is dark.
  Multi-frame files: the first frame. Compressed transfer syntaxes go through pydicom's pixel plugins; when none
  is installed the error names the plugin to install.

``decode_raw`` is the other path, for the ``paper`` preset only: the file's own integer samples as the reference
study's script read them (``cv2.imread`` semantics for PNG/JPEG, raw ``pixel_array`` for DICOM), no scaling.

Failures raise ``embedkit.errors.DecodeError`` with the file name and the reason, never a DICOM identifying value.
"""
from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.errors import DecodeError

logger = logging.getLogger(__name__)

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
_INSTALL = "pip install 'embedkit[dicom]'"

# Transfer syntax UID -> (what to install, how). Only those pydicom cannot decode with numpy + Pillow alone.
_PLUGINS: dict[str, str] = {
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg (or python-gdcm)",  # JPEG Lossless P14
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg (or python-gdcm)",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg (or pyjpegls / python-gdcm)",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg (or pyjpegls / python-gdcm)",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg or Pillow",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg or Pillow",  # JPEG extended
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg or Pillow",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg or Pillow",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",  # HTJ2K
}


def _sniff(p: Path) -> tuple[bool, bool]:
    """(is DICOM, is PNG) from the file's first bytes: DICOM = the DICM preamble, or a DICOM suffix on a file that is
    not a PNG. DecodeError if the file cannot be read."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise DecodeError(f"Cannot read image '{p}': {exc.strerror or exc}.") from None
    png = head.startswith(_PNG_MAGIC)
    return head[128:132] == b"DICM" or (p.suffix.lower() in _DICOM_SUFFIXES and not png), png


def decode_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one image file as float32 grayscale in [0, 1] (0 = air).

    Parameters
    ----------
    path : str or path-like
        A PNG, JPEG, DICOM or other Pillow-readable file. The format is sniffed from the bytes
        (DICOM also by suffix, for files without the 128-byte preamble).

    Returns
    -------
    numpy.ndarray
        float32, shape (H, W), values in [0, 1].

    Raises
    ------
    DecodeError
        Missing, truncated, corrupt or unsupported file, or a compressed DICOM whose decoder is not installed.

    Examples
    --------
    >>> img = decode_image("chest.png")  # doctest: +SKIP
    >>> img.dtype, img.ndim
    (dtype('float32'), 2)
    """
    p = Path(path)
    dicom, png = _sniff(p)
    if dicom:
        out = _decode_dicom(p)
    else:
        out = _decode_pillow(p, is_png=png)
    out = np.clip(out, 0.0, 1.0, out=out)
    if not np.isfinite(out).all():
        raise DecodeError(f"Cannot decode '{p}': non-finite pixel values.")
    return np.ascontiguousarray(out, dtype=np.float32)


@dataclass(frozen=True)
class RawImage:
    """An image exactly as the reference pipeline held it before resizing (see :func:`decode_raw`).

    Attributes
    ----------
    pixels : numpy.ndarray
        Shape (H, W), the source's own integer samples: uint8 for PNG/JPEG (what ``cv2.imread`` + ``BGR2GRAY``
        give), ``pixel_array``'s dtype for DICOM (uint16, int16, uint8 ...), unscaled.
    photometric : str
        The DICOM PhotometricInterpretation (``"MONOCHROME1"`` is inverted later, after the 8-bit conversion, as
        the reference did); ``""`` for other formats.
    reader : str
        ``"opencv-imread-color"`` or ``"pydicom-pixel_array"``.
    """

    pixels: np.ndarray
    photometric: str = ""
    reader: str = "array"


# OpenCV 5's 8-bit COLOR_BGR2GRAY: BT.601 weights in 15-bit fixed point, rounded (they sum to 2**15, so a grey
# pixel stays exactly itself). Older OpenCV 4.x builds used 14-bit weights in their scalar tail loops.
_CV_GRAY15 = (9798, 19235, 3735)  # R, G, B


def decode_raw(path: str | os.PathLike[str]) -> RawImage:
    """Read one image file the way the reference study's preprocessing script read it (``paper`` preset).

    - **PNG / JPEG / other raster formats**: as ``cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2GRAY)`` — the
      reference's flags, i.e. ``IMREAD_COLOR`` without ``IMREAD_ANYDEPTH``. OpenCV therefore returns **8 bits**
      for a 16-bit PNG: libpng's ``png_set_strip_16`` keeps the high byte, ``v >> 8`` (not ``v * 255 / 65535``;
      the low byte is lost, and an ``sBIT`` chunk is ignored). EXIF orientation of JPEGs is applied, as
      ``imread`` does. A grey image stays exactly itself through BGR and back; colour goes through OpenCV's
      fixed-point BT.601 luma. Implemented with Pillow + numpy (no OpenCV needed at run time); the tests check
      every case against ``cv2`` pixel for pixel.
    - **DICOM**: pydicom's raw ``pixel_array`` (first frame) — no modality LUT (slope/intercept), no VOI
      window/LUT; ``PhotometricInterpretation`` is returned so that MONOCHROME1 can be inverted where the
      reference did it.

    Parameters
    ----------
    path : str or path-like
        The image file (format sniffed from the bytes, DICOM also by suffix).

    Returns
    -------
    RawImage
        ``pixels`` of shape (H, W) in the file's integer type.

    Raises
    ------
    DecodeError
        Unreadable file, or a colour DICOM (the reference pipeline handled grayscale DICOMs only).

    Examples
    --------
    >>> raw = decode_raw("chest_16bit.png")  # doctest: +SKIP
    >>> raw.pixels.dtype, raw.reader
    (dtype('uint8'), 'opencv-imread-color')
    """
    p = Path(path)
    dicom, png = _sniff(p)
    if dicom:
        ds, first_frame = _open_dicom(p)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise DecodeError(f"Cannot decode '{p}' for the paper preset: PhotometricInterpretation "
                              f"{photometric!r}; the reference pipeline reads grayscale DICOMs only.")
        try:
            arr = np.asarray(first_frame())
        except Exception as exc:  # noqa: BLE001 - decoders raise ValueError/RuntimeError/... for bad pixel data
            raise DecodeError(f"Cannot decode '{p}': {_redact(_reason(exc), ds)}.") from None
        return RawImage(np.ascontiguousarray(arr), photometric, "pydicom-pixel_array")
    return RawImage(_opencv_gray8(p), "", "opencv-imread-color")


def _opencv_gray8(p: Path) -> np.ndarray:
    """(H, W) uint8 equal to ``cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2GRAY)``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.load()
            if im.format == "JPEG":
                im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                arr = np.asarray(im).astype(np.int64)
                if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
                    raise DecodeError(f"Cannot decode '{p}' for the paper preset: 32-bit integer samples.")
                return (arr >> 8).astype(np.uint8)  # libpng png_set_strip_16: the high byte
            if mode in ("L", "LA"):
                return np.ascontiguousarray(np.asarray(im.getchannel(0)))
            if mode == "1":
                return np.asarray(im, dtype=np.uint8) * np.uint8(255)
            rgb = np.asarray(im if mode == "RGB" else im.convert("RGB")).astype(np.int64)
    except UnidentifiedImageError:
        raise DecodeError(f"Cannot decode '{p}': not a recognised image format.") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"Cannot decode '{p}': {_reason(exc)}.") from None
    wr, wg, wb = _CV_GRAY15
    gray = (rgb[..., 0] * wr + rgb[..., 1] * wg + rgb[..., 2] * wb + (1 << 14)) >> 15
    return gray.astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# Pillow formats
# --------------------------------------------------------------------------------------------------------------
def _decode_pillow(p: Path, *, is_png: bool) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.load()
            if im.format == "JPEG":
                im = ImageOps.exif_transpose(im)
            arr, scale = _pillow_to_array(im)
    except UnidentifiedImageError:
        raise DecodeError(f"Cannot decode '{p}': not a recognised image format.") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise DecodeError(f"Cannot decode '{p}': {_reason(exc)}.") from None
    if arr.ndim == 3:
        arr = _luminance(arr[..., :3].astype(np.float64))
    if is_png and scale == 65535.0:
        bits = _png_sbit(p)
        if bits is not None and bits < 16 and float(arr.max(initial=0)) < 2**bits:
            scale = float(2**bits - 1)
    return (arr.astype(np.float64) / scale).astype(np.float32)


def _pillow_to_array(im: Any) -> tuple[np.ndarray, float]:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16), 65535.0
    if mode == "I":
        arr = np.asarray(im)
        return arr, 65535.0 if arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0 else float(2**32 - 1)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr), 1.0
    if mode == "1":
        return np.asarray(im, dtype=np.uint8), 1.0
    if mode == "L":
        return np.asarray(im), 255.0
    if mode == "LA":
        return np.asarray(im)[..., 0], 255.0
    if mode in ("RGB", "RGBA"):
        return np.asarray(im), 255.0
    return np.asarray(im.convert("RGB")), 255.0


def _luminance(rgb: np.ndarray) -> np.ndarray:
    r, g, b = LUMA_WEIGHTS
    return rgb[..., 0] * r + rgb[..., 1] * g + rgb[..., 2] * b


def _png_sbit(p: Path) -> int | None:
    """The gray ``sBIT`` of a PNG (significant bits), read from the chunks before IDAT; None when absent."""
    with open(p, "rb") as fh:
        fh.seek(8)
        while True:
            header = fh.read(8)
            if len(header) < 8:
                return None
            length, kind = struct.unpack(">I4s", header)
            if kind in (b"IDAT", b"IEND"):
                return None
            data = fh.read(length)
            fh.seek(4, os.SEEK_CUR)
            if kind == b"sBIT" and length >= 1:
                return data[0]


# --------------------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------------------
def _decode_dicom(p: Path) -> np.ndarray:
    ds, first_frame = _open_dicom(p)
    try:
        return _dicom_to_unit(first_frame(), ds)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise ValueError/RuntimeError/... for bad pixel data
        raise DecodeError(f"Cannot decode '{p}': {_redact(_reason(exc), ds)}.") from None


def _open_dicom(p: Path) -> tuple[Any, Any]:
    """``(dataset, first_frame)``: the parsed header, and a callable returning ``pixel_array`` (its first frame)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(p, force=p.suffix.lower() in _DICOM_SUFFIXES)
    except InvalidDicomError:
        raise DecodeError(f"Cannot decode '{p}': not a DICOM file (no 'DICM' marker).") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt headers
        raise DecodeError(f"Cannot decode '{p}': unreadable DICOM header ({_reason(exc)}).") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DecodeError(f"Cannot decode '{p}': the DICOM file has no pixel data (truncated, or not an image).")
    tsyntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    hint = plugin_hint(tsyntax)
    if hint is not None:
        raise DecodeError(f"Cannot decode '{p}': {hint}")

    def first_frame() -> np.ndarray:
        arr = ds.pixel_array
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            logger.warning("'%s' has %s frames; using the first.", p, ds.NumberOfFrames)
            arr = arr[0]
        return arr

    return ds, first_frame


def plugin_hint(transfer_syntax_uid: str) -> str | None:
    """Why pixel data of this transfer syntax cannot be decoded here, and what to install; None when it can.

    Parameters
    ----------
    transfer_syntax_uid : str
        The (0002,0010) Transfer Syntax UID, e.g. ``"1.2.840.10008.1.2.4.70"``. Empty means uncompressed.

    Returns
    -------
    str or None
        A one-line message such as ``"transfer syntax 'JPEG Lossless, ...' (1.2.840.10008.1.2.4.70) needs
        pylibjpeg-libjpeg (or python-gdcm): pip install 'embedkit[dicom]'"``, or None if a decoder is available.
    """
    if not transfer_syntax_uid:
        return None
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(transfer_syntax_uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {uid.name!r} ({uid}) has no pixel data decoder in pydicom."
    if decoder.is_available:
        return None
    return missing_plugin_message(uid)


def missing_plugin_message(transfer_syntax_uid: str) -> str:
    """The message for a compressed transfer syntax whose decoder plugin is not installed.

    Parameters
    ----------
    transfer_syntax_uid : str
        The Transfer Syntax UID.

    Returns
    -------
    str
        ``"transfer syntax '<name>' (<uid>) needs <plugin>: pip install 'embedkit[dicom]'"``.
    """
    from pydicom.uid import UID

    uid = UID(transfer_syntax_uid)
    needs = _PLUGINS.get(str(uid), "a pydicom pixel-data plugin (pylibjpeg, python-gdcm)")
    return f"transfer syntax {uid.name!r} ({uid}) needs {needs}: {_INSTALL}"


def _dicom_to_unit(arr: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        if arr.ndim != 3:
            raise DecodeError(f"unsupported photometric interpretation {photometric!r}")
        # pixel_array already converted YBR to RGB; integer samples of BitsStored bits (or 16 after a palette).
        bits = 16 if photometric == "PALETTE COLOR" else int(ds.get("BitsStored", 8))
        return (_luminance(arr[..., :3].astype(np.float64)) / float(2**bits - 1)).astype(np.float32)

    values = apply_modality_lut(arr, ds)
    lut_item = _voi_lut_item(ds)
    if lut_item is not None:
        # A VOI LUT indexes integers; the modality output is integral for CR/DX but may be float64-typed.
        out = apply_voi(np.rint(values).astype(np.int64), ds, 0).astype(np.float64)
        lut = np.asarray(_lut_data(lut_item, ds), dtype=np.float64)
        lo, hi = float(lut.min()), float(lut.max())
    elif "WindowCenter" in ds and "WindowWidth" in ds and _window_ok(ds):
        out = apply_windowing(values, ds, 0)
        # The window's output range (pydicom's y_min, y_max) is where -inf and +inf land.
        with np.errstate(over="ignore", invalid="ignore"):
            lo, hi = (float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), ds, 0))
    else:
        out = np.asarray(values, dtype=np.float64)
        lo, hi = float(out.min()), float(out.max())
    unit = (out - lo) / (hi - lo) if hi != lo else np.zeros(out.shape)
    inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if photometric == "MONOCHROME1" or inverse:
        unit = 1.0 - unit
    return unit.astype(np.float32)


def _voi_lut_item(ds: Any) -> Any:
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    return item


def _lut_data(item: Any, ds: Any) -> list[int]:
    elem = item["LUTData"]
    if isinstance(elem.value, (bytes, bytearray)):
        little = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        order = "<" if little is None or little.is_little_endian else ">"
        return list(np.frombuffer(elem.value, dtype=f"{order}u2"))
    value = elem.value
    return list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__len__") else [int(value)]


def _window_ok(ds: Any) -> bool:
    def first(v: Any) -> float:
        return float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v)

    try:
        width = first(ds.WindowWidth)
        first(ds.WindowCenter)
    except (TypeError, ValueError, IndexError):
        logger.warning("Ignoring an unreadable WindowCenter/WindowWidth; using min-max.")
        return False
    if not math.isfinite(width) or width < 1:
        logger.warning("Ignoring WindowWidth %s < 1; using min-max.", width)
        return False
    return True


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _redact(text: str, ds: Any) -> str:
    """Remove any identifying value of ``ds`` that a library message may have quoted."""
    from embedkit.data.privacy import IDENTIFYING_KEYWORDS

    for key in IDENTIFYING_KEYWORDS:
        value = ds.get(key)
        s = "" if value is None or hasattr(value, "__iter__") and not isinstance(value, str) else str(value)
        if len(s) >= 3 and s in text:
            text = text.replace(s, "<redacted>")
    return text


# --------------------------------------------------------------------------------------------------------------
# Header only
# --------------------------------------------------------------------------------------------------------------
def read_dicom_header(path: str | os.PathLike[str], *, salt: str | None = None) -> dict[str, Any]:
    """Read a DICOM header (no pixels) and return only fields that are safe to store.

    Parameters
    ----------
    path : str or path-like
        The DICOM file.
    salt : str, optional
        Salt for the hashed ids (default: ``privacy.get_salt()``).

    Returns
    -------
    dict
        ``view`` (ViewPosition, upper case, "" if absent), ``sex`` ("M"/"F"/"O"/""), ``age`` (float years or
        None; from PatientAge, else whole years between birth and study date), ``modality``, ``photometric``,
        ``rows``, ``cols``, ``bits_allocated``, ``bits_stored``, ``transfer_syntax`` and the salted hashes
        ``patient_id`` (PatientID), ``study_id`` (StudyInstanceUID), ``image_id`` (SOPInstanceUID);
        a missing id gives "".

    Raises
    ------
    DecodeError
        If the file is not a readable DICOM file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from embedkit.data.privacy import get_salt, salted_hash

    p = Path(path)
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, force=p.suffix.lower() in _DICOM_SUFFIXES)
    except InvalidDicomError:
        raise DecodeError(f"Cannot read DICOM header of '{p}': not a DICOM file (no 'DICM' marker).") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt headers
        raise DecodeError(f"Cannot read DICOM header of '{p}': {_reason(exc)}.") from None
    salt = salt or get_salt()
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    meta = getattr(ds, "file_meta", None)
    return {
        "view": str(ds.get("ViewPosition", "") or "").strip().upper(),
        "sex": sex if sex in ("M", "F", "O") else "",
        "age": _age_years(ds),
        "modality": str(ds.get("Modality", "") or ""),
        "photometric": str(ds.get("PhotometricInterpretation", "") or ""),
        "rows": _int_or_none(ds.get("Rows")),
        "cols": _int_or_none(ds.get("Columns")),
        "bits_allocated": _int_or_none(ds.get("BitsAllocated")),
        "bits_stored": _int_or_none(ds.get("BitsStored")),
        "transfer_syntax": str(getattr(meta, "TransferSyntaxUID", "") or ""),
        "patient_id": salted_hash(ds.get("PatientID"), salt),
        "study_id": salted_hash(ds.get("StudyInstanceUID"), salt),
        "image_id": salted_hash(ds.get("SOPInstanceUID"), salt),
    }


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v) if v is not None and v != "" else None
    except (TypeError, ValueError):
        return None


def _age_years(ds: Any) -> float | None:
    age = str(ds.get("PatientAge", "") or "").strip().upper()
    if len(age) >= 2 and age[:-1].isdigit() and age[-1] in "DWMY":
        n = int(age[:-1])
        return float(n) if age[-1] == "Y" else round(n / {"D": 365.25, "W": 52.1775, "M": 12.0}[age[-1]], 2)
    birth = str(ds.get("PatientBirthDate", "") or "")
    when = str(ds.get("StudyDate", "") or ds.get("AcquisitionDate", "") or ds.get("ContentDate", "") or "")
    if len(birth) >= 8 and len(when) >= 8 and birth[:8].isdigit() and when[:8].isdigit():
        b, w = birth[:8], when[:8]
        years = int(w[:4]) - int(b[:4]) - (1 if w[4:8] < b[4:8] else 0)
        return float(years) if years >= 0 else None
    return None
