"""Forwards of the Caffe fork layers Interp, DeephiResize, Reorg, Tile, MVN, GELU, HardSigmoid.

Each runs a one-layer prototxt through our reader and engine and is checked
against OpenCV 4.x's Caffe importer where OpenCV has the layer with the same
semantics (Interp by zoom/height/width, MVN, Reorg at stride 2, GELU as
OpenCV's ``GeluApproximation``, HardSigmoid at its defaults), and otherwise
against a slow twin here: a literal loop transcription of the fork's C++
(Interp's crop/shrink cases, Reorg at other strides and reversed, Tile, GELU's
``coeff``, HardSigmoid's alpha/beta) or the OpenCV call the fork itself makes
(DeephiResize is ``cv::resize`` of each transposed plane). Every layer also has
a case that fails when a plausible but wrong semantics is used.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from caffe_surgeon.caffe.reader import read_caffe
from caffe_surgeon.engine import Executor
from caffe_surgeon.errors import ModelError

cv2 = pytest.importorskip("cv2")
import oracle_caffe as oc  # noqa: E402

F32 = np.float32
rng = np.random.default_rng(0)


def _prototxt(path, type_, params, feeds):
    head = "".join(f'input: "{n}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in x.shape)} }}\n'
                   for n, x in feeds.items())
    bottoms = " ".join(f'bottom: "{n}"' for n in feeds)
    path.write_text(f'{head}layer {{ name: "l" type: "{type_}" {bottoms} top: "out" {params} }}\n')
    return path


def ours(tmp_path, type_, params, feeds):
    g = read_caffe(_prototxt(tmp_path / "ours.prototxt", type_, params, feeds))
    return Executor(g).run(feeds)["out"]


def opencv(tmp_path, type_, params, feeds):
    net = oc.opencv_net(_prototxt(tmp_path / "cv.prototxt", type_, params, feeds))
    return oc.forward_of(net, feeds, ["l"])["l"][0]


def close(got, want, rtol=1e-6, atol=1e-6):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return float(np.abs(got - want).max())


def x_(*shape):
    return rng.standard_normal(shape).astype(F32)


# ---------------------------------------------------------------- Interp
def interp2_twin(x, y1, x1, h1, w1, h2, w2):
    """caffe_cpu_interp2<Dtype, false> (DeepLab v2 util/interp.cpp), loop for loop, in float32."""
    n, c, H1, W1 = x.shape
    out = np.zeros((n, c, h2, w2), F32)
    if (h1, w1) == (h2, w2):
        return np.ascontiguousarray(x[:, :, y1:y1 + h1, x1:x1 + w1])

    def tap(n1, n2, i):  # (int) truncation, the +1 neighbour unless at the end, float lambdas
        r = F32(n1 - 1) / F32(n2 - 1) if n2 > 1 else F32(0)
        pos = F32(r * F32(i))
        k = int(pos)
        lam = F32(pos - F32(k))
        return k, (1 if k < n1 - 1 else 0), F32(1) - lam, lam

    for i in range(h2):
        hh, hp, l0, l1 = tap(h1, h2, i)
        for j in range(w2):
            ww, wp, m0, m1 = tap(w1, w2, j)
            p = x[:, :, y1 + hh:, x1 + ww:]
            out[:, :, i, j] = l0 * (m0 * p[:, :, 0, 0] + m1 * p[:, :, 0, wp]) + \
                l1 * (m0 * p[:, :, hp, 0] + m1 * p[:, :, hp, wp])
    return out


INTERP_CV = {  # cases OpenCV's Interp honours: zoom, height/width, a second input
    "zoom2": ("interp_param { zoom_factor: 2 }", (2, 3, 5, 7), None),
    "zoom3": ("interp_param { zoom_factor: 3 }", (1, 2, 4, 4), None),
    "up_hw": ("interp_param { height: 11 width: 13 }", (1, 3, 5, 4), None),
    "down_hw": ("interp_param { height: 3 width: 4 }", (2, 2, 9, 10), None),
    "one_row": ("interp_param { height: 1 width: 6 }", (1, 2, 5, 3), None),
}


@pytest.mark.parametrize("case", sorted(INTERP_CV))
def test_interp_matches_opencv_and_the_twin(case, tmp_path):
    params, shape, like = INTERP_CV[case]
    feeds = {"data": x_(*shape)}
    got = ours(tmp_path, "Interp", params, feeds)
    close(got, opencv(tmp_path, "Interp", params, feeds))
    h2, w2 = got.shape[2:]
    np.testing.assert_array_equal(got, interp2_twin(feeds["data"], 0, 0, *shape[2:], h2, w2))


@pytest.mark.parametrize("params, crop", [
    ("interp_param { shrink_factor: 2 }", (0, 0)),
    ("interp_param { zoom_factor: 3 shrink_factor: 2 }", (0, 0)),
    ("interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -2 }", (1, 2)),
    ("interp_param { height: 6 width: 5 pad_beg: -1 }", (1, 0)),
    ("interp_param { height: 6 width: 4 pad_beg: -1 pad_end: -1 }", (1, 1)),  # equal size: a copy
])
def test_interp_shrink_and_crop_match_the_twin(params, crop, tmp_path):
    """OpenCV ignores shrink_factor and the pads; interp_layer.cpp crops by -pad_beg/-pad_end."""
    x = x_(2, 3, 8, 6)
    got = ours(tmp_path, "Interp", params, {"data": x})
    b, e = crop
    want = interp2_twin(x, b, b, 8 - b - e, 6 - b - e, *got.shape[2:])
    np.testing.assert_array_equal(got, want)


def test_interp_sized_by_a_second_input(tmp_path):
    """OpenCV's Interp takes one input; DeepLab v2 sizes by a second one when no param does."""
    feeds = {"data": x_(1, 3, 4, 6), "like": x_(1, 1, 9, 8)}
    got = ours(tmp_path, "Interp", "", feeds)
    np.testing.assert_array_equal(got, interp2_twin(feeds["data"], 0, 0, 4, 6, 9, 8))


