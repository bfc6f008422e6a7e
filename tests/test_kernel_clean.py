"""Tests of the outlier-cleaning kernel exomiri.steps.clean."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from exomiri.exceptions import InputError
from exomiri.steps.clean import (
    CleanResult,
    clean_cube,
    outlier_counts,
    spatial_profile,
    window_edges,
)

FIELDS = ("data", "err", "replaced", "clipped", "fit")


# --------------------------------------------------------------------------- helpers


def reference_series(y, bad, order, threshold, err=None):
    """Straightforward per-series cleaning: np.polyfit, clip the worst pixel, repeat.

    The worst pixel is the one with the largest externally studentized
    residual t_j = r_j / (s_(j) sqrt(1 - h_j)), from the explicit hat matrix;
    it is clipped while |t_j| > threshold and the series has n - k - 1 >= 1.
    With ``err`` the fit is weighted by 1/err**2 and residuals are r/err.
    """
    h = y.size
    k = order + 1
    x = np.arange(h, dtype=float)
    good = ~bad & np.isfinite(y)
    if err is not None:
        good &= np.isfinite(err) & (err > 0)
    clipped = np.zeros(h, dtype=bool)
    while True:
        n = good.sum()
        if n < 2:
            fit = np.zeros(h)
            break
        w = np.ones(n) if err is None else 1 / err[good]
        fit = np.polyval(np.polyfit(x[good], y[good], order, w=w), x)
        if n - k - 1 < 1:
            break
        r = (y[good] - fit[good]) * w
        X = np.vander(x[good], k) * w[:, None]  # sqrt(W) A
        lev = np.diag(X @ np.linalg.solve(X.T @ X, X.T))
        ssr = np.sum(r**2)
        if ssr == 0:
            break
        s2 = (ssr - r**2 / (1 - lev)) / (n - k - 1)
        with np.errstate(divide="ignore"):
            t = np.abs(r) / np.sqrt(np.maximum(s2, 0) * (1 - lev))
        if t.max() <= threshold:
            break
        worst = np.flatnonzero(good)[np.argmax(t)]
        good[worst] = False
        clipped[worst] = True
    return fit, ~good, clipped


def reference_cube(data, bad, window_heights, order, threshold, err=None):
    fit = np.zeros(data.shape)
    replaced = np.zeros(data.shape, dtype=bool)
    clipped = np.zeros(data.shape, dtype=bool)
    for i in range(data.shape[0]):
        for c in range(data.shape[2]):
            for a, b in window_edges(data.shape[1], window_heights):
                e = None if err is None else err[i, a:b, c].astype(float)
                f, rep, cl = reference_series(
                    data[i, a:b, c].astype(float), bad[i, a:b, c], order, threshold, e
                )
                fit[i, a:b, c], replaced[i, a:b, c], clipped[i, a:b, c] = f, rep, cl
    return fit, replaced, clipped


def smooth_trace(rng, nints, nrows, ncols, sigma):
    """Noiseless Gaussian-PSF trace with an amplitude varying smoothly along rows, and data."""
    rows = np.arange(nrows)[:, None]
    cols = np.arange(ncols)[None, :]
    amp = 400.0 * np.exp(-0.5 * ((rows - 0.6 * nrows) / (0.8 * nrows)) ** 2) + 40.0
    centre = ncols / 2 + 0.01 * (rows - nrows / 2)
    truth = amp * np.exp(-0.5 * ((cols - centre) / 2.0) ** 2) + 10.0
    truth = np.broadcast_to(truth, (nints, nrows, ncols))
    data = truth + rng.normal(0.0, sigma, truth.shape)
    return truth, data


def inject(rng, data, sigma, fraction, low=10.0, high=100.0):
    """Add outliers of low..high sigma (either sign) to a fraction of pixels."""
    hits = rng.random(data.shape) < fraction
    sign = rng.choice([-1.0, 1.0], hits.sum())
    data[hits] += sign * rng.uniform(low, high, hits.sum()) * sigma
    return hits


def assert_same(a: CleanResult, b: CleanResult):
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# --------------------------------------------------------------------------- window edges


def test_window_edges_single_height():
    edges = window_edges(416, [40])
    assert len(edges) == 11
    assert edges[:2] == [(0, 40), (40, 80)]
    assert edges[-1] == (400, 416)


def test_window_edges_tiled_and_zero_heights():
    assert window_edges(416, [150, 100, 50, 40, 30, 24]) == [
        (0, 150),
        (150, 250),
        (250, 300),
        (300, 340),
        (340, 370),
        (370, 394),
        (394, 416),
    ]
    assert window_edges(10, [3, 0, 2]) == [(0, 3), (3, 5), (5, 8), (8, 10)]
    assert window_edges(0, [40]) == []


@given(
    nrows=st.integers(0, 300),
    heights=st.lists(st.integers(0, 60), min_size=1, max_size=6).filter(any),
)
def test_window_edges_tile_the_rows(nrows, heights):
    edges = window_edges(nrows, heights)
    assert [a for a, _ in edges[1:]] == [b for _, b in edges[:-1]]
    if nrows:
        assert edges[0][0] == 0 and edges[-1][1] == nrows
    positive = [h for h in heights if h > 0]
    for n, (a, b) in enumerate(edges[:-1]):
        assert b - a == positive[n % len(positive)]


@pytest.mark.parametrize("heights", [[], [0], [0, 0], [-5], [40, -1], [2.5], "abc", None])
def test_window_edges_rejects_bad_heights(heights):
    with pytest.raises(InputError, match="window"):
        window_edges(100, heights)


# --------------------------------------------------------------------------- agreement with the reference


@pytest.mark.parametrize(
    ("heights", "order", "threshold"),
    [([40, 30], 4, 4.0), ([24], 2, 3.5), ([50, 17], 1, 4.0)],
)
def test_matches_reference(heights, order, threshold):
    rng = np.random.default_rng(11)
    nints, nrows, ncols = 3, 100, 7
    rows = np.arange(nrows)[None, :, None]
    data = 20 + 3 * np.sin(rows / 15.0) + rng.normal(0, 1, (nints, nrows, ncols))
    inject(rng, data, 1.0, 0.02, low=3.0, high=40.0)
    bad = rng.random(data.shape) < 0.01
    data[rng.random(data.shape) < 0.005] = np.nan
    data = data.astype(np.float32)
    err = np.ones_like(data)

    res = clean_cube(
        data, err, bad, window_heights=heights, poly_order=order, outlier_threshold=threshold
    )
    fit, replaced, clipped = reference_cube(data, bad, heights, order, threshold)

    assert res.clipped.sum() > 10  # the clipping was exercised
    np.testing.assert_array_equal(res.replaced, replaced)
    np.testing.assert_array_equal(res.clipped, clipped)
    np.testing.assert_allclose(res.fit, fit, rtol=1e-4, atol=1e-4 * 20)
    np.testing.assert_allclose(res.data[replaced], fit[replaced], rtol=1e-4, atol=1e-4 * 20)
    np.testing.assert_array_equal(res.data[~replaced], data[~replaced])
    assert res.replaced.sum() == (bad | ~np.isfinite(data) | clipped).sum()
    for name in FIELDS:
        arr = getattr(res, name)
        assert arr.shape == data.shape
        assert arr.dtype == (bool if name in ("replaced", "clipped") else np.float32)


def test_weighted_matches_reference():
    # errors spread over a factor of 10: the weighted leverages differ enough
    # from the unweighted ones to change clipping decisions
    rng = np.random.default_rng(21)
    nints, nrows, ncols = 2, 80, 20
    rows = np.arange(nrows)[None, :, None]
    err = rng.uniform(0.3, 3.0, (nints, nrows, ncols))
    err[rng.random(err.shape) < 0.01] = 0.0
    data = 50 + 0.1 * rows + rng.normal(0, 1, err.shape) * err
    inject(rng, data, 2.0, 0.02, low=3.0, high=40.0)
    bad = rng.random(data.shape) < 0.01
    res = clean_cube(data, err, bad, window_heights=[40, 25], weighted=True)
    fit, replaced, clipped = reference_cube(data, bad, [40, 25], 4, 4.0, err=err)
    assert res.clipped.sum() > 20
    np.testing.assert_array_equal(res.replaced, replaced)
    np.testing.assert_array_equal(res.clipped, clipped)
    np.testing.assert_allclose(res.fit, fit, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------- science on a synthetic trace


def test_recovers_injected_outliers_on_smooth_trace():
    # The published settings: 40-row windows and threshold 5.  A rule that
    # divides by the std of residuals including the outlier cannot exceed
    # about sqrt(h (1 - leverage)) = 4.9 at a window edge; the studentized
    # residual has no such cap.
    rng = np.random.default_rng(2024)
    sigma = 2.0
    truth, data = smooth_trace(rng, 6, 200, 40, sigma)
    hits = inject(rng, data, sigma, 0.005)
    res = clean_cube(
        data.astype(np.float32),
        np.full(data.shape, sigma, np.float32),
        None,
        window_heights=[40],
        outlier_threshold=5.0,
    )

    assert hits.sum() > 150
    assert res.replaced[hits].mean() >= 0.95
    false_positive = res.replaced[~hits].mean()
    assert false_positive < 1e-3
    found = hits & res.replaced
    assert np.all(np.abs(res.data[found] - truth[found]) < 3 * sigma)
    # The fit follows the trace everywhere to well within the noise.
    assert np.abs(res.fit - truth).mean() < 0.5 * sigma


def test_two_large_outliers_in_one_series_are_both_found():
    # Same-sign pairs of 30 and 35 sigma.  Against the std of all residuals
    # neither exceeds 5, each inflating the other's scale.  The studentized
    # deleted residual of one still has the other in its scale but reaches
    # 6 to 8 here; once it is clipped the second stands out alone.
    rng = np.random.default_rng(8)
    rows = np.arange(40)
    pairs = [(5, 30), (12, 13), (0, 20), (17, 39), (25, 26), (3, 36)]
    data = np.empty((1, 40, len(pairs)))
    hits = np.zeros(data.shape, dtype=bool)
    for c, pair in enumerate(pairs):
        y = 100 + 5 * np.sin(rows / 9.0) + rng.normal(0, 1, 40)
        clean_y = y.copy()
        y[list(pair)] += [30.0, 35.0]
        data[0, :, c] = y
        hits[0, list(pair), c] = True
        # the std-based rule misses both
        r = y - np.polyval(np.polyfit(rows, y, 4), rows)
        assert np.abs(r).max() / r.std() < 5
        # and without the pair the series is clean at this threshold
        r = clean_y - np.polyval(np.polyfit(rows, clean_y, 4), rows)
        assert np.abs(r).max() / r.std() < 4

    res = clean_cube(data, np.ones_like(data), None, window_heights=[40], outlier_threshold=5.0)
    np.testing.assert_array_equal(res.clipped, hits)
    np.testing.assert_array_equal(res.replaced, hits)
    clipped = reference_cube(data, np.zeros(data.shape, bool), [40], 4, 5.0)[2]
    np.testing.assert_array_equal(clipped, hits)


def test_false_positive_rate_on_pure_noise_follows_student_t():
    # Without outliers a pixel is clipped when it is the series maximum and its
    # studentized residual, Student-t with n - k - 1 degrees of freedom,
    # exceeds the threshold: the clipped fraction is about the two-sided tail
    # probability (a union bound over the series that is nearly exact here).
    rng = np.random.default_rng(99)
    data = rng.normal(0.0, 1.0, (200, 40, 400))
    threshold = 4.0
    res = clean_cube(
        data, np.ones_like(data), None, window_heights=[40], outlier_threshold=threshold
    )
    expected = 2 * stats.t.sf(threshold, 40 - 5 - 1)  # 3.2e-4
    fraction = res.clipped.mean()
    assert expected / 2 < fraction < 2 * expected
    assert fraction < 1e-3
    assert np.array_equal(res.replaced, res.clipped)


def test_bad_mask_and_nonfinite_pixels_are_replaced():
    rng = np.random.default_rng(5)
    sigma = 1.0
    truth, data = smooth_trace(rng, 2, 120, 30, sigma)
    bad = np.zeros(data.shape, dtype=bool)
    bad[0, 17, 15] = bad[1, 60, 14] = bad[1, 119, 3] = True
    data[0, 18, 15] = np.nan
    data[1, 0, 16] = np.inf
    data[1, 77, 2] = -np.inf
    data[0, 50, 5] = 1e6  # bad-masked and huge: must not disturb the fit
    bad[0, 50, 5] = True
    res = clean_cube(
        data, np.full(data.shape, sigma), bad, window_heights=[40], outlier_threshold=5.0
    )

    expected = bad | ~np.isfinite(data)
    assert np.all(res.replaced[expected])
    assert not np.any(res.clipped[expected])
    assert np.all(np.isfinite(res.data))
    assert np.all(np.abs(res.data[expected] - truth[expected]) < 3 * sigma)
    assert res.replaced.sum() - expected.sum() <= 2  # essentially no other pixel touched


def test_fewer_than_two_good_pixels_gives_zero_fit():
    data = np.arange(40, dtype=np.float32).reshape(1, 40, 1) + 100
    bad = np.ones(data.shape, dtype=bool)
    bad[0, 7, 0] = False
    res = clean_cube(data, np.ones_like(data), bad, window_heights=[40])
    assert np.all(res.fit == 0)
    assert res.data[0, 7, 0] == 107  # the one good pixel is kept
    assert np.all(res.data[bad] == 0)
    assert res.replaced.sum() == 39


def test_underdetermined_window_interpolates_the_good_pixels():
    data = np.linspace(1, 5, 40, dtype=np.float32).reshape(1, 40, 1) ** 2
    bad = np.ones(data.shape, dtype=bool)
    keep = [3, 20, 33]
    bad[0, keep, 0] = False
    res = clean_cube(data, np.ones_like(data), bad, window_heights=[40])
    np.testing.assert_allclose(res.fit[0, keep, 0], data[0, keep, 0], rtol=1e-5)
    assert not res.clipped.any()


def test_exact_polynomial_and_constant_series_are_not_clipped():
    rows = np.arange(80, dtype=float)
    data = np.stack([np.full(80, 7.0), 0.01 * rows**3 - rows, np.zeros(80)], axis=-1)[None]
    res = clean_cube(data, np.ones_like(data), None, window_heights=[40])
    assert not res.replaced.any()
    np.testing.assert_allclose(res.fit, data, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- inputs, blocks, threads


def test_inputs_unchanged_readonly_big_endian():
    rng = np.random.default_rng(9)
    _, data = smooth_trace(rng, 5, 90, 12, 1.0)
    inject(rng, data, 1.0, 0.01)
    data[0, 3, 4] = np.nan
    err = np.full(data.shape, 1.0)
    err[1, 5, 5] = 0.0
    bad = rng.random(data.shape) < 0.01

    native = clean_cube(data.astype(np.float32), err.astype(np.float32), bad, weighted=True)

    data_be = data.astype(">f4")
    err_be = err.astype(">f4")
    copies = [data_be.copy(), err_be.copy(), bad.copy()]
    for arr in (data_be, err_be, bad):
        arr.setflags(write=False)
    res = clean_cube(data_be, err_be, bad, weighted=True)

    for arr, copy in zip((data_be, err_be, bad), copies, strict=True):
        np.testing.assert_array_equal(arr, copy)
        assert arr.dtype == copy.dtype
    assert_same(res, native)
    assert res.data.dtype == np.float32 and res.data.dtype.isnative


def test_block_size_and_threads_do_not_change_results():
    rng = np.random.default_rng(3)
    _, data = smooth_trace(rng, 37, 100, 10, 1.5)
    inject(rng, data, 1.5, 0.01)
    bad = rng.random(data.shape) < 0.003
    err = np.full(data.shape, 1.5, np.float32)
    err[rng.random(data.shape) < 0.002] = np.nan
    data = data.astype(np.float32)
    for weighted in (False, True):
        kwargs = {"window_heights": [30, 24], "weighted": weighted}
        base = clean_cube(data, err, bad, block_size=128, n_threads=1, **kwargs)
        assert base.clipped.sum() > 0
        for block, threads in ((1, 1), (5, 2), (16, 3), (17, 1)):
            assert_same(
                clean_cube(data, err, bad, block_size=block, n_threads=threads, **kwargs), base
            )
        # cleaning the cube piece by piece is the same as cleaning it at once
        pieces = [
            clean_cube(data[i : i + 10], err[i : i + 10], bad[i : i + 10], **kwargs)
            for i in range(0, 37, 10)
        ]
        for name in FIELDS:
            np.testing.assert_array_equal(
                np.concatenate([getattr(p, name) for p in pieces]), getattr(base, name)
            )
        # and so is cleaning it one column at a time (groups of one or two series)
        cols = [
            clean_cube(
                data[:6, :, c : c + 1],
                err[:6, :, c : c + 1],
                bad[:6, :, c : c + 1],
                block_size=1,
                **kwargs,
            )
            for c in range(data.shape[2])
        ]
        for name in FIELDS:
            np.testing.assert_array_equal(
                np.concatenate([getattr(p, name) for p in cols], axis=2), getattr(base, name)[:6]
            )


# --------------------------------------------------------------------------- weighted mode


def test_weighted_mode_finds_outliers_with_varying_errors():
    rng = np.random.default_rng(77)
    nints, nrows, ncols = 6, 160, 30
    truth, _ = smooth_trace(rng, nints, nrows, ncols, 1.0)
    sigma = np.sqrt(truth / 5.0) + 0.5  # photon-like noise, different in every pixel
    data = truth + rng.normal(0, 1, truth.shape) * sigma
    hits = rng.random(data.shape) < 0.005
    data[hits] += rng.choice([-1, 1], hits.sum()) * rng.uniform(10, 100, hits.sum()) * sigma[hits]
    err = sigma.copy()
    err[0, 10, 10] = 0.0
    err[1, 20, 11] = np.nan
    res = clean_cube(data, err, None, window_heights=[100], weighted=True, outlier_threshold=5.0)

    assert res.replaced[hits].mean() >= 0.95
    assert res.replaced[~hits].mean() < 2e-3
    assert res.replaced[0, 10, 10] and res.replaced[1, 20, 11]
    assert not res.clipped[0, 10, 10]
    found = hits & res.replaced
    assert np.all(np.abs(res.data[found] - truth[found]) < 3 * sigma[found])
    # pixels without a usable err get the fit uncertainty, which the window supports
    assert 0 < res.err[1, 20, 11] < sigma[1, 20, 11]


# --------------------------------------------------------------------------- replaced-pixel uncertainties


def _fit_sigma(x_good, y_good, w_good, x0, order, weighted):
    """Independent 1-sigma of a polynomial fit value at x0: sqrt(v^T C v)."""
    V = np.vander(x_good, order + 1)
    W = np.diag(w_good)
    cinv = np.linalg.inv(V.T @ W @ V)
    coef = cinv @ V.T @ W @ y_good
    r = y_good - V @ coef
    dof = x_good.size - (order + 1)
    chi2 = np.sum(w_good * r**2) / dof
    scale = max(chi2, 1.0) if weighted else chi2
    v = np.vander(np.array([x0], dtype=float), order + 1)[0]
    return np.sqrt(scale * v @ cinv @ v)


def test_replaced_pixel_uncertainty_unweighted():
    rng = np.random.default_rng(12)
    sigma = 3.0
    rows = np.arange(40, dtype=float)
    y = 100 + 0.5 * rows + rng.normal(0, sigma, 40)
    data = y.reshape(1, 40, 1)
    bad = np.zeros(data.shape, dtype=bool)
    bad[0, [5, 39], 0] = True
    err = np.full(data.shape, sigma)
    res = clean_cube(data, err, bad, window_heights=[40])

    good = ~bad[0, :, 0]
    for j in (5, 39):
        expected = _fit_sigma(rows[good], y[good], np.ones(good.sum()), j, 4, weighted=False)
        assert res.err[0, j, 0] == pytest.approx(expected, rel=1e-4)
        assert res.err[0, j, 0] < sigma
    assert res.err[0, 5, 0] < res.err[0, 39, 0]  # extrapolating to the edge is less certain
    np.testing.assert_array_equal(res.err[~bad], err[~bad].astype(np.float32))


def test_replaced_pixel_uncertainty_weighted_and_fallbacks():
    rng = np.random.default_rng(13)
    rows = np.arange(30, dtype=float)
    e = 1.0 + rows / 30
    y = 50 - 0.2 * rows + rng.normal(0, 1, 30) * e
    data = np.stack([y, y, y], axis=-1)[None]
    err = np.stack([e, e, e], axis=-1)[None].copy()
    bad = np.zeros(data.shape, dtype=bool)
    bad[0, 12, 0] = True
    bad[0, :, 1] = True  # column 1: only five good pixels, no spare degree of freedom
    bad[0, [0, 7, 14, 21, 28], 1] = False
    err[0, 3, 1] = np.inf  # a replaced pixel without a usable input err
    res = clean_cube(data, err, bad, window_heights=[30], weighted=True)

    good = ~bad[0, :, 0]
    expected = _fit_sigma(rows[good], y[good], 1 / e[good] ** 2, 12, 4, weighted=True)
    assert res.err[0, 12, 0] == pytest.approx(expected, rel=1e-4)
    assert res.err[0, 12, 0] < e[12]
    # Weighted with exactly poly_order + 1 good pixels: (A^T W A)^-1 unscaled.
    g1 = ~bad[0, :, 1]
    cinv = np.linalg.inv(
        np.vander(rows[g1], 5).T @ np.diag(1 / e[g1] ** 2) @ np.vander(rows[g1], 5)
    )
    v = np.vander(np.array([10.0]), 5)[0]
    assert res.err[0, 10, 1] == pytest.approx(np.sqrt(v @ cinv @ v), rel=1e-3)

    # Unweighted with no spare degree of freedom: input err, NaN where that is not finite.
    res_u = clean_cube(data, err, bad, window_heights=[30])
    assert res_u.err[0, 10, 1] == np.float32(err[0, 10, 1])
    assert np.isnan(res_u.err[0, 3, 1])


# --------------------------------------------------------------------------- spatial profile


def test_spatial_profile_normalised_over_columns():
    rng = np.random.default_rng(4)
    fit = rng.normal(1.0, 1.0, (3, 20, 72)).astype(np.float32)
    fit[1, 4, 26:47] = -1.0  # nothing positive: uniform fallback
    fit[2, 5, 30] = np.nan
    prof = spatial_profile(fit)
    assert prof.dtype == np.float32 and prof.shape == fit.shape
    np.testing.assert_allclose(prof[..., 26:47].sum(axis=-1), 1.0, rtol=1e-5)
    assert np.all(prof[..., :26] == 0) and np.all(prof[..., 47:] == 0)
    assert np.all(prof >= 0)
    np.testing.assert_allclose(prof[1, 4, 26:47], 1 / 21)
    assert prof[2, 5, 30] == 0
    row = np.clip(fit[0, 0, 26:47], 0, None)
    np.testing.assert_allclose(prof[0, 0, 26:47], row / row.sum(), rtol=1e-5)


def test_spatial_profile_custom_columns_and_validation():
    fit = np.ones((1, 3, 10))
    prof = spatial_profile(fit, left=2, right=6)
    np.testing.assert_allclose(prof[0, :, 2:6], 0.25)
    assert prof[0, :, [0, 1, 6, 9]].sum() == 0
    for left, right in ((5, 5), (6, 2), (-1, 4), (2, 11)):
        with pytest.raises(InputError, match="left"):
            spatial_profile(fit, left=left, right=right)


# --------------------------------------------------------------------------- outlier counts


def test_outlier_counts_hand_built():
    replaced = np.zeros((2, 3, 10), dtype=bool)
    trace = np.array([4.2, 5.6, np.nan])  # rounds to columns 4 and 6
    replaced[0, 0, [4, 5, 2, 9]] = True  # distances 0, 1, 2, 5
    replaced[1, 1, [6, 3, 9, 8]] = True  # distances 0, 3, 3, 2
    replaced[1, 2, :] = True  # no trace position: counts nothing
    counts = outlier_counts(replaced, trace)
    assert counts.shape == (2, 3, 5) and counts.dtype == np.int32
    np.testing.assert_array_equal(counts[0, 0], [1, 2, 3, 3, 3])
    np.testing.assert_array_equal(counts[1, 1], [1, 1, 2, 4, 4])
    assert counts[0, 1:].sum() == 0 and counts[1, 0].sum() == 0 and counts[1, 2].sum() == 0
    np.testing.assert_array_equal(outlier_counts(replaced, trace, max_distance=1)[0, 0], [1, 2])


def test_outlier_counts_validation():
    with pytest.raises(InputError, match="trace_columns"):
        outlier_counts(np.zeros((1, 3, 4), dtype=bool), np.zeros(4))
    with pytest.raises(InputError, match="max_distance"):
        outlier_counts(np.zeros((1, 3, 4), dtype=bool), np.zeros(3), max_distance=-1)


# --------------------------------------------------------------------------- argument validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window_heights": []}, "window_heights"),
        ({"window_heights": [0]}, "window_heights"),
        ({"window_heights": [40, -2]}, "window height"),
        ({"poly_order": -1}, "poly_order"),
        ({"poly_order": 2.5}, "poly_order"),
        ({"outlier_threshold": 0}, "outlier_threshold"),
        ({"outlier_threshold": -3.0}, "outlier_threshold"),
        ({"outlier_threshold": float("nan")}, "outlier_threshold"),
        ({"block_size": 0}, "block_size"),
        ({"n_threads": 0}, "n_threads"),
    ],
)
def test_clean_cube_rejects_bad_arguments(kwargs, match):
    data = np.zeros((2, 40, 5), np.float32)
    with pytest.raises(InputError, match=match):
        clean_cube(data, data, None, **kwargs)


def test_clean_cube_rejects_shape_mismatches():
    data = np.zeros((2, 40, 5), np.float32)
    with pytest.raises(InputError, match="err has shape"):
        clean_cube(data, data[:1], None)
    with pytest.raises(InputError, match="bad has shape"):
        clean_cube(data, data, np.zeros((2, 40, 4), dtype=bool))
    with pytest.raises(InputError, match="boolean"):
        clean_cube(data, data, np.zeros((2, 40, 5), dtype=np.uint32))
    with pytest.raises(InputError, match="cube"):
        clean_cube(data[0], data[0], None)
