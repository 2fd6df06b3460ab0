"""Numba coordinate descent for LASSO channel selection (slow twin: tests/test_lasso.py)."""
from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def lasso_cd(gram, lam, beta, iters, tol):
    """min_b (1-b)^T G (1-b) + lam |b|_1, in place on ``beta``.

    With r = G (1 - b), coordinate j's optimum is
    b_j = soft(G_jj b_j + r_j, lam / 2) / G_jj; r is updated incrementally.
    """
    n = gram.shape[0]
    r = np.empty(n)
    for i in range(n):
        acc = 0.0
        for k in range(n):
            acc += gram[i, k] * (1.0 - beta[k])
        r[i] = acc
    half = lam / 2.0
    for _ in range(iters):
        change = 0.0
        scale = 0.0
        for j in range(n):
            gjj = gram[j, j]
            if gjj <= 0.0:
                if beta[j] != 0.0:
                    beta[j] = 0.0
                continue
            z = gjj * beta[j] + r[j]
            if z > half:
                new = (z - half) / gjj
            elif z < -half:
                new = (z + half) / gjj
            else:
                new = 0.0
            d = new - beta[j]
            if d != 0.0:
                for k in range(n):
                    r[k] -= gram[k, j] * d
                beta[j] = new
                change = max(change, abs(d))
            scale = max(scale, abs(new))
        if change <= tol * max(scale, 1.0):
            break
