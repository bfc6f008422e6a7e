"""Outlier cleaning by iterative polynomial fits along the dispersion axis.

Every (integration, column, window of rows) series is fitted by a polynomial
in the row index; the single worst pixel is rejected while its externally
studentized residual exceeds the threshold, the series is refitted, and every
rejected or initially bad pixel is replaced by the fit (Horne 1986 style
spatial-profile cleaning).

Clipping statistic
------------------
For a series with n good pixels, k = poly_order + 1 coefficients, residuals
``r_j`` (``(y - fit) / err`` when weighted), leverages ``h_j`` (the diagonal
of the hat matrix ``W^1/2 A (A^T W A)^-1 A^T W^1/2``, W the weights: 0/1 good
mask, or 1/err**2 at good pixels) and ``SSR = sum r_j**2``::

    s_(j)**2 = (SSR - r_j**2 / (1 - h_j)) / (n - k - 1)
    t_j = r_j / (s_(j) sqrt(1 - h_j))

``s_(j)`` is the residual scale of the fit without pixel j, so one outlier
does not inflate the scale it is measured against; on clean Gaussian data
``t_j`` is Student-t distributed with n - k - 1 degrees of freedom.  The
candidate is the good pixel with the largest ``|t_j|``; it is clipped when
``|t_j| > outlier_threshold`` and ``n - k - 1 >= 1``.  A series whose residual
spread is negligible next to its values (an exact polynomial, a constant) is
never clipped.  The leverages are exact for every series: constants of the
window height for unweighted series without bad pixels, otherwise computed
from the current weights with the fit.

The reference tool divides ``|r|`` by the std of all residuals instead; that
std includes the candidate itself, which caps a single pixel's deviation at
about ``sqrt(n (1 - h_j))`` (4.9 at the edge of a 40-row window, below a
threshold of 5 whatever the outlier's size) and lets two outliers in a series
mask each other.

Layout and cost
---------------
Windows of one height are gathered into a ``(h, N)`` array whose columns are
the series of a chunk of at most 16 integrations (N = integrations x windows
x columns).  Reductions run along axis 0 and the polynomial algebra is a
handful of operations on length-N vectors: the normal equations are formed by
:func:`numpy.einsum` from a shared Legendre design matrix
(:func:`~exomiri.steps.lstsq.legendre_design`) and solved by a Cholesky
factorisation written out over the k x k entries, so thousands of fits cost a
few dozen vector operations.  The leverages come from the same factorisation:
the k (k + 1) / 2 entries of ``(A^T W A)^-1`` as length-N vectors, contracted
with the design in one einsum.  Series without bad pixels take a precomputed
pseudo-inverse (and, unweighted, precomputed leverages).  After the first
pass only the series that rejected a pixel are refitted.  Chunks are
independent and run on a thread pool (numpy releases the GIL in its loops).

The hot path makes no BLAS call (the rare SVD fallback works one matrix at a
time): every result for a series is computed from that series alone, in an
order that does not depend on how many other series are processed with it or
where it sits among them, so the output is bit-for-bit the same for any
``block_size``, any number of threads and any piece of the cube.  A BLAS
product (as in :func:`~exomiri.steps.lstsq.batched_wls`) changes its
summation order with the shape of the call, which would break that; einsum
keeps a fixed order per column only on C-ordered operands with at least two
columns, which :func:`_contract` ensures.
"""

from __future__ import annotations

import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..exceptions import InputError
from ._pool import spans, thread_map
from .lstsq import legendre_design

__all__ = ["CleanResult", "clean_cube", "outlier_counts", "spatial_profile", "window_edges"]

#: A clipping candidate whose residual spread is below this fraction of its
#: largest |value| is an exact polynomial up to rounding and is not clipped.
_DEGENERATE_RTOL = 1e-9
#: Pixels whose leverage is this close to 1 are never clipping candidates.
_LEVERAGE_ATOL = 1e-10
#: Cholesky pivots below this fraction of their diagonal count as singular.
_PIVOT_RTOL = 1e-13
#: Most integrations cleaned together (whatever block_size allows): small
#: enough for the (h, N) work arrays to stay in cache, large enough to amortise
#: the Python overhead.
_CHUNK = 16
#: Widest column range the compiled :func:`spatial_profile` sums (as numpy does, in one block).
_PAIRWISE_BLOCK = 128


@dataclass(frozen=True)
class CleanResult:
    """Output of :func:`clean_cube`; all arrays have the shape of the input cube."""

    data: np.ndarray  #: float32, bad and clipped pixels replaced by the fit
    err: np.ndarray  #: float32, input err except at replaced pixels (fit uncertainty there)
    replaced: np.ndarray  #: bool, every pixel replaced by the fit (initially bad | clipped)
    clipped: np.ndarray  #: bool, pixels rejected by the iterative clipping only
    fit: np.ndarray  #: float32, the polynomial fit values everywhere