def test_interp_aligns_corners():
    """Bilinear with corners aligned: [0, 1, 2] zoomed by 2 is [0, .5, 1, 1.5, 2] (half-pixel
    resampling, cv2.resize's, would give other values and is not what PSPNet trained with)."""
    from caffe_surgeon.engine.caffe_resize_ops import interp
    from caffe_surgeon.graph import Layer
    from caffe_surgeon.engine.ops import RunContext
    x = np.arange(3, dtype=F32).reshape(1, 1, 1, 3).repeat(3, axis=2)
    y = interp(Layer("i", "Interp", ["x"], ["y"], {"interp_param": {"zoom_factor": 2}}), [x],
               RunContext())[0]
    np.testing.assert_array_equal(y[0, 0, 0], [0, .5, 1, 1.5, 2])
    half_pixel = cv2.resize(x[0, 0], (5, 5), interpolation=cv2.INTER_LINEAR)
    assert np.abs(half_pixel[0] - y[0, 0, 0]).max() > 0.1


def test_interp_positive_pad_is_refused(tmp_path):
    with pytest.raises(ModelError, match="pads <= 0"):
        ours(tmp_path, "Interp", "interp_param { zoom_factor: 2 pad_beg: 1 }", {"data": x_(1, 1, 4, 4)})


# ---------------------------------------------------------------- DeephiResize
def deephi_twin(x, oh, ow, bilinear):
    """deephi_resize_layer.cpp's CPU path: each plane into a cv::Mat(Size(h, w)) (transposed),
    cv::resize to Size(oh, ow), read back transposed."""
    out = np.empty(x.shape[:2] + (oh, ow), F32)
    flag = cv2.INTER_LINEAR if bilinear else cv2.INTER_NEAREST
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            t = np.ascontiguousarray(x[n, c].T)
            out[n, c] = cv2.resize(t, (oh, ow), interpolation=flag).T
    return out


