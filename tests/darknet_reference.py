"""Slow twins of the Darknet forward code: darknet's C loops transcribed one for one.

Each function mirrors the named C function (pjreddie darknet 2018 unless marked
AlexeyAB) over flat float32 buffers with the same index arithmetic, so a test
can compare the vectorised engine with something a reader can check against
the C source line by line. Only for tiny inputs.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
FLT_MAX = float(np.finfo(F32).max)


def forward_maxpool(x, size, stride_x, stride_y, pad, out_h, out_w):
    """maxpool_layer.c forward_maxpool_layer (offset -pad/2, invalid cells are -FLT_MAX)."""
    b_, c, h, w = x.shape
    inp = x.reshape(-1)
    out = np.zeros((b_, c, out_h, out_w), F32).reshape(-1)
    w_off = h_off = -(pad // 2)
    for b in range(b_):
        for k in range(c):
            for i in range(out_h):
                for j in range(out_w):
                    out_index = j + out_w * (i + out_h * (k + c * b))
                    mx = -FLT_MAX
                    for n in range(size):
                        for m in range(size):
                            cur_h = h_off + i * stride_y + n
                            cur_w = w_off + j * stride_x + m
                            index = cur_w + w * (cur_h + h * (k + b * c))
                            valid = 0 <= cur_h < h and 0 <= cur_w < w
                            val = inp[index] if valid else -FLT_MAX
                            mx = val if val > mx else mx
                    out[out_index] = mx
    return out.reshape(b_, c, out_h, out_w)


def forward_local_avgpool(x, size, stride_x, stride_y, pad, out_h, out_w):
    """AlexeyAB maxpool_layer.c forward_local_avgpool_layer: mean of the valid cells."""
    b_, c, h, w = x.shape
    inp = x.reshape(-1)
    out = np.zeros((b_, c, out_h, out_w), F32)
    w_off = h_off = -(pad // 2)
    for b in range(b_):
        for k in range(c):
            for i in range(out_h):
                for j in range(out_w):
                    avg, counter = F32(0), 0
                    for n in range(size):
                        for m in range(size):
                            cur_h, cur_w = h_off + i * stride_y + n, w_off + j * stride_x + m
                            if 0 <= cur_h < h and 0 <= cur_w < w:
                                counter += 1
                                avg += inp[cur_w + w * (cur_h + h * (k + b * c))]
                    out[b, k, i, j] = avg / counter
    return out


def maxpool_depth(x, out_c):
    """AlexeyAB forward_maxpool_layer with maxpool_depth=1."""
    b_, c, h, w = x.shape
    out = np.zeros((b_, out_c, h, w), F32)
    for b in range(b_):
        for i in range(h):
            for j in range(w):
                for g in range(out_c):
                    mx = -FLT_MAX
                    for k in range(g, c, out_c):
                        val = x[b, k, i, j]
                        mx = val if val > mx else mx
                    out[b, g, i, j] = mx
    return out


def reorg_cpu(x, w, h, c, batch, stride, forward):
    """blas.c reorg_cpu (pjreddie argument names; AlexeyAB's is the same arithmetic)."""
    x = x.reshape(-1)
    out = np.zeros_like(x)
    out_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2 = k % out_c
                    offset = k // out_c
                    w2 = i * stride + offset % stride
                    h2 = j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if forward:
                        out[out_index] = x[in_index]
                    else:
                        out[in_index] = x[out_index]
    return out


def flatten(x, size, layers, batch, forward):
    """blas.c flatten."""
    x = x.reshape(-1)
    swap = np.zeros_like(x)
    for b in range(batch):
        for c in range(layers):
            for i in range(size):
                i1 = b * layers * size + c * size + i
                i2 = b * layers * size + i * layers + c
                if forward:
                    swap[i2] = x[i1]
                else:
                    swap[i1] = x[i2]
    return swap


def shortcut_cpu(batch, w1, h1, c1, add, w2, h2, c2, s1, s2, out):
    """pjreddie blas.c shortcut_cpu; ``out`` (the previous layer's copy) is modified."""
    add, out = add.reshape(-1), out.reshape(-1)
    stride, sample = w1 // w2, w2 // w1
    assert stride == h1 // h2 and sample == h2 // h1
    stride, sample = max(stride, 1), max(sample, 1)
    minw, minh, minc = min(w1, w2), min(h1, h2), min(c1, c2)
    for b in range(batch):
        for k in range(minc):
            for j in range(minh):
                for i in range(minw):
                    out_index = i * sample + w2 * (j * sample + h2 * (k + c2 * b))
                    add_index = i * stride + w1 * (j * stride + h1 * (k + c1 * b))
                    out[out_index] = F32(s1) * out[out_index] + F32(s2) * add[add_index]
    return out


def shortcut_multilayer_cpu(size, src_outputs, batch, n, outputs_of_layers, layers_output,
                            inp, weights, nweights, normalization):
    """AlexeyAB blas.c shortcut_multilayer_cpu (normalization: 0 none, 1 relu, 2 softmax)."""
    out = np.zeros(size, F32)
    inp = inp.reshape(-1)
    layer_step = nweights // (n + 1) if nweights else 0
    step = src_outputs // layer_step if nweights > 0 else 0
    for id_ in range(size):
        src_i, src_b = id_ % src_outputs, id_ // src_outputs
        total, max_val = 1.0, -FLT_MAX
        if weights is not None and normalization:
            if normalization == 2:
                for i in range(n + 1):
                    max_val = max(max_val, weights[src_i // step + i * layer_step])
            total = 0.0001
            for i in range(n + 1):
                wv = weights[src_i // step + i * layer_step]
                total += max(wv, 0) if normalization == 1 else np.exp(wv - max_val)

        def norm(wv):
            if normalization == 1:
                return max(wv, 0) / total
            if normalization == 2:
                return np.exp(wv - max_val) / total
            return wv
        out[id_] = inp[id_] * norm(weights[src_i // step]) if weights is not None else inp[id_]
        for i in range(n):
            add_outputs = outputs_of_layers[i]
            if src_i < add_outputs:
                add = layers_output[i].reshape(-1)[add_outputs * src_b + src_i]
                if weights is not None:
                    out[id_] += add * norm(weights[src_i // step + (i + 1) * layer_step])
                else:
                    out[id_] += add
    return out


def upsample_cpu(inp, w, h, c, batch, stride, forward, scale, out):
    """blas.c upsample_cpu; forward=0 accumulates into ``inp`` (used for negative strides)."""
    inp, out = inp.reshape(-1), out.reshape(-1)
    for b in range(batch):
        for k in range(c):
            for j in range(h * stride):
                for i in range(w * stride):
                    in_index = b * w * h * c + k * w * h + (j // stride) * w + i // stride
                    out_index = b * w * h * c * stride * stride + k * w * h * stride * stride \
                        + j * w * stride + i
                    if forward:
                        out[out_index] = F32(scale) * inp[in_index]
                    else:
                        inp[in_index] += F32(scale) * out[out_index]


def resize_image(im, w, h):
    """image.c resize_image with float32 scalar arithmetic."""
    c, ih, iw = im.shape
    resized = np.zeros((c, h, w), F32)
    part = np.zeros((c, ih, w), F32)
    w_scale = F32(iw - 1) / F32(w - 1) if w > 1 else F32(0)
    h_scale = F32(ih - 1) / F32(h - 1) if h > 1 else F32(0)
    for k in range(c):
        for r in range(ih):
            for col in range(w):
                if col == w - 1 or iw == 1:
                    val = im[k, r, iw - 1]
                else:
                    sx = F32(col) * w_scale
                    ix = int(sx)
                    dx = sx - F32(ix)
                    val = (F32(1) - dx) * im[k, r, ix] + dx * im[k, r, ix + 1]
                part[k, r, col] = val
    for k in range(c):
        for r in range(h):
            sy = F32(r) * h_scale
            iy = int(sy)
            dy = sy - F32(iy)
            for col in range(w):
                resized[k, r, col] = (F32(1) - dy) * part[k, iy, col]
            if r == h - 1 or ih == 1:
                continue
            for col in range(w):
                resized[k, r, col] += dy * part[k, iy + 1, col]
    return resized


def im2col_cpu(data_im, channels, height, width, ksize, stride, pad):
    """im2col.c im2col_cpu (one padding for both sides)."""
    height_col = (height + 2 * pad - ksize) // stride + 1
    width_col = (width + 2 * pad - ksize) // stride + 1
    cols = np.zeros((channels * ksize * ksize, height_col * width_col), F32)
    for c in range(channels * ksize * ksize):
        w_off, h_off, c_im = c % ksize, (c // ksize) % ksize, c // ksize // ksize
        for hh in range(height_col):
            for ww in range(width_col):
                row, col = h_off + hh * stride - pad, w_off + ww * stride - pad
                inside = 0 <= row < height and 0 <= col < width
                cols[c, hh * width_col + ww] = data_im[c_im, row, col] if inside else 0
    return cols


def forward_local(x, weights, biases, n, size, stride, pad, out_h, out_w):
    """local_layer.c forward_local_layer (pad is the 0/1 flag passed to im2col)."""
    out = np.zeros((x.shape[0], n, out_h, out_w), F32)
    locations = out_h * out_w
    wflat = weights.reshape(-1)
    k = size * size * x.shape[1]
    for b in range(x.shape[0]):
        cols = im2col_cpu(x[b], x.shape[1], x.shape[2], x.shape[3], size, stride, pad)
        o = biases.reshape(-1).astype(np.float64).copy()
        for j in range(locations):
            a = wflat[j * k * n:(j + 1) * k * n].reshape(n, k)
            o.reshape(n, locations)[:, j] += a.astype(np.float64) @ cols[:, j]
        out[b] = o.reshape(n, out_h, out_w)
    return out


def col2im_cpu(cols, channels, height, width, ksize, stride, pad):
    height_col = (height + 2 * pad - ksize) // stride + 1
    width_col = (width + 2 * pad - ksize) // stride + 1
    im = np.zeros((channels, height, width), np.float64)
    for c in range(channels * ksize * ksize):
        w_off, h_off, c_im = c % ksize, (c // ksize) % ksize, c // ksize // ksize
        for hh in range(height_col):
            for ww in range(width_col):
                row, col = h_off + hh * stride - pad, w_off + ww * stride - pad
                if 0 <= row < height and 0 <= col < width:
                    im[c_im, row, col] += cols[c, hh * width_col + ww]
    return im


def forward_deconvolutional(x, weights, n, size, stride, pad):
    """deconvolutional_layer.c: workspace = W^T x (W stored c x n*k*k), then col2im_cpu."""
    b_, c, h, w = x.shape
    out_h, out_w = (h - 1) * stride + size - 2 * pad, (w - 1) * stride + size - 2 * pad
    out = np.zeros((b_, n, out_h, out_w), np.float64)
    a = weights.reshape(c, n * size * size).astype(np.float64)
    for b in range(b_):
        cols = a.T @ x[b].reshape(c, h * w)
        out[b] = col2im_cpu(cols, n, out_h, out_w, size, stride, pad)
    return out.astype(F32)


def forward_normalization(x, size, alpha, beta, kappa):
    """normalization_layer.c forward_normalization_layer (its running-sum recurrence)."""
    b_, c, h, w = x.shape
    out = np.zeros_like(x)
    for b in range(b_):
        sq = x[b].astype(np.float64) ** 2
        norms = np.zeros((c, h, w))
        norms[0] = kappa
        for k in range(size // 2):
            norms[0] += alpha * sq[k]
        for k in range(1, c):
            norms[k] = norms[k - 1]
            prev, nxt = k - ((size - 1) // 2) - 1, k + size // 2
            if prev >= 0:
                norms[k] -= alpha * sq[prev]
            if nxt < c:
                norms[k] += alpha * sq[nxt]
        out[b] = (norms ** -beta * x[b]).astype(F32)
    return out


def softmax(inp, n, temp, stride):
    """blas.c softmax over n values spaced ``stride`` apart."""
    largest = max(float(inp[i * stride]) for i in range(n))
    e = [np.exp(float(inp[i * stride]) / temp - largest / temp) for i in range(n)]
    s = sum(e)
    out = inp.copy()
    for i in range(n):
        out[i * stride] = e[i] / s
    return out


def logistic(v):
    return 1. / (1. + np.exp(-np.float64(v)))


def forward_yolo(x, n, classes, scale_x_y=1.0, new_coords=0):
    """yolo_layer.c forward_yolo_layer over entry_index (AlexeyAB scale_x_y/new_coords)."""
    b_, c, h, w = x.shape
    out = x.reshape(-1).astype(np.float64).copy()
    outputs = c * h * w

    def entry_index(batch, location, entry):
        return batch * outputs + (location // (w * h)) * w * h * (4 + classes + 1) \
            + entry * w * h + location % (w * h)
    for b in range(b_):
        for a in range(n):
            index = entry_index(b, a * w * h, 0)
            for i in range(2 * w * h):
                v = out[index + i] if new_coords else logistic(out[index + i])
                out[index + i] = v * scale_x_y - 0.5 * (scale_x_y - 1)
            if not new_coords:
                index = entry_index(b, a * w * h, 4)
                for i in range((1 + classes) * w * h):
                    out[index + i] = logistic(out[index + i])
    return out.astype(F32).reshape(x.shape)


def forward_region(x, n, classes, coords, use_softmax, background=0):
    """region_layer.c forward_region_layer at test time."""
    b_, c, h, w = x.shape
    inp = x.reshape(-1).astype(np.float64)
    out = inp.copy()
    outputs = c * h * w

    def entry_index(batch, location, entry):
        return batch * outputs + (location // (w * h)) * w * h * (coords + classes + 1) \
            + entry * w * h + location % (w * h)
    for b in range(b_):
        for a in range(n):
            index = entry_index(b, a * w * h, 0)
            for i in range(2 * w * h):
                out[index + i] = logistic(out[index + i])
            index = entry_index(b, a * w * h, coords)
            if not background:
                for i in range(w * h):
                    out[index + i] = logistic(out[index + i])
            index = entry_index(b, a * w * h, coords + 1)
            if not use_softmax:
                for i in range(classes * w * h):
                    out[index + i] = logistic(out[index + i])
    if use_softmax:
        index = entry_index(0, 0, coords + (0 if background else 1))
        for b in range(b_ * n):
            for g in range(w * h):
                base = index + b * (outputs // n) + g
                res = softmax(inp[base:], classes + background, 1.0, w * h)
                for i in range(classes + background):
                    out[base + i * w * h] = res[i * w * h]
    return out.astype(F32).reshape(x.shape)


def forward_crop(x, crop_h, crop_w, noadjust):
    b_, c, h, w = x.shape
    dh, dw = (h - crop_h) // 2, (w - crop_w) // 2
    scale, trans = (F32(1), F32(0)) if noadjust else (F32(2), F32(-1))
    out = np.zeros((b_, c, crop_h, crop_w), F32)
    for b in range(b_):
        for k in range(c):
            for i in range(crop_h):
                for j in range(crop_w):
                    out[b, k, i, j] = x[b, k, i + dh, j + dw] * scale + trans
    return out
