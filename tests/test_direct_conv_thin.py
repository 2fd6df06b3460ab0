"""The thin-layer direct convolution (pixel vectors over phase planes) against the im2col +
OpenBLAS path bit for bit and against float64, its input addressing against plain indexing,
which layers it takes, and the im2col path's GEMM tiling it relies on (the smallest call; the
same bits at any thread count)."""
from __future__ import annotations

import numpy as np
import pytest

from caffe_surgeon.engine.kernels import blas, conv, direct_conv_thin as thin, microkernel, reference
from caffe_surgeon.engine.kernels.epilogue import Epilogue

F32 = np.float32

# res10's 32-channel 3x3 at 75x75 and a 16-channel SSD head (K in two OpenBLAS blocks); its
# 7x7 stride-2 stem; a batch of 3 with rows not a multiple of the pass; stride 2 with
# dilation 2, unequal pads and channels not a multiple of the tile's 8; a non-square map
# with a 1x5 kernel; stride (1, 2) with a 3x3 whose map is narrower than one vector
THIN = [
    dict(x=(1, 32, 75, 75), w=(32, 32, 3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1)),
    dict(x=(1, 128, 38, 38), w=(16, 128, 3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1)),
    dict(x=(1, 3, 150, 150), w=(32, 3, 7, 7), stride=(2, 2), pad=(3, 3), dil=(1, 1)),
    dict(x=(3, 24, 41, 41), w=(24, 24, 3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1)),
    dict(x=(1, 16, 61, 47), w=(36, 16, 3, 3), stride=(2, 2), pad=(2, 1), dil=(2, 2)),
    dict(x=(1, 20, 37, 90), w=(40, 20, 1, 5), stride=(1, 1), pad=(0, 2), dil=(1, 1)),
    dict(x=(1, 64, 60, 26), w=(24, 64, 3, 3), stride=(1, 2), pad=(1, 1), dil=(1, 1)),
]


def _ids(c):
    return "x".join(map(str, c["x"])) + "-w" + "x".join(map(str, c["w"])) + f"-s{c['stride'][0]}{c['stride'][1]}"


@pytest.mark.parametrize("case", THIN, ids=_ids)
def test_thin_direct_convolutions_give_the_im2col_paths_bits_and_the_reference(case, forced, monkeypatch):
    if blas.gemm() is None:
        pytest.skip("no callable OpenBLAS in this NumPy")
    rng = np.random.default_rng(11)
    x = rng.standard_normal(case["x"], dtype=F32)
    w = rng.standard_normal(case["w"], dtype=F32) * F32(0.1)
    O = case["w"][0]
    b = rng.standard_normal(O, dtype=F32)
    args = (case["stride"], case["pad"], case["dil"])
    ep = Epilogue(O).mul(rng.random(O, dtype=F32) + F32(0.5)).relu()
    forced(None)
    base = conv.conv2d(x, w, b, *args, epilogue=ep)
    ran = []
    real = thin.conv2d
    monkeypatch.setattr(thin, "conv2d", lambda *a, **k: ran.append(1) or real(*a, **k))
    if forced() is None:
        pytest.skip("our kernels do not reproduce this machine's OpenBLAS: the engine keeps OpenBLAS")
    got = conv.conv2d(x, w, b, *args, epilogue=ep)
    assert ran, "this convolution is one the thin direct path is meant to take"
    assert np.array_equal(base.view(np.uint32), got.view(np.uint32))
    want = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), *args, 1)
    want = np.maximum(want * ep.stages[0][1].astype(np.float64).reshape(1, -1, 1, 1), 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("stride,dil,pad", [((1, 1), (1, 1), (1, 1)), ((2, 2), (1, 1), (3, 3)),
                                            ((2, 3), (2, 1), (2, 0)), ((3, 1), (1, 3), (0, 4))])
def test_phase_planes_and_tap_offsets_address_the_padded_input(stride, dil, pad):
    # every tap of every output pixel read through the planes is the padded input's value
    rng = np.random.default_rng(3)
    N, C, H, W, kh, kw = 2, 3, 13, 11, 3, 2
    x = rng.standard_normal((N, C, H, W), dtype=F32)
    sh, sw = stride
    Hq, Wq = -(-(H + 2 * pad[0]) // sh), -(-(W + 2 * pad[1]) // sw)
    img = sh * sw * C * Hq * Wq
    xq = np.zeros(N * img, F32)  # zeroed, as conv2d hands it over
    thin.PHASE_PLANES_K[1](x, pad[0], pad[1], sh, sw, Hq, Wq, xq)
    offs = thin.tap_offsets(C, kh, kw, Hq, Wq, sh, sw, *dil)
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0],) * 2, (pad[1],) * 2))
    oh = conv.out_size(H, kh, sh, pad[0], dil[0])
    ow = conv.out_size(W, kw, sw, pad[1], dil[1])
    for n in range(N):
        for c in range(C):
            for ky in range(kh):
                for kx in range(kw):
                    k = (c * kh + ky) * kw + kx
                    for y in range(oh):
                        got = xq[n * img + offs[k] + y * Wq: n * img + offs[k] + y * Wq + ow]
                        want = xp[n, c, y * sh + ky * dil[0], kx * dil[1]::sw][:ow]
                        assert np.array_equal(got, want), (n, c, ky, kx, y)


