"""exomiri.compat: a script written for the reference tool runs with only its imports changed.

The script below is the reference tool's documentation page (stage 2 steps) with
``exotic_miri.reference``/``exotic_miri.stage_2`` replaced by ``exomiri.compat``
(and without the CRDS-bound ``assign_wcs``/``srctype`` calls, which the
reference needed before ``GetWavelengthMap``).  Its results are compared with
exomiri's own chain on the same file, and with plain numpy where the
reference's arithmetic is kept.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import exomiri
from exomiri.exceptions import ExomiriWarning, InputError

REFERENCE_SCRIPT = """
from jwst import datamodels

from exomiri.compat import GetWavelengthMap
from exomiri.compat import CleanOutliersStep
from exomiri.compat import BackgroundSubtractStep
from exomiri.compat import Extract1DBoxStep
from exomiri.compat import AlignSpectraStep

proc = datamodels.CubeModel(path)

custom_get_wavelength_map = GetWavelengthMap()
wavelength_map = custom_get_wavelength_map.call(proc)

custom_clean_outliers = CleanOutliersStep()
proc, P, O = custom_clean_outliers.call(proc, dq_bits_to_mask=[0, 11],
                                        window_widths=[40],
                                        poly_order=4, outlier_threshold=5.0)

custom_bkg_subtract = BackgroundSubtractStep()
proc = custom_bkg_subtract.call(proc, method="row_wise")

custom_extract1d_box = Extract1DBoxStep()
wv, spec, spec_unc, trace_sigmas = custom_extract1d_box.call(
    proc, wavelength_map, trace_position=36,
    aperture_center=36, aperture_left_width=4, aperture_right_width=4)

custom_align_spectra = AlignSpectraStep()
spec, spec_unc, x_shifts, y_shifts = custom_align_spectra.call(
    proc, spec, spec_unc, align_spectra=False)