DEEPHI = {
    "nearest_x2": ("scale_h: 2 scale_w: 2", (2, 3, 4, 5), (8, 10)),
    "nearest_new": ("new_height: 7 new_width: 3", (1, 2, 4, 6), (7, 3)),
    "nearest_frac": ("scale_h: 1.5 scale_w: 0.5", (1, 2, 6, 8), (9, 4)),
    "bilinear_x2": ("resize_type: BILINEAR scale_h: 2 scale_w: 2", (2, 3, 4, 5), (8, 10)),
    "bilinear_new": ("resize_type: BILINEAR new_height: 11 new_width: 3", (1, 2, 4, 7), (11, 3)),
    "bilinear_half": ("resize_type: BILINEAR scale_h: 0.5 scale_w: 0.5", (1, 2, 8, 6), (4, 3)),
    "bilinear_frac": ("resize_type: BILINEAR scale_h: 1.75 scale_w: 2.5", (1, 3, 4, 3), (7, 7)),
}


@pytest.mark.parametrize("case", sorted(DEEPHI))
def test_deephi_resize_matches_cv_resize_as_the_layer_calls_it(case, tmp_path):
    params, shape, out = DEEPHI[case]
    x = x_(*shape)
    got = ours(tmp_path, "DeephiResize", f"deephi_resize_param {{ {params} }}", {"data": x})
    assert got.shape[2:] == out
    close(got, deephi_twin(x, *out, "BILINEAR" in params))


def test_deephi_resize_defaults_are_nearest_at_scale_one(tmp_path):
    """caffe-xilinx's proto: resize_type NEAREST, scale_h = scale_w = 1."""
    x = x_(1, 2, 3, 5)
    np.testing.assert_array_equal(ours(tmp_path, "DeephiResize", "", {"data": x}), x)
    got = ours(tmp_path, "DeephiResize", "deephi_resize_param { scale_h: 2 scale_w: 2 }", {"data": x})
    np.testing.assert_array_equal(got, x.repeat(2, axis=2).repeat(2, axis=3))


