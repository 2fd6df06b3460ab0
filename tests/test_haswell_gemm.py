"""The AVX2 GEMM (caffe_surgeon.engine.kernels.haswell_gemm) gives OpenBLAS's Haswell bits.

Three checks: the kernel equals its slow twin (reference.haswell_sgemm, which follows
OpenBLAS's driver and kernel loops literally) on any machine; on an AVX2 machine, the twin
and the kernel equal the BLAS itself, and a one-chain GEMM does not (so the two-chain
tiles are what the test checks); and the convolutions give the same bits with the kernel
as with the BLAS.
"""
from __future__ import annotations

import numpy as np
import pytest

from caffe_surgeon.engine.kernels import blas, conv, haswell_gemm, reference
from caffe_surgeon.engine.kernels.conv import conv2d

F32 = np.float32
# M: every remainder of 12 and a few whole chunks; N: pixel blocks under 8, 8-15, 16+,
# split in two (320 < N < 640) and in 320s; K: one block and several; ldb wider than N
SHAPES = [(M, N, K, ldb) for M, N, K, ldb in [
    (1, 37, 9, 37), (2, 8, 16, 8), (3, 15, 33, 20), (4, 64, 17, 64), (5, 130, 40, 131),
    (6, 16, 8, 16), (7, 321, 50, 321), (8, 24, 700, 24), (9, 50, 650, 64), (10, 641, 12, 700),
    (11, 99, 27, 99), (12, 641, 641, 641), (13, 777, 40, 777), (16, 1000, 64, 1030),
    (20, 17, 400, 17), (24, 700, 300, 700), (27, 655, 33, 700), (36, 2000, 20, 2000),
    (100, 41, 30, 41), (44, 19, 1000, 19),
    # under 8 columns: the narrow path (a column of four tiles at a time)
    (1000, 1, 1280, 1), (37, 3, 700, 5), (13, 1, 333, 1), (100, 4, 999, 4), (7, 2, 5, 2), (30, 7, 9, 7)]]


def _call(a, b, ldb, N, t0=0, t1=None, wide=None):
    M, K = a.shape
    c = np.full((M, N), np.nan, F32)
    ap = haswell_gemm.pack_weights(a[None])
    t1 = haswell_gemm.tile_count(M) if t1 is None else t1
    if wide is None:  # as the convolutions call it on this machine
        haswell_gemm.gemm(ap, 0, M, N, K, b.reshape(-1), 0, ldb, c.reshape(-1), 0, N, t0, t1)
    else:
        haswell_gemm.tiles(ap, 0, M, N, K, b.reshape(-1), 0, ldb, c.reshape(-1), 0, N, t0, t1, wide)
    return c


def _operands(M, N, K, ldb, seed=0):
    rng = np.random.default_rng(seed + M * 7919 + N)
    return rng.standard_normal((M, K), dtype=F32), rng.standard_normal((K, ldb), dtype=F32)


def _bits(x):
    return np.ascontiguousarray(x).view(np.uint32)


def _blas(a, b, ldb, N):
    M, K = a.shape
    c = np.empty((M, N), F32)
    with blas.single_threaded():
        blas.gemm()(101, 111, 111, M, N, K, F32(1.0), a.ctypes.data, K, b.ctypes.data, ldb, F32(0.0),
                    c.ctypes.data, N)
    return c


def _need_haswell_blas():
    """Where NumPy's OpenBLAS runs its Haswell kernels (AVX2 machines, Zen included): there the
    GEMM must give its bits."""
    if not haswell_gemm.USABLE or blas.gemm() is None or blas.core_name() not in ("Haswell", "Zen"):
        pytest.skip(f"NumPy's OpenBLAS runs its {blas.core_name()} kernels here, not Haswell's")


@pytest.mark.parametrize("wide", [False, True], ids=["16-column tiles", "wide tiles"])
@pytest.mark.parametrize("M, N, K, ldb", SHAPES)
def test_gemm_equals_its_slow_twin(M, N, K, ldb, wide):
    a, b = _operands(M, N, K, ldb)
    np.testing.assert_array_equal(_bits(_call(a, b, ldb, N, wide=wide)),
                                  _bits(reference.haswell_sgemm(a, b[:, :N])))


