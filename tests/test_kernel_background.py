"""Built-in background methods and the host-side background kernels."""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exomiri import hookspecs
from exomiri.builtin import background as builtin
from exomiri.builtin.background import ColWise, Constant, Polynomial, RowWise
from exomiri.exceptions import InputError
from exomiri.hookspecs import BackgroundInput
from exomiri.products import BackgroundModel
from exomiri.steps.background import (
    DEFAULT_REGIONS,
    nanmedian_lastaxis,
    region_mask,
    smooth_rows,
    subtract,
)

METHODS = (Constant, RowWise, ColWise, Polynomial)
NCOLS = 72
SIGMA = 1.0
TRACE = 36
REGION_COLUMNS = (10, 60)  # one column in each default region


def simulate(
    seed: int,
    *,
    nints: int = 20,
    nrows: int = 60,
    row_slope: float = 0.2,
    drift: float = 0.5,
    col_slope: float = 0.0,
    curvature: float = 0.0,
) -> tuple[BackgroundInput, np.ndarray]:
    """Background (level rising with row, drifting over integrations, optional
    linear/quadratic column terms) plus a bright Gaussian star in columns 30-42
    plus Gaussian noise of sigma SIGMA.  Returns the frames and the true background."""
    rng = np.random.default_rng(seed)
    i = np.arange(nints)[:, None, None]
    r = np.arange(nrows)[None, :, None]
    c = np.arange(NCOLS)[None, None, :]
    t = (c - TRACE) / TRACE
    background = (
        50.0 + row_slope * r + drift * i + col_slope * (c - TRACE) + curvature * t**2
    ) * np.ones((nints, nrows, NCOLS))
    star = np.where((c >= 30) & (c <= 42), 2000.0 * np.exp(-0.5 * ((c - TRACE) / 1.5) ** 2), 0.0)
    data = (background + star + rng.normal(0.0, SIGMA, background.shape)).astype(np.float32)
    frames = BackgroundInput(
        data=data,
        err=np.full(data.shape, SIGMA, dtype=np.float32),
        mask=np.zeros(data.shape, dtype=bool),
        region=region_mask(DEFAULT_REGIONS, NCOLS),
        columns=np.arange(NCOLS, dtype=np.float64),
    )
    return frames, background


def with_changes(frames: BackgroundInput, **changes) -> BackgroundInput:
    return BackgroundInput(**{**frames.__dict__, **changes})


def assert_calibrated(model: BackgroundModel, background: np.ndarray, columns) -> None:
    """(estimate - truth) / propagated sigma has mean ~0 and std ~1 at each column.

    The mean is compared with 4 / sqrt(N), N the number of independent
    estimates (one per integration and row of the model): a 4-sigma bound,
    so that the check holds for practically any seed, not just these.
    """
    estimate = np.broadcast_to(model.evaluate(), background.shape)
    variance = np.broadcast_to(model.variance(), background.shape)
    n_independent = model.coeffs.shape[0] * model.coeffs.shape[1]
    for col in columns:
        z = (estimate[:, :, col] - background[:, :, col]) / np.sqrt(variance[:, :, col])
        assert np.isfinite(z).all()
        assert abs(z.mean()) < 4 / math.sqrt(n_independent), (col, z.mean())
        assert 0.7 < z.std() < 1.3, (col, z.std())


def mean_z(model: BackgroundModel, background: np.ndarray, col: int) -> float:
    estimate = model.evaluate()[:, :, col]
    return float(np.mean((estimate - background[:, :, col]) / np.sqrt(model.variance()[:, :, col])))


# --------------------------------------------------------------------------
# registration and signatures


def test_hook_registers_the_four_methods_through_pluggy():
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="exomiri.builtin.background")
    registered: list[type] = []
    pm.hook.exomiri_register_background_methods(register=registered.append)
    assert registered == [Constant, RowWise, ColWise, Polynomial]
    names = [cls.name for cls in registered]
    assert names == ["constant", "row_wise", "col_wise", "polynomial"]
    for cls in registered:
        assert cls.description
        assert "\n" not in cls.description