# ---------------------------------------------------------------- Reorg
def reorg_twin(x, stride, reverse):
    """The YOLOv2 Caffe ports' reorg_cpu(bottom, w, h, c, n, stride, forward=reverse, top)."""
    n, c, h, w = x.shape
    tc, tw, th = c // (stride * stride), w * stride, h * stride
    src, dst = x.reshape(-1), np.zeros(x.size, F32)
    for b in range(n):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    bi = i + w * (j + h * (k + c * b))
                    c2, off = k % tc, k // tc
                    ti = (i * stride + off % stride) + tw * ((j * stride + off // stride) + th * (c2 + tc * b))
                    if reverse:
                        dst[ti] = src[bi]
                    else:
                        dst[bi] = src[ti]
    return dst


def test_reorg_stride2_matches_opencv(tmp_path):
    """OpenCV's Reorg (darknet's index order) reads no reorg_param and strides by 2."""
    x = x_(2, 8, 6, 4)
    got = ours(tmp_path, "Reorg", "reorg_param { stride: 2 }", {"data": x})
    close(got, opencv(tmp_path, "Reorg", "reorg_param { stride: 2 }", {"data": x}), 0, 0)


@pytest.mark.parametrize("shape, stride, reverse", [
    ((2, 8, 6, 4), 2, False), ((1, 9, 6, 9), 3, False), ((1, 8, 3, 2), 2, True), ((2, 18, 2, 3), 3, True)])
def test_reorg_matches_the_ports_reorg_cpu(shape, stride, reverse, tmp_path):
    x = x_(*shape)
    p = f"reorg_param {{ stride: {stride} {'reverse: true' if reverse else ''} }}"
    got = ours(tmp_path, "Reorg", p, {"data": x})
    np.testing.assert_array_equal(got.reshape(-1), reorg_twin(x, stride, reverse))
    # not a plain space-to-depth: darknet's famous channel order is kept
    if not reverse:
        n, c, h, w = shape
        s2d = x.reshape(n, c, h // stride, stride, w // stride, stride).transpose(0, 3, 5, 1, 2, 4)
        assert not np.array_equal(got, s2d.reshape(got.shape))


# ---------------------------------------------------------------- Tile
def tile_twin(x, axis, tiles):
    """tile_layer.cpp: for each outer index, copy the inner block ``tiles`` times."""
    axis %= x.ndim
    outer, inner = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))
    src, out = x.reshape(outer, inner), []
    for i in range(outer):
        for _ in range(tiles):
            out.append(src[i])
    shape = list(x.shape)
    shape[axis] *= tiles
    return np.concatenate(out).reshape(shape)


@pytest.mark.parametrize("axis, tiles", [(1, 3), (2, 2), (-1, 4), (0, 2), (3, 1)])
def test_tile_matches_the_twin(axis, tiles, tmp_path):
    x = x_(2, 3, 4, 5)
    got = ours(tmp_path, "Tile", f"tile_param {{ axis: {axis} tiles: {tiles} }}", {"data": x})
    np.testing.assert_array_equal(got, tile_twin(x, axis, tiles))
    if tiles > 1:  # repeats the block, not each element (np.repeat)
        assert not np.array_equal(got, np.repeat(x, tiles, axis=axis))


# ---------------------------------------------------------------- MVN
MVN = ["", "mvn_param { across_channels: true }", "mvn_param { normalize_variance: false }",
       "mvn_param { normalize_variance: false across_channels: true }"]


@pytest.mark.parametrize("params", MVN)
def test_mvn_matches_opencv(params, tmp_path):
    # zero-mean-ish input: OpenCV's float32 variance loses digits to cancellation on an offset
    x = x_(2, 3, 5, 4)
    close(ours(tmp_path, "MVN", params, {"data": x}), opencv(tmp_path, "MVN", params, {"data": x}),
          1e-5, 1e-5)


@pytest.mark.parametrize("eps, across", [(0.5, False), (0.01, True)])
def test_mvn_adds_eps_to_the_standard_deviation(eps, across, tmp_path):
    """BVLC mvn_layer.cpp: powx(var, 0.5), then add_scalar(eps). OpenCV 4.14 deviates: it
    divides by sqrt(var + eps), so a non-default eps is checked against the twin only."""
    x = x_(2, 2, 4, 4)
    params = f"mvn_param {{ eps: {eps} across_channels: {'true' if across else 'false'} }}"
    got = ours(tmp_path, "MVN", params, {"data": x}).astype(np.float64)
    axes = (1, 2, 3) if across else (2, 3)
    d = x - x.mean(axis=axes, keepdims=True, dtype=np.float64)
    var = (d * d).mean(axis=axes, keepdims=True)
    np.testing.assert_allclose(got, d / (np.sqrt(var) + eps), rtol=1e-6, atol=1e-7)
    cv = opencv(tmp_path, "MVN", params, {"data": x})
    np.testing.assert_allclose(cv, d / np.sqrt(var + eps), rtol=1e-5, atol=1e-6)
    assert np.abs(got - cv).max() > 1e-3


# ---------------------------------------------------------------- GELU, HardSigmoid
def test_gelu_is_the_tanh_approximation_like_opencv(tmp_path):
    x = x_(2, 3, 8, 8) * F32(3)
    got = ours(tmp_path, "GELU", "", {"data": x})
    close(got, opencv(tmp_path, "GeluApproximation", "", {"data": x}), 1e-6, 1e-6)
    twin = np.array([0.5 * v * (1 + math.tanh(0.7978845608 * v + 0.7978845608 * 0.044715 * v * v * v))
                     for v in x.reshape(-1).tolist()], F32).reshape(x.shape)
    np.testing.assert_allclose(got, twin, rtol=1e-6, atol=1e-9)  # tanh's last bit near -1
    erf = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.reshape(-1).tolist()])
    assert np.abs(got - erf.reshape(x.shape)).max() > 1e-4  # not the erf form


