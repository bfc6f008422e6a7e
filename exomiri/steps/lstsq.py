"""Batched weighted linear least squares for many small fits at once.

Cleaning fits a polynomial to every (integration, column, window) series and
background fits a line to every (integration, row); both are thousands of
tiny problems sharing one design matrix with different weights.  Forming the
normal equations with two matrix products and solving them in one batched
call is what makes those steps fast.
"""

from __future__ import annotations

import numpy as np

__all__ = ["batched_wls", "legendre_design"]


def legendre_design(x: np.ndarray, order: int, domain: tuple[float, float] | None = None) -> np.ndarray:
    """Design matrix (len(x), order + 1) of Legendre polynomials of x mapped to [-1, 1].

    The fitted curve is the same as with plain powers of x; Legendre terms on
    [-1, 1] only keep the normal equations well conditioned.
    """
    x = np.asarray(x, dtype=np.float64)
    lo, hi = (x.min(), x.max()) if domain is None else domain
    half = (hi - lo) / 2 or 1.0
    t = (x - (hi + lo) / 2) / half
    return np.polynomial.legendre.legvander(t, order)


def batched_wls(
    design: np.ndarray, y: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve ``min sum_j w[n, j] (y[n, j] - design[j] @ c[n])**2`` for every n.

    Parameters
    ----------
    design : (m, k) array, shared by all problems.
    y : (N, m) array; entries with zero weight may hold anything finite.
    w : (N, m) non-negative weights (0 excludes a point).

    Returns
    -------
    coeffs : (N, k)
    inverse : (N, k, k), ``(A^T W A)^-1``; the covariance of the coefficients
        is this times the variance scale of the weights.
    solved : (N,) bool, False where fewer than k points carry weight.  Those
        problems get the minimum-norm solution through the points they have
        (zeros when they have none), as ``numpy.polyfit`` would.
    """
    design = np.asarray(design, dtype=np.float64)
    m, k = design.shape
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    outer = (design[:, :, None] * design[:, None, :]).reshape(m, k * k)
    ata = (w @ outer).reshape(-1, k, k)
    aty = (w * y) @ design
    npoints = np.count_nonzero(w > 0, axis=1)
    solved = npoints >= k
    if not solved.all():
        ata[~solved] = np.eye(k)
        aty[~solved] = 0.0
    inverse = np.linalg.inv(ata)
    coeffs = np.einsum("nkl,nl->nk", inverse, aty)
    for n in np.flatnonzero(~solved & (npoints > 0)):
        good = w[n] > 0
        sw = np.sqrt(w[n, good])
        coeffs[n] = np.linalg.lstsq(design[good] * sw[:, None], y[n, good] * sw, rcond=None)[0]
        inverse[n] = np.linalg.pinv(design[good].T @ (design[good] * w[n, good, None]))
    return coeffs, inverse, solved