@pytest.mark.parametrize("cls", METHODS)
def test_estimate_takes_only_keyword_only_parameters_with_defaults(cls):
    params = list(inspect.signature(cls.estimate).parameters.values())
    assert [p.name for p in params[:2]] == ["self", "frames"]
    for p in params[2:]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, p.name
        assert p.default is not inspect.Parameter.empty, p.name


def test_hookimpl_has_no_defaults():
    sig = inspect.signature(builtin.exomiri_register_background_methods)
    assert all(p.default is inspect.Parameter.empty for p in sig.parameters.values())


# --------------------------------------------------------------------------
# accuracy on simulated backgrounds


def test_constant_recovers_level_per_integration():
    frames, background = simulate(1, nints=200, nrows=10, row_slope=0.0)
    model = Constant().estimate(frames)
    assert model.coeffs.shape == (200, 1, 1)
    assert model.cov.shape == (200, 1, 1, 1)
    assert model.basis.shape == (NCOLS, 1)
    assert_calibrated(model, background, (*REGION_COLUMNS, TRACE))


def test_row_wise_recovers_row_dependent_level_without_star_leak():
    frames, background = simulate(2)
    model = RowWise().estimate(frames)
    assert model.coeffs.shape == (20, 60, 1)
    assert_calibrated(model, background, (*REGION_COLUMNS, TRACE))


def test_row_wise_with_few_pixels_per_row_uses_pooled_scatter():
    frames, background = simulate(3)
    narrow = with_changes(frames, region=region_mask([(8, 13)], NCOLS))  # 5 pixels a row
    model = RowWise().estimate(narrow)
    assert_calibrated(model, background, (10, TRACE))


@pytest.mark.parametrize("weighted", [False, True])
def test_col_wise_recovers_gradient(weighted):
    frames, background = simulate(4, col_slope=0.3)
    model = ColWise().estimate(frames, weighted=weighted)
    assert model.coeffs.shape == (20, 60, 2)
    # basis [1, (col - c0) / s] over the frame
    np.testing.assert_allclose(model.basis[:, 0], 1.0)
    np.testing.assert_allclose(model.basis[:, 1], (np.arange(NCOLS) - 35.5) / 35.5)
    assert_calibrated(model, background, (*REGION_COLUMNS, TRACE))


@pytest.mark.parametrize("weighted", [False, True])
def test_polynomial_recovers_curved_background(weighted):
    frames, background = simulate(5, col_slope=0.2, curvature=8.0)
    model = Polynomial().estimate(frames, weighted=weighted)
    assert model.coeffs.shape == (20, 60, 3)
    assert_calibrated(model, background, (*REGION_COLUMNS, TRACE))
    # a line cannot follow the curvature
    line = ColWise().estimate(frames)
    assert abs(mean_z(line, background, TRACE)) > 10


def test_col_wise_recovers_gradient_that_row_wise_cannot():
    frames, background = simulate(6, col_slope=0.3)
    truth = background[:, :, TRACE]
    row_wise = RowWise().estimate(frames).evaluate()[:, :, TRACE]
    col_wise = ColWise().estimate(frames)
    # row_wise takes the median of both regions: 0.3 * (60 - 36) = 7.2 too high at the trace
    assert np.mean(row_wise - truth) > 20 * SIGMA / 5
    assert abs(mean_z(col_wise, background, TRACE)) < 4 / math.sqrt(truth.size)
    assert abs(np.mean(col_wise.evaluate()[:, :, TRACE] - truth)) < 0.05 * SIGMA


@pytest.mark.parametrize(("cls", "params"), [(ColWise, {}), (Polynomial, {"order": 2})])
def test_sigma_clipping_rejects_hot_pixels(cls, params):
    frames, background = simulate(7, col_slope=0.3)
    rng = np.random.default_rng(70)
    data = frames.data.copy()
    region_cols = np.flatnonzero(frames.region)
    # two hot pixels in every row of every integration
    for _ in range(2):
        cols = rng.choice(region_cols, size=data.shape[:2])
        np.put_along_axis(data, cols[:, :, None], 100.0 + data.max(), axis=2)
    hot = with_changes(frames, data=data)
    unclipped = cls().estimate(hot, sigma_clip=None, **params)
    clipped = cls().estimate(hot, **params)
    assert_calibrated(clipped, background, (*REGION_COLUMNS, TRACE))

    def rms_error(model):
        return np.sqrt(np.mean((model.evaluate()[:, :, TRACE] - background[:, :, TRACE]) ** 2))

    clean = cls().estimate(frames, **params)
    assert rms_error(clipped) < 1.1 * rms_error(clean)
    assert rms_error(unclipped) > 100 * rms_error(clipped)


