"""The simulator: deterministic, consistent with its own truth and noise model."""

import numpy as np
import pytest

import exomiri
from exomiri import dq as dqflags


def test_same_seed_same_observation():
    a = exomiri.simulate(nints=5, seed=3)
    b = exomiri.simulate(nints=5, seed=3)
    c = exomiri.simulate(nints=5, seed=4)
    assert np.array_equal(a.data, b.data, equal_nan=True)
    assert not np.array_equal(a.data, c.data, equal_nan=True)


def test_err_is_the_noise_model(small_obs):
    obs = small_obs
    np.testing.assert_allclose(obs.err**2, obs.var_poisson + obs.var_rnoise, rtol=1e-5)


def test_noise_is_consistent_with_err(small_obs):
    obs, truth = small_obs, small_obs.truth
    clean = obs.dq == 0
    clean[truth.cosmic_rays[:, 0], truth.cosmic_rays[:, 1], truth.cosmic_rays[:, 2]] = False
    z = ((obs.data - truth.noiseless()) / obs.err)[clean]
    n = z.size
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert z.std() == pytest.approx(1.0, abs=4 * np.sqrt(2 / n) + 1e-3)


def test_flags_and_bad_pixels(small_obs):
    obs, truth = small_obs, small_obs.truth
    hot = dqflags.bit_mask(["HOT", "DO_NOT_USE"])
    dead = dqflags.bit_mask(["DEAD", "DO_NOT_USE"])
    assert np.all(obs.dq[:, truth.hot_pixels[:, 0], truth.hot_pixels[:, 1]] & hot == hot)
    assert np.all(obs.dq[:, truth.dead_pixels[:, 0], truth.dead_pixels[:, 1]] & dead == dead)
    assert np.isnan(obs.data[:, truth.dead_pixels[:, 0], truth.dead_pixels[:, 1]]).all()
    assert np.isnan(obs.data[:, :, :4]).all()
    assert np.all(obs.dq[:, :, :4] & dqflags.bit_mask("REFERENCE_PIXEL"))


def test_cosmic_rays_are_where_the_truth_says(small_obs):
    obs, truth = small_obs, small_obs.truth
    i, r, c = truth.cosmic_rays.T
    excess = obs.data[i, r, c] - truth.noiseless()[i, r, c]
    ok = np.isfinite(excess)
    # each hit is at least 8 sigma; the noise adds at most a few sigma
    assert np.all(excess[ok] > truth.cosmic_ray_amplitude[ok] - 6 * obs.err[i, r, c][ok])
    assert np.all(obs.dq[i, r, c] & dqflags.bit_mask("JUMP_DET") == 0)


def test_transit_depth_and_spectrum_make_sense(small_obs):
    truth = small_obs.truth
    assert truth.transit_shape.max() == pytest.approx(1.0)
    assert truth.transit_shape[0] == 0.0
    ok = np.isfinite(truth.wavelength)
    assert 0.004 < np.nanmin(truth.depth[ok]) < np.nanmax(truth.depth[ok]) < 0.0065
    # The background rises with wavelength (falls with row); the star sits near column 36.
    assert truth.background_row[100] > 5 * truth.background_row[380]
    assert 35.5 < truth.trace[300] < 37.0


def test_jitter_is_applied_as_given():
    x = np.linspace(-0.3, 0.3, 6)
    obs = exomiri.simulate(nints=6, seed=0, x_shifts=x, y_shifts=-x, cosmic_rays=0)
    np.testing.assert_array_equal(obs.truth.x_shift, x)
    star = obs.truth.noiseless() - obs.truth.background_cube()
    cols = np.arange(obs.shape[2])
    centroid = np.nansum(star[:, 250:350] * cols, axis=(1, 2)) / np.nansum(star[:, 250:350], axis=(1, 2))
    slope = np.polyfit(x, centroid, 1)[0]
    assert slope == pytest.approx(1.0, abs=0.02)


def test_other_subarray_geometry():
    obs = exomiri.simulate(nints=3, seed=0, subarray="SLITLESSPRISM_IP")
    assert obs.shape == (3, 384, 68)
    assert obs.meta.substrt2 == 545
    assert np.isnan(obs.data[:, :, :2]).all() and np.isfinite(obs.data[:, 100:300, 2]).all()


def test_times_are_increasing_bjd(small_obs):
    t = small_obs.times
    assert np.all(np.diff(t) > 0)
    assert 2460000 < t[0] < 2470000
    np.testing.assert_array_equal(small_obs.integration_numbers, np.arange(1, 41))


def test_binned_truth():
    obs = exomiri.simulate(nints=20, seed=2, depth=0.01)
    truth, wave = obs.truth, obs.truth.wavelength
    edges = np.array([5.0, 7.0, 9.0, 30.0, 31.0])
    depth = truth.binned_depth(wave, edges)
    # a flat depth stays flat (the rows' depths are blurred by the PSF along the dispersion)
    np.testing.assert_allclose(depth[:3], 0.01, rtol=5e-3)
    rows = (wave >= 7.0) & (wave < 9.0)
    weights = truth.spectrum[rows]
    assert depth[1] == pytest.approx(np.sum(truth.depth[rows] * weights) / np.sum(weights), rel=1e-12)
    assert np.isnan(depth[3])  # no row beyond 30 micron
    # one bin: the floor is the quadrature sum of its rows' floors over the summed flux
    rows = (wave >= 5.0) & (wave < 7.0)
    floor = truth.binned_noise_floor(wave, edges[:2])
    expected = np.sqrt(np.sum(truth.noise_floor[rows] ** 2)) / np.sum(truth.spectrum[rows])
    np.testing.assert_allclose(floor, [expected], rtol=1e-12)
    # estimating the background from the region columns can only add noise, most where the
    # background dominates (long wavelengths)
    with_background = truth.binned_noise_floor(wave, edges[:4], ((8, 17), (56, 72)))
    without = truth.binned_noise_floor(wave, edges[:4])
    ratio = with_background / without
    assert np.all(ratio > 1.0) and ratio[2] > ratio[0]


def test_a_flat_depth_dims_every_row_alike():
    # the light the planet blocks is blurred like the rest of the light: in transit every
    # row, the steep edges of the spectrum included, is dimmed by the same factor
    obs = exomiri.simulate(nints=40, seed=3, depth=0.005, jitter=0.0)
    truth = obs.truth
    np.testing.assert_allclose(truth.depth[truth.spectrum > 1.0], 0.005, rtol=1e-9)
    star = truth.noiseless() - truth.background_cube()
    inside, outside = np.argmax(truth.transit_shape), np.argmin(truth.transit_shape)
    assert truth.transit_shape[outside] == 0 and truth.transit_shape[inside] > 0.9
    lit = truth.spectrum > 1.0
    ratio = star[inside].sum(axis=1)[lit] / star[outside].sum(axis=1)[lit]
    np.testing.assert_allclose(ratio, 1.0 - 0.005 * truth.transit_shape[inside], rtol=1e-9)
