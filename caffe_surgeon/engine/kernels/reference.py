"""Slow, obviously-correct NumPy twins of the Numba kernels, for the tests only."""
from __future__ import annotations

import numpy as np


def conv2d(x, w, b, stride, pad, dilation, group):
    """Direct convolution by explicit loops over the kernel window (NCHW, OIHW)."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    oh = (H + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (W + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    xp = np.zeros((N, C, H + 2 * pad[0], W + 2 * pad[1]), np.float64)
    xp[:, :, pad[0]:pad[0] + H, pad[1]:pad[1] + W] = x
    out = np.zeros((N, O, oh, ow), np.float64)
    og = O // group
    for o in range(O):
        g = o // og
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * Cg:(g + 1) * Cg,
                           i * dilation[0]: i * dilation[0] + stride[0] * (oh - 1) + 1: stride[0],
                           j * dilation[1]: j * dilation[1] + stride[1] * (ow - 1) + 1: stride[1]]
                out[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, i, j])
    if b is not None:
        out += np.asarray(b).reshape(1, O, 1, 1)
    return out.astype(np.float32)


def deconv2d(x, w, b, stride, pad, dilation, group):
    """Transposed convolution by scattering each input pixel (w: C_in, O/group, kh, kw)."""
    N, C, H, W = x.shape
    _, Og, kh, kw = w.shape
    O = Og * group
    full_h = stride[0] * (H - 1) + dilation[0] * (kh - 1) + 1
    full_w = stride[1] * (W - 1) + dilation[1] * (kw - 1) + 1
    out = np.zeros((N, O, full_h, full_w), np.float64)
    cg = C // group
    for c in range(C):
        g = c // cg
        for i in range(kh):
            for j in range(kw):
                out[:, g * Og:(g + 1) * Og,
                    i * dilation[0]: i * dilation[0] + stride[0] * (H - 1) + 1: stride[0],
                    j * dilation[1]: j * dilation[1] + stride[1] * (W - 1) + 1: stride[1]] += \
                    x[:, c][:, None] * w[c, :, i, j][None, :, None, None]
    out = out[:, :, pad[0]:full_h - pad[0], pad[1]:full_w - pad[1]]
    if b is not None:
        out += np.asarray(b).reshape(1, O, 1, 1)
    return out.astype(np.float32)


def pool(x, kernel, stride, pad, out_hw, mode, divide_by_padded=True):
    """Window-by-window pooling with the same geometry conventions as kernels.pooling."""
    N, C, H, W = x.shape
    out = np.zeros((N, C) + tuple(out_hw), np.float32)
    for y in range(out_hw[0]):
        for xo in range(out_hw[1]):
            hs0, ws0 = y * stride[0] - pad[0], xo * stride[1] - pad[1]
            he0, we0 = min(hs0 + kernel[0], H + pad[0]), min(ws0 + kernel[1], W + pad[1])
            hs, ws, he, we = max(hs0, 0), max(ws0, 0), min(he0, H), min(we0, W)
            win = x[:, :, hs:he, ws:we]
            if mode == "max":
                out[:, :, y, xo] = win.max(axis=(2, 3)) if win.size else -3.4028235e38
            else:
                size = (he0 - hs0) * (we0 - ws0) if divide_by_padded else (he - hs) * (we - ws)
                out[:, :, y, xo] = win.sum(axis=(2, 3)) / size
    return out


def im2col(x, kernel, stride, pad, dilation, out_hw):
    """(N, C, H, W) -> (C*kh*kw, N*oh*ow) by slicing a zero-padded copy, one (i, j) at a time."""
    N, C, H, W = x.shape
    (kh, kw), (oh, ow) = kernel, out_hw
    ph, pw = pad
    # enough padding on the far side for any window start the output geometry asks for
    far_h = max(0, (oh - 1) * stride[0] + (kh - 1) * dilation[0] + 1 - H - ph)
    far_w = max(0, (ow - 1) * stride[1] + (kw - 1) * dilation[1] + 1 - W - pw)
    xp = np.zeros((N, C, ph + H + far_h, pw + W + far_w), np.float32)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    cols = np.zeros((C, kh, kw, N, oh, ow), np.float32)
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dilation[0], j * dilation[1]
            patch = xp[:, :, y0:y0 + stride[0] * (oh - 1) + 1:stride[0],
                       x0:x0 + stride[1] * (ow - 1) + 1:stride[1]]
            cols[:, i, j] = patch.transpose(1, 0, 2, 3)
    return cols.reshape(C * kh * kw, N * oh * ow)


def epilogue(y, stages):
    """The per-channel stages as the separate layers apply them: one float32 NumPy pass each."""
    from .epilogue import ADD, CLIP, LEAKY, MUL, RELU
    y = np.array(y, np.float32)
    shape = (1, -1) + (1,) * (y.ndim - 2)
    for code, vec, p0, p1 in stages:
        if code == MUL:
            y = y * vec.reshape(shape)
        elif code == ADD:
            y = y + vec.reshape(shape)
        elif code == RELU:
            y = np.maximum(y, np.float32(0))
        elif code == LEAKY:
            y = np.where(y > 0, y, np.float32(p0) * y)
        elif code == CLIP:
            y = np.clip(y, np.float32(p0), np.float32(p1))
    return y.astype(np.float32)


def _iou(box, others):
    ix1 = np.maximum(box[0], others[:, 0])
    iy1 = np.maximum(box[1], others[:, 1])
    ix2 = np.minimum(box[2], others[:, 2])
    iy2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(others) - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms_fast(boxes, scores, score_threshold, nms_threshold, top_k, eta=1.0) -> list[int]:
    """Caffe SSD's ApplyNMSFast, one candidate at a time against all kept boxes."""
    order = np.flatnonzero(scores > score_threshold)
    order = order[np.argsort(-scores[order], kind="stable")]
    if top_k > -1:
        order = order[:top_k]
    kept: list[int] = []
    thr = nms_threshold
    for idx in order:
        keep = True
        if kept:
            keep = bool(np.all(_iou(boxes[idx], boxes[kept]) <= thr))
        if keep:
            kept.append(int(idx))
            if eta < 1 and thr > 0.5:
                thr *= eta
    return kept


