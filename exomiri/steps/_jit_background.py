"""Compiled per-series kernel of the clipped least-squares background fits.

:func:`fit_series` does for each (integration, row) series what
:func:`exomiri.builtin.background._polynomial_background` does with whole
blocks of arrays: the weighted least-squares fit, the sigma clipping of
:func:`~exomiri.builtin.background._clip` (with its least-absolute-deviation
restart and its stop on a series that would go back to its previous
pixels) and the covariance scale.  Same algorithm, same decisions; the sums
run in a different order, so coefficients agree to float64 rounding
(about 1e-15 relative), not bit for bit.

Why compiled: a series is 25 pixels and two coefficients; numpy spends its
time on the dozens of passes over (series, pixels) temporaries that each
clipping iteration needs (medians by sorting, masks, matrix products),
while one loop over a series' pixels in registers does all of it.  Numba
compiles the loop once (cached on disk, so later processes load it in a
fraction of a second).  The kernels release the GIL: the callers run blocks
of integrations on a thread pool (:mod:`exomiri.steps._pool`), and every
series is fitted on its own, so results do not depend on the threads.

A series whose normal matrix turns out exactly singular is reported in
``fallback``; the caller refits those with the numpy code, which handles
them as it always did.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["fit_series"]

_MAD_TO_SIGMA = 1.4826
_LAD_ITERATIONS = 10


@njit(cache=True)
def _median_of(values, n, scratch):
    """Median of values[:n] (no NaN among them); 0.5 * (lo + hi) as the numpy code does.

    An insertion sort into ``scratch``: series are a few dozen pixels long.
    """
    for j in range(n):
        v = values[j]
        i = j - 1
        while i >= 0 and scratch[i] > v:
            scratch[i + 1] = scratch[i]
            i -= 1
        scratch[i + 1] = v
    return 0.5 * (scratch[(n - 1) // 2] + scratch[n // 2])


@njit(cache=True)
def _wls(design, y, weights, coef, inverse, ata, rhs):
    """coef = (A^T W A)^-1 A^T W y; inverse = (A^T W A)^-1.  False if A^T W A is singular."""
    m, k = design.shape
    for p in range(k):
        rhs[p] = 0.0
        for q in range(k):
            ata[p, q] = 0.0
    for j in range(m):
        wj = weights[j]
        if wj == 0.0:
            continue
        for p in range(k):
            apw = design[j, p] * wj
            rhs[p] += apw * y[j]
            for q in range(k):
                ata[p, q] += apw * design[j, q]
    # Gauss-Jordan with partial pivoting on [ata | I]
    for p in range(k):
        for q in range(k):
            inverse[p, q] = 1.0 if p == q else 0.0
    for c in range(k):
        piv = c
        best = abs(ata[c, c])
        for r in range(c + 1, k):
            if abs(ata[r, c]) > best:
                best = abs(ata[r, c])
                piv = r
        if best == 0.0:
            return False
        if piv != c:
            for q in range(k):
                ata[c, q], ata[piv, q] = ata[piv, q], ata[c, q]
                inverse[c, q], inverse[piv, q] = inverse[piv, q], inverse[c, q]
        d = ata[c, c]
        for q in range(k):
            ata[c, q] /= d
            inverse[c, q] /= d
        for r in range(k):
            if r != c:
                f = ata[r, c]
                if f != 0.0:
                    for q in range(k):
                        ata[r, q] -= f * ata[c, q]
                        inverse[r, q] -= f * inverse[c, q]
    for p in range(k):
        acc = 0.0
        for q in range(k):
            acc += inverse[p, q] * rhs[q]
        coef[p] = acc
    return True


@njit(cache=True)
def _residuals(design, y, coef, out):
    m, k = design.shape
    for j in range(m):
        acc = 0.0
        for p in range(k):
            acc += coef[p] * design[j, p]
        out[j] = y[j] - acc


@njit(cache=True)
def _scores(resid, w, usable, k, weighted, score, values, scratch):
    """As builtin.background._scores for one series; NaN where not usable."""
    m = resid.shape[0]
    n = 0
    total = 0.0
    for j in range(m):
        if usable[j]:
            r = resid[j] * math.sqrt(w[j]) if weighted else resid[j]
            values[n] = r
            total += r * r
            n += 1
    if n == 0:
        for j in range(m):
            score[j] = np.nan
        return
    centre = _median_of(values, n, scratch)
    for j in range(n):
        values[j] = abs(values[j] - centre)
    mad = _median_of(values, n, scratch)
    dof_scale = math.sqrt(n / max(n - k, 1)) if n > k else np.inf
    sigma = _MAD_TO_SIGMA * mad * dof_scale  # NaN when mad = 0 and dof_scale = inf, as in numpy
    if not sigma > 0:
        sigma = math.sqrt(total / max(n - k, 1))
    for j in range(m):
        if usable[j]:
            r = resid[j] * math.sqrt(w[j]) if weighted else resid[j]
            dev = abs(r - centre)
            score[j] = dev / sigma if sigma > 0 else 0.0 * dev
        else:
            score[j] = np.nan


@njit(cache=True)
def _lad(design, y, w, usable, coef, resid, weights, inverse, ata, rhs):
    """builtin.background._lad_fit for one series: IRLS towards least absolute deviations."""
    m = design.shape[0]
    nkeep = 0
    for j in range(m):
        if usable[j]:
            nkeep += 1
    for _ in range(_LAD_ITERATIONS):
        _residuals(design, y, coef, resid)
        zsum = 0.0
        for j in range(m):
            z = abs(resid[j]) * (math.sqrt(w[j]) if usable[j] else 0.0)
            resid[j] = z
            zsum += z
        floor = 1e-6 * zsum / max(nkeep, 1)
        wmax = 0.0
        for j in range(m):
            weights[j] = (w[j] if usable[j] else 0.0) / max(resid[j], floor + 1e-300)
            wmax = max(wmax, weights[j])
        wmax = max(wmax, 1e-300)
        for j in range(m):
            weights[j] /= wmax
        if not _wls(design, y, weights, coef, inverse, ata, rhs):
            return False
    return True


_BLOCK = 256  # series per pass of the loop (work buffers are allocated once per pass)


@njit(cache=True, nogil=True)
def fit_series(design, y, w, usable, nmin, sigma_clip, max_iterations, weighted, clip):
    """Fit every series (row of y): coefficients (N, k), inverse normal matrices (N, k, k),
    the reduced chi-square of the kept pixels (N,), whether the series had enough pixels,
    and ``fallback`` where a normal matrix was singular (results there are not set)."""
    nseries, m = y.shape
    k = design.shape[1]
    coeffs = np.zeros((nseries, k))
    inverse = np.zeros((nseries, k, k))
    reduced = np.full(nseries, np.nan)
    enough = np.zeros(nseries, dtype=np.bool_)
    fallback = np.zeros(nseries, dtype=np.bool_)
    nblocks = (nseries + _BLOCK - 1) // _BLOCK
    for b in range(nblocks):
        keep = np.empty(m, dtype=np.bool_)
        previous = np.empty(m, dtype=np.bool_)
        new_keep = np.empty(m, dtype=np.bool_)
        weights = np.empty(m)
        resid = np.empty(m)
        score = np.empty(m)
        values = np.empty(m)
        scratch = np.empty(m)
        lad_resid = np.empty(m)
        lad_weights = np.empty(m)
        lad = np.empty(k)
        lad_inverse = np.empty((k, k))
        ata = np.empty((k, k))
        rhs = np.empty(k)
        for s in range(b * _BLOCK, min((b + 1) * _BLOCK, nseries)):
            _fit_one(
                design, y[s], w[s], usable[s], nmin, sigma_clip, max_iterations, weighted, clip,
                coeffs[s], inverse[s], reduced, enough, fallback, s,
                keep, previous, new_keep, weights, resid, score, values, scratch,
                lad_resid, lad_weights, lad, lad_inverse, ata, rhs,
            )
    return coeffs, inverse, reduced, enough, fallback


@njit(cache=True)
def _fit_one(
    design, ys, ws, us, nmin, sigma_clip, max_iterations, weighted, clip,
    coef, inv, reduced, enough, fallback, s,
    keep, previous, new_keep, weights, resid, score, values, scratch,
    lad_resid, lad_weights, lad, lad_inverse, ata, rhs,
):
    m, k = design.shape
    nuse = 0
    for j in range(m):
        if us[j]:
            nuse += 1
    if nuse < nmin:
        # no fit: the caller sets NaN (batched_wls would give zeros and the identity)
        for p in range(k):
            inv[p, p] = 1.0
        return
    enough[s] = True
    for j in range(m):
        keep[j] = us[j]
        previous[j] = us[j]
        weights[j] = ws[j] if us[j] else 0.0
    if not _wls(design, ys, weights, coef, inv, ata, rhs):
        fallback[s] = True
        return
    if clip and max_iterations > 0:
        _residuals(design, ys, coef, resid)
        _scores(resid, ws, us, k, weighted, score, values, scratch)
        restart = False
        for j in range(m):
            new_keep[j] = us[j] and score[j] <= sigma_clip
            if us[j] and score[j] > 2 * sigma_clip:
                restart = True
        if restart:
            for p in range(k):
                lad[p] = coef[p]
            if not _lad(design, ys, ws, us, lad, lad_resid, lad_weights, lad_inverse, ata, rhs):
                fallback[s] = True
                return
            _residuals(design, ys, lad, resid)
            _scores(resid, ws, us, k, weighted, score, values, scratch)
            for j in range(m):
                new_keep[j] = us[j] and score[j] <= sigma_clip
        for iteration in range(max_iterations):
            if iteration:
                _residuals(design, ys, coef, resid)
                _scores(resid, ws, us, k, weighted, score, values, scratch)
                for j in range(m):
                    new_keep[j] = us[j] and score[j] <= sigma_clip
                restart = False
            nnew = 0
            for j in range(m):
                if new_keep[j]:
                    nnew += 1
            if nnew < nmin:
                for j in range(m):
                    new_keep[j] = keep[j]
            changed = restart
            back = False
            for j in range(m):
                if new_keep[j] != keep[j]:
                    changed = True
                if new_keep[j] != previous[j]:
                    back = True
            if iteration and not back:
                changed = False
            if not changed:
                break
            for j in range(m):
                previous[j] = keep[j]
                keep[j] = new_keep[j]
                weights[j] = ws[j] if keep[j] else 0.0
            if not _wls(design, ys, weights, coef, inv, ata, rhs):
                fallback[s] = True
                return
    _residuals(design, ys, coef, resid)
    chi2 = 0.0
    nkept = 0
    for j in range(m):
        if keep[j]:
            chi2 += ws[j] * resid[j] * resid[j]
            nkept += 1
    dof = nkept - k
    reduced[s] = chi2 / max(dof, 1) if dof > 0 else np.nan


@njit(cache=True, nogil=True)
def subtract_model_into(data, err, coeffs, cov, basis, out, err_out):
    """``data - background`` and ``sqrt(err**2 + variance)`` (float32) into ``out`` and
    ``err_out``; NaN error where ``err`` is not finite and positive.

    ``coeffs`` (n, nrows or 1, k), ``cov`` (n, nrows or 1, k, k), ``basis``
    (ncols, k): the :class:`~exomiri.products.BackgroundModel` evaluated in
    float64, without the (n, nrows, ncols) float64 temporaries of
    ``evaluate()`` and ``variance()``.  The level and variance of a row are
    computed once per column (the same sums, in the same order, as pixel by
    pixel), then applied to the row's pixels.  Releases the GIL.
    """
    n, nrows, ncols = data.shape
    k = basis.shape[1]
    one_row = coeffs.shape[1] == 1
    level = np.empty(ncols)
    variance = np.empty(ncols)
    for i in range(n):
        for r in range(nrows):
            rr = 0 if one_row else r
            if r == 0 or not one_row:
                for c in range(ncols):
                    lv = 0.0
                    var = 0.0
                    for p in range(k):
                        lv += coeffs[i, rr, p] * basis[c, p]
                        for q in range(k):
                            var += basis[c, p] * cov[i, rr, p, q] * basis[c, q]
                    level[c] = lv
                    variance[c] = var
            for c in range(ncols):
                out[i, r, c] = np.float64(data[i, r, c]) - level[c]
                e = np.float64(err[i, r, c])
                # an unusable error (not finite and positive) stays unusable
                err_out[i, r, c] = math.sqrt(e * e + variance[c]) if e > 0 and e < np.inf else np.nan


@njit(cache=True, nogil=True)
def subtract_model(data, err, coeffs, cov, basis):
    """:func:`subtract_model_into` new float32 arrays; returns ``(out, err_out)``."""
    out = np.empty(data.shape, dtype=np.float32)
    err_out = np.empty(data.shape, dtype=np.float32)
    subtract_model_into(data, err, coeffs, cov, basis, out, err_out)
    return out, err_out
