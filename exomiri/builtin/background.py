"""Built-in background methods: ``constant``, ``row_wise``, ``col_wise``, ``polynomial``.

Each method estimates the background of every integration from the pixels of
the background region (``frames.region``) that are not masked and finite, and
returns a :class:`~exomiri.products.BackgroundModel` (coefficients of a few
functions of the column, with their covariance).  The host subtracts the
model, adds its variance to ``err`` and stores it; the optional running
median along rows is applied by the host (:func:`exomiri.steps.background.smooth_rows`).

All methods work on whole blocks of integrations at once (no loop over
integrations or rows) and never modify their inputs.  A row (or, for
``constant``, an integration) without enough usable pixels gets NaN
coefficients and covariance, which the host flags.

Variances
---------
``constant`` and ``row_wise`` use the variance of a median of ``n`` values,
``(pi / 2) sigma**2 / n`` (the large-``n`` limit for Gaussian noise), with
``sigma = 1.4826 * MAD`` of the same pixels.  ``col_wise`` and ``polynomial``
fit a weighted least-squares polynomial and report its covariance from the
scatter of the kept pixels.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator

import numpy as np

from ..exceptions import InputError
from ..hookspecs import BackgroundInput, hookimpl
from ..products import BackgroundModel
from ..steps._pool import thread_map
from ..steps.background import nanmedian_lastaxis
from ..steps.lstsq import batched_wls, legendre_design

__all__ = ["ColWise", "Constant", "Polynomial", "RowWise"]

#: Scale from the median absolute deviation to the Gaussian sigma.
MAD_TO_SIGMA = 1.4826
#: Variance of the median of n Gaussian values, in units of sigma**2 / n (large n).
MEDIAN_VARIANCE_FACTOR = math.pi / 2
#: Fewer usable pixels than this in a row: ``row_wise`` takes its scatter from
#: the whole integration instead of the row (a MAD of a handful of values is
#: too noisy to weight anything by).
MIN_ROW_PIXELS = 10
#: Rough upper bound on the temporaries of one block of integrations (bytes).
_BLOCK_BYTES = 16 * 2**20
#: Float64 temporaries of the size of one block's region pixels, at most.
_TEMPORARIES = 12
#: Reweighting passes of the least-absolute-deviation start of clipping.
_LAD_ITERATIONS = 10


# --------------------------------------------------------------------------
# shared helpers


def _check_frames(frames: BackgroundInput) -> tuple[np.ndarray, np.ndarray]:
    """Validate the input's shapes; return the region (bool) and column coordinates."""
    data = frames.data
    if data.ndim != 3:
        raise InputError(
            f"Background methods need a (nints, nrows, ncols) cube; got shape {data.shape}."
        )
    for name in ("err", "mask"):
        arr = getattr(frames, name)
        if arr.shape != data.shape:
            raise InputError(
                f"BackgroundInput.{name} has shape {arr.shape} but data has {data.shape}; "
                "they must match."
            )
    ncols = data.shape[2]
    region = np.asarray(frames.region)
    columns = np.asarray(frames.columns, dtype=np.float64)
    if region.shape != (ncols,) or region.dtype != bool:
        raise InputError(
            f"BackgroundInput.region must be a ({ncols},) boolean mask of columns; got "
            f"{region.dtype} of shape {region.shape}. Build it with "
            "exomiri.steps.background.region_mask."
        )
    if not region.any():
        raise InputError("The background region has no columns; choose some background columns.")
    if columns.shape != (ncols,):
        raise InputError(
            f"BackgroundInput.columns must have shape ({ncols},); got {columns.shape}."
        )
    return region, columns