@pytest.mark.parametrize("wide", [False, True], ids=["16-column tiles", "wide tiles"])
@pytest.mark.parametrize("M, N, K, ldb", SHAPES)
def test_gemm_and_twin_give_the_blas_bits_and_one_chain_does_not(M, N, K, ldb, wide):
    _need_haswell_blas()
    a, b = _operands(M, N, K, ldb, seed=1)
    ref = _bits(_blas(a, b, ldb, N))
    np.testing.assert_array_equal(_bits(_call(a, b, ldb, N, wide=wide)), ref)
    np.testing.assert_array_equal(_bits(reference.haswell_sgemm(a, b[:, :N])), ref)
    if reference._haswell_two_chains(M, N).any() and K >= 16:
        one_chain = (a.astype(np.float64) @ b[:, :N]).astype(F32)  # any other order
        assert not np.array_equal(_bits(one_chain), ref)


def test_the_two_chain_tiles_change_bits_where_they_lie():
    """Without the two-chain tiles the twin misses the BLAS: the map is what matters."""
    _need_haswell_blas()
    a, b = _operands(24, 700, 300, 700, seed=2)
    ref = _bits(_blas(a, b, 700, 700))
    two = reference._haswell_two_chains(24, 700)
    assert 0 < two.mean() < 0.1
    saved = reference._haswell_two_chains
    try:
        reference._haswell_two_chains = lambda M, N, *rest: np.zeros((M, N), bool)
        wrong = _bits(reference.haswell_sgemm(a, b))
    finally:
        reference._haswell_two_chains = saved
    assert (wrong != ref)[two].mean() > 0.5 and (wrong == ref)[~two].all()


@pytest.mark.parametrize("wide", [False, True], ids=["16-column tiles", "wide tiles"])
def test_any_split_of_the_tiles_gives_the_whole_calls_bits(wide):
    a, b = _operands(40, 700, 90, 705, seed=3)
    whole = _bits(_call(a, b, 705, 700, wide=not wide))
    tiles = haswell_gemm.tile_count(40)
    c = np.full((40, 700), np.nan, F32)
    ap = haswell_gemm.pack_weights(a[None])
    for t0, t1 in ((0, 1), (1, 4), (4, tiles)):
        haswell_gemm.tiles(ap, 0, 40, 700, 90, b.reshape(-1), 0, 705, c.reshape(-1), 0, 700, t0, t1, wide)
    np.testing.assert_array_equal(_bits(c), whole)


@pytest.mark.parametrize("N", [1, 49, 7 * 8 + 3])
def test_column_kernels_read_nothing_after_the_packed_weights(N):
    """The narrow path (N < 8) and a call's last 1-7 columns load 8 weights where a tile step
    has 6: the packed array's spare zeros take the last step's extra 2, here right before an
    unreadable page."""
    from test_depthwise_3x3 import _between_guard_pages
    a, b = _operands(25, N, 40, N, seed=5)
    packed = haswell_gemm.pack_weights(a[None])
    ap, region = _between_guard_pages(packed.shape, at_start=False)
    ap[...] = packed
    c = np.full((25, N), np.nan, F32)
    haswell_gemm.gemm(ap, 0, 25, N, 40, b.reshape(-1), 0, N, c.reshape(-1), 0, N, 0, haswell_gemm.tile_count(25))
    np.testing.assert_array_equal(_bits(c), _bits(reference.haswell_sgemm(a, b)))
    del ap


def test_packed_tiles_hold_each_row_once_in_chunk_order():
    wg = np.arange(2 * 23 * 3, dtype=F32).reshape(2, 23, 3) + 1
    packed = haswell_gemm.pack_weights(wg, block=16).reshape(2, 2, -1)
    for g in range(2):
        for blk, rows in ((0, 16), (1, 7)):
            start = haswell_gemm.block_offset(g, 16 * blk, 23, 16, 3)
            seen = []
            for t in range(haswell_gemm.tile_count(rows)):
                r0, n, _ = haswell_gemm.row_tile(rows, t)
                tile = packed.reshape(-1)[start + t * 3 * 6:start + (t + 1) * 3 * 6].reshape(3, 6)
                np.testing.assert_array_equal(tile[:, :n].T, wg[g, 16 * blk + r0:16 * blk + r0 + n])
                assert not tile[:, n:].any()
                seen += range(r0, r0 + n)
            assert seen == list(range(rows))


