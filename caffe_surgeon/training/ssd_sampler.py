"""The SSD fork's random crops: ``batch_sampler`` (``src/caffe/util/sampler.cpp``) and how
boxes follow a crop, an expansion or a mirror (``data_transformer.cpp``
``TransformAnnotation``, ``bbox_util.cpp`` ``ProjectBBox`` / ``MeetEmitConstraint``).

Boxes are float32 rows ``(group_label, instance_id, xmin, ymin, xmax, ymax, difficult)`` in
normalised coordinates, the AnnotatedDatum's annotations in their stored order (group by
group). Random draws come from a ``numpy.random.Generator`` in the fork's order; the fork's
own generator (Boost mt19937 under ``caffe_rng``) is not reproduced, so samples agree with
the fork in distribution and in every rule, not draw by draw.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .ssd_boxes import box_size, coverage, jaccard

F32 = np.float32
WHOLE = np.array([0, 0, 1, 1], F32)
_CONSTRAINTS = ("min_jaccard_overlap", "max_jaccard_overlap", "min_sample_coverage",
                "max_sample_coverage", "min_object_coverage", "max_object_coverage")


def uniform(rng: np.random.Generator, low: float, high: float) -> np.float32:
    """``caffe_rng_uniform(1, low, high)``: ``low + u (high - low)`` in float32, u in [0, 1)
    (Boost's formula, so a range that rounding made a hair negative still gives ``low``)."""
    return F32(F32(rng.random()) * (F32(high) - F32(low)) + F32(low))


def check_batch_samplers(samplers: list) -> list[dict]:
    """The layer's ``batch_sampler`` list, checked as ``SampleBBox`` CHECKs it (a one-line
    ModelError naming the sampler and the numbers instead of a crash)."""
    out = []
    for k, b in enumerate(samplers):
        s = b.get("sampler", {})
        lo, hi = float(s.get("min_scale", 1.0)), float(s.get("max_scale", 1.0))
        alo, ahi = float(s.get("min_aspect_ratio", 1.0)), float(s.get("max_aspect_ratio", 1.0))
        if not 0 < lo <= hi <= 1:
            raise ModelError(f"batch_sampler {k} has min_scale {lo:g}, max_scale "
                             f"{hi:g}; the fork needs 0 < min_scale <= max_scale <= 1")
        if not 0 < alo <= ahi:
            raise ModelError(f"batch_sampler {k} has min_aspect_ratio {alo:g}, "
                             f"max_aspect_ratio {ahi:g}; the fork needs 0 < min <= max")
        unknown = set(b.get("sample_constraint", {})) - set(_CONSTRAINTS)
        if unknown:
            raise ModelError(f"batch_sampler {k} sample_constraint has "
                             f"{sorted(unknown)[0]}, not one of {', '.join(_CONSTRAINTS)}")
        out.append(b)
    return out


def sample_boxes(sampler: dict, u: np.ndarray) -> np.ndarray:
    """``SampleBBox`` for each row of uniforms ``u`` (T, 4) in [0, 1): scale and aspect ratio
    uniform in their ranges, the ratio clamped to [scale^2, 1 / scale^2] so the box fits,
    then a uniform position inside the image. (T, 4) float32 boxes."""
    u = np.asarray(u, F32)

    def between(k, low, high):  # caffe_rng_uniform's low + u (high - low), in float32
        return (u[:, k] * (F32(high) - F32(low)) + F32(low)).astype(F32)

    scale = between(0, sampler.get("min_scale", 1.0), sampler.get("max_scale", 1.0))
    ratio = between(1, sampler.get("min_aspect_ratio", 1.0), sampler.get("max_aspect_ratio", 1.0))
    ratio = np.minimum(np.maximum(ratio, scale * scale), F32(1) / (scale * scale)).astype(F32)
    w, h = (scale * np.sqrt(ratio)).astype(F32), (scale / np.sqrt(ratio)).astype(F32)
    x0 = (u[:, 2] * (F32(1) - w)).astype(F32)
    y0 = (u[:, 3] * (F32(1) - h)).astype(F32)
    return np.stack([x0, y0, x0 + w, y0 + h], -1).astype(F32)


def satisfies(box: np.ndarray, objects: np.ndarray, constraint: dict) -> bool:
    """``SatisfySampleConstraint`` for one box (see :func:`satisfied`)."""
    return bool(satisfied(np.asarray(box, F32)[None], objects, constraint)[0])


def satisfied(boxes: np.ndarray, objects: np.ndarray, constraint: dict) -> np.ndarray:
    """``SatisfySampleConstraint`` per box of ``boxes`` (T, 4): true without a constraint;
    else true when some object passes the *first* constraint group present (jaccard overlap,
    then sample coverage, then object coverage).

    That is what the fork's loop computes: it sets ``found`` as soon as an object passes a
    group and never clears it, so a later group failing for that object (``continue``)
    still ends in ``return found``. Worked example: a jaccard range that holds and a sample
    coverage range that fails for the same, only, object still satisfies."""
    groups = [g for g in ("jaccard_overlap", "sample_coverage", "object_coverage")
              if f"min_{g}" in constraint or f"max_{g}" in constraint]
    boxes = np.asarray(boxes, F32).reshape(-1, 4)
    if not groups:
        return np.ones(len(boxes), bool)
    objects = np.asarray(objects, F32).reshape(-1, 4)
    if len(objects) == 0:
        return np.zeros(len(boxes), bool)
    first = groups[0]
    value = {"jaccard_overlap": lambda: jaccard(boxes, objects),
             "sample_coverage": lambda: coverage(boxes, objects),
             "object_coverage": lambda: coverage(objects, boxes).T}[first]()
    ok = np.ones(value.shape, bool)
    if f"min_{first}" in constraint:
        ok &= ~(value < F32(constraint[f"min_{first}"]))
    if f"max_{first}" in constraint:
        ok &= ~(value > F32(constraint[f"max_{first}"]))
    return ok.any(axis=1)


def generate_samples(objects: np.ndarray, samplers: list[dict],
                     rng: np.random.Generator) -> list[np.ndarray]:
    """``GenerateBatchSamples``: for each sampler that uses the original image, ``max_trials``
    draws, keeping in draw order those that satisfy its constraint, at most ``max_sample``.
    (All trials are drawn at once; the fork stops drawing at ``max_sample``, which changes
    which numbers later draws get, not their distribution.)"""
    found = []
    for b in samplers:
        trials = int(b.get("max_trials", 100))
        if not b.get("use_original_image", True) or trials <= 0:
            continue
        boxes = sample_boxes(b.get("sampler", {}), rng.random((trials, 4)))
        keep = np.flatnonzero(satisfied(boxes, objects, b.get("sample_constraint", {})))
        if "max_sample" in b:
            keep = keep[:max(int(b["max_sample"]), 0)]
        found.extend(boxes[k] for k in keep)
    return found


def clip(box: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(box, F32), F32(0), F32(1)).astype(F32)


def crop_window(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """``CropImage``'s pixel window of a sampled box: ``(top, left, height, width)``, the
    clipped box scaled to pixels and truncated (``static_cast<int>``) as the fork does."""
    c = clip(box)
    x0, y0 = F32(c[0] * F32(width)), F32(c[1] * F32(height))
    x1, y1 = F32(c[2] * F32(width)), F32(c[3] * F32(height))
    return int(y0), int(x0), int(F32(y1 - y0)), int(F32(x1 - x0))


def meets_emit(src: np.ndarray, boxes: np.ndarray, emit: dict | None) -> np.ndarray:
    """``MeetEmitConstraint`` per box (all true without an ``emit_constraint``): CENTER keeps
    a box whose centre lies in ``src``; MIN_OVERLAP one whose share inside ``src`` is above
    ``emit_overlap``."""
    if emit is None or len(boxes) == 0:
        return np.ones(len(boxes), bool)
    kind = emit.get("emit_type", "CENTER")
    if kind in ("CENTER", 0):
        cx = (boxes[:, 0] + boxes[:, 2]) / F32(2)
        cy = (boxes[:, 1] + boxes[:, 3]) / F32(2)
        return (cx >= src[0]) & (cx <= src[2]) & (cy >= src[1]) & (cy <= src[3])
    if kind in ("MIN_OVERLAP", 1):
        return coverage(boxes, src[None])[:, 0] > F32(emit.get("emit_overlap", 0.0))
    raise ModelError(f"emit_constraint.emit_type {kind!r} is not CENTER or MIN_OVERLAP")


def project(rows: np.ndarray, src: np.ndarray, emit: dict | None = None,
            mirror: bool = False) -> np.ndarray:
    """``TransformAnnotation`` without resize: the boxes of ``rows`` seen in the window
    ``src`` (normalised coordinates of the old image), clipped to it; a box is dropped when
    it fails the emit constraint or nothing of it is left (``ProjectBBox``); ``mirror``
    flips x last."""
    rows = np.asarray(rows, F32).reshape(-1, 7)
    b = rows[:, 2:6]
    src = np.asarray(src, F32)
    keep = meets_emit(src, b, emit)
    keep &= ~((b[:, 0] >= src[2]) | (b[:, 2] <= src[0]) | (b[:, 1] >= src[3]) | (b[:, 3] <= src[1]))
    w, h = F32(src[2] - src[0]), F32(src[3] - src[1])
    proj = np.stack([(b[:, 0] - src[0]) / w, (b[:, 1] - src[1]) / h,
                     (b[:, 2] - src[0]) / w, (b[:, 3] - src[1]) / h], -1).astype(F32)
    proj = clip(proj)
    keep &= box_size(proj) > 0
    out = rows[keep].copy()
    out[:, 2:6] = proj[keep]
    if mirror:
        out[:, 2], out[:, 4] = F32(1) - out[:, 4], F32(1) - out[:, 2]
    return out
