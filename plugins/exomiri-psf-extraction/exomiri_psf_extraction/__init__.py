"""The ``psf`` extraction method for exomiri: an empirical PSF fitted by weighted least squares.

The PSF of every row is taken from the data: the median over integrations of
the pixels around the trace, normalised to unit sum over the fitted window
(``exomiri.steps.extract.build_profile``, which also restores pixels that are
flagged in every integration from the rows around them).  In integration
``i`` the PSF of row ``r`` is moved by ``dx[i]`` columns and widened by a
factor ``1 + e[i]`` about its centroid ``c_r``::

    model[i, r, j] = f[i, r] * P_r(c_r + (j - c_r - dx[i]) / (1 + e[i])) / (1 + e[i])

where ``P_r`` is the cubic spline through row ``r`` of the profile, zero
beyond the window.  One shift and one stretch per integration are shared by
all rows, so they are measured from the whole trace at once; ``f`` is one
flux per integration and row.

1. *Shift and stretch.*  Gauss-Newton on ``(dx, e)`` per integration, the
   fluxes solved exactly at each step (variable projection: the Jacobian is
   projected orthogonally to each row's model); ``fit_width=False`` keeps
   ``e = 0``.
2. *What interpolation misses.*  Below ~6 micron the PSF core is
   undersampled (sigma ~0.8 px) and no interpolation of pixel values moves
   it exactly.  With ``refine=True`` the residual of every pixel divided by
   its row's flux is fitted over the integrations with a polynomial in the
   shift, smoothed along the rows, and added to the moved PSF, which is then
   renormalised (:class:`_Misses`).
3. *Flux.*  ``f = sum(w Q D) / sum(w Q^2)`` per row with ``Q`` the moved PSF
   and ``w = 1 / V``; its variance ``1 / sum(w Q^2)``, plus the error of the
   subtracted background, which is shared by the pixels of a row
   (``exomiri.steps.extract.correlated_background_variance``).
4. *Outliers.*  While a row's worst pixel lies beyond
   ``rejection_threshold`` sigma of the model it is dropped and the row
   refitted, at most ``max_iterations`` pixels per row.

The variance ``V`` is ``err**2`` (``variance="err"``) or, by default
(``"model"``), the read noise (``frames.var_rnoise``, or what ``err`` holds
beyond the Poisson term) plus the Poisson variance of the model and the
subtracted background at ``gain`` e-/DN over ``frames.effinttm``, revised
with each new flux; fluctuations of the data then do not steer the weights.

The trace position reported for integration ``i`` is the centre of a
Gaussian fitted to the time-median frame (rows 200-389, columns 12-67 of
SLITLESSPRISM, as the built-in methods) plus ``dx[i]``; the width is that
Gaussian's sigma times ``1 + e[i]``.  Both come from the whole trace and are
far less noisy than a Gaussian fit to each integration.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import numpy as np
from scipy.interpolate import CubicSpline

from exomiri import InputError, hookimpl
from exomiri.hookspecs import ExtractionInput, ExtractionResult
from exomiri.steps import extract as kernels

__all__ = ["PSFExtraction", "exomiri_register_extraction_methods"]

#: Published SLITLESSPRISM defaults (0-based subarray pixels), as the built-ins use.
DEFAULT_CENTER = 36
PSF_ROWS = (200, 390)
PSF_COLUMNS = (12, 68)
SIGMA_GUESS = 1.59
#: Integrations fitted together (bounds the temporaries).
_CHUNK = 64
#: Zero columns added on each side of the window before the spline is made.
_PAD = 3


# --------------------------------------------------------------------------
# checks


def _number(name: str, value, example, minimum: float | None = None, integer=False):
    kinds = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kinds) or not np.isfinite(value):
        raise InputError(f"{name} must be a finite number; got {value!r}. Pass e.g. {name}={example}.")
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be >= {minimum}; got {value!r}. Pass e.g. {name}={example}.")
    return int(value) if integer else float(value)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise InputError(f"{name} must be True or False; got {value!r}.")
    return bool(value)


# --------------------------------------------------------------------------
# the PSF


class _RowSplines:
    """Cubic splines through every row of a profile (nrows, w) on columns first..first+w-1,
    zero beyond them; evaluated with their slope at any column positions."""

    def __init__(self, profile: np.ndarray, first: int):
        nrows, width = profile.shape
        x = np.arange(first - _PAD, first + width + _PAD, dtype=np.float64)
        y = np.zeros((x.size, nrows))
        y[_PAD : _PAD + width] = profile.T
        self.start = x[0]
        self.size = x.size
        coef = CubicSpline(x, y, axis=0).c  # (4, size - 1, nrows), highest power first
        # one row of 4 coefficients per (row, piece): a single gather per point
        self.coef = np.ascontiguousarray(coef.transpose(2, 1, 0).reshape(-1, 4))
        self.offset = (np.arange(nrows) * (self.size - 1))[:, None]

    def __call__(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values and slopes at positions ``u`` (..., nrows, w)."""
        s = u - self.start
        piece = np.clip(np.floor(s).astype(np.int64), 0, self.size - 2)
        t = s - piece
        c3, c2, c1, c0 = np.moveaxis(self.coef[piece + self.offset], -1, 0)
        value = ((c3 * t + c2) * t + c1) * t + c0
        slope = (3 * c3 * t + 2 * c2) * t + c1
        outside = (s < 0) | (s > self.size - 1)
        value[outside] = 0.0
        slope[outside] = 0.0
        return value, slope


