"""MultiBoxLoss against cases worked out by hand from the SSD fork's rules (matching,
mining, encoding, SmoothL1 / softmax, normalisation), written out here as plain arithmetic,
plus autograd gradient checks and the refusals by name."""
from __future__ import annotations

import math

import numpy as np
import pytest

from assets import need_module

torch = need_module("torch")

import caffe_surgeon as cs  # noqa: E402
from caffe_surgeon.errors import ModelError  # noqa: E402
from caffe_surgeon.training.module import CaffeModule  # noqa: E402
from caffe_surgeon.training.torch_multibox import multibox_loss  # noqa: E402

# Six priors, one truth of class 1 at (0.05, 0.05, 0.45, 0.55) (area 0.2). Overlaps by hand:
#   P0 (0, 0, .5, .5):      inter .4 x .45 = .18, union .25 + .2 - .18 = .27  -> .6667
#   P1 (.5, 0, 1, .5):      apart                                              -> 0
#   P2 (0, .5, .5, 1):      inter .4 x .05 = .02, union .43                    -> .0465
#   P3 (.5, .5, 1, 1):      apart                                              -> 0
#   P4 (0, 0, .4, .6):      inter .35 x .5 = .175, union .24 + .2 - .175 = .265 -> .6604
#   P5 (.25, .25, .75, .75): inter .2 x .3 = .06, union .39                    -> .1538
PRIORS = [(0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5), (0.0, 0.5, 0.5, 1.0),
          (0.5, 0.5, 1.0, 1.0), (0.0, 0.0, 0.4, 0.6), (0.25, 0.25, 0.75, 0.75)]
VAR = (0.1, 0.1, 0.2, 0.2)
GT = (0.05, 0.05, 0.45, 0.55)
LOC = [(0.1, -0.2, 0.3, 0.5), (0.0, 0.0, 0.0, 0.0), (0.3, 0.3, 0.3, 0.3),
       (-0.4, 0.2, 0.0, 0.1), (1.5, 0.0, -0.1, 2.0), (0.0, 0.7, 0.0, 0.0)]
# background losses -log p0: P1 log(1 + 2e^-2) = .24, P2 log(1 + e + e^2) = 2.41,
# P3 log 3 = 1.10, P5 log(1 + e^1.5 + e^.5) = 1.96: hardest first P2, P5, P3, P1
CONF = [(0.0, 1.0, 0.0), (2.0, 0.0, 0.0), (0.0, 1.0, 2.0), (1.0, 1.0, 1.0), (0.5, 0.0, 0.0),
        (-0.5, 1.0, 0.0)]

# CENTER_SIZE targets with variances (by hand): P0 centre (.25, .25) size .5 x .5, truth
# centre (.25, .30) size .4 x .5; P4 centre (.2, .3) size .4 x .6
T0 = (0.0, 0.05 / 0.5 / 0.1, math.log(0.4 / 0.5) / 0.2, 0.0)
T4 = (0.05 / 0.4 / 0.1, 0.0, 0.0, math.log(0.5 / 0.6) / 0.2)


def _smooth_l1(pred, target):
    out = 0.0
    for a, b in zip(pred, target):
        d = abs(a - b)
        out += 0.5 * d * d if d < 1 else d - 0.5
    return out


def _ce(row, label):
    return -math.log(math.exp(row[label]) / sum(math.exp(v) for v in row))


def _layer(**mp):
    params = {"num_classes": 3, "background_label_id": 0, "code_type": "CENTER_SIZE",
              "overlap_threshold": 0.5, "neg_pos_ratio": 1.0, "neg_overlap": 0.5}
    loss_param = mp.pop("loss_param", None)
    params.update(mp)
    p = {"multibox_loss_param": params}
    if loss_param:
        p["loss_param"] = loss_param
    return cs.Layer("mbox_loss", "MultiBoxLoss", ["loc", "conf", "prior", "label"],
                    ["mbox_loss"], p)


def _feeds(images=1, loc=LOC, conf=CONF, gts=((0, 1, GT),), dtype=np.float32):
    p = len(PRIORS)
    prior = np.array([np.ravel(PRIORS), np.tile(VAR, p)], dtype)[None]
    rows = [(item, lab, 0, *box, 0) for item, lab, box in gts] or [(-1, -1, -1, 0, 0, 0, 0, 0)]
    return {"loc": np.tile(np.ravel(loc), (images, 1)).astype(dtype),
            "conf": np.tile(np.ravel(conf), (images, 1)).astype(dtype),
            "prior": prior, "label": np.array(rows, dtype)[None, None]}