@pytest.mark.parametrize("x_shape, w_shape, stride, pad", [
    ((1, 16, 112, 112), (96, 16, 1, 1), 1, 0),   # block tiles, pixel blocks (MobileNet v2)
    ((1, 64, 14, 14), (384, 64, 1, 1), 1, 0),    # block tiles, channel blocks of 96
    ((1, 3, 208, 208), (16, 3, 3, 3), 1, 1),     # row tiles, K 27
    ((2, 24, 56, 56), (144, 24, 1, 1), 1, 0),    # a batch
    ((1, 32, 56, 56), (64, 32, 1, 1), 2, 0),     # stride 2 (im2col), K 32
    ((1, 1280, 1, 1), (1000, 1280, 1, 1), 1, 0),  # a classifier at batch 1: the narrow path
    ((4, 32, 7, 7), (24, 32, 3, 3), 1, 1),       # few channels on a small map, K 288 (row tiles)
    ((1, 16, 14, 14), (32, 16, 3, 3), 1, 1),     # 32 channels, K 144 (block tiles)
])
def test_convolutions_give_the_blas_bits_with_the_avx2_gemm(monkeypatch, x_shape, w_shape, stride, pad):
    _need_haswell_blas()
    assert haswell_gemm.reproduces()
    rng = np.random.default_rng(4)
    x = rng.standard_normal(x_shape, dtype=F32)
    w = rng.standard_normal(w_shape, dtype=F32)
    b = rng.standard_normal(w_shape[0], dtype=F32)
    taken = []
    own_gemm = conv.own_gemm

    def spy(*args, **kwargs):
        out = own_gemm(*args, **kwargs)
        taken.append(out[3])
        return out

    monkeypatch.setattr(conv, "own_gemm", spy)
    monkeypatch.setitem(haswell_gemm._state, "on", True)
    ours = conv2d(x, w, b, (stride, stride), (pad, pad))
    assert haswell_gemm.PANEL in taken
    monkeypatch.setitem(haswell_gemm._state, "on", False)
    theirs = conv2d(x, w, b, (stride, stride), (pad, pad))
    np.testing.assert_array_equal(_bits(ours), _bits(theirs))


def test_worth_it_takes_few_channels_on_small_maps(monkeypatch):
    monkeypatch.setattr(haswell_gemm, "WIDE_HOST", False)  # an AVX2 machine (Zen 3)
    assert haswell_gemm.worth_it(24, 49, 288, 49)  # the Fashion net's 3x3 branch on 7x7
    assert haswell_gemm.worth_it(32, 196, 144, 196) and haswell_gemm.worth_it(64, 100, 144, 100)
    assert haswell_gemm.worth_it(32, 49, 288, 2450)  # a block tile of a batch: rows far apart
    assert not haswell_gemm.worth_it(32, 196, 288, 196)  # 1.0-1.1x measured: OpenBLAS stays
    assert not haswell_gemm.worth_it(24, 784, 288, 784)  # larger maps: its packed columns win
    assert not haswell_gemm.worth_it(128, 49, 1152, 49) and not haswell_gemm.worth_it(64, 49, 432, 49)


def test_worth_it_on_an_avx512_host_takes_every_call_of_16_columns_or_more(monkeypatch):
    # Zen 5 under OpenBLAS's Haswell kernels, with the wide tile: ours won on every shape
    monkeypatch.setattr(haswell_gemm, "WIDE_HOST", True)
    assert haswell_gemm.worth_it(128, 49, 1152, 49) and haswell_gemm.worth_it(64, 784, 384, 784)
    assert haswell_gemm.worth_it(512, 12544, 960, 12544) and haswell_gemm.worth_it(16, 43264, 27, 43264)
    assert haswell_gemm.worth_it(64, 4, 64, 4)  # a classifier's few columns, as everywhere
    assert not haswell_gemm.worth_it(64, 12, 64, 12)  # 8-15 columns: a partial 16-wide tile
