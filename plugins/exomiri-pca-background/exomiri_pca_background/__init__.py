"""The ``pca`` background method for exomiri: time-variable column patterns.

Long MIRI LRS observations show a background whose shape across the columns
changes with time, not only its level.  ``row_wise`` (one median per row) and
``col_wise`` (one line per row) cannot follow such a pattern into the trace
columns.  ``pca`` learns the pattern from the background columns and carries
it across the trace.

The model
---------
For integration ``i``, row ``r`` and column ``c``::

    background[i, r, c] = a0[i, r] + a1[i, r] x(c) + sum_k w_k[i, r] phi_k(c)

``x`` is the column mapped onto [-1, 1] over the frame, so ``a0 + a1 x`` is
the line of ``col_wise``.  The ``phi_k`` are column functions learnt from the
data, the same for every row and integration; ``w_k`` their amplitudes.  This
is an exomiri :class:`~exomiri.products.BackgroundModel` with the basis
``[1, x, phi_1 .. phi_K]`` (ncols, K + 2) and the coefficients
``[a0, a1, w_1 .. w_K]`` per integration and row.

1. *Deviations.*  The region pixels (NaN where masked) of every block of
   ``row_block`` rows are reduced to their median over those rows, one value
   per (integration, block, column); their median over integrations is the
   static part, and the deviations from it are what changes with time.
2. *Patterns.*  A least-squares line across the columns is removed from
   every (integration, block) deviation, each block is divided by its noise
   (from the differences of consecutive integrations) and single-integration
   spikes are replaced by a running median over five integrations.  The
   leading right singular vectors of the result are the column patterns, on
   the region columns that have a value in at least half of the samples.
   With ``n_components=None`` a pattern is kept when its singular value
   exceeds 1.1 times the largest one pure noise gives, ``sqrt(n) + sqrt(m -
   2)`` for ``n`` samples of ``m`` columns (Marchenko-Pastur), at most four:
   data whose background changes only in level keep none, and the model is
   then a clipped line per row, as ``col_wise``.
3. *Across the trace.*  Nothing on the trace columns can be learnt, so there
   each pattern follows the natural cubic spline through its learnt values:
   the smoothest curve through them (least integrated squared curvature),
   fixed mostly by the values and slopes at the inner edges of the regions.
   Beyond the outermost learnt columns the pattern keeps its edge value.
   This is the one assumption the data cannot test: that the pattern is
   smooth across the trace.
4. *Amplitudes.*  ``[1, x, phi]`` is fitted to every (integration, block)
   deviation by least squares with clipping; the ``phi`` coefficients are
   the amplitudes ``w`` of the block, interpolated linearly in the row between
   block centres.  Pooling ``row_block`` rows makes them nearly noise-free.
   Fitting the deviations leaves the static part of the patterns to the
   line: in the background columns static structure cannot be told apart
   from the wings of the star's PSF, which must not be carried into the
   trace.  ``carry_static=True`` fits the block values themselves instead,
   carrying the static part across too.
5. *Line.*  For every (integration, row) the reconstruction ``phi w`` is
   subtracted from the region pixels and a line is fitted by least squares,
   dropping the worst pixel while it lies beyond ``sigma_clip`` robust sigmas
   (up to ``max_iterations`` times; a cosmic ray is one pixel).

Covariance
----------
The line's covariance is ``s**2 (L^T L)^-1`` over the kept pixels, with
``s**2`` the residual variance of the kept pixels of the same row in every
integration of a chunk (``n - 2`` degrees of freedom per fit).  The
amplitudes' covariance comes the same way from the block fits, interpolated
with the squared interpolation weights, and enters the line through
``a = (L^T L)^-1 L^T (y - Phi w)``.  Correlations between rows (they share
block amplitudes) cannot be stored in a ``BackgroundModel`` and are left out.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import numpy as np
from scipy.interpolate import CubicSpline

from exomiri import InputError, hookimpl
from exomiri.hookspecs import BackgroundInput
from exomiri.products import BackgroundModel
from exomiri.steps.background import nanmedian_lastaxis
from exomiri.steps.lstsq import batched_wls, legendre_design

__all__ = ["PCABackground", "exomiri_register_background_methods"]

#: Scale from the median absolute deviation to the Gaussian sigma.
MAD_TO_SIGMA = 1.4826
#: Rough upper bound on the temporaries of one chunk of integrations (bytes).
_CHUNK_BYTES = 32 * 2**20
#: Float64 temporaries of the size of one chunk's region pixels, at most.
_TEMPORARIES = 8
#: A pattern is kept when its singular value exceeds this many times that of pure noise.
SIGNIFICANCE = 1.1
#: At most this many patterns are kept automatically.
MAX_COMPONENTS = 4


# --------------------------------------------------------------------------
# checks


def _integer(name: str, value: object, minimum: int, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(
            f"{name} must be an integer >= {minimum}; got {value!r}. Pass e.g. {name}={example}."
        )
    return int(value)


def _check_parameters(n_components, row_block, sigma_clip, max_iterations, carry_static):
    if n_components is not None:
        n_components = _integer("n_components", n_components, 1, 2)
    row_block = _integer("row_block", row_block, 1, 16)
    max_iterations = _integer("max_iterations", max_iterations, 0, 3)
    if sigma_clip is not None and (
        isinstance(sigma_clip, bool)
        or not isinstance(sigma_clip, numbers.Real)
        or not sigma_clip > 0
    ):
        raise InputError(
            f"sigma_clip must be a positive number of sigmas, or None to keep every pixel; "
            f"got {sigma_clip!r}. Pass e.g. sigma_clip=5.0."
        )
    sigma_clip = None if sigma_clip is None else float(sigma_clip)
    if not isinstance(carry_static, bool | np.bool_):
        raise InputError(f"carry_static must be True or False; got {carry_static!r}.")
    return n_components, row_block, sigma_clip, max_iterations, bool(carry_static)


def _check_frames(frames: BackgroundInput) -> tuple[np.ndarray, np.ndarray]:
    """The indices of the region columns and the column coordinates."""
    shape = np.shape(frames.data)
    if len(shape) != 3:
        raise InputError(f"The pca background needs a (nints, nrows, ncols) cube; got {shape}.")
    for name in ("err", "mask"):
        if np.shape(getattr(frames, name)) != shape:
            raise InputError(
                f"BackgroundInput.{name} has shape {np.shape(getattr(frames, name))} but data "
                f"has {shape}; they must match."
            )
    region = np.asarray(frames.region)
    columns = np.asarray(frames.columns, dtype=np.float64)
    if region.shape != (shape[2],) or region.dtype != bool or columns.shape != (shape[2],):
        raise InputError(
            f"BackgroundInput.region and .columns must be ({shape[2]},) arrays (bool, float); "
            f"got {region.dtype} {region.shape} and {columns.shape}."
        )
    return np.flatnonzero(region), columns


# --------------------------------------------------------------------------
# pieces


def _chunks(nints: int, bytes_per_integration: int) -> Iterator[slice]:
    size = max(1, _CHUNK_BYTES // max(1, bytes_per_integration))
    for start in range(0, nints, size):
        yield slice(start, min(start + size, nints))


def _region_pixels(frames: BackgroundInput, idx: np.ndarray, chunk: slice) -> np.ndarray:
    """Region pixels (nb, nrows, m) as a new float64 array, NaN where unusable."""
    values = np.array(frames.data[chunk][:, :, idx], dtype=np.float64)
    values[np.asarray(frames.mask[chunk][:, :, idx], dtype=bool)] = np.nan
    values[~np.isfinite(values)] = np.nan
    return values


def _block_medians(values: np.ndarray, row_block: int) -> np.ndarray:
    """Median over the rows of every block of ``row_block`` rows: (nb, nrows, m) -> (nb, nblocks, m)."""
    nb, nrows, m = values.shape
    nblocks = -(-nrows // row_block)
    padded = np.full((nb, nblocks * row_block, m), np.nan)
    padded[:, :nrows] = values
    grouped = padded.reshape(nb, nblocks, row_block, m).transpose(0, 1, 3, 2)
    return nanmedian_lastaxis(grouped)[0]


def _row_weights(nrows: int, row_block: int) -> np.ndarray:
    """(nrows, nblocks) weights that interpolate block values linearly between block centres
    (constant beyond the first and last centre)."""
    starts = np.arange(0, nrows, row_block)
    ends = np.minimum(starts + row_block, nrows)
    centres = (starts + ends - 1) / 2
    rows = np.arange(nrows, dtype=np.float64)
    unit = np.eye(starts.size)
    return np.stack([np.interp(rows, centres, unit[b]) for b in range(starts.size)], axis=1)


def _components(deviations: np.ndarray, line: np.ndarray, n_components: int | None) -> np.ndarray:
    """The leading column patterns (K, m) of ``deviations`` (nints, nblocks, m).

    A line is removed from every (integration, block) sample and every block
    is divided by its noise (:func:`_noise`), so that pure noise has unit
    variance, and single-integration spikes are removed (:func:`_despike`).  With
    ``n_components=None`` the patterns kept are those whose singular value
    exceeds ``SIGNIFICANCE`` times ``sqrt(n) + sqrt(m - 2)``, the largest
    singular value of unit noise in n samples of m - 2 free values
    (Marchenko-Pastur), at most ``MAX_COMPONENTS``; otherwise exactly
    ``n_components``.
    """
    nints, nblocks, m = deviations.shape
    if nints < 3:
        if n_components:
            raise InputError(
                f"pca learns its patterns from the changes between integrations and needs at "
                f"least 3; got {nints}. Give more integrations, or leave n_components=None."
            )
        return np.zeros((0, m))
    usable = np.isfinite(deviations).reshape(-1, m)
    y = np.where(usable, deviations.reshape(-1, m), 0.0)
    coeffs, _, _ = batched_wls(line, y, usable.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        residual = (y - coeffs @ line.T).reshape(nints, nblocks, m) / _noise(deviations)[:, None]
    residual = _despike(residual).reshape(-1, m)
    residual[~usable | ~np.isfinite(residual)] = 0.0
    residual = residual[usable.sum(axis=1) > line.shape[1]]
    # right singular vectors and values, from the small (m, m) Gram matrix
    power, vectors = np.linalg.eigh(residual.T @ residual)
    order = np.argsort(power)[::-1]
    singular = np.sqrt(np.maximum(power[order], 0.0))
    if n_components is None:
        edge = np.sqrt(residual.shape[0]) + np.sqrt(m - line.shape[1])
        n_components = min(int(np.sum(singular > SIGNIFICANCE * edge)), MAX_COMPONENTS)
    if residual.shape[0] < n_components:
        raise InputError(
            f"pca found {residual.shape[0]} usable (integration, row block) samples of the "
            f"background region, fewer than n_components={n_components}; give more "
            "integrations or a smaller row_block."
        )
    comps = vectors[:, order[:n_components]].T
    if n_components == 0:
        return comps
    # a fixed sign: the largest entry of each pattern positive
    peak = np.abs(comps).argmax(axis=1)
    return comps * np.sign(comps[np.arange(n_components), peak])[:, None]


def _despike(values: np.ndarray, window: int = 5, limit: float = 5.0) -> np.ndarray:
    """``values`` (nints, ...) in units of their noise, where a value more than ``limit``
    from the running median of ``window`` integrations around it is replaced by that median.

    A cosmic ray that survived the row medians lasts one integration; the
    background's changes last longer.
    """
    nints = values.shape[0]
    if nints < window:
        return values
    half = window // 2
    padded = np.concatenate([values[:1].repeat(half, 0), values, values[-1:].repeat(half, 0)])
    running, _ = nanmedian_lastaxis(np.lib.stride_tricks.sliding_window_view(padded, window, axis=0))
    with np.errstate(invalid="ignore"):
        spike = np.abs(values - running) > limit
    return np.where(spike, running, values)


def _noise(deviations: np.ndarray) -> np.ndarray:
    """Noise (nblocks,) of one deviation of each block, pooled over the columns, from the
    differences of consecutive integrations (insensitive to anything that changes slowly)."""
    nblocks = deviations.shape[1]
    step = np.diff(deviations, axis=0).transpose(1, 0, 2).reshape(nblocks, -1) / np.sqrt(2.0)
    centre, _ = nanmedian_lastaxis(step)
    mad, _ = nanmedian_lastaxis(np.abs(step - centre[:, None]))
    return MAD_TO_SIGMA * mad


def _bridge(columns: np.ndarray, learnt: np.ndarray, comps: np.ndarray) -> np.ndarray:
    """Patterns on every column (ncols, K): the natural cubic spline through the values
    ``comps`` (K, m) on the ``learnt`` columns, held constant beyond the outermost ones."""
    if comps.shape[0] == 0:
        return np.zeros((columns.size, 0))
    known = columns[learnt]
    spline = CubicSpline(known, comps.T, axis=0, bc_type="natural")
    full = spline(np.clip(columns, known.min(), known.max()))
    full[learnt] = comps.T
    return full


def _group_sigma(residual: np.ndarray, k: int) -> np.ndarray:
    """Robust sigma (ng,) of residuals (ni, ng, m) pooled over integrations and columns.

    1.4826 * MAD about the median, times ``sqrt(n / (n - k))`` for the ``k``
    coefficients each series fitted to its ``n`` pixels (mean ``n``).
    """
    ni, ng, m = residual.shape
    pooled = residual.transpose(1, 0, 2).reshape(ng, ni * m)
    centre, count = nanmedian_lastaxis(pooled)
    mad, _ = nanmedian_lastaxis(np.abs(pooled - centre[:, None]))
    n = count / max(ni, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > k, MAD_TO_SIGMA * mad * np.sqrt(n / (n - k)), np.nan)


def _clipped_fit(
    design: np.ndarray, y: np.ndarray, sigma_clip: float | None, max_iterations: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least squares of ``design`` (m, k) to every series of ``y`` (ni, ng, m), NaN unusable.

    The series of one group (the same row or row block in every integration)
    share a noise level.  While a series' worst pixel lies beyond
    ``sigma_clip`` times :func:`_group_sigma` of the first fit's residuals it
    is dropped and the series refitted, at most ``max_iterations`` times.
    Returns the coefficients (ni, ng, k), their covariance (``(A^T A)^-1``
    over the kept pixels times the group's residual variance of the kept
    pixels, ``n - k`` degrees of freedom per series) and
    ``(A^T A)^-1`` itself (ni, ng, k, k), and the kept pixels (ni, ng, m);
    series with fewer than ``k + 1`` kept pixels get NaN coefficients and
    covariance.
    """
    ni, ng, m = y.shape
    k = design.shape[1]
    keep = np.isfinite(y).reshape(ni * ng, m)
    values = np.where(keep, y.reshape(ni * ng, m), 0.0)
    coeffs, inverse, _ = batched_wls(design, values, keep.astype(np.float64))

    active = np.arange(ni * ng)
    if sigma_clip is not None and max_iterations > 0:
        # the MAD hardly notices a few outliers: one noise level serves every pass
        residual = np.where(keep, values - coeffs @ design.T, np.nan)
        limit = sigma_clip * np.tile(_group_sigma(residual.reshape(ni, ng, m), k), ni)
        for _ in range(max_iterations):
            residual = values[active] - coeffs[active] @ design.T
            with np.errstate(invalid="ignore"):
                score = np.where(keep[active], np.abs(residual), -1.0) / limit[active, None]
            score[~np.isfinite(score)] = -1.0
            worst = score.argmax(axis=1)
            hit = (score[np.arange(active.size), worst] > 1.0) & (keep[active].sum(axis=1) > k + 1)
            active, worst = active[hit], worst[hit]
            if active.size == 0:
                break
            keep[active, worst] = False
            coeffs[active], inverse[active], _ = batched_wls(
                design, values[active], keep[active].astype(np.float64)
            )
    # the noise of the final fits: residual variance of the kept pixels of a group
    squares = (np.where(keep, values - coeffs @ design.T, 0.0) ** 2).reshape(ni, ng, m)
    dof = (keep.sum(axis=1) - k).reshape(ni, ng)
    few = keep.sum(axis=1) < k + 1
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = squares.sum(axis=(0, 2)) / np.maximum(dof, 0).sum(axis=0)
    coeffs[few] = np.nan
    cov = inverse * np.tile(variance, ni)[:, None, None]
    cov[few] = np.nan
    return (
        coeffs.reshape(ni, ng, k),
        cov.reshape(ni, ng, k, k),
        inverse.reshape(ni, ng, k, k),
        keep.reshape(ni, ng, m),
    )