"""

CLEAN = {"dq_bits_to_mask": [0, 11], "window_heights": [40], "poly_order": 4, "outlier_threshold": 5.0}
NINTS = 16


@pytest.fixture(scope="module")
def rateints(tmp_path_factory):
    obs = exomiri.simulate(nints=NINTS, seed=4)
    path = tmp_path_factory.mktemp("compat") / "sim_rateints.fits"
    return obs.write(str(path))[0], obs.truth


@pytest.fixture(scope="module")
def script(rateints):
    path, _ = rateints
    namespace = {"path": path}
    exec(REFERENCE_SCRIPT, namespace)
    return namespace


@pytest.fixture(scope="module")
def chain(rateints):
    """exomiri's own chain with the script's parameters."""
    path, _ = rateints
    cleaned = exomiri.open(path).wavelength_map().clean(**CLEAN)
    subtracted = cleaned.subtract_background(method="row_wise")
    return cleaned, subtracted


def _model(path):
    from jwst import datamodels

    return datamodels.CubeModel(path)


def test_the_script_returns_the_reference_shapes(script):
    nrows, ncols = 416, 72
    assert script["wavelength_map"].shape == (nrows, ncols)
    assert script["P"].shape == (NINTS, nrows, ncols)
    assert script["O"].shape == (NINTS, nrows, 5)
    assert type(script["proc"]).__name__ == "CubeModel"
    assert script["wv"].shape == (nrows,)
    for name in ("spec", "spec_unc"):
        assert script[name].shape == (NINTS, nrows)
    for name in ("trace_sigmas", "x_shifts", "y_shifts"):
        assert script[name].shape == (NINTS,)


def test_the_script_reproduces_exomiris_chain(rateints, script, chain):
    path, _ = rateints
    cleaned, subtracted = chain
    assert np.array_equal(script["wavelength_map"], cleaned.wavelength, equal_nan=True)
    assert np.array_equal(script["P"], cleaned.profile)
    assert np.array_equal(script["O"], cleaned.outlier_counts)
    proc = script["proc"]
    assert np.array_equal(proc.data, subtracted.data, equal_nan=True)
    assert np.array_equal(proc.err, subtracted.err, equal_nan=True)
    assert np.array_equal(proc.dq, subtracted.dq)
    # DQ flags are OR-ed: every replaced pixel has OUTLIER once, nothing else changed
    original = _model(path).dq
    assert np.array_equal(proc.dq & ~np.uint32(16), original & ~np.uint32(16))


def test_box_spectra_are_the_plain_sum_over_the_reference_pixels(script, chain):
    _, subtracted = chain
    proc = script["proc"]
    # the reference's set for centre 36, widths 4: [rint(36 - 4), rint(36 + 4 + 1)) = 32..40
    plain = np.sum(np.asarray(proc.data, dtype=np.float64)[:, :, 32:41], axis=2)
    assert np.allclose(script["spec"], plain, rtol=1e-12, atol=0)
    assert np.array_equal(script["wv"], script["wavelength_map"][:, 36], equal_nan=True)
    # exomiri's own box with the same (integer) aperture gives the same fluxes and errors
    box = subtracted.extract(
        method="box", trace_position="constant", aperture_center=36, aperture_left_width=4,
        aperture_right_width=4,
    ).spectra
    assert np.allclose(script["spec"], box.flux, rtol=1e-12, atol=0)
    assert np.allclose(script["spec_unc"], box.flux_err, rtol=1e-12, atol=0)
    assert np.array_equal(script["trace_sigmas"], box.trace_sigma, equal_nan=True)
    # the row background's error is shared by the 9 pixels: more than sqrt(sum err^2)
    independent = np.sqrt(np.sum(np.asarray(proc.err, dtype=np.float64)[:, :, 32:41] ** 2, axis=2))
    assert np.all(script["spec_unc"] >= independent * (1 - 1e-12))
    assert np.median(script["spec_unc"] / independent) > 1.05


def test_shifts_follow_the_injected_pointing(rateints, script, chain):
    _, truth = rateints
    _, subtracted = chain
    aligned = subtracted.extract(
        method="box", trace_position="constant", aperture_center=36, aperture_left_width=4,
        aperture_right_width=4,
    ).align()
    # x comes from the same cube as exomiri's own align: identical
    assert np.allclose(script["x_shifts"], aligned.shifts.x, rtol=0, atol=1e-12)
    # y against the injected shifts, within the errors exomiri's align reports
    y = script["y_shifts"]
    injected = truth.y_shift
    residual = (y - y.mean()) - (injected - injected.mean())
    chi2 = np.mean((residual / aligned.shifts.y_err) ** 2)
    assert chi2 < 3.0, chi2
    # align_spectra=False leaves the spectra alone
    assert script["spec"] is not None and np.all(np.isfinite(script["spec"][:, 100:380]))


def test_align_spectra_resamples_with_propagated_errors(script):
    from exomiri.compat import AlignSpectraStep
    from exomiri.steps import align as kernel

    spec, unc, _, y = AlignSpectraStep.call(script["proc"], script["spec"], script["spec_unc"])
    expected, expected_unc = kernel.resample(script["spec"], script["spec_unc"], y)
    assert np.array_equal(spec, expected, equal_nan=True)
    assert np.array_equal(unc, expected_unc, equal_nan=True)


def test_gaussian_fits_box_uses_rounded_per_integration_apertures(script):
    from exomiri.compat import Extract1DBoxStep

    proc = script["proc"]
    wv, spec, _, _ = Extract1DBoxStep.call(proc, script["wavelength_map"], trace_position="gaussian_fits")
    from exomiri.steps.extract import fit_psf  # the centres come from exomiri's PSF fit

    data = np.asarray(proc.data, dtype=np.float64)
    position, _ = fit_psf(np.asarray(proc.data, dtype=np.float32), (200, 390), (12, 68), 1.59)
    for i, c in enumerate(position):
        lo, hi = int(np.rint(c - 4)), int(np.rint(c + 4 + 1))
        assert np.allclose(spec[i], data[i, :, lo:hi].sum(axis=1), rtol=1e-12, atol=0)
    assert np.array_equal(wv, script["wavelength_map"][:, int(np.median(position))], equal_nan=True)


def test_optimal_extraction_matches_exomiris_with_the_same_profile(rateints):
    from exomiri.compat import BackgroundSubtractStep, CleanOutliersStep, Extract1DOptimalStep

    path, truth = rateints
    proc, _, _ = CleanOutliersStep.call(_model(path), **CLEAN)
    proc = BackgroundSubtractStep.call(proc, method="row_wise")
    proc, P, _ = CleanOutliersStep.call(proc, **CLEAN)
    wavelength_map = exomiri.open(path).wavelength_map().wavelength
    # the simulation's read noise: 10 DN per read
    _, flux, flux_err, sigmas = Extract1DOptimalStep.call(proc, wavelength_map, P, 10.0)
    assert flux.shape == flux_err.shape == (NINTS, 416) and sigmas.shape == (NINTS,)

    own = (
        exomiri.open(path).wavelength_map().clean(**CLEAN).subtract_background(method="row_wise")
        .clean(**CLEAN)
        .extract(method="optimal", trace_position="constant", aperture_center=36,
                 median_spatial_profile=False)
        .spectra
    )
    rows = slice(100, 390)
    assert np.allclose(flux[:, rows], own.flux[:, rows], rtol=1e-4)
    assert np.allclose(flux_err[:, rows], own.flux_err[:, rows], rtol=1e-4)
    # the errors describe the scatter: per row, flux scatter over time (the transit
    # and pointing drift removed by a linear fit in time and the transit shape)
    t = np.arange(NINTS)
    design = np.column_stack([np.ones(NINTS), t, truth.transit_shape])
    coef, *_ = np.linalg.lstsq(design, flux[:, rows], rcond=None)
    residual = flux[:, rows] - design @ coef
    ratio = np.sqrt(np.mean(residual**2, axis=0) * NINTS / (NINTS - 3)) / np.median(flux_err[:, rows], axis=0)
    assert 0.8 < np.median(ratio) < 1.3, np.median(ratio)


def test_optimal_extraction_with_zero_read_noise_is_finite(script):
    from exomiri.compat import Extract1DOptimalStep

    _, flux, flux_err, _ = Extract1DOptimalStep.call(
        script["proc"], script["wavelength_map"], script["P"], np.zeros((416, 72))
    )
    assert np.all(np.isfinite(flux[:, 100:390])) and np.all(flux_err[:, 100:390] > 0)


def _arrays(model):
    return {name: np.array(getattr(model, name)) for name in ("data", "err", "dq", "var_rnoise")}


def test_calls_never_modify_their_input(rateints):
    from exomiri.compat import (
        AlignSpectraStep,
        BackgroundSubtractStep,
        CleanOutliersStep,
        Extract1DBoxStep,
        Extract1DOptimalStep,
        GetWavelengthMap,
    )

    path, _ = rateints
    model = _model(path)
    before = _arrays(model)
    keys = set(model.instance)
    wavelength_map = GetWavelengthMap.call(model)
    cleaned, P, _ = CleanOutliersStep.call(model, **CLEAN)
    subtracted, background = BackgroundSubtractStep.call(model, return_background=True)
    _, spec, unc, _ = Extract1DBoxStep.call(model, wavelength_map)
    Extract1DOptimalStep.call(model, wavelength_map, P, 10.0)
    AlignSpectraStep.call(model, spec, unc)
    for name, values in _arrays(model).items():
        assert np.array_equal(values, before[name], equal_nan=True), name
    assert set(model.instance) == keys
    assert cleaned is not model and subtracted is not model
    # the tuple form of the reference's code: model and background cube
    assert background.shape == (NINTS, 416, 72) and background.dtype == np.float64
    ok = np.isfinite(before["data"]) & np.isfinite(background)
    assert np.allclose(subtracted.data[ok], before["data"][ok] - background[ok], rtol=1e-6, atol=1e-4)


def test_an_observation_in_gives_an_observation_out(rateints):
    from exomiri.compat import BackgroundSubtractStep, CleanOutliersStep, Extract1DBoxStep

    path, _ = rateints
    obs = exomiri.open(path).wavelength_map()
    cleaned, profile, counts = CleanOutliersStep.call(obs, **CLEAN)
    assert isinstance(cleaned, exomiri.LRSObservation)
    assert cleaned.steps_done[-1] == "clean"
    assert np.array_equal(profile, cleaned.profile) and np.array_equal(counts, cleaned.outlier_counts)
    subtracted = BackgroundSubtractStep.call(cleaned)
    assert subtracted.background is not None
    from_obs = Extract1DBoxStep.call(subtracted, obs.wavelength)
    from_model = Extract1DBoxStep.call(
        BackgroundSubtractStep.call(CleanOutliersStep.call(_model(path), **CLEAN)[0]), obs.wavelength
    )
    for a, b in zip(from_obs, from_model, strict=True):
        assert np.array_equal(a, b, equal_nan=True)


def test_wavelength_map_uses_the_wcs_when_the_model_has_one(rateints, linear_wcs, tmp_path):
    from astropy.io import fits

    from exomiri.compat import GetWavelengthMap

    path, _ = rateints
    model = _model(path)
    model.meta.wcs = linear_wcs  # wavelength 14 - 0.02 row
    wave = GetWavelengthMap.call(model, trim_col_start=10, trim_col_end=60, save=True, save_path=tmp_path)
    assert wave.shape == (416, 50)
    assert np.allclose(wave[:, 0], 14.0 - 0.02 * np.arange(416))
    (saved,) = tmp_path.glob("*_wavelengthmap.fits")
    assert np.array_equal(fits.getdata(saved), wave)


def test_arguments_are_checked(rateints, script):
    from exomiri.compat import (
        CleanOutliersStep,
        Extract1DBoxStep,
        Extract1DOptimalStep,
    )

    path, _ = rateints
    model = _model(path)
    with pytest.raises(InputError, match=r"window_heights.*window_widths"):
        CleanOutliersStep.call(model, window_heights=[40], window_widths=[30])
    with pytest.raises(InputError, match=r"no parameter.*window_hieghts"):
        CleanOutliersStep(window_hieghts=[40])
    with pytest.raises(InputError, match="trace_position=35 and aperture_center=36"):
        Extract1DBoxStep.call(model, script["wavelength_map"], trace_position=35, aperture_center=36)
    with pytest.raises(InputError, match="trace_position='middle'"):
        Extract1DBoxStep.call(model, script["wavelength_map"], trace_position="middle")
    with pytest.raises(InputError, match="wavelength_map has shape"):
        Extract1DBoxStep.call(model, script["wavelength_map"][:100])
    with pytest.raises(InputError, match="leaves the frame"):
        Extract1DBoxStep.call(model, script["wavelength_map"], aperture_center=70)
    with pytest.raises(InputError, match="P has shape"):
        Extract1DOptimalStep.call(model, script["wavelength_map"], script["P"][0, :10], 10.0)
    with pytest.raises(InputError, match="no such file"):
        CleanOutliersStep.call(str(path) + ".missing")
    with pytest.raises(InputError, match=r"expected a jwst\.datamodels\.CubeModel"):
        CleanOutliersStep.call(np.zeros((2, 416, 72)))


def test_reference_drawing_options_warn(script):
    from exomiri.compat import Extract1DBoxStep

    with pytest.warns(ExomiriWarning, match=r"obs\.plot\.frame\(\)"):
        Extract1DBoxStep.call(script["proc"], script["wavelength_map"], draw_aperture=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Extract1DBoxStep.call(script["proc"], script["wavelength_map"], draw_aperture=False)


def test_instance_parameters_are_defaults_for_call_and_run(script):
    from exomiri.compat import Extract1DBoxStep

    narrow = Extract1DBoxStep(aperture_left_width=1, aperture_right_width=1)
    _, spec, _, _ = narrow.call(script["proc"], script["wavelength_map"])
    _, spec_run, _, _ = narrow.run(script["proc"], script["wavelength_map"])
    plain = np.sum(np.asarray(script["proc"].data, dtype=np.float64)[:, :, 35:38], axis=2)
    assert np.allclose(spec, plain, rtol=1e-12, atol=0)
    assert np.array_equal(spec, spec_run, equal_nan=True)


def test_a_path_in_gives_a_model_out(rateints, script):
    from exomiri.compat import CleanOutliersStep

    path, _ = rateints
    cleaned, _, _ = CleanOutliersStep.call(path, **CLEAN)
    assert type(cleaned).__name__ == "CubeModel"
    assert np.array_equal(cleaned.data, CleanOutliersStep.call(_model(path), **CLEAN)[0].data, equal_nan=True)
