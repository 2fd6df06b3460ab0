"""Image loading and the preprocessing of both frameworks, as float32 CHW arrays.

Darknet (pjreddie ``src/image.c``): pixels are ``byte / 255.`` in RGB order;
:func:`resize_image` is darknet's own two-pass bilinear resize and
:func:`letterbox_image` its aspect-preserving resize into a 0.5-grey canvas.
Both are replicated operation by operation in float32 (the C code uses float
arithmetic throughout, without fused multiply-adds on x86-64), so the
results are bit-identical to libdarknet's for the same pixels.

Decoding: Pillow here, OpenCV's ``imread`` in the Debian darknet binary
(built with OpenCV) and stb_image in a darknet built without it. For baseline
JPEGs libjpeg-turbo's default decoder usually gives identical bytes; the
tests measure the difference on darknet's sample images.

Caffe: :func:`caffe_preprocess` resizes with Pillow's bilinear filter, swaps
to BGR, subtracts a per-channel mean and multiplies by a scale, as the usual
``caffe.io.Transformer`` recipe (raw 0-255 values) does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError

F32 = np.float32


def _open(path):
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        raise ModelError("reading images needs Pillow (pip install pillow)") from None
    try:
        img = Image.open(Path(path))
        img.load()
    except FileNotFoundError:
        raise ModelError("image file not found", file=path) from None
    except OSError as e:
        raise ModelError(f"cannot read the image: {e}", file=path) from None
    return img


def load_image(path, channels: int = 3) -> np.ndarray:
    """An image file as float32 (channels, H, W) in [0, 1], RGB (or grey for channels=1).

    Like darknet's ``load_image(path, 0, 0, channels)``: each byte divided by 255.
    in double precision, then rounded to float.
    """
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise ModelError(f"cannot load an image with {channels} channels (1, 3 or 4)", file=path)
    data = np.asarray(_open(path).convert(mode), dtype=np.uint8)
    if data.ndim == 2:
        data = data[:, :, None]
    return (data.transpose(2, 0, 1).astype(np.float64) / 255.).astype(F32)


def resize_image(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """darknet ``resize_image``: bilinear in two passes (columns, then rows), float32.

    Pass 1 samples column ``c`` at ``sx = c * (im.w-1)/(w-1)`` (last column copied);
    pass 2 blends rows ``iy`` and ``iy+1`` with weights ``1-dy`` and ``dy``, except in
    the last output row, which keeps only the ``(1-dy)`` term - exactly as darknet,
    where rounding can make that row darker.

    Args:
        im: (C, H, W) float32.
        w, h: output width and height.
    Returns:
        (C, h, w) float32.
    """
    im = np.asarray(im, F32)
    c, ih, iw = im.shape
    if w < 1 or h < 1:
        raise ModelError(f"cannot resize to {w} x {h}")
    w_scale = F32(iw - 1) / F32(w - 1) if w > 1 else F32(0)
    h_scale = F32(ih - 1) / F32(h - 1) if h > 1 else F32(0)
    # pass 1: (C, ih, w)
    cols = np.arange(w)
    sx = cols.astype(F32) * w_scale
    ix = sx.astype(np.int64)
    dx = sx - ix.astype(F32)
    last = (cols == w - 1) | (iw == 1)
    ix = np.where(last, iw - 1, ix)
    ix1 = np.minimum(ix + 1, iw - 1)
    part = (F32(1) - dx) * im[:, :, ix] + dx * im[:, :, ix1]
    part[:, :, last] = im[:, :, iw - 1][:, :, None]
    # pass 2: (C, h, w)
    rows = np.arange(h)
    sy = rows.astype(F32) * h_scale
    iy = sy.astype(np.int64)
    dy = (sy - iy.astype(F32))[:, None]
    out = (F32(1) - dy) * part[:, iy, :]
    add = ~((rows == h - 1) | (ih == 1))
    if add.any():
        iy1 = np.minimum(iy[add] + 1, ih - 1)
        out[:, add, :] += dy[add] * part[:, iy1, :]
    return out.astype(F32, copy=False)


def letterbox_geometry(im_w: int, im_h: int, w: int, h: int) -> tuple[int, int]:
    """(new_w, new_h) of the resized image inside a w x h letterbox (pjreddie integer rules)."""
    if F32(w) / F32(im_w) < F32(h) / F32(im_h):
        return w, (im_h * w) // im_w
    return (im_w * h) // im_h, h


def letterbox_image(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """darknet ``letterbox_image``: resize keeping the aspect ratio, centred on 0.5 grey.

    Args:
        im: (C, H, W) float32.
    Returns:
        (C, h, w) float32.
    """
    c, ih, iw = im.shape
    new_w, new_h = letterbox_geometry(iw, ih, w, h)
    resized = resize_image(im, new_w, new_h)
    boxed = np.full((c, h, w), F32(0.5), F32)
    dx, dy = (w - new_w) // 2, (h - new_h) // 2
    boxed[:, dy:dy + new_h, dx:dx + new_w] = resized
    return boxed


def caffe_preprocess(path, size, mean=None, scale: float = 1.0, bgr: bool = True,
                     channels: int = 3) -> np.ndarray:
    """An image prepared the usual Caffe way: (channels, H, W) float32.

    Args:
        path: image file.
        size: (H, W) to resize to, with Pillow's bilinear filter.
        mean: per-channel values (in the output channel order) to subtract, or None.
        scale: multiplier applied after the mean subtraction (e.g. 0.017 or 1/255).
        bgr: swap RGB to BGR (Caffe models trained from OpenCV-loaded images expect it).
        channels: 3 (colour) or 1 (grey).
    """
    from PIL import Image
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ModelError(f"cannot prepare an image with {channels} channels for Caffe", file=path)
    img = _open(path).convert(mode).resize((int(size[1]), int(size[0])), Image.BILINEAR)
    x = np.asarray(img, dtype=F32)
    x = x[:, :, None] if x.ndim == 2 else x
    x = x.transpose(2, 0, 1)
    if bgr and channels == 3:
        x = x[::-1]
    x = np.ascontiguousarray(x, F32)
    if mean is not None:
        m = np.asarray(mean, F32).reshape(-1, 1, 1)
        if m.shape[0] not in (1, x.shape[0]):
            raise ModelError(f"{m.shape[0]} mean values for a {x.shape[0]}-channel image")
        x -= m
    if scale != 1.0:
        x *= F32(scale)
    return x