def test_max_iterations_zero_fits_once():
    frames, _ = simulate(8, nints=3, nrows=5)
    once = ColWise().estimate(frames, max_iterations=0)
    unclipped = ColWise().estimate(frames, sigma_clip=None)
    np.testing.assert_array_equal(once.coeffs, unclipped.coeffs)
    np.testing.assert_array_equal(once.cov, unclipped.cov)


def test_order_one_polynomial_is_col_wise():
    frames, _ = simulate(9, nints=4, nrows=10, col_slope=0.3)
    a = ColWise().estimate(frames)
    b = Polynomial().estimate(frames, order=1)
    np.testing.assert_allclose(a.coeffs, b.coeffs, rtol=1e-12)
    np.testing.assert_allclose(a.cov, b.cov, rtol=1e-12)


# --------------------------------------------------------------------------
# NaN, masks, blocks, inputs


def test_nan_pixels_and_fully_masked_rows():
    frames, background = simulate(10)
    rng = np.random.default_rng(100)
    data = frames.data.copy()
    mask = frames.mask.copy()
    data[rng.random(data.shape) < 0.05] = np.nan
    mask |= rng.random(mask.shape) < 0.05
    mask[:, 7, :] = True  # row 7 unusable everywhere
    data[3, 9, frames.region] = np.nan  # row 9 of integration 3 has no region pixel
    mask[:, 11, :] = True
    mask[:, 11, [8, 12, 60]] = False  # row 11 keeps three pixels
    data[:, 11, [8, 12, 60]] = background[:, 11, [8, 12, 60]]
    frames = with_changes(frames, data=data, mask=mask)

    empty = np.zeros(data.shape[:2], dtype=bool)
    empty[:, 7] = True
    empty[3, 9] = True
    for cls in (RowWise, ColWise, Polynomial):
        model = cls().estimate(frames)
        coeffs = model.coeffs[..., 0]
        cov = model.cov[..., 0, 0]
        assert np.isnan(coeffs[empty]).all(), cls.name
        assert np.isnan(cov[empty]).all(), cls.name
        few = np.zeros_like(empty)
        if cls is Polynomial:  # three coefficients need four pixels
            few[:, 11] = True
        assert np.isfinite(coeffs[~empty & ~few]).all(), cls.name
        assert np.isfinite(cov[~empty & ~few]).all(), cls.name
        assert (cov[~empty & ~few] >= 0).all(), cls.name
        good = ~empty & ~few
        good[:, 11] = False
        est = model.evaluate()[:, :, TRACE][good]
        sd = np.sqrt(model.variance()[:, :, TRACE][good])
        z = (est - background[:, :, TRACE][good]) / sd
        assert abs(z.mean()) < 4 / math.sqrt(z.size)
        assert 0.7 < z.std() < 1.3
    constant = Constant().estimate(frames)
    assert np.isfinite(constant.coeffs).all()
    assert np.isfinite(constant.cov).all()


def test_constant_with_few_pixels_takes_scatter_from_err():
    frames, _ = simulate(20, nints=3, nrows=4, row_slope=0.0)
    mask = np.ones(frames.mask.shape, dtype=bool)
    mask[:, 0, 8:13] = False  # five usable pixels per integration
    err = np.full(frames.err.shape, 2.0, dtype=np.float32)
    model = Constant().estimate(with_changes(frames, mask=mask, err=err))
    np.testing.assert_allclose(model.cov[:, 0, 0, 0], math.pi / 2 * 4.0 / 5)
    np.testing.assert_allclose(
        model.coeffs[:, 0, 0], np.median(frames.data[:, 0, 8:13], axis=1), rtol=1e-12
    )


