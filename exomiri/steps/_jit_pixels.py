"""Compiled one-pass pixel kernels: the unusable-pixel mask and the background cubes.

Each replaces a few whole-cube numpy expressions (every one a pass over the
cube and often a temporary of its size) by one loop over the pixels that
computes the same values with the same arithmetic, so results are identical
bit for bit.  The kernels release the GIL; :mod:`exomiri.steps.pixels` runs
them on blocks of integrations on a thread pool.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["background_cubes_into", "spatial_profile_into", "unusable_into"]


@njit(cache=True, nogil=True)
def unusable_into(data, err, dq, bits, keep_bit, out):
    """``out`` True where a pixel must not be used: data not finite, err not finite and
    positive, or a DQ bit of ``bits`` set without ``keep_bit`` (0: bits alone decide)."""
    n, nrows, ncols = data.shape
    for i in range(n):
        for r in range(nrows):
            for c in range(ncols):
                e = err[i, r, c]
                bad = not math.isfinite(data[i, r, c]) or not (e > 0 and e < np.inf)
                if bits != 0 and not bad:
                    q = np.int64(dq[i, r, c])
                    bad = (q & bits) != 0 and (q & keep_bit) == 0
                out[i, r, c] = bad


@njit(cache=True, nogil=True)
def background_cubes_into(coeffs, cov, basis, level, level_err):
    """Float32 background ``level`` and its error ``level_err`` (n, nrows, ncols).

    The arithmetic of ``BackgroundModel.evaluate(dtype=float32)`` and
    ``sqrt(BackgroundModel.variance(dtype=float32))``: float32 products and
    sums in the same order (``coeffs`` (n, nrows or 1, k), ``cov`` (n, nrows
    or 1, k, k) and ``basis`` (ncols, k) already float32; each product
    ``basis[:, p] * basis[:, q]`` rounded first, as numpy forms it).
    """
    n, nrows, ncols = level.shape
    k = basis.shape[1]
    one_row = coeffs.shape[1] == 1
    columns = np.ascontiguousarray(basis.T)  # (k, ncols)
    products = np.empty((k, k, ncols), dtype=np.float32)
    for p in range(k):
        for q in range(k):
            for c in range(ncols):
                products[p, q, c] = basis[c, p] * basis[c, q]
    variance = np.empty(ncols, dtype=np.float32)
    for i in range(n):
        for r in range(nrows):
            rr = 0 if one_row else r
            out = level[i, r]
            a = coeffs[i, rr, 0]
            for c in range(ncols):
                out[c] = a * columns[0, c]
            for p in range(1, k):
                a = coeffs[i, rr, p]
                for c in range(ncols):
                    out[c] += a * columns[p, c]
            variance[:] = 0
            for p in range(k):
                for q in range(k):
                    a = cov[i, rr, p, q]
                    for c in range(ncols):
                        variance[c] += a * products[p, q, c]
            out = level_err[i, r]
            for c in range(ncols):
                out[c] = np.sqrt(variance[c])


#: numpy sums a contiguous run of at most this many values with eight accumulators.
_PAIRWISE_BLOCK = 128


@njit(cache=True)
def _numpy_sum(values, n):
    """Sum of ``values[:n]`` (float64, at most ``_PAIRWISE_BLOCK`` of them) in the order of
    numpy's pairwise summation of a contiguous axis (``ndarray.sum``): sequential below
    8 values, else eight interleaved partial sums combined pairwise, then the remainder."""
    if n < 8:
        total = 0.0
        for j in range(n):
            total += values[j]
        return 0.0 + total
    r0, r1, r2, r3 = values[0], values[1], values[2], values[3]
    r4, r5, r6, r7 = values[4], values[5], values[6], values[7]
    j = 8
    while j < n - n % 8:
        r0 += values[j]
        r1 += values[j + 1]
        r2 += values[j + 2]
        r3 += values[j + 3]
        r4 += values[j + 4]
        r5 += values[j + 5]
        r6 += values[j + 6]
        r7 += values[j + 7]
        j += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while j < n:
        total += values[j]
        j += 1
    return 0.0 + total


@njit(cache=True, nogil=True)
def spatial_profile_into(fit, left, right, out):
    """``exomiri.steps.clean.spatial_profile`` of ``fit`` (n, nrows, ncols) into the float32
    ``out``: in [left, right) each row's positive finite values over their sum (float64,
    summed as numpy does), ``1 / (right - left)`` where nothing is positive; 0 elsewhere."""
    n, nrows = fit.shape[:2]
    width = right - left
    core = np.empty(width)
    uniform = np.float32(1.0 / width)
    for i in range(n):
        for r in range(nrows):
            for c in range(width):
                v = np.float64(fit[i, r, left + c])
                core[c] = v if v > 0 and v < np.inf else 0.0
            total = _numpy_sum(core, width)
            row = out[i, r]
            row[:left] = 0
            row[right:] = 0
            if total > 0:
                for c in range(width):
                    row[left + c] = np.float32(core[c] / total)
            else:
                row[left:right] = uniform
