"""Every Numba kernel against its slow NumPy twin (kernels/reference.py)."""
from __future__ import annotations

import numpy as np
import pytest

from caffe_surgeon.engine.kernels import conv, depthwise, microkernel, pooling, reference as ref
from caffe_surgeon.engine.kernels.im2col import col2im, im2col

rng = np.random.default_rng(0)

CONV_CASES = [  # N, C, H, W, O, k, stride, pad, dilation, group
    (2, 3, 9, 8, 4, 3, 1, 1, 1, 1),
    (1, 4, 10, 10, 6, 3, 2, 1, 1, 2),
    (2, 6, 7, 7, 6, 3, 1, 1, 1, 6),      # depthwise, small map: channels-last
    (1, 4, 9, 9, 8, 3, 2, 1, 1, 4),      # depthwise, multiplier 2, small map: the row kernel
    (1, 3, 60, 61, 3, 3, 1, 1, 1, 3),    # depthwise, large map: the plane kernel
    (2, 3, 60, 61, 3, 5, 2, 2, 2, 3),    # depthwise, strided and dilated: the plane kernel
    (1, 4, 6, 6, 8, 1, 1, 0, 1, 1),      # 1x1 fast path
    (1, 3, 11, 9, 5, 3, 2, 2, 2, 1),     # dilation
    (3, 5, 12, 7, 7, 5, 3, 0, 1, 1),     # no pad, odd sizes
    (1, 2, 5, 5, 4, 7, 1, 3, 1, 2),      # kernel larger than image
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("parallel_kernels", [False, True])
def test_conv2d_matches_reference(case, parallel_kernels, monkeypatch):
    from caffe_surgeon.engine.kernels import parallel
    if parallel_kernels:  # tiny layers run serially unless told otherwise
        monkeypatch.setattr(parallel, "MIN_PARALLEL_MACS", 0)
        monkeypatch.setattr(parallel, "MIN_PARALLEL_ELEMENTS", 0)
    n, c, h, w, o, k, s, p, d, g = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c // g, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    got = conv.conv2d(x, wt, b, (s, s), (p, p), (d, d), g)
    want = ref.conv2d(x, wt, b, (s, s), (p, p), (d, d), g)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_depthwise_kernels_agree_bit_for_bit():
    """The channels-last and the row kernel sum each output's taps in the same order, so the
    path a shape takes never changes a result (padded edges, stride 2, dilation 2)."""
    x = rng.standard_normal((2, 5, 13, 17)).astype(np.float32)
    w = rng.standard_normal((5, 1, 3, 3)).astype(np.float32)
    for s, p, d in [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)]:
        oh, ow = conv.out_size(13, 3, s, p, d), conv.out_size(17, 3, s, p, d)
        rows = np.empty((2, 5, oh, ow), np.float32)
        depthwise.DEPTHWISE_K[1](x, w, 1, s, s, p, p, d, d, oh, ow, rows)
        last = np.empty((2, oh, ow, 5), np.float32)
        depthwise.DEPTHWISE_NHWC_K[1](np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                                      np.ascontiguousarray(w[:, 0].transpose(1, 2, 0)),
                                      s, s, p, p, d, d, oh, ow, last)
        assert np.array_equal(rows.view(np.uint32), last.transpose(0, 3, 1, 2).view(np.uint32)), (s, p, d)
        assert np.allclose(rows, ref.conv2d(x, w, None, (s, s), (p, p), (d, d), 5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CONV_CASES)
def test_deconv2d_matches_reference(case):
    n, c, h, w, o, k, s, p, d, g = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c, o // g, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    if s * (h - 1) + d * (k - 1) + 1 - 2 * p <= 0:
        pytest.skip("empty output")
    got = conv.deconv2d(x, wt, b, (s, s), (p, p), (d, d), g)
    want = ref.deconv2d(x, wt, b, (s, s), (p, p), (d, d), g)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_im2col_col2im_are_adjoint():
    """<im2col(x), y> == <x, col2im(y)> for any x, y: col2im is im2col's transpose."""
    x = rng.standard_normal((3, 7, 6)).astype(np.float32)
    geo = dict(kernel=(3, 2), stride=(2, 1), pad=(1, 1), dilation=(1, 2))
    oh = (7 + 2 - 3) // 2 + 1
    ow = (6 + 2 - (2 * 1 + 1)) // 1 + 1
    cols = im2col(x, geo["kernel"], geo["stride"], geo["pad"], geo["dilation"], (oh, ow))
    y = rng.standard_normal(cols.shape).astype(np.float32)
    back = col2im(y, x.shape, geo["kernel"], geo["stride"], geo["pad"], geo["dilation"], (oh, ow))
    np.testing.assert_allclose((cols * y).sum(), (x * back).sum(), rtol=1e-4)


POOL_CASES = [  # H, W, k, stride, pad, ceil
    (13, 13, 3, 2, 1, True), (12, 12, 2, 2, 0, True), (13, 13, 2, 1, 0, False),
    (7, 9, 3, 3, 1, True), (5, 5, 5, 1, 2, False), (8, 8, 3, 2, 0, True),
]


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("mode", ["max", "ave"])
@pytest.mark.parametrize("parallel_kernels", [False, True])
def test_pooling_matches_reference(case, mode, parallel_kernels, monkeypatch):
    from caffe_surgeon.engine.kernels import parallel
    from caffe_surgeon.layers.caffe_geometry import pool_out
    if parallel_kernels:
        monkeypatch.setattr(parallel, "MIN_PARALLEL_ELEMENTS", 0)
    h, w, k, s, p, ceil = case
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    out_hw = (pool_out(h, k, s, p, ceil), pool_out(w, k, s, p, ceil))
    fn = pooling.maxpool if mode == "max" else pooling.avgpool
    got = fn(x, (k, k), (s, s), (p, p), out_hw)
    want = ref.pool(x, (k, k), (s, s), (p, p), out_hw, mode)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_avgpool_valid_only_divisor():
    # its own generator: the module's depends on which tests ran before (random order)
    x = np.random.default_rng(7).standard_normal((1, 2, 6, 6)).astype(np.float32)
    got = pooling.avgpool(x, (3, 3), (2, 2), (1, 1), (3, 3), divide_by_padded=False)
    want = ref.pool(x, (3, 3), (2, 2), (1, 1), (3, 3), "ave", divide_by_padded=False)
    # a mean of 4-9 float32 values that may cancel to near 0: absolute rounding of ~1e-7
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # The corner window holds 4 valid cells: its value is their mean, not their sum / 9.
    np.testing.assert_allclose(got[0, 0, 0, 0], x[0, 0, :2, :2].mean(), rtol=1e-6)


def _avgpool_in_window_order(x, k, s, p, out_hw, padded):
    # the slow twin of the kernels' order: a float32 sum from +0.0 over the window's rows,
    # then columns, divided in float64 by the (padded or valid) window size
    N, C, H, W = x.shape
    out = np.empty((N, C) + tuple(out_hw), np.float32)
    for n, c, y, xo in np.ndindex(out.shape):
        hs0, ws0 = y * s - p, xo * s - p
        he0, we0 = min(hs0 + k, H + p), min(ws0 + k, W + p)
        hs, he, ws, we = max(hs0, 0), min(he0, H), max(ws0, 0), min(we0, W)
        acc = np.float32(0.0)
        for i in range(hs, he):
            for j in range(ws, we):
                acc = np.float32(acc + x[n, c, i, j])
        size = (he0 - hs0) * (we0 - ws0) if padded else (he - hs) * (we - ws)
        out[n, c, y, xo] = np.float32(np.float64(acc) / size)
    return out


@pytest.mark.parametrize("shape, k, s, p", [((2, 11, 7, 7), 7, 1, 0), ((1, 19, 9, 10), 5, 2, 2),
                                            ((3, 5, 6, 6), 4, 1, 1)])
@pytest.mark.parametrize("padded", [True, False])
def test_avgpool_wide_windows_keep_the_window_order(shape, k, s, p, padded):
    """Windows of 16 taps or more sum 8 planes side by side (a global pool is otherwise one
    latency-bound chain per plane): each sum still runs in window order, so the bits are the
    one-plane loop's, for plane counts that leave a partial last group too."""
    assert k * k >= pooling.WIDE_WINDOW
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    H, W = shape[2:]
    out_hw = ((H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1)
    got = pooling.avgpool(x, (k, k), (s, s), (p, p), out_hw, divide_by_padded=padded)
    want = _avgpool_in_window_order(x, k, s, p, out_hw, padded)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("n, thr, eta, top_k", [(300, 0.45, 1.0, 400), (500, 0.3, 1.0, -1),
                                               (200, 0.7, 0.9, 100), (50, 0.0, 1.0, -1)])
def test_nms_matches_reference(n, thr, eta, top_k):
    from caffe_surgeon.engine import ssd_ops
    centre = rng.random((n, 2))
    size = rng.random((n, 2)) * 0.3
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    boxes[::17, 2] = boxes[::17, 0] - 0.01  # degenerate (negative width) boxes
    boxes[5] = np.nan
    scores = rng.random(n)
    scores[::7] = scores[3]  # ties keep the stable order
    got = ssd_ops.nms_fast(boxes, scores, 0.05, thr, top_k, eta)
    want = ref.nms_fast(boxes, scores, 0.05, thr, top_k, eta)
    assert got == want and len(want) > 3


IM2COL_CASES = [  # N, C, H, W, k, stride, pad, dilation
    (1, 3, 9, 8, 3, 1, 1, 1), (2, 4, 10, 11, 3, 2, 1, 1), (3, 2, 7, 7, 5, 1, 2, 2),
    (1, 5, 6, 6, 1, 1, 0, 1), (2, 2, 5, 9, 7, 3, 3, 1)]


@pytest.mark.parametrize("case", IM2COL_CASES)
@pytest.mark.parametrize("parallel", [False, True])
def test_im2col_batch_matches_reference(case, parallel):
    from caffe_surgeon.engine.kernels.im2col import im2col_batch
    n, c, h, w, k, s, p, d = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    oh, ow = conv.out_size(h, k, s, p, d), conv.out_size(w, k, s, p, d)
    got = im2col_batch(x, (k, k), (s, s), (p, p), (d, d), (oh, ow), parallel=parallel)
    np.testing.assert_array_equal(got, ref.im2col(x, (k, k), (s, s), (p, p), (d, d), (oh, ow)))



def test_im2col_rows_match_reference_over_many_geometries():
    """Rows copy between the padding bounds [lo, hi): every stride 1-4 against padding
    wider than the kernel, maps narrower than the padding, dilation, uneven strides."""
    from caffe_surgeon.engine.kernels.im2col import im2col_batch
    r = np.random.default_rng(5)
    done = 0
    for _ in range(300):
        kh, kw = int(r.integers(1, 8)), int(r.integers(1, 8))
        sh, sw = int(r.integers(1, 5)), int(r.integers(1, 5))
        dh, dw = int(r.integers(1, 3)), int(r.integers(1, 3))
        ph, pw = int(r.integers(0, 9)), int(r.integers(0, 9))
        h, w = int(r.integers(1, 14)), int(r.integers(1, 14))
        oh, ow = conv.out_size(h, kh, sh, ph, dh), conv.out_size(w, kw, sw, pw, dw)
        if oh <= 0 or ow <= 0:
            continue
        x = r.standard_normal((2, 2, h, w)).astype(np.float32)
        got = im2col_batch(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow))
        want = ref.im2col(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow))
        np.testing.assert_array_equal(got, want, err_msg=str((h, w, kh, kw, sh, sw, ph, pw, dh, dw)))
        done += 1
    assert done > 150

