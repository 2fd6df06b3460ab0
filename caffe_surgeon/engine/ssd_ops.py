"""SSD layers (weiliu89's fork): Normalize, PriorBox, DetectionOutput.

DetectionOutput follows the fork's ``detection_output_layer.cpp`` at test time:
CENTER_SIZE/CORNER decoding with variances, per-class score threshold, top_k,
greedy NMS with adaptive ``eta``, then ``keep_top_k`` over all classes. Its
rows are ``[image_id, label, score, xmin, ymin, xmax, ymax]`` in normalized
coordinates; with no detection it emits one row of -1, as Caffe does.
OpenCV's extra ``clip`` flag clips decoded boxes to [0, 1].
"""
from __future__ import annotations

import copy
import math

import numpy as np

from ..errors import ModelError
from ..detection.ssd_map import detection_evaluate as match_detections
from ..layers.caffe_geometry import sub
from .kernels import channelwise
from .kernels.nms import nms_greedy
from .ops import op

F32 = np.float32


@op("caffe", "Normalize")
def normalize(layer, inputs, ctx):
    p = sub(layer, "norm_param")
    eps = float(p.get("eps", 1e-10))
    if not p.get("across_spatial", True) and inputs[0].ndim >= 2 and \
            layer.weights["scale"].size in (1, inputs[0].shape[1]):
        return [channelwise.l2_normalize_channels(inputs[0], eps, layer.weights["scale"])]
    x = inputs[0].astype(np.float64)
    if p.get("across_spatial", True):
        norm = np.sqrt((x * x).reshape(x.shape[0], -1).sum(axis=1) + eps).reshape(-1, 1, 1, 1)
    else:
        norm = np.sqrt((x * x).sum(axis=1, keepdims=True) + eps)
    s = layer.weights["scale"].astype(np.float64)
    scale = s[0] if s.size == 1 else s.reshape(1, -1, 1, 1)
    return [(x / norm * scale).astype(F32)]


def prior_boxes(p: dict, layer_hw, image_hw) -> np.ndarray:
    """(2, H*W*num_priors*4): corner boxes then variances, as PriorBoxLayer::Forward_cpu."""
    lh, lw = layer_hw
    ih = int(p.get("img_h", p.get("img_size", 0))) or image_hw[0]
    iw = int(p.get("img_w", p.get("img_size", 0))) or image_hw[1]
    sh = float(p.get("step_h", p.get("step", 0))) or ih / lh
    sw = float(p.get("step_w", p.get("step", 0))) or iw / lw
    offset = float(p.get("offset", 0.5))
    mins = [float(v) for v in p.get("min_size", [])]
    maxs = [float(v) for v in p.get("max_size", [])]
    if maxs and len(maxs) != len(mins):
        raise ModelError(f"PriorBox has {len(mins)} min_size but {len(maxs)} max_size values")
    ratios = [1.0]
    for ar in p.get("aspect_ratio", []):
        if any(abs(ar - r) < 1e-6 for r in ratios):
            continue
        ratios.append(float(ar))
        if p.get("flip", True):
            ratios.append(1.0 / ar)
    sizes = []  # (w, h) per prior in the fork's order
    for i, m in enumerate(mins):
        sizes.append((m, m))
        if maxs:
            s = math.sqrt(m * maxs[i])
            sizes.append((s, s))
        for r in ratios[1:]:
            sizes.append((m * math.sqrt(r), m / math.sqrt(r)))
    sizes = np.array(sizes, np.float64)
    cy, cx = np.meshgrid((np.arange(lh) + offset) * sh, (np.arange(lw) + offset) * sw, indexing="ij")
    cx = cx.reshape(-1, 1)
    cy = cy.reshape(-1, 1)
    boxes = np.stack([(cx - sizes[:, 0] / 2) / iw, (cy - sizes[:, 1] / 2) / ih,
                      (cx + sizes[:, 0] / 2) / iw, (cy + sizes[:, 1] / 2) / ih], axis=-1)
    boxes = boxes.reshape(-1).astype(F32)
    if p.get("clip", False):
        boxes = np.clip(boxes, 0.0, 1.0)
    var = [float(v) for v in p.get("variance", [])] or [0.1]
    if len(var) not in (1, 4):
        raise ModelError(f"PriorBox needs 1 or 4 variances, got {len(var)}")
    variances = np.resize(np.array(var * (4 if len(var) == 1 else 1), F32), boxes.size)
    return np.stack([boxes, variances])


@op("caffe", "PriorBox")
def prior_box(layer, inputs, ctx):
    # a function of the params and the two spatial sizes only: computed once per size
    feat, image = inputs[0], inputs[1]
    p = sub(layer, "prior_box_param")
    key = ("priorbox", layer.name, tuple(feat.shape[2:]), tuple(image.shape[2:]))
    hit = ctx.cache.get(key)
    if hit is None or hit[0] != p:
        hit = ctx.cache[key] = (copy.deepcopy(p), prior_boxes(p, feat.shape[2:], image.shape[2:]))
    return [hit[1][None].copy()]  # a copy: a later in-place layer may overwrite its input


def nms_fast(boxes, scores, score_threshold, nms_threshold, top_k, eta=1.0) -> list[int]:
    """Caffe SSD's ApplyNMSFast: indices kept, highest score first (slow twin:
    ``kernels.reference.nms_fast``)."""
    return nms_greedy(boxes, nms_candidates(scores, score_threshold, top_k), nms_threshold, eta)


