"""Spectral extraction kernels: PSF fits, box apertures and optimal extraction.

Cubes are (nints, nrows, ncols): rows run along the dispersion direction,
columns across it.  Every kernel takes plain arrays, never writes to them and
works on all integrations at once; Python loops run only over iterations of a
fit, never over integrations or rows.

Pixel ``j`` covers the column interval ``[j - 0.5, j + 0.5]``; an aperture of
centre ``c`` and widths ``left``/``right`` covers ``[c - left - 0.5,
c + right + 0.5]``, i.e. ``left + right + 1`` pixels.  With an integer centre
these are exactly the integer pixels ``[rint(c - left), rint(c + right + 1))``.

Contents: :func:`fit_psf` (trace position and width), :func:`aperture_centers`,
:func:`box_weights`/:func:`aperture_mask`, :func:`box`, :func:`build_profile`
(a static profile from the data), :func:`profile_shifts`/:func:`shift_profile`/
:func:`follow_jitter` (that profile moved with the pointing jitter), and
:func:`optimal`.
"""

from __future__ import annotations

import numpy as np

from ..exceptions import InputError
from ._pool import spans, thread_map

__all__ = [
    "aperture_centers",
    "aperture_mask",
    "box",
    "box_weights",
    "build_profile",
    "fit_psf",
    "follow_jitter",
    "nanmedian",
    "optimal",
    "profile_shifts",
    "shift_profile",
]

TRACE_MODES = ("constant", "gaussian_fits", "trace")
VARIANCE_MODES = ("model", "err")
#: (integration, row) spectra per block of :func:`optimal` (blocks run on threads).
_OPTIMAL_BLOCK_ROWS = 8192
#: Integrations per block of :func:`follow_jitter` (blocks run on threads).
_JITTER_BLOCK = 32
#: Integrations per block of :func:`fit_psf` (blocks run on threads).
_PSF_BLOCK = 64
#: :func:`nanmedian` of at least this many values runs in ``_MEDIAN_BLOCKS`` blocks on threads.
_MEDIAN_PARALLEL_SIZE = 2**20
_MEDIAN_BLOCKS = 8


# ---------------------------------------------------------------------------
# helpers