def test_weighted_fit_skips_pixels_without_a_usable_error():
    frames, background = simulate(22, col_slope=0.3)
    err = frames.err.copy()
    rng = np.random.default_rng(220)
    bad = rng.random(err.shape) < 0.05
    err[bad] = 0.0
    err[rng.random(err.shape) < 0.05] = np.nan
    data = frames.data.copy()
    data[bad] += 1000.0  # would show if used
    frames = with_changes(frames, data=data, err=err)
    model = ColWise().estimate(frames, weighted=True, sigma_clip=None)
    assert_calibrated(model, background, (*REGION_COLUMNS, TRACE))


def test_all_region_pixels_masked_gives_nan_everywhere():
    frames, _ = simulate(11, nints=2, nrows=4)
    frames = with_changes(frames, mask=np.ones(frames.mask.shape, dtype=bool))
    for cls in METHODS:
        model = cls().estimate(frames)
        assert np.isnan(model.coeffs).all(), cls.name
        assert np.isnan(model.cov).all(), cls.name


def test_blocks_of_integrations_give_the_same_model(monkeypatch):
    frames, _ = simulate(12, nints=7, nrows=9, col_slope=0.2)
    whole = {cls: cls().estimate(frames) for cls in METHODS}
    monkeypatch.setattr(builtin, "_BLOCK_BYTES", 1)  # one integration per block
    for cls in METHODS:
        part = cls().estimate(frames)
        np.testing.assert_allclose(part.coeffs, whole[cls].coeffs, rtol=1e-12)
        np.testing.assert_allclose(part.cov, whole[cls].cov, rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inputs_are_never_modified(dtype):
    frames, _ = simulate(13, nints=4, nrows=12, col_slope=0.2)
    data = frames.data.astype(dtype)
    data[0, 0, 10] = np.nan
    mask = frames.mask.copy()
    mask[1, 2, 60] = True
    arrays = {
        "data": data,
        "err": frames.err.copy(),
        "mask": mask,
        "region": frames.region.copy(),
        "columns": frames.columns.copy(),
    }
    copies = {name: a.copy() for name, a in arrays.items()}
    for a in arrays.values():
        a.flags.writeable = False
    readonly = BackgroundInput(**arrays)
    for cls in METHODS:
        cls().estimate(readonly)
    for params in ({"weighted": True}, {"sigma_clip": None}):
        ColWise().estimate(readonly, **params)
    for name, a in arrays.items():
        np.testing.assert_array_equal(a, copies[name], err_msg=name)


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (ColWise, {"sigma_clip": 0}),
        (ColWise, {"sigma_clip": -1.0}),
        (ColWise, {"sigma_clip": "3"}),
        (ColWise, {"max_iterations": -1}),
        (ColWise, {"max_iterations": 1.5}),
        (ColWise, {"weighted": "yes"}),
        (Polynomial, {"order": -1}),
        (Polynomial, {"order": 1.0}),
        (Polynomial, {"order": 30}),  # more coefficients than region columns
    ],
)
def test_bad_parameters_raise_input_error(cls, params):
    frames, _ = simulate(14, nints=2, nrows=3)
    with pytest.raises(InputError):
        cls().estimate(frames, **params)


def test_bad_frames_raise_input_error():
    frames, _ = simulate(15, nints=2, nrows=3)
    with pytest.raises(InputError, match="no columns"):
        RowWise().estimate(with_changes(frames, region=np.zeros(NCOLS, dtype=bool)))
    with pytest.raises(InputError, match="boolean"):
        RowWise().estimate(with_changes(frames, region=np.arange(NCOLS)))
    with pytest.raises(InputError, match="err"):
        RowWise().estimate(with_changes(frames, err=frames.err[:1]))


# --------------------------------------------------------------------------
# region_mask


def test_region_mask_default_regions():
    mask = region_mask(DEFAULT_REGIONS, NCOLS)
    assert mask.shape == (NCOLS,)
    assert mask.dtype == bool
    assert np.flatnonzero(mask).tolist() == [*range(8, 17), *range(56, 72)]