def test_im2col_shifted_runs_match_reference():
    """Stride 1 with outputs as wide as the input copies each row as one shifted run of the
    plane: kernels and pads (dilated too) that keep the width, on maps from 1x1 up, and
    tiles of output rows (a row tile's shifted pad, negative past the top) against the
    whole layer's columns."""
    from caffe_surgeon.engine.kernels.im2col import _im2col_batch, im2col_batch
    r = np.random.default_rng(6)
    done = 0
    for _ in range(200):
        kw, dw = int(r.choice([1, 3, 5, 7])), int(r.integers(1, 3))
        pw = dw * (kw - 1) // 2
        kh, dh, ph = int(r.integers(1, 8)), int(r.integers(1, 3)), int(r.integers(0, 9))
        h, w = int(r.integers(1, 16)), int(r.integers(1, 16))
        oh, ow = conv.out_size(h, kh, 1, ph, dh), conv.out_size(w, kw, 1, pw, dw)
        assert ow == w
        if oh <= 0:
            continue
        x = r.standard_normal((2, 3, h, w)).astype(np.float32)
        got = im2col_batch(x, (kh, kw), (1, 1), (ph, pw), (dh, dw), (oh, ow))
        want = ref.im2col(x, (kh, kw), (1, 1), (ph, pw), (dh, dw), (oh, ow))
        np.testing.assert_array_equal(got, want, err_msg=str((h, w, kh, kw, ph, pw, dh, dw)))
        y0 = int(r.integers(0, oh))
        rows = int(r.integers(1, oh - y0 + 1))
        tile = np.full((3 * kh * kw, 1, rows * ow), np.nan, np.float32)
        _im2col_batch(x[1:2], kh, kw, 1, 1, ph - y0, pw, dh, dw, rows, ow, tile)
        whole = want.reshape(-1, 2, oh * ow)[:, 1, y0 * ow:(y0 + rows) * ow]
        np.testing.assert_array_equal(tile[:, 0], whole, err_msg=str((h, w, kh, kw, ph, pw, y0, rows)))
        done += 1
    assert done > 150


