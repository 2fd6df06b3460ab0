"""The vectorised max pooling rows and the blocked logistic give bit-for-bit the values of
the window-by-window scan and of the one-expression logistic they replaced."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from caffe_surgeon.engine.kernels import logistic, parallel, pooling, reference as ref
from caffe_surgeon.layers.caffe_geometry import pool_out


def _bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def _ties_and_nans(shape, seed):
    """Normal values with many exact 0.0 / -0.0 ties (whose winner depends on the scan
    order) and a few NaNs (which ``>`` skips)."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    x[x > 1.0] = 0.0
    x[x < -1.0] = -0.0
    x.reshape(-1)[::37] = np.nan
    return x


def _geometries():
    """(H, W, k, stride, pad, out_hw): Caffe's symmetric pad with floor and ceil rounding, and
    Darknet's pad ``padding // 2`` before with ``(H + padding - k) // s + 1`` outputs (size 2
    stride 1 keeps H x W: the last window is clipped)."""
    for (h, w), k, s in itertools.product([(1, 1), (2, 3), (5, 7), (13, 13), (26, 27)],
                                          (2, 3), (1, 2)):
        for p in range(k):
            for ceil in (False, True):
                if h + 2 * p >= k and w + 2 * p >= k:
                    yield h, w, k, s, p, (pool_out(h, k, s, p, ceil), pool_out(w, k, s, p, ceil))
        for padding in range(k + 1):
            oh, ow = (h + padding - k) // s + 1, (w + padding - k) // s + 1
            if oh > 0 and ow > 0:
                yield h, w, k, s, padding // 2, (oh, ow)


@pytest.mark.parametrize("parallel_kernels", [False, True])
def test_maxpool_rows_equal_the_ordered_window_scan_bit_for_bit(parallel_kernels, monkeypatch):
    if parallel_kernels:
        monkeypatch.setattr(parallel, "MIN_PARALLEL_ELEMENTS", 0)
    seen = set()
    for h, w, k, s, p, out_hw in _geometries():
        if (h, w, k, s, p, out_hw) in seen:
            continue
        seen.add((h, w, k, s, p, out_hw))
        x = _ties_and_nans((3, 2, h, w), seed=len(seen))
        got = pooling.maxpool(x, (k, k), (s, s), (p, p), out_hw)
        want = ref.maxpool_scan(x, (k, k), (s, s), (p, p), out_hw)
        assert np.array_equal(_bits(got), _bits(want)), (h, w, k, s, p, out_hw)
    assert len(seen) > 60  # the sweep did run


def test_maxpool_scan_order_decides_signed_zero_ties():
    """The twin is a real oracle of order: 0.0 before -0.0 in a window keeps +0.0, and the
    other way round keeps -0.0 (``v > m`` is false for equal zeros)."""
    x = np.array([[[[0.0, -0.0, -0.0, 0.0], [-1, -1, -1, -1]]]], np.float32)
    got = pooling.maxpool(x, (2, 2), (2, 2), (0, 0), (1, 2))
    assert np.array_equal(_bits(got), _bits(np.array([[[[0.0, -0.0]]]], np.float32)))
    assert np.array_equal(_bits(ref.maxpool_scan(x, (2, 2), (2, 2), (0, 0), (1, 2))), _bits(got))


def test_maxpool_yolov3_tiny_sizes_equal_the_scan():
    # the 416 -> 208 first pool (rows longer than a vector) and the 13 x 13 size 2 stride 1
    rng = np.random.default_rng(3)
    for shape, s, out_hw in [((1, 2, 416, 416), 2, (208, 208)), ((2, 4, 13, 13), 1, (13, 13))]:
        x = rng.standard_normal(shape).astype(np.float32)
        got = pooling.maxpool(x, (2, 2), (s, s), (0, 0), out_hw)
        assert np.array_equal(_bits(got), _bits(ref.maxpool_scan(x, (2, 2), (s, s), (0, 0), out_hw)))


