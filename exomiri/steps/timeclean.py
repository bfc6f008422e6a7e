"""Time-domain outlier rejection: every value against the running median of its neighbours in time.

The spatial :mod:`~exomiri.steps.clean` judges a pixel against its own frame,
so a moderate cosmic-ray hit on the peak of the trace, where the profile is
sharpest, can pass as signal.  In time the same pixel is a quiet series: this
kernel compares each integration's value with the median of its neighbours
in time and replaces values that deviate by more than ``threshold`` standard
deviations.  It works on any array whose first axis is time: a cube of pixels
(nints, nrows, ncols) or extracted spectra (nints, nwave).

The model
---------
For every series ``x[t]`` (one pixel, or one spectral channel) with errors
``e[t]``:

1. Common mode.  What changes the whole frame together (the transit, a
   settling ramp, a flux step between segments) is divided out first:
   ``c[t]`` is the median, over the bright series (time-median at least
   :data:`BRIGHT_SNR` times the median error and :data:`BRIGHT_FRACTION` of
   the brightest: starlight, not a background that does not transit), of
   ``x[t] / median_t(x)``, normalised to a median of one.  The running median
   then follows a transit of any depth and any ingress, however sharp,
   because the series ``y = x / c`` no longer has one.  Without enough bright
   series ``c = 1``.
2. Shared patterns.  Pointing jitter moves light between pixels from one
   integration to the next; on the flank of the trace this is larger than
   the photon noise and no running median can follow it.  Series whose
   robust scatter between consecutive integrations exceeds their errors by
   :data:`EXCESS_NOISE` are the ones it affects.  Their residuals from a
   first running median (clipped at the threshold, in units of their
   errors) give, by a truncated SVD, the ``n_components`` leading patterns in
   time and their weights over the series; the same weights applied to the
   series themselves give the patterns at full band (the residuals saw them
   high-passed).  Each such series' pattern amplitudes ``b`` are fitted to
   its residuals and ``U b`` (U the full-band patterns) is subtracted:
   ``y' = y - U b``.
3. Running median ``m[t]`` of ``y'`` over the ``window`` integrations centred
   on t, the value itself left out, as are NaN and masked values.  Within
   ``window // 2`` of an end the window keeps its length and stops at the
   end.  A median passes any locally monotone signal, so what the common mode
   leaves (a chromatic transit, slow drifts) is followed too.
4. Scale.  Each value has noise ``s[t] = max(e[t] / c[t], S / f)``, where
   ``S = 1.4826 * median_t |y' - m|`` is the robust scatter of the series'
   residuals and ``f = sqrt(1 + pi / (2 n))`` the growth of a residual's
   spread by the noise of a median of n neighbours.  S protects against an
   ``err`` that is too small; ``err`` against a series whose few deviations
   would set too small an S.
5. A value is replaced when ``|y' - m| > threshold * s * f`` and its window
   holds at least :data:`MIN_NEIGHBOURS` usable neighbours.  The replacement
   is ``(m + U b) * c`` with m and b recomputed without the replaced values;
   its error is ``c * sqrt(s**2 min(1, pi / (2 k)) + s**2 - (e / c)**2)``:
   the noise of a median of the k neighbours used, plus the scatter of the
   series beyond its errors, which the model may not follow.

Both signs are replaced: a hit raises a value, a dropout lowers it.  Values
that are NaN or masked are never judged and never changed.  The inputs are
never modified.

Cost
----
Series are processed in blocks of about 16 MiB of sliding windows on a
thread pool; each block sorts its windows once, twice for the series fitted
for the shared patterns.  The result does not depend on the number of
threads.  About 6 ms of CPU per integration of a 416 x 72 cube.
"""

from __future__ import annotations

import numbers
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..exceptions import InputError
from .clean import _default_threads
from .extract import nanmedian

__all__ = [
    "BRIGHT_FRACTION",
    "BRIGHT_SNR",
    "EXCESS_NOISE",
    "MIN_NEIGHBOURS",
    "TimeCleanResult",
    "clean_series",
    "common_mode",
    "running_median",
    "systematics_basis",
]

