"""AlexeyAB ``[yolo]`` training deltas against hand computation.

No AlexeyAB binary exists here, so every expected value is computed in this file, in
float64, from the formulas of AlexeyAB's ``src/yolo_layer.c`` / ``src/box.c`` (59596d78) as
published: the box decode, the MSE targets, and the IoU gradients. The (G)IoU part of
``dx_box_iou`` is the derivative of (G)IoU with respect to the box's edges, taken here by
central differences (w and h get twice that: AlexeyAB does not halve them); the DIoU
distance term and CIoU's ``alpha * v`` term are written out as AlexeyAB writes them (they
are not the derivatives of the values ``box_diou`` / ``box_ciou`` return). Our code runs in
float32, so agreement is to 1e-4 relative.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from assets import FIXTURES, need_module, zoo

torch = need_module("torch")

from caffe_surgeon.darknet.reader import read_darknet  # noqa: E402
from caffe_surgeon.errors import ModelError  # noqa: E402
from caffe_surgeon.graph import Layer  # noqa: E402
from caffe_surgeon.training.darknet_trainer import DarknetTrainer  # noqa: E402
from caffe_surgeon.training.torch_yolo_loss import yolo_deltas  # noqa: E402
from caffe_surgeon.training.yolo_alexeyab import yolo_head_check, yolo_head_deltas  # noqa: E402

TRAIN = FIXTURES / "darknet" / "train"
V4TINY = TRAIN / "yolov4_tiny_shaped.cfg"
GRID, NET, CLASSES = 4, 64, 2
ANCHORS = np.array([[8, 10], [20, 16], [40, 44]], np.float64)
RTOL = 1e-4


def head(**options) -> Layer:
    """A 3-anchor, 2-class AlexeyAB [yolo] (options as the cfg reader gives them)."""
    params = {"classes": "2", "num": "3", "mask": "0,1,2", "ignore_thresh": ".7",
              "truth_thresh": "1", "anchors": "8,10, 20,16, 40,44", "nms_kind": "greedynms"}
    params.update({k: str(v) for k, v in options.items()})
    return Layer(name="yolo_9", type="yolo", bottoms=["conv_8"], tops=["yolo_9"], params=params)


def outputs(seed: int, scale_x_y: float = 1.0, new_coords: bool = False) -> np.ndarray:
    """An activated head output (1, 3*7, 4, 4): x, y = sigmoid * s - (s - 1)/2, objectness
    and classes sigmoid; w, h raw (exp decode) or in (0, 1) as after a logistic conv
    (``new_coords``)."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(0, 1, (3, 5 + CLASSES, GRID, GRID))
    out = 1 / (1 + np.exp(-raw))
    out[:, 0:2] = out[:, 0:2] * scale_x_y - (scale_x_y - 1) / 2
    if not new_coords:
        out[:, 2:4] = raw[:, 2:4] * .5
    return out.reshape(1, -1, GRID, GRID).astype(np.float32)


def truths_of(*rows) -> np.ndarray:
    t = np.zeros((1, 90, 5), np.float32)
    t[0, :len(rows)] = rows
    return t


def entry(out, n, k, j, i):
    return float(out[0, n * (5 + CLASSES) + k, j, i])


def decoded(out, n, j, i, new_coords=False):
    """get_yolo_box, float64: (i + x)/W, (j + y)/H, anchor-scaled sizes."""
    x, y, tw, th = (entry(out, n, k, j, i) for k in range(4))
    if new_coords:
        w, h = tw * tw * 4 * ANCHORS[n, 0] / NET, th * th * 4 * ANCHORS[n, 1] / NET
    else:
        w, h = math.exp(tw) * ANCHORS[n, 0] / NET, math.exp(th) * ANCHORS[n, 1] / NET
    return np.array([(i + x) / GRID, (j + y) / GRID, w, h])


def corners(b):
    return b[0] - b[2] / 2, b[0] + b[2] / 2, b[1] - b[3] / 2, b[1] + b[3] / 2


