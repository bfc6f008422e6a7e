"""Tests of the alignment kernel: shift measurement, profiles, re-sampling.

Synthetic series are pixel-integrated (sub-sampled, or with erf for the
Gaussian PSF) and carry photon-like noise from seeded generators; the
accuracy limits come from the brief (rms < 0.01 px, slope 1 +/- 0.05) and the
calibration checks from the fitted errors themselves.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.interpolate import CubicSpline
from scipy.signal import correlate, correlation_lags
from scipy.special import erf

from exomiri.steps.align import cross_dispersion_profiles, measure_shifts, resample

NROWS = 416


# ---------------------------------------------------------------------------
# synthetic series
# ---------------------------------------------------------------------------


def smooth_spectrum(x):
    """Blackbody-like stellar spectrum times a smooth throughput, falling to
    zero past row ~395 like the LRS fold.  Wavelength falls as x rises."""
    lam = 14.0 - 10.0 * np.asarray(x) / (NROWS - 1)
    planck = 1.0 / (lam**5 * np.expm1(14388.0 / (lam * 5000.0)))
    throughput = np.exp(-0.5 * ((lam - 7.5) / 3.5) ** 2)
    fold = 1.0 / (1.0 + np.exp((x - 395.0) / 4.0))
    return planck * throughput * fold


def sharp_spectrum(x):
    """The smooth spectrum with narrow absorption lines (sigma 0.8-2 px)."""
    out = smooth_spectrum(x)
    for centre, depth, width in [(60, 0.3, 1.2), (150, 0.5, 0.8), (230, 0.2, 2.0), (300, 0.4, 1.0)]:
        out = out * (1.0 - depth * np.exp(-0.5 * ((x - centre) / width) ** 2))
    return out


def pixelate(fun, shifts, nsub=32, m=NROWS):
    """Pixel-integrated fun(r - s) for every shift: (len(shifts), m)."""
    offsets = (np.arange(nsub) + 0.5) / nsub - 0.5
    x = np.arange(m)[None, :, None] - np.asarray(shifts)[:, None, None] + offsets
    return fun(x).mean(axis=2)


def psf_profiles(shifts, m=56, centre=24.0, sigma=1.3, background=0.02):
    """Pixel-integrated Gaussian profile (unit integral) plus a constant."""
    edges = np.arange(m + 1) - 0.5
    z = (edges[None, :] - centre - np.asarray(shifts)[:, None]) / (np.sqrt(2.0) * sigma)
    return 0.5 * np.diff(erf(z), axis=1) + background


def photon_series(clean, total, rng):
    """Scale each row to ``total`` counts and add Gaussian photon noise."""
    clean = clean * (total / clean.sum(axis=1, keepdims=True))
    return rng.normal(clean, np.sqrt(clean)), clean


def slope(true, measured):
    return np.polyfit(true, measured, 1)[0]


def check_recovery(true, shift, err):
    """The brief's accuracy criteria plus calibration of the fitted errors."""
    assert np.all(np.isfinite(shift))
    assert np.all(np.isfinite(err))
    resid = shift - true
    rms = np.sqrt(np.mean(resid**2))
    assert rms < 0.01
    assert abs(slope(true, shift) - 1.0) < 0.05
    sigma = np.median(err)
    # rms scatter agrees with the quoted errors; the mean offset is noise only.
    assert 0.7 < np.std(resid) / sigma < 1.4
    assert abs(resid.mean()) < 4 * sigma / np.sqrt(true.size)


# ---------------------------------------------------------------------------
# measure_shifts: accuracy
# ---------------------------------------------------------------------------


def test_smooth_spectrum_shifts_are_unbiased():
    rng = np.random.default_rng(11)
    true = rng.uniform(-0.3, 0.3, 150)
    data, clean = photon_series(pixelate(smooth_spectrum, true), 1e8, rng)
    template = pixelate(smooth_spectrum, [0.0])[0]
    shift, err = measure_shifts(data, template, weights=1.0 / clean)
    check_recovery(true, shift, err)


