"""The SSD fork's TRAIN augmentation of one AnnotatedDatum, in its order
(``annotated_data_layer.cpp`` ``load_batch``): photometric distortion, expansion onto a
larger canvas, one of the batch samplers' crops, then the transform's resize and mirror.
Each stage returns the image and the boxes that follow it.

What an encoded record goes through between stages is kept: the fork stores every
distorted, expanded or cropped image again as JPEG (``EncodeCVMatToDatum(.., "jpg")``) and
decodes it for the next stage, so the image here takes the same JPEG round trip.

Supported: ``distort_param`` (brightness, contrast, saturation, hue, channel order),
``expand_param``, ``batch_sampler`` (all of ``Sampler`` / ``SampleConstraint``),
``emit_constraint``, ``resize_param`` WARP with LINEAR interpolation, ``mirror``,
``mean_value`` / ``scale``. Refused by name: ``noise_param``, other resize modes and
interpolations, ``crop_size`` / ``crop_h`` / ``crop_w`` and ``mean_file`` on an AnnotatedData
layer, and any of the random stages on raw (not encoded) records (the fork changes their
size and then refuses them itself).
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..images.caffe_image import cv_resize_linear, jpeg_roundtrip
from . import ssd_distort
from .ssd_sampler import (WHOLE, check_batch_samplers, crop_window, generate_samples, project,
                          uniform)

F32 = np.float32
_INTERP = {1: "LINEAR", 2: "AREA", 3: "NEAREST", 4: "CUBIC", 5: "LANCZOS4"}
_RESIZE_MODES = {1: "WARP", 2: "FIT_SMALL_SIZE", 3: "FIT_LARGE_SIZE_AND_PAD"}


def _one(p):
    return (p[-1] if p else {}) if isinstance(p, list) else (p or {})


class SsdAugmentation:
    """One AnnotatedData layer's TRAIN augmentation, checked once.

    Args:
        tp: the layer's ``transform_param``.
        ap: its ``annotated_data_param``.
        net_file, layer: name the prototxt and the layer in errors.
    """

    def __init__(self, tp: dict, ap: dict, net_file=None, layer=None):
        self.net_file, self.layer = net_file, layer
        try:
            self._settings(tp, ap)
        except ModelError as e:
            raise e.located(file=net_file, layer=layer) from None

    def _settings(self, tp: dict, ap: dict) -> None:
        for key in ("noise_param", "crop_size", "crop_h", "crop_w", "mean_file"):
            if tp.get(key):
                raise ModelError(f"transform_param.{key} on an AnnotatedData layer is "
                                 "not supported for training (SSD nets resize the whole image: "
                                 "resize_param; mean_value instead of a mean file)")
        self.distort = ssd_distort.settings(_one(tp.get("distort_param"))) \
            if tp.get("distort_param") is not None else None
        e = _one(tp.get("expand_param")) if tp.get("expand_param") is not None else None
        self.expand = None if e is None else (float(e.get("prob", 1.0)),
                                              float(e.get("max_expand_ratio", 1.0)))
        if self.expand is not None and self.expand[1] < 1:
            raise ModelError(f"expand_param.max_expand_ratio {self.expand[1]:g} is "
                             "below 1 (an expansion cannot shrink the image)")
        self.emit = _one(tp.get("emit_constraint")) if tp.get("emit_constraint") is not None \
            else None
        samplers = ap.get("batch_sampler", [])
        self.samplers = check_batch_samplers(samplers if isinstance(samplers, list)
                                             else [samplers])
        self.resize = self._resize(tp.get("resize_param"))
        self.mirror = bool(tp.get("mirror", False))
        means = [float(v) for v in tp.get("mean_value", [])]
        self.fill = means

    def _resize(self, p):
        if not p:
            return None
        p = _one(p)
        mode = p.get("resize_mode", "WARP")
        mode = _RESIZE_MODES.get(mode, mode)
        if mode != "WARP":
            raise ModelError(f"resize_param.resize_mode {mode} is not supported for "
                             "training (WARP is)")
        interp = p.get("interp_mode", [])
        interp = [_INTERP.get(m, m) for m in (interp if isinstance(interp, list) else [interp])]
        other = [m for m in interp if m != "LINEAR"]
        if other:
            raise ModelError(f"resize_param.interp_mode {other[0]} is not supported "
                             "for training (only LINEAR is reproduced bit for bit here); list "
                             "LINEAR alone")
        if float(p.get("prob", 1.0)) != 1.0:
            raise ModelError(f"resize_param.prob {p['prob']} is not supported "
                             "(the fork's WARP resizes every image)")
        h, w = int(p.get("height", 0)), int(p.get("width", 0))
        if h < 1 or w < 1:
            raise ModelError(f"resize_param needs height and width, got {h} x {w}")
        return h, w

    @property
    def random_geometry(self) -> bool:
        """Whether a record's size can change before the resize (raw records cannot take it)."""
        return bool(self.distort or self.expand or self.samplers or self.resize)

    def __call__(self, image: np.ndarray, rows: np.ndarray, encoded: bool, mode: str,
                 rng: np.random.Generator, what: str):
        """``(image uint8 (C, H, W) after resize, rows after every stage and the mirror)``.

        Args:
            image: the record's decoded image.
            rows: its boxes (see ``ssd_sampler``).
            encoded: the record was an encoded image (JPEG/PNG), not raw pixels.
            mode: how it was decoded ("native", "color", "gray"): re-encodings decode so too.
            rng: this item's generator.
            what: names the record in errors.
        """
        try:
            return self._run(image, rows, encoded, mode, rng, what)
        except ModelError as e:
            raise e.located(file=self.net_file, layer=self.layer) from None

    def _run(self, image, rows, encoded, mode, rng, what):
        if not encoded and self.random_geometry:
            raise ModelError(f"{what} is a raw (not encoded) Datum: the SSD fork's TRAIN "
                             "augmentation (distort, expand, batch_sampler crops, resize) runs "
                             "on encoded records only; write the LMDB with encoded images")
        if self.distort is not None:
            image = jpeg_roundtrip(ssd_distort.distort(image, self.distort, rng), mode, what)
        if self.expand is not None:
            image, rows = self._expand(image, rows, rng, mode, what)
        if self.samplers:
            samples = generate_samples(rows[:, 2:6], self.samplers, rng)
            if samples:
                box = samples[int(rng.integers(len(samples)))]
                top, left, h, w = crop_window(box, *image.shape[1:])
                image = jpeg_roundtrip(image[:, top:top + h, left:left + w], mode, what)
                rows = project(rows, np.clip(box, 0, 1).astype(F32), self.emit)
        flip = self.mirror and bool(rng.integers(2))
        if self.resize is not None:
            hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
            image = np.ascontiguousarray(
                cv_resize_linear(hwc, *self.resize).reshape(*self.resize, -1).transpose(2, 0, 1))
        rows = project(rows, WHOLE, self.emit, mirror=flip)
        return image, rows, flip

    def _expand(self, image, rows, rng, mode, what):
        """``ExpandImage``: with probability ``prob``, the image placed at a random whole-pixel
        offset on a canvas ``ratio`` times larger, filled with the mean values (0 without)."""
        prob, most = self.expand
        if uniform(rng, 0.0, 1.0) > F32(prob) or abs(most - 1.0) < 1e-2:
            return image, rows
        ratio = uniform(rng, 1.0, most)
        c, h, w = image.shape
        H, W = int(F32(h) * ratio), int(F32(w) * ratio)
        top = int(np.floor(uniform(rng, 0.0, float(H - h))))
        left = int(np.floor(uniform(rng, 0.0, float(W - w))))
        canvas = np.zeros((c, H, W), np.uint8)
        if self.fill:
            if len(self.fill) not in (1, c):
                raise ModelError(f"{len(self.fill)} mean_value entries for "
                                 f"{c}-channel images; give 1 or {c}")
            fill = self.fill * c if len(self.fill) == 1 else self.fill
            canvas[:] = np.clip(np.rint(fill), 0, 255).astype(np.uint8)[:, None, None]
        canvas[:, top:top + h, left:left + w] = image
        fl, ft, fw, fh = F32(left), F32(top), F32(w), F32(h)  # the fork's float arithmetic
        src = np.array([-fl / fw, -ft / fh, (F32(W) - fl) / fw, (F32(H) - ft) / fh], F32)
        return jpeg_roundtrip(canvas, mode, what), project(rows, src, self.emit)