#: Series that set the common mode: a time-median of at least this many times
#: their median error ...
BRIGHT_SNR = 20.0
#: ... and at least this fraction of the 99th percentile of all time-medians
#: (the star's light, not a bright background that does not transit).
BRIGHT_FRACTION = 0.1
#: Series whose scatter between consecutive integrations exceeds their error by
#: this factor (robustly) are fitted for the shared patterns, which are taken
#: from them.
EXCESS_NOISE = 1.2
#: With fewer such series than this: no common mode (c = 1), no patterns.
MIN_SERIES = 10
#: At most this many series (evenly spread) set the common mode and the patterns.
MAX_SERIES = 4000
#: A value is judged only when its window holds at least this many usable neighbours.
MIN_NEIGHBOURS = 3
#: MAD -> standard deviation for Gaussian noise.
_MAD_TO_SIGMA = 1.482602218505602
#: Bytes of sliding windows per block of series.
_BLOCK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class TimeCleanResult:
    """Output of :func:`clean_series`.

    ``values``/``err``/``replaced`` have the input's shape; ``scatter`` (the
    input's shape without the time axis) is each series' robust noise per
    value, ``S / f`` for a full window, in units of the input divided by the
    common mode (compare it with ``err``);
    ``common_mode`` (nints,) is c; ``basis`` (nints, k) the shared patterns U.
    """

    values: np.ndarray
    err: np.ndarray
    replaced: np.ndarray
    scatter: np.ndarray
    common_mode: np.ndarray
    basis: np.ndarray


# --------------------------------------------------------------------------- validation


def check_window(window) -> int:
    """``window`` as an int, or an InputError that says how to fix it."""
    hint = "Give an odd number of integrations >= 3, e.g. window=11."
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise InputError(f"window={window!r} is not a whole number. {hint}")
    if int(window) < 3 or int(window) % 2 == 0:
        raise InputError(f"window={window!r} must be odd and at least 3. {hint}")
    return int(window)


def check_threshold(threshold) -> float:
    """``threshold`` as a float, or an InputError that says how to fix it."""
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not np.isfinite(threshold)
        or threshold <= 0
    ):
        raise InputError(
            f"threshold={threshold!r} must be a positive number of standard deviations, "
            "e.g. threshold=5.0."
        )
    return float(threshold)


def check_components(n_components) -> int:
    """``n_components`` as an int, or an InputError that says how to fix it."""
    if (
        isinstance(n_components, bool)
        or not isinstance(n_components, numbers.Integral)
        or n_components < 0
    ):
        raise InputError(
            f"n_components={n_components!r} must be a whole number >= 0 (0: no shared "
            "patterns), e.g. n_components=3."
        )
    return int(n_components)


def _array(name: str, array, shape=None) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim < 1:
        raise InputError(f"{name} must be an array with time as its first axis, got a scalar.")
    if shape is not None and array.shape != shape:
        raise InputError(
            f"{name} has shape {array.shape} but the values have shape {shape}; they must match."
        )
    if name == "mask":
        if array.dtype != bool:
            raise InputError(
                f"mask must be boolean (True where a value must not be used), got dtype "
                f"{array.dtype}."
            )
    elif not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"{name} must hold real numbers, got dtype {array.dtype}.")
    return array


# --------------------------------------------------------------------------- pieces


