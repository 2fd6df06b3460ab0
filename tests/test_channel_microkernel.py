"""The channel-vectorised GEMM micro-kernel against float64 and, bit for bit, against OpenBLAS,
and the convolutions on small maps that use it against the same convolutions on OpenBLAS."""
from __future__ import annotations

import numpy as np
import pytest

from caffe_surgeon.engine.kernels import blas, channel_microkernel as cm, conv, direct_conv, microkernel, reference
from caffe_surgeon.engine.kernels.epilogue import Epilogue

F32 = np.float32


@pytest.mark.parametrize("panel", [48, 64])
def test_gemm_matches_float64_on_ragged_shapes_offsets_and_strides(panel):
    # M not a multiple of the panel, N not of the tile's pixels and past one pass (NB), K in
    # several OpenBLAS blocks and several KS sub-blocks each; nothing outside C may be written
    rng = np.random.default_rng(0)
    for case in range(40):
        M = int(rng.integers(1, 150))
        N = int(rng.integers(1, 2 * cm.NB + 20)) if case % 4 == 0 else int(rng.integers(1, 60))
        K = int(rng.integers(1, 1400))
        ldb, ldc = N + int(rng.integers(0, 20)), N + int(rng.integers(0, 20))
        q, u = int(rng.choice([64, 200, 448])), int(rng.choice([1, 16]))
        a = rng.standard_normal((1, M, K), dtype=F32)
        b_off, c_off = int(rng.integers(0, 9)), int(rng.integers(0, 9))
        b = rng.standard_normal(b_off + K * ldb, dtype=F32)
        c = np.full(c_off + M * ldc + 5, 7.0, F32)
        panels = microkernel.pack_weights(a, None, panel)
        cm.gemm(panels, 0, M, N, K, b, b_off, ldb, c, c_off, ldc, q, u, panel)
        want = a[0].astype(np.float64) @ b[b_off:].reshape(K, ldb)[:, :N].astype(np.float64)
        got = c[c_off:c_off + M * ldc].reshape(M, ldc)
        np.testing.assert_allclose(got[:, :N], want, rtol=1e-4, atol=1e-4 * np.sqrt(K))
        assert (got[:, N:] == 7.0).all(), "wrote past the columns"
        assert (c[:c_off] == 7.0).all() and (c[c_off + M * ldc:] == 7.0).all()


