"""Working in time: selecting integrations, time-domain outliers, decorrelation vectors and
segments out, on a simulated visit with a settling ramp, a deep transit and cosmic-ray hits
on the peak of the trace."""

from __future__ import annotations

import dataclasses
import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

import exomiri
from exomiri import InputError, StepOrderError
from exomiri import dq as dqflags
from exomiri.io.fits import history_lines
from exomiri.lightcurves import bin_spectra, export, fit_depth
from exomiri.steps.clean import outlier_counts

CLEAN = {"dq_bits_to_mask": [0, 11], "window_heights": [40], "poly_order": 4, "outlier_threshold": 5.0}
OUTLIER = dqflags.OUTLIER
RAMP = (0.005, 15.0)  # 0.5% settling ramp with a 15 minute time constant
MINUTES_PER_INTEGRATION = 201 * 0.15904 / 60  # ngroups=200 plus one reset frame


def digest(*arrays):
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


@pytest.fixture(scope="module")
def scene():
    """300 integrations of 32 s (2.7 h) in three segments: a settling ramp, a 2% transit
    whose ingress lasts a few integrations, and 600 cosmic-ray hits of 5 to 20 sigma on the
    trace's peak pixel (on top of the simulator's own hits, which land anywhere)."""
    obs = exomiri.simulate(nints=300, seed=21, ngroups=200, depth=0.02, ramp=RAMP, segments=3)
    truth = obs.truth
    rng = np.random.default_rng(22)
    ints = rng.integers(0, obs.nints, 600)
    rows = rng.integers(40, 395, 600)  # rows with a wavelength and starlight
    ints, rows = np.unique(np.column_stack([ints, rows]), axis=0).T
    cols = np.rint(truth.trace[rows] + truth.x_shift[ints]).astype(int)
    sigma = rng.uniform(5.0, 20.0, ints.size)
    data = np.array(obs.data)
    data[ints, rows, cols] += (sigma * obs.err[ints, rows, cols]).astype(np.float32)
    return SimpleNamespace(obs=obs.replace(data=data), hits=(ints, rows, cols), sigma=sigma)


@pytest.fixture(scope="module")
def prepared(scene):
    """The documented chain up to extraction: clean, background, clean."""
    obs = (
        scene.obs.wavelength_map()
        .clean(**CLEAN)
        .subtract_background(method="col_wise")
        .clean(**CLEAN)
    )
    scene.prepared_digest = digest(obs.data, obs.err, obs.dq, obs.outlier_counts)
    return obs


@pytest.fixture(scope="module")
def cleaned(prepared):
    return prepared.clean_time()


def reduce(obs):
    """Skip the first hour, extract, align."""
    return obs.select(time=(1 * u.hour, None)).extract().align()


@pytest.fixture(scope="module")
def final(cleaned):
    return reduce(cleaned)


# --------------------------------------------------------------------------- selection


def test_the_first_hour_is_removed_with_consistent_times(scene):
    obs = scene.obs
    late = obs.select(time=(1 * u.hour, None))
    elapsed = (obs.times - obs.int_times["int_start_BJD_TDB"][0]) * 24.0
    kept = np.flatnonzero(elapsed >= 1.0)
    assert kept[0] == int(np.ceil(60 / MINUTES_PER_INTEGRATION - 0.5))  # mid-times past 1 h
    np.testing.assert_array_equal(kept, np.arange(kept[0], obs.nints))
    assert late.int_times.tobytes() == obs.int_times[kept].tobytes()
    np.testing.assert_array_equal(late.integration_numbers, kept + 1)
    assert np.all(late.times - obs.int_times["int_start_BJD_TDB"][0] >= 1 / 24)
    for name in ("data", "err", "dq", "var_poisson", "var_rnoise"):
        assert getattr(late, name).tobytes() == getattr(obs, name)[kept].tobytes(), name
    # the truth follows: transit, ramp, pointing and the simulator's cosmic rays
    for name in ("transit_shape", "ramp", "x_shift", "y_shift"):
        np.testing.assert_array_equal(getattr(late.truth, name), getattr(obs.truth, name)[kept])
    rays = late.truth.cosmic_rays
    assert rays[:, 0].min() >= 0 and rays[:, 0].max() < late.nints
    assert len(rays) == np.count_nonzero(obs.truth.cosmic_rays[:, 0] >= kept[0])
    # what is left of the settling ramp is below 2% of its amplitude (exp(-60 / 15))
    assert 1 - late.truth.ramp.min() < 0.02 * RAMP[0] < 1 - obs.truth.ramp.min()
    record = late.history[-1]
    assert record.step == "select"
    assert record.parameters == {"integration_numbers": [[kept[0] + 1, 300]], "time": ["1.0 h", None]}
    assert record.diagnostics == {"kept": kept.size, "of": 300}


