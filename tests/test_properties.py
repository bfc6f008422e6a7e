"""Property-based tests of the kernels: random shapes, NaN and DQ patterns and parameters.

Every kernel must either return or raise :class:`exomiri.InputError` (never
another exception), must not modify its inputs (they are passed read-only,
so an in-place write fails loudly, and compared with copies afterwards), and
must keep its invariants on inputs whose answer is known exactly.  Examples
are bounded (``MAX`` per test) so the file runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exomiri import InputError
from exomiri import dq as dqflags
from exomiri.builtin.background import ColWise, Constant, Polynomial, RowWise
from exomiri.hookspecs import BackgroundInput
from exomiri.steps import align, background, clean, extract, lstsq

MAX = 25
SETTINGS = settings(
    max_examples=MAX, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

shapes = st.tuples(st.integers(1, 3), st.integers(1, 30), st.integers(1, 6))
seeds = st.integers(0, 2**32 - 1)
fractions = st.sampled_from([0.0, 0.0, 0.02, 0.2, 1.0])


def frozen(*arrays):
    """Read-only copies (a kernel writing into its input fails) and the copies to compare with."""
    out = []
    for a in arrays:
        a = np.array(a)
        a.flags.writeable = False
        out.append(a)
    return out


def assert_unchanged(inputs, kept):
    for a, b in zip(inputs, kept, strict=True):
        assert a.tobytes() == b.tobytes()


def noisy_cube(rng, shape, nan_fraction, dtype=np.float32, big_endian=False):
    data = rng.normal(100.0, 5.0, shape)
    data[rng.random(shape) < nan_fraction] = np.nan
    err = np.abs(rng.normal(5.0, 1.0, shape))
    dtype = np.dtype(dtype).newbyteorder(">") if big_endian else np.dtype(dtype)
    return data.astype(dtype), err.astype(dtype)


# ---------------------------------------------------------------------------
# clean


@SETTINGS
@given(
    shape=shapes,
    seed=seeds,
    nan_fraction=fractions,
    dq_fraction=fractions,
    heights=st.lists(st.integers(-1, 45), min_size=0, max_size=3),
    order=st.integers(-1, 6),
    threshold=st.sampled_from([-1.0, 0.0, 0.5, 3.0, 5.0, float("nan"), float("inf")]),
    weighted=st.booleans(),
    big_endian=st.booleans(),
)
def test_clean_cube_never_crashes_and_keeps_its_contract(
    shape, seed, nan_fraction, dq_fraction, heights, order, threshold, weighted, big_endian
):
    rng = np.random.default_rng(seed)
    data, err = noisy_cube(rng, shape, nan_fraction, big_endian=big_endian)
    bits = rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32)
    bits[rng.random(shape) >= dq_fraction] = 0
    bad = dqflags.mask_from_dq(bits, [0, 11])
    inputs = frozen(data, err, bad)
    kept = [np.array(a) for a in inputs]
    try:
        result = clean.clean_cube(
            *inputs, window_heights=heights, poly_order=order, outlier_threshold=threshold,
            weighted=weighted,
        )
    except InputError:
        valid = bool(heights) and all(h >= 0 for h in heights) and any(heights)
        valid &= order >= 0 and np.isfinite(threshold) and threshold > 0
        assert not valid, "a valid call raised"
        return
    assert_unchanged(inputs, kept)
    for name in ("data", "err", "fit"):
        assert getattr(result, name).shape == shape and getattr(result, name).dtype == np.float32
    must = bad | ~np.isfinite(data) | (weighted & ~(np.isfinite(err) & (err > 0)))
    assert np.all(result.replaced[must])  # every bad pixel is replaced
    assert not np.any(result.clipped & must) and np.all(result.replaced[result.clipped])
    untouched = ~result.replaced
    np.testing.assert_array_equal(result.data[untouched], data[untouched].astype(np.float32))
    np.testing.assert_array_equal(result.err[untouched], err[untouched].astype(np.float32))
    # a replaced pixel has a finite value; its error is finite where its series had a fit
    # (two good pixels or more) and NaN where not, so that no later step uses it
    assert np.isfinite(result.data).all()
    for a, b in clean.window_edges(shape[1], heights):
        fitted = (~must[:, a:b]).sum(axis=1, keepdims=True) >= 2  # (nints, 1, ncols)
        rep = result.replaced[:, a:b]
        err_out = result.err[:, a:b]
        assert np.isnan(err_out[rep & ~fitted]).all()
        assert np.isfinite(err_out[rep & fitted]).all()


@SETTINGS
@given(
    nints=st.integers(1, 3),
    ncols=st.integers(1, 4),
    order=st.integers(0, 4),
    extra=st.integers(2, 30),
    seed=seeds,
    weighted=st.booleans(),
)
def test_clean_leaves_a_noiseless_polynomial_untouched(nints, ncols, order, extra, seed, weighted):
    rng = np.random.default_rng(seed)
    height = order + 1 + extra  # windows with spare degrees of freedom
    nrows = 2 * height + rng.integers(0, height)
    t = np.linspace(-1, 1, nrows)
    coeffs = rng.normal(0, 30, (order + 1, nints, ncols))
    data = 200.0 + sum(c[:, None, :] * t[None, :, None] ** k for k, c in enumerate(coeffs))
    data = data.astype(np.float64)
    err = np.full(data.shape, 2.0)
    result = clean.clean_cube(data, err, None, window_heights=[height], poly_order=order,
                              outlier_threshold=4.0, weighted=weighted)
    assert not result.replaced.any()
    np.testing.assert_array_equal(result.data, data.astype(np.float32))
    # the fit is the polynomial (a window cut to one row at the bottom has no fit: 0)
    for a, b in clean.window_edges(nrows, [height]):
        if b - a >= 2:
            np.testing.assert_allclose(result.fit[:, a:b], data[:, a:b], rtol=1e-5, atol=1e-3)


@SETTINGS
@given(shape=shapes, seed=seeds, left=st.integers(-2, 8), width=st.integers(-1, 8))
def test_spatial_profile_is_normalised(shape, seed, left, width):
    rng = np.random.default_rng(seed)
    fit = rng.normal(1.0, 2.0, shape).astype(np.float32)
    fit[rng.random(shape) < 0.1] = np.nan
    (frozen_fit,) = frozen(fit)
    right = left + width
    try:
        profile = clean.spatial_profile(frozen_fit, left, right)
    except InputError:
        assert not (0 <= left < right <= shape[2])
        return
    assert profile.shape == shape and np.all(profile >= 0) and np.isfinite(profile).all()
    np.testing.assert_allclose(profile[..., left:right].sum(axis=-1), 1.0, rtol=1e-5)
    assert not profile[..., :left].any() and not profile[..., right:].any()


@SETTINGS
@given(shape=shapes, seed=seeds, dmax=st.integers(-1, 5), per_int=st.booleans())
def test_outlier_counts_match_a_direct_count(shape, seed, dmax, per_int):
    rng = np.random.default_rng(seed)
    nints, nrows, ncols = shape
    replaced = rng.random(shape) < 0.3
    trace = rng.uniform(-2, ncols + 2, (nints, nrows) if per_int else (nrows,))
    trace[rng.random(trace.shape) < 0.1] = np.nan
    inputs = frozen(replaced, trace)
    try:
        counts = clean.outlier_counts(*inputs, max_distance=dmax)
    except InputError:
        assert dmax < 0
        return
    centre = np.broadcast_to(trace, (nints, nrows))
    for i, r, d in np.ndindex(nints, nrows, dmax + 1):
        c = centre[i, r]
        expected = 0 if not np.isfinite(c) else sum(
            replaced[i, r, j] for j in range(ncols) if abs(j - np.rint(c)) <= d
        )
        assert counts[i, r, d] == expected


# ---------------------------------------------------------------------------
# background


METHODS = [
    (Constant, {}),
    (RowWise, {}),
    (ColWise, {}),
    (ColWise, {"weighted": True, "sigma_clip": None}),
    (Polynomial, {"order": 2}),
    (Polynomial, {"order": 0, "max_iterations": 0}),
]


def _needed(cls, params):
    """Usable region pixels a row (or, for constant, an integration) needs."""
    if cls in (Constant, RowWise):
        return 1
    k = (1 if cls is ColWise else params["order"]) + 1
    return k if params.get("weighted") else k + 1


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(2, 12)),
    seed=seeds,
    level=st.floats(-1e4, 1e4, allow_nan=False),
    mask_fraction=fractions,
    method=st.sampled_from(METHODS),
    big_endian=st.booleans(),
)
def test_background_of_a_flat_image_is_the_flat_level(shape, seed, level, mask_fraction, method, big_endian):
    cls, params = method
    rng = np.random.default_rng(seed)
    ncols = shape[2]
    dtype = np.dtype(np.float32).newbyteorder(">" if big_endian else "=")
    level = float(np.float32(level))
    data = np.full(shape, level, dtype)
    err = np.full(shape, 3.0, dtype)
    mask = rng.random(shape) < mask_fraction
    region = rng.random(ncols) < 0.6
    region[rng.integers(ncols)] = True
    inputs = frozen(data, err, mask, region, np.arange(ncols, dtype=np.float64))
    kept = [np.array(a) for a in inputs]
    frames = BackgroundInput(*inputs)
    try:
        model = cls().estimate(frames, **params)
    except InputError:
        assert region.sum() < _needed(cls, params)  # too few columns for the fit
        return
    assert_unchanged(inputs, kept)
    cube = model.evaluate()
    usable = (~mask[:, :, region]).sum(axis=2)  # (nints, nrows)
    if cls is Constant:
        usable = np.broadcast_to(usable.sum(axis=1, keepdims=True), usable.shape)
    enough = usable >= _needed(cls, params)
    tol = 1e-9 * max(abs(level), 1.0)
    cube_rows = np.broadcast_to(cube, shape)
    assert np.all(np.abs(cube_rows[enough] - level) <= tol)
    assert np.all(np.isnan(cube_rows[~enough]))
    variance = np.broadcast_to(model.variance(), shape)
    assert np.all(variance[enough] >= 0) and np.isfinite(variance[enough]).all()
    residual, new_err = background.subtract(data, err, model)
    assert np.all(np.abs(residual[enough]) <= tol)
    assert np.all(new_err[enough] >= err[enough])


@SETTINGS
@given(
    ncols=st.integers(1, 20),
    pairs=st.lists(st.tuples(st.integers(-3, 23), st.integers(-3, 23)), max_size=4),
)
def test_region_mask_is_the_union_of_valid_ranges_or_an_input_error(ncols, pairs):
    try:
        mask = background.region_mask(pairs, ncols)
    except InputError:
        assert (
            not pairs
            or (len(pairs) == 2 and all(isinstance(v, int) for v in pairs))
            or any(not (0 <= a < b <= ncols) for a, b in pairs)
        )
        return
    expected = np.zeros(ncols, bool)
    for a, b in pairs:
        expected[a:b] = True
    np.testing.assert_array_equal(mask, expected)


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 25), st.integers(1, 3)),
    seed=seeds,
    length=st.one_of(st.none(), st.integers(-1, 30)),
    nan_fraction=fractions,
)
def test_smooth_rows_keeps_constants_and_fills_gaps(shape, seed, length, nan_fraction):
    rng = np.random.default_rng(seed)
    nints, nrows, k = shape
    value = rng.normal(0, 10, (nints, 1, k))
    coeffs = np.broadcast_to(value, shape).copy()
    cov = np.broadcast_to(np.eye(k), (*shape, k)).copy()
    gone = rng.random((nints, nrows)) < nan_fraction
    coeffs[gone] = np.nan
    inputs = frozen(coeffs, cov)
    try:
        smoothed, new_cov = background.smooth_rows(*inputs, length)
    except InputError:
        assert length is not None and length < 1
        return
    assert smoothed.shape == shape and new_cov.shape == (*shape, k)
    finite = np.isfinite(smoothed)
    np.testing.assert_allclose(smoothed[finite], np.broadcast_to(value, shape)[finite], rtol=1e-12)
    assert np.all(finite[~gone])  # usable rows stay usable
    assert np.all(new_cov[finite.all(axis=2)].diagonal(axis1=-2, axis2=-1) >= 0)


# ---------------------------------------------------------------------------
# extraction


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(12, 30)),
    seed=seeds,
    level=st.floats(-1e3, 1e3, allow_nan=False),
    left=st.floats(0, 4),
    right=st.floats(0, 4),
    mask_fraction=fractions,
)
def test_box_of_a_constant_image_is_the_constant_times_the_width(shape, seed, level, left, right, mask_fraction):
    rng = np.random.default_rng(seed)
    nints, nrows, ncols = shape
    centers = rng.uniform(left + 0.5, ncols - 1.5 - right, (nints, nrows))
    weights = extract.box_weights(centers, left, right, ncols)
    np.testing.assert_allclose(weights.sum(axis=2), left + right + 1, rtol=1e-5)
    data = np.full(shape, level, np.float32)
    err = np.full(shape, 2.0, np.float32)
    mask = rng.random(shape) < mask_fraction
    lost = rng.random(shape) < mask_fraction  # NaN pixels count as masked
    data[lost] = np.nan
    profile = np.full(shape, 1.0 / ncols)
    inputs = frozen(data, err, weights, mask, profile)
    kept = [np.array(a) for a in inputs]
    flux, _, n_masked = extract.box(*inputs)
    assert_unchanged(inputs, kept)
    mask = mask | lost
    covered = weights > 0
    all_masked = np.all(mask | ~covered, axis=2)
    width = left + right + 1
    np.testing.assert_allclose(flux[~all_masked], level * width, rtol=1e-5, atol=1e-3)
    assert np.isnan(flux[all_masked]).all()
    assert np.all(n_masked == (mask & covered).sum(axis=2))
    # without masking: err = sqrt(sum w^2 err^2)
    _, plain_err, _ = extract.box(np.full(shape, level), err, weights)
    np.testing.assert_allclose(plain_err, 2.0 * np.sqrt((weights.astype(float) ** 2).sum(axis=2)), rtol=1e-5)


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 10), st.integers(8, 24)),
    seed=seeds,
    total=st.floats(1.0, 1e5),
    mask_fraction=fractions,
    variance=st.sampled_from(["err", "model"]),
)
def test_optimal_recovers_a_noiseless_profile_exactly(shape, seed, total, mask_fraction, variance):
    rng = np.random.default_rng(seed)
    ncols = shape[2]
    aperture = np.zeros(shape, bool)
    lo = rng.integers(0, ncols - 3)
    aperture[:, :, lo : lo + 3 + rng.integers(0, ncols - lo - 2)] = True
    profile = np.where(aperture, rng.uniform(0.05, 1.0, shape), 0.0)
    profile /= profile.sum(axis=2, keepdims=True)
    data = (total * profile).astype(np.float64)
    err = np.sqrt(np.abs(data) + 4.0)
    mask = rng.random(shape) < mask_fraction
    inputs = frozen(data, err, mask, profile, aperture)
    kept = [np.array(a) for a in inputs]
    flux, flux_err, rejected = extract.optimal(*inputs, variance=variance, effinttm=10.0)
    assert_unchanged(inputs, kept)
    none_left = np.all(mask | ~aperture, axis=2)
    np.testing.assert_allclose(flux[~none_left], total, rtol=1e-6)
    assert np.isnan(flux[none_left]).all() and np.isnan(flux_err[none_left]).all()
    assert np.all(flux_err[~none_left] > 0)
    assert np.all(rejected == (mask & aperture).sum(axis=2))  # nothing clipped in a perfect model


@SETTINGS
@given(
    nints=st.integers(1, 3),
    ncols=st.integers(12, 40),
    seed=seeds,
    sigma=st.floats(0.8, 3.0),
    amplitude=st.floats(10.0, 1e4),
    offset=st.floats(-50.0, 50.0),
)
def test_fit_psf_recovers_an_exact_gaussian(nints, ncols, seed, sigma, amplitude, offset):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(4.0, ncols - 5.0, nints)
    x = np.arange(ncols)
    line = offset + amplitude * np.exp(-0.5 * (x[None] - mu[:, None]) ** 2 / sigma**2)
    data = np.repeat(line[:, None, :], 6, axis=1)
    (frozen_data,) = frozen(data)
    position, width = extract.fit_psf(frozen_data, rows=(0, 6), columns=(0, ncols))
    np.testing.assert_allclose(position, mu, atol=1e-4)
    np.testing.assert_allclose(width, sigma, rtol=1e-4)


# ---------------------------------------------------------------------------
# alignment and least squares


def _smooth_template(rng, m):
    x = np.linspace(0, 1, m)
    return 1000.0 * (1.0 + 0.5 * np.sin(2 * np.pi * (rng.uniform(0.5, 2.0) * x + rng.uniform())))


@SETTINGS
@given(n=st.integers(1, 6), m=st.integers(20, 120), seed=seeds, nan_fraction=st.sampled_from([0.0, 0.05]))
def test_shifts_of_an_unshifted_series_are_zero_within_errors(n, m, seed, nan_fraction):
    rng = np.random.default_rng(seed)
    template = _smooth_template(rng, m)
    noise = 2.0
    series = template[None] * rng.uniform(0.9, 1.1, (n, 1)) + rng.normal(0, noise, (n, m))
    series[rng.random(series.shape) < nan_fraction] = np.nan
    weights = np.full(series.shape, noise**-2)
    inputs = frozen(series, template, weights)
    kept = [np.array(a) for a in inputs]
    shift, shift_err = align.measure_shifts(*inputs)
    assert_unchanged(inputs, kept)
    assert np.isfinite(shift).all() and np.all(shift_err > 0)
    assert np.all(np.abs(shift) < 6 * shift_err), (shift / shift_err)
    exact, _ = align.measure_shifts(template[None] * 1.3 + 7.0, template)
    assert abs(exact[0]) < 1e-6


@SETTINGS
@given(n=st.integers(1, 4), m=st.integers(2, 40), seed=seeds, integer=st.booleans())
def test_resample_by_zero_or_integer_shifts_moves_values_exactly(n, m, seed, integer):
    rng = np.random.default_rng(seed)
    flux = rng.normal(100, 10, (n, m))
    err = np.abs(rng.normal(1, 0.1, (n, m)))
    shifts = rng.integers(-3, 4, n).astype(float) if integer else np.zeros(n)
    inputs = frozen(flux, err, shifts)
    kept = [np.array(a) for a in inputs]
    out, out_err = align.resample(*inputs)
    assert_unchanged(inputs, kept)
    for i in range(n):
        s = int(shifts[i])
        rows = np.arange(m)
        inside = (rows + s >= 0) & (rows + s < m)
        np.testing.assert_array_equal(out[i, inside], flux[i, rows[inside] + s])
        np.testing.assert_array_equal(out_err[i, inside], err[i, rows[inside] + s])
        assert np.isnan(out[i, ~inside]).all()


@SETTINGS
@given(
    nproblems=st.integers(1, 20),
    m=st.integers(1, 15),
    order=st.integers(0, 4),
    seed=seeds,
    zero_fraction=fractions,
)
def test_batched_wls_matches_one_lstsq_per_problem(nproblems, m, order, seed, zero_fraction):
    rng = np.random.default_rng(seed)
    design = lstsq.legendre_design(np.arange(m), order)
    y = rng.normal(0, 10, (nproblems, m))
    w = rng.uniform(0.1, 2.0, (nproblems, m))
    w[rng.random(w.shape) < zero_fraction] = 0.0
    inputs = frozen(design, y, w)
    kept = [np.array(a) for a in inputs]
    coeffs, _, solved = lstsq.batched_wls(*inputs)
    assert_unchanged(inputs, kept)
    k = order + 1
    for i in range(nproblems):
        good = w[i] > 0
        assert solved[i] == (good.sum() >= k)
        if not solved[i]:
            continue
        sw = np.sqrt(w[i, good])
        reference = np.linalg.lstsq(design[good] * sw[:, None], y[i, good] * sw, rcond=None)[0]
        scale = max(1.0, np.abs(reference).max())
        np.testing.assert_allclose(coeffs[i], reference, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("kernel", ["measure_shifts", "resample", "cross_dispersion_profiles"])
def test_align_kernels_refuse_wrong_shapes_with_input_errors(kernel):
    calls = {
        "measure_shifts": lambda: align.measure_shifts(np.zeros((2, 3, 4))),
        "resample": lambda: align.resample(np.zeros((2, 5)), None, np.zeros(3)),
        "cross_dispersion_profiles": lambda: align.cross_dispersion_profiles(np.zeros((3, 4))),
    }
    with pytest.raises(InputError):
        calls[kernel]()