@pytest.mark.parametrize("x_shape, w_shape, group", [
    ((6, 32, 7, 7), (24, 32, 3, 3), 1),     # the Fashion net's 3x3 branch
    ((6, 10, 14, 14), (32, 10, 3, 3), 1),
    ((6, 1, 28, 28), (16, 1, 3, 3), 1),     # K 9
    ((6, 8, 9, 11), (12, 4, 3, 3), 2),      # groups
])
def test_whole_image_block_tiles_run_as_row_tiles_with_the_same_bits(monkeypatch, x_shape, w_shape, group):
    """A batch whose block tiles would each be a whole image takes the row tiles (same GEMM
    calls): bit-equal to the images one at a time, which stay on the block tiles."""
    r = np.random.default_rng(8)
    x = r.standard_normal(x_shape).astype(np.float32)
    w = r.standard_normal(w_shape).astype(np.float32)
    b = r.standard_normal(w_shape[0]).astype(np.float32)
    N, C, H, W = x_shape
    og, k = w_shape[0] // group, w_shape[1] * 9
    kind, ob, pb = conv.blas_tiling(N, group, og, k, H, W, conv.TILES, 2)[0]
    assert (kind, ob, pb) == ("block", og, H * W)
    for direct in (conv.direct_conv, conv.direct_conv_thin, conv.pointwise_conv):  # AVX-512's
        monkeypatch.setattr(direct, "use", lambda *a, **k: False)
    ran = []
    row_tiles = conv.ROW_TILES_K
    monkeypatch.setattr(conv, "ROW_TILES_K", tuple(
        (lambda *a, f=f: (ran.append(1), f(*a))[1]) for f in row_tiles))
    whole = conv.conv2d(x, w, b, (1, 1), (1, 1), group=group)
    assert ran
    ran.clear()
    alone = np.concatenate([conv.conv2d(x[n:n + 1], w, b, (1, 1), (1, 1), group=group) for n in range(N)])
    assert not ran
    np.testing.assert_array_equal(whole.view(np.uint32), alone.view(np.uint32))
    np.testing.assert_allclose(whole, ref.conv2d(x, w, b, (1, 1), (1, 1), (1, 1), group), rtol=1e-4, atol=1e-4)