# --------------------------------------------------------------------------- validation


def _as_int(value, name: str, minimum: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}. {hint}")
    if isinstance(value, numbers.Integral):
        ivalue = int(value)
    else:
        if not np.isfinite(value) or float(value) != int(value):
            raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}. {hint}")
        ivalue = int(value)
    if ivalue < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}. {hint}")
    return ivalue


def _heights(window_heights) -> tuple[int, ...]:
    hint = "Give a list of positive row counts, e.g. window_heights=[40]."
    if isinstance(window_heights, numbers.Real) and not isinstance(window_heights, bool):
        window_heights = [window_heights]
    try:
        items = list(window_heights)
    except TypeError:
        raise InputError(
            f"window_heights must be a list of row counts, got {window_heights!r}. {hint}"
        ) from None
    if not items:
        raise InputError(f"window_heights is empty. {hint}")
    heights = tuple(_as_int(h, "every window height", 0, hint) for h in items)
    if not any(heights):
        raise InputError(f"window_heights {items!r} has no positive height. {hint}")
    return heights


def window_edges(nrows: int, window_heights) -> list[tuple[int, int]]:
    """Row ranges ``[(start, stop), ...]`` of the cleaning windows.

    The heights are used cyclically from row 0 on; the last window is cut at
    ``nrows`` and heights of zero are skipped.  ``window_edges(416, [40])``
    gives ten windows of 40 rows and one of 16.
    """
    nrows = _as_int(nrows, "nrows", 0, "Pass the number of rows of the frame.")
    heights = _heights(window_heights)
    edges: list[tuple[int, int]] = []
    start, i = 0, 0
    while start < nrows:
        h = heights[i % len(heights)]
        i += 1
        if h == 0:
            continue
        stop = min(start + h, nrows)
        edges.append((start, stop))
        start = stop
    return edges


def _cube(name: str, array) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(
            f"{name} must be a cube (nints, nrows, ncols), got shape {array.shape}. "
            "Pass a single frame as array[None]."
        )
    return array


# --------------------------------------------------------------------------- polynomial algebra


@dataclass(frozen=True)
class _Design:
    """Per window height: the Legendre design and what is derived from it."""

    h: int
    k: int
    A: np.ndarray  # (h, k)
    AT: np.ndarray  # (k, h)
    pinv: np.ndarray  # (k, h), least-squares (or minimum-norm) solution for all-good series
    inflate: np.ndarray  # (h, 1), 1 / (1 - leverage) of all-good unweighted series
    outerT: np.ndarray  # (npairs, h), A[:, p] * A[:, q] for the pairs p >= q
    quadT: np.ndarray  # (npairs, h), outerT with the pairs p > q doubled (for a^T C a)
    pairs: tuple[tuple[int, int], ...]


@lru_cache(maxsize=64)
def _design(h: int, order: int) -> _Design:
    A = legendre_design(np.arange(h), order)
    k = order + 1
    pairs = tuple((p, q) for p in range(k) for q in range(p + 1))
    outerT = np.stack([A[:, p] * A[:, q] for p, q in pairs])
    AT = np.ascontiguousarray(A.T)
    pinv = np.linalg.pinv(A)
    quadT = outerT * np.array([1.0 if p == q else 2.0 for p, q in pairs])[:, None]
    inflate = _inflation(np.einsum("hk,kh->h", A, pinv))[:, None]
    for a in (A, AT, pinv, inflate, outerT, quadT):
        a.setflags(write=False)
    return _Design(h, k, A, AT, pinv, inflate, outerT, quadT, pairs)


def _inflation(leverage: np.ndarray) -> np.ndarray:
    """``1 / (1 - leverage)``, computed in place; 0 where the leverage is within
    _LEVERAGE_ATOL of 1.

    Such a pixel is fitted by itself: its residual says nothing, and a zero
    factor keeps it from ever being the clipping candidate.
    """
    room = np.subtract(1.0, leverage, out=leverage)
    tight = room <= _LEVERAGE_ATOL
    room[tight] = 1.0
    np.divide(1.0, room, out=room)
    room[tight] = 0.0
    return room


def _cholesky(d: _Design, M: np.ndarray):
    """Cholesky factors of normal matrices given as their lower-triangle entries.

    ``M`` (npairs, n) holds the entries for ``d.pairs``.  Returns ``L`` as a
    k x k nested list of length-n vectors (upper part None) and ``ok``, False
    where a pivot is not clearly positive (those columns are not usable).
    """
    k = d.k
    entry = {pq: M[i] for i, pq in enumerate(d.pairs)}
    L: list[list[np.ndarray | None]] = [[None] * k for _ in range(k)]
    ok = np.ones(M.shape[1], dtype=bool)
    for j in range(k):
        diag = entry[(j, j)]
        piv = diag.copy()
        for p in range(j):
            piv -= L[j][p] * L[j][p]
        ok &= piv > _PIVOT_RTOL * diag
        ljj = np.sqrt(np.where(ok, piv, 1.0))
        L[j][j] = ljj
        for i in range(j + 1, k):
            v = entry[(i, j)].copy()
            for p in range(j):
                v -= L[i][p] * L[j][p]
            v /= ljj
            L[i][j] = v
    return L, ok