def test_logistic_blocks_equal_the_float64_expression_on_special_values():
    f32 = np.finfo(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, f32.max, -f32.max, f32.tiny,
                        -f32.tiny, 1e-45, -1e-45, 17.3, 17.4, -103.9, -104.0, -88.7, 36.7,
                        0.5, -0.5], np.float32)
    rng = np.random.default_rng(5)
    wide = (rng.standard_normal(logistic.BLOCK * 2 + 37) * 12).astype(np.float32)  # 3 blocks
    for x in (special, wide, wide.reshape(1, -1)[:, ::3]):  # the last one not contiguous
        with np.errstate(all="ignore"):
            want = ref.logistic(x)
        got = logistic.logistic(x)
        assert got.shape == x.shape and got.dtype == np.float32
        assert np.array_equal(_bits(got), _bits(want))


@pytest.mark.slow
def test_logistic_blocks_equal_the_expression_on_a_sweep_of_all_float32():
    # every 5th float32 bit pattern (860M values; run once over all 2^32 on the AVX-512
    # Xeon of 2026-12: 0 differences)
    for c in range(64):
        bits = np.arange(c << 26, (c + 1) << 26, 5, dtype=np.uint64).astype(np.uint32)
        x = bits.view(np.float32)
        with np.errstate(all="ignore"):
            want = ref.logistic(x)
        got = logistic.logistic(x)
        same = (_bits(got) == _bits(want)) | (np.isnan(got) & np.isnan(want))
        assert same.all(), x[~same][:5]


RESIDUAL_NET = """
name: "residual"
input: "data"
input_shape { dim: 1 dim: 4 dim: 9 dim: 7 }
input: "skip"
input_shape { dim: 1 dim: 4 dim: 9 dim: 7 }
layer { name: "raw" type: "Eltwise" bottom: "data" bottom: "skip" top: "raw" }
layer { name: "raw_relu" type: "ReLU" bottom: "raw" top: "raw" }
layer { name: "a" type: "Convolution" bottom: "data" top: "a"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "b" type: "Convolution" bottom: "data" top: "b"
  convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
  convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
layer { name: "sum_relu" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "sum3" type: "Eltwise" bottom: "sum" bottom: "c" bottom: "a" top: "sum3" }
layer { name: "sum3_relu" type: "ReLU" bottom: "sum3" top: "sum3" relu_param { negative_slope: 0.1 } }
layer { name: "wsum" type: "Eltwise" bottom: "sum3" bottom: "b" top: "wsum"
  eltwise_param { coeff: 0.5 coeff: -2 } }
layer { name: "wsum_clip" type: "ReLU6" bottom: "wsum" top: "wsum" }
layer { name: "mx" type: "Eltwise" bottom: "wsum" bottom: "c" top: "mx" eltwise_param { operation: MAX } }
layer { name: "mx_relu" type: "ReLU" bottom: "mx" top: "out" }
"""


def test_eltwise_heads_a_fused_relu_and_equals_the_layers_one_by_one(tmp_path):
    import caffe_surgeon as cs
    from caffe_surgeon.engine import Executor

    path = tmp_path / "residual.prototxt"
    path.write_text(RESIDUAL_NET)
    g = cs.init(cs.load(path), seed=3)
    ex = Executor(g)
    heads = {g.layers[i].name: [g.layers[j].name for j in f] for i, f in ex.chains.items()}
    assert heads == {"raw": ["raw_relu"], "sum": ["sum_relu"], "sum3": ["sum3_relu"], "wsum": ["wsum_clip"],
                     "mx": ["mx_relu"]}
    x = np.random.default_rng(9).standard_normal((3, 4, 9, 7)).astype(np.float32)
    skip = -x
    x[:, :, :3], skip[:, :, :3] = -0.0, -0.0  # sums of -0.0: the ReLU must give +0.0
    feeds = {"data": x, "skip": skip}
    names = ["raw", "sum", "sum3", "wsum", "out"]
    fused = ex.run(feeds, names)
    apart = ex.run(feeds, names, layer_outputs=["raw", "sum", "sum3", "wsum", "mx"])
    assert np.array_equal(_bits(fused["raw"]), _bits(np.maximum(x + skip, np.float32(0))))
    for name in names:
        assert np.array_equal(_bits(fused[name]), _bits(apart[name])), name
    # and the layers one by one are what they say: a plain NumPy residual block
    parts = ex.run(feeds, ["a", "b"])
    want = np.maximum(parts["a"] + parts["b"], 0)
    assert np.array_equal(_bits(fused["sum"]), _bits(want))


