"""The 3x3 depthwise kernels of kernels/depthwise_3x3.py (stride 1 on whole planes, stride 2
by rows, in zmm or ymm vectors): the bits of the tap-skipping kernels with the epilogue after
them, whatever the map, the batch, the channel multiplier or the thread count, no read
outside the input, and the path conv2d takes."""
from __future__ import annotations

import ctypes
import mmap

import numba
import numpy as np
import pytest

from caffe_surgeon.engine.kernels import conv, depthwise, depthwise_3x3, parallel
from caffe_surgeon.engine.kernels import epilogue as epi

CASES = [  # N, C, multiplier, H, W
    (1, 5, 1, 13, 17),
    (3, 4, 1, 9, 8),     # batch 3
    (1, 4, 2, 9, 9),     # channel multiplier 2: planes 2c and 2c+1 read plane c
    (2, 3, 3, 7, 7),     # multiplier 3 on a MobileNet-sized 7x7 map
    (2, 3, 1, 1, 1),     # 1x1 map: every tap but the centre padded
    (1, 3, 1, 1, 19),    # one row: no row above or below
    (1, 3, 1, 21, 1),    # one column
    (1, 2, 1, 2, 2),
    (1, 3, 1, 4, 4),     # 16 pixels: exactly one vector
    (1, 3, 1, 3, 6),     # 18 pixels: a vector and a 2-lane tail
    (1, 3, 1, 61, 60),   # rows wider than a vector
    (1, 2, 1, 33, 35),   # stride 2: odd width, an output row of 18 (a vector and a tail)
    (1, 2, 1, 64, 64),   # stride 2: output rows of exactly two vectors
    (2, 3, 1, 21, 53),   # stride 2 in ymm: output rows of 27, three whole vectors and a tail
]


def _case(case, seed=0):
    n, c, m, h, w = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c * m, 1, 3, 3)).astype(np.float32)
    o = c * m
    ep = (epi.Epilogue(o).add(rng.standard_normal(o)).mul(rng.standard_normal(o))
          .add(rng.standard_normal(o)).relu().clip(-1, 2.5))
    return x, wt, ep


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


def _skipping(x, wt, s=1):
    out_hw = tuple(conv.out_size(v, 3, s, 1, 1) for v in x.shape[2:])
    return depthwise.depthwise_unfused(x, wt, (s, s), (1, 1), (1, 1), out_hw)


#: (stride, lanes): the zmm and ymm kernels, whatever this machine runs
KERNELS = [(1, 16), (1, 8), (2, 16), (2, 8)]


@pytest.mark.parametrize("stride,lanes", KERNELS)
@pytest.mark.parametrize("case", CASES)
def test_3x3_kernel_gives_the_tap_skipping_kernels_bits_with_the_epilogue(case, stride, lanes):
    x, wt, ep = _case(case)
    plain = _skipping(x, wt, stride)
    got = depthwise_3x3.depthwise_3x3(x, wt, (stride, stride), ep.arrays(), lanes)
    np.testing.assert_array_equal(_bits(got), _bits(epi.apply(plain.copy(), ep)))
    bare = depthwise_3x3.depthwise_3x3(x, wt, (stride, stride), epi.Epilogue(wt.shape[0]).arrays(), lanes)
    np.testing.assert_array_equal(_bits(bare), _bits(plain))


@pytest.mark.parametrize("stride,lanes", KERNELS)
@pytest.mark.parametrize("hw", [(7, 7), (12, 21)])
def test_3x3_kernel_reads_nothing_outside_its_plane(stride, lanes, hw):
    """Huge values in the neighbouring planes of a batch: a tap that strays across a plane's
    edge (a wrong mask or offset) would carry them into the edge outputs."""
    rng = np.random.default_rng(5)
    x = np.full((3, 4) + hw, 1e30, np.float32)
    x[1, 2] = rng.standard_normal(hw)
    wt = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    got = depthwise_3x3.depthwise_3x3(x, wt, (stride, stride), epi.Epilogue(4).arrays(), lanes)
    np.testing.assert_array_equal(_bits(got[1, 2]), _bits(_skipping(x, wt, stride)[1, 2]))
    assert np.abs(got[1, 2]).max() < 100


