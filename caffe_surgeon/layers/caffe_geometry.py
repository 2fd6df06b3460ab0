"""Caffe parameter decoding shared by several layer specs.

Caffe spreads one idea over several spellings (``kernel_size`` repeated or
``kernel_h``/``kernel_w``; ``concat_dim`` vs ``axis``). These helpers turn
the plain params dict into the numbers the shape rules use, with Caffe's
defaults from caffe.proto.
"""
from __future__ import annotations

import math

from ..errors import ModelError


def sub(layer, key: str) -> dict:
    """The ``<key>`` sub-message of a layer's params, or an empty dict."""
    return layer.params.get(key) or {}


def pair(p: dict, name: str, default: int, spatial: int = 2) -> tuple[int, ...]:
    """Read ``name`` (repeated) or ``name_h``/``name_w`` as one value per spatial axis."""
    h, w = p.get(f"{name}_h"), p.get(f"{name}_w")
    if h is not None or w is not None:
        if h is None or w is None:
            raise ModelError(f"{name}_h and {name}_w must be given together")
        return (int(h), int(w))
    vals = p.get(name, [])
    if not isinstance(vals, list):
        vals = [vals]
    if not vals:
        return (default,) * spatial
    if len(vals) == 1:
        return (int(vals[0]),) * spatial
    if len(vals) != spatial:
        raise ModelError(f"{name} has {len(vals)} values for {spatial} spatial axes")
    return tuple(int(v) for v in vals)


def conv_geometry(p: dict):
    """(kernel, stride, pad, dilation) as (h, w) tuples from a ConvolutionParameter."""
    kernel = pair(p, "kernel", 0) if ("kernel_h" in p or "kernel_w" in p) else pair(p, "kernel_size", 0)
    if min(kernel) <= 0:
        raise ModelError("convolution_param has no kernel_size (or kernel_h/kernel_w)")
    stride = pair(p, "stride", 1)
    pad = pair(p, "pad", 0)
    dilation = pair(p, "dilation", 1)
    return kernel, stride, pad, dilation


def conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def deconv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return s * (size - 1) + d * (k - 1) + 1 - 2 * p