def nms_candidates(scores, score_threshold, top_k) -> np.ndarray:
    """The boxes ApplyNMSFast considers, best first: above the threshold, the top_k best."""
    order = np.flatnonzero(scores > score_threshold)
    if -1 < top_k < len(order):
        # only the top_k best can be kept: a partition first (ties with the k-th kept, so
        # the stable sort of what is left is the start of the stable sort of all)
        neg = -scores[order]
        order = order[neg <= np.partition(neg, top_k - 1)[top_k - 1]]
    order = order[np.argsort(-scores[order], kind="stable")]
    return order[:top_k] if top_k > -1 else order


def decode_boxes(loc, priors, variances, code_type, encoded_in_target):
    p = priors.astype(np.float64)
    v = variances.astype(np.float64) if not encoded_in_target else np.ones_like(p)
    loc = loc.astype(np.float64)
    if code_type == "CORNER":
        return p + loc * v
    if code_type == "CENTER_SIZE":
        pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
        pcx, pcy = (p[:, 0] + p[:, 2]) / 2, (p[:, 1] + p[:, 3]) / 2
        cx = v[:, 0] * loc[:, 0] * pw + pcx
        cy = v[:, 1] * loc[:, 1] * ph + pcy
        w = np.exp(v[:, 2] * loc[:, 2]) * pw
        h = np.exp(v[:, 3] * loc[:, 3]) * ph
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    if code_type == "CORNER_SIZE":
        pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
        return p + loc * v * np.stack([pw, ph, pw, ph], axis=1)
    raise ModelError(f"unknown code_type {code_type}")


@op("caffe", "DetectionOutput")
def detection_output(layer, inputs, ctx):
    p = sub(layer, "detection_output_param")
    loc, conf, prior = inputs[0], inputs[1], inputs[2]
    num_classes = int(p.get("num_classes", 0))
    if num_classes <= 0:
        raise ModelError("DetectionOutput needs num_classes")
    if not p.get("share_location", True):
        raise ModelError("DetectionOutput with share_location: false is not supported")
    n = loc.shape[0]
    priors = prior.reshape(2, -1, 4)
    num_priors = priors.shape[1]
    loc = loc.reshape(n, num_priors, 4)
    conf = conf.reshape(n, num_priors, num_classes)
    nms = p.get("nms_param", {})
    nms_thr, top_k = float(nms.get("nms_threshold", 0.3)), int(nms.get("top_k", -1))
    eta = float(nms.get("eta", 1.0))
    conf_thr = float(p.get("confidence_threshold", -np.inf))
    keep_top_k = int(p.get("keep_top_k", -1))
    background = int(p.get("background_label_id", 0))
    rows = []
    for i in range(n):
        scores = {c: conf[i, :, c].astype(np.float64) for c in range(num_classes) if c != background}
        orders = {c: nms_candidates(s, conf_thr, top_k) for c, s in scores.items()}
        # only the candidates' boxes are ever read: decoding all priors (res10: 8732, against
        # its top_k of 400) was a third of this layer
        need = np.unique(np.concatenate([np.empty(0, np.int64), *orders.values()]))
        boxes = np.zeros((num_priors, 4))
        decoded = decode_boxes(loc[i, need], priors[0, need], priors[1, need],
                               p.get("code_type", "CORNER"), p.get("variance_encoded_in_target", False))
        boxes[need] = np.clip(decoded, 0.0, 1.0) if p.get("clip", False) else decoded
        found = []
        for c, order in orders.items():
            for j in nms_greedy(boxes, order, nms_thr, eta):
                found.append((scores[c][j], c, j))
        if keep_top_k > -1 and len(found) > keep_top_k:
            found.sort(key=lambda t: -t[0])
            found = found[:keep_top_k]
        found.sort(key=lambda t: (t[1], -t[0]))  # the fork emits per class, best first
        rows += [[i, c, s, *boxes[j]] for s, c, j in found]
    if not rows:
        return [np.full((1, 1, 1, 7), -1, F32)]
    return [np.array(rows, F32).reshape(1, 1, -1, 7)]


@op("caffe", "DetectionEvaluate")
def detection_evaluate(layer, inputs, ctx):
    """Rows of one batch. Caffe's layer with a ``name_size_file`` matches in pixels of
    each original image, counted across the batches of a test pass; that count belongs
    to the pass, so :class:`~caffe_surgeon.evaluation.CaffeEvaluator` re-scores such a
    layer from ``DetectionOutput`` itself, and this op matches normalized boxes."""
    p = sub(layer, "detection_evaluate_param")
    resize = p.get("resize_param")
    if resize and str((resize[-1] if isinstance(resize, list) else resize)
                      .get("resize_mode", "WARP")) not in ("WARP", "1"):
        raise ModelError("DetectionEvaluate resize_param: only WARP maps boxes back to the "
                         "original image here")
    if "num_classes" not in p:
        raise ModelError("DetectionEvaluate needs num_classes")
    overlap = float(p.get("overlap_threshold", 0.5))
    if overlap <= 0:
        raise ModelError(f"DetectionEvaluate overlap_threshold must be > 0, got {overlap}")
    return [match_detections(inputs[0], inputs[1], int(p["num_classes"]),
                             int(p.get("background_label_id", 0)), overlap,
                             bool(p.get("evaluate_difficult_gt", True)))]