def _forward(L, rhs: list[np.ndarray]) -> list[np.ndarray]:
    """Solve ``L z = rhs`` (rhs: list of k arrays broadcasting against L's vectors)."""
    z: list[np.ndarray] = []
    for i in range(len(rhs)):
        v = rhs[i] - sum(L[i][p] * z[p] for p in range(i)) if i else rhs[i] + 0.0
        z.append(v / L[i][i])
    return z


def _backward(L, z: list[np.ndarray]) -> list[np.ndarray]:
    k = len(z)
    c: list[np.ndarray] = [None] * k  # type: ignore[list-item]
    for i in reversed(range(k)):
        v = z[i] - sum(L[p][i] * c[p] for p in range(i + 1, k)) if i < k - 1 else z[i] + 0.0
        c[i] = v / L[i][i]
    return c


def _pinv_fit(d: _Design, y: np.ndarray, w: np.ndarray):
    """Least-squares coefficients by SVD, minimum-norm where underdetermined.

    Returns ``(coef (k, n), P (n, k, h))`` with ``P = pinv(sqrt(W) A)``.
    """
    sw = np.ascontiguousarray(np.sqrt(w).T)  # (n, h)
    P = np.linalg.pinv(sw[:, :, None] * d.A[None])
    swy = sw * np.ascontiguousarray(y.T)
    coef = (P * swy[:, None, :]).sum(axis=-1).T  # each (n, k) sum runs along its own row
    return coef, P


def _columns(a: np.ndarray, idx) -> np.ndarray:
    """``a[:, idx]`` as a C-ordered array (plain fancy indexing gives Fortran order)."""
    return np.take(a, idx, axis=1)


