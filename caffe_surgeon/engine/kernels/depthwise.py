"""Direct depthwise convolution: one filter per channel, where im2col + GEMM wastes its time."""
from __future__ import annotations

import numba as nb
import numpy as np

from . import parallel


def _depthwise(x, w, mult, sh, sw, ph, pw, dh, dw, oh, ow, out):
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    for t in nb.prange(N * O):
        n = t // O
        o = t % O
        c = o // mult
        for y in range(oh):
            for xo in range(ow):
                acc = np.float32(0.0)
                for i in range(kh):
                    iy = y * sh - ph + i * dh
                    if iy < 0 or iy >= H:
                        continue
                    for j in range(kw):
                        ix = xo * sw - pw + j * dw
                        if 0 <= ix < W:
                            acc += x[n, c, iy, ix] * w[o, 0, i, j]
                out[n, o, y, xo] = acc


DEPTHWISE_K = parallel.dual(_depthwise)


def depthwise_conv(x, w, stride, pad, dilation, out_hw) -> np.ndarray:
    """x (N, C, H, W), w (C*m, 1, kh, kw) -> (N, C*m, oh, ow), no bias."""
    out = np.empty((x.shape[0], w.shape[0], out_hw[0], out_hw[1]), np.float32)
    macs = out.size * w.shape[2] * w.shape[3]
    kernel = parallel.pick(DEPTHWISE_K, macs, parallel.MIN_PARALLEL_MACS)
    kernel(np.ascontiguousarray(x, np.float32), np.ascontiguousarray(w, np.float32),
           w.shape[0] // x.shape[1], stride[0], stride[1], pad[0], pad[1], dilation[0], dilation[1],
           out_hw[0], out_hw[1], out)
    return out