def test_time_windows_in_every_form_select_the_same_integrations(scene):
    obs = scene.obs
    it = obs.int_times
    start = it["int_start_BJD_TDB"][0]
    # window edges halfway between integrations 49/50 and 120/121
    lo, hi = 0.5 * (obs.times[49] + obs.times[50]), 0.5 * (obs.times[120] + obs.times[121])
    utc = it["int_mid_MJD_UTC"]
    lo_utc, hi_utc = 0.5 * (utc[49] + utc[50]), 0.5 * (utc[120] + utc[121])
    forms = [
        (lo, hi),
        (Time(lo, format="jd", scale="tdb"), Time(hi, format="jd", scale="tdb")),
        Time([lo, hi], format="jd", scale="tdb"),
        # a UTC Time is compared with the MJD_UTC mid-times (BJD_TDB is 5 minutes off here)
        (Time(lo_utc, format="mjd", scale="utc"), Time(hi_utc, format="mjd", scale="utc")),
        ((lo - start) * u.day, ((hi - start) * u.day).to(u.min)),
        np.array([lo - start, hi - start]) * 24 * u.hour,
    ]
    for window in forms:
        chosen = obs.select(time=window)
        np.testing.assert_array_equal(chosen.integration_numbers, np.arange(51, 122), str(window))
    np.testing.assert_array_equal(obs.select(time=(None, hi)).integration_numbers, np.arange(1, 122))
    np.testing.assert_array_equal(obs.select(time=(lo, None)).integration_numbers, np.arange(51, 301))
    both = obs.select(integrations=slice(0, 100), time=(lo, None))
    np.testing.assert_array_equal(both.integration_numbers, np.arange(51, 101))
    # integrations are kept in time order, once each
    np.testing.assert_array_equal(obs[[5, 2, 2]].integration_numbers, [3, 6])
    np.testing.assert_array_equal(obs[::-1].times, obs.times)


@pytest.mark.parametrize(
    ("select", "message"),
    [
        (lambda o: o.select(time=(o.times[-1] + 1, None)), r"leaves no integration.*BJD_TDB"),
        (lambda o: o.select(integrations=[0, 1], time=(o.times[5], None)), "leaves no integration"),
        (lambda o: o[10:10], "selects no integration"),
        (lambda o: o.drop(slice(None)), "would leave none"),
        (lambda o: o.select(time="1 h"), r"must be a \(start, end\) pair"),
        (lambda o: o.select(time=(1, 2, 3)), r"must be a \(start, end\) pair"),
        (lambda o: o.select(time=Time([1, 2, 3], format="jd")), r"must be a \(start, end\) pair"),
        (lambda o: o.select(time=(1 * u.m, None)), "is not a BJD_TDB value"),
        (lambda o: o.select(time=(True, None)), "is not a BJD_TDB value"),
        (lambda o: o.select(time=("soon", None)), "is not a BJD_TDB value"),
        (lambda o: o.select(integrations=[1.5]), "integer indices or a boolean mask"),
        (lambda o: o.select(integrations=np.ones(3, bool)), "one value per integration"),
        (lambda o: o.select(integrations=[40]), "out of range"),
        (lambda o: o[1, 2], "by integrations only"),
    ],
)
def test_selection_errors_say_what_to_do(small_obs, select, message):
    with pytest.raises(InputError, match=message):
        select(small_obs)