# --------------------------------------------------------------------------
# the method


class PCABackground:
    """Per-row line plus learnt column patterns whose amplitudes follow the background in time."""

    name = "pca"
    description = (
        "Per-row line plus the principal column patterns of the background's changes in time, "
        "carried across the trace by a natural cubic spline."
    )

    def estimate(
        self,
        frames: BackgroundInput,
        *,
        n_components: int | None = None,
        row_block: int = 16,
        sigma_clip: float | None = 5.0,
        max_iterations: int = 3,
        carry_static: bool = False,
    ) -> BackgroundModel:
        """Estimate the background; see the module docstring for the model.

        ``n_components``: the number of column patterns (K); None keeps
        those that stand out of the noise (none: the model is a clipped
        line per row, like ``col_wise``).  ``row_block``: rows pooled to
        learn the patterns and fit their amplitudes (1: every row on its
        own, noisier).  ``sigma_clip``/``max_iterations``: worst-pixel
        clipping of the fits (None: no clipping).  ``carry_static``: fit the
        amplitudes to the region's values rather than to their changes, so
        that the static part of the patterns is carried across the trace
        too; only where the star's wings do not reach the background
        columns.
        """
        n_components, row_block, sigma_clip, max_iterations, carry_static = _check_parameters(
            n_components, row_block, sigma_clip, max_iterations, carry_static
        )
        idx, columns = _check_frames(frames)
        nints, nrows, ncols = np.shape(frames.data)
        m = idx.size
        line = legendre_design(columns, 1, domain=(columns.min(), columns.max()))  # (ncols, 2)
        chunk_bytes = nrows * m * 8 * _TEMPORARIES

        # 1. deviations of the row blocks from their time median
        nblocks = -(-nrows // row_block)
        blocks = np.empty((nints, nblocks, m))
        for chunk in _chunks(nints, chunk_bytes):
            blocks[chunk] = _block_medians(_region_pixels(frames, idx, chunk), row_block)
        static, _ = nanmedian_lastaxis(blocks.transpose(1, 2, 0))
        deviations = blocks - static[None]

        # 2. components on the learnt columns, 3. bridged across the others
        learnt = np.isfinite(deviations).mean(axis=(0, 1)) >= 0.5 if nints else np.zeros(m, bool)
        needed = (n_components or 0) + 3
        if learnt.sum() < needed:
            raise InputError(
                f"pca needs at least {needed} background columns with usable pixels for "
                f"n_components={n_components}; the region has {int(learnt.sum())}. Widen the "
                "background regions or lower n_components."
            )
        comps = _components(deviations[:, :, learnt], line[idx[learnt]], n_components)
        learnt_columns = np.zeros(ncols, dtype=bool)
        learnt_columns[idx[learnt]] = True
        phi = _bridge(columns, learnt_columns, comps)
        basis = np.column_stack([line, phi])
        k = basis.shape[1]

        # 4. amplitudes per (integration, block), interpolated to rows
        if k > 2:
            target = blocks if carry_static else deviations
            fit, fit_cov, _, _ = _clipped_fit(basis[idx], target, sigma_clip, max_iterations)
            to_rows = _row_weights(nrows, row_block)
            amplitudes = np.einsum("rb,ibk->irk", to_rows, fit[:, :, 2:])
            amplitudes_cov = np.einsum("rb,ibkl->irkl", to_rows**2, fit_cov[:, :, 2:, 2:])
        else:
            amplitudes = np.zeros((nints, nrows, 0))
            amplitudes_cov = np.zeros((nints, nrows, 0, 0))
        del deviations, blocks

        # 5. a line per (integration, row) through what the patterns leave
        coeffs = np.empty((nints, nrows, k))
        cov = np.empty((nints, nrows, k, k))
        lines, patterns = line[idx], phi[idx]
        for chunk in _chunks(nints, chunk_bytes):
            w = amplitudes[chunk]
            rest = _region_pixels(frames, idx, chunk) - np.einsum("irk,jk->irj", w, patterns)
            a, a_cov, inverse, keep = _clipped_fit(lines, rest, sigma_clip, max_iterations)
            # a = (L^T L)^-1 L^T (y - Phi w): the amplitudes' errors move the line by -G dw
            g = inverse @ np.einsum("jl,irj,jk->irlk", lines, keep, patterns)
            w_cov = amplitudes_cov[chunk]
            coeffs[chunk, :, :2] = a
            coeffs[chunk, :, 2:] = w
            cov[chunk, :, :2, :2] = a_cov + g @ w_cov @ g.swapaxes(-1, -2)
            cov[chunk, :, :2, 2:] = -g @ w_cov
            cov[chunk, :, 2:, :2] = -w_cov @ g.swapaxes(-1, -2)
            cov[chunk, :, 2:, 2:] = w_cov
            bad = ~np.isfinite(a).all(axis=2) | ~np.isfinite(w).all(axis=2)
            coeffs[chunk][bad] = np.nan
            cov[chunk][bad] = np.nan
        return BackgroundModel(basis=basis, coeffs=coeffs, cov=cov)


@hookimpl
def exomiri_register_background_methods(register):
    register(PCABackground)