def iou64(a, b) -> float:
    al, ar, at, ab = corners(a)
    bl, br, bt, bb = corners(b)
    iw, ih = min(ar, br) - max(al, bl), min(ab, bb) - max(at, bt)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def enclosing(a, b):
    al, ar, at, ab = corners(a)
    bl, br, bt, bb = corners(b)
    return max(ar, br) - min(al, bl), max(ab, bb) - min(at, bt)


def giou64(a, b) -> float:
    cw, ch = enclosing(a, b)
    inter_union = a[2] * a[3] + b[2] * b[3]
    al, ar, at, ab = corners(a)
    bl, br, bt, bb = corners(b)
    iw, ih = min(ar, br) - max(al, bl), min(ab, bb) - max(at, bt)
    union = inter_union - (iw * ih if iw > 0 and ih > 0 else 0.0)
    return iou64(a, b) - (cw * ch - union) / (cw * ch)


def diagonal2(a, b) -> float:
    cw, ch = enclosing(a, b)
    return cw * cw + ch * ch


def gradient(f, box, step=1e-7):
    """d f / d (x, y, w, h) by central differences."""
    g = np.zeros(4)
    for k in range(4):
        hi, lo = box.copy(), box.copy()
        hi[k] += step
        lo[k] -= step
        g[k] = (f(hi) - f(lo)) / (2 * step)
    return g


def iou_loss_delta(kind, pred, truth, raw_wh, normalizer, new_coords=False):
    """delta_yolo_box's (dx, dy, dw, dh) for iou_loss=kind, by the published formulas."""
    value = giou64 if kind == "giou" else iou64
    d = gradient(lambda b: value(b, truth), pred) * np.array([1, 1, 2, 2])
    if kind in ("diou", "ciou"):
        s = (pred[0] - truth[0]) ** 2 + (pred[1] - truth[1]) ** 2
        c = diagonal2(pred, truth)
        dc = gradient(lambda b: diagonal2(b, truth), pred)
        d += [(2 * (truth[0] - pred[0]) * c - dc[0] * s) / c ** 2,
              (2 * (truth[1] - pred[1]) * c - dc[1] * s) / c ** 2,
              dc[2] * s / c ** 2, dc[3] * s / c ** 2]
    if kind == "ciou":
        gap = math.atan(truth[2] / truth[3]) - math.atan(pred[2] / pred[3])
        v = 4 / math.pi ** 2 * gap * gap
        alpha = v / (1 - iou64(pred, truth) + v + 1e-6)
        d[2] += alpha * 8 / math.pi ** 2 * gap * pred[3]
        d[3] -= alpha * 8 / math.pi ** 2 * gap * pred[2]
    if not new_coords:
        d[2:] *= np.exp(raw_wh)
    return d * normalizer


def best_anchor(truth) -> int:
    """The anchor of all whose shape overlaps the truth's most (centres aligned)."""
    shape = [iou64(np.array([0, 0, a[0] / NET, a[1] / NET]), np.array([0, 0, *truth[2:4]]))
             for a in ANCHORS]
    return int(np.argmax(shape))


def background(out, truths, ignore=.7, obj_norm=1.0, scale_new_coords=False):
    """Step 1's objectness delta of every prediction: obj_norm * (0 - obj), 0 where the best
    IoU with a truth exceeds ignore_thresh and some class output exceeds .25."""
    want = np.zeros((3, GRID, GRID))
    truths = [t for t in truths[0] if t[0] != 0]
    for n in range(3):
        for j in range(GRID):
            for i in range(GRID):
                box = decoded(out, n, j, i, scale_new_coords)
                best = max(iou64(box, t[:4].astype(np.float64)) for t in truths)
                classes = [entry(out, n, 5 + c, j, i) for c in range(CLASSES)]
                ignored = best > ignore and max(classes) > .25
                want[n, j, i] = 0 if ignored else obj_norm * -entry(out, n, 4, j, i)
    return want


