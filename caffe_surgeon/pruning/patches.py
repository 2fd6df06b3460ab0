"""Sampled input patches of a convolution, shared by LASSO selection and LS reconstruction."""
from __future__ import annotations

import numpy as np


def output_size(in_hw, window) -> tuple[int, int]:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = window
    h, w = in_hw
    return ((h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1,
            (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1)


def sample_positions(n_images: int, out_hw, per_image: int, rng) -> tuple:
    """(image, y, x) of ``per_image`` distinct output points per image (fewer if the map is small)."""
    oh, ow = out_hw
    m = min(per_image, oh * ow)
    pos = np.stack([rng.choice(oh * ow, m, replace=False) for _ in range(n_images)])
    py, px = np.divmod(pos.reshape(-1), ow)
    return np.repeat(np.arange(n_images), m), py, px


def patches(x: np.ndarray, window, img, py, px) -> np.ndarray:
    """The receptive fields of the sampled output points: (samples, C, kh * kw) float64."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = window
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    iy = py[:, None] * sh + np.arange(kh)[None] * dh
    ix = px[:, None] * sw + np.arange(kw)[None] * dw
    c = np.arange(x.shape[1])
    out = xp[img[:, None, None, None], c[None, :, None, None], iy[:, None, :, None], ix[:, None, None, :]]
    return out.reshape(len(img), x.shape[1], kh * kw).astype(np.float64)
