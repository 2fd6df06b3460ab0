"""SSD's ``MultiBoxLoss`` in torch, as the SSD fork computes it (``multibox_loss_layer.cpp``).

Bottoms: ``loc`` (N, P*4), ``conf`` (N, P*C), ``priorbox`` (1, 2, P*4: boxes then variances)
and ``label`` (1, 1, G, 8 rows ``[item, label, instance, xmin, ymin, xmax, ymax,
difficult]``, as AnnotatedData gives; ``item`` -1 is a placeholder row). Per image:

1. the ground truths (difficult ones dropped unless ``use_difficult_gt``) are matched to
   the priors (``use_prior_for_matching``) or to the boxes the loc predictions decode to:
   bipartite first, then ``PER_PREDICTION`` above ``overlap_threshold``
   (:func:`.ssd_boxes.match`);
2. ``MAX_NEGATIVE`` mining takes, among unmatched priors whose best overlap is below
   ``neg_overlap``, the ``int(num_pos * neg_pos_ratio)`` with the largest confidence loss
   against the background (ties to the lower prior: the fork's ``std::sort`` leaves their
   order open); an image without ground truth gives neither positives nor negatives;
3. loc loss: SmoothL1 (or L2 / 2) between the matched predictions and the encoded truths,
   summed; conf loss: softmax (or logistic) cross-entropy over the matched priors (their
   truth's label) and the mined negatives (background), summed; without mining, over every
   prior of every image, background where unmatched;
4. loss = ``loc_weight`` x loc / normaliser + conf / normaliser, normaliser per
   ``loss_param`` (VALID: the number of matches; FULL: N x P; BATCH_SIZE: N; NONE: 1; at
   least 1).

Matching and mining are decisions, taken without gradient on float32 copies; the loss is
then an ordinary function of the selected predictions, so autograd gives the fork's
``Backward_cpu``: gradient only at matched (loc) and matched-or-mined (conf) entries,
zero elsewhere, none to the priors or labels.

Refused by name (a one-line ModelError before training starts): ``share_location: false``,
``mining_type: HARD_EXAMPLE``, ``conf_loss_type: LOGISTIC`` without mining, an ``nms_param`` with ``nms_threshold > 0`` (mining with
NMS), ``do_neg_mining`` contradicting ``mining_type``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ModelError
from ..layers.caffe_geometry import sub
from . import ssd_boxes
from .torch_losses import normalization
from .torch_ops import op

_FLT_MIN = float(np.finfo(np.float32).tiny)
_ENUMS = {"loc_loss_type": ("L2", "SMOOTH_L1"), "conf_loss_type": ("SOFTMAX", "LOGISTIC"),
          "match_type": ("BIPARTITE", "PER_PREDICTION"),
          "mining_type": ("NONE", "MAX_NEGATIVE", "HARD_EXAMPLE")}
_DEFAULTS = {"loc_loss_type": "SMOOTH_L1", "conf_loss_type": "SOFTMAX",
             "match_type": "PER_PREDICTION", "mining_type": "MAX_NEGATIVE"}


@dataclass(frozen=True)
class MultiBoxSettings:
    """``multibox_loss_param`` with the fork's defaults, enums as names."""

    num_classes: int
    loc_loss: str
    conf_loss: str
    loc_weight: float
    match_type: str
    overlap_threshold: float
    use_prior_for_matching: bool
    background: int
    use_difficult_gt: bool
    mining: str
    neg_pos_ratio: float
    neg_overlap: float
    code_type: str
    variance_in_target: bool
    agnostic: bool
    ignore_cross_boundary: bool
    bp_inside: bool
    normalization: str
    propagate: tuple


def _enum(p: dict, key: str, names) -> str:
    value = p.get(key, _DEFAULTS.get(key))
    if isinstance(value, int) and not isinstance(value, bool):
        if key == "code_type":
            value = ssd_boxes.CODE_TYPES.get(value, value)
        elif 0 <= value < len(names):
            value = names[value]
    if value not in names:
        raise ModelError(f"multibox_loss_param.{key} {value!r} is not one of {', '.join(names)}")
    return value