def pool_out(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """Caffe's pooling size: ceil by default, then drop a window that starts in the padding."""
    span = (size + 2 * p - k) / s
    out = (math.ceil(span) if ceil else math.floor(span)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return int(out)


def canonical_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ModelError(f"axis {axis} is out of range for a {ndim}-D blob")
    return axis % ndim


def shape_dims(shape_msg: dict) -> tuple[int, ...]:
    """Dims of a BlobShape dict (``{"dim": [1, 3, 224, 224]}``)."""
    return tuple(int(d) for d in (shape_msg or {}).get("dim", []))


def join_axis(layer, ndim: int) -> int:
    """Concat's or Slice's axis: the legacy ``concat_dim`` / ``slice_dim``, else ``axis`` (1)."""
    key = "concat" if layer.type == "Concat" else "slice"
    p = sub(layer, f"{key}_param")
    axis = int(p[f"{key}_dim"]) if f"{key}_dim" in p else int(p.get("axis", 1))
    return canonical_axis(axis, ndim)


def slice_bounds(layer, shape) -> tuple[int, list[int]]:
    """Caffe's Slice of ``shape``: (axis, bounds), top ``i`` taking ``bounds[i]:bounds[i+1]``
    along the axis. ``slice_point`` gives the inner bounds; none means equal parts, one per
    top. Example: 3 tops of 12 channels, no points: (1, [0, 4, 8, 12])."""
    p = sub(layer, "slice_param")
    axis = join_axis(layer, len(shape))
    points = [int(v) for v in p.get("slice_point", [])]
    n = len(layer.tops)
    if points:
        if len(points) != n - 1:
            raise ModelError(f"Slice has {n} tops but {len(points)} slice points")
        bounds = [0] + points + [shape[axis]]
    else:
        if shape[axis] % n:
            raise ModelError(f"Slice cannot split axis {axis} of size {shape[axis]} into {n} equal parts")
        bounds = [i * shape[axis] // n for i in range(n + 1)]
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ModelError(f"Slice points {points} are not increasing within size {shape[axis]}")
    return axis, bounds


def permute_order(layer, ndim: int) -> list[int]:
    """Permute's full axis order: ``permute_param.order``, then the axes it leaves out in
    their order (Caffe's PermuteLayer). Example: order [0, 2] of 4 axes gives [0, 2, 1, 3]."""
    order = [int(o) for o in sub(layer, "permute_param").get("order", [])]
    order += [i for i in range(ndim) if i not in order]
    if sorted(order) != list(range(ndim)):
        raise ModelError(f"Permute order {order} is not a permutation of {ndim} axes")
    return order


def upsample_factors(shape, out_shape) -> tuple[int, int]:
    """Nearest-neighbour Upsample's (height, width) repeat factors from its input and output
    shapes (N, C, H, W); an output that is no integer multiple of the input is a ModelError."""
    h, w, oh, ow = int(shape[2]), int(shape[3]), int(out_shape[2]), int(out_shape[3])
    fh, fw = oh // h, ow // w
    if fh * h != oh or fw * w != ow:
        raise ModelError(f"Upsample to {(oh, ow)} is not an integer multiple of {(h, w)}")
    return fh, fw


def crop_windows(layer, shape, ref_shape) -> list[tuple[int, int, int]]:
    """Caffe's Crop: (axis, offset, size) for every axis from ``crop_param.axis`` (2) on; one
    offset serves every axis, none means 0. A window past the input is a ModelError."""
    p = sub(layer, "crop_param")
    axis = canonical_axis(int(p.get("axis", 2)), len(shape))
    offsets = [int(o) for o in p.get("offset", [])]
    out = []
    for i, a in enumerate(range(axis, len(shape))):
        off = offsets[0] if len(offsets) == 1 else (offsets[i] if offsets else 0)
        if off + ref_shape[a] > shape[a]:
            raise ModelError(f"crop offset {off} + size {ref_shape[a]} exceeds axis {a} of size {shape[a]}")
        out.append((a, off, int(ref_shape[a])))
    return out


def interp_window(layer, h: int, w: int) -> tuple[slice, slice]:
    """The (rows, columns) of an H x W input that Interp resizes: Caffe's ``interp_layer``
    reads ``pad_beg`` / ``pad_end`` (0) only as crops (pads <= 0) of each spatial side; a
    positive pad is a ModelError. Example: pad_beg -1, pad_end -2 on 10 x 10 gives rows and
    columns 1:8."""
    p = sub(layer, "interp_param")
    pad_beg, pad_end = int(p.get("pad_beg", 0)), int(p.get("pad_end", 0))
    if pad_beg > 0 or pad_end > 0:
        raise ModelError(f"Interp pad_beg {pad_beg} / pad_end {pad_end}: Caffe's interp_layer "
                         "supports only pads <= 0 (cropping)")
    return slice(-pad_beg, h + pad_end), slice(-pad_beg, w + pad_end)


def pool_geometry(p: dict, h: int, w: int):
    """(kernel, stride, pad, (out_h, out_w)) of a Pooling layer on an h x w input: global
    pooling, ``kernel_h``/``kernel_w`` or ``kernel_size``, and Caffe's ceil rounding unless
    ``round_mode: FLOOR`` (BVLC) or ``ceil_mode: false`` (fork) says floor."""
    if p.get("global_pooling", False):
        k, s, pd = (h, w), (1, 1), (0, 0)
    else:
        k = pair(p, "kernel", 0) if ("kernel_h" in p or "kernel_w" in p) else pair(p, "kernel_size", 0)
        s, pd = pair(p, "stride", 1), pair(p, "pad", 0)
    ceil = p.get("round_mode", "CEIL") == "CEIL" and p.get("ceil_mode", True)
    return k, s, pd, (pool_out(h, k[0], s[0], pd[0], ceil), pool_out(w, k[1], s[1], pd[1], ceil))


def reorg_stride(p: dict) -> int:
    """``reorg_param.stride``, which Caffe's reorg layer requires."""
    if "stride" not in p:
        raise ModelError("Reorg needs reorg_param.stride (Caffe's reorg_layer checks for it)")
    return int(p["stride"])