def _run(layer, feeds):
    g = cs.Graph("caffe", name="t", inputs={k: tuple(v.shape) for k, v in feeds.items()},
                 layers=[layer])
    t = {k: torch.tensor(v, requires_grad=k in ("loc", "conf")) for k, v in feeds.items()}
    out = CaffeModule(g).train()(t)
    out.loss.backward()
    return out.loss.item(), t["loc"].grad.numpy(), t["conf"].grad.numpy()


def test_per_prediction_matching_and_max_negative_mining_give_the_hand_computed_loss():
    loss, gloc, gconf = _run(_layer(), _feeds())
    # matches P0 (bipartite) and P4 (0.66 >= 0.5); 2 x 1.0 negatives: P2 and P5
    loc = _smooth_l1(LOC[0], T0) + _smooth_l1(LOC[4], T4)
    conf = _ce(CONF[0], 1) + _ce(CONF[4], 1) + _ce(CONF[2], 0) + _ce(CONF[5], 0)
    assert loss == pytest.approx((loc + conf) / 2, rel=1e-5)
    gloc, gconf = gloc.reshape(6, 4), gconf.reshape(6, 3)
    # only the matched priors' loc and the matched-or-mined priors' conf get a gradient
    assert np.flatnonzero(np.abs(gloc).sum(1)).tolist() == [0, 4]
    assert np.flatnonzero(np.abs(gconf).sum(1)).tolist() == [0, 2, 4, 5]
    # SmoothL1': d inside (-1, 1), sign(d) outside; over the normaliser 2
    d0 = np.subtract(LOC[0], T0)
    np.testing.assert_allclose(gloc[0], np.where(np.abs(d0) < 1, d0, np.sign(d0)) / 2, rtol=1e-5)
    p2 = np.exp(CONF[2]) / np.exp(CONF[2]).sum()
    np.testing.assert_allclose(gconf[2], (p2 - [1, 0, 0]) / 2, rtol=1e-5, atol=1e-7)


def test_bipartite_matching_takes_one_prior_per_truth_and_leaves_close_priors_unmined():
    loss, _, gconf = _run(_layer(match_type="BIPARTITE"), _feeds())
    # P0 alone matches; P4 (0.66 >= neg_overlap) is not a negative; 1 x 1.0 -> P2
    expected = _smooth_l1(LOC[0], T0) + _ce(CONF[0], 1) + _ce(CONF[2], 0)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert np.flatnonzero(np.abs(gconf.reshape(6, 3)).sum(1)).tolist() == [0, 2]


def test_neg_overlap_keeps_priors_that_overlap_a_truth_out_of_mining():
    loss, _, _ = _run(_layer(neg_overlap=0.1), _feeds())
    # P5 overlaps 0.15 >= 0.1: the two hardest left are P2 and P3
    loc = _smooth_l1(LOC[0], T0) + _smooth_l1(LOC[4], T4)
    conf = _ce(CONF[0], 1) + _ce(CONF[4], 1) + _ce(CONF[2], 0) + _ce(CONF[3], 0)
    assert loss == pytest.approx((loc + conf) / 2, rel=1e-5)


@pytest.mark.parametrize("mode, divisor", [("VALID", 2), ("FULL", 6), ("BATCH_SIZE", 1),
                                           ("NONE", 1)])
def test_normalization_modes_divide_by_matches_priors_images_or_nothing(mode, divisor):
    loss, _, _ = _run(_layer(loss_param={"normalization": mode}, loc_weight=2.0), _feeds())
    loc = _smooth_l1(LOC[0], T0) + _smooth_l1(LOC[4], T4)
    conf = _ce(CONF[0], 1) + _ce(CONF[4], 1) + _ce(CONF[2], 0) + _ce(CONF[5], 0)
    assert loss == pytest.approx((2.0 * loc + conf) / divisor, rel=1e-5)


def test_l2_loc_loss_and_no_mining_count_every_prior_of_every_image():
    # two images, the second without a truth: without mining all its priors are background
    feeds = _feeds(images=2)
    loss, _, gconf = _run(_layer(loc_loss_type="L2", mining_type="NONE"), feeds)
    loc = sum((a - b) ** 2 for a, b in zip(LOC[0], T0)) / 2 + \
        sum((a - b) ** 2 for a, b in zip(LOC[4], T4)) / 2
    first = sum(_ce(CONF[j], 1 if j in (0, 4) else 0) for j in range(6))
    second = sum(_ce(CONF[j], 0) for j in range(6))
    assert loss == pytest.approx((loc + first + second) / 2, rel=1e-5)
    assert np.all(np.abs(gconf.reshape(12, 3)).sum(1) > 0)