def _blocks(nints: int, bytes_per_integration: int) -> Iterator[slice]:
    """Slices of consecutive integrations whose temporaries fit in ``_BLOCK_BYTES``."""
    size = max(1, _BLOCK_BYTES // max(1, bytes_per_integration))
    for start in range(0, nints, size):
        yield slice(start, min(start + size, nints))


def _region_pixels(
    frames: BackgroundInput, region: np.ndarray, block: slice, weighted: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Region pixels of a block as float64 (nb, nrows, m), NaN where not usable, and err.

    With ``weighted`` a pixel also needs a finite, positive error to be usable.
    """
    values = np.asarray(frames.data[block][:, :, region], dtype=np.float64)
    err = np.asarray(frames.err[block][:, :, region], dtype=np.float64)
    usable = ~np.asarray(frames.mask[block][:, :, region], dtype=bool) & np.isfinite(values)
    if weighted:
        usable &= np.isfinite(err) & (err > 0)
    values[~usable] = np.nan  # values is a fresh copy (fancy indexing)
    err = np.where(usable, err, np.nan)
    return values, err


def _robust_sigma(values: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """1.4826 * MAD of ``values`` about ``centre`` along the last axis (NaN ignored)."""
    mad, _ = nanmedian_lastaxis(np.abs(values - centre[..., None]))
    return MAD_TO_SIGMA * mad


def _median_variance(sigma: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, MEDIAN_VARIANCE_FACTOR * sigma**2 / n, np.nan)


def _truncated_variance(kappa: float) -> float:
    """Variance of a unit Gaussian truncated to [-kappa, kappa]."""
    if not math.isfinite(kappa):
        return 1.0
    inside = math.erf(kappa / math.sqrt(2))
    density = math.exp(-0.5 * kappa * kappa) / math.sqrt(2 * math.pi)
    return 1.0 - 2 * kappa * density / inside


def _check_fit_params(
    sigma_clip: object, max_iterations: object, weighted: object
) -> tuple[float | None, int, bool]:
    if sigma_clip is not None and (
        not isinstance(sigma_clip, numbers.Real)
        or isinstance(sigma_clip, bool)
        or not sigma_clip > 0
    ):
        raise InputError(
            f"sigma_clip must be a positive number of sigmas (e.g. 3.0), or None to fit "
            f"without clipping; got {sigma_clip!r}."
        )
    if (
        not isinstance(max_iterations, numbers.Integral)
        or isinstance(max_iterations, bool)
        or max_iterations < 0
    ):
        raise InputError(
            f"max_iterations must be a non-negative integer (0 fits once without clipping); "
            f"got {max_iterations!r}."
        )
    if not isinstance(weighted, bool | np.bool_):
        raise InputError(f"weighted must be True or False; got {weighted!r}.")
    return (None if sigma_clip is None else float(sigma_clip)), int(max_iterations), bool(weighted)


def _scores(
    resid: np.ndarray,
    w: np.ndarray,
    usable: np.ndarray,
    k: int,
    weighted: bool,
) -> np.ndarray:
    """Distance of each residual from the series' median residual, in robust sigmas.

    The scale is 1.4826 * MAD of all usable residuals of the series (divided
    by the errors when ``weighted``), times ``sqrt(n / (n - k))`` for the
    ``k`` fitted coefficients; the rms where the MAD is zero.  Taking it from
    all usable pixels rather than the kept ones stops it shrinking from pass
    to pass (the MAD ignores outliers anyway).  Distances are measured from
    the median residual, not from zero, so that a fit dragged by strong
    outliers (which moves the good pixels' residuals together) still tells
    the outliers apart.  NaN for pixels that are not usable.
    """
    if weighted:
        resid = resid * np.sqrt(w)
    resid = np.where(usable, resid, np.nan)
    centre, n = nanmedian_lastaxis(resid)
    deviation = np.abs(resid - centre[:, None])
    mad, _ = nanmedian_lastaxis(deviation)
    with np.errstate(invalid="ignore", divide="ignore"):
        dof_scale = np.where(n > k, np.sqrt(n / np.maximum(n - k, 1)), np.inf)
        sigma = MAD_TO_SIGMA * mad * dof_scale
        rms = np.sqrt(np.nansum(resid**2, axis=1) / np.maximum(n - k, 1))
        sigma = np.where(sigma > 0, sigma, rms)
        # sigma == 0 (an exact fit): nothing stands out.
        return np.where(sigma[:, None] > 0, deviation / sigma[:, None], 0.0 * deviation)


def _lad_fit(
    design: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    keep: np.ndarray,
    coeffs: np.ndarray,
    iterations: int = _LAD_ITERATIONS,
) -> np.ndarray:
    """Least-absolute-deviation coefficients by iteratively reweighted least squares.

    Minimises ``sum |sqrt(w) * residual|`` over the kept pixels, starting
    from ``coeffs``.  Used only as a robust starting point for clipping.
    """
    sw = np.sqrt(w) * keep
    for _ in range(iterations):
        z = np.abs(y - coeffs @ design.T) * sw
        floor = 1e-6 * z.sum(axis=1, keepdims=True) / np.maximum(keep.sum(axis=1, keepdims=True), 1)
        weights = w * keep / np.maximum(z, floor + 1e-300)
        # The solution does not change with a common factor; keep the weights <= 1.
        weights /= np.maximum(weights.max(axis=1, keepdims=True), 1e-300)
        coeffs, _, _ = batched_wls(design, y, weights)
    return coeffs


def _clip(
    design: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    keep: np.ndarray,
    coeffs: np.ndarray,
    inverse: np.ndarray,
    nmin: int,
    sigma_clip: float,
    max_iterations: int,
    weighted: bool,
) -> None:
    """Iterative sigma clipping of least-squares fits; updates keep, coeffs, inverse in place.

    ``keep`` holds the usable pixels of the series that have enough of them
    (the others are all False and left alone) and ``coeffs``/``inverse`` the
    fits to them.  Each pass keeps the usable pixels within the limits of
    :func:`_scores` around the current fit, never fewer than ``nmin``, and
    refits only the series whose kept pixels changed; a pixel clipped in one
    pass may come back in the next once the fit is no longer dragged by an
    outlier.  A series whose pixels would go back to those of the pass
    before (a pixel flipping at the limit) stops where it is.  Series in which the first pass finds an outlier beyond twice
    the limit start from a least-absolute-deviation fit instead of the
    least-squares one, which strong outliers can pull far enough to hide them
    among good pixels.
    """
    k = design.shape[1]
    usable = keep.copy()
    active = np.flatnonzero(usable.any(axis=1))
    score = _scores(y[active] - coeffs[active] @ design.T, w[active], usable[active], k, weighted)
    new_keep = usable[active] & (score <= sigma_clip)
    # Only strong outliers drag a fit far: where one lies beyond twice the
    # clipping limit, clip around a least-absolute-deviation fit instead.
    restart = (usable[active] & (score > 2 * sigma_clip)).any(axis=1)
    if restart.any():
        s = active[restart]
        lad = _lad_fit(design, y[s], w[s], usable[s], coeffs[s])
        score = _scores(y[s] - lad @ design.T, w[s], usable[s], k, weighted)
        new_keep[restart] = usable[s] & (score <= sigma_clip)
    previous = usable.copy()
    for iteration in range(max_iterations):
        if iteration:
            score = _scores(
                y[active] - coeffs[active] @ design.T, w[active], usable[active], k, weighted
            )
            new_keep = usable[active] & (score <= sigma_clip)
            restart = np.zeros(active.size, dtype=bool)
        kept = keep[active]
        too_few = new_keep.sum(axis=1) < nmin
        new_keep[too_few] = kept[too_few]
        changed = (new_keep != kept).any(axis=1) | restart
        if iteration:
            # A pixel near the limit can flip in and out forever: a series
            # that would go back to its previous pixels has converged.
            changed &= (new_keep != previous[active]).any(axis=1)
        active = active[changed]
        if active.size == 0:
            break
        previous[active] = keep[active]
        keep[active] = new_keep[changed]
        coeffs[active], inverse[active], _ = batched_wls(
            design, y[active], w[active] * keep[active]
        )


def _fit_block_numpy(
    design: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    usable: np.ndarray,
    nmin: int,
    sigma_clip: float | None,
    max_iterations: int,
    weighted: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit and clip series (rows of y) with whole-array operations.

    Returns coefficients, ``(A^T W A)^-1``, the reduced chi-square of the kept
    pixels (NaN without degrees of freedom) and whether a series had enough
    usable pixels.
    """
    k = design.shape[1]
    enough = usable.sum(axis=1) >= nmin
    # zero weight for the rest: no fit, and no per-series fallback in batched_wls
    keep = usable & enough[:, None]
    coeffs, inverse, _ = batched_wls(design, y, w * keep)
    if sigma_clip is not None and max_iterations > 0:
        _clip(design, y, w, keep, coeffs, inverse, nmin, sigma_clip, max_iterations, weighted)
    resid = y - coeffs @ design.T
    chi2 = np.sum(w * keep * resid**2, axis=1)
    dof = keep.sum(axis=1) - k
    with np.errstate(invalid="ignore", divide="ignore"):
        reduced = np.where(dof > 0, chi2 / np.maximum(dof, 1), np.nan)
    return coeffs, inverse, reduced, enough


def _fit_block(
    design: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    usable: np.ndarray,
    nmin: int,
    sigma_clip: float | None,
    max_iterations: int,
    weighted: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_fit_block_numpy` by the compiled per-series kernel when numba is there.

    The kernel (:mod:`exomiri.steps._jit_background`) runs the same algorithm
    one series at a time, about ten times faster; its sums run in another
    order, so results agree with the numpy code to float64 rounding.  Series
    it cannot fit (an exactly singular normal matrix) are refitted here.
    """
    try:
        from ..steps._jit_background import fit_series
    except ImportError:  # pragma: no cover - numba missing
        return _fit_block_numpy(design, y, w, usable, nmin, sigma_clip, max_iterations, weighted)
    coeffs, inverse, reduced, enough, fallback = fit_series(
        np.ascontiguousarray(design),
        np.ascontiguousarray(y),
        np.ascontiguousarray(w),
        np.ascontiguousarray(usable),
        int(nmin),
        np.inf if sigma_clip is None else float(sigma_clip),
        int(max_iterations),
        bool(weighted),
        sigma_clip is not None,
    )
    if fallback.any():
        rows = np.flatnonzero(fallback)
        part = _fit_block_numpy(
            design, y[rows], w[rows], usable[rows], nmin, sigma_clip, max_iterations, weighted
        )
        coeffs[rows], inverse[rows], reduced[rows], enough[rows] = part
    return coeffs, inverse, reduced, enough


def _polynomial_background(
    frames: BackgroundInput,
    order: int,
    sigma_clip: float | None,
    max_iterations: int,
    weighted: bool,
) -> BackgroundModel:
    """Clipped least-squares polynomial in the column, per (integration, row).

    The basis is Legendre polynomials of the column mapped onto [-1, 1] over
    the whole frame (for order 1: ``[1, (col - c0) / s]`` with ``c0`` the
    centre column and ``s`` the half-width), which keeps the normal equations
    well conditioned.

    Clipping (see :func:`_clip` and :func:`_scores`): each pass keeps the
    usable pixels whose residual (divided by its error when ``weighted``)
    lies within ``sigma_clip`` robust sigmas (``1.4826 * MAD`` of the
    series' residuals, times ``sqrt(n / (n - k))`` for the ``k`` fitted
    coefficients) of the median residual, and refits only the series whose
    kept pixels changed; passes stop after ``max_iterations`` or when nothing
    changes.  Series with outliers start from a least-absolute-deviation fit
    so that strong outliers cannot drag the first fit over good pixels.
    Clipping never leaves a series with fewer pixels than a fit needs.

    Covariance: unweighted, ``s**2 (A^T A)^-1`` with ``s**2`` the residual
    variance of the kept pixels (``n - k`` degrees of freedom); weighted
    (``1/err**2``), ``(A^T W A)^-1`` times ``max(1, chi2 / (n - k))``.
    With clipping, ``s**2`` and ``chi2`` are divided by the variance of a
    unit Gaussian truncated at ``+-sigma_clip`` (0.973 for 3), since the
    kept pixels are such a sample.
    A series needs ``k + 1`` usable pixels (``k`` when weighted), else its
    coefficients and covariance are NaN.
    """
    region, columns = _check_frames(frames)
    if not isinstance(order, numbers.Integral) or isinstance(order, bool) or order < 0:
        raise InputError(f"order must be a non-negative integer; got {order!r}.")
    order = int(order)
    k = order + 1
    nmin = k if weighted else k + 1
    m = int(region.sum())
    if m < nmin:
        raise InputError(
            f"A polynomial of order {order} needs at least {nmin} background columns per row; "
            f"the region has {m}. Widen the background region or lower the order."
        )
    basis = legendre_design(columns, order, domain=(columns.min(), columns.max()))
    design = basis[region]  # (m, k)

    nints, nrows, _ = frames.data.shape
    coeffs_out = np.empty((nints, nrows, k))
    cov_out = np.empty((nints, nrows, k, k))

    def fit(block: slice) -> None:
        values, err = _region_pixels(frames, region, block, weighted)
        nb = values.shape[0]
        y = values.reshape(nb * nrows, m)
        usable = ~np.isnan(y)
        y = np.where(usable, y, 0.0)
        if weighted:
            with np.errstate(invalid="ignore", divide="ignore"):
                w = np.where(usable, 1.0 / err.reshape(nb * nrows, m) ** 2, 0.0)
        else:
            w = usable.astype(np.float64)
        coeffs, inverse, reduced, enough = _fit_block(
            design, y, w, usable, nmin, sigma_clip, max_iterations, weighted
        )
        if sigma_clip is not None and max_iterations > 0:
            # Kept pixels lie within +-sigma_clip sigma: undo the truncation.
            reduced = reduced / _truncated_variance(sigma_clip)
        scale = (
            np.where(np.isfinite(reduced), np.maximum(1.0, reduced), 1.0) if weighted else reduced
        )
        cov = inverse * scale[:, None, None]
        coeffs[~enough] = np.nan
        cov[~enough] = np.nan
        coeffs_out[block] = coeffs.reshape(nb, nrows, k)
        cov_out[block] = cov.reshape(nb, nrows, k, k)

    # Blocks are independent (every series is fitted on its own): run them on threads.
    thread_map(fit, _blocks(nints, nrows * m * 8 * _TEMPORARIES))
    return BackgroundModel(basis=basis, coeffs=coeffs_out, cov=cov_out)


# --------------------------------------------------------------------------
# methods


class Constant:
    """One background level per integration: the median of all region pixels.

    Not recommended for LRS slitless data, whose background changes along
    the dispersion axis.  Variance ``(pi/2) sigma**2 / n`` with sigma the
    robust scatter (1.4826 * MAD) of the integration's region pixels, or,
    with fewer than ``MIN_ROW_PIXELS`` usable pixels, their median ``err``.
    """

    name = "constant"
    description = "One median level per integration over all background-region pixels."

    def estimate(self, frames: BackgroundInput) -> BackgroundModel:
        region, _ = _check_frames(frames)
        nints, nrows, ncols = frames.data.shape
        m = int(region.sum())
        coeffs = np.empty((nints, 1, 1))
        cov = np.empty((nints, 1, 1, 1))
        for block in _blocks(nints, nrows * m * 8 * _TEMPORARIES):
            values, err = _region_pixels(frames, region, block)
            nb = values.shape[0]
            values = values.reshape(nb, nrows * m)
            level, n = nanmedian_lastaxis(values)
            sigma = _robust_sigma(values, level)
            few = n < MIN_ROW_PIXELS
            if few.any():
                err_sigma, _ = nanmedian_lastaxis(err.reshape(nb, nrows * m))
                sigma = np.where(few, err_sigma, sigma)
            coeffs[block, 0, 0] = level
            cov[block, 0, 0, 0] = _median_variance(sigma, n)
        return BackgroundModel(basis=np.ones((ncols, 1)), coeffs=coeffs, cov=cov)


class RowWise:
    """Median of the region pixels of each row, constant across columns.

    Variance ``(pi/2) sigma**2 / n`` per row.  Sigma is the row's robust
    scatter (1.4826 * MAD) when the row has at least ``MIN_ROW_PIXELS``
    usable pixels; otherwise the integration's: the MAD of every row's
    deviations from its own median, each scaled by ``sqrt(n / (n - 1))`` for
    the median taken from the same ``n`` pixels (rows with ``n >= 2``), as
    long as that pools at least ``MIN_ROW_PIXELS`` deviations; failing that,
    the median ``err`` of the row's pixels.
    """

    name = "row_wise"
    description = "Median of the background-region pixels of each row (constant across columns)."

    def estimate(self, frames: BackgroundInput) -> BackgroundModel:
        region, _ = _check_frames(frames)
        nints, nrows, ncols = frames.data.shape
        m = int(region.sum())
        coeffs = np.empty((nints, nrows, 1))
        cov = np.empty((nints, nrows, 1, 1))
        for block in _blocks(nints, nrows * m * 8 * _TEMPORARIES):
            values, err = _region_pixels(frames, region, block)
            nb = values.shape[0]
            level, n = nanmedian_lastaxis(values)  # (nb, nrows)
            deviation = values - level[..., None]
            mad, _ = nanmedian_lastaxis(np.abs(deviation))
            sigma = MAD_TO_SIGMA * mad
            few = n < MIN_ROW_PIXELS
            if few.any():
                with np.errstate(invalid="ignore", divide="ignore"):
                    scale = np.where(n >= 2, np.sqrt(n / np.maximum(n - 1, 1)), np.nan)
                pooled = np.abs(deviation) * scale[..., None]
                pooled_mad, pooled_n = nanmedian_lastaxis(pooled.reshape(nb, nrows * m))
                sigma_int = np.where(pooled_n >= MIN_ROW_PIXELS, MAD_TO_SIGMA * pooled_mad, np.nan)
                err_sigma, _ = nanmedian_lastaxis(err)
                fallback = np.where(np.isfinite(sigma_int)[:, None], sigma_int[:, None], err_sigma)
                sigma = np.where(few, fallback, sigma)
            coeffs[block, :, 0] = level
            cov[block, :, 0, 0] = _median_variance(sigma, n)
        return BackgroundModel(basis=np.ones((ncols, 1)), coeffs=coeffs, cov=cov)


class ColWise:
    """A straight line across columns, fitted to every region pixel of each row.

    Weighted least squares (unit weights unless ``weighted``) with iterative
    sigma clipping; see :func:`_polynomial_background` for the details of the
    basis ``[1, (col - c0) / s]``, the clipping and the covariance.
    """

    name = "col_wise"
    description = (
        "Sigma-clipped least-squares line across columns through each row's region pixels."
    )

    def estimate(
        self,
        frames: BackgroundInput,
        *,
        sigma_clip: float | None = 3.0,
        max_iterations: int = 5,
        weighted: bool = False,
    ) -> BackgroundModel:
        sigma_clip, max_iterations, weighted = _check_fit_params(
            sigma_clip, max_iterations, weighted
        )
        return _polynomial_background(frames, 1, sigma_clip, max_iterations, weighted)


class Polynomial:
    """A polynomial of the column (Legendre basis), fitted to each row's region pixels.

    As :class:`ColWise` with any ``order`` (``order=1`` is ``col_wise``,
    ``order=0`` a clipped mean).
    """

    name = "polynomial"
    description = "Sigma-clipped least-squares polynomial across columns for each row."

    def estimate(
        self,
        frames: BackgroundInput,
        *,
        order: int = 2,
        sigma_clip: float | None = 3.0,
        max_iterations: int = 5,
        weighted: bool = False,
    ) -> BackgroundModel:
        sigma_clip, max_iterations, weighted = _check_fit_params(
            sigma_clip, max_iterations, weighted
        )
        return _polynomial_background(frames, order, sigma_clip, max_iterations, weighted)


@hookimpl
def exomiri_register_background_methods(register):
    register(Constant)
    register(RowWise)
    register(ColWise)
    register(Polynomial)