def test_a_selection_survives_save_and_load_and_continues(small_obs, tmp_path):
    chosen = small_obs.wavelength_map().select(time=(2 * u.min, None)).drop([3])
    back = exomiri.load(chosen.save(tmp_path / "s.h5"))
    for name in ("data", "err", "dq", "int_times", "var_poisson", "var_rnoise"):
        assert getattr(back, name).tobytes() == getattr(chosen, name).tobytes(), name
    assert back.history == chosen.history
    assert [r.step for r in back.history] == ["wavelength_map", "select", "drop"]
    assert back.truth.transit_shape.tobytes() == chosen.truth.transit_shape.tobytes()
    a = chosen.clean(**CLEAN).extract(method="box")
    b = back.clean(**CLEAN).extract(method="box")
    assert a.spectra.flux.tobytes() == b.spectra.flux.tobytes()


def test_selecting_before_or_after_the_chain():
    """Integration-by-integration steps give the same spectra either way; steps that use
    the whole time series (optimal's time-median profile, align's template) do not."""
    obs = exomiri.simulate(nints=50, seed=31)

    def chain(o):
        return o.wavelength_map().clean(**CLEAN).subtract_background(method="col_wise").clean(**CLEAN)

    before, after = chain(obs[20:]), chain(obs)[20:]
    for name in ("data", "err", "dq", "profile", "outlier_counts"):
        assert getattr(before, name).tobytes() == getattr(after, name).tobytes(), name
    box_before = before.extract(method="box").align()
    box_after = after.extract(method="box").align()
    assert box_before.spectra.flux.tobytes() == box_after.spectra.flux.tobytes()
    # align's zero point is the median of the integrations it sees: a constant offset
    dx = box_before.shifts.x - box_after.shifts.x
    assert np.std(dx) < 0.01 * np.std(box_after.shifts.x)
    opt_before, opt_after = before.extract(), chain(obs).extract()[20:]
    wave = opt_before.spectra.wavelength
    rows = (wave > 5) & (wave < 12)
    pull = (opt_before.spectra.flux - opt_after.spectra.flux)[:, rows] / opt_before.spectra.flux_err[:, rows]
    assert 0 < np.median(np.abs(pull)) < 0.1


# --------------------------------------------------------------------------- clean_time


def test_hits_on_the_trace_peak_that_clean_misses_are_found(scene, prepared, cleaned):
    hits, sigma = scene.hits, scene.sigma
    missed = (prepared.dq[hits] & OUTLIER) == 0
    # the spatial clean lets through about a sixth of these hits, most of them weak
    assert missed.sum() >= 40
    found = (cleaned.dq[hits] & OUTLIER) != 0
    moderate = missed & (sigma >= 6)
    assert found[moderate].mean() >= 0.9, np.sort(sigma[moderate & ~found])
    # at threshold 4 a hit of A sigma is found with a probability of about
    # norm.cdf((A - 4.3) / 1.08): about 80% between 5 and 6 sigma
    weak = missed & (sigma < 6)
    assert found[weak].mean() >= 0.5
    assert found[missed].mean() >= 0.85
    # clean and clean_time together: at least 90% of all the on-peak hits
    assert found.mean() >= 0.9, found.mean()