def test_an_image_without_truth_gives_no_negatives_when_mining():
    feeds = _feeds(images=2)
    loss, _, gconf = _run(_layer(), feeds)
    loc = _smooth_l1(LOC[0], T0) + _smooth_l1(LOC[4], T4)
    conf = _ce(CONF[0], 1) + _ce(CONF[4], 1) + _ce(CONF[2], 0) + _ce(CONF[5], 0)
    assert loss == pytest.approx((loc + conf) / 2, rel=1e-5)
    assert not np.any(gconf[1])


def test_difficult_truths_are_dropped_unless_use_difficult_gt():
    feeds = _feeds()
    feeds["label"][0, 0, 0, 7] = 1.0
    loss, gloc, _ = _run(_layer(use_difficult_gt=False), feeds)
    assert loss == 0.0 and not np.any(gloc)  # no truth left: no match, nothing mined
    loss_kept, _, _ = _run(_layer(use_difficult_gt=True), feeds)
    assert loss_kept > 0


def test_encode_variance_in_target_divides_prediction_and_target_by_the_variances():
    loss, _, _ = _run(_layer(encode_variance_in_target=True), _feeds())
    # targets without variance, then both sides divided by it (EncodeLocPrediction)
    t0 = [t * v for t, v in zip(T0, VAR)]
    t4 = [t * v for t, v in zip(T4, VAR)]
    loc = _smooth_l1([a / v for a, v in zip(LOC[0], VAR)], [a / v for a, v in zip(t0, VAR)]) + \
        _smooth_l1([a / v for a, v in zip(LOC[4], VAR)], [a / v for a, v in zip(t4, VAR)])
    conf = _ce(CONF[0], 1) + _ce(CONF[4], 1) + _ce(CONF[2], 0) + _ce(CONF[5], 0)
    assert loss == pytest.approx((loc + conf) / 2, rel=1e-5)


def test_matching_on_decoded_predictions_follows_the_prediction_not_the_prior():
    # P1's prediction decodes exactly onto the truth: centre (.75 - 10 * .1 * .5, .25 + ...)
    loc = list(LOC)
    loc[1] = T0_FOR_P1 = ((0.25 - 0.75) / 0.5 / 0.1, 0.05 / 0.5 / 0.1,
                          math.log(0.4 / 0.5) / 0.2, 0.0)
    loss, gloc, _ = _run(_layer(use_prior_for_matching=False, match_type="BIPARTITE"),
                         _feeds(loc=loc))
    # P1 (overlap 1) matches; its target is the truth encoded against P1 = its prediction
    assert np.abs(gloc).max() < 1e-5
    expected = _smooth_l1(T0_FOR_P1, T0_FOR_P1) + _ce(CONF[1], 1) + _ce(CONF[2], 0)
    assert loss == pytest.approx(expected, rel=1e-4)