def _window_start(n: int, window: int) -> np.ndarray:
    """First integration of each integration's window (centred, stopped at the ends)."""
    return np.clip(np.arange(n) - window // 2, 0, n - window)


def running_median(values, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Median of each value's neighbours in time, and how many there are.

    ``values`` (n, ...) with time first; NaN values are left out.  The
    window holds ``window`` integrations centred on each one (within
    ``window // 2`` of an end it keeps its length and stops at the end); the
    value itself is left out, so a residual ``value - median`` is not pulled
    towards zero by the value it judges.  Returns the medians (the input's
    float dtype, NaN where there is no neighbour) and the neighbour counts
    (int64), both of the input's shape.
    """
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    shape = values.shape
    n = shape[0]
    x = values.reshape(n, -1)
    k = x.shape[1]
    w = min(int(window), n)
    ordered = np.array(np.lib.stride_tricks.sliding_window_view(x, w, axis=0), order="C")
    ordered.sort(axis=-1)  # NaN last
    start = _window_start(n, w)
    finite = np.isfinite(x)
    cumulative = np.concatenate([np.zeros((1, k), np.int64), np.cumsum(finite, axis=0)])
    count = (cumulative[w:] - cumulative[:-w])[start] - finite
    # Where the window is full (count == w - 1, the common case) the median's
    # neighbours sit at fixed places of the sorted window: read them by slicing.
    full = w - 1
    lo, hi = (full - 1) // 2, full // 2

    def at(q: int) -> np.ndarray:
        return ordered[:, :, min(q, w - 1)][start]

    with np.errstate(invalid="ignore"):
        low, high = at(lo), at(hi)
        median = np.where(finite & ~(low < x), at(lo + 1), low)
        median += np.where(finite & ~(high < x), at(hi + 1), high)
    median *= 0.5
    partial = np.nonzero(count != full)
    if partial[0].size:
        # Windows with NaN: the p-th smallest neighbour is the window's p-th
        # value, or the next one once the value itself has been passed.
        flat = ordered.reshape(-1)
        base = (start[partial[0]] * k + partial[1]) * w
        own, ok = x[partial], finite[partial]
        m = count[partial]

        def neighbour(p: np.ndarray) -> np.ndarray:
            here = flat[base + p]
            after = flat[base + np.minimum(p + 1, w - 1)]
            with np.errstate(invalid="ignore"):
                return np.where(ok & ~(here < own), after, here)

        value = neighbour(np.maximum((m - 1) // 2, 0)) + neighbour(np.maximum(m // 2, 0))
        value *= 0.5
        value[m == 0] = np.nan
        median[partial] = value
    return median.reshape(shape), count.reshape(shape)


def _levels(x: np.ndarray, e: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Time-median value and time-median error of each series of (n, k)."""
    level = nanmedian(np.where(bad, np.nan, x), axis=0)
    noise = nanmedian(np.where(bad, np.nan, np.abs(e)), axis=0)
    return level, noise


def _bright(level: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Indices of the series that set the common mode."""
    finite = np.isfinite(level)
    if not finite.any():
        return np.zeros(0, dtype=np.int64)
    top = np.percentile(level[finite], 99)
    with np.errstate(invalid="ignore"):
        bright = (level >= BRIGHT_SNR * noise) & (level >= BRIGHT_FRACTION * top) & (level > 0)
    return np.flatnonzero(bright)


def _spread(index: np.ndarray) -> np.ndarray:
    """At most MAX_SERIES of the indices, evenly spread."""
    if index.size <= MAX_SERIES:
        return index
    return index[np.linspace(0, index.size - 1, MAX_SERIES).astype(np.int64)]


def _common_mode(x: np.ndarray, bad: np.ndarray, level: np.ndarray) -> np.ndarray:
    """c from bright series x (n, k) with time-medians ``level``, normalised to a median of one."""
    n = x.shape[0]
    if x.shape[1] < MIN_SERIES:
        return np.ones(n)
    c = nanmedian(np.where(bad, np.nan, x) / level, axis=1)
    if not np.isfinite(c).any():
        return np.ones(n)
    c = c / np.nanmedian(c)
    return np.where(np.isfinite(c) & (c > 0), c, 1.0)


def common_mode(values, err, mask=None) -> np.ndarray:
    """Per integration, the median over the bright series of ``values / median_t(values)``.

    ``values``/``err`` (nints, ...); ``mask`` True where a value must not be
    used.  Bright series have a time-median of at least :data:`BRIGHT_SNR`
    times their median error and at least :data:`BRIGHT_FRACTION` of the
    99th percentile of all time-medians.  Normalised to a median of one; all
    ones when fewer than :data:`MIN_SERIES` series are bright.
    """
    values = _array("values", values)
    err = _array("err", err, values.shape)
    n = values.shape[0]
    x = values.reshape(n, -1).astype(np.float64)
    bad = ~np.isfinite(x)
    if mask is not None:
        bad |= _array("mask", mask, values.shape).reshape(n, -1)
    level, noise = _levels(x, err.reshape(n, -1), bad)
    bright = _spread(_bright(level, noise))
    return _common_mode(x[:, bright], bad[:, bright], level[bright])


def _excess(y: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Robust scatter between consecutive integrations over the expected one, per series."""
    step = _MAD_TO_SIGMA * nanmedian(np.abs(np.diff(y, axis=0)), axis=0) / np.sqrt(2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return step / nanmedian(np.where(np.isnan(y), np.nan, noise), axis=0)


def _inflation(count: np.ndarray) -> np.ndarray:
    """Growth of a residual's spread by the noise of a median of ``count`` neighbours."""
    return np.sqrt(1.0 + np.pi / (2.0 * np.maximum(count, 1)))


def _first_pass(y: np.ndarray, noise: np.ndarray, window: int, threshold: float):
    """Running median of y (n, k), residuals clipped at ``threshold`` robust sigmas, in y's units."""
    median, count = running_median(y, window)
    resid = y - median
    scatter = _MAD_TO_SIGMA * nanmedian(np.abs(resid), axis=0)
    limit = threshold * np.fmax(noise * _inflation(count), scatter)
    return median, np.nan_to_num(np.clip(resid, -limit, limit), nan=0.0)


@dataclass(frozen=True)
class _Patterns:
    """Shared time patterns: ``high`` (n, k) as they appear in residuals from the running
    median, ``full`` (n, k) as they appear in the series; ``fit`` (k, n) = pinv(high)."""

    high: np.ndarray
    full: np.ndarray
    fit: np.ndarray

    @classmethod
    def none(cls, n: int) -> _Patterns:
        return cls(np.zeros((n, 0)), np.zeros((n, 0)), np.zeros((0, n)))

    def shared(self, residuals: np.ndarray) -> np.ndarray:
        """The patterns' part of series whose clipped residuals are ``residuals`` (n, m)."""
        # einsum: tiny contractions that BLAS would spread over threads at a loss
        return np.einsum("tk,km->tm", self.full, np.einsum("kt,tm->km", self.fit, residuals))


def systematics_basis(residuals, n_components: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Leading singular vectors of a matrix (n, m): time patterns (n, k) and weights (m, k).

    A truncated SVD (randomised, with a fixed seed and two power iterations,
    when the matrix is large): the patterns that many series share, such as
    every pixel's response to pointing jitter.  The time patterns are
    orthogonal, each scaled by its singular value; the weights orthonormal.
    """
    z = np.asarray(residuals, dtype=np.float64)
    n, m = z.shape
    k = min(int(n_components), n, m)
    if k <= 0:
        return np.zeros((n, 0)), np.zeros((m, 0))
    if min(n, m) <= 4 * (k + 10):
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        return u[:, :k] * s[:k], vt[:k].T
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(z @ rng.standard_normal((m, k + 10)))
    for _ in range(2):
        q, _ = np.linalg.qr(z @ (z.T @ q))
    u, s, vt = np.linalg.svd(q.T @ z, full_matrices=False)
    return (q @ u[:, :k]) * s[:k], vt[:k].T


def _patterns(y: np.ndarray, noise: np.ndarray, window: int, threshold: float, k: int) -> _Patterns:
    """Shared patterns of series y (n, m) that scatter more than their noise (n, m).

    The residuals from the running median (clipped, in units of the noise)
    give the patterns' weights over series by SVD; applying the same weights
    to the clipped series themselves gives the patterns at full band, which
    the running median of the residuals only saw high-passed.
    """
    n = y.shape[0]
    median, clipped = _first_pass(y, noise, window, threshold)
    unit = nanmedian(np.where(np.isnan(y), np.nan, noise), axis=0)
    unit = np.where(np.isfinite(unit) & (unit > 0), unit, np.inf)
    high, weights = systematics_basis(clipped / unit, k)
    if high.shape[1] == 0:
        return _Patterns.none(n)
    series = np.nan_to_num(median + clipped - nanmedian(y, axis=0))
    full = (series / unit) @ weights
    full -= np.median(full, axis=0)
    dtype = y.dtype
    return _Patterns(
        high=high.astype(dtype), full=full.astype(dtype), fit=np.linalg.pinv(high).astype(dtype)
    )


def _clean_block(x, e, bad, jittery, c, window, threshold, patterns: _Patterns):
    """Clean one block of series: x, e, bad (n, k); jittery (k,) bool; c (n,)."""
    n = x.shape[0]
    y = np.where(bad, np.nan, x / c[:, None])
    noise = np.abs(e) / c[:, None]
    shared = np.zeros_like(y)
    cols = np.flatnonzero(jittery)
    clipped = None
    if patterns.high.shape[1] and cols.size:
        _, clipped = _first_pass(y[:, cols], noise[:, cols], window, threshold)
        shared[:, cols] = patterns.shared(clipped)
    y = y - shared
    median, count = running_median(y, window)
    resid = y - median
    scatter = _MAD_TO_SIGMA * nanmedian(np.abs(resid), axis=0)
    inflation = _inflation(count)
    measured = noise
    noise = np.fmax(noise, scatter[None, :] / inflation)
    with np.errstate(invalid="ignore"):
        flag = (np.abs(resid) > threshold * noise * inflation) & (count >= MIN_NEIGHBOURS)
    values = x.copy()
    errors = e.copy()
    t, j = np.nonzero(flag)
    if t.size:
        if clipped is not None:
            # Fit the patterns again without the replaced values, so that none of a
            # replaced value (up to the clipping level) leaks into its replacement.
            hit = flag[:, cols]
            touched = np.flatnonzero(hit.any(axis=0))
            if touched.size:
                again = np.where(hit[:, touched], 0.0, clipped[:, touched]).astype(y.dtype)
                shared[:, cols[touched]] = patterns.shared(again)
        # Each replaced value's neighbours, without the replaced values.
        w = min(window, n)
        idx = _window_start(n, w)[t][:, None] + np.arange(w)
        others = np.where(flag, np.nan, y)[idx, j[:, None]]
        m = nanmedian(others, axis=1)
        k = np.count_nonzero(~np.isnan(others), axis=1)
        ok = k > 0
        t, j, m, k = t[ok], j[ok], m[ok], k[ok]
        flag = np.zeros_like(flag)
        flag[t, j] = True
        values[t, j] = (m + shared[t, j]) * c[t]
        # The median's noise, plus whatever scatter of the series its err does not explain
        # (which the model may not follow either).
        sigma, photon = noise[t, j], measured[t, j]
        variance = sigma**2 * np.minimum(1.0, np.pi / (2.0 * k)) + (sigma**2 - photon**2)
        errors[t, j] = np.sqrt(variance) * c[t]
    return values, errors, flag, scatter / _inflation(min(window, n) - 1)


def clean_series(
    values,
    err,
    mask=None,
    *,
    window: int = 11,
    threshold: float = 4.0,
    n_components: int = 3,
    normalise: bool = True,
    n_threads: int | None = None,
) -> TimeCleanResult:
    """Replace values that deviate from the running median of their neighbours in time.

    Parameters
    ----------
    values, err : arrays (nints, ...) with time first: a cube (nints, nrows,
        ncols) of pixels or spectra (nints, nwave); any real dtype.
    mask : bool, same shape, True where a value must not be used (not as a
        neighbour, not judged, not changed); NaN values are masked anyway.
    window : odd number of integrations of the running median (>= 3), the
        value itself included: 11 (the value and 5 neighbours on each side)
        by default.  Short enough to follow what the common mode leaves,
        long enough for a stable median.
    threshold : replace where the residual exceeds ``threshold`` times its
        expected spread (see the module docstring).  On Gaussian noise about
        ``2 * scipy.stats.norm.sf(threshold)`` of good values are replaced
        (6e-5 at 4, 6e-7 at 5); an outlier of A sigma (of ``err``) is found
        with a probability of about ``norm.cdf((A - 1.08 threshold) / 1.08)``
        (a median of 10 neighbours): half of those at 4.3 sigma, 90% at 5.7.
    n_components : shared time patterns (pointing jitter, PSF breathing)
        fitted out of the bright series before judging; 0 for none.
    normalise : divide out the common mode first (:func:`common_mode`).
    n_threads : blocks cleaned concurrently; default the usable CPUs, at
        most 8.  The result does not depend on it.

    Returns
    -------
    :class:`TimeCleanResult`.  ``values`` keeps the input's float dtype
    (float64 for integer input), ``err`` its dtype (at least float32).
    """
    values = _array("values", values)
    err = _array("err", err, values.shape)
    if mask is not None:
        mask = _array("mask", mask, values.shape)
    window = check_window(window)
    threshold = check_threshold(threshold)
    n_components = check_components(n_components)
    n = values.shape[0]
    if n < MIN_NEIGHBOURS + 1:
        raise InputError(
            f"Time-domain cleaning needs at least {MIN_NEIGHBOURS + 1} integrations; got {n}. "
            "Clean shorter observations with the spatial clean() only."
        )
    work_dtype = np.float32 if values.dtype == np.float32 else np.float64
    x = values.reshape(n, -1)
    e = err.reshape(n, -1)
    m = mask.reshape(n, -1) if mask is not None else None
    nseries = x.shape[1]

    def block(cols):
        xb = np.asarray(x[:, cols], dtype=work_dtype)
        bad = ~np.isfinite(xb)
        if m is not None:
            bad |= m[:, cols]
        return xb, np.asarray(e[:, cols], dtype=work_dtype), bad

    # The bright series set the common mode.
    step = max(1, _BLOCK_BYTES // (n * 8))
    starts = range(0, nseries, step)
    level = np.empty(nseries)
    noise = np.empty(nseries)
    for a in starts:
        level[a : a + step], noise[a : a + step] = _levels(*block(slice(a, a + step)))
    bright = _spread(_bright(level, noise))
    xb, _, bad = block(bright)
    c = _common_mode(xb, bad, level[bright]) if normalise else np.ones(n)
    scale = c[:, None].astype(work_dtype)

    def normalised(cols):
        xb, eb, bad = block(cols)
        return np.where(bad, np.nan, xb / scale), np.abs(eb) / scale

    # Series whose scatter exceeds their errors are fitted for the shared patterns.
    jittery = np.zeros(nseries, dtype=bool)
    if n_components:
        for a in starts:
            with np.errstate(invalid="ignore"):
                jittery[a : a + step] = _excess(*normalised(slice(a, a + step))) >= EXCESS_NOISE
    patterns = _Patterns.none(n)
    sample = _spread(np.flatnonzero(jittery))
    if sample.size >= MIN_SERIES:
        patterns = _patterns(*normalised(sample), window, threshold, n_components)

    out_values = np.empty(x.shape, dtype=np.result_type(values.dtype, np.float32))
    out_err = np.empty(x.shape, dtype=np.result_type(err.dtype, np.float32))
    replaced = np.zeros(x.shape, dtype=bool)
    scatter = np.empty(nseries, dtype=np.float64)
    size = max(1, _BLOCK_BYTES // (n * min(window, n) * 8))

    def work(a: int) -> None:
        cols = slice(a, min(a + size, nseries))
        v, er, flag, s = _clean_block(
            *block(cols), jittery[cols], c.astype(work_dtype), window, threshold, patterns
        )
        out_values[:, cols] = v
        out_err[:, cols] = er
        replaced[:, cols] = flag
        scatter[cols] = s

    starts = range(0, nseries, size)
    threads = _default_threads() if n_threads is None else max(1, int(n_threads))
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=min(threads, len(starts))) as pool:
            list(pool.map(work, starts))
    else:
        for a in starts:
            work(a)
    shape = values.shape
    return TimeCleanResult(
        values=out_values.reshape(shape),
        err=out_err.reshape(shape),
        replaced=replaced.reshape(shape),
        scatter=scatter.reshape(shape[1:]),
        common_mode=c,
        basis=patterns.full,
    )