@pytest.mark.parametrize("parallel_kernels", [False, True])
def test_sum2_with_stages_equals_the_sum_then_the_stages(parallel_kernels, monkeypatch):
    from caffe_surgeon.engine.kernels import eltwise
    from caffe_surgeon.engine.kernels.epilogue import Epilogue

    monkeypatch.setattr(eltwise, "MIN_PARALLEL_SUM", 0 if parallel_kernels else 1 << 60)
    scale = np.random.default_rng(2).standard_normal(5).astype(np.float32)
    ep = Epilogue(5).mul(scale).add(scale).leaky(0.1).clip(-1, 2)
    for shape in [(3, 5, 6, 7), (1, 5, 65, 66)]:  # rows shorter and longer than 4096
        a, b = _ties_and_nans(shape, seed=11), _ties_and_nans(shape, seed=12)
        want = ref.epilogue(a + b, ep.stages)
        assert np.array_equal(_bits(eltwise.sum2(a, b, ep)), _bits(want))
    a = _ties_and_nans((3, 5, 6, 7), seed=11)
    b = _ties_and_nans((3, 5, 6, 7), seed=12)
    assert np.array_equal(_bits(eltwise.sum2(a, b)), _bits(a + b))
    into = a.copy()
    assert eltwise.sum2(into, b, Epilogue(5).relu(), out=into) is into
    assert np.array_equal(_bits(into), _bits(np.maximum(a + b, np.float32(0))))
    assert np.signbit(a + b).any() and not np.signbit(into).any()  # -0.0 sums became +0.0


