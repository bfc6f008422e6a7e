"""Host-side background kernels: region selection, row smoothing, subtraction.

The background *methods* (:mod:`exomiri.builtin.background` and plugins)
estimate a :class:`~exomiri.products.BackgroundModel`; the functions here are
what the host does around them:

* :func:`region_mask` turns user column ranges into the boolean ``region``
  a method receives;
* :func:`smooth_rows` applies the optional running median along the
  dispersion axis to a model's coefficients;
* :func:`subtract` removes a model from a cube and propagates its variance
  into ``err``.

:func:`nanmedian_lastaxis` is the fast NaN-ignoring median the built-in
methods share.  Everything takes and returns plain arrays and never modifies
its inputs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from ..exceptions import InputError
from ..products import BackgroundModel
from ._pool import spans, thread_map

__all__ = [
    "DEFAULT_REGIONS",
    "nanmedian_lastaxis",
    "region_mask",
    "smooth_rows",
    "subtract",
]

#: Default background columns (half-open ranges) in the ``SLITLESSPRISM`` frame.
DEFAULT_REGIONS: tuple[tuple[int, int], ...] = ((8, 17), (56, 72))

_EXAMPLE = "e.g. regions=[(8, 17), (56, 72)]"
#: Rough bound on the temporaries of :func:`smooth_rows` per block of integrations.
_SMOOTH_BLOCK_BYTES = 32 * 2**20
#: Integrations per block of :func:`subtract` (blocks run on threads).
_SUBTRACT_BLOCK = 32


def nanmedian_lastaxis(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median along the last axis ignoring NaN, and the number of finite values.

    Equivalent to ``np.nanmedian(values, axis=-1)`` (NaN where a slice has no
    finite value, without a warning) but sorts once instead of going through
    masked arrays, which is several times faster for short last axes.
    Infinite values count as values; callers pass NaN for excluded pixels.
    """
    values = np.asarray(values, dtype=np.float64)
    n = np.count_nonzero(~np.isnan(values), axis=-1)
    if values.shape[-1] == 0:
        return np.full(values.shape[:-1], np.nan), n
    ordered = np.sort(values, axis=-1)  # NaN sort to the end
    # n == 0 reads element 0 and is replaced by NaN below.
    lo = np.maximum((n - 1) // 2, 0)[..., None]
    hi = (n // 2)[..., None]
    hi = np.minimum(hi, values.shape[-1] - 1)
    med = 0.5 * (
        np.take_along_axis(ordered, lo, axis=-1)[..., 0]
        + np.take_along_axis(ordered, hi, axis=-1)[..., 0]
    )
    med = np.where(n > 0, med, np.nan)
    return med, n


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def region_mask(regions: Sequence[Sequence[int]], ncols: int) -> np.ndarray:
    """Boolean (ncols,) mask of the background columns.

    ``regions`` is a sequence of half-open ``(start, stop)`` column pairs, as
    in ``[(8, 17), (56, 72)]`` (columns 8-16 and 56-71).  Pairs may overlap.
    Raises :class:`~exomiri.InputError` for anything else: a string, a single
    pair given without the outer list, a pair with start >= stop, a pair
    outside ``[0, ncols)``, or no columns at all.
    """
    if not _is_int(ncols) or ncols < 1:
        raise InputError(f"ncols must be a positive integer; got {ncols!r}.")
    if isinstance(regions, str | bytes):
        raise InputError(
            f"Background regions must be (start, stop) column pairs, not the string "
            f"{regions!r}; {_EXAMPLE}."
        )
    try:
        items = list(regions)
    except TypeError:
        raise InputError(
            f"Background regions must be a sequence of (start, stop) column pairs; "
            f"got {regions!r}; {_EXAMPLE}."
        ) from None
    if len(items) == 2 and all(_is_int(v) for v in items):
        raise InputError(
            f"Background regions {regions!r} look like a single (start, stop) pair; "
            f"wrap it in a list: regions=[{tuple(int(v) for v in items)!r}]."
        )
    if not items:
        raise InputError(f"No background regions given; {_EXAMPLE}.")
    mask = np.zeros(ncols, dtype=bool)
    for pair in items:
        if isinstance(pair, str | bytes):
            raise InputError(
                f"Background region {pair!r} is a string; give (start, stop) integer "
                f"column pairs, {_EXAMPLE}."
            )
        try:
            values = list(pair)
        except TypeError:
            raise InputError(
                f"Background region {pair!r} is not a (start, stop) pair; {_EXAMPLE}."
            ) from None
        if len(values) != 2 or not all(_is_int(v) for v in values):
            raise InputError(
                f"Background region {pair!r} is not a (start, stop) pair of integer "
                f"columns; {_EXAMPLE}."
            )
        start, stop = int(values[0]), int(values[1])
        if start >= stop:
            raise InputError(
                f"Background region ({start}, {stop}) is empty: start must be less than "
                f"stop (ranges are half-open, ({start}, {start + 1}) is column {start} alone)."
            )
        if start < 0 or stop > ncols:
            raise InputError(
                f"Background region ({start}, {stop}) lies outside the {ncols} columns of "
                f"this subarray; use columns within [0, {ncols}) (stop may be {ncols})."
            )
        mask[start:stop] = True
    return mask


def _smoothing_halfwidth(smoothing_length: object) -> int | None:
    if smoothing_length is None:
        return None
    if not _is_int(smoothing_length) or smoothing_length < 1:
        raise InputError(
            f"smoothing_length must be a positive integer number of rows (or None for "
            f"no smoothing); got {smoothing_length!r}."
        )
    half = (int(smoothing_length) - 1) // 2
    return half or None


def smooth_rows(
    coeffs: np.ndarray, cov: np.ndarray, smoothing_length: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Running median of background coefficients along the row (dispersion) axis.

    ``coeffs`` is (nints, nrows, k), ``cov`` (nints, nrows, k, k), as in a
    :class:`~exomiri.products.BackgroundModel`.  Row ``r`` becomes the median
    over rows ``max(0, r - h) .. min(nrows - 1, r + h)`` (inclusive) with
    ``h = (smoothing_length - 1) // 2``: the window is truncated at the
    edges, and an even length acts like the odd length below it.  Each
    coefficient is smoothed on its own; with one coefficient (``constant``,
    ``row_wise``) that is the running median of the background itself.  NaN
    rows (no usable pixels) are ignored inside a window, so smoothing also
    fills them from their neighbours; a window of NaN rows stays NaN.

    The covariance is an approximation: the mean covariance of the ``n``
    finite rows in the window times ``min(1, pi / (2 n))``, the variance of
    the median of ``n`` independent values relative to one value's (exact
    for ``n = 1``, the large-``n`` limit otherwise).  It ignores
    correlations between rows.

    ``smoothing_length`` None or 1 (or 2) returns the inputs unchanged (the
    same objects).  Inputs are never modified.
    """
    half = _smoothing_halfwidth(smoothing_length)
    if half is None:
        return coeffs, cov
    coeffs_in = np.asarray(coeffs, dtype=np.float64)
    cov_in = np.asarray(cov, dtype=np.float64)
    if coeffs_in.ndim != 3 or cov_in.shape != (*coeffs_in.shape, coeffs_in.shape[2]):
        raise InputError(
            f"smooth_rows needs coeffs (nints, nrows, k) and cov (nints, nrows, k, k); got "
            f"{coeffs_in.shape} and {cov_in.shape}."
        )
    nints, nrows, k = coeffs_in.shape
    window = 2 * half + 1
    # Sorting copies the (rows, k, window) views: bound that per block.
    step = max(1, _SMOOTH_BLOCK_BYTES // (nrows * k * window * 8 * 3))
    smoothed = np.empty_like(coeffs_in)
    new_cov = np.empty_like(cov_in)
    for start in range(0, nints, step):
        block = slice(start, min(start + step, nints))
        smoothed[block], new_cov[block] = _smooth_block(coeffs_in[block], cov_in[block], half)
    return smoothed, new_cov


def _smooth_block(coeffs: np.ndarray, cov: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    nints, nrows, k = coeffs.shape
    window = 2 * half + 1
    # A row takes part only if all its coefficients are finite (methods give
    # NaN for all of them together); its covariance only if that is finite too.
    finite = np.isfinite(coeffs).all(axis=2)  # (nints, nrows)
    flat_cov = cov.reshape(nints, nrows, k * k)
    with_cov = finite & np.isfinite(flat_cov).all(axis=2)

    def windows(a: np.ndarray, fill: float) -> np.ndarray:
        """(nints, nrows, ..., window) views of ``a`` padded with ``fill`` along rows."""
        pad = [(0, 0), (half, half)] + [(0, 0)] * (a.ndim - 2)
        padded = np.pad(a, pad, constant_values=fill)
        return np.lib.stride_tricks.sliding_window_view(padded, window, axis=1)

    smoothed, n = nanmedian_lastaxis(windows(np.where(finite[:, :, None], coeffs, np.nan), np.nan))
    n = n[:, :, 0]  # the same for every coefficient
    total = windows(np.where(with_cov[:, :, None], flat_cov, 0.0), 0.0).sum(axis=-1)
    n_cov = windows(with_cov.astype(np.int64), 0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_cov = total / n_cov[:, :, None]
        factor = np.minimum(1.0, (math.pi / 2) / n)
    new_cov = (mean_cov * factor[:, :, None]).reshape(nints, nrows, k, k)
    new_cov[n == 0] = np.nan
    return smoothed, new_cov


def subtract(
    data: np.ndarray,
    err: np.ndarray,
    model: BackgroundModel,
    index: slice | np.ndarray = slice(None),
) -> tuple[np.ndarray, np.ndarray]:
    """Subtract a background model and add its variance to the errors.

    ``data``/``err`` are (nints, nrows, ncols) for the integrations
    ``index`` selects from ``model``.  Returns float32 ``data - background``
    and ``sqrt(err**2 + variance)``; rows where the model is NaN come out NaN
    (the host flags them).  Where ``err`` is not finite and positive (an
    unusable error) the new error is NaN: adding the background's variance
    must not make such a pixel look usable.  Inputs are never modified.
    """
    data = np.asarray(data)
    err = np.asarray(err)
    if data.ndim != 3 or err.shape != data.shape:
        raise InputError(
            f"subtract needs data and err of one (nints, nrows, ncols) shape; got "
            f"{data.shape} and {err.shape}."
        )
    nints, nrows, ncols = data.shape
    coeffs, cov = model.coeffs[index], model.cov[index]
    if coeffs.shape[0] != nints or coeffs.shape[1] not in (1, nrows) or model.basis.shape[0] != ncols:
        raise InputError(
            f"The background model gives {(coeffs.shape[0], coeffs.shape[1], model.basis.shape[0])} "
            f"for these integrations but the data are {data.shape}; estimate the model on the "
            "same frames (and index)."
        )
    try:
        from ._jit_background import subtract_model_into
    except ImportError:  # pragma: no cover - numba missing
        background = model.evaluate(index)
        variance = model.variance(index)
        with np.errstate(invalid="ignore"):
            out = (data.astype(np.float64) - background).astype(np.float32)
            err_out = np.sqrt(err.astype(np.float64) ** 2 + variance).astype(np.float32)
            err_out[~(np.isfinite(err) & (err > 0))] = np.nan
        return out, err_out
    # One pass over the pixels (numba), without float64 background and variance cubes,
    # blocks of integrations on threads (each pixel's result depends on that pixel only).
    # numba compiles for native byte order only (FITS arrays are big-endian).
    data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("="))
    err = np.ascontiguousarray(err, dtype=err.dtype.newbyteorder("="))
    coeffs = np.ascontiguousarray(coeffs, dtype=np.float64)
    cov = np.ascontiguousarray(cov, dtype=np.float64)
    basis = np.ascontiguousarray(model.basis, dtype=np.float64)
    out = np.empty(data.shape, dtype=np.float32)
    err_out = np.empty(data.shape, dtype=np.float32)

    def work(span: tuple[int, int]) -> None:
        part = slice(*span)
        subtract_model_into(
            data[part], err[part], coeffs[part], cov[part], basis, out[part], err_out[part]
        )

    thread_map(work, spans(nints, _SUBTRACT_BLOCK))
    return out, err_out
