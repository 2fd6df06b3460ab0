"""Caffe's ``DataTransformer`` at TEST time: centre crop, mean subtraction, scale.

Per pixel, in float32 and in this order (``data_transformer.cpp``)::

    out[c, h, w] = (pixel[c, h_off + h, w_off + w] - mean) * scale

where ``mean`` is the mean file's value at the same uncropped position, or the
channel's ``mean_value`` (one value is replicated to every channel). At TEST
the crop is centred: ``h_off = (H - crop) // 2``. ``mirror`` is random in Caffe
in every phase; it is ignored here so evaluations stay deterministic (TEST nets
normally set ``mirror: false``), and reported in the evaluator's notes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..fileio import read_bytes
from ..images.caffe_image import cv_resize_linear

F32 = np.float32
_UNSUPPORTED = ("noise_param", "distort_param", "expand_param")


def read_mean_file(path) -> np.ndarray:
    """A ``.binaryproto`` BlobProto (as written by ``compute_image_mean``) as float32 (C, H, W)."""
    from google.protobuf.message import DecodeError

    from ..caffe import caffe_pb2
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(read_bytes(path, "mean file"))
    except DecodeError as e:
        raise ModelError(f"not a BlobProto (.binaryproto) file: {e}", file=path) from None
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
    values = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=F32)
    if len(shape) != 4 or shape[0] != 1:
        raise ModelError(f"mean blob has shape {shape}; Caffe expects (1, C, H, W)", file=path)
    if values.size != int(np.prod(shape)):
        raise ModelError(f"mean blob holds {values.size} values but its shape {shape} implies "
                         f"{int(np.prod(shape))}", file=path)
    return values.reshape(shape[1:])


class Transform:
    """The TEST-phase transform of one data layer.

    Args:
        params: the layer's ``transform_param`` dict.
        layer: layer name, for errors.
        net_file: the prototxt, for errors.
        resolve: maps a path from the prototxt to a filesystem path (base_dir rule).
    """

    def __init__(self, params: dict, layer: str, net_file, resolve):
        self.layer, self.net_file = layer, net_file
        for key in _UNSUPPORTED:
            if params.get(key):
                raise self._error(f"transform_param.{key} (SSD augmentation) is not supported "
                                  "for evaluation")
        if params.get("mean_file") and params.get("mean_value"):
            raise self._error("transform_param sets both mean_file and mean_value; Caffe "
                              "accepts only one")
        self.scale = F32(params.get("scale", 1.0))
        crop = int(params.get("crop_size", 0))
        self.crop = (int(params.get("crop_h", 0)) or crop, int(params.get("crop_w", 0)) or crop)
        self.mean_file = resolve(params["mean_file"]) if params.get("mean_file") else None
        self.mean = read_mean_file(self.mean_file) if self.mean_file else None
        self.mean_values = [F32(v) for v in params.get("mean_value", [])]
        self.force_color = bool(params.get("force_color", False))
        self.force_gray = bool(params.get("force_gray", False))
        if self.force_color and self.force_gray:
            raise self._error("transform_param sets both force_color and force_gray")
        self.mirror = bool(params.get("mirror", False))
        self.resize = self._resize(params.get("resize_param"))

    def _resize(self, p) -> tuple[int, int] | None:
        """SSD's ``resize_param`` as the TEST net uses it: WARP to (height, width), LINEAR."""
        if not p:
            return None
        p = p[-1] if isinstance(p, list) else p
        mode = str(p.get("resize_mode", "WARP"))
        interp = p.get("interp_mode", [])
        interp = [str(m) for m in (interp if isinstance(interp, list) else [interp])]
        if mode not in ("WARP", "1"):
            raise self._error(f"resize_param.resize_mode {mode} is not supported for evaluation "
                              "(WARP is)")
        if any(m not in ("LINEAR", "1") for m in interp):
            raise self._error(f"resize_param.interp_mode {', '.join(interp)}: only LINEAR is "
                              "supported for evaluation")
        if float(p.get("prob", 1.0)) != 1.0:
            raise self._error(f"resize_param.prob is {p['prob']}; a random resize cannot be "
                              "evaluated deterministically (use prob: 1)")
        h, w = int(p.get("height", 0)), int(p.get("width", 0))
        if h < 1 or w < 1:
            raise self._error(f"resize_param needs height and width, got {h} x {w}")
        return h, w

    def _error(self, message: str) -> ModelError:
        return ModelError(message, file=self.net_file, layer=self.layer)

    def resized(self, image: np.ndarray) -> np.ndarray:
        """``resize_param`` applied: ``cv::resize`` INTER_LINEAR of a uint8 (C, H, W) image."""
        if image.dtype != np.uint8:
            raise self._error("resize_param needs 8-bit images; this source holds float data")
        out = cv_resize_linear(np.ascontiguousarray(image.transpose(1, 2, 0)), *self.resize)
        return np.ascontiguousarray(out.reshape(*self.resize, -1).transpose(2, 0, 1))

    def check(self, shape: tuple[int, int, int], where: str, decoded: bool = True) -> None:
        """Refuse an image shape (C, H, W) the transform cannot take, as Caffe's CHECKs do."""
        c, h, w = shape
        if self.resize is not None and decoded:
            h, w = self.resize
            shape = (c, h, w)
        ch, cw = self.crop
        if (ch and h < ch) or (cw and w < cw):
            raise self._error(f"{where}: image is {h} x {w}, smaller than the crop {ch} x {cw}")
        if self.mean is not None and tuple(self.mean.shape) != tuple(shape):
            raise self._error(f"mean file {self.mean_file} has shape (C, H, W) = "
                              f"{tuple(self.mean.shape)} but {where} is {tuple(shape)} "
                              "(the mean must match the uncropped image)")
        if self.mean_values and len(self.mean_values) not in (1, c):
            raise self._error(f"{len(self.mean_values)} mean_value entries for {c}-channel "
                              f"images ({where}); give 1 or {c}")

    def __call__(self, image: np.ndarray, decoded: bool = True, at=None,
                 mirror: bool = False) -> np.ndarray:
        """uint8 (or float) (C, H, W) -> float32 (C, crop_h or H, crop_w or W).

        ``decoded``: the image came from an image file or an encoded record; raw Datum
        pixels skip ``resize_param``, as the SSD fork's raw-Datum path does.
        ``at``: the crop's (top, left) corner, drawn by the caller at TRAIN (default: the
        TEST centre). ``mirror``: flip left-right last; the mean is still taken at each
        pixel's source position, as ``data_transformer.cpp`` indexes it."""
        if self.resize is not None and decoded:  # resize, then crop, mean, scale
            image = self.resized(image)
        c, h, w = image.shape
        ch, cw = self.crop[0] or h, self.crop[1] or w
        top, left = at if at is not None else ((h - ch) // 2, (w - cw) // 2)
        x = image[:, top:top + ch, left:left + cw].astype(F32)
        if self.mean is not None:
            x = x - self.mean[:, top:top + ch, left:left + cw]
        elif self.mean_values:
            m = np.asarray(self.mean_values * (c if len(self.mean_values) == 1 else 1), F32)
            x = x - m[:, None, None]
        x = (x * self.scale).astype(F32, copy=False)
        return np.ascontiguousarray(x[:, :, ::-1]) if mirror else x


def resolver(base_dir):
    """Paths in a prototxt are relative to the current directory, as in Caffe, or to base_dir."""
    base = Path(base_dir) if base_dir is not None else None

    def resolve(p) -> Path:
        p = Path(p)
        return p if p.is_absolute() or base is None else base / p
    return resolve