def test_softmax_rows_path_equals_the_strided_path_bit_for_bit():
    """(A, C, 1) takes the row path; the same values with each column doubled, (A, C, 2),
    take the path with per-position buffers: the float32 steps are the same."""
    from caffe_surgeon.engine.kernels import channelwise

    x = (np.random.default_rng(4).standard_normal((97, 5, 1)) * 30).astype(np.float32)
    x[::11, 2] = np.nan
    x[::7, 0] = -0.0
    with np.errstate(invalid="ignore"):
        rows = channelwise.softmax(x, 1)
        strided = channelwise.softmax(np.repeat(x, 2, axis=2), 1)
    assert np.array_equal(_bits(rows[:, :, 0]), _bits(strided[:, :, 0]))
    assert np.array_equal(_bits(rows[:, :, 0]), _bits(strided[:, :, 1]))
    finite = ~np.isnan(x).any(axis=1)[:, 0]
    np.testing.assert_allclose(rows[finite], ref.softmax(x[finite], 1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("parallel_kernels", [False, True])
def test_nearest_upsample_equals_repeat_bit_for_bit(parallel_kernels, monkeypatch):
    from caffe_surgeon.engine.kernels import layout

    if parallel_kernels:
        monkeypatch.setattr(parallel, "MIN_PARALLEL_ELEMENTS", 0)
    x = _ties_and_nans((3, 2, 5, 7), seed=21)
    for stride, scale in [(2, 1.0), (3, 1.0), (1, 1.0), (2, 0.3), (4, -2.5)]:
        want = np.repeat(np.repeat(x, stride, axis=2), stride, axis=3)
        if scale != 1:
            want = want * np.float32(scale)
        got = layout.upsample_nearest(x, stride, scale)
        assert got.shape == want.shape and np.array_equal(_bits(got), _bits(want)), (stride, scale)


BN_NET = """
name: "bn"
input: "data"
input_shape { dim: 1 dim: 3 dim: 5 dim: 6 }
layer { name: "bn0" type: "BatchNorm" bottom: "data" top: "bn0" }
layer { name: "bn1" type: "BatchNorm" bottom: "bn0" top: "bn1" }
layer { name: "sc1" type: "Scale" bottom: "bn1" top: "bn1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "bn1" top: "bn1" }
layer { name: "fc" type: "InnerProduct" bottom: "bn1" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "bn2" type: "BatchNorm" bottom: "fc" top: "fc" }
"""


def test_batchnorm_in_one_pass_equals_multiply_then_add(tmp_path):
    """A BatchNorm on the (borrowed) input, one heading a Scale + ReLU chain, and one on a
    2-D InnerProduct output: x * a + c as two float32 NumPy steps, bit for bit."""
    import caffe_surgeon as cs
    from caffe_surgeon.engine import Executor
    from caffe_surgeon.engine.caffe_ops import bn_affine

    path = tmp_path / "bn.prototxt"
    path.write_text(BN_NET)
    g = cs.init(cs.load(path), seed=5)
    rng = np.random.default_rng(6)
    for name in ("bn0", "bn1", "bn2"):
        w = g.layer(name).weights
        w["mean"] = rng.standard_normal(w["mean"].shape).astype(np.float32)
        w["variance"] = rng.random(w["variance"].shape).astype(np.float32) + 0.1
    ex = Executor(g)
    x = _ties_and_nans((3, 3, 5, 6), seed=7)
    keep = x.copy()
    out = ex.run({"data": x}, ["bn0", "bn1", "fc"])
    assert np.array_equal(_bits(x), _bits(keep))  # the input is not written
    apart = ex.run({"data": x}, ["bn0", "bn1", "fc"], layer_outputs=["bn1", "sc1", "fc"])
    for name in ("bn0", "bn1", "fc"):
        assert np.array_equal(_bits(out[name]), _bits(apart[name])), name
    a, c = bn_affine(g.layer("bn0"), ex.ctx)
    want = x * a.reshape(1, -1, 1, 1)
    want += c.reshape(1, -1, 1, 1)
    assert np.array_equal(_bits(out["bn0"]), _bits(want))
    fc = ex.run({"data": x}, layer_outputs=["fc"])["fc:fc"]
    a2, c2 = bn_affine(g.layer("bn2"), ex.ctx)
    assert np.array_equal(_bits(out["fc"]), _bits(fc * a2 + c2))


def test_stages_into_leaves_its_input_and_equals_the_stages():
    from caffe_surgeon.engine.kernels import eltwise
    from caffe_surgeon.engine.kernels.epilogue import Epilogue

    v = np.random.default_rng(1).standard_normal(4).astype(np.float32)
    w = np.random.default_rng(2).standard_normal(4).astype(np.float32)
    # the first run of stages reads x, the rest run in place: none, one run, an activation
    # alone, and three runs (six multiplies and adds, then a leaky, then a clip)
    epilogues = [Epilogue(4), Epilogue(4).mul(v).add(v).relu(), Epilogue(4).clip(-0.5, 0.5),
                 Epilogue(4).mul(v).add(w).mul(w).add(v).mul(v).add(w).leaky(0.1).clip(-1, 2)]
    for ep in epilogues:
        for shape in [(2, 4, 3, 5), (1, 4, 70, 71)]:  # rows shorter and longer than 4096
            x = _ties_and_nans(shape, seed=8)
            keep = x.copy()
            got = eltwise.stages_into(x, ep)
            assert np.array_equal(_bits(x), _bits(keep))
            assert np.array_equal(_bits(got), _bits(ref.epilogue(x, ep.stages))), ep.stages