def _between_guard_pages(shape, at_start: bool):
    """A float32 array of ``shape`` that starts right after (or ends right before) a page
    nobody may read: a load past the input's first or last float faults."""
    page = mmap.PAGESIZE
    nbytes = int(np.prod(shape)) * 4
    span = -(-nbytes // page) * page
    region = mmap.mmap(-1, span + 2 * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for guard in (base, base + page + span):
        assert libc.mprotect(guard, page, 0) == 0, ctypes.get_errno()
    offset = page if at_start else page + span - nbytes
    return np.frombuffer(region, np.float32, int(np.prod(shape)), offset).reshape(shape), region


@pytest.mark.parametrize("stride,lanes", KERNELS)
@pytest.mark.parametrize("hw", [(16, 24), (9, 13)])
def test_3x3_kernel_loads_nothing_before_or_after_the_input(stride, lanes, hw):
    """The input between two unreadable pages: the first plane's top row and the last plane's
    bottom row (whose taps reach W + 1 floats beyond the input) must mask their loads."""
    rng = np.random.default_rng(8)
    wt = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    for at_start in (True, False):
        x, region = _between_guard_pages((1, 2) + hw, at_start)
        x[...] = rng.standard_normal(x.shape)
        got = depthwise_3x3.depthwise_3x3(x, wt, (stride, stride), epi.Epilogue(2).arrays(), lanes)
        np.testing.assert_array_equal(_bits(got), _bits(_skipping(np.array(x), wt, stride)))
        del x


@pytest.mark.parametrize("hw", [(16, 24), (9, 13), (5, 3), (3, 1)])
def test_stride_2_ymm_stores_nothing_after_the_output(hw):
    """A row's partial last vector is stored whole where later rows of its plane take the
    spare lanes: never past the plane's end, so never past the output's last float (here
    right before an unwritable page) or into a plane another thread has written."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 3) + hw).astype(np.float32)
    wt = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    oh, ow = (hw[0] + 1) // 2, (hw[1] + 1) // 2
    out, region = _between_guard_pages((1, 3, oh * ow), at_start=False)
    codes, vecs, params = epi.Epilogue(3).arrays()
    depthwise_3x3.DEPTHWISE_3X3_S2_K[1](x, np.ascontiguousarray(wt[:, 0]), 1, oh, ow, True, out,
                                         codes, vecs, params)
    want = _skipping(x, wt, 2).reshape(1, 3, oh * ow)
    np.testing.assert_array_equal(_bits(out), _bits(want))
    del out


@pytest.mark.parametrize("stride,lanes", KERNELS)
def test_3x3_kernel_does_not_depend_on_the_thread_count(stride, lanes, monkeypatch):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    monkeypatch.setattr(depthwise_3x3, "MIN_PARALLEL_MACS", 0)  # the parallel build at 2 threads
    x, wt, ep = _case((2, 24, 2, 15, 14), seed=3)
    out = {}
    before = numba.get_num_threads()
    try:
        for t in (1, 2):
            numba.set_num_threads(t)
            out[t] = depthwise_3x3.depthwise_3x3(x, wt, (stride, stride), ep.arrays(), lanes)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(_bits(out[1]), _bits(out[2]))
    np.testing.assert_array_equal(_bits(out[1]), _bits(epi.apply(_skipping(x, wt, stride), ep)))


def test_non_finite_weights_are_declined():
    x, wt, ep = _case((1, 3, 1, 8, 8))
    wt[2, 0, 2, 2] = -np.inf
    for stride, lanes in KERNELS:
        assert depthwise_3x3.depthwise_3x3(x, wt, (stride, stride), ep.arrays(), lanes) is None


@pytest.mark.parametrize("hw", [(7, 7), (28, 28), (5, 40)])
def test_conv2d_takes_the_3x3_kernels_for_stride_1_or_2_pad_1_only(hw, monkeypatch):
    monkeypatch.setattr(parallel, "MIN_PARALLEL_MACS", 0)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 16) + hw).astype(np.float32)
    wt = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    calls = []
    real = depthwise_3x3.depthwise_3x3
    monkeypatch.setattr(depthwise_3x3, "depthwise_3x3", lambda *a: calls.append(1) or real(*a))
    for stride, pad, taken in [(1, 1, True), (2, 1, True), (3, 1, False), (1, 0, False)]:
        calls.clear()
        got = conv.conv2d(x, wt, b, (stride, stride), (pad, pad), (1, 1), 16)
        assert bool(calls) == (taken and (depthwise_3x3.USABLE or depthwise_3x3.USABLE_YMM))
        out_hw = tuple(conv.out_size(v, 3, stride, pad, 1) for v in hw)
        want = depthwise.depthwise_unfused(x, wt, (stride, stride), (pad, pad), (1, 1), out_hw)
        np.testing.assert_array_equal(_bits(got), _bits(epi.apply(want, epi.Epilogue(16).add(b))))