def test_thin_path_takes_thin_kxk_layers_whose_gemms_are_all_above_the_small_matrix_size():
    big = microkernel.SMALL_MNK + 1
    assert thin.use((32, 32, 3, 3), (1, 1), 1, big)
    assert thin.use((16, 3, 3, 3), (1, 1), 1, big)  # 27 taps at stride 1
    assert thin.use((32, 3, 7, 7), (2, 2), 1, big)
    assert not thin.use((32, 3, 3, 3), (2, 2), 1, big)  # 27 taps strided: the plane copy dominates
    assert not thin.use((48, 32, 3, 3), (1, 1), 1, big)  # 48 channels: the channel kernel's
    assert not thin.use((32, 32, 1, 1), (1, 1), 1, big)  # 1x1
    assert not thin.use((32, 16, 3, 3), (1, 1), 2, big)  # grouped
    assert not thin.use((32, 32, 3, 3), (1, 1), 1, microkernel.SMALL_MNK)  # OpenBLAS's small kernels


@pytest.mark.parametrize("shape", [(1, 3, 416, 416, 16, 3), (1, 256, 5, 5, 24, 3), (8, 256, 19, 19, 24, 3),
                                   (1, 32, 75, 75, 32, 3), (2, 512, 7, 7, 600, 1)])
def test_smallest_gemm_is_the_smallest_call_of_the_tiling(shape):
    # the tiles of gemm_tiling, enumerated: their sizes cover the output once, and the
    # smallest is smallest_gemm's (the thin path's guard against OpenBLAS's small kernels)
    N, C, H, W, O, k = shape
    oh = ow = H - k + 1 if k > 1 else H
    K = C * k * k
    big = N * O * K * oh * ow >= conv.parallel.MIN_PARALLEL_MACS
    kind, ob, pb = conv.gemm_tiling(N, 1, O, K, oh, ow, conv.TILES if big else 1)
    if kind == "rows":
        sizes = [O * min(pb, oh - y) * ow * K for _ in range(N) for y in range(0, oh, pb)]
    else:
        cols = N * oh * ow if kind == "wide" else oh * ow
        images = 1 if kind == "wide" else N
        sizes = [min(ob, O - o) * min(pb, cols - p) * K for _ in range(images)
                 for o in range(0, O, ob) for p in range(0, cols, pb)]
    assert sum(sizes) == N * O * oh * ow * K
    assert conv.smallest_gemm((kind, ob, pb), N, 1, O, K, oh, ow) == min(sizes)


#: (N, C, O, out H = W, k): row tiles, block tiles, Winograd blocked and whole
PLANNED = [(1, 64, 256, 56, 1), (2, 128, 128, 28, 1), (1, 16, 32, 208, 3), (1, 32, 64, 104, 3),
           (1, 256, 256, 28, 3), (1, 128, 128, 56, 3), (2, 64, 64, 56, 3)]