def delta_at(delta, n, k, j, i):
    return float(delta[0, n * (5 + CLASSES) + k, j, i])


TRUTH = (0.40, 0.55, 0.45, 0.5, 1)          # cell (1, 2); anchor 2 fits best


# ------------------------------------------------------------------- scale_x_y and MSE
def test_scale_x_y_boxes_decode_from_the_scaled_output_and_mse_deltas_pull_it():
    """x, y deltas are target minus the *scaled* output, times (2 - w*h) and iou_normalizer
    (0.75 unless set), and the ignore rule decodes boxes from the scaled output."""
    layer = head(scale_x_y=1.2, ignore_thresh=.3)
    out = outputs(4, scale_x_y=1.2)
    truths = truths_of(TRUTH)
    delta, cost = yolo_head_deltas(layer, out, truths, NET, NET)
    t = np.array(TRUTH[:4], np.float64)
    i, j, n = int(t[0] * GRID), int(t[1] * GRID), best_anchor(t)
    assert (i, j, n) == (1, 2, 2)
    scale = (2 - t[2] * t[3]) * .75
    target = [t[0] * GRID - i, t[1] * GRID - j, math.log(t[2] * NET / ANCHORS[n, 0]),
              math.log(t[3] * NET / ANCHORS[n, 1])]
    got = [delta_at(delta, n, k, j, i) for k in range(4)]
    want = [scale * (target[k] - entry(out, n, k, j, i)) for k in range(4)]
    np.testing.assert_allclose(got, want, rtol=RTOL)
    assert delta_at(delta, n, 4, j, i) == pytest.approx(1 - entry(out, n, 4, j, i), rel=RTOL)
    classes = [delta_at(delta, n, 5 + c, j, i) for c in range(2)]
    np.testing.assert_allclose(classes, [0 - entry(out, n, 5, j, i), 1 - entry(out, n, 6, j, i)],
                               rtol=RTOL)
    want_obj = background(out, truths, ignore=.3)
    want_obj[n, j, i] = 1 - entry(out, n, 4, j, i)
    got_obj = delta.reshape(3, 7, GRID, GRID)[:, 4]
    np.testing.assert_allclose(got_obj, want_obj, rtol=RTOL, atol=1e-7)
    assert (want_obj == 0).sum() >= 1             # the ignore rule acted somewhere
    assert cost == pytest.approx(float(np.sum(delta.astype(np.float64) ** 2)), rel=1e-5)


def test_the_ignore_decision_uses_the_scale_x_y_decode():
    """A test of the test: decoding without scale_x_y ignores other predictions, so the
    reference above would notice a decode that skipped it."""
    out = outputs(4, scale_x_y=1.2)
    truths = truths_of(TRUTH)
    unscaled = out.copy().reshape(3, 7, GRID, GRID)
    unscaled[:, 0:2] = (unscaled[:, 0:2] + .1) / 1.2          # sigmoid back from the scaled
    a = background(out, truths, ignore=.3)
    b = background(unscaled.reshape(out.shape), truths, ignore=.3)
    assert ((a == 0) != (b == 0)).any()


# ------------------------------------------------------------------- IoU losses
#: (seed, truth): a prediction taller than the image (the enclosing box's height is its
#: own), and one that sticks out of the truth on one side in x and in y
IOU_CASES = [(2, TRUTH), (18, (0.33, 0.6, 0.45, 0.5, 1))]


