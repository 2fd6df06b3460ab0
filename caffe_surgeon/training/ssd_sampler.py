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


def sample_box(sampler: dict, rng: np.random.Generator) -> np.ndarray:
    """``SampleBBox``: scale and aspect ratio uniform in their ranges, the ratio clamped to
    [scale^2, 1 / scale^2] so the box fits, then a uniform position inside the image."""
    scale = uniform(rng, sampler.get("min_scale", 1.0), sampler.get("max_scale", 1.0))
    ratio = uniform(rng, sampler.get("min_aspect_ratio", 1.0), sampler.get("max_aspect_ratio", 1.0))
    ratio = min(max(ratio, F32(scale * scale)), F32(1 / (scale * scale)))
    w, h = F32(scale * np.sqrt(ratio)), F32(scale / np.sqrt(ratio))
    x0, y0 = uniform(rng, 0.0, F32(1) - w), uniform(rng, 0.0, F32(1) - h)
    return np.array([x0, y0, x0 + w, y0 + h], F32)


def satisfies(box: np.ndarray, objects: np.ndarray, constraint: dict) -> bool:
    """``SatisfySampleConstraint``: no constraint, or some object for which a checked group
    (jaccard, then sample coverage, then object coverage) holds, with the fork's loop: once
    one group held for any object, the answer is yes."""
    groups = [(k[4:], k) for k in _CONSTRAINTS if k in constraint]
    if not groups:
        return True
    has = {g: any(k.endswith(g) for _, k in groups) for g in
           ("jaccard_overlap", "sample_coverage", "object_coverage")}
    if len(objects) == 0:
        return False
    b = box[None]
    values = {"jaccard_overlap": jaccard(b, objects)[0],
              "sample_coverage": coverage(b, objects)[0],
              "object_coverage": coverage(objects, b)[:, 0]}
    found = False
    for i in range(len(objects)):
        for group in ("jaccard_overlap", "sample_coverage", "object_coverage"):
            if not has[group]:
                continue
            v = values[group][i]
            lo, hi = constraint.get(f"min_{group}"), constraint.get(f"max_{group}")
            if (lo is not None and v < F32(lo)) or (hi is not None and v > F32(hi)):
                break  # the fork's `continue` to the next object
            found = True
        else:
            if found:
                return True
    return found


def generate_samples(objects: np.ndarray, samplers: list[dict],
                     rng: np.random.Generator) -> list[np.ndarray]:
    """``GenerateBatchSamples``: for each sampler that uses the original image, up to
    ``max_trials`` draws, keeping those that satisfy its constraint, at most ``max_sample``."""
    found_all = []
    for b in samplers:
        if not b.get("use_original_image", True):
            continue
        found = 0
        for _ in range(int(b.get("max_trials", 100))):
            if "max_sample" in b and found >= int(b["max_sample"]):
                break
            box = sample_box(b.get("sampler", {}), rng)
            if satisfies(box, objects, b.get("sample_constraint", {})):
                found += 1
                found_all.append(box)
    return found_all


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