def _epilogue(o):
    from caffe_surgeon.engine.kernels.epilogue import Epilogue
    return (Epilogue(o).add(rng.standard_normal(o)).mul(rng.standard_normal(o)).add(rng.standard_normal(o))
            .leaky(0.1).mul(rng.random(o) + 0.5).relu().clip(-1, 2.5))


@pytest.mark.parametrize("parallel_kernels", [False, True])
def test_epilogue_is_bitwise_the_separate_passes(parallel_kernels, monkeypatch):
    from caffe_surgeon.engine.kernels import epilogue as epi, parallel
    if parallel_kernels:
        monkeypatch.setattr(parallel, "MIN_PARALLEL_ELEMENTS", 0)
    y = (rng.standard_normal((2, 5, 7, 3)) * 3).astype(np.float32)
    y[0, 0, 0, 0] = np.nan
    ep = _epilogue(5)
    want = ref.epilogue(y, ep.stages)
    np.testing.assert_array_equal(epi.apply(y.copy(), ep), want)
    np.testing.assert_array_equal(
        epi.transpose_apply(np.ascontiguousarray(y.transpose(1, 0, 2, 3)).reshape(5, 2, 21), ep).reshape(y.shape),
        want)
    part = y[1].reshape(5, 21).copy()
    epi.apply_cols(part, 4, 17, ep)
    np.testing.assert_array_equal(part[:, 4:17], want[1].reshape(5, 21)[:, 4:17])
    np.testing.assert_array_equal(part[:, :4], y[1].reshape(5, 21)[:, :4])


def _same_bits(got, want):
    """Equal as float32 bit patterns (signed zeros told apart), NaN where NaN."""
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