def _refusal(p: dict) -> str:
    """Why these settings cannot be trained ("" when they can)."""
    if not p.get("share_location", True):
        return "multibox_loss_param.share_location: false is not supported (per-class loc " \
               "predictions; the fork mines negatives only with shared locations)"
    mining = _enum(p, "mining_type", _ENUMS["mining_type"])
    if mining == "HARD_EXAMPLE":
        return "multibox_loss_param.mining_type: HARD_EXAMPLE is not supported (MAX_NEGATIVE " \
               "and NONE are)"
    nms = p.get("nms_param") or {}
    if mining != "NONE" and float(nms.get("nms_threshold", 0.3)) > 0 and "nms_param" in p:
        return "multibox_loss_param.nms_param (NMS among mined negatives) is not supported"
    if "do_neg_mining" in p and bool(p["do_neg_mining"]) != (mining != "NONE"):
        return f"multibox_loss_param.do_neg_mining {p['do_neg_mining']} contradicts " \
               f"mining_type {mining} (the fork refuses this pair)"
    if mining == "NONE" and _enum(p, "conf_loss_type", _ENUMS["conf_loss_type"]) == "LOGISTIC":
        return "multibox_loss_param.conf_loss_type: LOGISTIC with mining_type: NONE is not " \
               "supported (the fork steps through its targets per prior, not per prior x class)"
    if "num_classes" not in p or int(p["num_classes"]) < 1:
        return "multibox_loss_param.num_classes must be given and at least 1"
    return ""


def settings(layer) -> MultiBoxSettings:
    """The layer's settings; a one-line ModelError for ones the fork or this trainer refuses."""
    p = sub(layer, "multibox_loss_param")
    why = _refusal(p)
    if why:
        raise ModelError(why)
    s = MultiBoxSettings(
        num_classes=int(p["num_classes"]),
        loc_loss=_enum(p, "loc_loss_type", _ENUMS["loc_loss_type"]),
        conf_loss=_enum(p, "conf_loss_type", _ENUMS["conf_loss_type"]),
        loc_weight=float(p.get("loc_weight", 1.0)),
        match_type=_enum(p, "match_type", _ENUMS["match_type"]),
        overlap_threshold=float(p.get("overlap_threshold", 0.5)),
        use_prior_for_matching=bool(p.get("use_prior_for_matching", True)),
        background=int(p.get("background_label_id", 0)),
        use_difficult_gt=bool(p.get("use_difficult_gt", True)),
        mining=_enum(p, "mining_type", _ENUMS["mining_type"]),
        neg_pos_ratio=float(p.get("neg_pos_ratio", 3.0)),
        neg_overlap=float(p.get("neg_overlap", 0.5)),
        code_type=_enum({"code_type": p.get("code_type", "CORNER")}, "code_type",
                        tuple(ssd_boxes.CODE_TYPES.values())),
        variance_in_target=bool(p.get("encode_variance_in_target", False)),
        agnostic=bool(p.get("map_object_to_agnostic", False)),
        ignore_cross_boundary=bool(p.get("ignore_cross_boundary_bbox", False)),
        bp_inside=bool(p.get("bp_inside", False)),
        normalization=normalization(layer, "VALID"),
        propagate=_propagate(layer))
    if s.conf_loss == "SOFTMAX" and not 0 <= s.background < s.num_classes:
        raise ModelError(f"background_label_id {s.background} is not a class of {s.num_classes} "
                         "(SOFTMAX needs it within [0, num_classes))")
    if s.agnostic and s.num_classes != 2:
        raise ModelError(f"map_object_to_agnostic needs num_classes 2, not {s.num_classes}")
    return s


def _propagate(layer) -> tuple:
    """(loc, conf) of ``propagate_down``: also whether each term enters the loss (the fork
    adds a term only where it backpropagates); default both."""
    given = layer.params.get("propagate_down")
    if given is None or given == []:
        return (True, True)
    given = given if isinstance(given, list) else [given]
    if len(given) != len(layer.bottoms):
        raise ModelError(f"{len(given)} propagate_down value(s) for {len(layer.bottoms)} bottoms")
    if any(bool(x) for x in given[2:]):
        raise ModelError("propagate_down to the priorbox or label bottom: the fork cannot "
                         "backpropagate there")
    return (bool(given[0]), bool(given[1]))


def _check(layer) -> str:
    try:
        return _refusal(sub(layer, "multibox_loss_param"))
    except ModelError as e:
        return str(e)


def ground_truth(label: np.ndarray, s: MultiBoxSettings, batch: int) -> list[np.ndarray]:
    """``GetGroundTruth``: per image, rows ``(label, xmin, ymin, xmax, ymax)`` float32."""
    rows = np.asarray(label, np.float32).reshape(-1)
    if rows.size % 8:
        raise ModelError(f"the label blob holds {rows.size} values, not rows of 8 "
                         "[item, label, instance, xmin, ymin, xmax, ymax, difficult]")
    rows = rows.reshape(-1, 8)
    per = [[] for _ in range(batch)]
    for r in rows:
        item = int(r[0])
        if item == -1:
            continue
        if not 0 <= item < batch:
            raise ModelError(f"the label blob names image {item} of a batch of {batch}")
        if int(r[1]) == s.background:
            raise ModelError(f"a ground-truth box of image {item} has the background label "
                             f"{s.background}")
        if not s.use_difficult_gt and bool(r[7]):
            continue
        per[item].append((int(r[1]), *r[3:7]))
    return [np.asarray(p, np.float32).reshape(-1, 5) for p in per]