def _chunks(nints: int) -> Iterator[slice]:
    for start in range(0, nints, _CHUNK):
        yield slice(start, min(start + _CHUNK, nints))


# --------------------------------------------------------------------------
# the method


class PSFExtraction:
    """Weighted least-squares fit of an empirical PSF, moved and widened per integration."""

    name = "psf"
    description = (
        "Weighted least-squares fit of the empirical PSF (median profile of each row), "
        "shifted and stretched to each integration by a fit over the whole trace."
    )

    def extract(
        self,
        frames: ExtractionInput,
        *,
        aperture_center: float | None = None,
        half_width: int = 8,
        fit_width: bool = True,
        refine: bool = True,
        variance: str = "model",
        gain: float = 3.1,
        iterations: int = 3,
        rejection_threshold: float = 5.0,
        max_iterations: int = 5,
    ) -> ExtractionResult:
        """Fit the PSF over ``2 * half_width + 1`` columns around the trace of every row.

        ``aperture_center``: column of the trace in the PSF-fit rows (None:
        a Gaussian fit to the time-median frame).  ``fit_width``: fit a
        stretch per integration besides the shift.  ``refine``: learn how
        each pixel of the PSF changes with the shift (see the module
        docstring).  ``variance``: ``"model"`` or ``"err"``; ``gain`` in
        e-/DN.  ``iterations``: Gauss-Newton steps for the shift and
        stretch.  ``rejection_threshold``/``max_iterations``: outlier
        rejection per row.
        """
        half_width = _number("half_width", half_width, 8, 2, integer=True)
        fit_width = _flag("fit_width", fit_width)
        refine = _flag("refine", refine)
        if variance not in ("model", "err"):
            raise InputError(f"variance must be 'model' or 'err'; got {variance!r}.")
        gain = _number("gain", gain, 3.1, 1e-6)
        iterations = _number("iterations", iterations, 3, 0, integer=True)
        threshold = _number("rejection_threshold", rejection_threshold, 5.0, 1e-6)
        max_iterations = _number("max_iterations", max_iterations, 5, 0, integer=True)
        effinttm = frames.effinttm
        if variance == "model" and not (isinstance(effinttm, numbers.Real) and effinttm > 0):
            raise InputError(
                f"variance='model' needs frames.effinttm > 0 (s); got {effinttm!r}. "
                "Use variance='err', or supply the effective integration time."
            )
        nints, nrows, ncols = frames.data.shape

        # reference centre and width: a Gaussian fit to the time-median frame
        fit_rows = (PSF_ROWS[0] + frames.row_offset, PSF_ROWS[1] + frames.row_offset)
        fit_cols = (PSF_COLUMNS[0] + frames.col_offset, PSF_COLUMNS[1] + frames.col_offset)
        r0, r1 = np.clip(fit_rows, 0, nrows)
        c0, c1 = np.clip(fit_cols, 0, ncols)
        cut = (slice(None), slice(r0, r1), slice(c0, c1))
        median = kernels.nanmedian(np.where(frames.mask[cut], np.nan, frames.data[cut]), axis=0)
        ref_position, ref_sigma = kernels.fit_psf(median[None], (0, r1 - r0), (0, c1 - c0), SIGMA_GUESS)
        ref_position = ref_position + c0
        if aperture_center is not None:
            centre = _number("aperture_center", aperture_center, DEFAULT_CENTER)
        elif np.isfinite(ref_position[0]):
            centre = float(ref_position[0])
        else:
            centre = float(DEFAULT_CENTER + frames.col_offset)
        trace = np.asarray(frames.trace, dtype=np.float64)
        finite = np.isfinite(trace[fit_rows[0] : fit_rows[1]])
        anchor = np.mean(trace[fit_rows[0] : fit_rows[1]][finite]) if finite.any() else 0.0
        centres = np.where(np.isfinite(trace), trace - anchor, 0.0) + centre  # (nrows,)
        first = int(np.floor(centres.min())) - half_width
        last = int(np.ceil(centres.max())) + half_width + 1
        if first < 0 or last > ncols:
            raise InputError(
                f"The PSF window (trace at columns {centres.min():.1f}..{centres.max():.1f} "
                f"+- half_width={half_width}) reaches beyond the frame's columns 0..{ncols - 1}; "
                "lower half_width or move aperture_center."
            )
        window = slice(first, last)

        # the empirical PSF, and the centroid of each row about which it widens
        profile = np.asarray(
            kernels.build_profile(frames.data, frames.mask, (first, last), smooth_rows=3)[0],
            dtype=np.float64,
        )[:, window]
        cols = np.arange(first, last, dtype=np.float64)
        total = profile.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            centroid = np.where(total > 0, profile @ cols / total, centres)
        psf = _MovingPSF(_RowSplines(profile, first), centroid, cols)
        readnoise = _read_noise(frames, window, gain, variance)

        def chunk_fit(chunk: slice) -> _ChunkFit:
            return _ChunkFit(frames, chunk, window, psf, readnoise, gain, variance)

        # pass 1: shift and stretch of every integration; what the moved PSF misses
        shift = np.zeros(nints)
        stretch = np.zeros(nints)
        misses = _Misses(nints, nrows, cols.size) if refine else None
        for chunk in _chunks(nints):
            fit = chunk_fit(chunk)
            shift[chunk], stretch[chunk] = fit.geometry(iterations, fit_width)
            if misses is not None:
                misses.add(fit)
        correction = None if misses is None else misses.solve(shift)

        # pass 2: fluxes with the final PSF
        flux = np.full((nints, nrows), np.nan)
        flux_err = np.full((nints, nrows), np.nan)
        left_out = np.zeros((nints, nrows), dtype=np.int64)
        for chunk in _chunks(nints):
            fit = chunk_fit(chunk)
            fit.dx, fit.e = shift[chunk], stretch[chunk]
            fit.correction = None if correction is None else correction(shift[chunk])
            flux[chunk], flux_err[chunk], left_out[chunk] = fit.fluxes(threshold, max_iterations)

        position = ref_position[0] + shift  # NaN where the reference fit failed
        sigma = ref_sigma[0] * (1.0 + stretch)
        return ExtractionResult(flux, flux_err, position, sigma, left_out)


