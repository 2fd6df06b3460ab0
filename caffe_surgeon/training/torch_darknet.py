"""Darknet's weighted, normalising and pooling sections in the torch backend, eval mode.

Each forward is the torch twin of its ``engine/darknet_ops.py`` counterpart (same fork
choices, same ModelErrors) written with differentiable operations, so that eval mode
equals the NumPy engine within float32 rounding (``tests/test_torch_darknet.py``) and the
same table serves when Darknet training lands. The joins, resampling and heads are in
``torch_darknet_structure.py``; the activations in ``torch_darknet_activations.py``.

In train mode BatchNorm is Darknet's own (``torch_darknet_bn.py``: batch statistics with
its variance divisor, its hand-written backward, the rolling update). Training a Darknet
graph with the *Caffe* solver stays refused (:data:`TRAIN_REASON`, registered with
``refuse_training``): Darknet trains by its own rules (the [yolo]/[region] deltas,
``burn_in``, ``subdivisions``, its SGD), which ``darknet_trainer.DarknetTrainer`` applies.
The types the engine refuses are refused here with its reason.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.darknet_ops import BN_EPS, _pool_geometry
from ..engine.ops import refused
from ..errors import ModelError
from ..layers.darknet import opt_float, opt_int
from ..layers.registry import spec_for
from . import torch_darknet_activations as acts
from .torch_darknet_bn import train_batchnorm
from .torch_darknet_train import AUTOGRAD, DarknetRule
from .torch_ops import op, refuse, refuse_training

TRAIN_REASON = ("the Caffe solver cannot train Darknet graphs (its BatchNorm statistics, "
                "[yolo]/[region] losses, burn_in): the detector finetune trains them with "
                "caffe_surgeon.training.darknet_trainer.DarknetTrainer")
#: BatchNorm arrays that are running statistics (buffers of the module, never learned)
BN_STATISTICS = ("rolling_mean", "rolling_variance")
#: darknet's maxpool starts every window at -FLT_MAX (a window wholly in the padding keeps it)
LOWEST = float(-np.finfo(np.float32).max)

refuse_training("darknet", reason=TRAIN_REASON)
for _t, _why in refused("darknet").items():  # what the engine cannot run, for its reason
    refuse("darknet", _t, reason=_why)


def _shape(layer, *inputs):
    return spec_for("darknet", layer).infer(layer, [tuple(x.shape) for x in inputs])


def _has_bn(layer) -> bool:
    return bool(opt_int(layer, "batch_normalize", 0) or opt_int(layer, "cbn", 0))


def _per_channel(v, y):
    return v.reshape((1, -1) + (1,) * (y.ndim - 2))


# ---------------------------------------------------------------- batch norm
def bn_affine(arrays, ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) with BN(x) * scales + biases == a * x + c, per channel, as the engine folds it:
    in float64 (darknet divides in double), rounded once to float32."""
    bias, scales, mean, var = (arrays[k].double().reshape(-1)
                               for k in ("biases", "scales", "rolling_mean", "rolling_variance"))
    if ctx.darknet_bn == "pjreddie":
        inv = scales / (torch.sqrt(var) + BN_EPS["pjreddie"])
    else:
        inv = scales / torch.sqrt(var + BN_EPS["alexeyab"])
    return inv.float(), (bias - mean * inv).float()


def _bias_or_bn(layer, ctx, y):
    if _has_bn(layer) and ctx.training:
        return train_batchnorm(y, ctx.arrays)
    if _has_bn(layer):
        a, c = bn_affine(ctx.arrays, ctx)
        return y * _per_channel(a, y) + _per_channel(c, y)
    return y + _per_channel(ctx.arrays["biases"], y)


# ---------------------------------------------------------------- weighted
def _conv_check(layer) -> str:
    if opt_int(layer, "xnor", 0) or opt_int(layer, "binary", 0):
        return ("xnor=1 / binary=1 convolutions (binarised weights and inputs) are not "
                "supported")
    if "share_index" in layer.params:
        return ("share_index= (AlexeyAB weight sharing) is not supported by the torch backend: "
                "the arrays live in another layer")
    return acts.unknown_activation(layer)