def test_where_cuts_show_in_the_bits_no_cut_follows_the_thread_count(monkeypatch):
    """OpenBLAS's Haswell kernel sums some tiles in two chains by where they lie in a call:
    there the GEMM cut and the Winograd path are the same at 1, 2 and 8 threads."""
    from caffe_surgeon.engine.kernels import winograd

    def plans():
        out = []
        for N, C, O, hw, k in PLANNED:
            want = conv.TILES
            out.append(tuple(conv.blas_tiling(N, 1, O, C * k * k, hw, hw, want, t) for t in (1, 2, 8))
                       + tuple(winograd.blocked_groups(N, C, O, (hw, hw), t) for t in (1, 2, 8)))
        return out

    monkeypatch.setattr(microkernel, "cuts_change_no_sum", lambda: True)
    free = plans()
    monkeypatch.setattr(microkernel, "cuts_change_no_sum", lambda: False)
    fixed = plans()
    for plan in fixed:
        assert len(set(plan[:3])) == 1 and len(set(plan[3:])) == 1, plan
    # where the cuts change no bit, they do follow the thread count (else this test is empty)
    assert sum(len(set(p[:3])) > 1 for p in free) >= 2 and sum(len(set(p[3:])) > 1 for p in free) >= 1


def test_cuts_change_no_sum_where_it_says_so():
    """Where :func:`microkernel.cuts_change_no_sum` holds, a GEMM cut into calls by columns or
    by rows gives the whole call's bits."""
    gemm = blas.gemm()
    if gemm is None or not microkernel.cuts_change_no_sum():
        pytest.skip("this BLAS's sums depend on the cut (or there is no BLAS): the cuts stay fixed")
    r = np.random.default_rng(11)
    # every call above OpenBLAS's small-matrix size (whose kernels sum in another order)
    for M, N, K in [(8, 12000, 40), (24, 2000, 300), (64, 1000, 100), (32, 5408, 144)]:
        a = r.standard_normal((M, K), dtype=F32)
        b = r.standard_normal((K, N), dtype=F32)
        whole = np.empty((M, N), F32)
        cut = np.empty((M, N), F32)
        with blas.single_threaded():
            gemm(101, 111, 111, M, N, K, F32(1), a.ctypes.data, K, b.ctypes.data, N, F32(0),
                 whole.ctypes.data, N)
            n0 = N // 3 + 5
            for c0, c1 in ((0, n0), (n0, N)):
                gemm(101, 111, 111, M, c1 - c0, K, F32(1), a.ctypes.data, K, b.ctypes.data + 4 * c0, N,
                     F32(0), cut.ctypes.data + 4 * c0, N)
            assert np.array_equal(whole.view(np.uint32), cut.view(np.uint32)), (M, N, K, "columns")
            m0 = M // 2
            gemm(101, 111, 111, M - m0, N, K, F32(1), a.ctypes.data + 4 * m0 * K, K, b.ctypes.data, N, F32(0),
                 cut.ctypes.data + 4 * m0 * N, N)
            assert np.array_equal(whole.view(np.uint32), cut.view(np.uint32)), (M, N, K, "rows")


@pytest.mark.parametrize("shape", [(1, 64, 56, 56, 256, 1), (1, 512, 7, 7, 512, 3), (2, 128, 28, 28, 128, 1),
                                   (1, 128, 6, 6, 100, 3), (1, 32, 75, 75, 32, 3)])