def _conf_loss_rows(conf: torch.Tensor, target: torch.Tensor, s: MultiBoxSettings):
    """Per-row confidence loss of ``conf`` (R, C) against class ``target`` (R,) (mining)."""
    if s.conf_loss == "SOFTMAX":
        logp = torch.log_softmax(conf, dim=1).gather(1, target[:, None])[:, 0]
        return -torch.clamp(logp, min=math.log(_FLT_MIN))
    onehot = torch.nn.functional.one_hot(target, conf.shape[1]).to(conf.dtype)
    return _logistic(conf, onehot).sum(dim=1)


def _logistic(x, t):
    return torch.clamp(x, min=0) - x * t + torch.log1p(torch.exp(-torch.abs(x)))


@dataclass
class Selection:
    """What matching and mining chose for one batch (indices into the flattened predictions).

    Attributes:
        pos_image, pos_prior, pos_gt: per match, the image, the prior and the truth's row in
            that image's ground truth.
        neg_image, neg_prior: per mined negative.
        targets: per match, the encoded loc target (float32, (M, 4)).
        labels: per match, its class.
    """

    pos_image: np.ndarray
    pos_prior: np.ndarray
    pos_gt: np.ndarray
    neg_image: np.ndarray
    neg_prior: np.ndarray
    targets: np.ndarray
    labels: np.ndarray


