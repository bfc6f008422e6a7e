"""Tests of the time-domain outlier kernel exomiri.steps.timeclean, on small synthetic series."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from exomiri.exceptions import InputError
from exomiri.steps.timeclean import clean_series, common_mode, running_median


def series(n=300, k=400, seed=0, level=1e4, jitter=0.0, dtype=np.float32):
    """k bright series of n integrations with unit errors (in units of their noise),
    optionally answering with different strengths to one shared white 'jitter' pattern."""
    rng = np.random.default_rng(seed)
    levels = level * rng.uniform(0.5, 2.0, k)
    noise = np.sqrt(levels)
    pattern = rng.standard_normal(n)
    response = jitter * rng.uniform(-1.0, 1.0, k) * noise
    truth = levels[None, :] + pattern[:, None] * response[None, :]
    err = np.broadcast_to(noise, (n, k)).astype(dtype)
    values = (truth + rng.standard_normal((n, k)) * noise).astype(dtype)
    return values, err, truth


def allowed(size, threshold=4.0):
    """Most false alarms expected among ``size`` Gaussian values (about 4 sigma up)."""
    expected = size * 2 * stats.norm.sf(threshold)
    return expected + 4 * np.sqrt(expected) + 2


def inject(values, err, count, amplitude, seed=1):
    """Add positive outliers of ``amplitude`` (low, high) sigma at random places."""
    rng = np.random.default_rng(seed)
    n, k = values.shape
    flat = rng.choice(n * k, count, replace=False)
    t, j = np.divmod(flat, k)
    sigma = rng.uniform(*amplitude, count)
    out = values.copy()
    out[t, j] += (sigma * err[t, j]).astype(out.dtype)
    return out, (t, j), sigma


# --------------------------------------------------------------------------- running median


@pytest.mark.parametrize(("n", "window"), [(40, 3), (40, 5), (40, 11), (9, 11), (6, 5)])
def test_running_median_is_the_median_of_the_neighbours(n, window):
    rng = np.random.default_rng(n + window)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:, 2] = np.round(x[:, 2])  # ties
    x[:, 4] = np.nan  # nothing to compare with
    x[:3, 5] = np.nan
    median, count = running_median(x, window)
    w = min(window, n)
    for t in range(n):
        start = min(max(t - window // 2, 0), n - w)
        for j in range(x.shape[1]):
            neighbours = np.delete(x[start : start + w, j], t - start)
            neighbours = neighbours[~np.isnan(neighbours)]
            assert count[t, j] == neighbours.size
            if neighbours.size:
                assert median[t, j] == pytest.approx(np.median(neighbours), rel=1e-6)
            else:
                assert np.isnan(median[t, j])


# --------------------------------------------------------------------------- detection


def test_false_alarms_on_gaussian_noise_follow_the_threshold():
    values, err, _ = series(n=400, k=2500, seed=3)
    threshold = 3.5
    result = clean_series(values, err, threshold=threshold, n_components=0)
    # The residual from a median of 10 neighbours spreads by sqrt(1 + pi / 20), which the
    # threshold includes, so good values are replaced at the normal tail rate.
    expected = values.size * 2 * stats.norm.sf(threshold)
    assert abs(result.replaced.sum() - expected) < 5 * np.sqrt(expected) + 0.15 * expected
    # the robust scatter per series estimates the noise per value (here 1 in err units)
    np.testing.assert_allclose(np.median(result.scatter / err[0]), 1.0, atol=0.03)


def test_outliers_are_replaced_by_honest_estimates():
    clean, err, truth = series(seed=4)
    values, (t, j), _ = inject(clean, err, 300, (8.0, 30.0))
    before = values.copy()
    result = clean_series(values, err)
    assert result.replaced[t, j].all()
    assert result.replaced.sum() - 300 < allowed(values.size)  # 6e-5 of good values
    np.testing.assert_array_equal(values, before)  # inputs untouched
    assert result.values.dtype == np.float32 and result.err.dtype == np.float32
    # replacements agree with the truth within their (smaller) errors
    pull = (result.values[t, j] - truth[t, j]) / result.err[t, j]
    assert abs(np.mean(pull)) < 0.25
    assert 0.75 < np.std(pull) < 1.3
    # the error of a median of 10 neighbours (more where the series scatters more than err)
    ratio = result.err[t, j] / err[t, j]
    assert np.all(ratio >= np.sqrt(np.pi / 20) * 0.999)
    assert np.median(ratio) == pytest.approx(np.sqrt(np.pi / 20), rel=0.1)
    # everything else is left exactly as it was
    keep = ~result.replaced
    np.testing.assert_array_equal(result.values[keep], values[keep])
    np.testing.assert_array_equal(result.err[keep], err[keep])


def test_a_sharp_transit_is_divided_out_not_clipped():
    n, k, level = 200, 300, 1e6
    values, err, _ = series(n=n, k=k, seed=5, level=level)
    shape = np.zeros(n)
    shape[80:140] = 1.0  # instantaneous ingress and egress
    depth = 0.02  # 10 to 28 sigma per value
    dimmed = (values * (1 - depth * shape)[:, None]).astype(np.float32)
    result = clean_series(dimmed, err)
    # c is a median of k ratios, each with a relative noise of about 1 / sqrt(level)
    c_noise = np.sqrt(np.pi / 2) / np.sqrt(level) / np.sqrt(k)
    np.testing.assert_allclose(result.common_mode, 1 - depth * shape, atol=5 * c_noise)
    assert result.replaced.sum() <= 3
    # Without the common mode, the neighbours of the last value before a step are
    # half on the other side: the median falls halfway and the edges are replaced.
    bare = clean_series(dimmed, err, normalise=False, n_components=0)
    assert bare.replaced[[79, 80, 139, 140]].mean() > 0.9


def test_a_gradual_ingress_is_followed_even_without_the_common_mode():
    n, k = 200, 300
    values, err, _ = series(n=n, k=k, seed=6, level=4e4)
    shape = np.clip((np.arange(n) - 70) / 8, 0, 1) * np.clip((150 - np.arange(n)) / 8, 0, 1)
    dimmed = (values * (1 - 0.02 * shape)[:, None]).astype(np.float32)
    result = clean_series(dimmed, err, normalise=False)
    assert result.replaced.sum() <= 3


def test_shared_jitter_is_fitted_out_before_judging():
    clean, err, _ = series(seed=7, jitter=5.0)  # up to 5 sigma of shared pattern per value
    values, (t, j), _ = inject(clean, err, 300, (7.0, 12.0))
    fitted = clean_series(values, err, n_components=3)
    bare = clean_series(values, err, n_components=0)
    assert fitted.replaced[t, j].mean() > 0.95
    assert bare.replaced[t, j].mean() < 0.8  # where the jitter is large, a hit hides in it
    assert fitted.replaced.sum() - fitted.replaced[t, j].sum() < allowed(values.size)
    assert fitted.basis.shape == (300, 3)
    # the scatter left is the photon noise, not the jitter
    np.testing.assert_allclose(np.median(fitted.scatter / err[0]), 1.0, atol=0.05)


def test_an_err_that_is_too_small_is_overruled_by_the_scatter():
    clean, err, _ = series(seed=8)
    values, (t, j), _ = inject(clean, err, 100, (15.0, 40.0))
    small = (err * 0.3).astype(np.float32)
    result = clean_series(values, small)
    assert result.replaced[t, j].all()
    assert result.replaced.sum() - 100 < allowed(values.size)  # not thousands
    np.testing.assert_allclose(np.median(result.scatter / small[0]), 1 / 0.3, rtol=0.05)


def test_masked_and_missing_values_are_neither_used_nor_changed():
    values, err, _ = series(n=60, k=50, seed=9)
    values[10, 3] = np.nan
    mask = np.zeros(values.shape, bool)
    mask[20, 4] = True
    values[20, 4] = 1e9  # masked: neither judged nor used as a neighbour
    result = clean_series(values, err, mask)
    assert np.isnan(result.values[10, 3]) and result.values[20, 4] == 1e9
    assert not result.replaced[[10, 20], [3, 4]].any()
    assert not result.replaced[15:26, 4].any()


def test_results_do_not_depend_on_threads_and_work_on_any_time_first_shape():
    values, err, _ = series(n=80, k=600, seed=10, jitter=2.0)
    values, _, _ = inject(values, err, 50, (8.0, 20.0))
    one = clean_series(values, err, n_threads=1)
    two = clean_series(values, err, n_threads=2)
    for name in ("values", "err", "replaced", "scatter"):
        assert getattr(one, name).tobytes() == getattr(two, name).tobytes(), name
    cube = clean_series(values.reshape(80, 20, 30), err.reshape(80, 20, 30), n_threads=1)
    assert cube.values.shape == (80, 20, 30) and cube.scatter.shape == (20, 30)
    np.testing.assert_array_equal(cube.replaced.reshape(80, -1), one.replaced)
    spectra = clean_series(values.astype(np.float64), err.astype(np.float64))
    assert spectra.values.dtype == np.float64


def test_common_mode_needs_bright_series():
    rng = np.random.default_rng(11)
    faint = rng.normal(0.0, 1.0, (50, 40))
    np.testing.assert_array_equal(common_mode(faint, np.ones_like(faint)), np.ones(50))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 10}, "must be odd"),
        ({"window": 1}, "must be odd and at least 3"),
        ({"window": 11.0}, "not a whole number"),
        ({"window": True}, "not a whole number"),
        ({"threshold": 0}, "positive number of standard deviations"),
        ({"threshold": float("nan")}, "positive number"),
        ({"threshold": "5"}, "positive number"),
        ({"n_components": -1}, "whole number >= 0"),
        ({"n_components": 1.5}, "whole number >= 0"),
    ],
)
def test_bad_arguments_say_how_to_fix_them(kwargs, message):
    values, err, _ = series(n=20, k=5)
    with pytest.raises(InputError, match=message):
        clean_series(values, err, **kwargs)


def test_bad_arrays_are_refused():
    values, err, _ = series(n=20, k=5)
    with pytest.raises(InputError, match=r"err has shape \(20, 4\)"):
        clean_series(values, err[:, :4])
    with pytest.raises(InputError, match="mask must be boolean"):
        clean_series(values, err, np.zeros(values.shape, int))
    with pytest.raises(InputError, match="at least 4 integrations"):
        clean_series(values[:3], err[:3])
    with pytest.raises(InputError, match="real numbers"):
        clean_series(values.astype(str), err)