def test_smooth_spectrum_uniform_weights_and_median_template():
    rng = np.random.default_rng(12)
    true = rng.uniform(-0.3, 0.3, 150)
    data, _ = photon_series(pixelate(smooth_spectrum, true), 1e8, rng)
    shift, err = measure_shifts(data)
    assert np.all(np.isfinite(err))
    assert np.all(err > 0)
    # The median template sits at (about) the median true shift: compare
    # up to a common offset.
    offset = np.mean(shift - true)
    assert abs(offset) < 0.05
    assert np.sqrt(np.mean((shift - true - offset) ** 2)) < 0.01
    assert abs(slope(true, shift) - 1.0) < 0.05


def test_psf_profile_shifts_are_unbiased():
    rng = np.random.default_rng(21)
    true = rng.uniform(-0.3, 0.3, 150)
    clean = psf_profiles(true) * 1e6
    data = rng.normal(clean, np.sqrt(clean))
    shift, err = measure_shifts(data, psf_profiles([0.0])[0], weights=1.0 / clean)
    check_recovery(true, shift, err)


def test_sharp_features_shifts_are_unbiased():
    rng = np.random.default_rng(31)
    true = rng.uniform(-0.3, 0.3, 150)
    data, clean = photon_series(pixelate(sharp_spectrum, true), 1e8, rng)
    template = pixelate(sharp_spectrum, [0.0])[0]
    shift, err = measure_shifts(data, template, weights=1.0 / clean)
    assert np.sqrt(np.mean((shift - true) ** 2)) < 0.01
    assert abs(slope(true, shift) - 1.0) < 0.05
    # Lines of sigma 0.8 px are near the sampling limit: the cubic spline's
    # interpolation error adds a little scatter beyond the noise.
    assert 0.7 < np.std(shift - true) / np.median(err) < 1.6


@pytest.mark.parametrize("fun", [smooth_spectrum, sharp_spectrum])
def test_noiseless_large_shifts_converge(fun):
    true = np.array([-2.6, -1.4, -0.9, 0.0, 0.45, 1.1, 2.7])
    clean = pixelate(fun, true)
    template = pixelate(fun, [0.0])[0]
    for search in (3, 0):
        shift, _ = measure_shifts(clean, template, search=search)
        np.testing.assert_allclose(shift, true, atol=2e-3)


def test_flux_scale_changes_do_not_bias_shifts():
    rng = np.random.default_rng(41)
    n = 150
    true = rng.uniform(-0.3, 0.3, n)
    depth = np.where((np.arange(n) > 50) & (np.arange(n) < 100), 0.01, 0.0)
    clean = pixelate(smooth_spectrum, true) * (1.0 - depth)[:, None]
    clean *= 1e8 / clean[0].sum()
    data = rng.normal(clean, np.sqrt(clean))
    shift, err = measure_shifts(data, weights=1.0 / clean)
    resid = shift - true
    in_transit = depth > 0
    difference = resid[in_transit].mean() - resid[~in_transit].mean()
    sigma = np.median(err) * np.sqrt(1 / in_transit.sum() + 1 / (~in_transit).sum())
    assert abs(difference) < 4 * sigma
    assert abs(slope(true, shift) - 1.0) < 0.05


def test_constant_background_change_is_absorbed_by_baseline():
    rng = np.random.default_rng(42)
    true = rng.uniform(-0.3, 0.3, 100)
    clean = psf_profiles(true) * 1e6
    offsets = rng.normal(0.0, 6e3, true.size)  # 30% of the background level
    data = rng.normal(clean + offsets[:, None], np.sqrt(clean))
    shift, err = measure_shifts(data, psf_profiles([0.0])[0] * 1e6, weights=1.0 / clean)
    check_recovery(true, shift, err)


def test_unshifted_series_give_zero_within_errors():
    rng = np.random.default_rng(51)
    data, clean = photon_series(pixelate(smooth_spectrum, np.zeros(200)), 1e8, rng)
    shift, err = measure_shifts(data, weights=1.0 / clean)
    pulls = shift / err
    assert 0.6 < np.mean(pulls**2) < 1.5
    assert np.max(np.abs(pulls)) < 5
    assert abs(shift.mean()) < 4 * np.median(err) / np.sqrt(shift.size)


