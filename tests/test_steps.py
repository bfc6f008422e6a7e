"""Each step on simulated observations, checked against the injected truth."""

import numpy as np
import pytest

import exomiri
from exomiri import InputError
from exomiri import dq as dqflags

CLEAN = {"dq_bits_to_mask": [0, 11], "window_heights": [40], "poly_order": 4, "outlier_threshold": 5.0}


@pytest.fixture(scope="module")
def obs():
    return exomiri.simulate(nints=60, seed=5, cosmic_rays=20)


@pytest.fixture(scope="module")
def cleaned(obs):
    return obs.clean(**CLEAN)


def _on_trace(obs, half_width=4):
    truth = obs.truth
    rows = np.arange(obs.shape[1])
    cols = np.arange(obs.shape[2])
    near = np.abs(cols[None, :] - truth.trace[:, None]) <= half_width
    near &= np.isfinite(truth.wavelength)[:, None]
    return np.broadcast_to(near, obs.shape) & (rows[None, :, None] >= 0)


def test_clean_finds_strong_outliers_and_spares_clean_pixels(obs, cleaned):
    truth = obs.truth
    i, r, c = truth.cosmic_rays.T
    flagged_before = obs.dq[i, r, c] != 0
    strong = (truth.cosmic_ray_amplitude / obs.err[i, r, c] > 10) & ~flagged_before
    replaced = (cleaned.dq & dqflags.OUTLIER) != 0
    found = replaced[i, r, c][strong]
    assert strong.sum() > 500
    assert found.mean() >= 0.95, found.mean()

    clean_pixels = _on_trace(obs) & (obs.dq == 0)
    clean_pixels[i, r, c] = False
    assert replaced[clean_pixels].mean() < 1e-3

    # replaced values sit within 3 sigma (pixel noise) of the noiseless scene
    hit = strong & replaced[i, r, c]
    noiseless = truth.noiseless()[i[hit], r[hit], c[hit]]
    z = (cleaned.data[i[hit], r[hit], c[hit]] - noiseless) / obs.err[i[hit], r[hit], c[hit]]
    assert np.mean(np.abs(z) < 3) > 0.99, np.sort(np.abs(z))[-10:]


def test_clean_ors_dq_keeps_input_and_reports(obs, cleaned):
    hot = obs.truth.hot_pixels
    before = obs.dq[:, hot[:, 0], hot[:, 1]]
    after = cleaned.dq[:, hot[:, 0], hot[:, 1]]
    np.testing.assert_array_equal(after, before | dqflags.OUTLIER)
    twice = cleaned.clean(**CLEAN)
    np.testing.assert_array_equal(twice.dq[:, hot[:, 0], hot[:, 1]], after)  # no carry
    assert np.isnan(obs.data[:, :, :4]).all()  # the input observation is untouched
    assert np.isfinite(cleaned.data).all()
    record = cleaned.history[-1]
    assert record.parameters["spatial_profile_left_idx"] == 26
    assert record.parameters["dq_bits_to_mask"] == [0, 11]
    assert record.diagnostics["clipped"] > 0
    assert cleaned.outlier_counts.shape == (60, 416, 5)
    np.testing.assert_allclose(cleaned.profile[:, 7:390, 26:47].sum(axis=2), 1.0, rtol=1e-5)
    # replaced pixels carry the fit's uncertainty, below the pixel noise on the trace
    i, r, c = obs.truth.cosmic_rays.T
    on = (c > 30) & (c < 42) & (r > 100) & (r < 380)
    assert np.median(cleaned.err[i[on], r[on], c[on]] / obs.err[i[on], r[on], c[on]]) < 1