#: a 1x1 convolution's backward GEMM writes the delta below with beta 0
_CONV_TRAINING = DarknetRule(assigns_delta=lambda layer: opt_int(layer, "size", 1) == 1)


@op("darknet", "convolutional", statistics=BN_STATISTICS, check=_conv_check,
    darknet=_CONV_TRAINING)
def convolutional(layer, inputs, ctx):
    x = inputs[0]
    g = spec_for("darknet", layer).geometry(layer, [tuple(x.shape)])
    w = ctx.arrays["weights"]
    if opt_int(layer, "flipped", 0):  # load_convolutional_weights: stored (c*k*k, n), transposed
        w = w.reshape(-1, g["n"]).t().reshape(w.shape)
    stride = tuple(s if s >= 1 else g["stride"]
                   for s in (opt_int(layer, "stride_y", -1), opt_int(layer, "stride_x", -1)))
    dil = max(1, opt_int(layer, "dilation", 1)) if g["size"] > 1 else 1
    # AlexeyAB pads by pad*dilation but sizes the output without the dilation
    p = g["padding"] * dil
    y = F.conv2d(x, w, None, stride, (p, p), (dil, dil), g["groups"])
    if tuple(y.shape[2:]) != (g["oh"], g["ow"]):
        raise ModelError(f"dilation={dil} with padding={g['padding']} gives a {y.shape[3]} x "
                         f"{y.shape[2]} output where darknet allocates {g['ow']} x {g['oh']}")
    return [acts.apply(layer, _bias_or_bn(layer, ctx, y))]


@op("darknet", "deconvolutional", statistics=BN_STATISTICS, check=acts.unknown_activation)
def deconvolutional(layer, inputs, ctx):
    """pjreddie: W^T x by GEMM then col2im, i.e. a transposed conv with weights (c, n, k, k)."""
    g = spec_for("darknet", layer).geometry(layer, [tuple(inputs[0].shape)])
    s, p = g["stride"], g["padding"]
    y = F.conv_transpose2d(inputs[0], ctx.arrays["weights"], None, s, p)
    return [acts.apply(layer, _bias_or_bn(layer, ctx, y))]


@op("darknet", "connected", statistics=BN_STATISTICS, check=acts.unknown_activation)
def connected(layer, inputs, ctx):
    x = inputs[0]
    y = x.reshape(x.shape[0], -1) @ ctx.arrays["weights"].t()
    return [acts.apply(layer, _bias_or_bn(layer, ctx, y.reshape(tuple(y.shape) + (1, 1))))]


@op("darknet", "local", check=acts.unknown_activation)
def local(layer, inputs, ctx):
    """Unshared conv (``local_layer.c``): im2col with pad = the *flag* (0/1), one GEMM per
    location."""
    x = inputs[0]
    g = spec_for("darknet", layer).geometry(layer, [tuple(x.shape)])
    pad, locations = opt_int(layer, "pad", 0), g["oh"] * g["ow"]
    cols = F.unfold(x, g["size"], padding=pad, stride=g["stride"])     # (N, C*k*k, L)
    if cols.shape[2] != locations:  # im2col and the allocation size the output differently
        raise ModelError(f"size={g['size']}, pad={pad} gives {cols.shape[2]} im2col columns but "
                         f"darknet allocates {g['ow']} x {g['oh']} locations (it would read "
                         "past them)")
    wts = ctx.arrays["weights"].reshape(locations, g["n"], cols.shape[1])  # (L, n, C*k*k)
    y = torch.einsum("nkl,lok->nol", cols, wts).reshape(x.shape[0], g["n"], g["oh"], g["ow"])
    return [acts.apply(layer, y + ctx.arrays["biases"].reshape((1,) + tuple(y.shape[1:])))]


