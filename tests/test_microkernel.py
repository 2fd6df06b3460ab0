"""The GEMM micro-kernel against OpenBLAS (bit for bit, where the engine uses it) and against
float64, and the convolutions that use it against the same convolutions on OpenBLAS."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from caffe_surgeon.engine.kernels import blas, conv, microkernel, reference
from caffe_surgeon.engine.kernels.epilogue import Epilogue

F32 = np.float32


def _blas_or_skip():
    if blas.gemm() is None:
        pytest.skip("no callable OpenBLAS in this NumPy")
    return blas.gemm()


def _random_case(rng):
    M = int(rng.integers(1, 40))
    N = int(rng.integers(1, 70))
    K = int(rng.integers(1, 1400))
    ldb = N + int(rng.integers(0, 20))
    ldc = N + int(rng.integers(0, 20))
    return M, N, K, ldb, ldc


def test_gemm_matches_float64_on_ragged_shapes_offsets_and_strides():
    # M not a multiple of MR, N not of NR, K cut in several blocks, operands at offsets with
    # row strides wider than the rows: the padding lanes and rows must never be written
    rng = np.random.default_rng(0)
    for _ in range(60):
        M, N, K, ldb, ldc = _random_case(rng)
        q, u = int(rng.choice([64, 128, 448])), int(rng.choice([1, 16]))
        a = rng.standard_normal((1, M, K), dtype=F32)
        b_off, c_off = int(rng.integers(0, 9)), int(rng.integers(0, 9))
        b = rng.standard_normal(b_off + K * ldb, dtype=F32)
        c = np.full(c_off + M * ldc + 5, 7.0, F32)
        microkernel.gemm(microkernel.pack_weights(a), 0, M, N, K, b, b_off, ldb, c, c_off, ldc, q, u)
        bm = b[b_off:].reshape(K, ldb)[:, :N].astype(np.float64)
        want = a[0].astype(np.float64) @ bm
        got = c[c_off:c_off + M * ldc].reshape(M, ldc)
        np.testing.assert_allclose(got[:, :N], want, rtol=1e-4, atol=1e-4 * np.sqrt(K))
        assert (got[:, N:] == 7.0).all(), "wrote past the columns"
        assert (c[:c_off] == 7.0).all() and (c[c_off + M * ldc:] == 7.0).all()


def test_packed_blocks_address_every_row_of_every_group():
    rng = np.random.default_rng(1)
    G, og, k, block = 3, 29, 11, 16
    wg = rng.standard_normal((G, og, k), dtype=F32)
    panels = microkernel.pack_weights(wg, block)
    MR = microkernel.MR
    for g in range(G):
        for o0 in range(0, og, block):
            start = microkernel.block_offset(g, o0, og, block, k)
            for r in range(min(block, og - o0)):
                p, i = divmod(r, MR)
                got = panels[start + p * k * MR + np.arange(k) * MR + i]
                np.testing.assert_array_equal(got, wg[g, o0 + r])


def test_gemm_is_bit_equal_to_openblas_where_the_engine_uses_it(forced):
    gemm = _blas_or_skip()
    blocking = forced()
    if blocking is None:
        pytest.skip("our kernel does not reproduce this machine's OpenBLAS: the engine keeps OpenBLAS")
    q, u = blocking
    rng = np.random.default_rng(2)
    checked = 0
    with blas.single_threaded():
        while checked < 25:
            M, N, K = int(rng.integers(8, 200)), int(rng.integers(16, 900)), int(rng.integers(16, 2500))
            if M * N * K <= microkernel.SMALL_MNK:
                continue
            a = rng.standard_normal((1, M, K), dtype=F32)
            b = rng.standard_normal((K, N), dtype=F32)
            ref, got = np.empty((M, N), F32), np.empty((M, N), F32)
            gemm(101, 111, 111, M, N, K, F32(1), a.ctypes.data, K, b.ctypes.data, N, F32(0),
                 ref.ctypes.data, N)
            microkernel.gemm(microkernel.pack_weights(a), 0, M, N, K, b.reshape(-1), 0, N,
                             got.reshape(-1), 0, N, q, u)
            assert np.array_equal(ref.view(np.uint32), got.view(np.uint32)), (M, N, K)
            checked += 1


def test_worth_it_never_picks_shapes_openblas_runs_on_its_small_matrix_path():
    for M, N, K in [(100, 100, 100), (16, 16, 3906), (128, 15, 4096), (1, 100000, 10)]:
        assert not microkernel.worth_it(M, N, K, N), (M, N, K)
    assert microkernel.worth_it(96, 12544, 16, 12544)  # MobileNet v2's 16 -> 96 expansion


# 1x1 in place (block tiles), im2col'ed small maps, row tiles of a large map, groups, a batch,
# channel blocks
CONVS = [
    dict(x=(1, 16, 112, 112), w=(96, 16, 1, 1), stride=1, pad=0, group=1),
    dict(x=(2, 24, 56, 56), w=(144, 24, 1, 1), stride=1, pad=0, group=1),
    dict(x=(1, 3, 224, 224), w=(32, 3, 3, 3), stride=2, pad=1, group=1),
    dict(x=(1, 3, 416, 416), w=(16, 3, 3, 3), stride=1, pad=1, group=1),
    dict(x=(1, 64, 56, 56), w=(32, 32, 3, 3), stride=1, pad=1, group=2),
    dict(x=(1, 192, 28, 28), w=(32, 192, 1, 1), stride=1, pad=0, group=1),
    # more output channels than pixels: the tiles split the channels into blocks of 32
    dict(x=(1, 960, 7, 7), w=(128, 960, 1, 1), stride=1, pad=0, group=1),
]


@pytest.mark.parametrize("case", CONVS, ids=lambda c: "x".join(map(str, c["x"])) + f"-w{c['w'][0]}g{c['group']}")
def test_convolutions_give_openblas_bits_and_the_reference(case, forced):
    _blas_or_skip()
    rng = np.random.default_rng(3)
    x = rng.standard_normal(case["x"], dtype=F32)
    w = rng.standard_normal(case["w"], dtype=F32)
    b = rng.standard_normal(case["w"][0], dtype=F32)
    s, p, g = (case["stride"],) * 2, (case["pad"],) * 2, case["group"]
    ep = Epilogue(case["w"][0]).leaky(0.1)
    forced(None)
    base = conv.conv2d(x, w, b, s, p, (1, 1), g, epilogue=ep)
    blocking = forced()
    # the tiles are compiled: whether ours ran shows in the Python-level packing step
    packs = []
    real_pack = microkernel.pack_weights
    microkernel.pack_weights = lambda *a: packs.append(a[0].shape) or real_pack(*a)
    try:
        conv._PACKED.clear()
        got = conv.conv2d(x, w, b, s, p, (1, 1), g, epilogue=ep)
    finally:
        microkernel.pack_weights = real_pack
    assert np.array_equal(base.view(np.uint32), got.view(np.uint32))
    if blocking is not None:
        assert packs, "this convolution is one the micro-kernel is meant to take"
    want = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                                s, p, (1, 1), g)
    want = np.where(want > 0, want, 0.1 * want)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_packed_weights_follow_a_replaced_weight_array(forced):
    # panels are cached per weight array while it lives (as the Winograd transforms): a layer
    # whose array is replaced (pruning, finetuning, loading) must get panels of the new one
    _blas_or_skip()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 16, 112, 112), dtype=F32)
    arrays = [rng.standard_normal((96, 16, 1, 1), dtype=F32) for _ in range(3)]
    forced(None)
    want = [conv.conv2d(x, w) for w in arrays]
    if forced() is None:
        pytest.skip("the engine keeps OpenBLAS on this machine")
    for _ in range(2):
        for w, y in zip(arrays, want):
            assert np.array_equal(conv.conv2d(x, w), y)
    # a freed array's entry goes with it, so a new array at the same address is packed anew
    del w, y
    before = len(conv._PACKED)
    arrays.pop()
    assert len(conv._PACKED) == before - 1
    fresh = rng.standard_normal((96, 16, 1, 1), dtype=F32)
    forced(None)
    want_fresh = conv.conv2d(x, fresh)
    forced()
    assert np.array_equal(conv.conv2d(x, fresh), want_fresh)


def test_the_switch_turns_the_micro_kernel_off():
    code = ("from caffe_surgeon.engine.kernels import microkernel; "
            "print(microkernel.blocking())")
    env = dict(os.environ, CAFFE_SURGEON_OWN_GEMM="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"
