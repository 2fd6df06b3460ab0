"""Convolution and transposed convolution: pick the cheapest exact path.

- 1x1, stride 1, no pad: a plain matrix product, no im2col.
- depthwise (one input channel per group): the direct Numba kernel.
- otherwise: im2col over the whole batch and one GEMM per group, so BLAS sees
  the largest matrices it can (better throughput than one GEMM per image).
"""
from __future__ import annotations

import numpy as np

from .depthwise import depthwise_conv
from .im2col import col2im, im2col


def out_size(size, k, s, p, d):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def conv2d(x, w, b=None, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1) -> np.ndarray:
    """x (N, C, H, W) float32, w (O, C/group, kh, kw), b (O,) or None -> (N, O, oh, ow)."""
    N, C, H, W = x.shape
    O, cg, kh, kw = w.shape
    oh = out_size(H, kh, stride[0], pad[0], dilation[0])
    ow = out_size(W, kw, stride[1], pad[1], dilation[1])
    if cg == 1 and group == C and group > 1:
        out = depthwise_conv(x, w, stride, pad, dilation, (oh, ow))
    elif kh == kw == 1 and stride == (1, 1) and pad == (0, 0) and group == 1:
        out = np.matmul(w.reshape(O, C), x.reshape(N, C, H * W)).reshape(N, O, oh, ow)
    else:
        og = O // group
        k = cg * kh * kw
        out = np.empty((O, N, oh * ow), np.float32)
        cols = np.empty((group, k, N * oh * ow), np.float32)
        for n in range(N):
            sl = slice(n * oh * ow, (n + 1) * oh * ow)
            full = im2col(x[n], (kh, kw), stride, pad, dilation, (oh, ow))
            cols[:, :, sl] = full.reshape(group, k, oh * ow)
        wg = w.reshape(group, og, k)
        for g in range(group):
            np.matmul(wg[g], cols[g], out=out[g * og:(g + 1) * og].reshape(og, N * oh * ow))
        out = out.reshape(O, N, oh, ow).transpose(1, 0, 2, 3)
        out = np.ascontiguousarray(out)
    if b is not None:
        out += b.reshape(1, O, 1, 1)
    return out


def deconv2d(x, w, b=None, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1) -> np.ndarray:
    """Transposed convolution, w (C, O/group, kh, kw) as Caffe stores it -> (N, O, oh, ow)."""
    N, C, H, W = x.shape
    _, og, kh, kw = w.shape
    O = og * group
    oh = stride[0] * (H - 1) + dilation[0] * (kh - 1) + 1 - 2 * pad[0]
    ow = stride[1] * (W - 1) + dilation[1] * (kw - 1) + 1 - 2 * pad[1]
    cg = C // group
    out = np.empty((N, O, oh, ow), np.float32)
    wg = w.reshape(group, cg, og * kh * kw)
    for n in range(N):
        xg = x[n].reshape(group, cg, H * W)
        for g in range(group):
            cols = wg[g].T @ xg[g]  # (og*kh*kw, H*W)
            out[n, g * og:(g + 1) * og] = col2im(cols, (og, oh, ow), (kh, kw), stride, pad, dilation, (H, W))
    if b is not None:
        out += b.reshape(1, O, 1, 1)
    return out