@op("darknet", "batchnorm", statistics=BN_STATISTICS)
def batchnorm(layer, inputs, ctx):
    x = inputs[0]
    a, c = bn_affine(ctx.arrays, ctx)
    return [x * _per_channel(a, x) + _per_channel(c, x)]


# ---------------------------------------------------------------- pooling
def _windows(x, k, s, p, hw, value):
    """``x`` padded so that windows ``0 .. hw-1`` (stride ``s``) all fit, ``p`` before."""
    extra = [max(0, (hw[i] - 1) * s[i] + k[i] - x.shape[2 + i] - p[i]) for i in range(2)]
    return F.pad(x, (p[1], extra[1], p[0], extra[0]), value=value)


@op("darknet", "maxpool", darknet=AUTOGRAD)
def maxpool(layer, inputs, ctx):
    x = inputs[0]
    if opt_int(layer, "maxpool_depth", 0):
        # AlexeyAB: output channel g is the max over input channels g, g+out_c, g+2*out_c, ...
        oc = opt_int(layer, "out_channels", 1)
        lowest = x.new_full((x.shape[0],) + tuple(x.shape[2:]), LOWEST)
        return [torch.stack([x[:, g::oc].amax(dim=1).clamp(min=LOWEST) if g < x.shape[1]
                             else lowest for g in range(oc)], dim=1)]
    k, s, p, hw = _pool_geometry(layer, x)
    y = F.max_pool2d(_windows(x, k, s, p, hw, LOWEST), k, s)
    return [y[:, :, :hw[0], :hw[1]]]


@op("darknet", "local_avgpool")
def local_avgpool(layer, inputs, ctx):
    """AlexeyAB: mean over the window's cells that lie inside the image."""
    x = inputs[0]
    k, s, p, hw = _pool_geometry(layer, x)
    total = F.avg_pool2d(_windows(x, k, s, p, hw, 0.0), k, s, divisor_override=1)
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    count = F.avg_pool2d(_windows(ones, k, s, p, hw, 0.0), k, s, divisor_override=1)
    return [(total / count)[:, :, :hw[0], :hw[1]]]


@op("darknet", "avgpool", darknet=AUTOGRAD)
def avgpool(layer, inputs, ctx):
    return [inputs[0].mean(dim=(2, 3), keepdim=True)]


# ---------------------------------------------------------------- normalising
@op("darknet", "l2norm")
def l2norm(layer, inputs, ctx):
    """``l2normalize_cpu``: each pixel divided by the L2 norm over channels (no epsilon)."""
    x = inputs[0]
    return [x / torch.sqrt((x * x).sum(dim=1, keepdim=True))]


@op("darknet", "normalization")
def normalization(layer, inputs, ctx):
    """pjreddie LRN. Its running-sum recurrence (see the engine's ``normalization``) leaves
    channel size/2 out of the first window and later subtracts channels it never added;
    unrolled, channel k sums squares over ``[0, size/2) + [size/2 + 1, k + size/2]`` minus
    ``[0, k - (size-1)/2)``, all clipped to ``[0, C)``: here as differences of one prefix
    sum over channels, in float64 as the engine accumulates."""
    x = inputs[0].double()
    size = opt_int(layer, "size", 5)
    alpha, beta = opt_float(layer, "alpha", .0001), opt_float(layer, "beta", .75)
    kappa = opt_float(layer, "kappa", 1)
    c, half = x.shape[1], size // 2
    prefix = torch.cat([torch.zeros_like(x[:, :1]), torch.cumsum(x * x, dim=1)], dim=1)
    k = torch.arange(c, device=x.device)
    add_end = torch.clamp(k + half + 1, max=c)
    sub_end = torch.clamp(k - (size - 1) // 2, min=0, max=c)
    first, skip = min(half, c), min(half + 1, c)
    acc = prefix[:, first:first + 1] + prefix[:, add_end] - prefix[:, skip:skip + 1] \
        - prefix[:, sub_end]
    return [(x * (kappa + alpha * acc) ** -beta).float()]