def select(loc: np.ndarray, conf: torch.Tensor, priors: np.ndarray, variances: np.ndarray,
           gts: list[np.ndarray], s: MultiBoxSettings) -> Selection:
    """Matching (``FindMatches``) and mining (``MineHardExamples``) for a batch: ``loc``
    float32 (N, P, 4), ``conf`` a detached tensor (N, P, C)."""
    pos_i, pos_p, pos_g, neg_i, neg_p, targets, labels = [], [], [], [], [], [], []
    for i, gt in enumerate(gts):
        if len(gt) == 0:
            continue  # the fork skips the image: no matches, no negatives
        boxes = priors if s.use_prior_for_matching else ssd_boxes.decode(
            priors, variances, loc[i], s.code_type, s.variance_in_target)
        index, overlap = ssd_boxes.match(boxes, gt[:, 1:], s.match_type == "BIPARTITE",
                                         s.overlap_threshold, s.ignore_cross_boundary)
        matched = np.flatnonzero(index > -1)
        pos_i.append(np.full(len(matched), i))
        pos_p.append(matched)
        pos_g.append(index[matched])
        lab = gt[index[matched], 0].astype(np.int64)
        labels.append(np.full_like(lab, s.background + 1) if s.agnostic else lab)
        targets.append(ssd_boxes.encode(priors[matched], variances[matched],
                                         gt[index[matched], 1:], s.code_type,
                                         s.variance_in_target))
        if s.mining == "MAX_NEGATIVE":
            eligible = np.flatnonzero((index == -1) & (overlap < np.float32(s.neg_overlap)))
            count = min(int(np.float32(len(matched)) * np.float32(s.neg_pos_ratio)),
                        len(eligible))
            if count > 0:
                target = torch.full((len(eligible),), s.background, dtype=torch.int64,
                                    device=conf.device)
                loss = _conf_loss_rows(conf[i][torch.as_tensor(eligible, device=conf.device)]
                                       .float(), target, s).cpu().numpy()
                order = np.lexsort((eligible, -loss.astype(np.float64)))[:count]
                neg_i.append(np.full(count, i))
                neg_p.append(np.sort(eligible[order]))
    cat = (lambda xs, dt=np.int64: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    return Selection(cat(pos_i), cat(pos_p), cat(pos_g), cat(neg_i), cat(neg_p),
                     np.concatenate(targets).astype(np.float32).reshape(-1, 4) if targets
                     else np.zeros((0, 4), np.float32), cat(labels))


def _check_shapes(loc, conf, prior, s: MultiBoxSettings):
    n = loc.shape[0]
    if prior.numel() % 8 or prior.shape[0] != 1:
        raise ModelError(f"the priorbox bottom has shape {tuple(prior.shape)}; it must be "
                         "(1, 2, P*4): the boxes, then their variances")
    p = prior.numel() // 8
    if loc.numel() != n * p * 4:
        raise ModelError(f"loc predictions hold {loc.numel() // max(n, 1)} values per image "
                         f"but {p} priors need {p * 4}")
    if conf.shape[0] != n or conf.numel() != n * p * s.num_classes:
        raise ModelError(f"conf predictions hold {conf.numel() // max(conf.shape[0], 1)} values "
                         f"per image but {p} priors x {s.num_classes} classes need "
                         f"{p * s.num_classes}")
    return n, p


def multibox_loss(layer, inputs, ctx):
    """The loss (see module doc) as a 0-d tensor whose gradient is the fork's."""
    s = settings(layer)
    loc_t, conf_t, prior_t, label_t = inputs[:4]
    n, p = _check_shapes(loc_t, conf_t, prior_t, s)
    c = s.num_classes
    loc = loc_t.reshape(n, p, 4)
    conf = conf_t.reshape(n, p, c)
    prior = prior_t.detach().to("cpu", torch.float32).reshape(2, p, 4).numpy()
    gts = ground_truth(label_t.detach().to("cpu").numpy(), s, n)
    sel = select(loc.detach().to("cpu", torch.float32).numpy(), conf.detach(), prior[0],
                 prior[1], gts, s)
    matches = len(sel.pos_prior)
    dev = loc.device
    mode = s.normalization
    norm = float(max(1, {"FULL": n * p, "VALID": matches, "BATCH_SIZE": n, "NONE": 1}[mode]))
    # zero, yet tied to both predictions: a batch with nothing matched gives zero gradients
    total = 0.0 * (loc.sum() + conf.sum())
    if s.propagate[0] and matches:
        pi, pp = (torch.as_tensor(a, device=dev) for a in (sel.pos_image, sel.pos_prior))
        pred = loc[pi, pp]
        target = torch.as_tensor(sel.targets, device=dev, dtype=loc.dtype)
        if s.bp_inside:  # a coordinate of the matched box outside the image: no gradient
            box = prior[0][sel.pos_prior] if s.use_prior_for_matching else ssd_boxes.decode(
                prior[0][sel.pos_prior], prior[1][sel.pos_prior],
                loc.detach().cpu().float().numpy()[sel.pos_image, sel.pos_prior],
                s.code_type, s.variance_in_target)
            outside = torch.as_tensor((box < 0) | (box > 1), device=dev)
            pred = torch.where(outside, target, pred)
        if s.variance_in_target:
            var = torch.as_tensor(prior[1][sel.pos_prior], device=dev, dtype=loc.dtype)
            pred, target = pred / var, target / var
        d = pred - target
        if s.loc_loss == "SMOOTH_L1":
            ad = torch.abs(d)
            loc_loss = torch.where(ad < 1.0, 0.5 * d * d, ad - 0.5).sum()
        else:
            loc_loss = (d * d).sum() / 2.0
        total = total + s.loc_weight * loc_loss / norm
    if s.propagate[1]:
        total = total + _conf_total(conf, sel, s, gts) / norm
    return [total]


def _conf_total(conf: torch.Tensor, sel: Selection, s: MultiBoxSettings, gts) -> torch.Tensor:
    """The summed confidence loss over the rows the fork feeds its conf loss layer."""
    n, p, c = conf.shape
    dev = conf.device
    if s.mining != "NONE":
        image = np.concatenate([sel.pos_image, sel.neg_image])
        prior = np.concatenate([sel.pos_prior, sel.neg_prior])
        cls = np.concatenate([sel.labels, np.full(len(sel.neg_prior), s.background)])
        if len(image) == 0:
            return conf.new_zeros(())
        rows = conf[torch.as_tensor(image, device=dev), torch.as_tensor(prior, device=dev)]
        negative = np.concatenate([np.zeros(len(sel.pos_prior), bool),
                                   np.ones(len(sel.neg_prior), bool)])
    else:  # every prior of every image: background unless matched
        rows = conf.reshape(n * p, c)
        cls = np.full(n * p, s.background, np.int64)
        cls[sel.pos_image * p + sel.pos_prior] = sel.labels
        negative = np.ones(n * p, bool)
        negative[sel.pos_image * p + sel.pos_prior] = False
    target = torch.as_tensor(cls, device=dev, dtype=torch.int64)
    if s.conf_loss == "SOFTMAX":
        logp = torch.log_softmax(rows, dim=1).gather(1, target[:, None])[:, 0]
        floored = logp + (torch.clamp(logp, min=math.log(_FLT_MIN)) - logp).detach()
        return -floored.sum()
    # LOGISTIC: the fork fills the targets with the background id, sets the matched truth's
    # class to 1 and, for mined negatives only, the background's class to 1
    t = torch.full(rows.shape, float(s.background), dtype=rows.dtype, device=dev)
    pos = torch.as_tensor(~negative, device=dev)
    t[pos, target[pos]] = 1.0
    if s.mining != "NONE" and 0 <= s.background < c:
        t[torch.as_tensor(negative, device=dev), s.background] = 1.0
    return _logistic(rows, t).sum()


op("caffe", "MultiBoxLoss", check=_check)(multibox_loss)
