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