@pytest.mark.parametrize(
    ("method", "gradient"),
    [("row_wise", 0.0), ("col_wise", 0.05), ("polynomial", 0.05)],
)
def test_background_residual_is_consistent_with_its_error(method, gradient):
    sim = exomiri.simulate(nints=30, seed=8, background_gradient=gradient)
    out = sim.clean(**CLEAN).subtract_background(method=method)
    truth = sim.truth.background_cube()
    estimate = out.background.evaluate()
    sigma = np.sqrt(out.background.variance())
    rows = slice(20, 380)
    for column in (12, 36, 63):
        z = ((estimate - truth) / sigma)[:, rows, column].ravel()
        assert abs(z.mean()) < 4 / np.sqrt(z.size) + 0.05, (method, column, z.mean())
        assert 0.7 < z.std() < 1.3, (method, column, z.std())
    # err grew by exactly the background's variance
    np.testing.assert_allclose(
        out.err**2, sim.clean(**CLEAN).err ** 2 + out.background.variance(), rtol=1e-4
    )


def test_constant_background_on_a_flat_scene():
    sim = exomiri.simulate(nints=30, seed=9)
    flat = 20.0
    rng = np.random.default_rng(0)
    extra = rng.normal(0, np.sqrt(flat / (3.1 * sim.meta.effinttm)), sim.shape)
    data = sim.data - sim.truth.background_cube() + flat + extra
    err = np.sqrt(sim.err**2 + flat / (3.1 * sim.meta.effinttm))
    scene = sim.replace(data=data.astype(np.float32), err=err.astype(np.float32))
    out = scene.clean(**CLEAN).subtract_background(method="constant")
    level = out.background.coeffs[:, 0, 0]
    sigma = np.sqrt(out.background.cov[:, 0, 0, 0])
    z = (level - flat) / sigma
    assert abs(z.mean()) < 4 / np.sqrt(z.size) + 0.3  # the truth still has gradients of 5%
    assert out.background.coeffs.shape == (30, 1, 1)


def test_box_with_integer_edges_is_a_plain_sum(cleaned):
    out = cleaned.wavelength_map().extract(method="box", trace_position="constant")
    expected = cleaned.data[:, :, 32:41].astype(np.float64).sum(axis=2)
    np.testing.assert_allclose(out.spectra.flux, expected, rtol=1e-10)
    expected_err = np.sqrt((cleaned.err[:, :, 32:41].astype(np.float64) ** 2).sum(axis=2))
    np.testing.assert_allclose(out.spectra.flux_err, expected_err, rtol=1e-6)


def test_extract_reports_trace_position_and_width(cleaned):
    out = cleaned.wavelength_map().extract(method="box")
    truth = cleaned.truth
    # the fit measures the PSF around rows 200-389: compare with the truth there
    expected = np.mean(truth.trace[200:390]) + truth.x_shift
    assert np.allclose(out.spectra.trace_position, expected, atol=0.05)
    assert np.corrcoef(out.spectra.trace_position, truth.x_shift)[0, 1] > 0.9
    assert 1.0 < np.median(out.spectra.trace_sigma) < 2.0
    wave = out.spectra.wavelength
    assert wave[300] == pytest.approx(8.58, abs=0.01)
    assert out.spectra.quality[395] & 4 and out.spectra.quality[100] & 2


@pytest.mark.parametrize("featureless", [False, True])
def test_align_recovers_injected_shifts(featureless):
    rng = np.random.default_rng(4)
    x = rng.uniform(-0.3, 0.3, 150)
    y = rng.uniform(-0.3, 0.3, 150)
    depth = 0.0 if featureless else None
    sim = exomiri.simulate(nints=150, seed=4, x_shifts=x, y_shifts=y, depth=depth, star_flux=4e4)
    out = sim.wavelength_map().clean(**CLEAN).subtract_background(method="col_wise")
    out = out.extract(method="optimal").align()
    shifts = out.shifts
    for measured, error, injected in ((shifts.x, shifts.x_err, x), (shifts.y, shifts.y_err, y)):
        injected = injected - np.median(injected)
        slope, offset = np.polyfit(injected, measured, 1)
        assert abs(slope - 1) < 0.05, slope
        scatter = np.std(measured - injected - offset)
        assert scatter < 0.01
        # the errors are honest or conservative, never too small (chi-square scaled)
        assert scatter < 1.3 * np.median(error), scatter / np.median(error)