@pytest.mark.parametrize("parallel_kernels", [False, True])
def test_epilogue_runs_are_bitwise_any_stage_sequence(parallel_kernels, monkeypatch):
    # Runs of MUL/ADD stages and their activation go in one pass: any sequence (runs longer
    # than the 4 a pass takes, activations back to back, none at all), on values that tell
    # signed zeros, infinities, NaN and subnormals apart, equals the separate passes bit for bit
    from caffe_surgeon.engine.kernels import epilogue as epi, parallel
    from caffe_surgeon.engine.kernels.epilogue import Epilogue
    if parallel_kernels:
        monkeypatch.setattr(parallel, "MIN_PARALLEL_ELEMENTS", 0)
    r = np.random.default_rng(11)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-40, 3.4e38, -1.0, 1.0],
                       np.float32)
    for trial in range(60):
        c = int(r.integers(1, 6))
        y = (r.standard_normal((2, c, 9)) * 10.0 ** r.integers(-3, 4)).astype(np.float32)
        y.reshape(-1)[r.integers(0, y.size, 6)] = r.choice(special, 6)
        ep = Epilogue(c)
        for _ in range(int(r.integers(0, 10))):
            kind = int(r.integers(0, 5))
            vec = r.standard_normal(c).astype(np.float32)
            if r.random() < 0.4:
                vec[int(r.integers(0, c))] = r.choice(special)
            if kind == 0:
                ep.mul(vec)
            elif kind == 1:
                ep.add(vec)
            elif kind == 2:
                ep.relu()
            elif kind == 3:
                ep.leaky(float(r.choice([0.1, -0.5, 0.0])))
            else:
                ep.clip(-1.5, 2.0)
        _same_bits(epi.apply(y.copy(), ep), ref.epilogue(y, ep.stages))


TILED_CASES = [  # N, C, H, W, O, k, stride, pad, dilation, group
    (1, 3, 40, 36, 16, 3, 1, 1, 1, 1),   # row tiles
    (3, 8, 23, 17, 12, 3, 2, 1, 1, 2),   # row tiles, groups, several images
    (2, 16, 9, 9, 40, 3, 1, 1, 1, 1),    # block tiles, batch
    (1, 24, 6, 6, 64, 1, 1, 0, 1, 1),    # pointwise
    (4, 24, 5, 7, 20, 1, 1, 0, 1, 1),    # pointwise, batch
    (2, 6, 11, 10, 8, 5, 2, 2, 2, 2),    # dilation + groups
]