def test_default_template_is_the_nanmedian():
    rng = np.random.default_rng(61)
    true = rng.uniform(-0.3, 0.3, 40)
    data, _ = photon_series(pixelate(smooth_spectrum, true), 1e7, rng)
    data[3, 10:20] = np.nan
    default = measure_shifts(data)
    explicit = measure_shifts(data, np.nanmedian(data, axis=0))
    np.testing.assert_array_equal(default[0], explicit[0])
    np.testing.assert_array_equal(default[1], explicit[1])


# ---------------------------------------------------------------------------
# measure_shifts: missing data and inputs
# ---------------------------------------------------------------------------


def test_nan_pixels_rows_and_series():
    rng = np.random.default_rng(71)
    n = 60
    true = rng.uniform(-0.3, 0.3, n)
    data, clean = photon_series(pixelate(smooth_spectrum, true), 1e8, rng)
    weights = 1.0 / clean
    data[rng.random(data.shape) < 0.05] = np.nan  # scattered bad pixels
    data[:, 100] = np.nan  # a row missing from every integration
    data[:, 250:253] = np.nan
    data[7] = np.nan  # an all-NaN series
    data[8, 5:] = np.nan  # too few points
    template = pixelate(smooth_spectrum, [0.0])[0]
    template[300] = np.nan  # NaN template pixel: never interpolated across
    for tmpl in (template, None):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            shift, err = measure_shifts(data, tmpl, weights=weights)
        assert np.isnan(shift[[7, 8]]).all()
        assert np.isnan(err[[7, 8]]).all()
        good = np.setdiff1d(np.arange(n), [7, 8])
        assert np.isfinite(shift[good]).all()
        assert np.isfinite(err[good]).all()
        resid = shift[good] - true[good]
        resid -= resid.mean() if tmpl is None else 0.0
        assert np.sqrt(np.mean(resid**2)) < 0.01


def test_unmeasurable_inputs_give_nan_not_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shift, err = measure_shifts(np.full((3, 50), np.nan))
        assert np.isnan(shift).all()
        assert np.isnan(err).all()
        flat = np.ones((4, 50))  # a flat template carries no shift information
        shift, err = measure_shifts(flat)
        assert np.isnan(shift).all()
        assert np.isnan(err).all()
        shift, err = measure_shifts(np.zeros((0, 50)))
        assert shift.shape == (0,)
        # Zero weights everywhere exclude every pixel.
        data = pixelate(smooth_spectrum, [0.1, 0.2])
        shift, _ = measure_shifts(data, weights=np.zeros_like(data))
        assert np.isnan(shift).all()


def test_measure_shifts_leaves_inputs_unchanged():
    rng = np.random.default_rng(81)
    data, clean = photon_series(pixelate(smooth_spectrum, rng.uniform(-1, 1, 10)), 1e7, rng)
    data[2, 40] = np.nan
    template = np.nanmedian(data, axis=0)
    weights = 1.0 / clean
    copies = [a.copy() for a in (data, template, weights)]
    measure_shifts(data, template, weights)
    for before, after in zip(copies, (data, template, weights), strict=True):
        np.testing.assert_array_equal(before, after)


# ---------------------------------------------------------------------------
# why not cross-correlation
# ---------------------------------------------------------------------------


def upsampled_cross_correlation_shift(series, template, factor=200):
    """The reference approach: cubic-upsample both by ``factor``, remove a
    linear trend, cross-correlate, fit a parabola to the peak."""
    m = template.size
    rows = np.arange(m)
    fine = np.arange((m - 1) * factor + 1) / factor

    def prepare(y):
        up = CubicSpline(rows, y)(fine)
        return up - np.polyval(np.polyfit(fine, up, 1), fine)

    ref = prepare(template)
    lags = correlation_lags(fine.size, fine.size)
    out = []
    for y in series:
        cc = correlate(prepare(y), ref, mode="full", method="fft")
        i = np.argmax(cc)
        a, b, _ = np.polyfit(lags[i - 1 : i + 2].astype(float), cc[i - 1 : i + 2], 2)
        out.append(-b / (2 * a) / factor)
    return np.array(out)