@pytest.mark.parametrize("seed, truth", IOU_CASES, ids=["tall", "one-sided"])
@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_iou_loss_box_deltas_are_alexeyabs_gradient_times_exp_and_iou_normalizer(kind, seed,
                                                                                   truth):
    layer = head(iou_loss=kind, iou_normalizer=.07)
    out = outputs(seed)
    delta, _ = yolo_head_deltas(layer, out, truths_of(truth), NET, NET)
    t = np.array(truth[:4], np.float64)
    n, j, i = 2, 2, 1
    pred = decoded(out, n, j, i)
    assert 0.2 < iou64(pred, t) < 0.9  # overlapping, away from every kink
    dc = gradient(lambda b: diagonal2(b, t), pred)
    assert seed == 2 or (abs(dc[0]) > .5 and abs(dc[1]) > .5)  # the enclosing box moves
    raw_wh = np.array([entry(out, n, 2, j, i), entry(out, n, 3, j, i)])
    want = iou_loss_delta(kind, pred, t, raw_wh, .07)
    got = [delta_at(delta, n, k, j, i) for k in range(4)]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7)


def test_the_four_iou_losses_give_different_deltas():
    """A test of the test: the kinds' reference formulas disagree on this case."""
    out = outputs(2)
    t = np.array(TRUTH[:4], np.float64)
    pred, raw = decoded(out, 2, 2, 1), np.array([entry(out, 2, 2, 2, 1), entry(out, 2, 3, 2, 1)])
    found = [iou_loss_delta(k, pred, t, raw, 1) for k in ("iou", "giou", "diou", "ciou")]
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(found[a] - found[b]).max() > 1e-3, (a, b)


def test_ciou_with_new_coords_drops_the_exp_factor_and_uses_squared_sizes():
    layer = head(iou_loss="ciou", iou_normalizer=.05, new_coords=1, scale_x_y=2.0)
    out = outputs(3, scale_x_y=2.0, new_coords=True)
    delta, _ = yolo_head_deltas(layer, out, truths_of(TRUTH), NET, NET)
    t = np.array(TRUTH[:4], np.float64)
    pred = decoded(out, 2, 2, 1, new_coords=True)
    want = iou_loss_delta("ciou", pred, t, None, .05, new_coords=True)
    got = [delta_at(delta, 2, k, 2, 1) for k in range(4)]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7)


def test_mse_with_new_coords_targets_the_square_root_size():
    layer = head(new_coords=1, iou_normalizer=1)
    out = outputs(3, new_coords=True)
    delta, _ = yolo_head_deltas(layer, out, truths_of(TRUTH), NET, NET)
    t = np.array(TRUTH[:4], np.float64)
    tw = math.sqrt(t[2] * NET / (4 * ANCHORS[2, 0]))
    want = (2 - t[2] * t[3]) * (tw - entry(out, 2, 2, 2, 1))
    assert delta_at(delta, 2, 2, 2, 1) == pytest.approx(want, rel=RTOL)


def test_max_delta_clips_each_iou_box_delta_and_leaves_mse_alone():
    out = outputs(2)
    t = np.array(TRUTH[:4], np.float64)
    pred, raw = decoded(out, 2, 2, 1), np.array([entry(out, 2, 2, 2, 1), entry(out, 2, 3, 2, 1)])
    unclipped = iou_loss_delta("ciou", pred, t, raw, 5.0)
    limit = float(np.sort(np.abs(unclipped))[1])          # clips two or three of the four
    delta, _ = yolo_head_deltas(head(iou_loss="ciou", iou_normalizer=5, max_delta=limit),
                                out, truths_of(TRUTH), NET, NET)
    got = [delta_at(delta, 2, k, 2, 1) for k in range(4)]
    np.testing.assert_allclose(got, np.clip(unclipped, -limit, limit), rtol=RTOL, atol=1e-7)
    assert (np.abs(unclipped) > limit * 1.01).sum() >= 2
    mse, _ = yolo_head_deltas(head(iou_normalizer=5, max_delta=1e-3), out, truths_of(TRUTH),
                              NET, NET)
    assert abs(delta_at(mse, 2, 2, 2, 1)) > 1e-2