def _read_noise(frames, window, gain, variance):
    """Read-noise variance (nrows, w) estimated from ``err`` when the frames carry none.

    None for ``variance="err"`` or where ``frames.var_rnoise`` is given (read
    per chunk).  The estimate is what ``err**2`` holds beyond the Poisson
    term, median over at most 256 integrations spread over the observation.
    """
    if variance == "err" or frames.var_rnoise is not None:
        return None
    step = max(1, frames.data.shape[0] // 256)
    some = (slice(None, None, step), slice(None), window)
    d = np.asarray(frames.data[some], dtype=np.float64)
    b = np.nan_to_num(np.asarray(frames.background[some], dtype=np.float64))
    e = np.asarray(frames.err[some], dtype=np.float64)
    excess = e**2 - np.maximum(d + b, 0) / (gain * frames.effinttm)
    return kernels.nanmedian(np.where(np.isfinite(excess), np.maximum(excess, 0), np.nan), 0)


class _MovingPSF:
    """The PSF of every row moved by ``dx`` and widened by ``1 + e`` about its centroid."""

    def __init__(self, splines: _RowSplines, centroid: np.ndarray, cols: np.ndarray):
        self.splines = splines
        self.centroid = centroid[None, :, None]
        self.cols = cols

    def __call__(self, dx: np.ndarray, e: np.ndarray, derivatives: bool = False):
        """Q (n, nrows, w) and, with ``derivatives``, dQ/ddx and dQ/de."""
        scale = 1.0 + e[:, None, None]
        u = self.centroid + (self.cols - self.centroid - dx[:, None, None]) / scale
        value, slope = self.splines(u)
        q = value / scale
        if not derivatives:
            return q
        return q, -slope / scale**2, -(value + (u - self.centroid) * slope) / scale**2


class _Misses:
    """What the moved PSF misses, learnt per pixel as a polynomial in the shift.

    The residual of every pixel divided by its row's flux, ``D / f - Q``, is
    fitted over the integrations by weighted least squares (weights
    ``f**2 / V``) with a polynomial in the shift: of degree 2 from 12
    integrations on, 1 from 4, none below or when the shifts hardly vary.
    The coefficients are smoothed along the rows by a running median over 11
    rows, over which the sub-pixel phase of the trace hardly changes.
    """

    #: The shift scale (pixels) of the polynomial's variable.
    SCALE = 0.05
    ROWS = 11

    def __init__(self, nints: int, nrows: int, width: int):
        self.degree = 2 if nints >= 12 else 1 if nints >= 4 else 0
        self.moments = np.zeros((2 * self.degree + 1, nrows, width))
        self.projections = np.zeros((self.degree + 1, nrows, width))

    def add(self, fit: _ChunkFit) -> None:
        if self.degree == 0:
            return
        q = fit.last  # the PSF of the final shifts and stretches
        w = fit.weights(q) * fit.flux[:, :, None] ** 2
        usable = fit.flux > 0
        w[~usable] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.where(w > 0, fit.d / np.where(usable, fit.flux, 1.0)[:, :, None] - q, 0.0)
        t = fit.dx / self.SCALE
        for k in range(self.moments.shape[0]):
            self.moments[k] += np.einsum("irj,i->rj", w, t**k)
        for k in range(self.projections.shape[0]):
            self.projections[k] += np.einsum("irj,i->rj", w * rho, t**k)

    def solve(self, shift: np.ndarray):
        """A function of the shifts (n,) giving the correction (n, nrows, w), or None."""
        if self.degree == 0 or np.std(shift) < 1e-3:
            return None
        n = self.degree + 1
        normal = np.stack([self.moments[a : a + n] for a in range(n)], axis=-1)  # (n, r, j, n)
        normal = np.moveaxis(normal, 0, -2)  # (r, j, n, n)
        rhs = np.moveaxis(self.projections, 0, -1)[..., None]
        solvable = np.linalg.det(normal) > 0
        coef = np.full(rhs.shape[:-1], np.nan)
        coef[solvable] = np.linalg.solve(normal[solvable], rhs[solvable])[..., 0]
        coef = np.nan_to_num(_running_median(coef, self.ROWS))  # (nrows, w, n)

        def correction(dx: np.ndarray) -> np.ndarray:
            t = dx / self.SCALE
            powers = np.stack([t**k for k in range(n)], axis=-1)  # (m, n)
            return np.einsum("mk,rjk->mrj", powers, coef)

        return correction


def _running_median(values: np.ndarray, width: int) -> np.ndarray:
    """Running median over ``width`` rows along axis 0 (truncated at the ends), NaN ignored."""
    half = width // 2
    padded = np.concatenate(
        [np.full((half, *values.shape[1:]), np.nan), values, np.full((half, *values.shape[1:]), np.nan)]
    )
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=0)
    return kernels.nanmedian(windows, axis=-1)


