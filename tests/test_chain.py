"""The five steps as a chain, checked against the simulation's injected truth."""

import itertools

import numpy as np
import pytest

import exomiri
from exomiri.lightcurves import bin_spectra, fit_depth

CLEAN = {"dq_bits_to_mask": [0, 11], "window_heights": [40], "poly_order": 4, "outlier_threshold": 5.0}


def chain(obs, method="optimal", **extract):
    return (
        obs.wavelength_map()
        .clean(**CLEAN)
        .subtract_background(method="row_wise")
        .clean(**CLEAN)
        .extract(method=method, **extract)
        .align()
    )


@pytest.fixture(scope="module")
def long_obs():
    """1000 integrations with the default scene: transit, jitter, outliers, drifting background."""
    return exomiri.simulate(nints=1000, seed=11)


@pytest.fixture(scope="module")
def reduced(long_obs):
    return chain(long_obs)


@pytest.fixture(scope="module")
def reduced_box(reduced):
    # the same cleaned, background-subtracted cube, box-extracted
    return reduced.extract(method="box").align()


def bins(obs):
    edges = np.arange(5.0, 12.0 + 1e-9, 0.5)
    return edges, bin_spectra(obs.spectra, edges)


def injected_depth(obs, edges):
    truth, wave = obs.truth, obs.spectra.wavelength
    out = []
    for lo, hi in itertools.pairwise(edges):
        rows = (wave >= lo) & (wave < hi)
        out.append(np.sum(truth.depth[rows] * truth.spectrum[rows]) / np.sum(truth.spectrum[rows]))
    return np.array(out)


def bin_floor(obs, edges):
    """Relative photon-noise floor of one integration in each bin, from the truth."""
    truth, wave = obs.truth, obs.spectra.wavelength
    out = []
    for lo, hi in itertools.pairwise(edges):
        rows = (wave >= lo) & (wave < hi)
        out.append(np.sqrt(np.sum(truth.noise_floor[rows] ** 2)) / np.sum(truth.spectrum[rows]))
    return np.array(out)


def test_every_step_is_recorded(reduced):
    assert reduced.steps_done == [
        "wavelength_map", "clean", "subtract_background", "clean", "extract", "align",
    ]
    extract = reduced.history[4]
    assert (extract.method, extract.provider) == ("optimal", "exomiri")
    assert extract.parameters["aperture_left_width"] == 8
    assert extract.diagnostics["profile"] == "clean"
    assert all(r.duration_s >= 0 and r.time_utc for r in reduced.history)


def test_transit_depth_recovered_in_every_bin(reduced):
    edges, lc = bins(reduced)
    depth, err, _ = fit_depth(lc.flux, lc.flux_err, reduced.truth.transit_shape, reduced.times)
    truth = injected_depth(reduced, edges)
    pulls = (depth - truth) / err
    assert np.all(np.abs(pulls) < 3), pulls
    # The error bars are those the photon noise allows, not inflated ones.
    t = reduced.times - reduced.times.mean()
    s = reduced.truth.transit_shape
    design = np.column_stack([np.ones_like(t), t, -s, -s * t])
    leverage = np.sqrt(np.linalg.inv(design.T @ design)[2, 2])
    predicted = bin_floor(reduced, edges) * leverage
    assert np.all(err < 1.3 * predicted), err / predicted


def test_optimal_scatter_near_the_photon_noise_floor(reduced):
    edges, lc = bins(reduced)
    truth = reduced.truth
    model = 1.0 - np.outer(truth.transit_shape, injected_depth(reduced, edges))
    floors = bin_floor(reduced, edges)
    for k, floor in enumerate(floors):
        series = lc.flux[:, k] / model[:, k]
        # remove the slow background drift and settling with a line in time
        t = reduced.times - reduced.times.mean()
        resid = series - np.polyval(np.polyfit(t, series, 1), t)
        scatter = np.std(resid) / np.mean(series)
        assert scatter < 1.15 * floor, (edges[k], scatter / floor)


def test_optimal_beats_box_and_agrees_in_flux(reduced, reduced_box):
    _, opt = bins(reduced)
    _, box = bins(reduced_box)
    ratio = np.nanmedian(opt.flux / box.flux, axis=0)
    # high S/N bins: 5-9 micron
    np.testing.assert_allclose(ratio[:8], 1.0, atol=2e-3)
    shape = reduced.truth.transit_shape
    _, _, rms_opt = fit_depth(opt.flux, opt.flux_err, shape, reduced.times)
    _, _, rms_box = fit_depth(box.flux, box.flux_err, shape, reduced.times)
    assert np.all(rms_opt < rms_box), rms_opt / rms_box


def test_flux_err_is_honest(reduced):
    _, lc = bins(reduced)
    shape = reduced.truth.transit_shape
    _, _, rms = fit_depth(lc.flux, lc.flux_err, shape, reduced.times)
    predicted = np.median(lc.flux_err / lc.flux, axis=0)
    np.testing.assert_allclose(rms / predicted, 1.0, atol=0.15)


def test_shifts_follow_the_injected_pointing(reduced):
    truth = reduced.truth
    for measured, injected in ((reduced.shifts.x, truth.x_shift), (reduced.shifts.y, truth.y_shift)):
        injected = injected - np.median(injected)
        slope, offset = np.polyfit(injected, measured, 1)
        assert slope == pytest.approx(1.0, abs=0.05)
        assert np.std(measured - (slope * injected + offset)) < 0.01


def test_trace_position_and_width(reduced):
    spectra, truth = reduced.spectra, reduced.truth
    assert np.corrcoef(spectra.trace_position, truth.x_shift)[0, 1] > 0.95
    assert 1.0 < np.median(spectra.trace_sigma) < 2.0
    assert np.std(spectra.trace_sigma) < 0.05


def test_a_loaded_session_continues_identically(long_obs, tmp_path):
    part = long_obs[:120]
    first = part.wavelength_map().clean(**CLEAN).subtract_background(method="row_wise")
    resumed = exomiri.load(first.save(tmp_path / "s.h5"))
    a = first.clean(**CLEAN).extract().align()
    b = resumed.clean(**CLEAN).extract().align()
    assert a.spectra.flux.tobytes() == b.spectra.flux.tobytes()
    assert a.shifts.y.tobytes() == b.shifts.y.tobytes()
    assert [r.step for r in b.history] == [r.step for r in a.history]
    assert b.history[: len(first.history)] == first.history