def test_region_mask_accepts_overlaps_and_numpy_integers():
    mask = region_mask([(8, 12), (10, 14), (np.int64(60), np.int32(72))], NCOLS)
    assert np.flatnonzero(mask).tolist() == [*range(8, 14), *range(60, 72)]
    assert region_mask(np.array([[0, 1]]), 5).tolist() == [True, False, False, False, False]


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        ("8:17", "string"),
        (5, "sequence"),
        ((8, 17), "single"),
        ([(8, 17, 20)], "pair"),
        ([8, 17, 56], "pair"),
        (["8:17"], "string"),
        ([(8.0, 17)], "integer"),
        ([(True, 17)], "integer"),
        ([(17, 8)], "start must be less than stop"),
        ([(8, 8)], "start must be less than stop"),
        ([(-1, 8)], "outside"),
        ([(56, 73)], "outside"),
        ([], "No background regions"),
    ],
)
def test_region_mask_validation(regions, message):
    with pytest.raises(InputError, match=message):
        region_mask(regions, NCOLS)


def test_region_mask_rejects_bad_ncols():
    with pytest.raises(InputError, match="ncols"):
        region_mask(DEFAULT_REGIONS, 0)


# --------------------------------------------------------------------------
# smooth_rows


def reference_running_median(values: np.ndarray, length: int) -> np.ndarray:
    """Direct loop: truncated window of rows [max(0, r-h), min(nrows-1, r+h)]."""
    half = (length - 1) // 2
    nrows = values.shape[1]
    out = np.empty_like(values)
    for r in range(nrows):
        lo, hi = max(0, r - half), min(nrows - 1, r + half)
        out[:, r] = np.median(values[:, lo : hi + 1], axis=1)
    return out


def reference_cov(cov: np.ndarray, length: int) -> np.ndarray:
    half = (length - 1) // 2
    nrows = cov.shape[1]
    out = np.empty_like(cov)
    for r in range(nrows):
        lo, hi = max(0, r - half), min(nrows - 1, r + half)
        n = hi + 1 - lo
        out[:, r] = cov[:, lo : hi + 1].mean(axis=1) * min(1.0, math.pi / 2 / n)
    return out