class _ChunkFit:
    """The fit of one chunk of integrations: its data, weights, fluxes and moved PSF."""

    def __init__(self, frames, chunk, window, psf, readnoise, gain, variance):
        self.d = np.array(frames.data[chunk, :, window], dtype=np.float64)
        err = np.asarray(frames.err[chunk, :, window], dtype=np.float64)
        self.good = np.isfinite(self.d) & np.isfinite(err) & (err > 0)
        self.good &= ~np.asarray(frames.mask[chunk, :, window], dtype=bool)
        self.d[~self.good] = 0.0
        self.masked = (~self.good).sum(axis=2)  # left out from the start
        self.err2 = np.where(self.good, err**2, 1.0)
        self.background = np.nan_to_num(np.asarray(frames.background[chunk, :, window], np.float64))
        bg_err = frames.background_err
        self.background_err = None if bg_err is None else np.asarray(bg_err[chunk, :, window])
        self.q = gain * float(frames.effinttm) if variance == "model" else None
        if self.q is not None and frames.var_rnoise is not None:
            readnoise = np.asarray(frames.var_rnoise[chunk, :, window], dtype=np.float64)
        self.readnoise = readnoise
        self.psf = psf
        n = self.d.shape[0]
        self.dx = np.zeros(n)
        self.e = np.zeros(n)
        self.correction = None
        self.flux = np.zeros(self.d.shape[:2])

    def moved(self) -> np.ndarray:
        """The PSF of this chunk's integrations (with the learnt correction, renormalised)."""
        q = self.psf(self.dx, self.e)
        if self.correction is None:
            return q
        q = np.maximum(q + self.correction, 0.0)
        total = q.sum(axis=2, keepdims=True)
        return np.divide(q, total, out=np.zeros_like(q), where=total > 0)

    def weights(self, q):
        """1 / V for the current fluxes (zero on unusable pixels)."""
        if self.q is None:
            v = self.err2
        else:
            model = self.flux[:, :, None] * q + self.background
            v = self.readnoise + np.maximum(model, 0.0) / self.q
            v = np.maximum(v, 1.0 / self.q**2)  # at least one electron
        return np.where(self.good, 1.0 / v, 0.0)

    def solve(self, q, w):
        """Fluxes and sum(w Q^2) per (integration, row); also kept as ``self.flux``."""
        wq = w * q
        den = np.einsum("irj,irj->ir", wq, q)
        with np.errstate(invalid="ignore", divide="ignore"):
            flux = np.where(den > 0, np.einsum("irj,irj->ir", wq, self.d) / den, np.nan)
        self.flux = np.nan_to_num(flux)
        return flux, den

    def geometry(self, iterations: int, fit_width: bool) -> tuple[np.ndarray, np.ndarray]:
        """Gauss-Newton on the shift (and stretch) of every integration of the chunk."""
        self.solve(self.psf(self.dx, self.e), np.where(self.good, 1.0 / self.err2, 0.0))
        for _ in range(iterations):
            q, qx, qe = self.psf(self.dx, self.e, derivatives=True)
            w = self.weights(q)
            _, den = self.solve(q, w)
            f = self.flux[:, :, None]
            residual = self.d - f * q
            # the Jacobian, projected orthogonally to each row's model (variable projection)
            jac = []
            for derivative in [qx, qe] if fit_width else [qx]:
                j = f * derivative
                with np.errstate(invalid="ignore", divide="ignore"):
                    along = np.where(den > 0, np.einsum("irj,irj->ir", w * q, j) / den, 0.0)
                jac.append(j - q * along[:, :, None])
            normal = np.array([[np.einsum("irj,irj->i", w * a, b) for b in jac] for a in jac])
            normal = np.moveaxis(normal, (0, 1), (1, 2))  # (n, k, k)
            rhs = np.stack([np.einsum("irj,irj->i", w * a, residual) for a in jac], axis=-1)
            solvable = np.linalg.det(normal) > 0
            step = np.zeros(rhs.shape)
            step[solvable] = np.linalg.solve(normal[solvable], rhs[solvable][:, :, None])[:, :, 0]
            self.dx = self.dx + step[:, 0]
            if fit_width:
                self.e = self.e + step[:, 1]
        q = self.psf(self.dx, self.e)
        self.solve(q, self.weights(q))
        self.last = q
        return self.dx, self.e

    def fluxes(self, threshold: float, max_iterations: int):
        """Fluxes, errors and pixels left out (masked or rejected), rejecting the worst
        pixel of a row while it lies beyond ``threshold`` sigma."""
        q = self.moved()
        for _ in range(2):  # the model variance follows the flux
            w = self.weights(q)
            flux, den = self.solve(q, w)
        rejected = np.zeros(flux.shape, dtype=np.int64)
        for _ in range(max_iterations):
            z = (self.d - self.flux[:, :, None] * q) ** 2 * w
            worst = z.argmax(axis=2)
            hit = np.take_along_axis(z, worst[:, :, None], 2)[:, :, 0] > threshold**2
            if not hit.any():
                break
            ii, rr = np.nonzero(hit)
            self.good[ii, rr, worst[ii, rr]] = False
            rejected[ii, rr] += 1
            w = self.weights(q)
            flux, den = self.solve(q, w)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(den > 0, 1.0 / den, np.nan)
            if self.background_err is not None:
                pixel_weights = w * q * np.where(den > 0, var, 0.0)[:, :, None]
                var = var + kernels.correlated_background_variance(
                    pixel_weights, self.background_err, independent=self.q is None
                )
        return flux, np.sqrt(var), rejected + self.masked


@hookimpl
def exomiri_register_extraction_methods(register):
    register(PSFExtraction)