# ------------------------------------------------------------------- normalizers
def test_iou_normalizer_scales_box_deltas_and_obj_normalizer_objectness():
    out = outputs(4)
    t = np.array(TRUTH[:4], np.float64)
    base, _ = yolo_head_deltas(head(iou_normalizer=1), out, truths_of(TRUTH), NET, NET)
    scaled, _ = yolo_head_deltas(head(iou_normalizer=.3, obj_normalizer=.4), out,
                                 truths_of(TRUTH), NET, NET)
    for k in range(4):
        assert delta_at(scaled, 2, k, 2, 1) == pytest.approx(.3 * delta_at(base, 2, k, 2, 1),
                                                             rel=RTOL)
    assert delta_at(scaled, 2, 4, 2, 1) == pytest.approx(.4 * (1 - entry(out, 2, 4, 2, 1)),
                                                         rel=RTOL)
    want_bg = background(out, truths_of(TRUTH), obj_norm=.4)
    got_bg = scaled.reshape(3, 7, GRID, GRID)[:, 4]
    np.testing.assert_allclose(got_bg[0], want_bg[0], rtol=RTOL, atol=1e-7)
    assert t[2] * t[3] < 1


def test_cls_normalizer_acts_only_with_counters_per_class_as_in_alexeyabs_code():
    """delta_yolo_class multiplies the truth class's delta by multiplier * cls_normalizer
    only when counters_per_class is set; multipliers are max count / count, clipped at
    max_delta, and weight the box and objectness deltas too."""
    out = outputs(5)
    truths = truths_of(TRUTH)
    plain, _ = yolo_head_deltas(head(), out, truths, NET, NET)
    normalized, _ = yolo_head_deltas(head(cls_normalizer=.5), out, truths, NET, NET)
    np.testing.assert_array_equal(plain, normalized)
    weighted, _ = yolo_head_deltas(head(cls_normalizer=.5, counters_per_class="40,10",
                                        iou_loss="ciou", max_delta=3), out, truths, NET, NET)
    m = 3.0                                            # 40 / 10 = 4, clipped at max_delta 3
    assert delta_at(weighted, 2, 6, 2, 1) == pytest.approx(m * .5 * (1 - entry(out, 2, 6, 2, 1)),
                                                           rel=RTOL)
    assert delta_at(weighted, 2, 5, 2, 1) == pytest.approx(-entry(out, 2, 5, 2, 1), rel=RTOL)
    assert delta_at(weighted, 2, 4, 2, 1) == pytest.approx(m * (1 - entry(out, 2, 4, 2, 1)),
                                                           rel=RTOL)
    t = np.array(TRUTH[:4], np.float64)
    pred, raw = decoded(out, 2, 2, 1), np.array([entry(out, 2, 2, 2, 1), entry(out, 2, 3, 2, 1)])
    want = np.clip(iou_loss_delta("ciou", pred, t, raw, .75 * m), -3, 3)
    np.testing.assert_allclose([delta_at(weighted, 2, k, 2, 1) for k in range(4)], want,
                               rtol=RTOL, atol=1e-7)


def test_label_smoothing_and_focal_loss_class_deltas():
    out = outputs(6)
    truths = truths_of(TRUTH)
    p = [entry(out, 2, 5 + c, 2, 1) for c in range(2)]
    smooth, _ = yolo_head_deltas(head(label_smooth_eps=.1), out, truths, NET, NET)
    want = [0 * .9 + .05 - p[0], 1 * .9 + .05 - p[1]]
    np.testing.assert_allclose([delta_at(smooth, 2, 5 + c, 2, 1) for c in range(2)], want,
                               rtol=RTOL)
    focal, _ = yolo_head_deltas(head(focal_loss=1), out, truths, NET, NET)
    pt = p[1]
    grad = -(1 - pt) * (2 * pt * math.log(pt) + pt - 1)
    want = [(0 - p[0]) * .5 * grad, (1 - p[1]) * .5 * grad]
    np.testing.assert_allclose([delta_at(focal, 2, 5 + c, 2, 1) for c in range(2)], want,
                               rtol=RTOL)