def nanmedian(a: np.ndarray, axis: int) -> np.ndarray:
    """Median along ``axis`` ignoring NaN (NaN where a slice has no finite value).

    The axis is moved last and sorted (numpy's vectorised sort beats
    ``partition`` here, and NaN sorts last); the median of the ``n`` non-NaN
    values of a slice is then read off at ``(n - 1) // 2`` and ``n // 2``.
    Several times faster than :func:`numpy.nanmedian`, and silent on all-NaN
    slices.  Float32 input is sorted in float32; the result is float64.
    """
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    moved = np.moveaxis(a, axis, -1)
    if moved.ndim > 1 and moved.size >= _MEDIAN_PARALLEL_SIZE and moved.shape[0] > 1:
        # slices are independent: blocks of the leading axis on threads
        out = np.empty(moved.shape[:-1])
        step = -(-moved.shape[0] // _MEDIAN_BLOCKS)

        def work(block: tuple[int, int]) -> None:
            out[slice(*block)] = _nanmedian_last(moved[slice(*block)])

        thread_map(work, spans(moved.shape[0], step))
        return out
    return _nanmedian_last(moved)


def _nanmedian_last(a: np.ndarray) -> np.ndarray:
    """:func:`nanmedian` along the last axis of a float array."""
    s = np.sort(a, axis=-1)
    m = s.shape[-1]
    if m == 0:
        return np.full(s.shape[:-1], np.nan)
    n = m - np.isnan(s).sum(axis=-1, keepdims=True)
    lo = np.maximum((n - 1) // 2, 0)
    hi = np.maximum(n // 2, 0)
    med = np.take_along_axis(s, lo, axis=-1).astype(np.float64)
    med += np.take_along_axis(s, hi, axis=-1)
    med *= 0.5
    med[n == 0] = np.nan
    return med[..., 0]


def _span(lo: int, hi: int, size: int) -> tuple[int, int]:
    lo = int(np.clip(lo, 0, size))
    hi = int(np.clip(hi, lo, size))
    return lo, hi


def _running_nanmedian(a: np.ndarray, width: int) -> np.ndarray:
    """Running median over ``width`` rows along axis 0 of (nrows, k), ignoring NaN.

    The window stays centred: within ``width // 2`` rows of an end it shrinks
    symmetrically (row 0 is its own median), so a linear trend along the rows
    passes unbiased everywhere.  Where a centred window holds no finite value
    the full window, truncated at the ends, is used instead.
    """
    nrows = a.shape[0]
    width = max(int(width), 1)
    half = min(width // 2, (nrows - 1) // 2)
    if half == 0:
        return a.copy()
    windows = np.lib.stride_tricks.sliding_window_view(a, 2 * half + 1, axis=0)
    out = np.empty_like(a)
    out[half : nrows - half] = nanmedian(windows, axis=2)
    for r in range(half):  # the shrinking windows at the two ends
        out[r] = nanmedian(a[: 2 * r + 1], axis=0)
        out[nrows - 1 - r] = nanmedian(a[nrows - 1 - 2 * r :], axis=0)
    missing = np.isnan(out)
    if missing.any():
        padded = np.pad(a, ((half, half), (0, 0)), constant_values=np.nan)
        full = nanmedian(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1, axis=0), 2)
        out[missing] = full[missing]
    return out


def _column_span(select: np.ndarray) -> tuple[int, int] | None:
    """First and one-past-last column where ``select`` (..., ncols) is True anywhere."""
    cols = np.flatnonzero(select.reshape(-1, select.shape[-1]).any(axis=0))
    if cols.size == 0:
        return None
    return int(cols[0]), int(cols[-1]) + 1


# ---------------------------------------------------------------------------
# PSF position and width


def fit_psf(
    data: np.ndarray,
    rows: tuple[int, int] = (200, 390),
    columns: tuple[int, int] = (12, 68),
    sigma_guess: float = 1.59,
    *,
    mask: np.ndarray | None = None,
    max_iterations: int = 40,
    xtol: float = 1e-7,
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and Gaussian width of the PSF in every integration.

    For each integration the median over ``rows`` (half-open, NaN and masked
    pixels ignored) of the columns ``columns`` is fitted with
    ``a + A exp(-(x - mu)^2 / (2 sigma^2))`` sampled at the pixel centres, by
    Levenberg-Marquardt run on all integrations at once (unweighted, as the
    reference fit).  Start: ``mu`` at the brightest column, ``sigma =
    sigma_guess``, ``a`` the median of the profile, ``A`` its peak above ``a``.

    Returns ``(position, sigma)``, each (nints,): ``position`` in column
    coordinates of the whole frame, ``sigma`` >= 0 in pixels.  Both are NaN
    where the profile has fewer than 5 finite points, the fit did not converge
    within ``max_iterations`` steps, the amplitude is not positive, or the
    centre falls outside the fitted columns.  The ranges are clipped to the
    frame.
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise InputError(f"fit_psf needs a (nints, nrows, ncols) cube; got shape {data.shape}.")
    nints, nrows, ncols = data.shape
    r0, r1 = _span(rows[0], rows[1], nrows)
    c0, c1 = _span(columns[0], columns[1], ncols)
    position = np.full(nints, np.nan)
    sigma = np.full(nints, np.nan)
    if r1 <= r0 or c1 - c0 < 5 or nints == 0:
        return position, sigma
    mask = None if mask is None else np.asarray(mask, dtype=bool)

    def work(block: tuple[int, int]) -> None:
        part = slice(*block)
        position[part], sigma[part] = _fit_psf_block(
            data[part], None if mask is None else mask[part], r0, r1, c0, c1,
            sigma_guess, max_iterations, xtol,
        )

    # every integration is fitted on its own: blocks of integrations on threads
    thread_map(work, spans(nints, _PSF_BLOCK))
    return position, sigma


def _fit_psf_block(data, mask, r0, r1, c0, c1, sigma_guess, max_iterations, xtol):
    """:func:`fit_psf` of the integrations of ``data`` (a block of the cube)."""
    nints = data.shape[0]
    position = np.full(nints, np.nan)
    sigma = np.full(nints, np.nan)
    # a copy (the input stays untouched), columns first so the median runs along the last axis
    ftype = np.result_type(data.dtype, np.float32)
    cut = np.array(data[:, r0:r1, c0:c1].transpose(0, 2, 1), dtype=ftype, order="C")
    bad = ~np.isfinite(cut)
    if mask is not None:
        bad |= mask[:, r0:r1, c0:c1].transpose(0, 2, 1)
    cut[bad] = np.nan
    y = nanmedian(cut, axis=2)  # (nints, k)
    x = np.arange(c0, c1, dtype=np.float64)
    w = np.isfinite(y)
    y = np.where(w, y, 0.0)
    usable = w.sum(axis=1) >= 5

    peak = np.where(w, y, -np.inf).argmax(axis=1)
    ymed = nanmedian(np.where(w, y, np.nan), axis=1)
    ymax = y[np.arange(nints), peak]
    p = np.stack([ymed, ymax - ymed, x[peak], np.full(nints, float(sigma_guess))], axis=1)
    p[~usable] = [0.0, 1.0, x[0], 1.0]
    wf = w.astype(np.float64)

    def residual_and_jacobian(p: np.ndarray, idx: np.ndarray | slice):
        a, amp, mu, s = (p[:, k : k + 1] for k in range(4))
        dx = x - mu
        s2 = s * s
        g = np.exp(-0.5 * dx * dx / s2)
        r = (y[idx] - a - amp * g) * wf[idx]
        ag = amp * g
        jm = (
            np.stack([np.ones_like(g), g, ag * dx / s2, ag * dx * dx / (s2 * s)], axis=2)
            * wf[idx][:, :, None]
        )
        return r, jm

    with np.errstate(all="ignore"):
        r, jm = residual_and_jacobian(p, slice(None))
        chi2 = np.einsum("nk,nk->n", r, r)
        lam = np.full(nints, 1e-3)
        converged = ~usable
        eye = np.eye(4)
        for _ in range(max_iterations):
            act = ~converged
            if not act.any():
                break
            ia = np.flatnonzero(act)
            ja = jm[ia]
            jtj = np.einsum("nki,nkj->nij", ja, ja)
            g = np.einsum("nki,nk->ni", ja, r[ia])
            diag = np.einsum("nii->ni", jtj)
            floor = 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300
            aug = jtj + (lam[ia, None] * (diag + floor))[:, :, None] * eye
            aug[~np.isfinite(aug)] = 0.0
            g[~np.isfinite(g)] = 0.0
            delta = np.linalg.solve(aug, g[:, :, None])[:, :, 0]
            pn = p[ia] + delta
            rn, jn = residual_and_jacobian(pn, ia)
            chin = np.einsum("nk,nk->n", rn, rn)
            better = np.isfinite(chin) & (chin <= chi2[ia])
            ib = ia[better]
            p[ib] = pn[better]
            r[ib] = rn[better]
            jm[ib] = jn[better]
            chi2[ib] = chin[better]
            lam[ia] = np.where(better, lam[ia] * 0.3, lam[ia] * 10.0)
            small = np.abs(delta[:, 2:]).max(axis=1) < xtol
            # an accepted tiny step, or no downhill step left at all (a minimum)
            converged[ia] = (better & small) | (lam[ia] > 1e12)

    _a, amp, mu, s = p.T
    s = np.abs(s)
    good = (
        converged
        & usable
        & np.isfinite(p).all(axis=1)
        & (amp > 0)
        & (mu >= x[0])
        & (mu <= x[-1])
        & (s > 0)
        & (s < (c1 - c0))
    )
    position[good] = mu[good]
    sigma[good] = s[good]
    return position, sigma


# ---------------------------------------------------------------------------
# apertures


def aperture_centers(
    mode: str,
    aperture_center: float,
    trace: np.ndarray,
    position: np.ndarray,
    *,
    fit_rows: tuple[int, int] = (200, 390),
) -> np.ndarray:
    """Aperture centre (column) in every integration and row, (nints, nrows).

    ``mode``:

    * ``"constant"``: ``aperture_center`` everywhere;
    * ``"gaussian_fits"``: ``position[i]`` on every row of integration ``i``;
    * ``"trace"``: ``position[i] + tilt[r]`` with ``tilt = trace -
      mean(trace over fit_rows)``, the calibrated tilt measured from the rows
      whose median the PSF fit saw, so that the centre follows the trace.

    Where ``position`` is NaN (a failed fit) the centre falls back to
    ``aperture_center`` (plus the tilt in ``"trace"`` mode).  ``trace``
    (nrows,) may hold NaN outside the calibrated rows: the tilt is 0 there.
    ``position`` is (nints,) and sets the number of integrations.
    """
    if mode not in TRACE_MODES:
        raise InputError(
            f"trace_position must be one of {', '.join(map(repr, TRACE_MODES))}; got {mode!r}."
        )
    position = np.atleast_1d(np.asarray(position, dtype=np.float64))
    trace = np.atleast_1d(np.asarray(trace, dtype=np.float64))
    nints, nrows = position.shape[0], trace.shape[0]
    c = float(aperture_center)
    if mode == "constant":
        return np.full((nints, nrows), c)
    base = np.where(np.isfinite(position), position, c)
    if mode == "gaussian_fits":
        return np.repeat(base[:, None], nrows, axis=1)
    r0, r1 = _span(fit_rows[0], fit_rows[1], nrows)
    ref = trace[r0:r1]
    ref = ref[np.isfinite(ref)]
    tilt = np.zeros(nrows) if ref.size == 0 else trace - ref.mean()
    tilt = np.where(np.isfinite(tilt), tilt, 0.0)
    return base[:, None] + tilt[None, :]


def _index_type(ncols: int) -> type:
    return np.int16 if ncols < 2**15 - 1 else np.int64


def box_weights(centers: np.ndarray, left: float, right: float, ncols: int) -> np.ndarray:
    """Fractional aperture weights (n, nrows, ncols) float32 for centres (n, nrows).

    The weight of pixel ``j`` is the overlap of ``[j - 0.5, j + 0.5]`` with
    ``[centre - left - 0.5, centre + right + 0.5]``: 1 inside, a fraction at
    the two edges, 0 outside and beyond the frame (the aperture is clipped).
    Inside the frame the weights of a row sum to ``left + right + 1``.  NaN
    centres give zero weights.
    """
    centers = np.asarray(centers, dtype=np.float64)
    ncols = int(ncols)
    finite = np.isfinite(centers)
    c = np.where(finite, centers, -1e6)
    lo = c - (float(left) + 0.5)  # aperture edges
    hi = c + (float(right) + 0.5)
    # the pixels holding the edges (pixel j covers [j - 0.5, j + 0.5))
    j_lo = np.floor(lo + 0.5).astype(np.int64)
    j_hi = np.floor(hi + 0.5).astype(np.int64)
    # full pixels strictly between the two (small integers keep the big comparison cheap)
    itype = _index_type(ncols)
    j = np.arange(ncols, dtype=itype)
    a = np.clip(j_lo, -1, ncols).astype(itype)[..., None]
    b = np.clip(j_hi, -1, ncols).astype(itype)[..., None]
    w = ((j > a) & (j < b)).astype(np.float32)
    same = j_lo == j_hi
    w_lo = np.where(same, hi - lo, j_lo + 0.5 - lo)
    w_hi = np.where(same, 0.0, hi - (j_hi - 0.5))
    for jj, ww in ((j_lo, w_lo), (j_hi, w_hi)):
        inside = (jj >= 0) & (jj < ncols) & finite
        idx = np.nonzero(inside)
        w[(*idx, jj[idx])] += ww[idx].astype(np.float32)
    return w


def aperture_mask(centers: np.ndarray, left: float, right: float, ncols: int) -> np.ndarray:
    """Integer aperture (n, nrows, ncols) bool: columns ``[rint(c - left), rint(c + right + 1))``.

    The reference's pixel set, clipped to the frame; NaN centres select nothing.
    """
    centers = np.asarray(centers, dtype=np.float64)
    ncols = int(ncols)
    finite = np.isfinite(centers)
    c = np.where(finite, centers, -1e6)
    # edges clipped to [-1, ncols] so that small integers keep the big comparison cheap
    itype = _index_type(ncols)
    lo = np.clip(np.rint(c - float(left)), -1, ncols).astype(itype)[..., None]
    hi = np.clip(np.rint(c + float(right) + 1.0), -1, ncols).astype(itype)[..., None]
    j = np.arange(ncols, dtype=itype)
    return (j >= lo) & (j < hi)


# ---------------------------------------------------------------------------
# spatial profile


def build_profile(
    data: np.ndarray,
    mask: np.ndarray | None = None,
    columns: tuple[int, int] = (26, 47),
    *,
    smooth_rows: int = 11,
) -> np.ndarray:
    """A spatial profile (nints, nrows, ncols) normalised per row over ``columns``.

    For when no profile came from ``clean``.  Steps:

    1. the time-median frame: median over integrations of the unmasked,
       finite data (columns ``columns`` only);
    2. negative values set to 0 and each row divided by its sum; a row with
       masked pixels is divided by its estimated full sum instead (its
       present flux over the share of the present pixels in a guide profile
       built from the complete rows nearby), so a masked pixel does not
       inflate the rest of its row;
    3. each column of that normalised image smoothed along the rows with a
       running median of ``smooth_rows`` rows (NaN-aware, centred, shrinking
       symmetrically at the ends, where it falls back to the truncated full
       window for pixels the short window has no value for).  The profile's shape changes slowly along the dispersion
       direction -- the trace drifts by ~1.3 px over 400 rows, i.e. ~0.03 px
       over 11 rows, and the PSF width grows smoothly with wavelength -- so
       the window follows it without measurable bias (a running median is
       exact for a linear trend) while cutting the noise of a single or
       few-frame median several-fold and ignoring a residual outlier;
    4. re-normalised per row; rows with no positive signal get a flat profile
       over ``columns`` (no information, so no preference).

    Outside ``columns`` the profile is 0.  The result is one frame broadcast
    (a read-only view, not a copy) to all integrations.
    """
    data = np.asarray(data)
    nints, nrows, ncols = data.shape
    c0, c1 = _span(columns[0], columns[1], ncols)
    prof = np.zeros((nrows, ncols))
    if c1 > c0:
        ftype = np.result_type(data.dtype, np.float32)
        cut = np.array(np.moveaxis(data[:, :, c0:c1], 0, -1), dtype=ftype, order="C")
        bad = ~np.isfinite(cut)
        if mask is not None:
            bad |= np.moveaxis(np.asarray(mask, dtype=bool)[:, :, c0:c1], 0, -1)
        cut[bad] = np.nan
        frame = nanmedian(cut, axis=-1)  # (nrows, k)
        frame = np.where(np.isfinite(frame), np.maximum(frame, 0.0), np.nan)
        present = np.isfinite(frame)
        complete = present.all(axis=1, keepdims=True)
        total = np.nansum(frame, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            # rows missing pixels cannot be normalised by their own sum: first a
            # guide profile from the complete rows, then such a row's total is
            # its present flux over the guide's share of the present pixels
            guide = _running_nanmedian(
                np.where(complete & (total > 0), frame / total, np.nan), smooth_rows
            )
            share = np.where(present, guide, 0.0).sum(axis=1, keepdims=True)
            usable = ~complete & np.isfinite(share) & (share > 0)
            total = np.where(usable, total / np.where(usable, share, 1.0), total)
            norm = np.where(total > 0, frame / total, np.nan)
        norm = _running_nanmedian(norm, smooth_rows)
        norm = np.where(np.isfinite(norm), norm, 0.0)
        total = norm.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = np.where(total > 0, norm / total, 1.0 / (c1 - c0))
        prof[:, c0:c1] = norm
    prof.flags.writeable = False
    return np.broadcast_to(prof, (nints, nrows, ncols))


def _keys(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5): interpolating, exact for quadratics."""
    x = np.abs(x)
    return np.where(
        x <= 1,
        (1.5 * x - 2.5) * x * x + 1,
        np.where(x < 2, ((-0.5 * x + 2.5) * x - 4) * x + 2, 0.0),
    )


def shift_profile(profile: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """One profile frame (nrows, ncols) moved across the columns by ``shifts`` (nints,) pixels.

    ``out[i, r, j] = profile(r, j - shifts[i])`` by cubic convolution (Keys)
    along the columns, zero beyond the frame; negative lobes are set to 0 and
    each row keeps the sum it had (so a profile normalised per row stays
    normalised).  Positive shifts move it towards higher columns; NaN shifts
    count as 0.  Returns a new (nints, nrows, ncols) float32 cube.

    Pointing jitter moves the trace by a few hundredths of a pixel between
    integrations; a static profile that ignores it costs optimal extraction
    several times the photon noise where the PSF is narrow and bright.
    """
    frame = np.nan_to_num(np.asarray(profile, dtype=np.float64))
    nrows, ncols = frame.shape
    s = np.nan_to_num(np.atleast_1d(np.asarray(shifts, dtype=np.float64)))
    # out[j] = sum_k K(u - k) frame[j + g + k], with j - s = j + g + u, 0 <= u < 1
    g = np.floor(-s).astype(np.int64)
    u = -s - g
    out = np.zeros((s.size, nrows, ncols), dtype=np.float32)

    def moved(offset: int) -> np.ndarray:  # frame[:, j + offset], zero outside
        m = np.zeros_like(frame)
        if offset >= 0:
            m[:, : max(ncols - offset, 0)] = frame[:, offset:]
        else:
            m[:, -offset:] = frame[:, : ncols + offset]
        return m.astype(np.float32)

    for gv in np.unique(g):
        sel = np.flatnonzero(g == gv)
        part = out if sel.size == s.size else np.zeros((sel.size, nrows, ncols), np.float32)
        for k in (-1, 0, 1, 2):
            weight = _keys(u[sel] - k).astype(np.float32)
            if np.any(weight):
                part += weight[:, None, None] * moved(int(gv) + k)[None]
        if part is not out:
            out[sel] = part
    np.maximum(out, 0, out=out)
    total = out.sum(axis=2, keepdims=True)
    target = frame.sum(axis=1)[None, :, None].astype(np.float32)
    np.divide(out * target, total, out=out, where=total > 0)
    return out


def _weighted_window(data, err, mask, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
    """Data (zero where unusable) and weights ``1 / err^2`` (zero where unusable) of columns [c0, c1)."""
    nints, nrows = np.shape(data)[:2]
    d = np.empty((nints, nrows, max(c1 - c0, 0)), dtype=np.float32)
    w = np.empty_like(d)
    _weighted_window_into(data, err, mask, c0, c1, d, w)
    return d, w


def _weighted_window_into(data, err, mask, c0: int, c1: int, d: np.ndarray, w: np.ndarray) -> None:
    """:func:`_weighted_window` into the float32 arrays ``d`` and ``w``."""
    d[...] = np.asarray(data)[:, :, c0:c1]
    e = np.array(np.asarray(err)[:, :, c0:c1], dtype=np.float32)
    good = np.isfinite(d) & np.isfinite(e) & (e > 0)
    if mask is not None:
        good &= ~np.asarray(mask, dtype=bool)[:, :, c0:c1]
    w[...] = 0
    e *= e
    np.divide(1.0, e, out=w, where=good)
    d[~good] = 0


def _template_shifts(d, w, p0, g0, iterations: int, clip: float) -> np.ndarray:
    """Shift per integration of ``d`` against the template ``p0`` (nrows, k).

    Model ``d[i, r] = f[i, r] (p0 - shift[i] g0)`` with ``g0 = dp0/dcolumn``
    (first order in the shift), weights ``w``; Gauss-Newton on the shift,
    fluxes solved exactly at each step.  Everything reduces to five
    per-(integration, row) sums, so a step costs nothing; the sums are taken
    again once after pixels beyond ``clip`` sigma are dropped.  ``w`` is
    modified.
    """
    nints = d.shape[0]
    shifts = np.zeros(nints)
    pp, pg, gg = p0 * p0, p0 * g0, g0 * g0

    def sums():
        wd = w * d
        return (
            np.einsum("irj,rj->ir", wd, p0).astype(np.float64),
            np.einsum("irj,rj->ir", wd, g0).astype(np.float64),
            np.einsum("irj,rj->ir", w, pp).astype(np.float64),
            np.einsum("irj,rj->ir", w, pg).astype(np.float64),
            np.einsum("irj,rj->ir", w, gg).astype(np.float64),
        )

    s_dp, s_dg, s_pp, s_pg, s_gg = sums()
    for it in range(max(int(iterations), 1)):
        sh = shifts[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            f = (s_dp - sh * s_dg) / (s_pp - 2 * sh * s_pg + sh * sh * s_gg)
        f = np.where(np.isfinite(f), f, 0.0)
        if it == 1 and clip > 0:  # drop outliers (cosmic rays) once the model is close
            model = (f.astype(np.float32)[:, :, None]) * (
                p0 - shifts.astype(np.float32)[:, None, None] * g0
            )
            model -= d
            model *= model
            model *= w
            w[model > clip * clip] = 0
            del model
            s_dp, s_dg, s_pp, s_pg, s_gg = sums()
            with np.errstate(invalid="ignore", divide="ignore"):
                f = (s_dp - sh * s_dg) / (s_pp - 2 * sh * s_pg + sh * sh * s_gg)
            f = np.where(np.isfinite(f), f, 0.0)
        # sum of w R dmodel/dshift, with R = d - f m and dmodel/dshift = -f g0
        num = -(f * (s_dg - f * (s_pg - sh * s_gg))).sum(axis=1)
        den = (f * f * s_gg).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            step = np.where(den > 0, num / den, 0.0)
        shifts = shifts + step
    return shifts


def _column_derivative(frame: np.ndarray) -> np.ndarray:
    """d frame / d column by central differences (one-sided at the frame edges)."""
    return np.gradient(frame, axis=1) if frame.shape[1] > 1 else np.zeros_like(frame)


def profile_shifts(
    data: np.ndarray,
    err: np.ndarray,
    mask: np.ndarray | None,
    profile: np.ndarray,
    columns: tuple[int, int] = (26, 47),
    *,
    iterations: int = 3,
    clip: float = 5.0,
) -> np.ndarray:
    """Cross-dispersion shift (pixels, + towards higher columns) of every integration
    relative to one profile frame (nrows, ncols), e.g. from :func:`build_profile`.

    A template fit over all rows at once: ``D[i, r, j] = f[i, r] P(r, j -
    shift[i])`` with one flux per (integration, row) and one shift per
    integration, ``P`` moved to first order with its column derivative
    (central differences), weighted by ``1 / err^2`` over ``columns``, solved
    by a few Gauss-Newton steps; pixels more than ``clip`` sigma off the
    model (cosmic rays) are dropped after the first.  Using every pixel of
    the trace this is far more precise than the row-median Gaussian fit of
    :func:`fit_psf` (in simulations ~0.0004 px against ~0.007 px).  NaN for
    integrations without usable pixels.
    """
    data = np.asarray(data)
    nints, _, ncols = data.shape
    c0, c1 = _span(columns[0], columns[1], ncols)
    if c1 - c0 < 3 or nints == 0:
        return np.full(nints, np.nan)
    frame = np.nan_to_num(np.asarray(profile, dtype=np.float64))
    p0 = frame[:, c0:c1].astype(np.float32)
    g0 = _column_derivative(frame)[:, c0:c1].astype(np.float32)
    d, w = _weighted_window(data, err, mask, c0, c1)
    usable = (w > 0).any(axis=(1, 2))
    shifts = _template_shifts(d, w, p0, g0, iterations, clip)
    shifts[~usable] = np.nan
    return shifts


def follow_jitter(
    data: np.ndarray,
    err: np.ndarray,
    mask: np.ndarray | None,
    profile: np.ndarray,
    columns: tuple[int, int] = (26, 47),
    *,
    smooth_rows: int = 11,
    clip: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A static profile frame (nrows, ncols) made to follow the pointing jitter.

    1. The shift of every integration against the frame is measured as in
       :func:`profile_shifts`;
    2. the frame is moved by it with :func:`shift_profile`;
    3. what the moved frame misses is fitted from the data: the PSF is
       undersampled at short wavelengths (sigma ~ 0.8 px), where cubic
       interpolation of pixel values is off by ~1% of the peak for a 0.05 px
       shift, and a time median over a drifting trace is broader than any
       single frame.  Per pixel, the normalised residual ``D / f - P_moved``
       is fitted by a weighted polynomial in the shift (degree 2 from 12
       integrations on, 1 from 4, else a constant; pixels beyond ``clip``
       sigma left out); each coefficient is smoothed along the rows with the
       running median of :func:`build_profile` and the polynomial added;
    4. negatives set to 0, rows normalised over ``columns``.

    Returns ``(profile, shifts)``: a (nints, nrows, ncols) float32 cube, zero
    outside ``columns``, and the shifts (pixels, + towards higher columns; 0
    where unmeasurable).
    """
    data = np.asarray(data)
    nints, nrows, ncols = data.shape
    c0, c1 = _span(columns[0], columns[1], ncols)
    frame = np.zeros((nrows, ncols))
    frame[:, c0:c1] = np.nan_to_num(np.asarray(profile, dtype=np.float64)[:, c0:c1])
    out = np.zeros(data.shape, dtype=np.float32)
    if c1 - c0 < 3 or nints == 0:
        out[:] = frame
        return out, np.zeros(nints)
    # Everything but the per-pixel polynomial fit works on each integration on its own:
    # blocks of integrations run on threads (block boundaries do not change any value).
    blocks = [slice(*b) for b in spans(nints, _JITTER_BLOCK)]
    d = np.empty((nints, nrows, c1 - c0), dtype=np.float32)
    w = np.empty_like(d)
    p0 = frame[:, c0:c1].astype(np.float32)
    g0 = _column_derivative(frame)[:, c0:c1].astype(np.float32)
    shifts = np.empty(nints)

    def measure(part: slice) -> None:
        _weighted_window_into(
            data[part], err[part], None if mask is None else mask[part], c0, c1, d[part], w[part]
        )
        shifts[part] = _template_shifts(d[part], w[part].copy(), p0, g0, 3, clip)

    thread_map(measure, blocks)
    shifts = np.where(np.isfinite(shifts), shifts, 0.0)
    margin = 3 + int(np.ceil(np.abs(shifts).max(initial=0.0)))
    a0, a1 = max(c0 - margin, 0), min(c1 + margin, ncols)
    resid = np.zeros_like(d)

    def move(part: slice) -> np.ndarray:
        moved = shift_profile(frame[:, a0:a1], shifts[part])[:, :, c0 - a0 : c1 - a0]
        wb, db = w[part], d[part]
        wm = wb * moved
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.einsum("irj,irj->ir", wm, db) / np.einsum("irj,irj->ir", wm, moved)
        del wm
        f = np.where(np.isfinite(f) & (f > 0), f, 0).astype(np.float32)[:, :, None]
        # normalised residuals and their weights (the variance of D / f is err^2 / f^2)
        rb = resid[part]
        np.divide(db, f, out=rb, where=(wb > 0) & (f > 0))
        rb -= moved
        wb *= f * f
        return moved

    moved = thread_map(move, blocks)
    # per pixel, a weighted polynomial in the (scaled) shift through the residuals;
    # fitted, then refitted without the pixels beyond ``clip`` sigma of the first fit
    scale = max(float(np.std(shifts)), 1e-6)
    t = ((shifts - shifts.mean()) / scale).astype(np.float32)
    degree = 2 if nints >= 12 else 1 if nints >= 4 else 0
    if np.std(shifts) < 1e-4:
        degree = 0
    powers = [np.ones_like(t)]
    for _ in range(2 * degree):
        powers.append(powers[-1] * t)
    n = degree + 1
    stacked = np.stack(powers[:n], -1)

    def fit() -> np.ndarray:
        wr = w * resid
        moments = [np.einsum("irj,i->rj", w, tk, dtype=np.float64) for tk in powers]
        rhs = np.stack([np.einsum("irj,i->rj", wr, tk, dtype=np.float64) for tk in powers[:n]], -1)
        normal = np.stack([np.stack([moments[a + b] for b in range(n)], -1) for a in range(n)], -2)
        diag = np.einsum("rjaa->rja", normal)
        normal += (1e-9 * diag.max(axis=-1, keepdims=True) + 1e-30)[..., None] * np.eye(n)
        coef = np.linalg.solve(normal, rhs[..., None])[..., 0]  # (nrows, k, n)
        coef[~(moments[0] > 0)] = np.nan
        return coef

    def evaluate(part: slice, coef: np.ndarray) -> np.ndarray:
        return np.einsum("ia,rja->irj", stacked[part], coef)

    if clip > 0:
        coef = np.nan_to_num(fit()).astype(np.float32)

        def drop(part: slice) -> None:
            excess = resid[part] - evaluate(part, coef)
            excess *= excess
            wb = w[part]
            excess *= wb
            wb[excess > clip * clip] = 0

        thread_map(drop, blocks)
    coef = fit()
    smooth = np.stack(
        [np.nan_to_num(_running_nanmedian(coef[:, :, a], smooth_rows)) for a in range(n)], -1
    ).astype(np.float32)

    def finish(item: tuple[slice, np.ndarray]) -> None:
        part, mb = item
        mb += evaluate(part, smooth)
        np.maximum(mb, 0, out=mb)
        total = mb.sum(axis=2, keepdims=True)
        np.divide(mb, total, out=mb, where=total > 0)
        out[part, :, c0:c1] = mb

    thread_map(finish, list(zip(blocks, moved, strict=True)))
    return out, shifts


# ---------------------------------------------------------------------------
# box extraction


def correlated_background_variance(
    weights: np.ndarray, background_err: np.ndarray, independent: bool
) -> np.ndarray:
    """Variance a subtracted background adds to ``flux = sum_c w_c D_c``, per (integration, row).

    A background estimate is one number (or a smooth curve) per row, so its
    error is shared by every pixel of the row: it adds ``(sum_c w_c s_c)^2``
    to the flux variance, not ``sum_c w_c^2 s_c^2``.  ``weights`` and
    ``background_err`` (``s``) are (nints or 1, nrows, k) over the same
    columns.  With ``independent=True`` the per-pixel part ``sum w^2 s^2`` is
    already in the caller's variance (it came in through ``err``) and only
    the cross terms are returned.
    """
    s = np.where(np.isfinite(background_err), background_err, 0.0)
    ws = weights * s
    total = np.sum(ws, axis=-1, dtype=np.float64) ** 2
    if independent:
        total -= np.einsum("...k,...k->...", ws, ws, dtype=np.float64)
    return np.maximum(total, 0.0)


def box(
    data: np.ndarray,
    err: np.ndarray,
    weights: np.ndarray,
    mask: np.ndarray | None = None,
    profile: np.ndarray | None = None,
    *,
    profile_columns: tuple[int, int] = (26, 47),
    background_err: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted aperture sum: ``flux = sum(w D)``, ``err = sqrt(sum(w^2 err^2))``.

    ``weights`` (nints or 1, nrows, ncols) from :func:`box_weights`.  A pixel
    with ``w > 0`` is *masked* when ``mask`` is True or its data or error is
    not finite.  In a row with masked pixels the missing flux is restored from
    the spatial profile ``P`` (Horne-style): with ``S = sum_good w D``,
    ``Pg = sum_good w P`` and ``Pt = sum_all w P``, the masked pixels are
    filled with ``P S / Pg``, so ``flux = S Pt / Pg`` and the error is scaled
    by the same factor ``Pt / Pg`` (exact propagation for a known profile).
    Without ``profile`` one is built with :func:`build_profile` over
    ``profile_columns``, only if some pixel is masked.

    ``background_err``: the uncertainty of a subtracted background (see
    :func:`correlated_background_variance`); its correlated part is added.

    Returns ``(flux, flux_err, n_masked)``, (nints, nrows) float64, float64,
    int.  NaN where a row has no weight, or no good pixel with profile > 0.
    Without masked pixels and with integer edges the flux is the plain sum of
    the same pixels (summed in float64).
    """
    data = np.asarray(data)
    err = np.asarray(err)
    weights = np.asarray(weights)
    nints, nrows = data.shape[:2]
    shape2 = (nints, nrows)
    span = _column_span(weights > 0)
    if span is None:
        return np.full(shape2, np.nan), np.full(shape2, np.nan), np.zeros(shape2, dtype=np.int64)
    lo, hi = span
    shape3 = (nints, nrows, hi - lo)

    def cut(a):  # a float64 copy of the aperture's columns
        out = np.empty(shape3)
        out[...] = a[:, :, lo:hi]
        return out

    d = cut(data)
    e = cut(err)
    wv = weights[:, :, lo:hi].astype(np.float64)  # (nints or 1, nrows, k)
    w = np.broadcast_to(wv, shape3)
    bad = ~np.isfinite(d)
    bad |= ~np.isfinite(e)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)[:, :, lo:hi]
    # zero every unusable pixel, also those without weight in this integration
    # (the columns span all integrations' apertures, and 0 * NaN is NaN)
    np.copyto(d, 0, where=bad)
    np.copyto(e, 0, where=bad)
    bad &= wv > 0
    anybad = bad.any()
    e *= e
    flux = np.einsum("irc,irc->ir", w, d)
    var = np.einsum("irc,irc->ir", np.broadcast_to(wv * wv, shape3), e)
    n_masked = bad.sum(axis=2)
    flux[np.broadcast_to(wv.sum(axis=2) <= 0, shape2)] = np.nan
    if background_err is not None:
        var += correlated_background_variance(
            np.where(bad, 0.0, w), cut(background_err), independent=True
        )

    if anybad:
        ii, rr = np.nonzero(n_masked)
        if profile is None:
            profile = build_profile(data, mask, profile_columns)
        p = np.asarray(profile)
        p = np.broadcast_to(p, data.shape)[ii, rr, lo:hi].astype(np.float64)
        p = np.where(np.isfinite(p), np.maximum(p, 0.0), 0.0)
        wp = w[ii, rr] * p
        pt = wp.sum(axis=1)
        pg = np.where(bad[ii, rr], 0.0, wp).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(pg > 0, pt / pg, np.nan)
        flux[ii, rr] *= scale
        var[ii, rr] *= scale * scale
    return flux, np.sqrt(var), n_masked


# ---------------------------------------------------------------------------
# optimal extraction


def optimal(
    data: np.ndarray,
    err: np.ndarray,
    mask: np.ndarray | None,
    profile: np.ndarray,
    aperture_mask: np.ndarray,
    *,
    variance: str = "model",
    gain: float = 3.1,
    var_rnoise: np.ndarray | None = None,
    background: np.ndarray | None = None,
    effinttm: float | None = None,
    rejection_threshold: float = 5.0,
    max_iterations: int = 10,
    background_err: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal extraction (Horne 1986) with iterated outlier rejection.

    ``profile`` (broadcastable to the cube) is set to 0 outside
    ``aperture_mask`` (broadcastable, bool) and re-normalised to sum 1 over
    each row's aperture, so the flux is the total within the aperture.
    Pixels are *kept* (``M``) when inside the aperture, not masked and finite.
    Per (integration, row)::

        f   = sum(M P D / V) / sum(M P^2 / V)
        var = 1 / sum(M P^2 / V)

    Horne's Table 1 writes ``var = sum(M P) / sum(M P^2 / V)``; the two agree
    when no pixel is left out (``sum P = 1``), and ``1 / sum(M P^2 / V)`` is
    the variance of the estimator above when some are, so it is the one used.

    Variance ``V`` in the data's units squared, (DN/s)^2:

    * ``variance="model"``: ``V = var_rnoise + max(f P + B, 0) / (gain *
      effinttm)`` with ``B`` the background already subtracted, revised with
      every new ``f`` (the Poisson term of ``f P + B`` DN/s over ``effinttm``
      seconds at ``gain`` e-/DN).  Without ``var_rnoise`` it is estimated per
      pixel from ``err``: the median over integrations of ``max(err^2 -
      max(D + B, 0) / (gain * effinttm), 0)``, i.e. what ``err`` holds beyond
      the Poisson term.  ``V`` is floored at ``(1 / (gain * effinttm))^2``
      (one electron), which keeps it positive when the read noise is 0.
    * ``variance="err"``: ``V = err^2``; pixels with ``err <= 0`` are not
      used (their weight would be infinite).

    Outlier rejection (Horne's step 7): in every (integration, row) the worst
    kept pixel with ``(D - f P)^2 > rejection_threshold^2 V`` is dropped and
    ``f`` recomputed, up to ``max_iterations`` times; only rows that dropped a
    pixel are revisited.  Start: ``f = sum(M D) / sum(M P)``, then the model
    variance is revised twice before rejection starts; each ``f`` and its
    variance use ``V`` evaluated at the previous estimate of ``f``.

    ``background_err``: the uncertainty of a subtracted background; the
    variance it adds through the final weights ``M P / V / sum(M P^2 / V)`` is
    included in ``flux_err`` (see :func:`correlated_background_variance`).

    Returns ``(flux, flux_err, n_rejected)`` (nints, nrows): ``n_rejected``
    counts the aperture pixels left out (masked or rejected).  Flux and error
    are NaN where no usable pixel with ``P > 0`` remains.  The work is done on
    the aperture's columns in the data's precision (at least float32); flux
    and error are returned as float64.
    """
    if variance not in VARIANCE_MODES:
        raise InputError(
            f"variance must be one of {', '.join(map(repr, VARIANCE_MODES))}; got {variance!r}."
        )
    data = np.asarray(data)
    nints, nrows = data.shape[:2]
    shape2 = (nints, nrows)
    if variance == "model":
        if effinttm is None or not np.isfinite(effinttm) or effinttm <= 0:
            raise InputError(
                f"variance='model' needs the effective integration time effinttm > 0 (s); "
                f"got {effinttm!r}. Pass effinttm, or use variance='err'."
            )
        if not np.isfinite(gain) or gain <= 0:
            raise InputError(f"gain must be a positive number of e-/DN; got {gain!r}.")
    ap = np.broadcast_to(np.asarray(aperture_mask, dtype=bool), data.shape)
    span = _column_span(ap)
    if span is None:
        return np.full(shape2, np.nan), np.full(shape2, np.nan), np.zeros(shape2, dtype=np.int64)
    lo, hi = span
    # work arrays in the data's precision (at least float32); only the aperture's
    # columns are copied, and large temporaries are reused in place
    ftype = np.result_type(data.dtype, np.float32)
    q = float(gain) * float(effinttm) if variance == "model" else None
    # whether a subtracted background enters the model variance: decided once for all
    # integrations, so that every block of integrations computes the same way
    use_background = False
    if variance == "model" and background is not None:
        cols = np.broadcast_to(np.asarray(background), data.shape)[:, :, lo:hi]
        use_background = bool(np.any(np.isfinite(cols) & (cols != 0)))
    read_noise = None
    if variance == "model" and var_rnoise is None:
        read_noise = _read_noise(data, err, background if use_background else None, lo, hi, q, ftype)
    flux = np.empty(shape2)
    flux_err = np.empty(shape2)
    n_rejected = np.empty(shape2, dtype=np.int64)

    def work(block: tuple[int, int]) -> None:
        part = slice(*block)
        flux[part], flux_err[part], n_rejected[part] = _optimal_block(
            part, data, err, mask, profile, ap, lo, hi, ftype,
            variance=variance, q=q, var_rnoise=var_rnoise, read_noise=read_noise,
            background=background if use_background else None,
            rejection_threshold=rejection_threshold, max_iterations=max_iterations,
            background_err=background_err,
        )

    # every (integration, row) is extracted on its own: blocks of integrations on threads
    thread_map(work, spans(nints, max(1, _OPTIMAL_BLOCK_ROWS // max(nrows, 1))))
    return flux, flux_err, n_rejected


def _cut_columns(a, shape, part: slice, lo: int, hi: int, dtype) -> np.ndarray:
    """Columns [lo, hi) of integrations ``part`` of ``a`` broadcast to ``shape``, as a new
    (n, nrows * ... , hi - lo) array reshaped to (rows, hi - lo)."""
    src = np.broadcast_to(np.asarray(a), shape)[part, :, lo:hi]
    out = np.empty(src.shape, dtype)
    out[...] = src
    return out.reshape(-1, hi - lo)


def _read_noise(data, err, background, lo: int, hi: int, q: float, ftype) -> np.ndarray:
    """Read-noise variance per pixel of the aperture's columns, (nrows, hi - lo), estimated
    from ``err``: the median over integrations of ``max(err^2 - max(D + B, 0) / q, 0)``."""
    nints, nrows = data.shape[:2]
    k = hi - lo
    everything = slice(None)
    d = _cut_columns(data, data.shape, everything, lo, hi, ftype)
    excess = _cut_columns(err, data.shape, everything, lo, hi, ftype)
    excess *= excess
    if background is None:
        poisson = np.maximum(d, 0) / q  # NaN stays NaN
    else:
        bq = _cut_columns(background, data.shape, everything, lo, hi, ftype)
        np.copyto(bq, 0, where=~np.isfinite(bq))
        bq = bq / q
        poisson = np.maximum(d + bq * q, 0) / q
    excess -= poisson
    np.maximum(excess, 0, out=excess)
    np.copyto(excess, np.nan, where=~np.isfinite(excess))
    return nanmedian(excess.reshape(nints, nrows * k), axis=0).astype(ftype).reshape(nrows, k)


def _optimal_block(
    part: slice, data, err, mask, profile, ap, lo: int, hi: int, ftype, *,
    variance: str, q: float | None, var_rnoise, read_noise, background,
    rejection_threshold: float, max_iterations: int, background_err,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`optimal` for the integrations ``part``: flux, error and left-out pixels,
    (n, nrows) each.  ``read_noise`` (nrows, k) replaces ``var_rnoise`` when given;
    ``background`` is None when it does not enter the variance."""
    shape = data.shape
    nrows = shape[1]
    k = hi - lo
    d = _cut_columns(data, shape, part, lo, hi, ftype)
    n = d.shape[0]
    nints = n // nrows if nrows else 0
    shape2 = (nints, nrows)

    def cut(a, dtype=ftype):
        return _cut_columns(a, shape, part, lo, hi, dtype)

    a = cut(ap, bool)
    p = cut(profile)
    np.copyto(p, 0, where=~(a & np.isfinite(p)))
    np.maximum(p, 0, out=p)
    psum = p.sum(axis=1, keepdims=True)
    p /= np.where(psum > 0, psum, np.inf)  # rows without profile: P = 0
    keep = a & np.isfinite(d)
    if mask is not None:
        keep &= ~cut(mask, bool)

    bq = rn = pq = vfix = None
    if variance == "err":
        vfix = cut(err)
        vfix *= vfix
        keep &= np.isfinite(vfix) & (vfix > 0)
        np.copyto(vfix, 1, where=~keep)
    else:
        vfloor = 1.0 / (q * q)
        if background is not None:
            bq = cut(background)
            np.copyto(bq, 0, where=~np.isfinite(bq))
            bq = bq / q
        if read_noise is not None:
            rn = np.empty((nints, nrows, k), ftype)
            rn[...] = read_noise
            rn = rn.reshape(n, k)
        else:
            rn = cut(var_rnoise)
        keep &= np.isfinite(rn)
        np.maximum(rn, vfloor, out=rn, where=keep)
        np.copyto(rn, 1, where=~keep)  # finite everywhere, >= the floor where kept
        pq = p / q

    n_left_out = (a & ~keep).sum(axis=1)
    del a
    np.copyto(d, 0, where=~keep)  # left-out pixels carry zero weight and must not carry NaN
    pk = p
    pk *= keep  # M P: the profile on the kept pixels
    del p

    def var_of(idx, f, out=None):
        """V for the rows idx from their flux estimate f, in a new array or ``out``.

        V >= the floor where kept: rn is floored and the Poisson term is >= 0.
        """
        if variance == "err":
            if out is None:
                return np.array(vfix[idx])
            np.copyto(out, vfix[idx])
            return out
        f = np.nan_to_num(f).astype(ftype)[:, None]
        if bq is None:  # max(f P, 0) = P max(f, 0) as P >= 0
            v = np.multiply(pq[idx], np.maximum(f, 0), out=out)
        else:
            v = np.multiply(pq[idx], f, out=out)
            v += bq[idx]
            np.maximum(v, 0, out=v)
        v += rn[idx]
        return v

    def solve(idx, v):
        """f = sum(M P D / V) / sum(M P^2 / V) and sum(M P^2 / V) for the rows idx (v is consumed)."""
        pki = pk[idx]
        wgt = np.divide(pki, v, out=v)
        den = np.einsum("nk,nk->n", wgt, pki).astype(np.float64)
        num = np.einsum("nk,nk->n", wgt, d[idx]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan), den

    everything = slice(None)
    buf = np.empty((n, k), ftype)
    with np.errstate(invalid="ignore", divide="ignore"):
        psum = pk.sum(axis=1, dtype=np.float64)
        f = np.where(psum > 0, d.sum(axis=1, dtype=np.float64) / psum, np.nan)  # corrected box
    for _ in range(2 if variance == "model" else 1):
        f, den = solve(everything, var_of(everything, f, out=buf))

    n_clip = np.zeros(n, dtype=np.int64)
    threshold2 = float(rejection_threshold) ** 2
    active: np.ndarray | slice = everything
    zbuf: np.ndarray | None = np.empty((n, k), ftype)
    for _ in range(int(max_iterations)):
        fa = f[active]
        full = zbuf is not None
        # left-out pixels have D = M P = 0, hence z = 0: never rejected twice
        z = np.multiply(pk[active], fa.astype(ftype)[:, None], out=zbuf if full else None)
        np.subtract(d[active], z, out=z)
        z *= z
        z /= var_of(active, fa, out=buf if full else None)
        zbuf = None  # later iterations only touch the rows that changed
        worst = z.argmax(axis=1)
        hit = z[np.arange(z.shape[0]), worst] > threshold2  # NaN rows never hit
        if not hit.any():
            break
        rows = np.arange(n)[active][hit]
        cols = worst[hit]
        pk[rows, cols] = 0
        d[rows, cols] = 0
        n_clip[rows] += 1
        f[rows], den[rows] = solve(rows, var_of(rows, fa[hit]))
        active = rows[np.isfinite(f[rows])]
        if active.size == 0:
            break

    with np.errstate(divide="ignore", invalid="ignore"):
        var_f = np.where(den > 0, 1.0 / den, np.nan)
        if background_err is not None:
            weights = pk / var_of(everything, f, out=buf)
            weights *= np.where(den > 0, var_f, 0.0).astype(ftype)[:, None]
            var_f = var_f + correlated_background_variance(
                weights, cut(background_err), independent=variance == "err"
            )
        flux_err = np.sqrt(var_f)
        f = np.where(den > 0, f, np.nan)
    return (
        f.reshape(shape2),
        flux_err.reshape(shape2),
        (n_left_out + n_clip).reshape(shape2),
    )
