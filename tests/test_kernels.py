"""Every Numba kernel against its slow NumPy twin (kernels/reference.py)."""
from __future__ import annotations

import numpy as np
import pytest

from caffe_surgeon.engine.kernels import conv, pooling, reference as ref
from caffe_surgeon.engine.kernels.im2col import col2im, im2col

rng = np.random.default_rng(0)

CONV_CASES = [  # N, C, H, W, O, k, stride, pad, dilation, group
    (2, 3, 9, 8, 4, 3, 1, 1, 1, 1),
    (1, 4, 10, 10, 6, 3, 2, 1, 1, 2),
    (2, 6, 7, 7, 6, 3, 1, 1, 1, 6),      # depthwise
    (1, 4, 9, 9, 8, 3, 2, 1, 1, 4),      # depthwise, multiplier 2
    (1, 4, 6, 6, 8, 1, 1, 0, 1, 1),      # 1x1 fast path
    (1, 3, 11, 9, 5, 3, 2, 2, 2, 1),     # dilation
    (3, 5, 12, 7, 7, 5, 3, 0, 1, 1),     # no pad, odd sizes
    (1, 2, 5, 5, 4, 7, 1, 3, 1, 2),      # kernel larger than image
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_reference(case):
    n, c, h, w, o, k, s, p, d, g = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c // g, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    got = conv.conv2d(x, wt, b, (s, s), (p, p), (d, d), g)
    want = ref.conv2d(x, wt, b, (s, s), (p, p), (d, d), g)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


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
def test_pooling_matches_reference(case, mode):
    from caffe_surgeon.layers.caffe_geometry import pool_out
    h, w, k, s, p, ceil = case
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    out_hw = (pool_out(h, k, s, p, ceil), pool_out(w, k, s, p, ceil))
    fn = pooling.maxpool if mode == "max" else pooling.avgpool
    got = fn(x, (k, k), (s, s), (p, p), out_hw)
    want = ref.pool(x, (k, k), (s, s), (p, p), out_hw, mode)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_avgpool_valid_only_divisor():
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    got = pooling.avgpool(x, (3, 3), (2, 2), (1, 1), (3, 3), divide_by_padded=False)
    want = ref.pool(x, (3, 3), (2, 2), (1, 1), (3, 3), "ave", divide_by_padded=False)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # The corner window holds 4 valid cells: its value is their mean, not their sum / 9.
    np.testing.assert_allclose(got[0, 0, 0, 0], x[0, 0, :2, :2].mean(), rtol=1e-6)
