"""Preprocessing presets: decoded float image (H, W) → cacheable uint8 (R, R) → model tensor (3, R, R).

Each preset is a frozen dataclass whose ``params()`` describe it completely; that dict goes into store and image
cache provenance, so two stores agree on preprocessing exactly when their params are equal. No preset ever
augments: the same input always gives the same bytes.

``paper`` — the reference study's protocol (arXiv 2510.07191; ``normalizer_resizer`` of
github.com/tayebiarasteh/vit-med), bit-exact:

0. read the file as the reference did, with ``decode_raw``: PNG/JPEG as ``cv2.imread`` (``IMREAD_COLOR``) then
   ``BGR2GRAY`` — uint8, and a 16-bit PNG keeps only its high byte (``v >> 8``); DICOM as pydicom's raw
   ``pixel_array`` (no rescale slope/intercept, no VOI window/LUT), in its own integer dtype;
1. stretch-resize that *integer* image to R×R with ``scipy.ndimage.zoom(img, (R/H, R/W), order=2)`` (spline
   prefilter, ``mode='constant'``; no aspect preservation, padding or cropping). The output keeps the input's
   integer dtype, so scipy rounds and clips the spline values to integers here — the step the old float path missed;
2. min–max to [0, 1]: ``(z - z.min()) / (z.max() - z.min())`` in float64 (a flat image becomes 0; the reference
   divided by zero there). Integer differences are taken in int64, so an int16 image spanning more than 32767
   does not wrap around as it would in the reference's int16 arithmetic;
3. to uint8 with ``skimage.img_as_ubyte`` semantics: ``clip(rint(x * 255), 0, 255)`` in float64 (round half to
   even);
4. MONOCHROME1 DICOMs only: ``np.invert`` (255 − v) — after the 8-bit conversion, as the reference did;
5. global histogram equalisation with ``cv2.equalizeHist`` semantics (OpenCV ``histogram.cpp``): with ``h``
   the 256-bin histogram, ``i`` the first non-zero bin and ``N`` the pixel count, ``lut[i] = 0`` and for
   ``j > i``: ``lut[j] = rint(float32(sum(h[i+1..j])) * float32(255 / (N - h[i])))`` saturated to 0..255
   (float32 arithmetic and round-half-to-even, as ``saturate_cast<uchar>(float)``); an image of one grey level
   ``i`` stays ``i``;
6. three identical channels, ``/255`` into [0, 1] (``ToTensor``), no mean/std.

Steps 1–5 need no OpenCV or scikit-image at run time; ``tests/embedkit/data/test_paper_exact.py`` checks them
against an independent implementation with ``cv2``, ``scipy`` and ``pydicom``. Given a plain array instead of a
``RawImage``, the ``paper`` preset applies steps 1–5 to it (a float array is zoomed in float64).

``model`` — for extraction with a backbone's own normalisation: aspect-preserving resize of the longer side to R
(``torch.nn.functional.interpolate``, bilinear by default or bicubic, ``antialias=True``, ``align_corners=False``),
values clamped to [0, 1], ``rint(x*255)`` to uint8, centred on an R×R black (0) canvas (``resize='stretch'``
resizes to R×R instead); then three channels, ``/255``, ``(x - mean) / std``.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from embedkit.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 (re-exported)
from embedkit.errors import EmbedkitError

logger = logging.getLogger(__name__)

PRESETS = ("model", "paper")


@dataclass(frozen=True)
class Preset:
    """A complete, deterministic preprocessing recipe (see the module docstring for each preset's steps).

    Attributes
    ----------
    name : {"model", "paper"}
    resolution : int
        Output side R.
    resize : {"pad", "stretch"}
        Geometry (``paper`` is always ``stretch``).
    interpolation : str
        ``"zoom-order2"`` for ``paper``; ``"bilinear"`` or ``"bicubic"`` for ``model``.
    antialias : bool
        Anti-aliasing on downscale (``model`` only).
    pad_value : int
        uint8 value of the padding (0 = black).
    mean, std : tuple of float or None
        Per-channel normalisation of the [0, 1] tensor; None for ``paper``.
    """

    name: Literal["model", "paper"]
    resolution: int
    resize: Literal["pad", "stretch"] = "pad"
    interpolation: str = "bilinear"
    antialias: bool = True
    pad_value: int = 0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def params(self) -> dict[str, Any]:
        """Every parameter, JSON-able, for provenance (equal params ⇔ identical preprocessing)."""
        out = asdict(self)
        out["preset"] = out.pop("name")
        out["mean"] = list(self.mean) if self.mean is not None else None
        out["std"] = list(self.std) if self.std is not None else None
        if self.name == "paper":
            out.update(
                resize="stretch", interpolation="scipy.ndimage.zoom(order=2, mode='constant') on the integer image",
                antialias=False, pad_value=None,
                reader={"raster": "cv2.imread(IMREAD_COLOR)+BGR2GRAY semantics (16-bit PNG -> v>>8)",
                        "dicom": "pydicom pixel_array, raw (no modality LUT, no VOI)"},
                intensity="minmax->img_as_ubyte(rint(x*255))->invert if MONOCHROME1->equalizeHist(cv2 semantics)",
                channels=3, scale="1/255", reference="github.com/tayebiarasteh/vit-med (chestx normalizer_resizer)",
            )
        else:
            out.update(intensity="clip[0,1]->rint(x*255)", pad_position="center", channels=3, scale="1/255",
                       align_corners=False)
        return out

    # ---------------------------------------------------------------------------------------------------------
    def decode(self, path: Any) -> Any:
        """Read a file with the decoder this preset expects: ``decode_raw`` for ``paper``, else ``decode_image``.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        RawImage or numpy.ndarray
            What :meth:`to_uint8` takes: a ``RawImage`` (``paper``) or a float (H, W) image in [0, 1].

        Raises
        ------
        DecodeError
            If the file cannot be read.
        """
        from embedkit.data.decode import decode_image, decode_raw

        return decode_raw(path) if self.name == "paper" else decode_image(path)

    def load(self, path: Any) -> np.ndarray:
        """``to_uint8(decode(path))``: one file → uint8 (R, R), the row an image cache stores."""
        return self.to_uint8(self.decode(path))

    def to_uint8(self, img: Any) -> np.ndarray:
        """Geometric and intensity steps: decoded image → uint8 (R, R) (what the image cache stores).

        Parameters
        ----------
        img : RawImage or numpy.ndarray
            ``model``: the float image (H, W) in [0, 1] from ``decode_image``. ``paper``: the ``RawImage`` from
            ``decode_raw`` (bit-exact reference path); a plain (H, W) array is processed as the reference would
            process that array (integer arrays in their dtype, floats in float64), without MONOCHROME1 inversion.

        Returns
        -------
        numpy.ndarray
            uint8, shape (R, R).

        Raises
        ------
        EmbedkitError
            If the image is not a non-empty 2-D array, or a ``RawImage`` is given to the ``model`` preset.
        """
        from embedkit.data.decode import RawImage

        raw = img if isinstance(img, RawImage) else None
        arr = np.asarray(raw.pixels if raw is not None else img)
        if arr.ndim != 2 or arr.size == 0:
            raise EmbedkitError(f"Preset {self.name!r} expects one grayscale image (H, W). Got shape {arr.shape}.")
        if self.name == "paper":
            return _paper_uint8(arr, self.resolution, invert=raw is not None and raw.photometric == "MONOCHROME1")
        if raw is not None:
            raise EmbedkitError("The 'model' preset takes the float image of decode_image, not a RawImage "
                                "(decode_raw is the 'paper' preset's reader). Use preset.decode(path).")
        return _model_uint8(arr, self)

    def to_tensor(self, u8: np.ndarray) -> Any:
        """Channel and normalisation steps: uint8 (R, R) or (B, R, R) → float32 tensor (3, R, R) or (B, 3, R, R).

        Parameters
        ----------
        u8 : numpy.ndarray
            uint8 image(s) from ``to_uint8`` (or an image cache).

        Returns
        -------
        torch.Tensor
            float32, (3, R, R) or (B, 3, R, R): ``x/255`` repeated on 3 channels, then ``(x - mean) / std``
            when the preset has mean/std.

        Raises
        ------
        EmbedkitError
            If the input is not uint8 of shape (R, R) or (B, R, R).
        """
        import torch

        arr = np.asarray(u8)
        r = self.resolution
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or arr.shape[-2:] != (r, r):
            raise EmbedkitError(
                f"Preset {self.name!r} @{r} expects uint8 images of shape ({r}, {r}) or (B, {r}, {r}). "
                f"Got {arr.dtype} {arr.shape}."
            )
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32).div(255.0)
        x = x.unsqueeze(-3).expand(*arr.shape[:-2], 3, r, r).contiguous()
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
            x = (x - mean) / std
        return x

    def __call__(self, img: Any) -> Any:
        """``to_tensor(to_uint8(img))``: decoded image (see ``to_uint8``) → tensor (3, R, R)."""
        return self.to_tensor(self.to_uint8(img))


def make_preset(
    name: str,
    *,
    resolution: int,
    mean: tuple[float, ...] | list[float] | None = None,
    std: tuple[float, ...] | list[float] | None = None,
    resize: str = "pad",
    interpolation: str = "bilinear",
) -> Preset:
    """Build a preprocessing preset.

    Parameters
    ----------
    name : {"model", "paper"}
        ``model`` (default for extraction) or ``paper`` (the reference protocol).
    resolution : int
        Output side R (>= 1).
    mean, std : sequence of 3 floats, optional
        The backbone's normalisation (``model`` only; default ImageNet's, recorded in ``params()``).
        ``paper`` applies none and refuses them.
    resize : {"pad", "stretch"}
        ``model`` geometry; ``paper`` always stretches.
    interpolation : {"bilinear", "bicubic"}
        ``model`` resampling filter.

    Returns
    -------
    Preset

    Raises
    ------
    EmbedkitError
        For an unknown name, a bad resolution/resize/interpolation, or mean/std with ``paper``.

    Examples
    --------
    >>> make_preset("paper", resolution=224).params()["preset"]
    'paper'
    """
    if name not in PRESETS:
        raise EmbedkitError(f"Unknown preprocessing preset {name!r}. Choose one of {', '.join(PRESETS)}.")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise EmbedkitError(f"The 'resolution' parameter of make_preset must be an int >= 1. Got {resolution!r}.")
    if name == "paper":
        if mean is not None or std is not None:
            raise EmbedkitError("The 'paper' preset applies no mean/std (as the reference study). Drop --mean/--std "
                                "or use the 'model' preset.")
        return Preset(name="paper", resolution=int(resolution), resize="stretch", interpolation="zoom-order2",
                      antialias=False, pad_value=0)
    if resize not in ("pad", "stretch"):
        raise EmbedkitError(f"The 'resize' parameter of make_preset must be 'pad' or 'stretch'. Got {resize!r}.")
    if interpolation not in ("bilinear", "bicubic"):
        raise EmbedkitError(
            f"The 'interpolation' parameter of make_preset must be 'bilinear' or 'bicubic'. Got {interpolation!r}."
        )
    mean_t = _triple(mean if mean is not None else IMAGENET_MEAN, "mean")
    std_t = _triple(std if std is not None else IMAGENET_STD, "std")
    if min(std_t) <= 0:
        raise EmbedkitError(f"The 'std' parameter of make_preset must be > 0. Got {std_t}.")
    return Preset(name="model", resolution=int(resolution), resize=resize,  # type: ignore[arg-type]
                  interpolation=interpolation, antialias=True, pad_value=0, mean=mean_t, std=std_t)


def _triple(values: Any, what: str) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in values)
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise EmbedkitError(f"The '{what}' parameter of make_preset must have 3 values. Got {len(vals)}.")
    return vals  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------------------
def equalize_hist(u8: np.ndarray) -> np.ndarray:
    """Global histogram equalisation with ``cv2.equalizeHist`` semantics (formula in the module docstring).

    Parameters
    ----------
    u8 : numpy.ndarray
        uint8 image of any shape.

    Returns
    -------
    numpy.ndarray
        uint8, same shape.
    """
    hist = np.bincount(u8.ravel(), minlength=256)
    first = int(np.flatnonzero(hist)[0])
    total = int(u8.size)
    if hist[first] == total:
        return np.full_like(u8, first)
    scale = np.float32(255.0) / np.float32(total - hist[first])
    lut = np.zeros(256, dtype=np.uint8)
    cumulative = np.cumsum(hist[first + 1:]).astype(np.float32)
    lut[first + 1:] = np.clip(np.rint(cumulative * scale), 0, 255).astype(np.uint8)
    return lut[u8]


def img_as_ubyte(x: np.ndarray) -> np.ndarray:
    """``skimage.util.img_as_ubyte`` for a float image in [0, 1]: ``clip(rint(x * 255), 0, 255)`` as uint8.

    scikit-image multiplies in the input's float type (float64 here), rounds half to even and clips; it raises
    for values outside [-1, 1], which min–max output never has.
    """
    out = np.multiply(x, 255, dtype=np.float64)
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _paper_uint8(img: np.ndarray, r: int, *, invert: bool = False) -> np.ndarray:
    from scipy import ndimage

    x = np.asarray(img)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8) * np.uint8(255)
    elif x.dtype.kind == "f":
        x = x.astype(np.float64)
    elif x.dtype.kind not in "iu":
        raise EmbedkitError(f"paper preset: cannot process pixels of dtype {x.dtype}.")
    h, w = x.shape
    # np.divide((R, R), shape) is the reference's resize_ratio, to the last bit; zoom keeps x's dtype.
    z = ndimage.zoom(x, np.divide((r, r), (h, w)), order=2)
    if z.shape != (r, r):  # zoom rounds the output shape; guard against a float edge case
        raise EmbedkitError(f"paper preset: zoom gave {z.shape} for a {h}x{w} image at {r}; please report this.")
    if z.dtype.kind == "f":
        lo, hi = float(z.min()), float(z.max())
        # A flat float image comes out of the spline with ~1e-16 ripples; min-max would blow them up.
        flat = hi - lo <= 1e-9 * max(1.0, abs(hi))
        norm = None if flat else (z - lo) / (hi - lo)
    else:
        lo, hi = int(z.min()), int(z.max())
        flat = hi == lo
        norm = None if flat else (z.astype(np.int64) - lo) / float(hi - lo)
    u8 = np.zeros((r, r), dtype=np.uint8) if norm is None else img_as_ubyte(norm)
    if invert:
        u8 = np.invert(u8)
    return equalize_hist(u8)


def _model_uint8(img: np.ndarray, preset: Preset) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    r = preset.resolution
    h, w = img.shape
    if preset.resize == "stretch":
        nh, nw = r, r
    else:
        scale = r / max(h, w)
        nh, nw = max(1, min(r, round(h * scale))), max(1, min(r, round(w * scale)))
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode=preset.interpolation, align_corners=False,
                          antialias=preset.antialias)
    resized = np.rint(x[0, 0].clamp(0.0, 1.0).numpy().astype(np.float64) * 255.0).astype(np.uint8)
    out = np.full((r, r), preset.pad_value, dtype=np.uint8)
    top, left = (r - nh) // 2, (r - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out
