"""Sub-pixel shifts of 1-D series against a template, and re-sampling by them.

The pointing of a time series drifts by hundredths of a pixel.  Two series
per integration measure it: the extracted spectrum (flux per row) gives the
shift along the dispersion axis and the cross-dispersion profile (the frame
summed over a range of rows) gives the shift across it.

:func:`measure_shifts` fits every series directly with a shifted, scaled copy
of the template, ``series_i(r) = a_i * T(r - s_i) + b_i``, where ``T`` is a
cubic spline through the template.  Fitting the model rather than locating
the peak of a cross-correlation matters for MIRI: the spectrum is smooth, its
auto-correlation is broad, and the correlation over a finite window is
dominated by the window's edges, which do not move, so its peak is pulled
towards zero lag and cross-correlation under-estimates the shifts of smooth
spectra by tens of per cent or more.  The model fit has no such pull: at the
true shift its residual is noise only.

Conventions
-----------
* A positive shift means the series sits towards the *higher* index than the
  template: ``series(r) ~ template(r - s)``.
* :func:`resample` undoes a shift: ``aligned(r) = flux(r + s)``, so resampling
  by the measured shifts puts every series onto the template's grid.

All functions take plain arrays, never modify them and work on every
integration at once.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline

from ..exceptions import InputError

__all__ = [
    "cross_dispersion_profiles",
    "cross_dispersion_shifts",
    "cross_dispersion_variance",
    "measure_shifts",
    "resample",
]


# ---------------------------------------------------------------------------
# template interpolant
# ---------------------------------------------------------------------------


class _Template:
    """Cubic spline through a template sampled at rows 0..m-1, NaN-aware.

    NaN template pixels are bridged by the spline through the finite ones so
    that the polynomial pieces stay on the uniform integer grid, but every
    piece touching a NaN pixel is unusable, as is everything outside the
    first..last finite pixel (no extrapolation).

    The interpolant is only ever needed at ``x = r - s`` for all rows r of a
    series shifted by s.  Then ``floor(x) = r + K`` with ``K = floor(-s)`` and
    the fractional part ``t = -s - K`` is the same for every row, so the
    pieces needed are a contiguous slice of the coefficient table and the
    evaluation is a few broadcast operations, with no per-pixel gather.
    """

    def __init__(self, template: np.ndarray):
        template = np.asarray(template, dtype=np.float64)
        m = template.size
        finite = np.isfinite(template)
        self.ok = finite.sum() >= 4
        if not self.ok:
            return
        rows = np.arange(m, dtype=np.float64)
        idx = np.flatnonzero(finite)
        filled = template.copy()
        if not finite.all():
            filled[~finite] = CubicSpline(idx, template[idx])(rows[~finite])
        spline = CubicSpline(rows, filled)
        # Piece k covers [k, k + 1); a last "piece" at m - 1 carries the value
        # and slope at the final node, used only there (t == 0).
        table = np.zeros((m, 4))
        table[:-1] = spline.c.T  # highest power first
        table[-1, 2] = spline(m - 1.0, 1)
        table[-1, 3] = filled[-1]
        self.table = table
        self.piece_ok = np.zeros(m, dtype=bool)
        self.piece_ok[:-1] = finite[:-1] & finite[1:]
        self.node_ok = finite
        self.m = m

    def __call__(
        self, shifts: np.ndarray, second: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Value, first and (if asked) second derivative and usability of
        ``T(r - s)``, each of shape (n, m)."""
        m = self.m
        n = shifts.size
        value = np.zeros((n, m))
        deriv = np.zeros((n, m))
        deriv2 = np.zeros((n, m)) if second else None
        usable = np.zeros((n, m), dtype=bool)
        finite = np.isfinite(shifts)
        neg = np.where(finite, -shifts, 0.0)
        big = np.floor(neg)
        frac = neg - big
        lag = np.clip(big, -m - 1, m + 1).astype(np.intp)
        lag[~finite] = m + 1  # entirely outside: nothing usable
        pad = int(np.abs(lag).max()) + 1
        table = np.zeros((m + 2 * pad, 4))
        table[pad : pad + m] = self.table
        piece_ok = np.zeros(m + 2 * pad, dtype=bool)
        piece_ok[pad : pad + m] = self.piece_ok
        node_ok = np.zeros(m + 2 * pad, dtype=bool)
        node_ok[pad : pad + m] = self.node_ok
        for lag_value in np.unique(lag):
            sel = np.flatnonzero(lag == lag_value)
            lo = pad + lag_value
            c = table[lo : lo + m]
            t = frac[sel, None]
            value[sel] = ((c[:, 0] * t + c[:, 1]) * t + c[:, 2]) * t + c[:, 3]
            deriv[sel] = (3.0 * c[:, 0] * t + 2.0 * c[:, 1]) * t + c[:, 2]
            if deriv2 is not None:
                deriv2[sel] = 6.0 * c[:, 0] * t + 2.0 * c[:, 1]
            usable[sel] = np.where(t > 0, piece_ok[lo : lo + m], node_ok[lo : lo + m])
        return value, deriv, deriv2, usable

    def mask(self, centres: np.ndarray, margin: int = 1) -> np.ndarray:
        """Rows usable for every shift within ``margin`` pixels of ``centres``.

        Fitting with a mask that changes with the shift would make the
        chi-square jump whenever an end pixel enters or leaves, which can
        trap Gauss-Newton in a two-point cycle; a mask held fixed over a
        window of shifts avoids that.  Shape (n, m).
        """
        m = self.m
        width = 2 * margin + 1
        finite = np.isfinite(centres)
        first = np.floor(np.where(finite, -centres, 0.0) - margin)
        first = np.clip(first, -m - width, m + 1).astype(np.intp)
        first[~finite] = m + 1
        pad = int(np.abs(first).max()) + width + 1
        piece_ok = np.zeros(m + 2 * pad, dtype=bool)
        piece_ok[pad : pad + m] = self.piece_ok
        run_ok = np.lib.stride_tricks.sliding_window_view(piece_ok, width).all(axis=1)
        index = pad + np.arange(m)[None, :] + first[:, None]
        return run_ok[index]