def test_replaced_hits_agree_with_the_truth(scene, prepared, cleaned):
    ints, rows, cols = scene.hits
    new = cleaned.data[ints, rows, cols] != prepared.data[ints, rows, cols]
    ints, rows, cols = ints[new], rows[new], cols[new]
    truth = prepared.truth
    expected = np.array([
        truth.noiseless([i])[0, r, c] - prepared.background.evaluate([i])[0, r, c]
        for i, r, c in zip(ints, rows, cols, strict=True)
    ])
    pull = (cleaned.data[ints, rows, cols] - expected) / cleaned.err[ints, rows, cols]
    assert abs(np.mean(pull)) < 0.3
    assert 0.7 < np.std(pull) < 1.4
    assert np.all(cleaned.err[ints, rows, cols] < prepared.err[ints, rows, cols])


def test_the_transit_is_followed_not_clipped(scene, prepared, cleaned):
    """No more replacements during ingress and egress than elsewhere, and the same depth
    with and without clean_time in every 0.5 micron bin."""
    replaced = cleaned.data != prepared.data
    replaced[scene.hits] = False
    rays = prepared.truth.cosmic_rays
    replaced[rays[:, 0], rays[:, 1], rays[:, 2]] = False
    per_integration = replaced.sum(axis=(1, 2))
    shape = prepared.truth.transit_shape
    changing = (shape > 0) & (shape < 1)
    assert changing.sum() >= 8
    rate = per_integration[~changing].mean()
    assert per_integration[changing].sum() < changing.sum() * rate + 4 * np.sqrt(changing.sum() * rate) + 3

    edges = np.arange(5.0, 12.0 + 1e-9, 0.5)

    def depths(obs):
        lc = bin_spectra(obs.spectra, edges)
        shifts = np.column_stack([obs.shifts.x, obs.shifts.y])
        return fit_depth(lc.flux, lc.flux_err, obs.truth.transit_shape, obs.times, regressors=shifts)

    with_time = reduce(cleaned)
    depth, err, _ = depths(with_time)
    without, err_without, _ = depths(reduce(prepared))
    assert np.all(np.abs(depth - without) < 0.5 * err_without), (depth - without) / err_without
    # and both recover the injected 2%
    injected = with_time.truth.binned_depth(with_time.spectra.wavelength, edges)
    assert np.all(np.abs(depth - injected) < 4 * err), (depth - injected) / err


def test_clean_time_bookkeeping(scene, prepared, cleaned):
    # the input observation is untouched
    assert digest(prepared.data, prepared.err, prepared.dq, prepared.outlier_counts) == (
        scene.prepared_digest
    )
    replaced = cleaned.data != prepared.data
    # OUTLIER is OR-ed in where a value was replaced; every other bit and pixel is kept
    np.testing.assert_array_equal(cleaned.dq, prepared.dq | (replaced * OUTLIER).astype(np.uint32))
    np.testing.assert_array_equal(cleaned.err[~replaced], prepared.err[~replaced])
    # the replacements near the trace are added to the per-integration counts
    sample = np.unique(np.linspace(0, cleaned.nints - 1, 64).astype(int))
    near = outlier_counts(replaced, cleaned._trace_columns(cleaned.data[sample]))
    np.testing.assert_array_equal(cleaned.outlier_counts, prepared.outlier_counts + near)
    record = cleaned.history[-1]
    assert record.step == "clean_time"
    assert record.parameters == {
        "on": "pixels", "window": 11, "threshold": 4.0, "n_components": 3, "dq_bits_to_mask": [0],
    }
    d = record.diagnostics
    assert d["replaced"] == replaced.sum() and d["replaced_near_trace"] == near[..., -1].sum()
    assert d["shared_patterns"] == 3
    assert 0.97 < d["common_mode_range"][0] < 0.985 and 1.0 < d["common_mode_range"][1] < 1.01
    assert 0.9 < d["median_scatter_over_err"] < 1.1