def test_cross_correlation_is_biased_on_smooth_spectra_and_the_fit_is_not():
    true = np.linspace(-0.3, 0.3, 7)
    template = pixelate(smooth_spectrum, [0.0])[0]
    series = pixelate(smooth_spectrum, true)
    cc = upsampled_cross_correlation_shift(series, template)
    # Cross-correlation pulls the shifts of a smooth spectrum towards zero...
    assert slope(true, cc) < 0.75
    fit, _ = measure_shifts(series, template)
    # ... while the model fit recovers them.
    assert abs(slope(true, fit) - 1.0) < 0.01
    np.testing.assert_allclose(fit, true, atol=1e-4)

    # The cross-correlation itself works on a compact feature well inside
    # the window: the bias comes from the smoothness, not the implementation.
    def bump(x):
        return np.exp(-0.5 * ((x - 200.0) / 5.0) ** 2)

    cc_bump = upsampled_cross_correlation_shift(pixelate(bump, true), pixelate(bump, [0.0])[0])
    assert abs(slope(true, cc_bump) - 1.0) < 0.05


# ---------------------------------------------------------------------------
# cross_dispersion_profiles
# ---------------------------------------------------------------------------


def psf_cube(shifts, rng=None, nrows=NROWS, ncols=72, x0=36.0):
    """Cube whose rows carry the smooth spectrum spread over a shifted PSF."""
    spectrum = pixelate(smooth_spectrum, [0.0])[0]
    spectrum *= 1e6 / spectrum.max()
    profile = psf_profiles(shifts, m=ncols, centre=x0, background=0.0)
    cube = spectrum[None, :, None] * profile[:, None, :] + 50.0
    if rng is not None:
        cube = rng.normal(cube, np.sqrt(cube))
    return cube


def test_profiles_without_nan_are_plain_sums():
    rng = np.random.default_rng(91)
    cube = psf_cube(np.zeros(4), rng)
    prof = cross_dispersion_profiles(cube)
    assert prof.shape == (4, 56)
    np.testing.assert_allclose(prof, cube[:, 200:390, 12:68].sum(axis=1), rtol=1e-12)
    small = cross_dispersion_profiles(cube, rows=(10, 20), columns=(30, 40))
    np.testing.assert_allclose(small, cube[:, 10:20, 30:40].sum(axis=1), rtol=1e-12)


def test_profiles_fill_nan_pixels_without_bias():
    scales = np.array([1.0, 0.99, 1.01, 1.0, 1.02])
    cube = psf_cube(np.zeros(5)) * scales[:, None, None]
    expected = cube[:, 200:390, 12:68].sum(axis=1)
    holed = cube.copy()
    holed[1, 250, 36] = np.nan  # on the trace, where dropping it would hurt most
    holed[2, 200:390, 40] = np.nan  # a whole column of one frame
    holed[4] = np.nan  # an all-NaN integration
    before = holed.copy()
    prof = cross_dispersion_profiles(holed)
    np.testing.assert_array_equal(before, holed)
    assert np.isnan(prof[4]).all()
    # Frames proportional to each other: the fill restores the plain sums.
    np.testing.assert_allclose(prof[:4], expected[:4], rtol=1e-10)


def test_profiles_drop_pixels_missing_everywhere_for_every_integration():
    cube = psf_cube(np.zeros(3))
    cube[:, 300, 20] = np.nan
    prof = cross_dispersion_profiles(cube)
    clean = cube.copy()
    clean[:, 300, 20] = 0.0
    np.testing.assert_allclose(prof, clean[:, 200:390, 12:68].sum(axis=1), rtol=1e-12)


def test_profiles_then_shifts_recover_cross_dispersion_drift():
    rng = np.random.default_rng(92)
    true = rng.uniform(-0.3, 0.3, 40)
    cube = psf_cube(true, rng)
    cube[rng.random(cube.shape) < 0.01] = np.nan
    prof = cross_dispersion_profiles(cube)
    shift, _err = measure_shifts(prof)
    resid = shift - true
    resid -= resid.mean()
    assert np.sqrt(np.mean(resid**2)) < 0.01
    assert abs(slope(true, shift) - 1.0) < 0.05


# ---------------------------------------------------------------------------
# resample
# ---------------------------------------------------------------------------