def test_results_do_not_depend_on_the_thread_count(shape, forced):
    # one thread merges the GEMM tiles into whole calls where no call is small: same bits
    import numba
    N, C, H, W, O, k = shape
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, C, H, W), dtype=F32)
    w = rng.standard_normal((O, C, k, k), dtype=F32)
    before = numba.get_num_threads()
    try:
        for blocking in (None, "auto"):
            forced(blocking)
            outs = []
            for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
                numba.set_num_threads(threads)
                outs.append(conv.conv2d(x, w, None, (1, 1), (k // 2, k // 2)))
            assert np.array_equal(outs[0].view(np.uint32), outs[1].view(np.uint32))
    finally:
        numba.set_num_threads(before)


# packed pointwise path: ResNet-50's 64 -> 256 at 56x56 (KS sub-blocks: 3 with 256 inputs),
# a map whose last 48-pixel tile is ragged, a batch of 3, MobileNet v2's 16 -> 96 expansion,
# its 384 -> 64 projection (deep K into few outputs), and K in several OpenBLAS blocks
POINTWISE = [(1, 64, 56, 56, 256), (1, 256, 28, 28, 64), (1, 40, 37, 23, 48), (3, 96, 20, 20, 32),
             (1, 16, 112, 112, 96), (1, 384, 28, 28, 64), (1, 1000, 16, 16, 32)]


@pytest.mark.parametrize("shape", POINTWISE, ids=lambda s: "x".join(map(str, s)))
def test_packed_pointwise_convolutions_give_the_gemm_paths_bits_and_the_reference(shape, forced, monkeypatch):
    if blas.gemm() is None:
        pytest.skip("no callable OpenBLAS in this NumPy")
    from caffe_surgeon.engine.kernels import pointwise_conv
    N, C, H, W, O = shape
    rng = np.random.default_rng(12)
    x = rng.standard_normal((N, C, H, W), dtype=F32)
    w = rng.standard_normal((O, C, 1, 1), dtype=F32) * F32(0.1)
    b = rng.standard_normal(O, dtype=F32)
    ep = Epilogue(O).mul(rng.random(O, dtype=F32) + F32(0.5)).relu()
    ran = []
    real = pointwise_conv.conv2d
    monkeypatch.setattr(pointwise_conv, "conv2d", lambda *a, **k: ran.append(1) or real(*a, **k))
    if forced() is None:
        pytest.skip("our kernels do not reproduce this machine's OpenBLAS: the engine keeps OpenBLAS")
    poison = np.full((N, O, H, W), np.nan, F32)  # freed, its memory likely backs the next output
    del poison
    got = conv.conv2d(x, w, b, epilogue=ep)
    forced(None)
    base = conv.conv2d(x, w, b, epilogue=ep)
    assert ran, "this convolution is one the packed pointwise path is meant to take"
    assert np.array_equal(base.view(np.uint32), got.view(np.uint32))
    want = np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.float64), x.astype(np.float64)) + b.reshape(1, -1, 1, 1)
    want = np.maximum(want * ep.stages[0][1].astype(np.float64).reshape(1, -1, 1, 1), 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_packed_pointwise_path_takes_unpadded_1x1_layers_on_large_maps_only():
    from caffe_surgeon.engine.kernels import pointwise_conv
    big = microkernel.SMALL_MNK + 1
    use = pointwise_conv.use
    assert use((256, 64, 1, 1), (1, 1), (0, 0), 1, 3136, big)
    assert not use((256, 64, 1, 1), (1, 1), (0, 0), 1, 196, big)  # small map: the channel kernel's
    assert not use((256, 64, 1, 1), (2, 2), (0, 0), 1, 784, big)  # strided
    assert not use((256, 64, 1, 1), (1, 1), (1, 1), 1, 3136, big)  # padded
    assert not use((252, 64, 1, 1), (1, 1), (0, 0), 1, 3136, big)  # not a multiple of 8 channels
    assert not use((128, 512, 1, 1), (1, 1), (0, 0), 1, 784, big)  # deep K: OpenBLAS
    assert use((64, 384, 1, 1), (1, 1), (0, 0), 1, 784, big)  # unless into few outputs
    assert not use((256, 64, 3, 3), (1, 1), (0, 0), 1, 3136, big)
    assert not use((256, 64, 1, 1), (1, 1), (0, 0), 1, 3136, microkernel.SMALL_MNK)


def test_balanced_passes_give_every_thread_an_equal_share():
    from caffe_surgeon.engine.kernels.parallel import balanced_passes
    assert balanced_passes(1, 5, 4) == 8  # 5 passes on 2 threads: 3 + 2; 8: 4 + 4
    assert balanced_passes(1, 8, 4) == 8
    assert balanced_passes(1, 1, 4) == 4  # at least the tiles wanted
    assert balanced_passes(8, 3, 4) == 3  # 24 passes over the batch already share evenly
    assert balanced_passes(3, 5, 4) == 6  # 15 -> 16 wanted over 3 images: 6 each
    assert balanced_passes(2, 7, 1) == 7  # one tile wanted: as many as the pass size gives