def _contract(spec: str, mat: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``np.einsum(spec, mat, x)`` summed in an order fixed per output column.

    ``x`` (..., n) has the columns last.  An einsum, not a BLAS product, and
    always on a C-ordered ``x`` with at least two columns: numpy then loops
    over the columns innermost and accumulates the sum term by term, so the
    result for one column does not depend on how many other columns there are
    or where it sits among them.  (With one column, or Fortran order, einsum
    runs the sum innermost with a different association.)
    """
    n = x.shape[-1]
    if n == 1:
        return np.einsum(spec, mat, np.concatenate((x, x), axis=-1))[..., :1]
    return np.einsum(spec, mat, np.ascontiguousarray(x))


def _products(mat: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``mat @ x`` for mat (p, h) and x (h, n), column by column (see _contract)."""
    return _contract("ph,hn->pn", mat, x)


def _sum_squares(r: np.ndarray) -> np.ndarray:
    """``sum(r**2, axis=0)`` for r (h, n), column by column (see _contract)."""
    r = np.ascontiguousarray(r)
    return _contract("hn,hn->n", r, r)


def _fit(d: _Design, y, w, ng, variance: bool = False):
    """Weighted fits of the columns of ``y`` (h, n): ``(coef (k, n), var)``.

    ``w`` is zero at excluded pixels and ``ng`` the number of included pixels
    per column; columns with fewer than two get zeros, columns with fewer than
    k = poly_order + 1 the minimum-norm solution (exact through their pixels).
    With ``variance``, ``var`` (h, n) holds ``a_j^T (A^T W A)^-1 a_j`` for
    every row j of the columns with at least k included pixels (0 elsewhere),
    from the same factorisation as the fit; otherwise it is None.
    """
    k, n = d.k, y.shape[1]
    coef = np.zeros((k, n))
    var = np.zeros((d.h, n)) if variance else None
    chol = np.flatnonzero(ng >= k)
    if chol.size == n:
        chol = slice(None)
        ys, ws = y, w
    else:
        ys, ws = _columns(y, chol), _columns(w, chol)
    need_svd = (ng >= 2) & (ng < k)
    if ys.shape[1]:
        L, ok = _cholesky(d, _products(d.outerT, ws))
        b = _products(d.AT, ws * ys)
        coef[:, chol] = np.stack(_backward(L, _forward(L, list(b))))
        if variance:
            var[:, chol] = _factor_variance(d, L)
        failed = np.zeros(n, dtype=bool)
        failed[chol] = ~ok
        need_svd |= failed & (ng >= k)
    svd = np.flatnonzero(need_svd)
    if svd.size:
        coef[:, svd], P = _pinv_fit(d, _columns(y, svd), _columns(w, svd))
        if variance:
            var[:, svd] = np.where(ng[svd] >= k, _pinv_variance(d, P), 0.0)
    return coef, var


def _factor_variance(d: _Design, L) -> np.ndarray:
    """``a_j^T (A^T W A)^-1 a_j`` (h, n) from the Cholesky factors L of A^T W A.

    The k(k+1)/2 distinct entries of the inverse are formed as length-n
    vectors and contracted with the design in one einsum, which allocates
    nothing of size (h, n) but the result.
    """
    k = d.k
    Li: list[list[np.ndarray | None]] = [[None] * k for _ in range(k)]  # L^-1
    for i in range(k):
        Li[i][i] = 1.0 / L[i][i]
        for j in range(i):
            v = L[i][j] * Li[j][j]
            for p in range(j + 1, i):
                v = v + L[i][p] * Li[p][j]
            Li[i][j] = -v * Li[i][i]
    inv = np.empty((len(d.pairs), L[0][0].shape[0]))
    for m, (p, q) in enumerate(d.pairs):  # (L^-T L^-1)[p, q], p >= q
        v = Li[p][p] * Li[p][q]
        for i in range(p + 1, k):
            v = v + Li[i][p] * Li[i][q]
        inv[m] = v
    return _contract("ph,pn->hn", d.quadT, inv)


def _pinv_variance(d: _Design, P: np.ndarray) -> np.ndarray:
    """``a_j^T P P^T a_j`` (h, n) for P (n, k, h) = pinv(sqrt(W) A), so P P^T = (A^T W A)^+."""
    AP = d.A[None, :, 0, None] * P[:, None, 0, :]  # (n, h rows j, h), summed term by term
    for i in range(1, d.k):
        AP += d.A[None, :, i, None] * P[:, None, i, :]
    return (AP * AP).sum(axis=-1).T


def _fit_variance(d: _Design, w: np.ndarray) -> np.ndarray:
    """``a_j^T (A^T W A)^-1 a_j`` for every row j, shape (h, n); needs >= k weights > 0."""
    L, ok = _cholesky(d, _products(d.outerT, w))
    var = _factor_variance(d, L)
    bad = np.flatnonzero(~ok)
    if bad.size:
        P = _pinv_fit(d, np.zeros((d.h, bad.size)), w[:, bad])[1]
        var[:, bad] = _pinv_variance(d, P)
    return var


# --------------------------------------------------------------------------- cleaning


def _clean_group(d: _Design, y, good, inv_err, threshold):
    """Clean the series in the columns of ``y`` (h, N); updates ``good`` in place.

    ``y`` holds zeros at the pixels that are not good; ``inv_err`` is None for
    unweighted fits, else 1/err, zero at the pixels that are not good (updated
    in place too).  Returns ``fit`` (h, N), ``clipped`` (h, N) and ``(cols, sigma)``:
    the 1-sigma fit uncertainties ``sigma`` (h, len(cols)) of the columns
    ``cols`` whose fit has spare degrees of freedom.

    The clipping candidate of a series is its good pixel with the largest
    studentized deleted residual ``|t_j|``.  With residuals ``r_j`` (divided
    by err when weighted), leverages ``h_j``, ``SSR = sum r_j^2`` over the n
    good pixels and ``u_j = r_j^2 / (1 - h_j)``, the residual sum of squares
    of the fit without pixel j is ``SSR - u_j``, so
    ``t_j^2 = (n - k - 1) u_j / (SSR - u_j)``.  That grows with ``u_j``
    (``u_j <= SSR``), so the candidate is the pixel with the largest ``u_j``
    and only its t is evaluated.
    """
    h, N = y.shape
    k = d.k
    weighted = inv_err is not None
    ng = np.count_nonzero(good, axis=0)
    part = np.flatnonzero(ng < h)
    can_clip = h >= k + 2  # else no series has a spare degree of freedom

    def multiplier(cols):
        if weighted:
            return inv_err if cols is None else _columns(inv_err, cols)
        return good if cols is None else _columns(good, cols)

    def weights(cols):
        if weighted:
            m = multiplier(cols)
            return m * m
        return multiplier(cols).astype(np.float64)

    # inflate: 1 / (1 - leverage) of the series being examined
    if weighted:
        w = weights(None)
        coef, var = _fit(d, y, w, ng, variance=can_clip)
        inflate = _inflation(np.multiply(var, w, out=var)) if can_clip else None
    else:
        coef = _products(d.pinv, y)
        inflate = d.inflate
        if part.size:
            coef[:, part], var = _fit(
                d, _columns(y, part), weights(part), ng[part], variance=can_clip
            )
            if can_clip:
                inflate_part = _inflation(np.multiply(var, weights(part), out=var))
        if h < 2:
            coef[:] = 0.0
    fit = _products(d.A, coef)

    clipped = np.zeros((h, N), dtype=bool)
    cols = None  # None: all columns
    ys, fs, ngs = y, fit, ng
    thr2 = threshold * threshold
    while can_clip:
        r = ys - fs
        if weighted or cols is not None:
            r *= multiplier(cols)
        elif part.size:
            r[:, part] *= _columns(good, part)
        ssr = _sum_squares(r)
        u = r
        u *= r
        if cols is None and not weighted and part.size:
            # the all-good series share the leverages in d.inflate, the others not
            u_part = _columns(u, part) * inflate_part
            u *= inflate
            u[:, part] = u_part
        else:
            u *= inflate
        umax = u.max(axis=0)
        dof = ngs - (k + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            t2 = dof * umax / np.maximum(ssr - umax, 0.0)  # inf: the rest is exact
        cand = np.flatnonzero((dof >= 1) & (t2 > thr2))
        if cand.size:
            m = multiplier(None if cols is None else cols[cand])
            m = m if cols is not None else _columns(m, cand)
            scale_y = np.abs(_columns(ys, cand) * m).max(axis=0)
            spread = np.sqrt(ssr[cand] / ngs[cand])
            cand = cand[spread > _DEGENERATE_RTOL * scale_y]
        if not cand.size:
            break
        worst = _columns(u, cand).argmax(axis=0)
        hit = cand if cols is None else cols[cand]
        good[worst, hit] = False
        clipped[worst, hit] = True
        if weighted:
            inv_err[worst, hit] = 0.0
        ng[hit] -= 1
        ys, ngs = _columns(y, hit), ng[hit]
        w = weights(hit)
        coef, var = _fit(d, ys, w, ngs, variance=True)
        fs = _products(d.A, coef)
        inflate = _inflation(np.multiply(var, w, out=var))
        fit[:, hit] = fs
        cols = hit

    rep = np.flatnonzero(ng < h)
    sel = rep[ng[rep] >= k] if weighted else rep[ng[rep] > k]
    sigma = np.empty((h, 0))
    if sel.size:
        ngs = ng[sel].astype(np.float64)
        ws = weights(sel)
        r = (_columns(y, sel) - _columns(fit, sel)) * multiplier(sel)
        with np.errstate(invalid="ignore", divide="ignore"):
            chi2 = _sum_squares(r) / (ngs - k)
        factor = np.where(ngs > k, np.maximum(chi2, 1.0), 1.0) if weighted else chi2
        sigma = np.sqrt(_fit_variance(d, ws) * factor)
    return fit, clipped, (sel, sigma)


def _clean_group_compiled(d: _Design, y, good, inv_err, threshold):
    """:func:`_clean_group` by the compiled per-series kernel when numba is there.

    Unweighted series go through :func:`exomiri.steps._jit_clean.clean_series`,
    which mirrors this module's arithmetic operation for operation (same
    results, several times faster); the series it leaves (minimum-norm
    fits, doubtful Cholesky pivots) and weighted cleaning take the numpy path.
    """
    if inv_err is not None:
        return _clean_group(d, y, good, inv_err, threshold)
    try:
        from ._jit_clean import clean_series
    except ImportError:  # pragma: no cover - numba missing
        return _clean_group(d, y, good, inv_err, threshold)
    fit, clipped, sigma, has_sigma, fallback = clean_series(
        y, good, d.A, d.pinv, d.quadT, d.inflate[:, 0], float(threshold)
    )
    rest = np.flatnonzero(fallback)
    if rest.size:
        rest_good = _columns(good, rest)
        rest_fit, rest_clipped, (rest_sel, rest_sigma) = _clean_group(
            d, _columns(y, rest), rest_good, None, threshold
        )
        good[:, rest] = rest_good
        fit[:, rest] = rest_fit
        clipped[:, rest] = rest_clipped
        has_sigma[rest[rest_sel]] = True
        sigma[:, rest[rest_sel]] = rest_sigma
    sel = np.flatnonzero(has_sigma)
    return fit, clipped, (sel, _columns(sigma, sel))


def _cube_index(flat, N, S, ncols, starts, i0):
    """Cube indices (integration, row, column) of flat indices into a (h, N) group array."""
    j, n = np.divmod(flat, N)
    b, s = np.divmod(n, S)
    w, c = np.divmod(s, ncols)
    return i0 + b, starts[w] + j, c


def _clean_chunk_compiled(data, err, bad, out, i0, i1, groups, order, threshold, weighted):
    """:func:`_clean_chunk` with the group arrays gathered from the cube and the results
    written back by compiled loops (pure data movement and the same float32 casts:
    identical results), for unweighted cleaning of native float cubes; otherwise, or
    without numba, :func:`_clean_chunk` itself."""
    try:
        from ._jit_clean import gather_windows, scatter_windows
    except ImportError:  # pragma: no cover - numba missing
        gather_windows = None
    if (
        weighted
        or gather_windows is None
        or not all(a.dtype.kind == "f" and a.dtype.isnative for a in (data, err))
    ):
        _clean_chunk(data, err, bad, out, i0, i1, groups, order, threshold, weighted)
        return
    ncols = data.shape[2]
    has_bad = bad is not None and bool(bad[i0:i1].any())
    bad_arg = bad if has_bad else np.zeros((1, 1, 1), dtype=bool)
    for h, windows in groups:
        d = _design(h, order)
        starts = np.array([a for a, _ in windows], dtype=np.int64)
        N = (i1 - i0) * len(windows) * ncols
        y = np.empty((h, N))
        good = np.empty((h, N), dtype=bool)
        gather_windows(data, bad_arg, has_bad, i0, i1, starts, h, y, good)
        fit, clipped, (sel, sigma) = _clean_group_compiled(d, y, good, None, threshold)
        sigma_at = np.full(N, -1, dtype=np.int64)
        sigma_at[sel] = np.arange(sel.size)
        scatter_windows(
            data, err, i0, i1, starts, h, np.ascontiguousarray(fit), good,
            np.ascontiguousarray(clipped), sigma_at, np.ascontiguousarray(sigma, dtype=np.float64),
            out["data"], out["err"], out["replaced"], out["clipped"], out["fit"],
        )


def _clean_chunk(data, err, bad, out, i0, i1, groups, order, threshold, weighted):
    """Clean integrations [i0, i1) and write them into the output cubes."""
    out["data"][i0:i1] = data[i0:i1]
    out["err"][i0:i1] = err[i0:i1]
    out["replaced"][i0:i1] = False
    out["clipped"][i0:i1] = False
    B = i1 - i0
    ncols = data.shape[2]
    any_bad = bad is not None and bad[i0:i1].any()
    for h, windows in groups:
        d = _design(h, order)
        nw = len(windows)
        shape = (h, B, nw, ncols)
        Y = np.empty(shape)
        M = np.empty(shape, dtype=bool) if any_bad else None
        E = np.empty(shape) if weighted else None
        for iw, (a, b) in enumerate(windows):
            Y[:, :, iw] = data[i0:i1, a:b].transpose(1, 0, 2)
            if any_bad:
                M[:, :, iw] = bad[i0:i1, a:b].transpose(1, 0, 2)
            if weighted:
                E[:, :, iw] = err[i0:i1, a:b].transpose(1, 0, 2)
        y = Y.reshape(h, -1)
        N, S = y.shape[1], nw * ncols
        good = np.isfinite(y)
        if any_bad:
            good &= ~M.reshape(h, -1)
        inv_err = None
        if weighted:
            E = E.reshape(h, -1)
            with np.errstate(invalid="ignore", divide="ignore"):
                good &= np.isfinite(E) & (E > 0)
                inv_err = np.where(good, 1.0 / E, 0.0)
        np.copyto(y, 0.0, where=~good)
        fit, clipped, (sel, sigma) = _clean_group_compiled(d, y, good, inv_err, threshold)

        fit_cube = fit.reshape(shape)
        for iw, (a, b) in enumerate(windows):
            out["fit"][i0:i1, a:b] = fit_cube[:, :, iw].transpose(1, 0, 2)
        starts = np.array([a for a, _ in windows])
        replaced = ~good
        flat = np.flatnonzero(replaced)
        if flat.size:
            idx = _cube_index(flat, N, S, ncols, starts, i0)
            out["data"][idx] = fit.ravel()[flat]
            out["replaced"][idx] = True
            old = out["err"][idx]
            new = np.where(np.isfinite(old), old, np.nan)
            # a series with fewer than two good pixels has no fit: its fill is no estimate
            new[np.count_nonzero(good, axis=0)[flat % N] < 2] = np.nan
            if sel.size:
                rows, pos = np.nonzero(replaced[:, sel])
                new_sel = np.ravel_multi_index((rows, sel[pos]), (h, N))
                new[np.searchsorted(flat, new_sel)] = sigma[rows, pos]
            out["err"][idx] = new
        flat = np.flatnonzero(clipped)
        if flat.size:
            out["clipped"][_cube_index(flat, N, S, ncols, starts, i0)] = True


def _default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def clean_cube(
    data,
    err,
    bad=None,
    *,
    window_heights=(40,),
    poly_order: int = 4,
    outlier_threshold: float = 4.0,
    weighted: bool = False,
    block_size: int = 128,
    n_threads: int | None = None,
) -> CleanResult:
    """Replace bad pixels and iteratively clipped outliers by polynomial fits along rows.

    Parameters
    ----------
    data, err : (nints, nrows, ncols) arrays (any float dtype or byte order).
    bad : bool array of the same shape, True where the caller's DQ mask
        rejects a pixel; None for none.  Non-finite data are bad as well.
    window_heights : row counts of the windows, used cyclically from row 0.
    poly_order : order of the polynomial in the row index.
    outlier_threshold : threshold on the externally studentized residual
        ``|t_j| = |r_j| / (s_(j) sqrt(1 - h_j))``, roughly a number of
        standard deviations: ``s_(j)`` is the residual scale of the series
        fitted without pixel j and ``h_j`` its leverage (see the module
        docstring).  A series' worst pixel is clipped, and the series refitted,
        while its ``|t_j|`` exceeds this and the series has at least
        poly_order + 3 good pixels.  On Gaussian noise ``t_j`` follows
        Student's t with (good pixels - poly_order - 2) degrees of freedom, so
        about ``2 * scipy.stats.t.sf(threshold, dof)`` of clean pixels are
        clipped (poly_order 4, 40-row windows: 3e-4 at 4, 2e-5 at 5).  This deliberately
        differs from the reference tool, which clips while ``|r| / std(r)``
        exceeds the threshold: that std includes the candidate pixel, which
        caps a single pixel's deviation at about ``sqrt(n (1 - h_j))`` (4.9 at
        the edge of a 40-row window, so threshold 5 misses outliers of any
        size there) and lets outliers in one series mask each other.
    weighted : fit with weights 1/err**2 and use residuals ``r/err`` (and the
        weighted leverages); pixels whose err is not finite and positive are
        bad.
    block_size : at most this many integrations are processed together by
        one thread (at most 16 are, to keep the work arrays in cache); the
        temporary memory is about 35 bytes per pixel of that many
        integrations per thread (60 when weighted).  Results do not depend
        on it.
    n_threads : blocks of integrations cleaned concurrently; default: the
        usable CPUs, at most 8.  Results do not depend on it.

    Returns
    -------
    CleanResult.  At replaced pixels ``err`` is the 1-sigma uncertainty of the
    fitted value; where the fit has no spare degrees of freedom (unweighted:
    good pixels <= poly_order + 1; weighted: < poly_order + 1) it is the input
    err of the pixel, or NaN if that is not finite.  Where the series has
    fewer than two good pixels (a window of a column that is NaN or masked
    throughout, such as a saturated or reference column) there is no fit:
    the pixel is filled with 0 and its ``err`` is NaN, so that no later step
    uses it.
    """
    data = _cube("data", data)
    err = _cube("err", err)
    if err.shape != data.shape:
        raise InputError(
            f"err has shape {err.shape} but data has shape {data.shape}; they must match. "
            "Pass the ERR cube that belongs to the SCI cube."
        )
    if bad is not None:
        bad = _cube("bad", bad)
        if bad.shape != data.shape:
            raise InputError(
                f"bad has shape {bad.shape} but data has shape {data.shape}; they must match. "
                "Build it from the DQ cube of the same data, e.g. exomiri.dq.mask_from_dq(dq, bits)."
            )
        if bad.dtype != bool:
            raise InputError(
                f"bad must be a boolean mask, got dtype {bad.dtype}. "
                "Convert DQ values with exomiri.dq.mask_from_dq(dq, bits)."
            )
    for name, arr in (("data", data), ("err", err)):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise InputError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
    heights = _heights(window_heights)
    order = _as_int(poly_order, "poly_order", 0, "Use e.g. poly_order=4.")
    if (
        isinstance(outlier_threshold, bool)
        or not isinstance(outlier_threshold, numbers.Real)
        or not np.isfinite(outlier_threshold)
        or outlier_threshold <= 0
    ):
        raise InputError(
            f"outlier_threshold must be a positive number of standard deviations, got "
            f"{outlier_threshold!r}. Use e.g. outlier_threshold=4.0."
        )
    block = _as_int(block_size, "block_size", 1, "Use e.g. block_size=128.")
    threads = (
        _default_threads()
        if n_threads is None
        else _as_int(
            n_threads, "n_threads", 1, "Use e.g. n_threads=2, or None for the usable CPUs."
        )
    )

    nints, nrows, ncols = data.shape
    out = {
        "data": np.empty(data.shape, dtype=np.float32),
        "err": np.empty(data.shape, dtype=np.float32),
        "replaced": np.empty(data.shape, dtype=bool),
        "clipped": np.empty(data.shape, dtype=bool),
        "fit": np.empty(data.shape, dtype=np.float32),
    }
    groups: dict[int, list[tuple[int, int]]] = {}
    for a, b in window_edges(nrows, heights):
        groups.setdefault(b - a, []).append((a, b))
    group_list = sorted(groups.items())
    step = min(block, _CHUNK)
    chunks = [(i0, min(i0 + step, nints)) for i0 in range(0, nints, step)]
    if ncols and chunks:

        def work(span):
            _clean_chunk_compiled(
                data,
                err,
                bad,
                out,
                span[0],
                span[1],
                group_list,
                order,
                float(outlier_threshold),
                bool(weighted),
            )

        if threads > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(max_workers=min(threads, len(chunks))) as pool:
                list(pool.map(work, chunks))
        else:
            for span in chunks:
                work(span)
    return CleanResult(**out)


# --------------------------------------------------------------------------- derived products


def spatial_profile(fit, left: int = 26, right: int = 47) -> np.ndarray:
    """Normalised spatial profile from the fit cube of :func:`clean_cube`.

    Negative and non-finite values become 0, columns outside ``[left, right)``
    are 0, and each row is scaled to sum to 1 over ``[left, right)``; a row
    with nothing positive there becomes uniform, ``1 / (right - left)``.
    Returns float32 of the shape of ``fit`` (..., nrows, ncols).
    """
    fit = np.asarray(fit)
    if fit.ndim < 2:
        raise InputError(
            f"fit must have at least 2 dimensions (nrows, ncols), got shape {fit.shape}."
        )
    ncols = fit.shape[-1]
    hint = f"Give 0 <= left < right <= ncols = {ncols}, e.g. left=26, right=47."
    left = _as_int(left, "left", 0, hint)
    right = _as_int(right, "right", 0, hint)
    if right > ncols or left >= right:
        raise InputError(f"Columns [left, right) = [{left}, {right}) are not valid. {hint}")
    compiled = _spatial_profile_compiled(fit, left, right)
    if compiled is not None:
        return compiled
    core = np.array(fit[..., left:right], dtype=np.float64)
    core[~(core > 0)] = 0.0  # negatives and NaN
    core[np.isinf(core)] = 0.0
    total = core.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        core = np.where(total > 0, core / total, 1.0 / (right - left))
    profile = np.zeros(fit.shape, dtype=np.float32)
    profile[..., left:right] = core
    return profile


def _spatial_profile_compiled(fit: np.ndarray, left: int, right: int) -> np.ndarray | None:
    """:func:`spatial_profile` by the compiled kernel on blocks of integrations on threads
    (bit for bit the same: row sums in numpy's order); None where it does not apply."""
    if (
        fit.dtype.kind != "f"
        or not fit.dtype.isnative
        or right - left > _PAIRWISE_BLOCK
        or fit.size == 0
    ):
        return None
    try:
        from ._jit_pixels import spatial_profile_into
    except ImportError:  # pragma: no cover - numba missing
        return None
    cube = np.ascontiguousarray(fit).reshape(-1, *fit.shape[-2:])
    profile = np.empty(cube.shape, dtype=np.float32)

    def work(span: tuple[int, int]) -> None:
        part = slice(*span)
        spatial_profile_into(cube[part], left, right, profile[part])

    thread_map(work, spans(cube.shape[0], 32))
    return profile.reshape(fit.shape)


def outlier_counts(replaced, trace_columns, max_distance: int = 4) -> np.ndarray:
    """Replaced pixels near the trace, per integration and row.

    ``counts[i, row, d]`` is the number of replaced pixels of integration i in
    that row with ``|col - round(trace_columns[row])| <= d`` for d = 0 ..
    max_distance.  ``trace_columns`` has shape (nrows,) or (nints, nrows); rows
    whose trace column is not finite count nothing.  Returns int32
    (nints, nrows, max_distance + 1).
    """
    replaced = _cube("replaced", replaced)
    if replaced.dtype != bool:
        raise InputError(f"replaced must be a boolean cube, got dtype {replaced.dtype}.")
    nints, nrows, ncols = replaced.shape
    dmax = _as_int(max_distance, "max_distance", 0, "Use e.g. max_distance=4.")
    trace = np.asarray(trace_columns, dtype=np.float64)
    if trace.shape not in ((nrows,), (nints, nrows)):
        raise InputError(
            f"trace_columns has shape {trace.shape}; expected ({nrows},) or ({nints}, {nrows}), "
            "one trace column per row (and optionally per integration)."
        )
    finite = np.isfinite(trace)
    centre = np.rint(np.where(finite, trace, -1e9))
    # Only the 2 * max_distance + 1 columns around each row's centre matter:
    # gather them (offsets -d..d), then count outwards from the centre.
    offsets = np.arange(-dmax, dmax + 1)
    cols = centre[..., None] + offsets  # (.., nrows, 2 dmax + 1)
    inside = finite[..., None] & (cols >= 0) & (cols < ncols)
    index = np.where(inside, cols, 0).astype(np.intp)
    if index.ndim == 2:
        index = index[None]
        inside = inside[None]
    near = np.take_along_axis(replaced, index, axis=-1) & inside  # (nints, nrows, 2 dmax + 1)
    counts = np.empty((nints, nrows, dmax + 1), dtype=np.int32)
    counts[..., 0] = near[..., dmax]
    for dd in range(1, dmax + 1):
        counts[..., dd] = counts[..., dd - 1] + near[..., dmax - dd] + near[..., dmax + dd]
    return counts