# ------------------------------------------------------------------- iou_thresh
def test_iou_thresh_trains_every_anchor_of_the_mask_that_overlaps_the_truth_enough():
    """Anchor shapes (8,10), (20,16), (40,44) against a 0.45 x 0.5 truth on 64 pixels: only
    anchor 2 is best; anchor 1 overlaps it by .129 and anchor 0 by .049, so iou_thresh=.1
    adds anchor 1 alone, with the same truth's box, objectness and class deltas."""
    t = np.array(TRUTH[:4], np.float64)
    shape = [iou64(np.array([0, 0, a[0] / NET, a[1] / NET]), np.array([0, 0, *t[2:]]))
             for a in ANCHORS]
    assert shape[0] < .1 < shape[1] < shape[2]
    out = outputs(7)
    delta, _ = yolo_head_deltas(head(iou_thresh=.1, iou_normalizer=1), out, truths_of(TRUTH),
                                NET, NET)
    for n, trained in ((0, False), (1, True), (2, True)):
        obj = delta_at(delta, n, 4, 2, 1)
        if trained:
            scale = 2 - t[2] * t[3]
            target_w = math.log(t[2] * NET / ANCHORS[n, 0])
            assert delta_at(delta, n, 2, 2, 1) == pytest.approx(
                scale * (target_w - entry(out, n, 2, 2, 1)), rel=RTOL)
            assert obj == pytest.approx(1 - entry(out, n, 4, 2, 1), rel=RTOL)
            assert delta_at(delta, n, 6, 2, 1) == pytest.approx(1 - entry(out, n, 6, 2, 1),
                                                               rel=RTOL)
        else:
            assert all(delta_at(delta, n, k, 2, 1) == 0 for k in range(4))
    single, _ = yolo_head_deltas(head(iou_normalizer=1), out, truths_of(TRUTH), NET, NET)
    assert all(delta_at(single, 1, k, 2, 1) == 0 for k in range(4))


def test_two_truths_of_two_classes_in_one_cell_accumulate_then_average_their_box_deltas():
    """With iou_thresh < 1, box deltas add up per truth and are divided by the number of
    classes with a positive delta; the second truth sets only its own class."""
    a, b = (0.40, 0.55, 0.45, 0.5, 1), (0.45, 0.60, 0.5, 0.45, 0)
    out = outputs(8)
    delta, _ = yolo_head_deltas(head(iou_thresh=.9, iou_normalizer=1), out, truths_of(a, b),
                                NET, NET)
    assert best_anchor(np.array(a)) == best_anchor(np.array(b)) == 2
    want = np.zeros(4)
    for t in (np.array(a[:4], np.float64), np.array(b[:4], np.float64)):
        target = [t[0] * GRID - 1, t[1] * GRID - 2, math.log(t[2] * NET / ANCHORS[2, 0]),
                  math.log(t[3] * NET / ANCHORS[2, 1])]
        want += [(2 - t[2] * t[3]) * (target[k] - entry(out, 2, k, 2, 1)) for k in range(4)]
    np.testing.assert_allclose([delta_at(delta, 2, k, 2, 1) for k in range(4)], want / 2,
                               rtol=RTOL)
    np.testing.assert_allclose([delta_at(delta, 2, 5 + c, 2, 1) for c in range(2)],
                               [1 - entry(out, 2, 5, 2, 1), 1 - entry(out, 2, 6, 2, 1)],
                               rtol=RTOL)


def test_objectness_smooth_keeps_the_first_objectness_delta_of_a_positive():
    """objectness_smooth: a positive's objectness is set only where step 1 left 0, and an
    ignored prediction is pulled to its IoU when that is the larger delta."""
    out = outputs(9)
    layer = head(objectness_smooth=1, ignore_thresh=.2, obj_normalizer=.5)
    delta, _ = yolo_head_deltas(layer, out, truths_of(TRUTH), NET, NET)
    t = np.array(TRUTH[:4], np.float64)
    checked = 0
    for n in range(3):
        for j in range(GRID):
            for i in range(GRID):
                obj = entry(out, n, 4, j, i)
                iou = iou64(decoded(out, n, j, i), t)
                matched = iou if max(entry(out, n, 5 + c, j, i) for c in range(2)) > .25 else 0
                want = .5 * -obj
                if matched > .2 and .5 * (matched - obj) > want:
                    want = .5 * (matched - obj)
                    checked += 1
                assert delta_at(delta, n, 4, j, i) == pytest.approx(want, rel=RTOL, abs=1e-7)
    assert checked >= 1