# ---------------------------------------------------------------------------
# shift measurement
# ---------------------------------------------------------------------------


def _baseline_design(m: int, order: int | None) -> np.ndarray:
    if order is None or order < 0:
        return np.zeros((m, 0))
    t = np.linspace(-1.0, 1.0, m) if m > 1 else np.zeros(1)
    return np.polynomial.legendre.legvander(t, order)


def _coarse_shift(
    y: np.ndarray, w: np.ndarray, template: np.ndarray, design: np.ndarray, max_lag: int
) -> np.ndarray:
    """Integer-lag search of the model chi-square, refined by a parabola.

    For each lag L the scale (and baseline) are solved exactly and the
    chi-square of ``a * template[r - L] + baseline`` is compared over the rows
    where every lag is usable, so that all lags see the same pixels.
    """
    n, m = y.shape
    lags = np.arange(-max_lag, max_lag + 1)
    finite_t = np.isfinite(template)
    tz = np.where(finite_t, template, 0.0)
    rows = np.arange(m)
    shifted = np.zeros((lags.size, m))
    common = np.ones(m, dtype=bool)
    for j, lag in enumerate(lags):
        src = rows - lag
        inside = (src >= 0) & (src < m)
        shifted[j, inside] = tz[src[inside]]
        ok = np.zeros(m, dtype=bool)
        ok[inside] = finite_t[src[inside]]
        common &= ok
    start = np.zeros(n)
    nb = design.shape[1]
    if common.sum() < 4 + nb:
        return start
    wc = w * common
    yw = wc * y
    syy = np.einsum("ij,ij->i", yw, y)
    outer_b = (design[:, :, None] * design[:, None, :]).reshape(m, nb * nb)
    chi2 = np.empty((lags.size, n))
    normal = np.empty((n, 1 + nb, 1 + nb))
    rhs = np.empty((n, 1 + nb))
    if nb:
        normal[:, 1:, 1:] = (wc @ outer_b).reshape(-1, nb, nb)
        rhs[:, 1:] = yw @ design
    for j in range(lags.size):
        tl = shifted[j]
        normal[:, 0, 0] = wc @ (tl * tl)
        rhs[:, 0] = yw @ tl
        if nb:
            normal[:, 0, 1:] = normal[:, 1:, 0] = wc @ (tl[:, None] * design)
        sol, _, good = _solve_small(normal, rhs)
        chi2[j] = np.where(good, syy - np.einsum("ij,ij->i", sol, rhs), np.inf)
    best = np.argmin(chi2, axis=0)
    start = lags[best].astype(np.float64)
    interior = (best > 0) & (best < lags.size - 1)
    cols = np.arange(n)[interior]
    b = best[interior]
    cm, c0, cp = chi2[b - 1, cols], chi2[b, cols], chi2[b + 1, cols]
    curv = cm - 2.0 * c0 + cp
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = np.where(np.isfinite(curv) & (curv > 0), 0.5 * (cm - cp) / curv, 0.0)
    start[interior] += np.clip(np.nan_to_num(offset), -0.5, 0.5)
    return start