def test_align_spectra_resamples_and_propagates_errors():
    sim = exomiri.simulate(nints=80, seed=6, jitter=0.1)
    out = sim.wavelength_map().clean(**CLEAN).subtract_background(method="col_wise").extract()
    aligned = out.align(align_spectra=True)
    assert aligned.spectra.aligned and not out.spectra.aligned
    rows = slice(150, 370)
    # linear interpolation of independent pixels can only lower each error
    assert np.all(aligned.spectra.flux_err[:, rows] <= out.spectra.flux_err[:, rows] * (1 + 1e-9))
    # after re-alignment the spectra no longer follow the y shifts
    def y_signature(spectra):
        slope = np.gradient(np.median(spectra.flux[:, rows], axis=0))
        resid = spectra.flux[:, rows] / np.median(spectra.flux[:, rows], axis=0) - 1
        return np.corrcoef(resid @ (slope / np.median(spectra.flux[:, rows], axis=0)), sim.truth.y_shift)[0, 1]

    before, after = abs(y_signature(out.spectra)), abs(y_signature(aligned.spectra))
    assert before > 0.5
    assert after < before / 3


def test_other_subarray_runs_the_whole_chain():
    sim = exomiri.simulate(nints=20, seed=3, subarray="SLITLESSPRISM_IP")
    out = sim.wavelength_map().clean(**CLEAN).subtract_background().extract().align()
    assert out.spectra.flux.shape == (20, 384)
    record = out.history[2]
    assert record.parameters["regions"] == [[6, 15], [54, 68]]
    assert np.nanmedian(out.spectra.trace_position) == pytest.approx(36.3 - 2, abs=0.3)
    # the same scene on the full SLITLESSPRISM gives the same spectrum, 16 rows further down
    full = exomiri.simulate(nints=20, seed=3).wavelength_map().clean(**CLEAN)
    full = full.subtract_background().extract()
    a, b = out.spectra, full.spectra
    diff = a.flux[:, 150:300].mean(axis=0) - b.flux[:, 166:316].mean(axis=0)
    sigma = np.sqrt(a.flux_err[:, 150:300] ** 2 + b.flux_err[:, 166:316] ** 2).mean(axis=0) / np.sqrt(20)
    assert np.all(np.abs(diff / sigma) < 4.5), np.abs(diff / sigma).max()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda o: o.clean(window_heights="40"), "window_heights"),
        (lambda o: o.clean(window_heights=[0]), "window"),
        (lambda o: o.clean(dq_bits_to_mask=[40]), "outside 0-31"),
        (lambda o: o.clean(dq_bits_to_mask=["HOTT"]), "Unknown DQ flag name"),
        (lambda o: o.subtract_background(regions=((8, 17), (56, 90))), "regions|outside"),
        (lambda o: o.subtract_background(regions="8-17"), "pairs"),
        (lambda o: o.wavelength_map().extract(method="box", aperture_left_width=-1), "aperture_left_width"),
        (lambda o: o.wavelength_map().extract(method="box", aperture_center=70), "aperture|edge|frame"),
        (lambda o: o.wavelength_map().extract(method="optimal", gain=0), "gain"),
        (lambda o: o.wavelength_map().extract().align(x_rows=(0, 999)), "x_rows"),
    ],
)
def test_bad_arguments_get_clear_errors(obs, call, message):
    with pytest.raises(InputError, match=message):
        call(obs)


def test_dq_names_and_numbers_are_the_same(obs):
    a = obs.clean(dq_bits_to_mask=[0, 11])
    b = obs.clean(dq_bits_to_mask=["DO_NOT_USE", "hot"])
    np.testing.assert_array_equal(a.data, b.data)
    assert b.history[-1].parameters["dq_bits_to_mask"] == [0, 11]
