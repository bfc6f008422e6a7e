"""Compiled per-series kernel of unweighted outlier cleaning (:mod:`exomiri.steps.clean`).

:func:`clean_series` does for each column of a ``(h, N)`` group array what
:func:`exomiri.steps.clean._clean_group` does with whole-array operations in
the unweighted case: the polynomial fit (the shared pseudo-inverse for
series without bad pixels, a Cholesky solution otherwise), the iterative
clipping of the pixel with the largest externally studentized residual,
and the 1-sigma uncertainty of the fit at the replaced pixels.  The
all-good fit and the residual sums run in the numpy code's order; the
Cholesky solutions and leverages of series with bad pixels in another, so
those agree to float64 rounding.

Series it does not handle (fewer good pixels than coefficients but at least
two, which need the minimum-norm SVD solution, or a Cholesky pivot that is
not clearly positive) are reported in ``fallback`` and cleaned by the numpy
code, exactly as before.  Every series is independent of the others, so
results do not depend on how series are grouped or on threads (the kernel
releases the GIL and runs in clean's thread pool).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["clean_series", "gather_windows", "scatter_windows"]

# mirror exomiri.steps.clean
_DEGENERATE_RTOL = 1e-9
_LEVERAGE_ATOL = 1e-10
_PIVOT_RTOL = 1e-13


@njit(cache=True, nogil=True)
def _inflate(leverage):
    room = 1.0 - leverage
    if room <= _LEVERAGE_ATOL:
        return 0.0
    return 1.0 / room


@njit(cache=True, nogil=True)
def _cholesky(A, good, L):
    """Cholesky factor L of A^T W A, W = diag(good), as clean._cholesky computes it.

    False if a pivot is not clearly positive.
    """
    h, k = A.shape
    for p in range(k):
        for q in range(p + 1):
            acc = 0.0
            for j in range(h):
                if good[j]:
                    acc += A[j, p] * A[j, q]
            L[p, q] = acc  # the normal matrix's lower triangle, overwritten below
    for j in range(k):
        diag = L[j, j]
        piv = diag
        for p in range(j):
            piv -= L[j, p] * L[j, p]
        if not piv > _PIVOT_RTOL * diag:
            return False
        ljj = math.sqrt(piv)
        L[j, j] = ljj
        for i in range(j + 1, k):
            v = L[i, j]
            for p in range(j):
                v -= L[i, p] * L[j, p]
            L[i, j] = v / ljj
    return True


@njit(cache=True, nogil=True)
def _solve(A, y, s, good, L, z, coef):
    """Coefficients through the good pixels: forward and back substitution (clean._forward,
    clean._backward)."""
    h, k = A.shape
    for p in range(k):
        acc = 0.0
        for j in range(h):
            if good[j]:
                acc += A[j, p] * y[j, s]
        z[p] = acc
    for i in range(k):
        v = 0.0
        for p in range(i):
            v += L[i, p] * z[p]
        z[i] = (z[i] - v) / L[i, i]
    for i in range(k - 1, -1, -1):
        v = 0.0
        for p in range(i + 1, k):
            v += L[p, i] * coef[p]
        coef[i] = (z[i] - v) / L[i, i]


@njit(cache=True, nogil=True)
def _inverse_pairs(L, Li, inv):
    """(A^T W A)^-1 entries for the pairs p >= q from L, as clean._factor_variance."""
    k = L.shape[0]
    for i in range(k):
        Li[i, i] = 1.0 / L[i, i]
        for j in range(i):
            v = L[i, j] * Li[j, j]
            for p in range(j + 1, i):
                v = v + L[i, p] * Li[p, j]
            Li[i, j] = -v * Li[i, i]
    m = 0
    for p in range(k):
        for q in range(p + 1):
            v = Li[p, p] * Li[p, q]
            for i in range(p + 1, k):
                v = v + Li[i, p] * Li[i, q]
            inv[m] = v
            m += 1


@njit(cache=True, nogil=True)
def _variance(quad, inv, j):
    """a_j^T (A^T W A)^-1 a_j = sum over pairs of quad[pair, j] * inv[pair]."""
    v = 0.0
    for m in range(inv.shape[0]):
        v += quad[m, j] * inv[m]
    return v


@njit(cache=True, nogil=True)
def _evaluate(A, coef, fit, s):
    h, k = A.shape
    for j in range(h):
        v = 0.0
        for p in range(k):
            v += A[j, p] * coef[p]
        fit[j, s] = v


@njit(cache=True, nogil=True)
def clean_series(y, good, A, pinv, quad, inflate_all, threshold):
    """Clean every column of ``y`` (h, N), zeros at pixels that are not ``good``.

    Updates ``good`` in place (clipped pixels become False) and returns
    ``fit`` (h, N), ``clipped`` (h, N), ``sigma`` (h, N) with ``has_sigma``
    (N,): the fit uncertainty of the columns whose fit has spare degrees of
    freedom and replaced pixels, and ``fallback`` (N,): columns left to the
    numpy code (their other outputs are not set).
    """
    h, N = y.shape
    k = A.shape[1]
    # quad: (pairs, h) products A_p A_q (doubled for p > q), clean._Design.quadT
    fit = np.empty((h, N))
    clipped = np.zeros((h, N), dtype=np.bool_)
    sigma = np.empty((h, N))  # set only in the columns with has_sigma
    has_sigma = np.zeros(N, dtype=np.bool_)
    fallback = np.zeros(N, dtype=np.bool_)
    can_clip = h >= k + 2
    thr2 = threshold * threshold
    L = np.empty((k, k))
    Li = np.empty((k, k))
    inv = np.empty(quad.shape[0])
    z = np.empty(k)
    coef = np.empty(k)
    infl = np.empty(h)
    g = np.empty(h, dtype=np.bool_)
    r = np.empty(h)
    # Pass 1, vectorised across series (the innermost loops run over s): the
    # all-good fit through the shared pseudo-inverse and the first clipping
    # statistics of every series, each sum in the same order as the numpy code.
    coef_all = np.zeros((k, N))
    if h >= 2:
        for p in range(k):
            for j in range(h):
                c = pinv[p, j]
                for s in range(N):
                    coef_all[p, s] += c * y[j, s]
    for j in range(h):
        for s in range(N):
            v = 0.0
            for p in range(k):
                v += A[j, p] * coef_all[p, s]
            fit[j, s] = v
    # (only the all-good series use these; a bad pixel adds exact zeros)
    ngood = np.zeros(N, dtype=np.int64)
    ssr0 = np.zeros(N)
    umax0 = np.zeros(N)
    ymax0 = np.zeros(N)
    for j in range(h):
        f = inflate_all[j]
        for s in range(N):
            gv = 1.0 if good[j, s] else 0.0
            rj = (y[j, s] - fit[j, s]) * gv
            rr = rj * rj
            ssr0[s] += rr
            umax0[s] = max(umax0[s], rr * f)
            ymax0[s] = max(ymax0[s], abs(y[j, s]) * gv)
            ngood[s] += 1 if good[j, s] else 0
    # Pass 2, series by series: everything else.
    for s in range(N):
        ng = ngood[s]
        if ng == h:
            if not can_clip or h - (k + 1) < 1:
                continue
            den = max(ssr0[s] - umax0[s], 0.0)
            num = (h - (k + 1)) * umax0[s]
            t2 = num / den if den > 0.0 else (np.inf if num > 0.0 else np.nan)
            if not t2 > thr2 or not math.sqrt(ssr0[s] / ng) > _DEGENERATE_RTOL * ymax0[s]:
                continue  # nothing to clip: the fit of pass 1 stands
        for j in range(h):
            g[j] = good[j, s]
        if ng == h:
            for p in range(k):
                coef[p] = coef_all[p, s]
            for j in range(h):
                infl[j] = inflate_all[j]
        elif ng >= k:
            if not _cholesky(A, g, L):
                fallback[s] = True
                continue
            _solve(A, y, s, g, L, z, coef)
            if can_clip:
                _inverse_pairs(L, Li, inv)
                for j in range(h):
                    infl[j] = _inflate(_variance(quad, inv, j)) if g[j] else 1.0
        elif ng >= 2:
            fallback[s] = True  # minimum-norm solution: numpy's SVD
            continue
        else:
            for p in range(k):
                coef[p] = 0.0
            for j in range(h):
                infl[j] = 0.0
        if h < 2:
            for p in range(k):
                coef[p] = 0.0
        _evaluate(A, coef, fit, s)
        failed = False
        while can_clip:
            ssr = 0.0
            umax = -1.0
            worst = 0
            ymax = 0.0
            for j in range(h):
                rj = (y[j, s] - fit[j, s]) if g[j] else 0.0
                r[j] = rj
                ssr += rj * rj
                u = rj * rj * infl[j]
                if u > umax:
                    umax = u
                    worst = j
                if g[j]:
                    ymax = max(ymax, abs(y[j, s]))
            dof = ng - (k + 1)
            if dof < 1:
                break
            den = max(ssr - umax, 0.0)
            if den > 0.0:
                t2 = dof * umax / den
            elif dof * umax > 0.0:
                t2 = np.inf
            else:
                t2 = np.nan
            if not t2 > thr2:
                break
            if not math.sqrt(ssr / ng) > _DEGENERATE_RTOL * ymax:
                break
            g[worst] = False
            clipped[worst, s] = True
            ng -= 1
            if not _cholesky(A, g, L):
                failed = True
                break
            _solve(A, y, s, g, L, z, coef)
            _evaluate(A, coef, fit, s)
            _inverse_pairs(L, Li, inv)
            for j in range(h):
                infl[j] = _inflate(_variance(quad, inv, j)) if g[j] else 1.0
        if failed:
            fallback[s] = True
            for j in range(h):
                clipped[j, s] = False
            continue
        for j in range(h):
            good[j, s] = g[j]
        if ng < h and ng > k:
            ssr = 0.0
            for j in range(h):
                rj = (y[j, s] - fit[j, s]) if g[j] else 0.0
                ssr += rj * rj
            chi2 = ssr / (ng - k)
            if not _cholesky(A, g, L):
                fallback[s] = True
                for j in range(h):
                    clipped[j, s] = False
                continue
            _inverse_pairs(L, Li, inv)
            has_sigma[s] = True
            for j in range(h):
                sigma[j, s] = math.sqrt(_variance(quad, inv, j) * chi2)
    return fit, clipped, sigma, has_sigma, fallback


@njit(cache=True, nogil=True)
def gather_windows(data, bad, has_bad, i0, i1, starts, h, y, good):
    """The series of the windows of height ``h`` starting at rows ``starts`` of
    integrations [i0, i1) as the (h, N) group arrays of :mod:`exomiri.steps.clean`:
    ``y[j, (b * nw + w) * ncols + c] = data[i0 + b, starts[w] + j, c]`` in float64,
    ``good`` where that is finite and not ``bad`` (when ``has_bad``), ``y`` 0 elsewhere."""
    ncols = data.shape[2]
    nw = starts.shape[0]
    for b in range(i1 - i0):
        i = i0 + b
        for w in range(nw):
            base = (b * nw + w) * ncols
            for j in range(h):
                row = starts[w] + j
                for c in range(ncols):
                    v = np.float64(data[i, row, c])
                    ok = math.isfinite(v)
                    if has_bad and bad[i, row, c]:
                        ok = False
                    good[j, base + c] = ok
                    y[j, base + c] = v if ok else 0.0


@njit(cache=True, nogil=True)
def scatter_windows(
    data, err, i0, i1, starts, h, fit, good, clipped, sigma_at, sigma,
    out_data, out_err, out_replaced, out_clipped, out_fit,
):
    """Write a cleaned group back into the float32 output cubes, as
    ``exomiri.steps.clean._clean_chunk`` does: the fit everywhere; the input
    where ``good``, the fit where not (replaced), with the error of a replaced
    pixel its input error (NaN if not finite), NaN for a series with fewer
    than two good pixels, or ``sigma[j, sigma_at[n]]`` for the series ``n``
    with ``sigma_at[n] >= 0``."""
    ncols = data.shape[2]
    nw = starts.shape[0]
    N = good.shape[1]
    ngood = np.zeros(N, dtype=np.int64)
    for j in range(h):
        for n in range(N):
            if good[j, n]:
                ngood[n] += 1
    for b in range(i1 - i0):
        i = i0 + b
        for w in range(nw):
            base = (b * nw + w) * ncols
            for j in range(h):
                row = starts[w] + j
                for c in range(ncols):
                    n = base + c
                    f = np.float32(fit[j, n])
                    out_fit[i, row, c] = f
                    out_clipped[i, row, c] = clipped[j, n]
                    if good[j, n]:
                        out_data[i, row, c] = np.float32(data[i, row, c])
                        out_err[i, row, c] = np.float32(err[i, row, c])
                        out_replaced[i, row, c] = False
                    else:
                        out_data[i, row, c] = f
                        out_replaced[i, row, c] = True
                        e = np.float32(err[i, row, c])
                        if not math.isfinite(e) or ngood[n] < 2:
                            e = np.float32(np.nan)
                        if sigma_at[n] >= 0:
                            e = np.float32(sigma[j, sigma_at[n]])
                        out_err[i, row, c] = e