def test_resample_linear_ramp_is_exact_with_nan_ends():
    m = 30
    rows = np.arange(m, dtype=float)
    shifts = np.array([0.3, -0.7, 1.25, 0.0, -2.0])
    flux = np.tile(3.0 + 0.5 * rows, (shifts.size, 1))
    err = np.ones_like(flux)
    aligned, _ = resample(flux, err, shifts)
    pos = rows[None, :] + shifts[:, None]
    inside = (pos >= 0) & (pos <= m - 1)
    np.testing.assert_allclose(aligned[inside], (3.0 + 0.5 * pos)[inside], rtol=0, atol=1e-12)
    assert np.isnan(aligned[~inside]).all()
    # Each shift loses ceil(|s|) rows at one end.
    assert (~inside).sum(axis=1).tolist() == [1, 1, 2, 0, 2]


def test_resample_error_propagation():
    rng = np.random.default_rng(101)
    flux = rng.normal(100, 5, (3, 20))
    err = rng.uniform(0.5, 2.0, (3, 20))
    shifts = np.array([0.25, -0.6, 0.9])
    aligned, aligned_err = resample(flux, err, shifts)
    for i, s in enumerate(shifts):
        for r in range(20):
            p = r + s
            if not 0 <= p <= 19:
                assert np.isnan(aligned[i, r])
                assert np.isnan(aligned_err[i, r])
                continue
            k = int(np.floor(p))
            w = p - k
            hi = min(k + 1, 19)
            assert aligned[i, r] == pytest.approx((1 - w) * flux[i, k] + w * flux[i, hi])
            expected = np.sqrt((1 - w) ** 2 * err[i, k] ** 2 + w**2 * err[i, hi] ** 2)
            assert aligned_err[i, r] == pytest.approx(expected)


def test_resample_zero_shift_returns_input_and_leaves_inputs_alone():
    rng = np.random.default_rng(102)
    flux = rng.normal(size=(4, 15))
    err = rng.uniform(1, 2, (4, 15))
    flux[1, 3] = np.nan
    err[2, 14] = np.nan
    shifts = np.zeros(4)
    copies = (flux.copy(), err.copy(), shifts.copy())
    aligned, aligned_err = resample(flux, err, shifts)
    np.testing.assert_array_equal(aligned, flux)
    np.testing.assert_array_equal(aligned_err, err)
    for before, after in zip(copies, (flux, err, shifts), strict=True):
        np.testing.assert_array_equal(before, after)
    assert aligned is not flux
    assert aligned_err is not err


def test_resample_nan_neighbours_and_nan_shift():
    flux = np.arange(40, dtype=float).reshape(2, 20)
    flux[0, 10] = np.nan
    aligned, err = resample(flux, None, np.array([0.3, np.nan]))
    assert err is None
    assert np.isnan(aligned[0, [9, 10]]).all()  # both interpolate onto row 10
    assert np.isfinite(aligned[0, [8, 11]]).all()
    assert np.isnan(aligned[1]).all()


def test_resample_undoes_measured_shifts():
    rng = np.random.default_rng(103)
    true = rng.uniform(-0.3, 0.3, 30)
    data, clean = photon_series(pixelate(smooth_spectrum, true), 1e8, rng)
    template = pixelate(smooth_spectrum, [0.0])[0]
    shift, _ = measure_shifts(data, template, weights=1.0 / clean)
    aligned, aligned_err = resample(data, np.sqrt(clean), shift)
    after, after_err = measure_shifts(aligned, template, weights=1.0 / aligned_err**2)
    assert np.all(np.abs(after) < 5 * after_err)


@settings(max_examples=50, deadline=None)
@given(st.floats(-3.0, 3.0, allow_nan=False), st.floats(-5.0, 5.0), st.floats(-2.0, 2.0))
def test_resample_ramp_property(shift, offset, gradient):
    m = 12
    rows = np.arange(m, dtype=float)
    flux = (offset + gradient * rows)[None, :]
    aligned, _ = resample(flux, None, np.array([shift]))
    pos = rows + shift
    inside = (pos >= 0) & (pos <= m - 1)
    np.testing.assert_allclose(aligned[0, inside], offset + gradient * pos[inside], atol=1e-9)
    assert np.isnan(aligned[0, ~inside]).all()