def test_sub_blocks_change_no_rounding():
    # the k steps of one OpenBLAS block run in sub-blocks of KS: parking and reloading the
    # accumulators must give the bits of one unbroken fused chain (float64 cannot see this)
    rng = np.random.default_rng(5)
    M, N, K = 64, 13, 3 * cm.KS + 7
    a = rng.standard_normal((1, M, K), dtype=F32)
    b = rng.standard_normal((K, N), dtype=F32)
    got = np.empty((M, N), F32)
    cm.gemm(microkernel.pack_weights(a, None, 64), 0, M, N, K, b.reshape(-1), 0, N, got.reshape(-1),
            0, N, K, 1, 64)
    want = np.zeros((M, N), F32)
    for k in range(K):  # one fused multiply-add per k, in order, rounded once each
        want = (want.astype(np.float64) + a[0, :, k:k + 1].astype(np.float64) * b[k].astype(np.float64)).astype(F32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def _openblas_reproduced(forced):
    """(cblas_sgemm, q, u) with our kernels forced on, or skip where they cannot be."""
    gemm = blas.gemm()
    if gemm is None:
        pytest.skip("no callable OpenBLAS in this NumPy")
    blocking = forced()
    if blocking is None:
        pytest.skip("our kernels do not reproduce this machine's OpenBLAS: the engine keeps OpenBLAS")
    return (gemm,) + tuple(blocking)


def _openblas_and_ours(gemm, a, b, panel, q, u):
    """a (1, M, K) @ b (K, N) by OpenBLAS's cblas_sgemm and by cm.gemm on ``panel``-row panels."""
    _, M, K = a.shape
    N = b.shape[1]
    ref, got = np.empty((M, N), F32), np.empty((M, N), F32)
    gemm(101, 111, 111, M, N, K, F32(1), a.ctypes.data, K, b.ctypes.data, N, F32(0), ref.ctypes.data, N)
    cm.gemm(microkernel.pack_weights(a, None, panel), 0, M, N, K, b.reshape(-1), 0, N, got.reshape(-1),
            0, N, q, u, panel)
    return ref, got


def test_gemm_is_bit_equal_to_openblas_where_the_engine_uses_it(forced):
    gemm, q, u = _openblas_reproduced(forced)
    rng = np.random.default_rng(2)
    checked = 0
    with blas.single_threaded():
        while checked < 20:
            M, N, K = int(rng.integers(48, 700)), int(rng.integers(9, 250)), int(rng.integers(64, 5000))
            if M * N * K <= microkernel.SMALL_MNK:
                continue
            panel = cm.panel_rows(M)
            a = rng.standard_normal((1, M, K), dtype=F32)
            b = rng.standard_normal((K, N), dtype=F32)
            ref, got = _openblas_and_ours(gemm, a, b, panel, q, u)
            assert np.array_equal(ref.view(np.uint32), got.view(np.uint32)), (M, N, K)
            checked += 1


@pytest.mark.parametrize("M,N,K", [(1000, 1, 1280), (400, 2, 1300), (320, 3, 1100), (96, 12, 900),
                                   (64, 57, 450), (512, 1, 2048)])
def test_leftover_pixels_on_one_pixel_tiles_give_openblas_bits(M, N, K, forced):
    """1-3 pixels left after the full tiles (N = 1: a classifier run as a 1x1 convolution) go
    to one-pixel tiles, whose sums must be OpenBLAS's as the full tile's are (above its
    small-matrix size, as where the engine uses them)."""
    gemm, q, u = _openblas_reproduced(forced)
    assert M * N * K > microkernel.SMALL_MNK
    rng = np.random.default_rng(M + N + K)
    a = rng.standard_normal((1, M, K), dtype=F32)
    b = rng.standard_normal((K, N), dtype=F32)
    for panel in (48, 64):
        assert min(N % cm.PIXELS[48], N % cm.PIXELS[64]) < cm.ONE_PIXEL_BELOW
        with blas.single_threaded():
            ref, got = _openblas_and_ours(gemm, a, b, panel, q, u)
        assert np.array_equal(ref.view(np.uint32), got.view(np.uint32)), (M, N, K, panel)


def test_panel_rows_pads_the_channel_block_least():
    assert cm.panel_rows(128) == 64 and cm.panel_rows(512) == 64 and cm.panel_rows(256) == 64
    assert cm.panel_rows(96) == 48 and cm.panel_rows(240) == 48 and cm.panel_rows(48) == 48
    assert cm.panel_rows(144) == 48  # tie 144 = 3 x 48 < 192 = 3 x 64
    assert cm.panel_rows(40) == 48


def test_worth_it_picks_small_maps_and_never_the_small_matrix_path():
    assert cm.worth_it(512, 49, 4608, 49)  # ResNet-50's 3x3 at 7x7, im2col'ed
    assert cm.worth_it(256, 49, 256, 49)  # a Winograd GEMM of a 14x14 map
    assert not cm.worth_it(64, 3136, 576, 3136)  # a large map: column rows far apart
    assert not cm.worth_it(100, 49, 200, 49)  # OpenBLAS's small-matrix path sums in another order
    assert not cm.worth_it(16, 49, 4096, 49)  # less than one panel of channels
    assert cm.worth_it(256, 196, 1024, 196) and cm.worth_it(1024, 196, 256, 196)
    assert not cm.worth_it(512, 196, 512, 784)  # a channel block of a 28x28 map
    assert not cm.worth_it(512, 392, 512, 392)  # a batch of 8 7x7 maps side by side


# 1x1 in place on 7x7 and 14x14 maps, a 3x3 im2col'ed on 7x7, Winograd on 14x14 (its 16
# GEMMs of 49 tile columns), a 48-row panel (960 channels in blocks of 240)
CONVS = [
    dict(x=(1, 512, 7, 7), w=(2048, 512, 1, 1), pad=0),
    dict(x=(1, 1024, 14, 14), w=(256, 1024, 1, 1), pad=0),
    dict(x=(1, 512, 7, 7), w=(512, 512, 3, 3), pad=1),
    dict(x=(1, 256, 14, 14), w=(256, 256, 3, 3), pad=1),
    dict(x=(1, 160, 7, 7), w=(960, 160, 1, 1), pad=0),
]


@pytest.mark.parametrize("case", CONVS, ids=lambda c: "x".join(map(str, c["x"])) + f"-w{c['w'][0]}k{c['w'][2]}")
def test_convolutions_give_openblas_bits_and_the_reference(case, forced, monkeypatch):
    if blas.gemm() is None:
        pytest.skip("no callable OpenBLAS in this NumPy")
    rng = np.random.default_rng(3)
    x = rng.standard_normal(case["x"], dtype=F32)
    w = rng.standard_normal(case["w"], dtype=F32) * F32(0.05)
    b = rng.standard_normal(case["w"][0], dtype=F32)
    p = (case["pad"],) * 2
    ep = Epilogue(case["w"][0]).leaky(0.1)
    forced(None)
    base = conv.conv2d(x, w, b, (1, 1), p, epilogue=ep)
    blocking = forced()
    panels = []
    real_pack = microkernel.pack_weights
    monkeypatch.setattr(microkernel, "pack_weights",
                        lambda wg, block=None, mr=microkernel.MR: panels.append(mr) or real_pack(wg, block, mr))
    conv._PACKED.clear()
    got = conv.conv2d(x, w, b, (1, 1), p, epilogue=ep)
    assert np.array_equal(base.view(np.uint32), got.view(np.uint32))
    if blocking is not None:
        assert panels and set(panels) <= set(cm.PIXELS), f"the channel kernel did not run: {panels}"
    want = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                            (1, 1), p, (1, 1), 1)
    want = np.where(want > 0, want, 0.1 * want)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