def test_clean_time_on_spectra(final):
    rng = np.random.default_rng(5)
    spectra = final.spectra
    good = np.flatnonzero((spectra.wavelength > 5) & (spectra.wavelength < 12))
    ints = rng.integers(0, final.nints, 150)
    rows = rng.choice(good, 150)
    ints, rows = np.unique(np.column_stack([ints, rows]), axis=0).T
    sigma = rng.uniform(5, 20, ints.size)
    flux = np.array(spectra.flux)
    flux[ints, rows] += sigma * spectra.flux_err[ints, rows]
    hit = final.replace(spectra=dataclasses.replace(spectra, flux=flux))
    out = hit.clean_time(on="spectra")
    replaced = out.spectra.flux != flux
    assert replaced[ints, rows].mean() >= 0.9 and replaced[ints[sigma > 7], rows[sigma > 7]].all()
    # on Gaussian noise 6e-5 of the 78,000 values; a few rows whose extracted flux
    # scatters more than its errors add a few
    assert replaced.sum() - replaced[ints, rows].sum() <= 20
    np.testing.assert_array_equal(
        out.outlier_counts - hit.outlier_counts, np.repeat(replaced[..., None], 5, axis=2)
    )
    # replaced hits agree with the fluxes before the hits, within both errors
    ints, rows = ints[replaced[ints, rows]], rows[replaced[ints, rows]]
    pull = (out.spectra.flux - spectra.flux)[ints, rows] / np.hypot(
        out.spectra.flux_err, spectra.flux_err
    )[ints, rows]
    assert abs(np.mean(pull)) < 0.3 and 0.7 < np.std(pull) < 1.4
    assert out.history[-1].parameters["on"] == "spectra"
    assert out.shifts is hit.shifts
    with pytest.raises(StepOrderError, match=r"obs.extract\(\)"):
        exomiri.simulate(nints=6, seed=0).clean_time(on="spectra")
    with pytest.raises(InputError, match="is not one of 'pixels', 'spectra'"):
        final.clean_time(on="cube")
    with pytest.raises(InputError, match="at least 4 integrations"):
        final[:3].clean_time()
    with pytest.raises(InputError, match="window=4 must be odd"):
        final.clean_time(window=4)


# --------------------------------------------------------------------------- decorrelation


PER_INTEGRATION = {
    "x_shift": "pixel",
    "y_shift": "pixel",
    "trace_position": "pixel",
    "psf_sigma": "pixel",
    "background_level": "DN / (s pix)",
    "white_flux": "DN / s",
    "white_flux_error": "DN / s",
}


def test_decorrelation_vectors_carry_units(final):
    full = final.to_xarray()
    binned = final.light_curves()
    for ds in (full, binned):
        for name, unit in PER_INTEGRATION.items():
            assert ds[name].dims == ("time",), name
            assert np.all(np.isfinite(ds[name].values)), name
            assert u.Unit(ds[name].attrs["units"]) == u.Unit(unit), name
        assert u.Unit(ds.time.attrs["units"]) == u.day and ds.time.attrs["time_scale"] == "BJD_TDB"
    np.testing.assert_array_equal(full.x_shift, final.shifts.x)
    np.testing.assert_array_equal(full.psf_sigma, final.spectra.trace_sigma)
    wave = final.spectra.wavelength
    white = (wave >= 5) & (wave < 12)
    np.testing.assert_allclose(full.white_flux, final.spectra.flux[:, white].sum(axis=1))
    np.testing.assert_allclose(binned.white_flux, full.white_flux)
    # the background level follows the simulated drift of the background
    drift = final.truth.background_scale
    assert np.corrcoef(full.background_level, drift)[0, 1] > 0.9
    # the white light shows the transit
    shape = final.truth.transit_shape
    depth = 1 - np.median(full.white_flux[shape == 1]) / np.median(full.white_flux[shape == 0])
    assert depth == pytest.approx(0.02, abs=0.002)