def _positive_definite(matrices: np.ndarray) -> np.ndarray:
    """Whether each symmetric k x k matrix is positive definite (False for NaN)."""
    diag = np.einsum("nii->ni", matrices)
    ok = np.all(np.isfinite(matrices), axis=(1, 2)) & np.all(diag > 0, axis=1)
    scale = np.sqrt(np.where(ok[:, None], diag, 1.0))
    scaled = matrices / (scale[:, :, None] * scale[:, None, :])
    scaled[~ok] = np.eye(matrices.shape[1])
    return ok & (np.linalg.eigvalsh(scaled)[:, 0] > 1e-12)


def _solve_small(normal: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched solve of k x k systems; singular ones are flagged, not raised.

    Returns ``(solution, inverse, good)``; rows with ``good == False`` hold NaN.
    """
    k = normal.shape[1]
    diag = np.einsum("nii->ni", normal)
    good = np.all(np.isfinite(normal), axis=(1, 2)) & np.all(diag > 0, axis=1)
    scale = np.sqrt(np.where(good[:, None], diag, 1.0))
    scaled = normal / (scale[:, :, None] * scale[:, None, :])
    scaled[~good] = np.eye(k)
    good &= np.linalg.det(scaled) > 1e-12
    scaled[~good] = np.eye(k)
    inv_scaled = np.linalg.inv(scaled)
    inverse = inv_scaled / (scale[:, :, None] * scale[:, None, :])
    solution = np.einsum("nkl,nl->nk", inverse, rhs)
    solution[~good] = np.nan
    inverse[~good] = np.nan
    return solution, inverse, good


def measure_shifts(
    series: np.ndarray,
    template: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    *,
    max_iterations: int = 20,
    tolerance: float = 1e-6,
    search: int = 3,
    baseline: int | None = 0,
    min_points: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Shift of every series against a template, by a least-squares model fit.

    Each row ``y_i`` of ``series`` is fitted with ``a_i * T(r - s_i) + b_i(r)``,
    ``T`` being a not-a-knot cubic spline through the template and ``b_i`` a
    polynomial in r of order ``baseline`` (a constant by default), by weighted
    least squares in all parameters at once.  The fit starts from an
    integer-lag chi-square search and takes Newton steps (Levenberg-Marquardt
    damped whenever a step fails to lower the chi-square), for all series
    together.  Pixels are used where the data and weight are finite and
    ``r - s_i`` lies between two finite template pixels; the spline is never
    extrapolated.

    Parameters
    ----------
    series : (n, m) array (a 1-D array is one series); NaN marks missing pixels.
    template : (m,) array, default the NaN-median of ``series`` over axis 0.
    weights : (n, m) inverse variances, or None for uniform weights.  NaN,
        infinite or non-positive weights exclude the pixel.
    max_iterations : fit iterations at most; a series not converged by then
        gives NaN.
    tolerance : a series has converged once its shift step is below this
        (pixels).
    search : half-width (pixels) of the integer-lag search for the starting
        shifts; 0 starts every series at zero shift.  Larger shifts can still
        converge (steps are limited to half a pixel each) but are not sought.
    baseline : order of the additive polynomial, or None for none.  The
        default constant costs nothing measurable in precision on smooth
        spectra or on the cross-dispersion profile (the template's slope is
        not constant, so the two are barely correlated) and keeps an offset
        that the template does not share, such as a background residual that
        changes with time, out of the shift; without it a large enough
        offset leaves the scaled template a poor model and the fit can
        wander.  Order 1 and up do start to trade precision on smooth
        spectra, whose slope a line partly mimics.
    min_points : series with fewer usable pixels than this (or not more than
        the number of fitted parameters) give NaN.

    Returns
    -------
    shift : (n,) pixels; positive means the series sits towards the higher
        index than the template, ``series(r) ~ template(r - shift)``.
    shift_err : (n,) 1-sigma error of the shift, from the inverse of the
        Gauss-Newton normal matrix at the solution.  With ``weights=None`` it
        is scaled by the reduced chi-square, i.e. the noise is taken as the
        same in every pixel; with photon noise that is not so and the errors
        are then only indicative (pass inverse variances for calibrated
        errors, and for the best precision).  With weights it is scaled up
        by the reduced chi-square where that exceeds 1 (the template does not
        describe the series to within its noise, as when the interpolation of
        an undersampled profile errs at large shifts), as ``fit_depth`` does.

    Series that cannot be measured (all NaN, too few pixels, flat template,
    no convergence) give NaN in both outputs; nothing is raised for them.
    """
    y_all = np.asarray(series, dtype=np.float64)
    if y_all.ndim == 1:
        y_all = y_all[None, :]
    if y_all.ndim != 2:
        raise InputError(
            f"series must be 2-D (n, m), got shape {np.shape(series)}; pass one series per row."
        )
    n, m = y_all.shape
    shift = np.full(n, np.nan)
    shift_err = np.full(n, np.nan)
    if n == 0 or m == 0:
        return shift, shift_err

    if template is None:
        finite_any = np.isfinite(y_all).any(axis=0)
        tmpl = np.full(m, np.nan)
        if finite_any.any():
            tmpl[finite_any] = np.nanmedian(y_all[:, finite_any], axis=0)
    else:
        tmpl = np.asarray(template, dtype=np.float64).reshape(-1)
        if tmpl.size != m:
            raise InputError(
                f"template has {tmpl.size} points, series rows have {m}; they must match."
            )

    if weights is None:
        w_all = np.ones((n, m))
        scale_errors = True
    else:
        w_all = np.asarray(weights, dtype=np.float64)
        if w_all.shape != (n, m):
            raise InputError(
                f"weights shape {w_all.shape} differs from series shape {(n, m)}; pass one "
                "weight per pixel (or None)."
            )
        scale_errors = False
    data_ok = np.isfinite(y_all) & np.isfinite(w_all) & (w_all > 0)
    w_all = np.where(data_ok, w_all, 0.0)
    y_all = np.where(data_ok, y_all, 0.0)

    spline = _Template(tmpl)
    if not spline.ok:
        return shift, shift_err

    design = _baseline_design(m, baseline)
    nb = design.shape[1]
    k = 2 + nb
    outer_b = (design[:, :, None] * design[:, None, :]).reshape(m, nb * nb)

    need = max(min_points, k + 1)
    s = _coarse_shift(y_all, w_all, tmpl, design, search) if search > 0 else np.zeros(n)

    # Rows usable for every shift within a pixel of ``centre``; the fit keeps
    # this mask until the shift moves more than half a pixel from its centre.
    centre = s.copy()
    window = spline.mask(centre)

    # Start: the linear parameters (scale, baseline) solved exactly at the
    # starting shift.
    value, _, _, usable = spline(s)
    w = w_all * (usable & window)
    wv = w * value
    normal = np.empty((n, 1 + nb, 1 + nb))
    normal[:, 0, 0] = np.einsum("ij,ij->i", wv, value)
    rhs = np.empty((n, 1 + nb))
    rhs[:, 0] = np.einsum("ij,ij->i", wv, y_all)
    if nb:
        normal[:, 0, 1:] = normal[:, 1:, 0] = wv @ design
        normal[:, 1:, 1:] = (w @ outer_b).reshape(-1, nb, nb)
        rhs[:, 1:] = (w * y_all) @ design
    sol, _, good = _solve_small(normal, rhs)
    a = sol[:, 0]
    c = sol[:, 1:]

    def evaluate(ids: np.ndarray, si: np.ndarray, ai: np.ndarray, ci: np.ndarray):
        """Chi-square, Gauss-Newton matrix, Newton Hessian, gradient, points."""
        value, deriv, deriv2, usable = spline(si, second=True)
        w = w_all[ids] * (usable & window[ids])
        resid = y_all[ids] - ai[:, None] * value - ci @ design.T
        j_a = value
        j_s = -ai[:, None] * deriv
        wa, ws, wr = w * j_a, w * j_s, w * resid
        normal = np.empty((ids.size, k, k))
        normal[:, 0, 0] = np.einsum("ij,ij->i", wa, j_a)
        normal[:, 0, 1] = normal[:, 1, 0] = np.einsum("ij,ij->i", wa, j_s)
        normal[:, 1, 1] = np.einsum("ij,ij->i", ws, j_s)
        rhs = np.empty((ids.size, k))
        rhs[:, 0] = np.einsum("ij,ij->i", wa, resid)
        rhs[:, 1] = np.einsum("ij,ij->i", ws, resid)
        if nb:
            normal[:, 0, 2:] = normal[:, 2:, 0] = wa @ design
            normal[:, 1, 2:] = normal[:, 2:, 1] = ws @ design
            normal[:, 2:, 2:] = (w @ outer_b).reshape(-1, nb, nb)
            rhs[:, 2:] = wr @ design
        chi2 = np.einsum("ij,ij->i", wr, resid)
        npts = np.count_nonzero(w, axis=1)
        # Newton's Hessian adds the residual-weighted second derivatives of
        # the model (d2M/ds2 = a T'', d2M/da ds = -T'); Gauss-Newton drops
        # them and overshoots when the residuals are large.  It is used where
        # positive definite, else the Gauss-Newton matrix.
        hess = normal.copy()
        hess[:, 1, 1] -= ai * np.einsum("ij,ij->i", wr, deriv2)
        hess[:, 0, 1] += np.einsum("ij,ij->i", wr, deriv)
        hess[:, 1, 0] = hess[:, 0, 1]
        hess = np.where(_positive_definite(hess)[:, None, None], hess, normal)
        return chi2, normal, hess, rhs, npts

    # Newton steps from the best point so far, Levenberg-Marquardt damped
    # (lam > 0) after a step that raised the chi-square.
    best_s, best_a, best_c = s.copy(), a.copy(), c.copy()
    best_chi2 = np.full(n, np.inf)
    best_normal = np.zeros((n, k, k))
    best_hess = np.zeros((n, k, k))
    best_rhs = np.zeros((n, k))
    best_npts = np.zeros(n, dtype=np.intp)
    lam = np.zeros(n)
    converged = np.zeros(n, dtype=bool)
    active = np.flatnonzero(good & (np.count_nonzero(w, axis=1) >= need))

    def keep(ids: np.ndarray, sel: np.ndarray, si, ai, ci, result) -> None:
        chi2, normal, hess, rhs, npts = result
        take = ids[sel]
        best_s[take], best_a[take], best_c[take] = si[sel], ai[sel], ci[sel]
        best_chi2[take] = chi2[sel]
        best_normal[take] = normal[sel]
        best_hess[take] = hess[sel]
        best_rhs[take] = rhs[sel]
        best_npts[take] = npts[sel]

    for _ in range(max_iterations):
        if active.size == 0:
            break
        sa, aa, ca = s[active], a[active], c[active]
        moved = np.abs(sa - centre[active]) > 0.5
        if moved.any():
            # New mask around the trial shift (the best point, at most half a
            # pixel away, stays inside it); re-evaluate the best point under
            # it so that the chi-squares compared see the same pixels.
            ids = active[moved]
            centre[ids] = sa[moved]
            window[ids] = spline.mask(sa[moved])
            every = np.ones(ids.size, dtype=bool)
            keep(
                ids,
                every,
                best_s[ids],
                best_a[ids],
                best_c[ids],
                evaluate(ids, best_s[ids], best_a[ids], best_c[ids]),
            )
        result = evaluate(active, sa, aa, ca)
        better = result[0] <= best_chi2[active]
        keep(active, better, sa, aa, ca, result)
        lam[active] = np.where(better, 0.1 * lam[active], np.maximum(10.0 * lam[active], 1e-3))

        base = best_hess[active]
        damped = base + lam[active, None, None] * np.einsum("nij,ij->nij", base, np.eye(k))
        step, _, good = _solve_small(damped, best_rhs[active])
        good &= best_npts[active] >= need
        done = good & (np.abs(step[:, 1]) < tolerance)
        converged[active[done]] = True
        proceed = good & ~done
        ids = active[proceed]
        s[ids] = best_s[ids] + np.clip(step[proceed, 1], -0.5, 0.5)
        a[ids] = best_a[ids] + step[proceed, 0]
        if nb:
            c[ids] = best_c[ids] + step[proceed, 2:]
        active = ids

    ok = converged & np.isfinite(best_s)
    if ok.any():
        _, inverse, solved = _solve_small(best_normal[ok], best_rhs[ok])
        var = inverse[:, 1, 1]
        dof = best_npts[ok] - k
        with np.errstate(invalid="ignore", divide="ignore"):
            reduced_chi2 = np.where(dof > 0, best_chi2[ok] / dof, np.nan)
        # uniform weights: the noise is estimated from the residuals; given weights: the
        # errors are taken as they are, scaled up where the template does not describe
        # the series to within its noise (interpolation error of large shifts)
        var = var * (reduced_chi2 if scale_errors else np.fmax(reduced_chi2, 1.0))
        var = np.where(solved & (var >= 0), var, np.nan)
        idx = np.flatnonzero(ok)
        fine = np.isfinite(var)
        shift[idx[fine]] = best_s[idx[fine]]
        shift_err[idx[fine]] = np.sqrt(var[fine])
    return shift, shift_err


# ---------------------------------------------------------------------------
# cross-dispersion profiles
# ---------------------------------------------------------------------------


def cross_dispersion_profiles(
    data: np.ndarray,
    rows: tuple[int, int] = (200, 390),
    columns: tuple[int, int] = (12, 68),
) -> np.ndarray:
    """Cross-dispersion profile of each integration: the frame summed over rows.

    Parameters
    ----------
    data : (n, nrows, ncols) cube.
    rows, columns : half-open ranges ``[start, stop)`` of the region summed.

    Returns
    -------
    (n, columns[1] - columns[0]) array.

    NaN pixels are filled before summing, so that a missing pixel does not
    make one integration's profile dip at that column: the fill is the
    time-median frame at that pixel times the integration's brightness
    relative to the median frame (the least-squares scale
    ``sum(d * med) / sum(med^2)`` over the pixels both have).  Without NaN the
    result is the plain sum.  A pixel NaN in every integration has no median
    and is left out of every integration's sum, which keeps the profiles
    comparable in time.  An integration with no finite pixel in the region
    (or a median frame of zeros) gives a NaN profile.

    The fill assumes the frame differs from the median frame by a scale
    only; the sub-pixel drift being measured changes a filled pixel by a
    fraction of its neighbours' difference, far less than dropping it
    would (``nanmean * nrows`` per column would replace the pixel by the
    column's mean, wrong by the spectral slope along the column).
    """
    cube = np.asarray(data)
    if cube.ndim != 3:
        raise InputError(
            f"data must be 3-D (nints, nrows, ncols), got shape {cube.shape}; pass a frame "
            "as data[None]."
        )
    sub = np.asarray(cube[:, rows[0] : rows[1], columns[0] : columns[1]], dtype=np.float64)
    n = sub.shape[0]
    finite = np.isfinite(sub)
    if finite.all():
        return sub.sum(axis=1)
    med = np.full(sub.shape[1:], np.nan)
    any_finite = finite.any(axis=0)
    if any_finite.any():
        med[any_finite] = np.nanmedian(sub[:, any_finite], axis=0)
    med_ok = np.isfinite(med)
    med0 = np.where(med_ok, med, 0.0)
    both = finite & med_ok
    d0 = np.where(both, sub, 0.0)
    num = np.einsum("nij,ij->n", d0, med0)
    den = np.einsum("nij,ij->n", both.astype(np.float64), med0 * med0)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(den > 0, num / den, np.nan)
    # Pixels missing from the median frame (NaN in every integration) count
    # for nobody.
    filled = np.where(finite & med_ok, sub, np.where(med_ok, scale[:, None, None] * med0, 0.0))
    profiles = filled.sum(axis=1)
    profiles[~finite.reshape(n, -1).any(axis=1)] = np.nan
    return profiles


# ---------------------------------------------------------------------------
# re-sampling
# ---------------------------------------------------------------------------


def cross_dispersion_shifts(
    data: np.ndarray,
    err: np.ndarray,
    rows: tuple[int, int] = (200, 390),
    columns: tuple[int, int] = (12, 68),
) -> tuple[np.ndarray, np.ndarray]:
    """x (cross-dispersion) shift of each integration and its 1-sigma error (pixels).

    The profiles of :func:`cross_dispersion_profiles` are matched to their
    time-median by :func:`measure_shifts`, each column weighted by the
    inverse of its summed variance (photon noise follows the PSF, so the
    wings must not weigh as much as the core).
    """
    profiles = cross_dispersion_profiles(data, rows=rows, columns=columns)
    variance = cross_dispersion_variance(err, rows=rows, columns=columns)
    with np.errstate(divide="ignore"):
        weights = np.where(variance > 0, 1.0 / variance, 0.0)
    return measure_shifts(profiles, weights=weights)


def cross_dispersion_variance(
    err: np.ndarray, rows: tuple[int, int] = (200, 390), columns: tuple[int, int] = (12, 68)
) -> np.ndarray:
    """Variance (n, ncols) of the profiles of :func:`cross_dispersion_profiles`, from ``err``."""
    r0, r1 = rows
    c0, c1 = columns
    with np.errstate(invalid="ignore"):
        return np.nansum(np.square(np.asarray(err)[:, r0:r1, c0:c1], dtype=np.float64), axis=1)


def resample(
    flux: np.ndarray, flux_err: np.ndarray | None, shifts: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Move every series by its shift: ``aligned_i(r) = flux_i(r + s_i)``.

    Linear interpolation between the two neighbouring pixels ``k = floor(r +
    s)`` and ``k + 1`` with weights ``1 - w`` and ``w``; the errors of
    independent pixels propagate as ``sqrt((1-w)^2 e_k^2 + w^2 e_{k+1}^2)``.
    Note that neighbouring aligned pixels then share input pixels, so their
    errors are correlated; the per-pixel values are correct.

    Positions outside ``[0, m - 1]`` would need extrapolation and give NaN (so
    a shift of s loses about ``ceil(|s|)`` rows at one end).  A NaN neighbour
    with non-zero weight gives NaN; a neighbour with weight exactly zero is not
    used, so a zero (or integer) shift returns the input values exactly.  A
    NaN shift gives a NaN row.

    Parameters
    ----------
    flux, flux_err : (n, m); ``flux_err`` may be None.
    shifts : (n,) pixels, as returned by :func:`measure_shifts`.

    Returns
    -------
    ``(flux_aligned, err_aligned)``, new float arrays (``err_aligned`` is None
    when ``flux_err`` is None).
    """
    f = np.asarray(flux)
    if f.ndim != 2:
        raise InputError(f"flux must be 2-D (n, m), got shape {f.shape}; pass one spectrum per row.")
    n, m = f.shape
    s = np.asarray(shifts, dtype=np.float64).reshape(-1)
    if s.size != n:
        raise InputError(f"{s.size} shifts for {n} series; pass one shift per series.")
    dtype = np.result_type(f.dtype, np.float64)
    pos = np.arange(m, dtype=np.float64)[None, :] + s[:, None]
    inside = (pos >= 0) & (pos <= m - 1)  # False for NaN shifts too
    k = np.floor(np.where(inside, pos, 0.0)).astype(np.intp)
    np.clip(k, 0, max(m - 2, 0), out=k)
    w = np.where(inside, pos - k, 0.0)
    k1 = np.minimum(k + 1, m - 1)

    def interp(values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=dtype)
        lo = np.take_along_axis(v, k, axis=1)
        hi = np.take_along_axis(v, k1, axis=1)
        lo_term = np.where(w < 1.0, (1.0 - w) * lo, 0.0)
        hi_term = np.where(w > 0.0, w * hi, 0.0)
        return lo_term + hi_term

    def propagate(errors: np.ndarray) -> np.ndarray:
        e = np.asarray(errors, dtype=dtype)
        lo = np.take_along_axis(e, k, axis=1)
        hi = np.take_along_axis(e, k1, axis=1)
        lo_term = np.where(w < 1.0, ((1.0 - w) * lo) ** 2, 0.0)
        hi_term = np.where(w > 0.0, (w * hi) ** 2, 0.0)
        return np.sqrt(lo_term + hi_term)

    out = interp(f)
    out[~inside] = np.nan
    err_out = None
    if flux_err is not None:
        e = np.asarray(flux_err)
        if e.shape != f.shape:
            raise InputError(f"flux_err shape {e.shape} differs from flux shape {f.shape}; they must match.")
        err_out = propagate(e)
        err_out[~inside] = np.nan
    return out, err_out