# ------------------------------------------------------------------- cost and fork
def test_iou_loss_cost_is_normalized_mean_iou_loss_plus_squared_non_box_deltas():
    out = outputs(2)
    layer = head(iou_loss="ciou", iou_normalizer=.07, obj_normalizer=.8)
    delta, cost = yolo_head_deltas(layer, out, truths_of(TRUTH), NET, NET)
    t = np.array(TRUTH[:4], np.float64)
    iou = iou64(decoded(out, 2, 2, 1), t)
    nonbox = delta.reshape(3, 7, GRID, GRID)[:, 4:].astype(np.float64)
    assert cost == pytest.approx(.07 * (1 - iou) + .8 * np.sum(nonbox ** 2), rel=1e-5)
    _, total = yolo_head_deltas(head(iou_loss="ciou", iou_normalizer=.07, obj_normalizer=.8,
                                     show_details=0), out, truths_of(TRUTH), NET, NET)
    assert total == pytest.approx(float(np.sum(delta.astype(np.float64) ** 2)), rel=1e-5)


def test_a_section_with_pjreddies_options_only_keeps_pjreddies_deltas_bit_for_bit():
    layer = head()
    del layer.params["nms_kind"]
    out = outputs(10)
    truths = truths_of(TRUTH, (0.7, 0.2, 0.2, 0.3, 0))
    mine, cost = yolo_head_deltas(layer, out, truths, NET, NET)
    theirs, their_cost = yolo_deltas(layer, out, truths, NET, NET)
    assert np.array_equal(mine, theirs) and cost == their_cost
    alexeyab, _ = yolo_head_deltas(head(), out, truths, NET, NET)  # nms_kind: AlexeyAB's cfg
    assert delta_at(alexeyab, 2, 0, 2, 1) == pytest.approx(.75 * delta_at(theirs, 2, 0, 2, 1),
                                                           rel=RTOL)


@pytest.mark.parametrize("cfg", ["yolov4.cfg", "yolov4-tiny.cfg", "yolov4-tiny-3l.cfg",
                                 "yolov7-tiny.cfg"])
def test_every_yolo_option_of_the_zoos_alexeyab_detectors_trains(cfg):
    g = read_darknet(zoo(f"darknet/alexeyab/{cfg}"))
    heads = [layer for layer in g.layers if layer.type == "yolo"]
    assert heads and all(yolo_head_check(layer) == "" for layer in heads)


# ------------------------------------------------------------------- refusals
@pytest.mark.parametrize("option, needles", [
    ("delta_normalizer=2", ["delta_normalizer=2", "the build decides"]),
    ("embedding_layer=-3", ["embedding_layer", "[contrastive]"]),
    ("map=data/9k.map", ["map="]),
    ("iou_loss=smoothl1", ["iou_loss=smoothl1", "mse, iou, giou, diou, ciou"]),
    ("iou_thresh_kind=mse", ["iou_thresh_kind=mse"]),
    ("counters_per_class=5,6,7", ["counters_per_class has 3 values and classes=2"]),
    ("yolo_point=center", ["yolo_point", "pjreddie's or AlexeyAB's"]),
    ("max=200", ["max=200", "90 truth rows"]),
])
def test_alexeyab_options_not_reproduced_are_refused_by_name_in_one_line(tmp_path, option,
                                                                          needles):
    key = option.split("=")[0]
    text = re.sub(rf"(?m)^{key}\s*=.*\n", "", V4TINY.read_text())  # the first one counts
    text = text.replace("beta_nms=0.6", f"beta_nms=0.6\n{option}", 1)
    cfg = tmp_path / V4TINY.name
    cfg.write_text(text)
    with pytest.raises(ModelError) as e:
        DarknetTrainer(read_darknet(cfg))
    msg = str(e.value)
    assert "\n" not in msg and "[yolo] cannot be trained" in msg, msg
    assert all(n in msg for n in needles), msg


