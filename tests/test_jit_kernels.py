"""Compiled kernels agree with the numpy code they replace, decision for decision."""

from __future__ import annotations

import numpy as np
import pytest

from exomiri.builtin import background as builtin
from exomiri.steps.lstsq import legendre_design


def series(seed: int, n: int = 400, m: int = 25, weighted: bool = False):
    """Lines with Gaussian noise, 3% strong outliers, 5% unusable pixels, a few short rows."""
    rng = np.random.default_rng(seed)
    x = np.arange(m, dtype=np.float64)
    design = legendre_design(x, 3)
    truth = 10.0 + rng.normal(0, 1, (n, 1)) + 0.1 * rng.normal(0, 1, (n, 1)) * x
    err = rng.uniform(0.5, 2.0, (n, m))
    y = truth + rng.normal(0, 1, (n, m)) * err
    y += (rng.random((n, m)) < 0.03) * rng.uniform(20, 500, (n, m))
    usable = rng.random((n, m)) > 0.05
    usable[:5] = False
    usable[5:10, 3:] = False  # three pixels: enough for a line, not for a cubic
    y = np.where(usable, y, 0.0)
    w = np.where(usable, 1.0 / err**2, 0.0) if weighted else usable.astype(np.float64)
    return design, y, w, usable


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("sigma_clip", "iterations"), [(3.0, 5), (3.0, 1), (None, 5), (2.0, 0)])
def test_background_fit_kernel_matches_numpy(order, weighted, sigma_clip, iterations):
    design, y, w, usable = series(order * 10 + weighted, weighted=weighted)
    design = np.ascontiguousarray(design[:, : order + 1])
    nmin = order + 1 if weighted else order + 2
    args = (design, y, w, usable, nmin, sigma_clip, iterations, weighted)
    fast = builtin._fit_block(*args)
    slow = builtin._fit_block_numpy(*args)
    np.testing.assert_array_equal(fast[3], slow[3])  # enough pixels
    ok = slow[3]
    assert 0 < ok.sum() < len(ok)
    # same kept pixels: coefficients equal to rounding (a different pixel set
    # would move them by ~1e-2 here)
    np.testing.assert_allclose(fast[0][ok], slow[0][ok], rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(fast[1][ok], slow[1][ok], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(fast[2][ok], slow[2][ok], rtol=1e-9)
    assert np.array_equal(np.isnan(fast[2][ok]), np.isnan(slow[2][ok]))


@pytest.mark.parametrize("rows", [1, 6])
def test_subtract_kernel_matches_the_model_cubes(rows):
    from exomiri.products import BackgroundModel
    from exomiri.steps._jit_background import subtract_model

    rng = np.random.default_rng(rows)
    data = rng.normal(100, 10, (3, 6, 9)).astype(np.float32)
    err = rng.uniform(1, 2, data.shape).astype(np.float32)
    err[0, 0, 0], err[1, 2, 3], data[2, 1, 1] = np.nan, 0.0, np.nan
    basis = legendre_design(np.arange(9.0), 1)
    a = rng.normal(0, 1, (3, rows, 2, 2))
    model = BackgroundModel(
        basis=basis, coeffs=rng.normal(5, 1, (3, rows, 2)), cov=a @ a.transpose(0, 1, 3, 2)
    )
    out, err_out = subtract_model(data, err, model.coeffs, model.cov, basis)
    expected = (data - model.evaluate()).astype(np.float32)
    expected_err = np.sqrt(err.astype(np.float64) ** 2 + model.variance()).astype(np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert np.isnan(out[2, 1, 1])
    np.testing.assert_allclose(err_out[err > 0], expected_err[err > 0], rtol=1e-6)
    assert np.isnan(err_out[0, 0, 0]) and np.isnan(err_out[1, 2, 3])


@pytest.mark.parametrize(
    "params",
    [
        {"window_heights": (40,), "poly_order": 4, "outlier_threshold": 5.0},
        {"window_heights": (150, 100, 50, 40, 30, 24), "poly_order": 4, "outlier_threshold": 4.0},
        {"window_heights": (7,), "poly_order": 4, "outlier_threshold": 3.0},
        {"window_heights": (6, 3), "poly_order": 2, "outlier_threshold": 3.0},
    ],
)
def test_clean_kernel_is_bit_identical_to_numpy(monkeypatch, params):
    from exomiri.steps import clean

    rng = np.random.default_rng(5)
    rows = np.arange(120.0)[None, :, None]
    data = 50 + 0.3 * rows + 100 * np.exp(-0.5 * ((np.arange(24) - 12) / 2.0) ** 2)
    data = data + rng.normal(0, 1, (4, 120, 24))
    data[rng.random(data.shape) < 0.01] += rng.uniform(10, 300)  # outliers to clip
    data[0, 5:9, 3] = np.nan
    bad = rng.random(data.shape) < 0.03
    bad[:, 40:80, 7] = True  # no good pixel in these series
    bad[:, 40:78, 8] = True  # two good pixels: minimum-norm fits, numpy's path
    err = np.full(data.shape, 1.0, dtype=np.float32)
    data = data.astype(np.float32)
    fast = clean.clean_cube(data, err, bad, **params)
    monkeypatch.setattr(clean, "_clean_group_compiled", clean._clean_group)
    slow = clean.clean_cube(data, err, bad, **params)
    assert fast.clipped.sum() > 10
    for name in ("data", "err", "replaced", "clipped", "fit"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)


@pytest.mark.parametrize("per_integration", [False, True])
@pytest.mark.parametrize("max_distance", [0, 1, 4])
def test_outlier_counts_match_their_definition(per_integration, max_distance):
    from exomiri.steps.clean import outlier_counts

    rng = np.random.default_rng(max_distance)
    replaced = rng.random((6, 50, 20)) < 0.2
    trace = 10 + np.linspace(-1.3, 1.3, 50)
    trace[:3] = np.nan
    trace[3], trace[4], trace[5] = 0.6, 19.4, -3.0  # at and beyond the edges
    if per_integration:
        trace = trace + rng.normal(0, 0.4, (6, 50))
    counts = outlier_counts(replaced, trace, max_distance)
    centre = np.rint(trace)[..., None]
    for d in range(max_distance + 1):
        near = np.abs(np.arange(20) - centre) <= d  # NaN rows compare False
        assert np.array_equal(counts[..., d], (replaced & near).sum(axis=-1))
    assert counts[..., max_distance].sum() > 0


def pixel_cubes(seed: int, dtype, dq_dtype, shape=(70, 9, 11)):
    """Data and err with NaN, inf, zero and negative errors, DQ with several bits set."""
    rng = np.random.default_rng(seed)
    data = rng.normal(10, 3, shape).astype(dtype)
    err = rng.uniform(0.5, 2, shape).astype(dtype)
    data[rng.random(shape) < 0.05] = np.nan
    data[rng.random(shape) < 0.02] = np.inf
    err[rng.random(shape) < 0.03] = 0.0
    err[rng.random(shape) < 0.03] = -1.0
    err[rng.random(shape) < 0.03] = np.nan
    err[rng.random(shape) < 0.02] = -np.inf
    dq = (rng.random(shape) < 0.1) * 1 + (rng.random(shape) < 0.1) * (1 << 11)
    dq = dq + (rng.random(shape) < 0.3) * (1 << 4)  # OUTLIER: replaced by clean
    return data, err, dq.astype(dq_dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f4"])
@pytest.mark.parametrize("dq_dtype", [np.uint32, np.int32, np.uint16])
@pytest.mark.parametrize("bits", [(), (0,), (0, 11)])
def test_unusable_mask_kernel_matches_its_definition(dtype, dq_dtype, bits):
    from exomiri import dq as dqflags
    from exomiri.steps.pixels import unusable

    data, err, dq = pixel_cubes(len(bits), dtype, dq_dtype)
    mask = dqflags.bit_mask(bits)
    bad = unusable(data, err, dq, mask, dqflags.OUTLIER)
    with np.errstate(invalid="ignore"):
        expected = ~np.isfinite(data) | ~(np.isfinite(err) & (err > 0))
    if bits:
        expected |= ((dq & mask) != 0) & ((dq & dqflags.OUTLIER) == 0)
    assert bad.dtype == bool
    np.testing.assert_array_equal(bad, expected)
    assert 0 < bad.mean() < 0.5
    # a view that is not C-ordered takes the numpy path, with the same answer
    view = unusable(data[:, :, ::2], err[:, :, ::2], dq[:, :, ::2], mask, dqflags.OUTLIER)
    np.testing.assert_array_equal(view, expected[:, :, ::2])


@pytest.mark.parametrize(("k", "rows"), [(1, 1), (1, 9), (2, 9), (3, 9)])
def test_background_cubes_are_the_float32_model_cubes_bit_for_bit(k, rows):
    from exomiri.products import BackgroundModel
    from exomiri.steps.pixels import background_cubes

    rng = np.random.default_rng(k * 10 + rows)
    basis = legendre_design(np.arange(11.0), k - 1)
    a = rng.normal(0, 0.3, (70, rows, k, k))
    cov = a @ a.transpose(0, 1, 3, 2)
    cov[3, 0, 0, 0] = -1.0  # a negative variance: NaN error, as np.sqrt gives
    coeffs = rng.normal(5, 1, (70, rows, k))
    coeffs[5, 0] = np.nan
    model = BackgroundModel(basis=basis, coeffs=coeffs, cov=cov)
    level, level_err = background_cubes(model)
    assert level.dtype == level_err.dtype == np.float32
    np.testing.assert_array_equal(level, model.evaluate(dtype=np.float32))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(level_err, np.sqrt(model.variance(dtype=np.float32)))
    assert np.isnan(level_err).any() and np.isnan(level).any()


def test_compiled_sums_follow_numpys_order_bit_for_bit():
    from exomiri.steps._jit_pixels import _numpy_sum

    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 8, 9, 21, 64, 127, 128):
        values = rng.uniform(0, 1, (300, n))
        ours = np.array([_numpy_sum(row, n) for row in values])
        np.testing.assert_array_equal(ours, values.sum(axis=-1), err_msg=f"{n} values")
        if n >= 9:  # the order matters: a plain running sum differs somewhere
            assert any(sum(row.tolist()) != s for row, s in zip(values, ours, strict=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("left", "right"), [(0, 1), (3, 10), (2, 29), (0, 40)])
def test_spatial_profile_kernel_is_bit_identical_to_numpy(monkeypatch, dtype, left, right):
    from exomiri.steps import clean

    rng = np.random.default_rng(right)
    fit = rng.uniform(-0.2, 1.0, (70, 12, 40)).astype(dtype)
    fit[0, 0], fit[1, 2, left], fit[2, 3, left] = -1.0, np.nan, np.inf  # a row with nothing positive
    fast = clean.spatial_profile(fit, left, right)
    frame = clean.spatial_profile(fit[5], left, right)  # one frame (nrows, ncols)
    monkeypatch.setattr(clean, "_spatial_profile_compiled", lambda *args: None)
    slow = clean.spatial_profile(fit, left, right)
    assert fast.dtype == np.float32
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(frame, slow[5])
    np.testing.assert_array_equal(fast[0, 0, left:right], np.float32(1.0 / (right - left)))


@pytest.mark.parametrize(
    "params",
    [
        {"window_heights": (40,), "poly_order": 4, "outlier_threshold": 5.0},
        {"window_heights": (150, 100, 50, 40, 30, 24), "poly_order": 4, "outlier_threshold": 4.0},
        {"window_heights": (7, 0, 5), "poly_order": 4, "outlier_threshold": 3.0},
        {"window_heights": (1,), "poly_order": 0, "outlier_threshold": 3.0},
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_gather_and_scatter_of_clean_are_bit_identical(monkeypatch, params, dtype):
    from exomiri.steps import clean

    rng = np.random.default_rng(len(params["window_heights"]))
    rows = np.arange(130.0)[None, :, None]
    data = 50 + 0.3 * rows + 100 * np.exp(-0.5 * ((np.arange(24) - 12) / 2.0) ** 2)
    data = (data + rng.normal(0, 1, (20, 130, 24))).astype(dtype)
    data[rng.random(data.shape) < 0.01] += 200  # outliers to clip
    data[0, 5:9, 3], data[1, 7, 7] = np.nan, np.inf
    bad = rng.random(data.shape) < 0.03
    bad[:, 40:80, 7] = True  # no good pixel in these series
    bad[:, 40:78, 8] = True  # two good pixels: minimum-norm fits, numpy's path
    err = rng.uniform(0.5, 2, data.shape).astype(dtype)
    err[2, 10, 10], err[2, 11, 10] = np.nan, np.inf
    bad[2, 10:12, 10] = True
    bad[3, :, 5] = True  # a column without any good pixel: NaN errors in every window
    results = []
    for chunk in (clean._clean_chunk_compiled, clean._clean_chunk):
        monkeypatch.setattr(clean, "_clean_chunk_compiled", chunk)
        results.append(clean.clean_cube(data, err, bad, block_size=7, **params))
    fast, slow = results
    assert fast.replaced.sum() > 1000
    assert fast.clipped.sum() > 10 or params["poly_order"] == 0
    assert np.isnan(fast.err[3, :, 5]).all()
    for name in ("data", "err", "replaced", "clipped", "fit"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