@pytest.mark.parametrize("case", TILED_CASES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("tiles", ["rows", "blocks"])
def test_conv2d_tilings_match_reference_and_epilogue_is_exact(case, threads, tiles, monkeypatch):
    """Row tiles and block tiles (whichever the shapes pick), on 1 and 2 threads: the
    reference result, and the fused epilogue equal to the separate passes bit for bit."""
    import numba
    from caffe_surgeon.engine.kernels import epilogue as epi, parallel
    n, c, h, w, o, k, s, p, d, g = case
    monkeypatch.setattr(parallel, "MIN_PARALLEL_MACS", 0)  # tiny layers: still the parallel kernels
    monkeypatch.setattr(parallel, "MIN_PARALLEL_ELEMENTS", 0)
    if tiles == "rows":
        monkeypatch.setattr(conv, "ROW_TILES_ABOVE", 0)
        monkeypatch.setattr(conv, "TILE_BYTES", 4 * (c // g) * k * k * g * 7)  # a few rows a tile
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c // g, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = conv.conv2d(x, wt, b, (s, s), (p, p), (d, d), g)
        ep = _epilogue(o)
        fused = conv.conv2d(x, wt, b, (s, s), (p, p), (d, d), g, epilogue=ep)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_allclose(got, ref.conv2d(x, wt, b, (s, s), (p, p), (d, d), g), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(fused, epi.apply(got.copy(), ep))


THREAD_CASES = {  # the four conv paths at sizes the pool takes: N, C, H, W, O, k
    "row tiles": (1, 64, 104, 104, 64, 3),
    "wide tiles": (4, 256, 7, 7, 512, 1),
    "block tiles": (1, 128, 28, 28, 128, 1),
    "winograd": (2, 128, 26, 26, 128, 3),
}


@pytest.mark.parametrize("path", sorted(THREAD_CASES))
def test_conv_results_do_not_depend_on_the_thread_count(path):
    """The tiling is fixed by the shapes, so the GEMM shapes and the rounding are too: ana's
    worker processes may use any thread count and still agree bit for bit."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    n, c, h, w, o, k = THREAD_CASES[path]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c, k, k)).astype(np.float32)
    assert conv.use_winograd(x.shape, wt.shape, (1, 1), (1, 1), 1, (k // 2, k // 2)) == \
        (path == "winograd")
    before = numba.get_num_threads()
    out = {}
    try:
        for t in (1, 2):
            numba.set_num_threads(t)
            out[t] = conv.conv2d(x, wt, None, pad=(k // 2, k // 2))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(out[1], out[2])



@pytest.mark.parametrize("path", sorted(THREAD_CASES))
def test_a_kept_plan_gives_the_bits_of_choosing_anew_and_follows_the_thread_count(path):
    import numba
    n, c, h, w, o, k = THREAD_CASES[path]
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c, k, k)).astype(np.float32)
    ep = conv.epi.Epilogue(o).mul(rng.random(o, dtype=np.float32)).add(rng.random(o, dtype=np.float32)).relu()
    plans = {}
    before = numba.get_num_threads()
    try:
        for t in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(t)
            fresh = conv.conv2d(x, wt, None, pad=(k // 2, k // 2), epilogue=ep)
            planned = conv.conv2d(x, wt, None, pad=(k // 2, k // 2), epilogue=ep, plans=plans, plan_key=0)
            plan = plans[0]
            assert plan.threads == t  # a plan made for another thread count is not reused
            again = conv.conv2d(x, wt, None, pad=(k // 2, k // 2), epilogue=ep, plans=plans, plan_key=0)
            assert plans[0] is plan
            np.testing.assert_array_equal(planned.view(np.uint32), fresh.view(np.uint32))
            np.testing.assert_array_equal(again.view(np.uint32), fresh.view(np.uint32))
    finally:
        numba.set_num_threads(before)
    other = conv.epi.Epilogue(o).clip(0, 6)  # another epilogue: chosen anew
    got = conv.conv2d(x, wt, None, pad=(k // 2, k // 2), epilogue=other, plans=plans, plan_key=0)
    np.testing.assert_array_equal(got, conv.conv2d(x, wt, None, pad=(k // 2, k // 2), epilogue=other))
    assert plans[0] is not plan

OWN_JOB_CASES = [  # N, C, H, O: a 14x14 map cut 64, 64, 64 and 4 pixels (the last on the BLAS's
    # small kernel), MobileNet v2's classifier (one GEMV-like call), 7x7 cut by channels, a batch
    (1, 576, 14, 96), (1, 1280, 1, 1000), (1, 960, 7, 160), (2, 200, 9, 100)]


@pytest.mark.parametrize("case", OWN_JOB_CASES)
def test_our_gemm_tiles_in_panel_jobs_give_the_blas_bits_at_any_thread_count(case, forced):
    """At 2 threads the tiles on our GEMM are cut further into jobs of whole weight panels
    (and run in the pool even below the BLAS's threshold): the same bits as one thread and as
    OpenBLAS alone."""
    import numba
    from caffe_surgeon.engine.kernels import epilogue as epi
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    n, c, h, o = case
    r = np.random.default_rng(13)
    x = r.standard_normal((n, c, h, h)).astype(np.float32)
    wt = (r.standard_normal((o, c, 1, 1)) * 0.05).astype(np.float32)
    ep = _epilogue(o)
    before = numba.get_num_threads()
    out = {}
    try:
        for blocking in ("auto", None):
            forced(blocking)
            for t in (1, 2):
                numba.set_num_threads(t)
                out[blocking, t] = conv.conv2d(x, wt, None, epilogue=ep)
    finally:
        numba.set_num_threads(before)
    for got in out.values():
        np.testing.assert_array_equal(got, out[None, 1])
    want = epi.apply(ref.conv2d(x, wt, None, (1, 1), (0, 0), (1, 1), 1), ep)
    np.testing.assert_allclose(out["auto", 2], want, rtol=1e-4, atol=1e-4)


WINOGRAD_CASES = [  # N, C, H, W, O, pad
    (1, 5, 7, 9, 6, 1), (2, 3, 6, 6, 4, 0), (1, 4, 8, 5, 3, 2), (3, 2, 3, 3, 2, 1)]


def test_winograd_weight_transform_is_its_definition_bit_for_bit():
    # G g G^T has products by 0.5 and sums of float32 values in float64: exact whatever the
    # order, so the kernel and the einsum agree to the last bit, over any range of magnitudes
    from caffe_surgeon.engine.kernels import winograd
    r = np.random.default_rng(7)
    for shape in [(1, 1, 3, 3), (5, 3, 3, 3), (64, 48, 3, 3)]:
        wt = (r.standard_normal(shape) * 10.0 ** r.integers(-20, 20, shape)).astype(np.float32)
        np.testing.assert_array_equal(winograd.transform_weights(wt), ref.winograd_weights(wt))
    wt = r.standard_normal((3, 2, 3, 3)).astype(np.float32)
    u = winograd.transform_weights(wt)
    assert u.shape == (16, 3, 2) and u[5, 1, 0] == np.float32(np.float64(wt[1, 0]).sum() / 4)


@pytest.mark.parametrize("case", WINOGRAD_CASES)
def test_winograd_matches_its_definition_and_direct_conv(case):
    from caffe_surgeon.engine.kernels import blas, winograd
    from caffe_surgeon.engine.kernels.epilogue import Epilogue
    n, c, h, w, o, p = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    oh, ow = h + 2 * p - 2, w + 2 * p - 2
    u = winograd.transform_weights(wt)
    for threads in (1, 2):
        got = winograd.conv2d(blas.gemm(), x, u, (p, p), (oh, ow), Epilogue(o).arrays(), threads)
        np.testing.assert_allclose(got, ref.winograd_conv2d(x, wt, (p, p)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, ref.conv2d(x, wt, None, (1, 1), (p, p), (1, 1), 1), rtol=1e-4, atol=1e-4)


BLOCKED_WINOGRAD_CASES = [  # N, C, H, W, O, pad: res10's 38x38, odd maps, a batch, pad 0
    (1, 128, 38, 38, 128, 1), (2, 64, 27, 25, 128, 1), (1, 96, 33, 30, 64, 0), (3, 128, 20, 20, 96, 1)]


@pytest.mark.parametrize("blocking", ["auto", None])
@pytest.mark.parametrize("case", BLOCKED_WINOGRAD_CASES)
def test_blocked_winograd_gives_the_whole_layer_bits(case, blocking, forced, monkeypatch):
    """Runs of tile rows with their V and M in cache: the same GEMM sums (columns cut, never
    K, every call above the small-matrix size), the same transforms and epilogue, whether
    OpenBLAS (None) or our kernels run the GEMMs, at 1 and 2 threads."""
    import numba
    from caffe_surgeon.engine.kernels import epilogue as epi
    from caffe_surgeon.engine.kernels import winograd
    n, c, h, w, o, p = case
    forced(blocking)
    # OpenBLAS's Haswell kernel (AVX2): the two paths' column cuts round differently, so there
    # they agree to float32 rounding only and the engine picks one per layer whatever the
    # thread count (test_direct_conv_thin.py)
    same_bits = microkernel.cuts_change_no_sum()
    oh, ow = h + 2 * p - 2, w + 2 * p - 2
    if not same_bits and not winograd.blocked_groups(n, c, o, (oh, ow), 1):
        pytest.skip("a single run: planned for 2 threads, this layer takes the whole-layer path here")
    assert winograd.blocked_groups(n, c, o, (oh, ow), 1) > 0
    r = np.random.default_rng(11)
    x = r.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (r.standard_normal((o, c, 3, 3)) * 0.1).astype(np.float32)
    b = r.standard_normal(o).astype(np.float32)
    ep = _epilogue(o)
    u = winograd.transform_weights(wt)
    before = numba.get_num_threads()
    try:
        for t in (1, 2) if numba.config.NUMBA_NUM_THREADS >= 2 else (1,):
            numba.set_num_threads(t)
            blocked = conv.conv2d(x, wt, b, (1, 1), (p, p), epilogue=ep, winograd_u=u)
            with monkeypatch.context() as m:
                m.setattr(winograd, "blocked_groups", lambda *a: 0)
                whole = conv.conv2d(x, wt, b, (1, 1), (p, p), epilogue=ep, winograd_u=u)
            if same_bits:
                np.testing.assert_array_equal(blocked, whole)
            else:  # two float32 roundings of 128-channel Winograd sums: each within 1e-4 of float64
                np.testing.assert_allclose(blocked, whole, rtol=1e-4, atol=1e-4)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_allclose(blocked, epi.apply(ref.conv2d(x, wt, b, (1, 1), (p, p), (1, 1), 1), ep),
                               rtol=1e-4, atol=1e-4)


def test_blocked_winograd_runs_stay_above_the_small_matrix_size_and_move_less_memory():
    from caffe_surgeon.engine.kernels import microkernel, winograd
    for c, o, th, tw in [(128, 128, 19, 19), (64, 128, 26, 26), (16, 16, 40, 40), (8, 8, 100, 3)]:
        rows = winograd.blocked_rows(c, o, th, tw, microkernel.SMALL_MNK)
        if rows:  # the shortest run (th // (th // rows) rows or more) is above it
            groups = th // rows
            assert o * (th // groups) * tw * c > microkernel.SMALL_MNK
    # the 8 -> 8 map: no run of 3-tile rows up to 99 is long enough
    assert winograd.blocked_rows(8, 8, 100, 3, microkernel.SMALL_MNK) == 0
    # res10's 128 -> 128 on 38x38 (V and M 2.9 MB each, U 1 MB): blocked, 4 runs
    assert winograd.blocked_groups(1, 128, 128, (38, 38), 2) == 4
    # yolov3-tiny's 512 -> 1024 on 13x13 (U 32 MB, re-read by every run): whole
    assert winograd.blocked_groups(1, 512, 1024, (13, 13), 1) == 0
    # too few runs for 2 threads: whole (its 16 GEMMs share out)
    assert winograd.blocked_groups(1, 128, 128, (16, 16), 2) == 0


@pytest.mark.parametrize("n, c, o, hw", [(1, 64, 128, (13, 11)), (2, 96, 80, (10, 9))])
def test_conv2d_takes_winograd_for_wide_3x3_layers(n, c, o, hw):
    from caffe_surgeon.engine.kernels import epilogue as epi
    assert conv.use_winograd((n, c) + hw, (o, c, 3, 3), (1, 1), (1, 1), 1)
    assert not conv.use_winograd((n, c) + hw, (o, c, 3, 3), (2, 2), (1, 1), 1)
    assert not conv.use_winograd((1, c, 7, 7), (o, c, 3, 3), (1, 1), (1, 1), 1)  # 16 tiles only
    x = rng.standard_normal((n, c) + hw).astype(np.float32)
    wt = (rng.standard_normal((o, c, 3, 3)) * 0.1).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    got = conv.conv2d(x, wt, b, (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(got, ref.conv2d(x, wt, b, (1, 1), (1, 1), (1, 1), 1), rtol=1e-4, atol=1e-4)
    ep = _epilogue(o)
    np.testing.assert_array_equal(conv.conv2d(x, wt, b, (1, 1), (1, 1), (1, 1), 1, epilogue=ep),
                                  epi.apply(got.copy(), ep))


@pytest.mark.parametrize("parallel_kernels", [False, True])
def test_conv2d_batch_of_small_maps_goes_side_by_side(parallel_kernels, monkeypatch):
    """og > P with several images: one wide GEMM over the batch, then back to NCHW."""
    from caffe_surgeon.engine.kernels import parallel
    if parallel_kernels:
        monkeypatch.setattr(parallel, "MIN_PARALLEL_MACS", 0)
    x = rng.standard_normal((3, 20, 4, 5)).astype(np.float32)
    wt = rng.standard_normal((48, 20, 2, 2)).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    for s, p in (((1, 1), (0, 0)), ((2, 1), (1, 0))):
        got = conv.conv2d(x, wt, b, s, p, (1, 1), 1)
        np.testing.assert_allclose(got, ref.conv2d(x, wt, b, s, p, (1, 1), 1), rtol=1e-4, atol=1e-4)
    w1 = rng.standard_normal((40, 20, 1, 1)).astype(np.float32)
    np.testing.assert_allclose(conv.conv2d(x, w1, b[:40]), ref.conv2d(x, w1, b[:40], (1, 1), (0, 0), (1, 1), 1),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, axis", [((2, 5, 3, 4), 1), ((1, 8892, 2), 2), ((3, 7), 1), ((2, 3, 4), 0)])
def test_softmax_matches_reference(shape, axis, monkeypatch):
    from caffe_surgeon.engine.kernels import channelwise, parallel
    monkeypatch.setattr(parallel, "MIN_PARALLEL_ELEMENTS", 0)
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    np.testing.assert_allclose(channelwise.softmax(x, axis), ref.softmax(x, axis), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale_size", [1, 6])
def test_l2_normalize_channels_matches_reference(scale_size):
    from caffe_surgeon.engine.kernels import channelwise
    x = rng.standard_normal((2, 6, 5, 7)).astype(np.float32)
    scale = (rng.random(scale_size) * 20).astype(np.float32)
    np.testing.assert_allclose(channelwise.l2_normalize_channels(x, 1e-10, scale),
                               ref.l2_normalize_channels(x, 1e-10, scale), rtol=1e-6)