def test_hard_sigmoid_defaults_match_opencv(tmp_path):
    x = x_(2, 3, 6, 6) * F32(4)
    got = ours(tmp_path, "HardSigmoid", "", {"data": x})
    close(got, opencv(tmp_path, "HardSigmoid", "", {"data": x}), 0, 1e-7)
    assert got.min() == 0 and got.max() == 1
    np.testing.assert_array_equal(got, np.clip(F32(0.2) * x + F32(0.5), 0, 1))
    assert not np.array_equal(got, np.clip(x / F32(6) + F32(0.5), 0, 1))  # not hard-swish's 1/6


@pytest.mark.parametrize("key", ["hard_sigmoid_param", "hardsigmoid_param"])
def test_hard_sigmoid_and_gelu_read_their_params(key):
    """The merged schema has no field for these fork params yet; the forwards honour them
    when a graph carries them (checked against the C++ loops)."""
    from caffe_surgeon.engine.caffe_activation_ops import gelu, hard_sigmoid
    from caffe_surgeon.engine.ops import RunContext
    from caffe_surgeon.graph import Layer
    x = x_(1, 2, 5, 5) * F32(4)
    y = hard_sigmoid(Layer("h", "HardSigmoid", ["x"], ["y"], {key: {"alpha": 0.25, "beta": 0.4}}),
                     [x], RunContext())[0]
    want = [0.0 if r <= 0 else min(r, 1.0) for r in (F32(0.25) * x + F32(0.4)).reshape(-1).tolist()]
    np.testing.assert_array_equal(y.reshape(-1), np.array(want, F32))
    g = gelu(Layer("g", "GELU", ["x"], ["y"], {"gelu_param": {"coeff": 2.0}}), [x], RunContext())[0]
    one = gelu(Layer("g", "GELU", ["x"], ["y"], {}), [x], RunContext())[0]
    np.testing.assert_allclose(g, 2 * one, rtol=1e-7)


PSP_HEAD = """name: "psp_head"
input: "data"
input_shape { dim: 2 dim: 3 dim: 24 dim: 24 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: AVE kernel_size: 12 stride: 12 } }
layer { name: "pool1_conv" type: "Convolution" bottom: "pool1" top: "pool1_conv"
  convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "pool1_interp" type: "Interp" bottom: "pool1_conv" top: "pool1_interp"
  interp_param { height: 12 width: 12 } }
layer { name: "pool3" type: "Pooling" bottom: "conv1" top: "pool3"
  pooling_param { pool: AVE kernel_size: 4 stride: 4 } }
layer { name: "pool3_interp" type: "Interp" bottom: "pool3" top: "pool3_interp"
  interp_param { height: 12 width: 12 } }
layer { name: "cat" type: "Concat" bottom: "conv1" bottom: "pool1_interp" bottom: "pool3_interp" top: "cat" }
layer { name: "score" type: "Convolution" bottom: "cat" top: "score"
  convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "up" type: "Interp" bottom: "score" top: "up" interp_param { zoom_factor: 2 } }
layer { name: "prob" type: "Softmax" bottom: "up" top: "prob" }
"""


def test_pspnet_style_head_runs_like_opencv(tmp_path):
    """No zoo net has an Interp layer; a PSPNet pyramid-pooling head with synthetic weights
    (cs.init) runs end to end and agrees with OpenCV."""
    import caffe_surgeon as cs
    (tmp_path / "psp.prototxt").write_text(PSP_HEAD)
    g = cs.init(cs.load(tmp_path / "psp.prototxt"), seed=3)
    cs.save(g, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    g = cs.load(tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    x = rng.random((2, 3, 24, 24)).astype(F32)
    got = Executor(g).run({"data": x}, ["up", "prob"])
    net = oc.opencv_net(tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    theirs = oc.forward_of(net, {"data": x}, ["up", "prob"])
    for name in ("up", "prob"):
        want = theirs[name][0]
        scale = np.abs(want).max()
        assert np.abs(got[name] - want).max() <= 1e-5 * scale, name