@settings(max_examples=60, deadline=None)
@given(
    nrows=st.integers(1, 30),
    k=st.integers(1, 3),
    length=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_smooth_rows_matches_reference_loop(nrows, k, length, seed):
    rng = np.random.default_rng(seed)
    coeffs = rng.normal(size=(3, nrows, k))
    a = rng.normal(size=(3, nrows, k, k))
    cov = a @ np.swapaxes(a, -1, -2)
    smoothed, new_cov = smooth_rows(coeffs, cov, length)
    np.testing.assert_allclose(smoothed, reference_running_median(coeffs, length), rtol=1e-12)
    np.testing.assert_allclose(new_cov, reference_cov(cov, length), rtol=1e-12, atol=1e-15)


def test_smooth_rows_on_a_model_from_row_wise():
    frames, _ = simulate(16, nints=3, nrows=40)
    model = RowWise().estimate(frames)
    coeffs, cov = smooth_rows(model.coeffs, model.cov, 11)
    expected = reference_running_median(np.asarray(model.coeffs), 11)
    np.testing.assert_allclose(coeffs, expected, rtol=1e-12)
    BackgroundModel(basis=model.basis, coeffs=coeffs, cov=cov)  # shapes still valid
    assert (cov[:, 5:-5] < model.cov[:, 5:-5].max()).all()


def test_smooth_rows_in_blocks_of_integrations(monkeypatch):
    from exomiri.steps import background as kernel

    rng = np.random.default_rng(21)
    coeffs = rng.normal(size=(5, 30, 2))
    cov = np.abs(rng.normal(size=(5, 30, 2, 2)))
    whole = smooth_rows(coeffs, cov, 7)
    monkeypatch.setattr(kernel, "_SMOOTH_BLOCK_BYTES", 1)
    parts = smooth_rows(coeffs, cov, 7)
    np.testing.assert_array_equal(parts[0], whole[0])
    np.testing.assert_array_equal(parts[1], whole[1])


def test_smooth_rows_ignores_nan_rows_and_fills_them():
    coeffs = np.arange(10, dtype=float).reshape(1, 10, 1)
    cov = np.ones((1, 10, 1, 1))
    coeffs[0, 4] = np.nan
    cov[0, 4] = np.nan
    smoothed, new_cov = smooth_rows(coeffs, cov, 3)
    assert smoothed[0, 4, 0] == 4.0  # median of rows 3 and 5
    np.testing.assert_allclose(new_cov[0, 4, 0, 0], math.pi / 4)
    all_nan = np.full((1, 3, 1), np.nan)
    s, c = smooth_rows(all_nan, np.full((1, 3, 1, 1), np.nan), 3)
    assert np.isnan(s).all()
    assert np.isnan(c).all()


@pytest.mark.parametrize("length", [None, 1, 2])
def test_smooth_rows_without_a_window_returns_inputs(length):
    coeffs = np.zeros((1, 4, 1))
    cov = np.ones((1, 4, 1, 1))
    out = smooth_rows(coeffs, cov, length)
    assert out[0] is coeffs
    assert out[1] is cov


def test_smooth_rows_does_not_modify_inputs():
    rng = np.random.default_rng(17)
    coeffs = rng.normal(size=(2, 8, 2))
    coeffs[0, 3] = np.nan
    cov = np.abs(rng.normal(size=(2, 8, 2, 2)))
    c0, v0 = coeffs.copy(), cov.copy()
    smooth_rows(coeffs, cov, 5)
    np.testing.assert_array_equal(coeffs, c0)
    np.testing.assert_array_equal(cov, v0)


@pytest.mark.parametrize("length", [0, -3, 2.5, True, "5"])
def test_smooth_rows_validation(length):
    with pytest.raises(InputError, match="smoothing_length"):
        smooth_rows(np.zeros((1, 4, 1)), np.ones((1, 4, 1, 1)), length)


# --------------------------------------------------------------------------
# subtract


def test_subtract_removes_model_and_adds_variance():
    frames, _ = simulate(18, nints=5, nrows=10, col_slope=0.3)
    model = ColWise().estimate(frames)
    data, err = frames.data.copy(), frames.err.copy()
    out, err_out = subtract(data, err, model)
    assert out.dtype == np.float32
    assert err_out.dtype == np.float32
    np.testing.assert_array_equal(data, frames.data)
    np.testing.assert_array_equal(err, frames.err)
    np.testing.assert_allclose(out, data - model.evaluate(), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(
        err_out, np.sqrt(err.astype(float) ** 2 + model.variance()), rtol=1e-6
    )
    # selected integrations
    out2, _ = subtract(data[2:4], err[2:4], model, slice(2, 4))
    np.testing.assert_array_equal(out2, out[2:4])
    # a single-row model (constant) broadcasts over rows
    const = Constant().estimate(frames)
    out3, err3 = subtract(data, err, const)
    assert out3.shape == data.shape
    assert err3.shape == data.shape


def test_subtract_propagates_nan_rows_and_checks_shapes():
    frames, _ = simulate(19, nints=2, nrows=4)
    mask = frames.mask.copy()
    mask[:, 1] = True
    model = RowWise().estimate(with_changes(frames, mask=mask))
    out, err = subtract(frames.data, frames.err, model)
    assert np.isnan(out[:, 1]).all()
    assert np.isnan(err[:, 1]).all()
    assert np.isfinite(out[:, [0, 2, 3]]).all()
    with pytest.raises(InputError):
        subtract(frames.data[:1], frames.err[:1], model)
    with pytest.raises(InputError):
        subtract(frames.data, frames.err[:, :2], model)


# --------------------------------------------------------------------------
# nanmedian_lastaxis


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 12)),
    nan_fraction=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_nanmedian_lastaxis_matches_numpy(shape, nan_fraction, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=shape)
    values[rng.random(shape) < nan_fraction] = np.nan
    med, n = nanmedian_lastaxis(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        expected = np.nanmedian(values, axis=-1)
    np.testing.assert_allclose(med, expected, rtol=1e-12)
    np.testing.assert_array_equal(n, np.count_nonzero(~np.isnan(values), axis=-1))
