"""Darknet's BatchNorm in training, forward and backward, as pjreddie Darknet computes them.

``forward_batchnorm_layer`` / ``backward_batchnorm_layer`` (``batchnorm_layer.c``, ``blas.c``)
differ from textbook BatchNorm, and so from torch's, in three ways this module keeps:

* the batch variance divides by ``N*H*W - 1`` (``variance_cpu``), and the rolling variance
  averages that unbiased value;
* the forward normalises by ``sqrt(var) + 1e-6`` while the backward differentiates as if it
  were ``sqrt(var + 1e-5)`` and as if the variance divided by ``N*H*W``: Darknet's gradient
  is not the gradient of its forward, so autograd cannot derive it and
  :class:`DarknetBatchNorm` states it by hand;
* the rolling statistics move by ``rolling = .99*rolling + .01*batch`` on every forward
  (every subdivision), in float32.
"""
from __future__ import annotations

import numpy as np
import torch

#: ``normalize_cpu``'s epsilon (added to the standard deviation)
FORWARD_EPS = 1e-6
#: the epsilon of ``mean_delta_cpu`` / ``variance_delta_cpu`` / ``normalize_delta_cpu``
#: (added to the variance)
BACKWARD_EPS = 1e-5
#: ``scal_cpu(.99)`` then ``axpy_cpu(.01)`` on the rolling statistics (float arguments)
KEEP, TAKE = float(np.float32(.99)), float(np.float32(.01))


def _channel(v, like):
    return v.reshape((1, -1) + (1,) * (like.ndim - 2))


class DarknetBatchNorm(torch.autograd.Function):
    """``scales * (x - mean) / (sqrt(var) + 1e-6) + biases`` over the batch's statistics, with
    Darknet's backward (module docstring). Returns (output, batch mean, batch variance)."""

    @staticmethod
    def forward(ctx, x, scales, biases):
        dims = [0] + list(range(2, x.ndim))
        count = x.numel() // x.shape[1]
        mean = x.sum(dim=dims) * float(np.float32(1. / count))
        centred = x - _channel(mean, x)
        var = (centred * centred).sum(dim=dims) * float(np.float32(1. / (count - 1)))
        norm = centred / _channel(torch.sqrt(var) + FORWARD_EPS, x)
        ctx.save_for_backward(centred, norm, var, scales)
        return norm * _channel(scales, x) + _channel(biases, x), mean, var

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var):
        centred, norm, var, scales = ctx.saved_tensors
        dims = [0] + list(range(2, grad.ndim))
        count = grad.numel() // grad.shape[1]
        grad_biases = grad.sum(dim=dims)                      # backward_bias
        grad_scales = (grad * norm).sum(dim=dims)             # backward_scale_cpu
        g = grad * _channel(scales, grad)                     # scale_bias(delta, scales)
        std = torch.sqrt(var + BACKWARD_EPS)
        mean_g = g.sum(dim=dims) * (-1. / std)                # mean_delta_cpu
        var_g = (g * centred).sum(dim=dims) * (-.5 * (var + BACKWARD_EPS) ** -1.5)
        grad_x = g / _channel(std, g) + _channel(var_g, g) * 2. * centred / count \
            + _channel(mean_g, g) / count                     # normalize_delta_cpu
        return grad_x, grad_scales, grad_biases


def train_batchnorm(x, arrays) -> torch.Tensor:
    """Darknet's training-mode BatchNorm of ``x`` with the layer's ``arrays`` (scales,
    biases; rolling_mean and rolling_variance buffers, moved in place as Darknet moves them)."""
    y, mean, var = DarknetBatchNorm.apply(x, arrays["scales"].reshape(-1),
                                          arrays["biases"].reshape(-1))
    with torch.no_grad():
        for name, batch in (("rolling_mean", mean), ("rolling_variance", var)):
            rolling = arrays[name]
            flat = rolling.view(-1)
            flat.mul_(KEEP).add_(batch.detach(), alpha=TAKE)
    return y