def test_exports_read_back_with_units(final, tmp_path):
    nc = export(final, tmp_path / "lc.nc", resolution=20)
    expected = final.light_curves(resolution=20)
    with xr.open_dataset(nc, engine="h5netcdf") as back:
        for name in (*PER_INTEGRATION, "flux", "flux_error", "background", "n_outliers"):
            np.testing.assert_allclose(back[name].values, expected[name].values, err_msg=name)
            assert back[name].attrs["units"] == expected[name].attrs["units"], name
        assert u.Unit(back.time.attrs["units"]) == u.day
        np.testing.assert_array_equal(back.time.values, final.times)
    table = Table.read(export(final, tmp_path / "lc.ecsv"))
    for name, unit in PER_INTEGRATION.items():
        assert table[name].unit == u.Unit(unit), name
        np.testing.assert_allclose(table[name].value, final.to_xarray()[name].values)
    assert table["time"].unit == u.day
    np.testing.assert_array_equal(table["time"].value, final.times)
    assert table["flux"].unit == u.DN / u.s and table["flux"].shape == final.spectra.flux.shape


# --------------------------------------------------------------------------- segments out


def test_cleaned_segments_round_trip(cleaned, tmp_path):
    from jwst import datamodels

    late = cleaned.select(time=(1 * u.hour, None))
    first = int(late.integration_numbers[0])
    names = late.write(str(tmp_path / "late"))
    # the input's three segments hold 1-100, 101-200, 201-300: the first is gone
    assert [n.rsplit("/", 1)[-1] for n in names] == [
        "late-seg001_mirimage_rateints.fits", "late-seg002_mirimage_rateints.fits",
    ]
    spans = [(first, 200), (201, 300)]
    offset = 0
    for name, (a, b) in zip(names, spans, strict=True):
        n = b - a + 1
        header = fits.getheader(name)
        assert (header["INTSTART"], header["INTEND"], header["NINTS"]) == (a, b, 300)
        with datamodels.open(name) as model:
            assert type(model).__name__ == "CubeModel"
            part = slice(offset, offset + n)
            for array in ("data", "err", "dq"):
                np.testing.assert_array_equal(getattr(model, array), getattr(late, array)[part])
            np.testing.assert_array_equal(model.int_times["integration_number"], np.arange(a, b + 1))
            np.testing.assert_array_equal(model.int_times["int_mid_BJD_TDB"], late.times[part])
        offset += n
        # one HISTORY entry per step, with its method and parameters
        lines = history_lines(header)
        assert lines == [f"exomiri {r.provider_version}: {r.summary()}" for r in late.history]
        assert "subtract_background[col_wise](regions=[[8, 17], [56, 72]]" in lines[2]
        assert "clean_time(on='pixels', window=11, threshold=4.0" in lines[4]
    back = exomiri.open(names)
    for array in ("data", "err", "var_poisson", "var_rnoise", "int_times"):
        assert getattr(back, array).tobytes() == getattr(late, array).tobytes(), array
    # the reader flags values whose error cannot weight them (clean's unfittable pixels)
    unusable = ~(np.isfinite(late.err) & (late.err > 0)) & np.isfinite(late.data)
    flag = np.uint32(1 << dqflags.FLAGS["UNRELIABLE_ERROR"])
    np.testing.assert_array_equal(back.dq, late.dq | (unusable * flag).astype(np.uint32))
    assert [(s.first, s.last) for s in back.meta.segments] == spans


def test_a_gap_inside_a_segment_splits_the_file(small_obs, tmp_path):
    from jwst import datamodels

    obs = small_obs.drop([10, 11])
    names = obs.write(str(tmp_path / "gap"))
    assert len(names) == 2
    with datamodels.open(names[1]) as model:
        assert model.meta.exposure.integration_start == 13
        assert model.meta.exposure.integration_end == 40
    assert exomiri.open(names[0]).integration_numbers.tolist() == list(range(1, 11))
    np.testing.assert_array_equal(exomiri.open(names[1]).data, obs.data[10:])
