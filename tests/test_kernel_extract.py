"""Extraction kernels (exomiri.steps.extract) and the built-in box/optimal methods.

Synthetic cubes: a Gaussian PSF across the columns, integrated over each
pixel (erf), centred near column 36.2 with a small tilt along the rows, a
spectrum varying smoothly along the rows, and Gaussian noise of known
variance ``RN + model / Q`` (read noise plus Poisson in DN/s units, ``Q =
gain * effinttm``).  Tolerances are derived from that noise.
"""

from __future__ import annotations

import inspect

import numpy as np
import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf

from exomiri import hookspecs
from exomiri.builtin import extraction as builtin
from exomiri.exceptions import InputError
from exomiri.hookspecs import ExtractionInput, ExtractionResult
from exomiri.steps import extract as X

RN = 4.0  # read-noise variance, (DN/s)^2
GAIN = 3.0
EFFINTTM = 10.0
Q = GAIN * EFFINTTM


def psf_image(centres: np.ndarray, sigma: float, ncols: int, sampled: bool = False) -> np.ndarray:
    """(nrows, ncols) PSF per row: pixel-integrated (erf) or sampled at pixel centres."""
    j = np.arange(ncols)
    c = np.asarray(centres, dtype=np.float64)[:, None]
    if sampled:
        return np.exp(-0.5 * ((j - c) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)
    s = np.sqrt(2) * sigma
    return 0.5 * (erf((j + 0.5 - c) / s) - erf((j - 0.5 - c) / s))


def make_cube(
    nints=40,
    nrows=100,
    ncols=72,
    centre=36.2,
    tilt=0.004,
    sigma=1.5,
    amp=3000.0,
    vary=0.5,
    noise=True,
    sampled=False,
    seed=0,
):
    rng = np.random.default_rng(seed)
    rows = np.arange(nrows)
    centres = centre + tilt * (rows - nrows / 2)
    prof = psf_image(centres, sigma, ncols, sampled)
    spectrum = amp * (1 + vary * np.sin(rows / 15.0))
    model = spectrum[:, None] * prof
    var = RN + model / Q
    shape = (nints, nrows, ncols)
    data = np.broadcast_to(model, shape).copy()
    if noise:
        data += rng.normal(size=shape) * np.sqrt(var)
    return {
        "data": data.astype(np.float32),
        "err": np.broadcast_to(np.sqrt(var), shape).astype(np.float32),
        "model": model,
        "profile": prof,
        "spectrum": spectrum,
        "centres": centres,
        "var": var,
    }


def frames_from(cube, trace, mask=None, profile=None, **kwargs):
    data = cube["data"]
    return ExtractionInput(
        data=data,
        err=cube["err"],
        mask=np.zeros(data.shape, bool) if mask is None else mask,
        trace=trace,
        profile=profile,
        background=np.zeros(data.shape, np.float32),
        var_rnoise=np.full(data.shape, RN, np.float32),
        effinttm=EFFINTTM,
        **kwargs,
    )


def aperture_truth(cube, weights):
    """The noiseless flux inside an aperture, (nints or 1, nrows)."""
    return (weights * cube["model"]).sum(axis=-1)


# ---------------------------------------------------------------------------
# box


def test_box_integer_edges_equal_plain_sum():
    cube = make_cube(nints=20)
    d, e = cube["data"], cube["err"]
    centres = np.full((1, d.shape[1]), 36.0)
    w = X.box_weights(centres, 4, 4, d.shape[2])
    flux, flux_err, n_masked = X.box(d, e, w, np.zeros(d.shape, bool))
    plain = d[:, :, 32:41].sum(axis=2, dtype=np.float64)
    np.testing.assert_allclose(flux, plain, rtol=1e-12)
    np.testing.assert_allclose(flux, d[:, :, 32:41].sum(axis=2), rtol=2e-6)  # float32 sum
    np.testing.assert_allclose(
        flux_err, np.sqrt((e[:, :, 32:41].astype(np.float64) ** 2).sum(axis=2)), rtol=1e-12
    )
    assert not n_masked.any()
    # the weights are the reference's integer pixel set [rint(c - L), rint(c + R + 1))
    expected = np.zeros(d.shape[2], np.float32)
    expected[32:41] = 1
    np.testing.assert_array_equal(w[0, 0], expected)


def test_fractional_weights_sum_and_follow_the_centre():
    rng = np.random.default_rng(1)
    centres = rng.uniform(10, 60, size=(3, 50))
    left, right = 4, 3.5
    w = X.box_weights(centres, left, right, 72).astype(np.float64)
    assert w.dtype == np.float64 and w.shape == (3, 50, 72)
    np.testing.assert_allclose(w.sum(axis=2), left + right + 1, rtol=1e-6)
    assert w.min() >= 0 and w.max() <= 1
    # the aperture's edges, read back from the first and last pixel it touches
    inside = w > 0
    j0 = inside.argmax(axis=2)
    j1 = 71 - inside[:, :, ::-1].argmax(axis=2)
    w0 = np.take_along_axis(w, j0[..., None], axis=2)[..., 0]
    w1 = np.take_along_axis(w, j1[..., None], axis=2)[..., 0]
    np.testing.assert_allclose(j0 + 0.5 - w0, centres - left - 0.5, atol=1e-5)
    np.testing.assert_allclose(j1 - 0.5 + w1, centres + right + 0.5, atol=1e-5)
    # clipped at the frame edge: only what lies inside the frame counts
    edge = X.box_weights(np.array([[1.25]]), 4, 4, 72)
    np.testing.assert_allclose(edge.sum(), 1.25 + 4 + 0.5 + 0.5, rtol=1e-6)  # [-0.5, 5.75]
    np.testing.assert_array_equal(X.box_weights(np.array([[np.nan]]), 4, 4, 72), 0)


@settings(max_examples=60, deadline=None)
@given(
    centre=st.floats(-3, 75),
    left=st.floats(0, 12),
    right=st.floats(0, 12),
)
def test_box_weights_properties(centre, left, right):
    ncols = 72
    w = X.box_weights(np.array([[centre]]), left, right, ncols)[0, 0].astype(np.float64)
    assert w.min() >= 0 and w.max() <= 1
    # the weights add up to the part of the aperture that lies on the frame
    on_frame = min(centre + right + 0.5, ncols - 0.5) - max(centre - left - 0.5, -0.5)
    assert abs(w.sum() - max(on_frame, 0.0)) < 1e-5
    c = round(centre)
    if float(left).is_integer() and float(right).is_integer():
        integer = X.box_weights(np.array([[float(c)]]), left, right, ncols)[0, 0]
        ref = np.zeros(ncols, np.float32)
        ref[max(int(np.rint(c - left)), 0) : max(int(np.rint(c + right + 1)), 0)] = 1
        np.testing.assert_array_equal(integer, ref)


def test_box_masked_pixel_filled_from_profile():
    cube = make_cube(nints=60, seed=2)
    d, e = cube["data"], cube["err"]
    _nints, nrows, ncols = d.shape
    w = X.box_weights(np.full((1, nrows), 36.0), 4, 4, ncols)
    mask = np.zeros(d.shape, bool)
    mask[:, ::2, 36] = True  # the trace peak, every other row
    d_bad = d.copy()
    d_bad[:, 1::4, 35] = np.nan  # NaN data count as masked too
    truth = aperture_truth(cube, w)
    for profile in (cube["profile"][None], None):
        flux, flux_err, n_masked = X.box(d_bad, e, w, mask, profile)
        assert (n_masked[:, ::2] == 1).all() and (n_masked[:, 1::4] == 1).all()
        assert (n_masked[:, 3::4] == 0).all()
        z = (flux - truth) / flux_err
        assert np.isfinite(z).all()
        # unbiased within the noise, and the scaled error describes the scatter
        assert abs(z.mean()) < 4 / np.sqrt(z.size) + 0.02
        assert 0.9 < z.std() < 1.1
        # the filled error is larger than the unmasked one, never smaller
        _, err_full, _ = X.box(d, e, w, None)
        assert (flux_err[:, ::2] > err_full[:, ::2]).all()


def test_box_nan_rows_and_no_good_pixels():
    cube = make_cube(nints=5)
    d = cube["data"].copy()
    d[:, 10] = np.nan
    d[:, 20, :36] = np.nan
    w = X.box_weights(np.full((1, d.shape[1]), 36.0), 4, 4, d.shape[2])
    flux, flux_err, n_masked = X.box(d, cube["err"], w, None, cube["profile"][None])
    assert np.isnan(flux[:, 10]).all() and np.isnan(flux_err[:, 10]).all()
    assert (n_masked[:, 10] == 9).all()
    others = np.ones(d.shape[1], bool)
    others[10] = False
    assert np.isfinite(flux[:, others]).all()
    truth = aperture_truth(cube, w)[0, 20]
    assert np.all(np.abs(flux[:, 20] - truth) < 5 * flux_err[:, 20])


# ---------------------------------------------------------------------------
# PSF fit and aperture centres


def test_fit_psf_noiseless_recovers_centre_and_sigma():
    cube = make_cube(nints=3, tilt=0, sigma=1.6, noise=False, sampled=True, centre=36.27)
    pos, sig = X.fit_psf(cube["data"], rows=(0, 100))
    np.testing.assert_allclose(pos, 36.27, atol=1e-3)
    np.testing.assert_allclose(sig, 1.6, atol=1e-3)
    # frame coordinates, whatever columns are fitted; a background offset is fitted too
    pos2, sig2 = X.fit_psf(cube["data"] + 5.0, rows=(0, 100), columns=(20, 60))
    np.testing.assert_allclose(pos2, 36.27, atol=1e-3)
    np.testing.assert_allclose(sig2, 1.6, atol=1e-3)
    # pixel-integrated PSF: centre exact, width ~ sqrt(sigma^2 + 1/12)
    cube = make_cube(nints=2, tilt=0, sigma=1.6, noise=False, centre=36.27)
    pos3, sig3 = X.fit_psf(cube["data"], rows=(0, 100))
    np.testing.assert_allclose(pos3, 36.27, atol=1e-3)
    np.testing.assert_allclose(sig3, np.sqrt(1.6**2 + 1 / 12), atol=5e-3)


def test_fit_psf_noisy_within_noise():
    cube = make_cube(nints=60, tilt=0, vary=0, amp=300.0, sampled=True, seed=3, centre=35.8)
    pos, sig = X.fit_psf(cube["data"], rows=(0, 100))
    assert np.isfinite(pos).all() and np.isfinite(sig).all()
    sem_pos = pos.std(ddof=1) / np.sqrt(pos.size)
    sem_sig = sig.std(ddof=1) / np.sqrt(sig.size)
    assert abs(pos.mean() - 35.8) < 4 * sem_pos
    assert abs(sig.mean() - 1.5) < 4 * sem_sig
    # the scatter is what the noise of a median of 100 rows allows: well below 0.05 px
    assert pos.std() < 0.05


def test_fit_psf_unusable_data_gives_nan():
    cube = make_cube(nints=4, noise=False)
    d = cube["data"].copy()
    d[0] = np.nan  # nothing finite
    d[1] = 7.0  # flat: no PSF
    d[2, :, :] = 0
    d[2, :, 12:68:2] = 1.0  # comb: no single peak
    mask = np.zeros(d.shape, bool)
    pos, sig = X.fit_psf(d, rows=(0, 100), mask=mask)
    assert np.isnan(pos[:2]).all() and np.isnan(sig[:2]).all()
    assert np.isfinite(pos[3]) and abs(pos[3] - cube["centres"].mean()) < 0.05
    # masked everywhere is the same as NaN everywhere
    pos, _ = X.fit_psf(cube["data"], rows=(0, 100), mask=np.ones(d.shape, bool))
    assert np.isnan(pos).all()
    # a range beyond the frame is clipped (here: empty)
    pos, sig = X.fit_psf(cube["data"], rows=(200, 390))
    assert np.isnan(pos).all() and np.isnan(sig).all()


def test_aperture_centers_modes():
    nrows = 50
    trace = 37.0 + 0.01 * np.arange(nrows)
    trace[:5] = np.nan
    position = np.array([36.5, np.nan, 35.0])
    const = X.aperture_centers("constant", 36, trace, position, fit_rows=(20, 40))
    np.testing.assert_array_equal(const, np.full((3, nrows), 36.0))
    fits = X.aperture_centers("gaussian_fits", 36, trace, position, fit_rows=(20, 40))
    np.testing.assert_array_equal(fits[:, 7], [36.5, 36.0, 35.0])
    assert (fits == fits[:, :1]).all()
    tr = X.aperture_centers("trace", 36, trace, position, fit_rows=(20, 40))
    tilt = trace - trace[20:40].mean()
    np.testing.assert_allclose(tr[0, 5:], 36.5 + tilt[5:])
    np.testing.assert_allclose(tr[1, 5:], 36.0 + tilt[5:])  # failed fit: nominal centre
    no_tilt = np.broadcast_to(np.array([[36.5], [36.0], [35.0]]), (3, 5))
    np.testing.assert_allclose(tr[:, :5], no_tilt)  # NaN trace: no tilt
    np.testing.assert_allclose(tr[:, 20:40].mean(axis=1), [36.5, 36.0, 35.0])
    with pytest.raises(InputError, match="trace_position"):
        X.aperture_centers("wobble", 36, trace, position)


def test_build_profile_smooth_normalised_broadcast():
    cube = make_cube(nints=3, amp=2000.0, seed=4)
    mask = np.zeros(cube["data"].shape, bool)
    mask[1, 30, 36] = True
    prof = X.build_profile(cube["data"], mask, columns=(26, 47))
    assert prof.shape == cube["data"].shape
    assert prof.strides[0] == 0 and not prof.flags.writeable  # one frame, broadcast
    np.testing.assert_allclose(prof[0].sum(axis=1), 1.0, rtol=1e-12)
    assert (prof[0][:, :26] == 0).all() and (prof[0][:, 47:] == 0).all()
    truth = cube["profile"][:, 26:47] / cube["profile"][:, 26:47].sum(axis=1, keepdims=True)
    err = np.abs(prof[0][:, 26:47] - truth)
    # an 11-row running median cuts the noise of the 3-frame median by
    # ~sqrt(11 / (pi / 2)) = 2.6 and adds no visible bias
    raw = np.median(cube["data"], axis=0)[:, 26:47].clip(0)
    raw_err = np.abs(raw / raw.sum(axis=1, keepdims=True) - truth)
    assert np.sqrt(np.mean(err**2)) < 0.5 * np.sqrt(np.mean(raw_err**2))
    assert err.max() < 0.5 * raw_err.max()
    # a row with no signal gets a flat profile over the columns
    d = cube["data"].copy()
    d[:, 50] = -1.0
    flat = X.build_profile(d, None, columns=(26, 47), smooth_rows=1)
    np.testing.assert_allclose(flat[0, 50, 26:47], 1 / 21)


def test_shift_profile_moves_and_keeps_normalisation():
    ncols, sigma = 72, 1.2
    centres = np.full(20, 36.3)
    frame = psf_image(centres, sigma, ncols)
    frame /= frame.sum(axis=1, keepdims=True)
    shifts = np.array([0.0, 0.03, -0.07, 0.25, -1.0, 2.0, np.nan])
    moved = X.shift_profile(frame, shifts)
    assert moved.shape == (7, 20, ncols) and moved.dtype == np.float32
    np.testing.assert_allclose(moved.sum(axis=2), 1.0, rtol=1e-5)
    np.testing.assert_allclose(moved[0], frame, atol=1e-7)  # no shift
    np.testing.assert_allclose(moved[6], frame, atol=1e-7)  # NaN counts as 0
    np.testing.assert_allclose(moved[4, :, :-1], frame[:, 1:], atol=1e-7)  # whole pixels: exact
    np.testing.assert_allclose(moved[5, :, 2:], frame[:, :-2], atol=1e-7)
    for i in (1, 2, 3):
        truth = psf_image(centres + shifts[i], sigma, ncols)[0]
        err = np.abs(moved[i, 0] - truth).max()
        assert err < 0.4 * np.abs(frame[0] - truth).max()  # much closer than not moving
        # the centroid moves by the shift
        centroid = (moved[i, 0] * np.arange(ncols)).sum()
        assert abs(centroid - (36.3 + shifts[i])) < 0.01 * max(abs(shifts[i]), 0.05)


def test_profile_shifts_measure_jitter():
    rng = np.random.default_rng(12)
    nints, nrows, ncols, sigma = 30, 100, 72, 0.9
    jitter = rng.normal(0, 0.03, nints)
    rows = np.arange(nrows)
    spectrum = 5000.0 * (1 + 0.5 * np.sin(rows / 15.0))
    model = np.stack(
        [spectrum[:, None] * psf_image(36.2 + 0.004 * rows + dx, sigma, ncols) for dx in jitter]
    )
    var = RN + model / Q
    data = (model + rng.normal(size=model.shape) * np.sqrt(var)).astype(np.float32)
    err = np.sqrt(var).astype(np.float32)
    data[5, 40, 36] += 1e4  # a cosmic ray does not drag the shift
    frame = np.asarray(X.build_profile(data, None, (26, 47))[0])
    shifts = X.profile_shifts(data, err, None, frame, (26, 47))
    measured = shifts - shifts.mean()
    injected = jitter - jitter.mean()
    assert np.std(measured - injected) < 3e-3
    assert abs(np.polyfit(injected, measured, 1)[0] - 1) < 0.05
    # nothing usable: NaN
    empty = data.copy()
    empty[3] = np.nan
    assert np.isnan(X.profile_shifts(empty, err, None, frame)[3])


# ---------------------------------------------------------------------------
# optimal


def optimal_model(cube, ap, profile=None, **kwargs):
    kwargs = {
        "variance": "model",
        "gain": GAIN,
        "effinttm": EFFINTTM,
        "var_rnoise": np.full(cube["data"].shape, RN, np.float32),
        **kwargs,
    }
    profile = cube["profile"][None] if profile is None else profile
    return X.optimal(cube["data"], cube["err"], None, profile, ap, **kwargs)


def test_optimal_agrees_with_box_and_beats_its_scatter():
    cube = make_cube(nints=60, amp=20000.0, seed=5)
    d = cube["data"]
    nrows, ncols = d.shape[1:]
    centres = np.full((1, nrows), 36.0)
    ap = X.aperture_mask(centres, 8, 8, ncols)
    w = X.box_weights(centres, 8, 8, ncols)
    f_box, _e_box, _ = X.box(d, cube["err"], w, None)
    f_opt, e_opt, n_rej = optimal_model(cube, ap)
    np.testing.assert_allclose(f_opt.mean(axis=0), f_box.mean(axis=0), rtol=2e-3)
    assert (n_rej == 0).mean() > 0.999
    truth = aperture_truth(cube, ap)
    # the theoretical optimal error 1 / sqrt(sum P^2 / V), P normalised in the aperture
    p = np.where(ap[0], cube["profile"], 0)
    p /= p.sum(axis=1, keepdims=True)
    theory = 1 / np.sqrt((p**2 / cube["var"]).sum(axis=1))
    z_opt = (f_opt - truth) / theory
    z_box = (f_box - truth) / theory
    assert 0.9 < z_opt.std() < 1.1
    np.testing.assert_allclose(e_opt, np.broadcast_to(theory, e_opt.shape), rtol=0.02)
    # box: sqrt(sum V) over the same pixels; the measured ratio follows the theory
    box_theory = np.sqrt(np.where(ap[0], cube["var"], 0).sum(axis=1))
    assert (box_theory > theory).all()
    ratio = z_box.std() / z_opt.std()
    expected = np.sqrt(np.mean((box_theory / theory) ** 2))
    assert ratio > 1 and abs(ratio / expected - 1) < 0.02


def test_optimal_rejects_cosmic_ray_and_errors_match_scatter():
    cube = make_cube(nints=60, amp=3000.0, seed=6)
    d = cube["data"]
    nrows, ncols = d.shape[1:]
    centres = np.full((1, nrows), 36.0)
    ap = X.aperture_mask(centres, 8, 8, ncols)
    hit = (7, 40)
    peak = int(np.rint(cube["centres"][hit[1]]))
    ray = 60 * np.sqrt(cube["var"][hit[1], peak])
    d[(*hit, peak)] += ray
    d[(*hit, peak + 3)] += 0.3 * ray  # a second hit in the same row, on the wing
    f_opt, e_opt, n_rej = optimal_model(cube, ap)
    w = X.box_weights(centres, 8, 8, ncols)
    f_box, e_box, _ = X.box(d, cube["err"], w, None)
    truth = aperture_truth(cube, ap)
    assert n_rej[hit] == 2
    assert abs(f_opt[hit] - truth[0, hit[1]]) < 4 * e_opt[hit]
    assert abs(f_box[hit] - truth[0, hit[1]]) > 30 * e_box[hit]  # box keeps the hit
    z = (f_opt - truth) / e_opt
    assert 0.9 < z.std() < 1.1
    assert abs(z.mean()) < 0.05
    # rejection off: the hit stays in
    f_raw, _, n_raw = optimal_model(cube, ap, max_iterations=0)
    assert n_raw[hit] == 0 and f_raw[hit] - truth[0, hit[1]] > 10 * e_opt[hit]


def test_optimal_masked_pixels_and_estimated_read_noise():
    cube = make_cube(nints=60, amp=3000.0, seed=7)
    d = cube["data"]
    nrows, ncols = d.shape[1:]
    centres = np.full((1, nrows), 36.0)
    ap = X.aperture_mask(centres, 8, 8, ncols)
    mask = np.zeros(d.shape, bool)
    mask[:, ::2, 36] = True  # the peak pixel left out: error must grow accordingly
    truth = aperture_truth(cube, ap)
    for var_rnoise in (np.full(d.shape, RN, np.float32), None):
        f, e, n = X.optimal(
            d, cube["err"], mask, cube["profile"][None], ap,
            gain=GAIN, effinttm=EFFINTTM, var_rnoise=var_rnoise,
        )  # fmt: skip
        assert (n[:, ::2] >= 1).all()
        z = (f - truth) / e
        for part in (z[:, ::2], z[:, 1::2]):
            assert 0.9 < part.std() < 1.1
            assert abs(part.mean()) < 0.06


def test_optimal_counts_the_subtracted_background_in_the_variance():
    rng = np.random.default_rng(21)
    cube = make_cube(nints=60, amp=3000.0, seed=21, noise=False)
    level = 80.0  # DN/s of background under the trace, already subtracted
    var = RN + (cube["model"] + level) / Q
    shape = cube["data"].shape
    data = (cube["model"] + rng.normal(size=shape) * np.sqrt(var)).astype(np.float32)
    err = np.broadcast_to(np.sqrt(var), shape).astype(np.float32)
    ap = X.aperture_mask(np.full((1, shape[1]), 36.0), 8, 8, shape[2])
    truth = aperture_truth(cube, ap)
    background = np.full(shape, level, np.float32)
    common = {"gain": GAIN, "effinttm": EFFINTTM}
    for var_rnoise in (np.full(shape, RN), None):  # given, or estimated from err
        f, e, _ = X.optimal(
            data, err, None, cube["profile"][None], ap,
            var_rnoise=var_rnoise, background=background, **common,
        )  # fmt: skip
        z = (f - truth) / e
        assert 0.9 < z.std() < 1.1 and abs(z.mean()) < 0.06
    _, e_without, _ = X.optimal(
        data, err, None, cube["profile"][None], ap, var_rnoise=np.full(shape, RN), **common
    )
    assert (e_without < e).all()  # leaving the background out understates the error


def test_optimal_err_variance_and_nan_rows():
    cube = make_cube(nints=30, amp=3000.0, seed=8)
    d = cube["data"].copy()
    d[:, 10] = np.nan
    d[:, 20, :36] = np.nan
    nrows, ncols = d.shape[1:]
    ap = X.aperture_mask(np.full((1, nrows), 36.0), 8, 8, ncols)
    f, e, n = X.optimal(d, cube["err"], None, cube["profile"][None], ap, variance="err")
    assert np.isnan(f[:, 10]).all() and np.isnan(e[:, 10]).all() and (n[:, 10] == 17).all()
    good = np.ones(nrows, bool)
    good[10] = False
    assert np.isfinite(f[:, good]).all()
    truth = aperture_truth(cube, ap)
    z = (f[:, good] - truth[:, good]) / e[:, good]
    assert 0.9 < z.std() < 1.1
    # err <= 0 carries no weight instead of an infinite one
    err = cube["err"].copy()
    err[:, 30, 36] = 0
    f0, _, n0 = X.optimal(cube["data"], err, None, cube["profile"][None], ap, variance="err")
    assert np.isfinite(f0[:, 30]).all() and (n0[:, 30] == 1).all()
    with pytest.raises(InputError, match="effinttm"):
        X.optimal(d, cube["err"], None, cube["profile"][None], ap, variance="model")
    with pytest.raises(InputError, match="variance"):
        X.optimal(d, cube["err"], None, cube["profile"][None], ap, variance="poisson")


def test_kernels_leave_inputs_unchanged():
    cube = make_cube(nints=6, seed=9)
    d = cube["data"].copy()
    d[:, 3, 36] = np.nan
    e = cube["err"].copy()
    mask = np.zeros(d.shape, bool)
    mask[:, 5, 35] = True
    prof = np.broadcast_to(cube["profile"], d.shape).copy()
    arrays = [d, e, mask, prof]
    before = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False  # any in-place write raises
    _nrows, ncols = d.shape[1:]
    centres = X.aperture_centers("trace", 36.0, cube["centres"], X.fit_psf(d, (0, 100))[0])
    X.box(d, e, X.box_weights(centres, 4, 4, ncols), mask, None)
    X.box(d, e, X.box_weights(centres, 4, 4, ncols), mask, prof)
    ap = X.aperture_mask(centres, 8, 8, ncols)
    X.optimal(d, e, mask, prof, ap, gain=GAIN, effinttm=EFFINTTM)
    X.optimal(d, e, mask, prof, ap, variance="err")
    X.build_profile(d, mask)
    X.fit_psf(d, (0, 100), mask=mask)
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# the built-in methods, through ExtractionInput


@pytest.fixture(scope="module")
def full_frame():
    """A SLITLESSPRISM-sized cube whose trace follows a calibrated-like tilt."""
    nrows, ncols = 416, 72
    rows = np.arange(nrows)
    trace = np.full(nrows, np.nan)
    trace[7:395] = 36.35 + 1.27 * (rows[7:395] - 7) / 388.0  # like the FLT-2 tilt
    shift = -1.1  # the star sits 1.1 px left of the calibrated trace
    cube = make_cube(nints=6, nrows=nrows, ncols=ncols, tilt=0, seed=10)
    centres = np.where(np.isfinite(trace), trace + shift, 36.35 + shift)
    prof = psf_image(centres, 1.5, ncols)
    spectrum = cube["spectrum"]
    model = spectrum[:, None] * prof
    var = RN + model / Q
    rng = np.random.default_rng(11)
    data = model + rng.normal(size=(6, nrows, ncols)) * np.sqrt(var)
    cube.update(
        data=data.astype(np.float32),
        err=np.broadcast_to(np.sqrt(var), data.shape).astype(np.float32),
        model=model,
        profile=prof,
        centres=centres,
        var=var,
    )
    return cube, trace


def test_box_method_constant_reproduces_reference_sum(full_frame):
    cube, trace = full_frame
    res = builtin.Box().extract(frames_from(cube, trace), trace_position="constant")
    assert isinstance(res, ExtractionResult)
    np.testing.assert_allclose(
        res.flux, cube["data"][:, :, 32:41].sum(axis=2, dtype=np.float64), rtol=1e-12
    )
    assert res.flux.shape == res.flux_err.shape == res.n_rejected.shape == (6, 416)
    assert res.trace_position.shape == res.trace_sigma.shape == (6,)


def test_methods_follow_the_trace(full_frame):
    cube, trace = full_frame
    frames = frames_from(cube, trace)
    expected_pos = cube["centres"][200:390].mean()
    for cls in (builtin.Box, builtin.Optimal):
        res = cls().extract(frames)
        # the row-median fit of a tilted trace whose brightness varies along the
        # rows is pulled by a few hundredths of a pixel (here ~0.035 px)
        np.testing.assert_allclose(res.trace_position, expected_pos, atol=0.05)
        np.testing.assert_allclose(res.trace_sigma, np.sqrt(1.5**2 + 1 / 12), atol=0.05)
        rows = slice(20, 390)
        true_centres = cube["centres"][None]
        if cls is builtin.Box:
            truth = aperture_truth(cube, X.box_weights(true_centres, 4, 4, 72))[0, rows]
        else:
            truth = aperture_truth(cube, X.aperture_mask(true_centres, 8, 8, 72))[0, rows]
        z = (res.flux[:, rows] - truth) / res.flux_err[:, rows]
        assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2, cls.name
    # the optimal extraction is the less noisy one
    box = builtin.Box().extract(frames)
    opt = builtin.Optimal().extract(frames)
    assert np.median(opt.flux_err[:, 20:390] / box.flux_err[:, 20:390]) < 1.0


def test_methods_with_masked_pixels_offsets_and_profile(full_frame):
    cube, trace = full_frame
    mask = np.zeros(cube["data"].shape, bool)
    mask[:, 100:300:3, 35] = True
    frames = frames_from(cube, trace, mask=mask)
    box = builtin.Box().extract(frames)
    assert box.n_rejected[:, 100:300:3].sum() > 0
    assert np.isfinite(box.flux[:, 10:400]).all()
    prof = np.broadcast_to(cube["profile"], cube["data"].shape)
    opt_p = builtin.Optimal().extract(
        frames_from(cube, trace, mask=mask, profile=prof), median_spatial_profile=True
    )
    opt = builtin.Optimal().extract(frames, variance="err", max_iterations=0)
    np.testing.assert_allclose(opt_p.flux[:, 20:390], opt.flux[:, 20:390], rtol=5e-3)
    # a subarray whose rows start 150 rows later: defaults move with the offsets
    sub = {k: (v[:, 150:] if k in ("data", "err") else v) for k, v in cube.items()}
    res = builtin.Box().extract(frames_from(sub, trace[150:], row_offset=-150))
    np.testing.assert_allclose(res.trace_position, cube["centres"][200:390].mean(), atol=0.05)


def test_optimal_method_follows_pointing_jitter():
    """A static profile with 0.03 px jitter on a narrow, bright PSF costs several times
    the noise; the built profile moved per integration reaches the optimal scatter."""
    rng = np.random.default_rng(13)
    nints, nrows, ncols, sigma = 40, 416, 72, 0.9
    jitter = rng.normal(0, 0.03, nints)
    rows = np.arange(nrows)
    trace = 36.3 + 0.003 * (rows - 300)
    spectrum = 20000.0 * (1 + 0.3 * np.sin(rows / 25.0))
    prof = np.stack([psf_image(trace + dx, sigma, ncols) for dx in jitter])
    model = spectrum[None, :, None] * prof
    var = RN + model / Q
    data = (model + rng.normal(size=model.shape) * np.sqrt(var)).astype(np.float32)
    cube = {"data": data, "err": np.sqrt(var).astype(np.float32)}
    frames = frames_from(cube, trace)
    res = builtin.Optimal().extract(frames, aperture_center=36)
    centres = np.rint(trace)[None]
    ap = X.aperture_mask(centres + jitter[:, None], 8, 8, ncols)
    truth = (ap * model).sum(axis=2)
    z = (res.flux - truth) / res.flux_err
    assert 0.85 < z.std() < 1.15 and abs(z.mean()) < 0.1
    # the same profile, not moved: far worse
    static = np.broadcast_to(X.build_profile(data, None, (26, 47))[0], data.shape)
    f_static, e_static, _ = X.optimal(
        data, cube["err"], None, static, ap, gain=GAIN, effinttm=EFFINTTM,
        var_rnoise=np.full(data.shape, RN),
    )  # fmt: skip
    assert ((f_static - truth) / e_static).std() > 2 * z.std()


def test_method_parameter_errors(full_frame):
    cube, trace = full_frame
    frames = frames_from(cube, trace)
    with pytest.raises(InputError, match="trace"):
        builtin.Box().extract(frames_from(cube, trace[:100]))
    cases = [
        (builtin.Box, {"aperture_left_width": -1}, "aperture_left_width"),
        (builtin.Box, {"aperture_right_width": float("nan")}, "aperture_right_width"),
        (builtin.Box, {"aperture_center": 2}, "aperture_center"),
        (builtin.Box, {"aperture_center": 68, "trace_position": "trace"}, "aperture_center"),
        (builtin.Box, {"trace_position": "fitted"}, "trace_position"),
        (builtin.Optimal, {"variance": "poisson"}, "variance"),
        (builtin.Optimal, {"gain": 0}, "gain"),
        (builtin.Optimal, {"gain": -3.1}, "gain"),
        (builtin.Optimal, {"rejection_threshold": 0}, "rejection_threshold"),
        (builtin.Optimal, {"max_iterations": -1}, "max_iterations"),
        (builtin.Optimal, {"aperture_left_width": -2}, "aperture_left_width"),
    ]
    for cls, params, name in cases:
        with pytest.raises(InputError, match=name):
            cls().extract(frames, **params)


def test_methods_register_through_the_hook():
    for cls in (builtin.Box, builtin.Optimal):
        assert isinstance(cls.name, str) and "\n" not in cls.description and cls.description
        params = list(inspect.signature(cls.extract).parameters.values())[2:]
        assert params
        for p in params:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin)
    got: list[type] = []
    pm.hook.exomiri_register_extraction_methods(register=got.append)
    assert got == [builtin.Box, builtin.Optimal]