# direct convolutions: ResNet-50's stem (7x7 stride 2), a 3x3 at 56x56, a batch of 2, stride 2
# with dilation 2 and unequal pads, a 5x5 on a non-square map with channels not a multiple
# of the panel, rows longer than one pass (stretches of a row), a 3x1 kernel; rows whose
# last 1-3 pixels take one-pixel tiles (56 = 9 x 6 + 2, 25 = 4 x 6 + 1, 30 = 3 x 9 + 3, 19)
DIRECT = [
    dict(x=(1, 3, 224, 224), w=(64, 3, 7, 7), stride=(2, 2), pad=(3, 3), dil=(1, 1)),
    dict(x=(1, 64, 56, 56), w=(64, 64, 3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1)),
    dict(x=(2, 32, 40, 40), w=(96, 32, 3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1)),
    dict(x=(1, 16, 61, 47), w=(48, 16, 3, 3), stride=(2, 2), pad=(2, 1), dil=(2, 2)),
    dict(x=(1, 8, 33, 29), w=(56, 8, 5, 5), stride=(1, 1), pad=(2, 0), dil=(1, 1)),
    dict(x=(1, 8, 6, 230), w=(64, 8, 3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1)),
    dict(x=(1, 24, 30, 30), w=(48, 24, 3, 1), stride=(1, 1), pad=(1, 0), dil=(1, 1)),
    # res10's 19x19 layers: rows of 3 x 6 pixels and one on a one-pixel tile
    dict(x=(1, 128, 38, 38), w=(256, 128, 3, 3), stride=(2, 2), pad=(1, 1), dil=(1, 1)),
    dict(x=(1, 32, 19, 19), w=(64, 32, 3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1)),
]


@pytest.mark.parametrize("case", DIRECT, ids=lambda c: "x".join(map(str, c["x"])) + "-w" + "x".join(map(str, c["w"])))
def test_direct_convolutions_give_the_im2col_paths_bits_and_the_reference(case, forced, monkeypatch):
    if blas.gemm() is None:
        pytest.skip("no callable OpenBLAS in this NumPy")
    rng = np.random.default_rng(6)
    x = rng.standard_normal(case["x"], dtype=F32)
    w = rng.standard_normal(case["w"], dtype=F32) * F32(0.1)
    b = rng.standard_normal(case["w"][0], dtype=F32)
    args = (case["stride"], case["pad"], case["dil"])
    ep = Epilogue(case["w"][0]).mul(rng.random(case["w"][0], dtype=F32) + F32(0.5)).relu()
    forced(None)
    base = conv.conv2d(x, w, b, *args, epilogue=ep)
    ran = []
    real = direct_conv.conv2d
    monkeypatch.setattr(direct_conv, "conv2d", lambda *a, **k: ran.append(1) or real(*a, **k))
    if forced() is None:
        pytest.skip("our kernels do not reproduce this machine's OpenBLAS: the engine keeps OpenBLAS")
    got = conv.conv2d(x, w, b, *args, epilogue=ep)
    assert ran, "this convolution is one the direct path is meant to take"
    assert np.array_equal(base.view(np.uint32), got.view(np.uint32))
    want = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), *args, 1)
    want = np.maximum(want * ep.stages[0][1].astype(np.float64).reshape(1, -1, 1, 1), 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_direct_path_takes_large_maps_of_wide_kxk_layers_only():
    use = direct_conv.use
    assert use((1, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1), 1, (56, 56))
    assert use((1, 3, 224, 224), (64, 3, 7, 7), (2, 2), (1, 1), 1, (112, 112))
    assert not use((1, 64, 56, 56), (256, 64, 1, 1), (1, 1), (1, 1), 1, (56, 56))  # 1x1: OpenBLAS
    assert not use((1, 16, 208, 208), (32, 16, 3, 3), (1, 1), (1, 1), 1, (208, 208))  # thin
    assert not use((1, 64, 56, 56), (64, 32, 3, 3), (1, 1), (1, 1), 2, (56, 56))  # grouped
    assert not use((1, 3, 416, 416), (64, 3, 3, 3), (1, 1), (1, 1), 1, (416, 416))  # 27 taps
    assert not use((1, 512, 7, 7), (512, 512, 3, 3), (1, 1), (1, 1), 1, (7, 7))  # small map
    assert not use((1, 64, 56, 56), (66, 64, 3, 3), (1, 1), (1, 1), 1, (56, 56))  # 66 -> 96 rows
