"""The plane depthwise kernel (kernels/depthwise_planes.py): the same bits as the tap-skipping
kernels it replaces, epilogue fused, whatever the shape, the path or the thread count."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from caffe_surgeon.engine.kernels import conv, depthwise, depthwise_3x3, depthwise_planes, parallel
from caffe_surgeon.engine.kernels import reference as ref
from caffe_surgeon.engine.kernels import epilogue as epi

PLANE_CASES = [  # N, C, multiplier, H, W, kh, kw, stride, pad, dilation
    (1, 5, 1, 13, 17, 3, 3, 1, 1, 1),
    (3, 4, 1, 9, 8, 3, 3, 2, 1, 1),      # batch 3, stride 2, even width
    (1, 4, 2, 9, 9, 3, 3, 2, 1, 1),      # channel multiplier 2
    (2, 3, 3, 12, 15, 5, 5, 2, 2, 2),    # multiplier 3, 5x5, dilation 2, pad 2
    (1, 6, 1, 11, 10, 3, 3, 1, 2, 2),    # dilation 2, pad 2
    (1, 4, 1, 7, 7, 3, 3, 2, 0, 1),      # no pad, stride 2
    (2, 3, 1, 1, 1, 3, 3, 1, 1, 1),      # 1x1 map: every tap but the centre padded
    (1, 3, 1, 2, 3, 3, 3, 2, 2, 1),      # 2x3 map, pad larger than the map
    (1, 2, 1, 6, 9, 1, 1, 1, 0, 1),      # 1x1 kernel
    (1, 2, 1, 8, 9, 2, 3, 3, 1, 1),      # non-square kernel, stride 3
    (1, 3, 1, 61, 60, 3, 3, 1, 1, 1),    # rows wider than a vector, several blocks
    (1, 2, 1, 115, 113, 3, 3, 2, 1, 1),  # odd width at stride 2, several blocks
]


def _case(case, seed=0):
    n, c, m, h, w, kh, kw, s, p, d = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c * m, 1, kh, kw)).astype(np.float32)
    o = c * m
    ep = (epi.Epilogue(o).add(rng.standard_normal(o)).mul(rng.standard_normal(o))
          .add(rng.standard_normal(o)).relu().clip(-1, 2.5))
    out_hw = (conv.out_size(h, kh, s, p, d), conv.out_size(w, kw, s, p, d))
    return x, wt, (s, s), (p, p), (d, d), out_hw, ep


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


@pytest.mark.parametrize("case", PLANE_CASES)
def test_plane_kernel_gives_the_tap_skipping_kernels_bits_with_the_epilogue_fused(case):
    x, wt, s, p, d, out_hw, ep = _case(case)
    got = depthwise_planes.depthwise_planes(x, wt, s, p, d, out_hw, ep.arrays())
    plain = depthwise.depthwise_unfused(x, wt, s, p, d, out_hw)
    np.testing.assert_array_equal(_bits(got), _bits(epi.apply(plain.copy(), ep)))
    bare = depthwise_planes.depthwise_planes(x, wt, s, p, d, out_hw, epi.Epilogue(wt.shape[0]).arrays())
    np.testing.assert_array_equal(_bits(bare), _bits(plain))
    np.testing.assert_allclose(bare, ref.conv2d(x, wt, None, s, p, d, x.shape[1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [PLANE_CASES[1], PLANE_CASES[3], PLANE_CASES[10]])
def test_plane_kernel_does_not_depend_on_the_thread_count(case, monkeypatch):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    monkeypatch.setattr(depthwise_planes, "MIN_PARALLEL_MACS", 0)  # the parallel build at 2 threads
    x, wt, s, p, d, out_hw, ep = _case(case, seed=3)
    before = numba.get_num_threads()
    out = {}
    try:
        for t in (1, 2):
            numba.set_num_threads(t)
            out[t] = depthwise_planes.depthwise_planes(x, wt, s, p, d, out_hw, ep.arrays())
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(_bits(out[1]), _bits(out[2]))


def test_padded_taps_leave_signed_zeros_and_infinite_inputs_as_the_skipping_kernels_do():
    """A padded tap adds 0*w (+-0.0): a sum that starts at +0.0 keeps its bits, so outputs
    that are exactly zero stay +0.0, and infinities in the map propagate the same way."""
    x = np.zeros((1, 2, 5, 6), np.float32)
    x[0, 1, 2, 3] = np.inf
    x[0, 0, 0, 0] = -0.0
    wt = -np.abs(np.random.default_rng(1).standard_normal((2, 1, 3, 3))).astype(np.float32)
    for s in (1, 2):
        out_hw = (conv.out_size(5, 3, s, 1, 1), conv.out_size(6, 3, s, 1, 1))
        got = depthwise_planes.depthwise_planes(x, wt, (s, s), (1, 1), (1, 1), out_hw,
                                                epi.Epilogue(2).arrays())
        want = depthwise.depthwise_unfused(x, wt, (s, s), (1, 1), (1, 1), out_hw)
        np.testing.assert_array_equal(_bits(got), _bits(want))
        assert not np.signbit(got[0, 0]).any()


def test_non_finite_weights_take_the_tap_skipping_kernels():
    """0 * inf is NaN: with an infinite weight a padded tap would poison edge outputs that
    the skipping kernels leave finite, so the plane kernel declines and conv2d falls back."""
    x, wt, s, p, d, out_hw, ep = _case((1, 3, 1, 16, 16, 3, 3, 1, 1, 1))
    wt[1, 0, 0, 0] = np.inf
    assert depthwise_planes.depthwise_planes(x, wt, s, p, d, out_hw, ep.arrays()) is None
    got = conv.conv2d(x, wt, None, s, p, d, 3, epilogue=ep)
    want = epi.apply(depthwise.depthwise_unfused(x, wt, s, p, d, out_hw), ep)
    np.testing.assert_array_equal(_bits(got), _bits(want))
    bare = conv.conv2d(x, wt, None, s, p, d, 3)
    assert np.isfinite(bare[0, 1, 0]).all() and np.isinf(bare[0, 1, 1:, 1:]).all()


@pytest.mark.parametrize("hw,stride,k", [((16, 16), 1, 3), ((28, 30), 2, 3), ((7, 7), 1, 3),
                                         ((28, 30), 2, 5), ((9, 9), 3, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_conv2d_depthwise_with_fused_epilogue_equals_the_separate_passes(hw, stride, k, threads,
                                                                         monkeypatch):
    """conv2d on a depthwise layer, any path (3x3 pad 1 at stride 1 or 2 in depthwise_3x3, else
    the plane kernel from 14x14 outputs, channels-last below), bias + epilogue fused: the
    bits of today's kernel followed by the separate passes."""
    monkeypatch.setattr(parallel, "MIN_PARALLEL_MACS", 0)
    monkeypatch.setattr(depthwise_planes, "MIN_PARALLEL_MACS", 0)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 24) + hw).astype(np.float32)
    wt = rng.standard_normal((24, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    ep = epi.Epilogue(24).mul(rng.standard_normal(24)).add(rng.standard_normal(24)).clip(0, 6)
    out_hw = tuple(conv.out_size(v, k, stride, 1, 1) for v in hw)
    planes = []
    real = depthwise.depthwise_planes
    monkeypatch.setattr(depthwise, "depthwise_planes", lambda *a: planes.append(1) or real(*a))
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = conv.conv2d(x, wt, b, (stride, stride), (1, 1), (1, 1), 24, epilogue=ep)
    finally:
        numba.set_num_threads(before)
    three = depthwise_3x3.applies(wt.shape, (stride, stride), (1, 1), (1, 1))
    assert bool(planes) == (not three and out_hw[0] * out_hw[1] >= depthwise.PLANES_MIN_PIXELS)
    want = depthwise.depthwise_unfused(x, wt, (stride, stride), (1, 1), (1, 1), out_hw)
    want = epi.apply(epi.apply(want, epi.Epilogue(24).add(b)), ep)
    np.testing.assert_array_equal(_bits(got), _bits(want))
