"""Image decoding and resizing as Caffe's OpenCV calls do them, in NumPy.

Caffe reads images with ``cv::imread``/``cv::imdecode`` (BGR, 8 bit) and
resizes with ``cv::resize(..., INTER_LINEAR)``. Decoding here uses Pillow:
identical for PNG; for JPEG both sides use libjpeg, and greyscale JPEGs are
asked of libjpeg directly (``draft("L")``) as OpenCV does. A colour PNG read
as grey goes through Pillow's ITU-R 601 luma, which can differ from libpng's
rgb_to_gray by one level.

:func:`cv_resize_linear` reproduces OpenCV 4's 8-bit INTER_LINEAR bit for bit
(fixed-point coefficients with 11 fractional bits, the vectorised vertical pass;
checked against ``cv2.resize`` in the tests).

:func:`jpeg_roundtrip` is ``cv::imencode(".jpg")`` and decoding again, as SSD's
``CropImage`` does to a sampled encoded record; Pillow's libjpeg at OpenCV's
defaults (quality 95, 4:2:0) writes the same bytes (checked against ``cv2``).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..errors import ModelError

#: file suffixes (lower case) read as images where a folder or a list is given
IMAGE_EXT = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp"})
MODES = ("native", "color", "gray")  # IMREAD_UNCHANGED, IMREAD_COLOR, IMREAD_GRAYSCALE
_COEF_SCALE = 2048                   # OpenCV INTER_RESIZE_COEF_SCALE


def decode_image(source, mode: str, what: str = "image") -> np.ndarray:
    """Decode an image file (path) or encoded bytes to uint8 (H, W, C), channels in BGR(A) order.

    Args:
        source: a path, or the encoded bytes (PNG, JPEG, ...).
        mode: "color" (3 channels), "gray" (1) or "native" (as stored: 1, 3 or 4).
        what: how to name the source in errors when it is bytes.
    Raises:
        ModelError: unreadable or 16-bit data (Caffe's transformer takes 8-bit only).
    """
    from PIL import Image, UnidentifiedImageError
    name = str(source) if isinstance(source, (str, Path)) else what
    try:
        img = Image.open(source if isinstance(source, (str, Path)) else io.BytesIO(source))
        if mode == "gray" and img.format == "JPEG":
            img.draft("L", img.size)  # libjpeg's own greyscale output, like OpenCV's
        img.load()
    except FileNotFoundError:
        raise ModelError("image file not found", file=name) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ModelError(f"cannot decode the image: {e}", file=name) from None
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise ModelError(f"{img.mode} ({'16-bit' if 'I' in img.mode else 'float'}) images are not "
                         "supported: Caffe's data transformer takes 8-bit images", file=name)
    target = {"color": "RGB", "gray": "L"}.get(mode) or _native_mode(img)
    arr = np.asarray(img.convert(target) if img.mode != target else img, dtype=np.uint8)
    if arr.ndim == 2:
        return arr[:, :, None].copy()
    order = [2, 1, 0, 3][:arr.shape[2]]  # RGB(A) -> BGR(A)
    return np.ascontiguousarray(arr[:, :, order])


def jpeg_roundtrip(img: np.ndarray, mode: str, what: str = "image") -> np.ndarray:
    """uint8 (C, H, W) BGR(A) or grey -> encoded as OpenCV's default JPEG -> decoded as ``mode``.

    OpenCV's JPEG encoder drops a fourth (alpha) channel."""
    from PIL import Image
    hwc = img.transpose(1, 2, 0)
    if hwc.shape[2] == 1:
        picture = Image.fromarray(np.ascontiguousarray(hwc[:, :, 0]), "L")
    else:
        picture = Image.fromarray(np.ascontiguousarray(hwc[:, :, 2::-1]), "RGB")
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=95)
    return np.ascontiguousarray(decode_image(buf.getvalue(), mode, what).transpose(2, 0, 1))


def _native_mode(img) -> str:
    """The Pillow mode matching ``IMREAD_UNCHANGED``'s channel count for this image."""
    if img.mode in ("L", "1"):
        return "L"
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    return "RGBA" if has_alpha else "RGB"


def _linear_coefficients(src: int, dst: int, clamp_fraction: bool):
    """Source indices and 11-bit weights of OpenCV's INTER_LINEAR along one axis.

    The position is computed in double and stored as float, as OpenCV does.
    Along x the fraction is zeroed outside the image; along y it is not (OpenCV
    only clamps the row index there), which changes the rounding of border rows.
    """
    pos = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    idx = np.floor(pos).astype(np.int64)
    frac = (pos - idx.astype(np.float32)).astype(np.float32)
    if clamp_fraction:
        low, high = idx < 0, idx >= src - 1
        frac[low | high] = 0
        idx[low] = 0
        idx[high] = src - 1
    w0 = np.rint((np.float32(1) - frac) * np.float32(_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int64)
    return np.clip(idx, 0, src - 1), np.clip(idx + 1, 0, src - 1), w0, w1


def cv_resize_linear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv::resize(img, Size(width, height), 0, 0, INTER_LINEAR)`` for uint8 (H, W, C)."""
    ih, iw = img.shape[:2]
    if (ih, iw) == (height, width):
        return img.copy()
    x0, x1, a0, a1 = _linear_coefficients(iw, width, clamp_fraction=True)
    y0, y1, b0, b1 = _linear_coefficients(ih, height, clamp_fraction=False)
    src = img.astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]   # (ih, width, C)
    top, bottom = rows[y0] >> 4, rows[y1] >> 4
    out = ((b0[:, None, None] * top) >> 16) + ((b1[:, None, None] * bottom) >> 16)
    return np.clip((out + 2) >> 2, 0, 255).astype(np.uint8)


def read_image_caffe(path, new_height: int, new_width: int, is_color: bool) -> np.ndarray:
    """Caffe's ``ReadImageToCVMat``: decode (colour or grey), resize if both sizes are set.

    Returns uint8 (C, H, W), BGR for colour.
    """
    img = decode_image(path, "color" if is_color else "gray")
    if new_height > 0 and new_width > 0:
        img = cv_resize_linear(img, new_height, new_width)
    return np.ascontiguousarray(img.transpose(2, 0, 1))