def test_gradients_are_autograd_exact_in_float64():
    feeds = _feeds(images=2, gts=((0, 1, GT), (1, 2, (0.5, 0.5, 0.95, 1.0))), dtype=np.float64)
    layer = _layer()
    prior, label = torch.tensor(feeds["prior"]), torch.tensor(feeds["label"])

    def f(loc, conf):  # the forward itself: the module feeds float32
        return multibox_loss(layer, [loc, conf, prior, label], None)[0]

    loc = torch.tensor(feeds["loc"], requires_grad=True)
    conf = torch.tensor(feeds["conf"], requires_grad=True)
    assert torch.autograd.gradcheck(f, (loc, conf), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("params, words", [
    ({"share_location": False}, "share_location: false"),
    ({"mining_type": "HARD_EXAMPLE"}, "HARD_EXAMPLE"),
    ({"nms_param": {"nms_threshold": 0.5}}, "nms_param"),
    ({"conf_loss_type": "LOGISTIC", "mining_type": "NONE"}, "LOGISTIC with mining_type: NONE"),
    ({"do_neg_mining": False}, "do_neg_mining"),
])
def test_unsupported_settings_are_refused_by_name_before_training(params, words):
    feeds = _feeds()
    g = cs.Graph("caffe", name="t", inputs={k: tuple(v.shape) for k, v in feeds.items()},
                 layers=[_layer(**params)])
    with pytest.raises(ModelError, match="mbox_loss") as e:
        CaffeModule(g)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_wrong_prediction_counts_are_one_line_errors_naming_the_numbers():
    feeds = _feeds()
    feeds["conf"] = feeds["conf"][:, :15]
    with pytest.raises(ModelError, match=r"6 priors x 3 classes need 18"):
        _run(_layer(), feeds)


def _bce(x, t):
    return max(x, 0) - x * t + math.log1p(math.exp(-abs(x)))


def test_logistic_confidence_mines_by_the_summed_sigmoid_loss_against_background():
    # background-target losses (sum over classes): P1 1.51, P2 4.13, P3 2.94, P5 2.98
    loss, _, _ = _run(_layer(conf_loss_type="LOGISTIC"), _feeds())
    loc = _smooth_l1(LOC[0], T0) + _smooth_l1(LOC[4], T4)
    conf = sum(_bce(x, t) for j in (0, 4) for x, t in zip(CONF[j], (0, 1, 0))) + \
        sum(_bce(x, t) for j in (2, 5) for x, t in zip(CONF[j], (1, 0, 0)))
    assert loss == pytest.approx((loc + conf) / 2, rel=1e-5)


def test_map_object_to_agnostic_trains_every_object_as_class_one():
    conf = [row[:2] for row in CONF]
    feeds = _feeds(conf=conf, gts=((0, 7, GT),))  # any object label becomes 1
    loss, _, _ = _run(_layer(num_classes=2, map_object_to_agnostic=True), feeds)
    loc = _smooth_l1(LOC[0], T0) + _smooth_l1(LOC[4], T4)
    # background losses with two classes: P2 log(1 + e) = 1.31 and P5 log(1 + e^1.5) = 1.70
    # lead P3 (log 2) and P1 (log(1 + e^-2))
    c = _ce(conf[0], 1) + _ce(conf[4], 1) + _ce(conf[5], 0) + _ce(conf[2], 0)
    assert loss == pytest.approx((loc + c) / 2, rel=1e-5)


def test_cross_boundary_priors_are_neither_matched_nor_mined_when_ignored():
    from caffe_surgeon.training.ssd_boxes import match
    priors = np.array([(-0.1, 0.0, 0.5, 0.5), (0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)],
                      np.float32)
    gt = np.array([(0.0, 0.0, 0.5, 0.5)], np.float32)
    # prior 0 overlaps .25 / .30 = .833: matched per prediction unless it crosses the border
    index, overlap = match(priors, gt, False, 0.5, ignore_cross_boundary=False)
    assert index.tolist() == [0, 0, -1]
    assert overlap.tolist() == pytest.approx([0.25 / 0.30, 1.0, 0.0])
    index, overlap = match(priors, gt, False, 0.5, ignore_cross_boundary=True)
    assert index.tolist() == [-2, 0, -1] and overlap[0] == 0


@pytest.mark.parametrize("code_type, t0, t4", [
    # CORNER: (truth - prior) / variance
    ("CORNER", (0.05 / 0.1, 0.05 / 0.1, -0.05 / 0.2, 0.05 / 0.2),
     (0.05 / 0.1, 0.05 / 0.1, 0.05 / 0.2, -0.05 / 0.2)),
    # CORNER_SIZE: the same over the prior's width and height (P0 .5 x .5, P4 .4 x .6)
    ("CORNER_SIZE", (0.05 / 0.5 / 0.1, 0.05 / 0.5 / 0.1, -0.05 / 0.5 / 0.2, 0.05 / 0.5 / 0.2),
     (0.05 / 0.4 / 0.1, 0.05 / 0.6 / 0.1, 0.05 / 0.4 / 0.2, -0.05 / 0.6 / 0.2)),
])
def test_corner_codes_encode_the_truth_edge_by_edge(code_type, t0, t4):
    loss, _, _ = _run(_layer(code_type=code_type), _feeds())
    loc = _smooth_l1(LOC[0], t0) + _smooth_l1(LOC[4], t4)
    conf = _ce(CONF[0], 1) + _ce(CONF[4], 1) + _ce(CONF[2], 0) + _ce(CONF[5], 0)
    assert loss == pytest.approx((loc + conf) / 2, rel=1e-5)


def test_bp_inside_gives_no_gradient_to_edges_of_a_prior_outside_the_image():
    # one prior crossing the left edge, matched (overlap .25 / .30) to the truth
    prior = torch.tensor([[[-0.1, 0.0, 0.5, 0.5], [0.1, 0.1, 0.2, 0.2]]])
    label = torch.tensor([[[[0, 1, 0, 0.0, 0.0, 0.5, 0.5, 0]]]])
    grads = []
    for inside in (False, True):
        loc = torch.tensor([[0.3, 0.2, 0.1, 0.4]], requires_grad=True)
        conf = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
        layer = _layer(bp_inside=inside, mining_type="NONE")
        multibox_loss(layer, [loc, conf, prior, label], None)[0].backward()
        grads.append(loc.grad[0].tolist())
    assert all(g != 0 for g in grads[0])
    assert grads[1][0] == 0 and all(g != 0 for g in grads[1][1:])