def winograd_weights(w):
    """U = G g G^T by einsum in float64, laid out (16, O, C) and rounded to float32."""
    G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64)
    u = np.einsum("ik,ockl,jl->ijoc", G, np.asarray(w, np.float64), G)
    return np.ascontiguousarray(u.reshape(16, w.shape[0], w.shape[1]), np.float32)


def winograd_conv2d(x, w, pad):
    """F(2x2, 3x3) by its definition, tile by tile in float64: A^T [(G g G^T) * (B^T d B)] A."""
    Bt = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
    G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64)
    At = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
    N, C, H, W = x.shape
    O = w.shape[0]
    oh, ow = H + 2 * pad[0] - 2, W + 2 * pad[1] - 2
    th, tw = -(-oh // 2), -(-ow // 2)
    xp = np.zeros((N, C, 2 * th + 2, 2 * tw + 2))
    xp[:, :, pad[0]:pad[0] + H, pad[1]:pad[1] + W] = x[:, :, :2 * th + 2 - pad[0], :2 * tw + 2 - pad[1]]
    U = np.einsum("ik,ockl,jl->ocij", G, w.astype(np.float64), G)
    out = np.zeros((N, O, 2 * th, 2 * tw))
    for ty in range(th):
        for tx in range(tw):
            d = xp[:, :, 2 * ty:2 * ty + 4, 2 * tx:2 * tx + 4]
            V = np.einsum("ik,nckl,jl->ncij", Bt, d, Bt)
            M = np.einsum("ocij,ncij->noij", U, V)
            out[:, :, 2 * ty:2 * ty + 2, 2 * tx:2 * tx + 2] = np.einsum("ik,nokl,jl->noij", At, M, At)
    return out[:, :, :oh, :ow].astype(np.float32)


def softmax(x, axis):
    """The NumPy expression: exp(x - max) / sum, float32."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def l2_normalize_channels(x, eps, scale):
    """SSD Normalize across channels in float64: x / sqrt(sum_c x^2 + eps) * scale."""
    x64 = x.astype(np.float64)
    norm = np.sqrt((x64 * x64).sum(axis=1, keepdims=True) + eps)
    s = np.asarray(scale, np.float64).reshape(-1)
    s = s[0] if s.size == 1 else s.reshape((1, -1) + (1,) * (x.ndim - 2))
    return (x64 / norm * s).astype(np.float32)


def logistic(x):
    """float32(0.5 * tanh(0.5 * x) + 0.5) in float64: the engine's logistic as one expression."""
    return (0.5 * np.tanh(0.5 * np.asarray(x).astype(np.float64)) + 0.5).astype(np.float32)


def maxpool_scan(x, kernel, stride, pad, out_hw):
    """Max pooling as kernels.pooling defines it, one window at a time: the cells scanned row
    by row, left to right, keeping ``v`` when ``v > m`` from -inf (NaN skipped; of equal
    0.0 / -0.0 the first one stays); -FLT_MAX for a window of padding only."""
    N, C, H, W = x.shape
    out = np.empty((N, C) + tuple(out_hw), np.float32)
    for n, c, y, xo in np.ndindex(*out.shape):
        hs, ws = y * stride[0] - pad[0], xo * stride[1] - pad[1]
        rows = range(max(hs, 0), min(hs + kernel[0], H))
        cols = range(max(ws, 0), min(ws + kernel[1], W))
        m = np.float32(-np.inf) if len(rows) and len(cols) else np.float32(-3.4028235e38)
        for i in rows:
            for j in cols:
                v = x[n, c, i, j]
                m = v if v > m else m
        out[n, c, y, xo] = m
    return out


def _haswell_two_chains(M, N, P=320, unroll_m=8):
    """(M, N) mask of the outputs OpenBLAS's Haswell sgemm sums in two chains, walked as its
    level-3 driver (interface/level3.c) and kernel (sgemm_kernel_8x4_haswell_2.c) walk a
    row-major M x N call: pixel blocks (its m) of GEMM_P; the first block's channels (its n)
    in calls of 12, then 4, then the rest, later blocks' in one call; each call's channels
    12, 8, 4, 2, 1 at a time."""
    two = np.zeros((M, N), bool)
    js = 0
    while js < N:
        rest = N - js
        ml = P if rest >= 2 * P else (-(-(rest // 2) // unroll_m) * unroll_m if rest > P else rest)
        calls, c0 = [], 0
        if js == 0:
            while c0 < M:
                left = M - c0
                jj = 12 if left >= 12 else 4 if left > 4 else left
                calls.append((c0, jj))
                c0 += jj
        else:
            calls.append((0, M))
        for c0, cn in calls:
            while cn > 0:
                w = 12 if cn > 11 else 8 if cn > 7 else 4 if cn > 3 else 2 if cn > 1 else 1
                if w == 12 and ml >= 16:
                    # H: panel 0, channels 0-5; then m16 pairs alternating right/left halves;
                    # T: whichever half of the last panel no pair covered
                    two[c0:c0 + 6, js:js + 8] = True
                    m, p, side = ml, 0, "R"
                    while True:
                        m -= 8
                        p += 1
                        if m < 16:
                            half = slice(c0, c0 + 6) if side == "R" else slice(c0 + 6, c0 + 12)
                            two[half, js + 8 * p:js + 8 * p + 8] = True
                            break
                        side = "L" if side == "R" else "R"
                elif w == 4:
                    two[c0:c0 + 4, js:js + ml // 8 * 8] = True
                c0 += w
                cn -= w
        js += ml
    return two


def haswell_sgemm(a, b, P=320, Q=320, unroll_m=8):
    """Row-major a (M, K) @ b (K, N) in float32 as OpenBLAS's Haswell/Zen sgemm sums it: K in
    blocks (GEMM_Q rule); per block, each output one chain of fused multiply-adds in k order,
    or, where :func:`_haswell_two_chains` says, the even and odd k below the block's last
    multiple of 8 in two chains (the rest on the even one) added at the end; each block's
    sum added to C (the first to a zeroed C). The fused multiply-adds in x87 extended precision,
    which holds a product of two floats exactly."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    (M, K), N = a.shape, b.shape[1]
    two = _haswell_two_chains(M, N, P, unroll_m)
    ext = np.longdouble
    c = np.zeros((M, N), np.float32)
    k0 = 0
    while k0 < K:
        rest = K - k0
        kc = Q if rest >= 2 * Q else (-(-(rest // 2) // unroll_m) * unroll_m if rest > Q else rest)
        main = kc // 8 * 8
        even = np.zeros((M, N), np.float32)
        odd = np.zeros((M, N), np.float32)
        for k in range(kc):
            prod = a[:, k0 + k, None].astype(ext) * b[k0 + k].astype(ext)
            to_odd = two if (k < main and k % 2) else np.zeros_like(two)
            even = np.where(to_odd, even, (even.astype(ext) + prod).astype(np.float32))
            odd = np.where(to_odd, (odd.astype(ext) + prod).astype(np.float32), odd)
        block = np.where(two, even + odd, even)
        c = (c + block).astype(np.float32)
        k0 += kc
    return c