# ------------------------------------------------------------------- the trainer
def _with_options(base, options, path, logistic_heads=False):
    """``base`` with ``options`` set in every [yolo] (replacing the same keys); with
    ``logistic_heads`` the convolution before each head gets activation=logistic, as
    new_coords cfgs have it."""
    blocks = base.read_text().split("\n[")
    keys = {o.split("=")[0] for o in options}
    for k, block in enumerate(blocks):
        lines = block.splitlines()
        if lines[0] == "yolo]":
            lines = lines[:1] + list(options) + [x for x in lines[1:]
                                                 if x.split("=")[0].strip() not in keys]
            if logistic_heads:
                blocks[k - 1] = blocks[k - 1].replace("activation=linear", "activation=logistic")
        blocks[k] = "\n".join(lines)
    path.write_text("\n[".join(blocks) + "\n")
    return path


def _batches(cfg, seed):
    from test_darknet_training import random_batches, random_weights
    weights = random_weights(cfg, cfg.with_suffix(".weights"), seed=seed)
    images, truths = random_batches(cfg, 1, seed=seed + 1)
    return read_darknet(cfg, weights), images[0], truths[0]


@pytest.mark.parametrize("options, logistic", [
    ((), False),
    (("iou_thresh=0.213", "max_delta=5", "scale_x_y=1.1"), False),
    (("scale_x_y=2.0", "new_coords=1", "objectness_smooth=1", "obj_normalizer=1.0",
      "iou_normalizer=0.05", "cls_normalizer=0.5", "iou_thresh=0.2", "max_delta=2"), True),
], ids=["yolov4-tiny", "yolov4-heads", "yolov7-tiny-heads"])
def test_a_yolov4_tiny_shaped_net_trains_with_the_loss_falling(tmp_path, options, logistic):
    cfg = _with_options(V4TINY, options, tmp_path / "net.cfg", logistic)
    graph, images, truths = _batches(cfg, seed=21)
    trainer = DarknetTrainer(graph)
    losses = [trainer.train(images, truths) for _ in range(8)]
    assert losses[-1] < .6 * losses[0], losses
    again = DarknetTrainer(read_darknet(cfg, cfg.with_suffix(".weights")))
    assert [again.train(images, truths) for _ in range(2)] == losses[:2]  # deterministic


def test_scale_x_y_head_inference_matches_opencv_and_the_training_forward(tmp_path):
    """Training changed no forward: the engine's scale_x_y heads agree with OpenCV's
    Darknet importer, and the trainer's torch forward (what the deltas read) with the
    engine."""
    need_module("cv2")
    import oracle_darknet as od
    od.check_against_opencv(V4TINY, tmp_path)
    graph, images, _ = _batches(_with_options(V4TINY, (), tmp_path / "n.cfg"), seed=3)
    from caffe_surgeon.engine import Executor
    from caffe_surgeon.training.torch_darknet_structure import yolo
    heads = [la for la in graph.layers if la.type == "yolo"]
    names = [n for la in heads for n in (la.name, la.bottoms[0])]
    res = Executor(graph).run({"data": images[:1]}, outputs=[], layer_outputs=names)
    ours = {k.split(":")[0]: v for k, v in res.items()}
    for layer in heads:
        assert float(layer.params["scale_x_y"]) != 1
        trained = yolo(layer, [torch.as_tensor(ours[layer.bottoms[0]])], None)[0]
        np.testing.assert_allclose(trained.numpy(), ours[layer.name], rtol=1e-6, atol=1e-6)
