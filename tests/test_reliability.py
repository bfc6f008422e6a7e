"""Bad input, damaged data and faults: clear errors, honest flags, and nothing lost.

The table in ``docs/reliability.md`` lists every case tried here, what the user
sees and the test that proves it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import exomiri
from exomiri import DataWarning, InputError, StepOrderError, UnknownMethodError
from exomiri import dq as dqflags
from exomiri.lightcurves import export
from exomiri.observation import INT_TIMES_COLUMNS

DO_NOT_USE = 1 << dqflags.FLAGS["DO_NOT_USE"]
SATURATED = 1 << dqflags.FLAGS["SATURATED"]
UNRELIABLE_ERROR = 1 << dqflags.FLAGS["UNRELIABLE_ERROR"]
CLEAN = {"dq_bits_to_mask": [0, 11], "window_heights": [40], "outlier_threshold": 5.0}


@pytest.fixture(scope="module")
def obs():
    """A short simulated observation: 6 integrations on the full SLITLESSPRISM frame."""
    return exomiri.simulate(nints=6, seed=11)


@pytest.fixture(scope="module")
def extracted(obs):
    return obs.wavelength_map().extract(method="box")


def _digest(paths):
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def write_rateints(path, data=None, *, err=None, dq=None, first=1, total=None, drop=(), **keys):
    """A small *_rateints.fits written directly with astropy (big-endian, as the pipeline writes).

    ``data`` defaults to a (3, 20, 8) cube of noise; ``keys`` override or, when None,
    remove primary header keys; ``drop`` lists extensions to leave out.
    """
    rng = np.random.default_rng(first)
    data = rng.normal(100.0, 5.0, (3, 20, 8)) if data is None else np.asarray(data)
    nints, nrows, ncols = data.shape
    err = np.full(data.shape, 5.0) if err is None else err
    dq = np.zeros(data.shape, np.uint32) if dq is None else dq
    header = {
        "TELESCOP": "JWST", "INSTRUME": "MIRI", "DETECTOR": "MIRIMAGE", "FILTER": "P750L",
        "EXP_TYPE": "MIR_LRS-SLITLESS", "TSOVISIT": True, "SUBARRAY": "SLITLESSPRISM",
        "SUBSTRT1": 1, "SUBSTRT2": 529, "SUBSIZE1": ncols, "SUBSIZE2": nrows,
        "NINTS": total or nints, "NGROUPS": 10, "NFRAMES": 1, "TFRAME": 0.159, "TGROUP": 0.159,
        "EFFINTTM": 1.431, "INTSTART": first, "INTEND": first + nints - 1, "PROGRAM": "01234",
        "OBSERVTN": "001", "VISIT": "001", "EXPOSURE": "1", "TARGPROP": "TEST",
    }
    header.update(keys)
    primary = fits.PrimaryHDU()
    for key, value in header.items():
        if value is not None:
            primary.header[key] = value
    table = np.zeros(nints, dtype=[(c, ">i4" if c == "integration_number" else ">f8") for c in INT_TIMES_COLUMNS])
    table["integration_number"] = np.arange(first, first + nints)
    for c in INT_TIMES_COLUMNS[1:]:
        table[c] = 60000.0 + table["integration_number"] * 1e-3
    hdus = {
        "SCI": fits.ImageHDU(np.asarray(data, ">f4"), name="SCI"),
        "ERR": fits.ImageHDU(np.asarray(err, ">f4"), name="ERR"),
        "DQ": fits.ImageHDU(np.asarray(dq, ">u4"), name="DQ"),
        "INT_TIMES": fits.BinTableHDU(table, name="INT_TIMES"),
    }
    fits.HDUList([primary] + [h for name, h in hdus.items() if name not in drop]).writeto(path)
    return Path(path)


# ---------------------------------------------------------------------------
# 1. arguments of every verb


BAD_ARGUMENTS = [
    # wavelength_map
    (lambda o, e: o.wavelength_map(source="wsc"), InputError, "source='wsc'.*auto, wcs, array, calibration"),
    (lambda o, e: o.wavelength_map(source="array"), InputError, "WAVELENGTH extension.*source='calibration'"),
    # clean
    (lambda o, e: o.clean(window_heights="40"), InputError, r"window_heights='40'.*window_heights=\[40\]"),
    (lambda o, e: o.clean(window_heights=[40.5]), InputError, "window height.*40.5"),
    (lambda o, e: o.clean(window_heights=[True]), InputError, "window height.*True"),
    (lambda o, e: o.clean(window_heights=[-5]), InputError, "window height.*-5"),
    (lambda o, e: o.clean(window_heights=[3]), InputError, "poly_order = 4.*taller windows"),
    (lambda o, e: o.clean(poly_order=100), InputError, "poly_order = 100"),
    (lambda o, e: o.clean(poly_order=4.5), InputError, "poly_order must be an integer"),
    (lambda o, e: o.clean(poly_order="4"), InputError, "poly_order must be an integer"),
    (lambda o, e: o.clean(poly_order=-1), InputError, "poly_order must be an integer >= 0"),
    (lambda o, e: o.clean(outlier_threshold=-1), InputError, "outlier_threshold must be a positive"),
    (lambda o, e: o.clean(outlier_threshold="5"), InputError, "outlier_threshold"),
    (lambda o, e: o.clean(outlier_threshold=True), InputError, "outlier_threshold"),
    (lambda o, e: o.clean(outlier_threshold=float("nan")), InputError, "outlier_threshold"),
    (lambda o, e: o.clean(spatial_profile_left_idx="a"), InputError, "spatial_profile_left_idx='a'"),
    (lambda o, e: o.clean(spatial_profile_left_idx=26.5), InputError, "spatial_profile_left_idx=26.5"),
    (lambda o, e: o.clean(spatial_profile_right_idx=100), InputError, "right <= 72"),
    (lambda o, e: o.clean(spatial_profile_left_idx=40, spatial_profile_right_idx=30), InputError, "left < right"),
    (lambda o, e: o.clean(weighted="yes"), InputError, "weighted.*True or False"),
    (lambda o, e: o.clean(dq_bits_to_mask=[40]), InputError, "DQ bit 40 is outside 0-31"),
    (lambda o, e: o.clean(dq_bits_to_mask=["HOTT"]), InputError, "Unknown DQ flag name 'HOTT'. Known names: DO_NOT_USE"),
    (lambda o, e: o.clean(dq_bits_to_mask=1.5), InputError, "DQ bits must be a list"),
    (lambda o, e: o.clean(dq_bits_to_mask=[True]), InputError, "bool"),
    # subtract_background
    (lambda o, e: o.subtract_background(method="median"), UnknownMethodError, "median.*Known background methods: col_wise, constant.*row_wise"),
    (lambda o, e: o.subtract_background(method=3), InputError, "method=3.*row_wise"),
    (lambda o, e: o.subtract_background(regions="8-17"), InputError, "pairs"),
    (lambda o, e: o.subtract_background(regions=(8, 17)), InputError, r"\(start, stop\) pair"),
    (lambda o, e: o.subtract_background(regions=[(8.5, 17)]), InputError, "integer column"),
    (lambda o, e: o.subtract_background(regions=[("8", "17")]), InputError, "integer column"),
    (lambda o, e: o.subtract_background(regions=[(True, 17)]), InputError, "integer column"),
    (lambda o, e: o.subtract_background(regions=[(17, 8)]), InputError, r"\(17, 8\) is empty"),
    (lambda o, e: o.subtract_background(regions=[(56, 90)]), InputError, "outside the 72 columns"),
    (lambda o, e: o.subtract_background(regions=[]), InputError, "No background regions"),
    (lambda o, e: o.subtract_background(smoothing_length=-3), InputError, "smoothing_length"),
    (lambda o, e: o.subtract_background(smoothing_length=2.5), InputError, "smoothing_length"),
    (lambda o, e: o.subtract_background(smoothing_length=True), InputError, "smoothing_length"),
    (lambda o, e: o.subtract_background(order=2), InputError, "'row_wise' has no parameter.*order"),
    (lambda o, e: o.subtract_background(method="col_wise", sigma_clip="3"), InputError, "sigma_clip"),
    (lambda o, e: o.subtract_background(method="col_wise", max_iterations=2.5), InputError, "max_iterations"),
    (lambda o, e: o.subtract_background(method="col_wise", weighted="no"), InputError, "weighted"),
    (lambda o, e: o.subtract_background(method="polynomial", order=-1), InputError, "order"),
    (lambda o, e: o.subtract_background(method="polynomial", order=True), InputError, "order"),
    (lambda o, e: o.subtract_background(method="polynomial", order=40), InputError, "Widen the background region or lower the order"),
    # extract
    (lambda o, e: o.extract(), StepOrderError, r"call obs.wavelength_map\(\) first"),
    (lambda o, e: o.wavelength_map().extract(method="sum"), UnknownMethodError, "sum.*Known extraction methods: box, optimal"),
    (lambda o, e: o.wavelength_map().extract(method="box", aperture_left_width=-1), InputError, "aperture_left_width must be >= 0"),
    (lambda o, e: o.wavelength_map().extract(method="box", aperture_left_width="4"), InputError, "aperture_left_width must be a finite number"),
    (lambda o, e: o.wavelength_map().extract(method="box", aperture_right_width=True), InputError, "aperture_right_width"),
    (lambda o, e: o.wavelength_map().extract(method="box", aperture_center=70), InputError, "beyond the frame's columns 0..71"),
    (lambda o, e: o.wavelength_map().extract(method="box", aperture_center=float("nan")), InputError, "aperture_center must be a finite number"),
    (lambda o, e: o.wavelength_map().extract(method="box", trace_position="fit"), InputError, "trace_position must be one of"),
    (lambda o, e: o.wavelength_map().extract(method="box", aperture_right_width=100), InputError, "reduce the widths"),
    (lambda o, e: o.wavelength_map().extract(variance="poisson"), InputError, "variance must be one of 'model', 'err'"),
    (lambda o, e: o.wavelength_map().extract(gain=0), InputError, "gain must be > 0"),
    (lambda o, e: o.wavelength_map().extract(gain="3.1"), InputError, "gain must be a finite number"),
    (lambda o, e: o.wavelength_map().extract(rejection_threshold=-5), InputError, "rejection_threshold"),
    (lambda o, e: o.wavelength_map().extract(max_iterations=2.0), InputError, "max_iterations must be an integer"),
    (lambda o, e: o.wavelength_map().extract(median_spatial_profile="yes"), InputError, "median_spatial_profile"),
    (lambda o, e: o.wavelength_map().extract(aperture_width=4), InputError, "has no parameter.*aperture_width.*aperture_left_width"),
    # align
    (lambda o, e: o.wavelength_map().align(), StepOrderError, r"call obs.extract\(\) first"),
    (lambda o, e: e.align(x_rows="ab"), InputError, r"align\(x_rows=.*pair of integer rows"),
    (lambda o, e: e.align(x_rows=5), InputError, r"align\(x_rows=.*pair of integer rows"),
    (lambda o, e: e.align(x_rows=(5,)), InputError, r"align\(x_rows=.*pair of integer rows"),
    (lambda o, e: e.align(x_rows=(2.5, 300)), InputError, r"align\(x_rows=.*pair of integer rows"),
    (lambda o, e: e.align(x_rows=(300, 200)), InputError, "inside the frame's 416 rows"),
    (lambda o, e: e.align(x_rows=(0, 999)), InputError, "inside the frame's 416 rows"),
    (lambda o, e: e.align(x_columns=(-1, 10)), InputError, "inside the frame's 72 columns"),
    (lambda o, e: e.align(x_columns=(30, 33)), InputError, "at least 8"),
    (lambda o, e: e.align(align_spectra="no"), InputError, "align_spectra.*True or False"),
    # selection, saving, writing
    (lambda o, e: o.select("a"), InputError, "Select integrations with an int"),
    (lambda o, e: o.select(100), InputError, "out of range for 6 integrations"),
    (lambda o, e: o.select(time=("a", "b")), InputError, "time=.*'a' is not a BJD_TDB value"),
    (lambda o, e: o.select(time=5), InputError, r"\(start, end\) pair"),
    (lambda o, e: o.drop(slice(None)), InputError, "leave none"),
    (lambda o, e: o.save(5), InputError, r"save\(path=5\).*file name"),
    (lambda o, e: o.write("x", segments="2"), InputError, "segments='2'"),
    (lambda o, e: o.write("x", segments=0), InputError, "between 1 and 6"),
    (lambda o, e: o.write(5), InputError, r"write\(path=5\).*file name or prefix"),
    (lambda o, e: o.write("/nonexistent-folder/jw01"), InputError, "folder /nonexistent-folder does not exist; create it"),
    (lambda o, e: o.save("/nonexistent-folder/s.h5"), InputError, r"save\('/nonexistent-folder/s.h5'\): the folder /nonexistent-folder does not exist"),
    (lambda o, e: export(e, "/nonexistent-folder/lc.nc"), InputError, "export to '/nonexistent-folder/lc.nc': the folder /nonexistent-folder does not exist"),
    (lambda o, e: exomiri.reduce(o, out="/nonexistent-folder/s.h5"), InputError, r"reduce\(out='/nonexistent-folder/s.h5'\): the folder /nonexistent-folder does not exist"),
]


@pytest.mark.parametrize(("call", "kind", "message"), BAD_ARGUMENTS)
def test_bad_arguments_get_clear_errors(obs, extracted, call, kind, message):
    """Each wrong argument raises an exomiri error that names it and says what to pass."""
    before = {name: np.array(getattr(obs, name)) for name in ("data", "err", "dq")}
    with pytest.raises(kind, match=message):
        call(obs, extracted)
    for name, value in before.items():  # a failed call never touches the observation
        np.testing.assert_array_equal(getattr(obs, name), value)


def test_step_order_errors_name_the_missing_call(obs):
    with pytest.raises(StepOrderError, match=r"extract\(\) needs 'wavelength'.*obs.wavelength_map\(\)"):
        obs.extract()
    with pytest.raises(StepOrderError, match=r"align\(\) needs 'spectra'.*obs.extract\(\)"):
        obs.align()


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (5, r"exomiri.open\(5\): not a file name"),
        (None, "not a file name"),
        ([Path("a_rateints.fits"), 3], "3 is not a file name"),
        ([], "given no files"),
        ("/nonexistent/jw*_rateints.fits", "No file matches"),
    ],
)
def test_open_with_something_that_is_not_a_path(paths, message):
    with pytest.raises(InputError, match=message):
        exomiri.open(paths)


# ---------------------------------------------------------------------------
# 2. files that are not what exomiri needs


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"INSTRUME": "NIRCAM"}, "INSTRUME='NIRCAM', expected 'MIRI'"),
        ({"DETECTOR": "MIRIFULONG"}, "DETECTOR='MIRIFULONG', expected 'MIRIMAGE'"),
        ({"FILTER": "F1500W"}, "FILTER='F1500W', expected 'P750L'"),
        ({"EXP_TYPE": "MIR_LRS-FIXEDSLIT"}, "EXP_TYPE='MIR_LRS-FIXEDSLIT'"),
        ({"TSOVISIT": False}, "not a time-series observation.*TSOVISIT=T"),
        ({"INSTRUME": None}, "primary header has no INSTRUME"),
        ({"SUBSTRT2": None}, "no SUBSTRT2; cannot place the subarray"),
        ({"SUBSIZE2": 416}, "SUBSIZE2 x SUBSIZE1 = 416 x 8 but the frames are 20 x 8"),
        ({"INTEND": 7}, "INTSTART=1, INTEND=7 describe 7 integrations but the file holds 3"),
    ],
)
def test_wrong_mode_or_header_names_the_file_and_the_fix(tmp_path, keys, message):
    path = write_rateints(tmp_path / "bad_rateints.fits", **keys)
    with pytest.raises(InputError, match=message) as info:
        exomiri.open(path)
    assert "bad_rateints.fits" in str(info.value)


@pytest.mark.parametrize("missing", ["SCI", "ERR", "DQ", "INT_TIMES"])
def test_missing_extension_is_named(tmp_path, missing):
    path = write_rateints(tmp_path / "cut_rateints.fits", drop=(missing,))
    with pytest.raises(InputError, match=f"cut_rateints.fits: missing extension.*{missing}.*calwebb_detector1"):
        exomiri.open(path)


def test_shapes_that_disagree_are_refused(tmp_path):
    data = np.ones((3, 20, 8))
    path = write_rateints(tmp_path / "dq_rateints.fits", data, dq=np.zeros((3, 20, 7), np.uint32))
    with pytest.raises(InputError, match=r"DQ has shape \(3, 20, 7\) but SCI has \(3, 20, 8\)"):
        exomiri.open(path)
    path = write_rateints(tmp_path / "err_rateints.fits", data, err=np.ones((2, 20, 8)))
    with pytest.raises(InputError, match="ERR has shape"):
        exomiri.open(path)
    flat = tmp_path / "rate.fits"
    with fits.open(write_rateints(tmp_path / "x_rateints.fits")) as hdul:
        hdul["SCI"].data = hdul["SCI"].data[0]
        hdul.writeto(flat)
    with pytest.raises(InputError, match=r"expected a cube.*not the \*_rate.fits"):
        exomiri.open(flat)
    # segments with different frames
    a = write_rateints(tmp_path / "a_rateints.fits", np.ones((3, 20, 8)), total=6)
    b = write_rateints(tmp_path / "b_rateints.fits", np.ones((3, 24, 8)), first=4, total=6)
    with pytest.raises(InputError, match=r"different frames.*SUBSIZE2=24 vs 20"):
        exomiri.open([a, b])


def test_integration_numbers_must_follow_one_another(tmp_path):
    a = write_rateints(tmp_path / "s1_rateints.fits", first=1, total=9)
    b = write_rateints(tmp_path / "s2_rateints.fits", first=4, total=9)
    c = write_rateints(tmp_path / "s3_rateints.fits", first=7, total=9)
    late = write_rateints(tmp_path / "s2b_rateints.fits", first=3, total=9)
    other = write_rateints(tmp_path / "o_rateints.fits", first=4, total=9, PROGRAM="05555")
    assert exomiri.open([c, a, b]).integration_numbers.tolist() == list(range(1, 10))
    with pytest.raises(InputError, match=r"Integrations 4-6 are missing between .*s1_rateints.fits and .*s3"):
        exomiri.open([a, c])
    with pytest.raises(InputError, match=r"s1_rateints.fits \(integrations 1-3\) and .*s2b_rateints.fits \(3-5\) overlap"):
        exomiri.open([a, late])
    with pytest.raises(InputError, match="overlap; a segment was given twice"):
        exomiri.open([a, a])
    with pytest.raises(InputError, match=r"different exposures \(PROGRAM='05555' vs '01234'\)"):
        exomiri.open([a, other])


def test_int_times_that_miss_integrations_are_refused(tmp_path):
    path = write_rateints(tmp_path / "t_rateints.fits")
    with fits.open(path) as hdul:
        table = hdul["INT_TIMES"].data
        hdul["INT_TIMES"] = fits.BinTableHDU(table[[0, 2]], name="INT_TIMES")
        hdul.writeto(tmp_path / "gap_rateints.fits")
        hdul["INT_TIMES"] = fits.BinTableHDU(table[:0], name="INT_TIMES")
        hdul.writeto(tmp_path / "empty_rateints.fits")
    with pytest.raises(InputError, match=r"gap_rateints.fits: INT_TIMES has no row for integration\(s\) \[2\]"):
        exomiri.open(tmp_path / "gap_rateints.fits")
    with pytest.raises(InputError, match=r"empty_rateints.fits: the INT_TIMES table is empty"):
        exomiri.open(tmp_path / "empty_rateints.fits")


# ---------------------------------------------------------------------------
# 3. data that no step can use: flagged, warned about, and NaN in the end


def _chains(obs, backgrounds=("row_wise", "col_wise", "constant", "polynomial"), clean=CLEAN):
    """Every background method with both extractions, then align."""
    base = obs.wavelength_map()
    if clean is not None:
        base = base.clean(**clean)
    for background in backgrounds:
        subtracted = base.subtract_background(method=background)
        for method in ("box", "optimal"):
            yield background, method, subtracted.extract(method=method).align()


def test_empty_frames_are_flagged_and_give_nan_spectra(tmp_path):
    sim = exomiri.simulate(nints=5, seed=4)
    data, err = np.array(sim.data), np.array(sim.err)
    data[1], err[1] = np.nan, np.nan  # a dropped frame
    data[3], err[3] = 0.0, 0.0  # an all-zero frame
    names = sim.replace(data=data, err=err).write(str(tmp_path / "empty"), segments=1)
    before = _digest(names)
    with pytest.warns(DataWarning, match=r"2 integration\(s\) of .* are all NaN or all zero \(indices \[1, 3\]\).*obs.drop\(\[1, 3\]\)"):
        obs = exomiri.open(names)
    assert np.all(obs.dq[[1, 3]] & DO_NOT_USE)
    np.testing.assert_array_equal(obs.dq[[0, 2, 4]], sim.dq[[0, 2, 4]])  # nothing else flagged
    good = [0, 2, 4]
    rows = slice(60, 380)
    for clean in (CLEAN, None):
        for background, method, out in _chains(obs, ("row_wise", "col_wise"), clean):
            label = f"{background}/{method}/clean={clean is not None}"
            flux = out.spectra.flux
            assert np.isnan(flux[[1, 3]]).all(), label
            assert np.isfinite(flux[good][:, rows]).all(), label
            assert np.isnan(out.shifts.x[[1, 3]]).all() and np.isnan(out.shifts.y[[1, 3]]).all(), label
            assert np.isfinite(out.shifts.x[good]).all() and np.isfinite(out.shifts.y[good]).all(), label
    assert _digest(names) == before  # the input files are never written to


def test_pixels_with_unusable_errors_never_reach_a_result(obs):
    """ERR rule: a pixel whose err is 0, negative or NaN is unusable in every step.

    Such pixels get a wild value here; the results must equal those where the same
    pixels are simply NaN (masked), whatever the method.
    """
    rng = np.random.default_rng(3)
    hit = rng.random(obs.shape) < 0.01
    hit[:, 100:110, 34:39] = True  # a patch on the trace
    err = np.array(obs.err)
    err[hit] = rng.choice([0.0, -1.0, np.nan, np.inf], size=hit.sum())
    data = np.array(obs.data)
    data[hit] = 1e6
    wild = obs.replace(data=data, err=err)
    masked_data = np.array(obs.data)
    masked_data[hit] = np.nan
    masked = obs.replace(data=masked_data)
    assert wild.usable_mask().sum() == masked.usable_mask().sum()
    for clean in (None, {**CLEAN, "weighted": True}):
        results = [{(b, m): o for b, m, o in _chains(x, clean=clean)} for x in (wild, masked)]
        for key, a in results[0].items():
            b = results[1][key]
            for name in ("flux", "flux_err"):
                x, y = getattr(a.spectra, name), getattr(b.spectra, name)
                np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=f"{key} {name}")
                scale = np.nanmedian(b.spectra.flux_err)
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-3 * scale, err_msg=f"{key} {name}")
            np.testing.assert_allclose(a.shifts.y, b.shifts.y, atol=1e-3 * np.nanmedian(b.shifts.y_err))
            assert np.nanmax(np.abs(a.spectra.flux)) < 1e5  # no trace of the wild values


def test_reader_flags_unusable_errors(tmp_path):
    err = np.full((3, 20, 8), 5.0)
    err[0, 4, 2] = 0.0
    err[1, 7, 3] = np.nan
    err[2, 9, 5] = -2.0
    dq = np.zeros(err.shape, np.uint32)
    dq[2, 9, 5] = DO_NOT_USE  # already known bad: flagged, not warned about
    path = write_rateints(tmp_path / "e_rateints.fits", err=err, dq=dq)
    with pytest.warns(DataWarning, match=r"2 pixel\(s\) of e_rateints.fits .* ERR that is zero, negative or NaN \(the first at integration index 0, row 4, column 2\).*UNRELIABLE_ERROR"):
        obs = exomiri.open(path)
    flagged = (obs.dq & UNRELIABLE_ERROR) != 0
    assert flagged.sum() == 3 and flagged[0, 4, 2] and flagged[1, 7, 3] and flagged[2, 9, 5]
    assert obs.usable_mask([]).sum() == 3


# ---------------------------------------------------------------------------
# 4. numerical robustness


def test_byte_order_and_precision_do_not_change_results(obs):
    """Big-endian arrays (as FITS files hold them) give bit-identical results; float64
    input gives the same spectra to far below the noise."""
    big = obs.replace(
        data=obs.data.astype(">f4"), err=obs.err.astype(">f4"), dq=obs.dq.astype(">u4")
    )
    double = obs.replace(data=obs.data.astype(np.float64), err=obs.err.astype(np.float64))
    reference = {(b, m): o for b, m, o in _chains(obs, ("row_wise", "col_wise"))}
    for variant, tolerance in ((big, 0.0), (double, 1e-3)):
        for background, method, out in _chains(variant, ("row_wise", "col_wise")):
            ref = reference[(background, method)]
            scale = np.nanmedian(ref.spectra.flux_err)
            np.testing.assert_allclose(out.spectra.flux, ref.spectra.flux, rtol=0, atol=tolerance * scale)
            np.testing.assert_allclose(out.shifts.x, ref.shifts.x, rtol=0, atol=tolerance * np.nanmedian(ref.shifts.x_err))


def test_nan_rows_across_the_trace(obs):
    data = np.array(obs.data)
    data[:, 150:153, :] = np.nan  # three rows lost in every integration
    holed = obs.replace(data=data)
    for clean in (CLEAN, None):
        for background, method, out in _chains(holed, ("row_wise", "col_wise"), clean):
            flux = out.spectra.flux
            other = np.r_[60:150, 153:380]
            assert np.isfinite(flux[:, other]).all(), (background, method)
            if clean is None:  # nothing to fill them from: NaN, never zero
                assert np.isnan(flux[:, 150:153]).all(), (background, method)
            else:  # clean interpolated them along the column
                assert np.isfinite(flux[:, 150:153]).all(), (background, method)
            assert np.isfinite(out.shifts.x).all() and np.isfinite(out.shifts.y).all()


@pytest.mark.parametrize("how", ["nan", "flagged"])
def test_saturated_column_through_the_trace_is_flagged(obs, how):
    data, dq = np.array(obs.data), np.array(obs.dq)
    rows = slice(120, 300)
    column = 36  # the trace's peak column
    if how == "nan":
        data[:, rows, column] = np.nan
    else:
        dq[:, rows, column] |= SATURATED | DO_NOT_USE
    saturated = obs.replace(data=data, dq=dq)
    for clean in (CLEAN, None):
        base = saturated.wavelength_map()
        base = base.clean(**clean) if clean else base
        base = base.subtract_background()
        reference = obs.wavelength_map()
        reference = reference.clean(**clean) if clean else reference
        reference = reference.subtract_background()
        for method in ("box", "optimal"):
            with pytest.warns(DataWarning, match=r"rows 1\d\d-2\d\d a pixel within one column of the trace is unusable in every integration"):
                out = base.extract(method=method)
            out = out.align()
            spectra = out.spectra
            # the rows say so (clean extrapolates into the ends of the run from the
            # windows it shares with good rows, which is why the check stays inside)
            assert np.all(spectra.n_rejected[:, 160:240] >= 1)
            assert np.isfinite(spectra.flux[:, 60:380]).all()
            assert np.isfinite(out.shifts.x).all() and np.isfinite(out.shifts.y).all()
            # elsewhere the spectrum is the one without the saturated column, within the
            # noise (the masked column moves the fitted PSF centre by ~0.2 px, which moves
            # a box aperture's fractional edges across the odd cosmic ray when not cleaned)
            ref = reference.extract(method=method).spectra
            z = (spectra.flux[:, 320:380] - ref.flux[:, 320:380]) / ref.flux_err[:, 320:380]
            assert np.median(np.abs(z)) < 0.3, np.median(np.abs(z))
            assert np.abs(z).max() < (1.0 if clean else 5.0), np.abs(z).max()


def test_a_single_integration(obs):
    """One integration: every step runs, the shifts against itself are zero, and its box
    spectrum is the one it has inside a longer observation (box is per integration)."""
    one = obs[2]
    assert one.nints == 1
    for background, method, out in _chains(one):
        assert out.spectra.flux.shape == (1, 416)
        assert np.isfinite(out.spectra.flux[0, 60:380]).all(), (background, method)
        shifts = out.shifts
        assert np.isfinite([shifts.x_err[0], shifts.y_err[0]]).all()
        # the series is its own template: zero to the fit's convergence tolerance (1e-6 px)
        assert abs(shifts.x[0]) < 1e-6 and abs(shifts.y[0]) < 1e-6
    long = obs.wavelength_map().clean(**CLEAN).subtract_background().extract(method="box")
    short = one.wavelength_map().clean(**CLEAN).subtract_background().extract(method="box")
    np.testing.assert_allclose(short.spectra.flux[0], long.spectra.flux[2], rtol=1e-6)
    aligned = short.align(align_spectra=True)
    # re-sampling by a zero shift (to 1e-6 px) changes nothing but, maybe, an end row
    inner = slice(1, -1)
    np.testing.assert_allclose(
        aligned.spectra.flux[:, inner], short.spectra.flux[:, inner], rtol=0,
        atol=1e-4 * np.nanmedian(short.spectra.flux_err),
    )


def test_segments_of_one_integration_stitch(tmp_path):
    rng = np.random.default_rng(5)
    cube = rng.normal(100, 5, (6, 20, 8))
    paths = [
        write_rateints(tmp_path / f"x-seg{k:03d}_rateints.fits", cube[a:b], first=a + 1, total=6)
        for k, (a, b) in enumerate([(0, 1), (1, 4), (4, 5), (5, 6)], start=1)
    ]
    before = _digest(paths)
    joined = exomiri.open(reversed(paths))
    np.testing.assert_array_equal(joined.data, cube.astype(np.float32))
    assert [(s.first, s.last) for s in joined.meta.segments] == [(1, 1), (2, 4), (5, 5), (6, 6)]
    assert _digest(paths) == before


# ---------------------------------------------------------------------------
# 5. sessions: interrupted saves, full disks, damaged files, old formats

# A child process that writes a session of noise (slow to compress: ~1 s), either in
# one save or integration chunk by chunk, to the path it is given.
WRITER = """
import sys
import numpy as np
from exomiri.io.hdf5 import SessionWriter
from exomiri.observation import INT_TIMES_DTYPE, LRSObservation, ObservationMeta

how, path, nints = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
shape = (nints, 416, 72)
times = np.zeros(nints, INT_TIMES_DTYPE)
times["integration_number"] = np.arange(1, nints + 1)
obs = LRSObservation(
    data=rng.standard_normal(shape, dtype=np.float32),
    err=rng.random(shape, dtype=np.float32),
    dq=rng.integers(0, 4, shape).astype(np.uint32),
    int_times=times,
    meta=ObservationMeta(nints=nints),
)
try:
    if how == "save":
        obs.save(path)
    else:
        with SessionWriter(path, nints=nints, meta=obs.meta) as writer:
            for start in range(0, nints, 20):
                writer.append(obs[start : start + 20])
            writer.finish(obs)
except OSError as exc:
    print(type(exc).__name__, exc.errno, exc)
    sys.exit(3)
print("finished")
"""


def _small_session(folder):
    obs = exomiri.simulate(nints=2, seed=1).wavelength_map()
    path = obs.save(folder / "s.h5")
    return Path(path), Path(path).read_bytes()


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != "s.h5")


@pytest.mark.parametrize(
    ("how", "min_bytes"),
    [("save", 0), ("save", 3_000_000), ("chunks", 3_000_000)],
    ids=["save-just-started", "save-mid-data", "chunked-mid-data"],
)
def test_a_killed_save_never_damages_the_previous_file(tmp_path, how, min_bytes):
    """SIGKILL while the session is being written: the old file stays byte-identical,
    and the only trace is one temporary file named after it, which is not a session."""
    import signal
    import subprocess
    import sys
    import time

    path, before = _small_session(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, how, str(path), "200"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while True:
        assert child.poll() is None, "the writer finished before it could be killed"
        assert time.monotonic() < deadline, "the writer never started writing"
        sizes = []
        for p in tmp_path.glob(".s.h5.*.tmp"):
            with contextlib.suppress(FileNotFoundError):  # replaced between glob and stat
                sizes.append(p.stat().st_size)
        if sizes and max(sizes) >= min_bytes:
            break
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    leftovers = _leftovers(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".s.h5.") and leftovers[0].endswith(".tmp")
    with pytest.raises(exomiri.SessionFormatError):
        exomiri.load(tmp_path / leftovers[0])
    assert exomiri.load(path).steps_done == ["wavelength_map"]


class _SmallDisk:
    """Stands in for ``open`` in exomiri.io.safefile: a disk that fills after ``capacity`` bytes."""

    def __init__(self, capacity):
        self.capacity = capacity

    def __call__(self, path, mode, buffering=-1):
        import errno
        import io
        import os

        capacity = self.capacity

        class Full(io.FileIO):
            def write(self, data):
                room = capacity - self.tell()
                if room <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return super().write(memoryview(data)[:room])  # a short write, then ENOSPC

        return Full(path, "w+")


@pytest.mark.parametrize("capacity", [0, 5_000, 200_000])
def test_a_full_disk_gives_a_clear_error_and_keeps_the_previous_file(tmp_path, monkeypatch, capacity):
    from exomiri.io import safefile
    from exomiri.io.hdf5 import SessionWriter

    path, before = _small_session(tmp_path)
    obs = exomiri.simulate(nints=8, seed=2)
    monkeypatch.setattr(safefile, "open", _SmallDisk(capacity), raising=False)
    with pytest.raises(exomiri.SessionFormatError, match=r"Could not save .*s.h5: .*No space left on device.*untouched; free some space") as info:
        obs.save(path)
    assert info.value.errno == 28
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    with (  # noqa: PT012
        pytest.raises(exomiri.SessionFormatError, match="No space left"),
        SessionWriter(path, nints=obs.nints, meta=obs.meta) as writer,
    ):
        for start in range(0, obs.nints, 2):
            writer.append(obs[start : start + 2])
        writer.finish(obs)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert exomiri.load(obs.save(path)).nints == 8  # with room again, saving works


def test_a_really_full_disk_does_not_crash_the_process(tmp_path):
    """A tiny tmpfs (needs root): HDF5 itself meets ENOSPC.  Written in a child process so
    that a crash (HDF5 can segfault on a file it failed to flush) shows as a failure."""
    import os
    import shutil
    import subprocess
    import sys

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tiny tmpfs needs root; the patched-disk test covers the logic")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        path, before = _small_session(disk)
        for how in ("save", "chunks"):
            child = subprocess.run(
                [sys.executable, "-c", WRITER, how, str(path), "20"],
                capture_output=True, text=True, timeout=120,
            )
            assert child.returncode == 3, (child.returncode, child.stdout[-2000:], child.stderr[-2000:])
            assert "SessionFormatError 28" in child.stdout and "untouched" in child.stdout
            assert path.read_bytes() == before and _leftovers(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_truncated_sessions_give_a_clear_error(tmp_path):
    _, raw = _small_session(tmp_path)
    damaged = tmp_path / "damaged.h5"
    for fraction in np.linspace(0.0, 0.999, 12):
        damaged.write_bytes(raw[: int(fraction * len(raw))])
        with pytest.raises(exomiri.SessionFormatError, match=r"damaged.h5.*(truncated or damaged|not an exomiri session)"):
            exomiri.load(damaged)


SESSIONS = sorted((Path(__file__).parent / "data").glob("session-*.h5"))


def _reference():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sessions", Path(__file__).parent / "data" / "make_sessions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()


def test_a_session_file_is_kept_for_the_current_format():
    from exomiri.io.hdf5 import FORMAT_VERSION

    assert f"session-{FORMAT_VERSION}.h5" in [p.name for p in SESSIONS]
    assert all(p.stat().st_size < 100_000 for p in SESSIONS)  # small files only


@pytest.mark.parametrize("path", SESSIONS, ids=[p.name for p in SESSIONS])
def test_sessions_of_every_released_format_load_with_their_values(path):
    # (values compared field by field with the observation the file was made from)

    before = _digest([path])
    loaded = exomiri.load(path)
    expected = _reference()
    assert _digest([path]) == before  # loading never writes
    for f in dataclasses.fields(expected):
        a, b = getattr(loaded, f.name), getattr(expected, f.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f.name
        elif f.name in LOADED_PRODUCTS:
            for name, value in b.arrays().items():
                np.testing.assert_array_equal(getattr(a, name), value, err_msg=f"{f.name}.{name}")
            assert a.scalars() == b.scalars(), f.name
        elif f.name == "wcs":
            assert a(2.0, 6.0)[-1] == pytest.approx(b(2.0, 6.0)[-1]) == pytest.approx(11.0)
        else:
            assert a == b, f.name
    # and the chain goes on from it
    assert loaded.select([0, 2]).integration_numbers.tolist() == [11, 13]


LOADED_PRODUCTS = ("background", "spectra", "shifts", "truth")


def test_older_minor_versions_go_through_their_migration(tmp_path, monkeypatch):
    import h5py

    from exomiri.io import hdf5

    path = tmp_path / "old.h5"
    path.write_bytes(SESSIONS[0].read_bytes())
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = "0.9"
        del f["observation/trace"]  # what a 0.9 writer would not have stored
    calls = []

    def migrate(f):
        calls.append(f.attrs["format_version"])
        return {"trace": np.full(20, 3.5)}

    monkeypatch.setitem(hdf5.MIGRATIONS, "0.9", migrate)
    loaded = exomiri.load(path)
    assert calls == ["0.9"]
    np.testing.assert_array_equal(loaded.trace, np.full(20, 3.5))
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = "2.0"
    with pytest.raises(exomiri.SessionFormatError, match=r"newer than this exomiri understands \(1.0\). Upgrade exomiri"):
        exomiri.load(path)


# ---------------------------------------------------------------------------
# 6. observations that do not hang together


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: {"dq": o.dq.astype(np.float32)}, "dq has dtype float32; expected integer DQ flags"),
        (lambda o: {"data": o.data.astype("S4")}, "data has dtype"),
        (lambda o: {"int_times": np.zeros(o.nints)}, "int_times has no column"),
        (lambda o: {"wavelength": np.zeros((416, 71))}, r"wavelength has shape \(416, 71\); expected \(416, 72\)"),
        (lambda o: {"trace": np.zeros(415)}, r"trace has shape \(415,\)"),
        (lambda o: {"outlier_counts": np.zeros((o.nints, 400, 5), np.int32)}, "outlier_counts"),
        (lambda o: {"spectra": dataclasses.replace(o.spectra, flux=o.spectra.flux[:-1])}, "spectra.flux has shape"),
        (lambda o: {"spectra": dataclasses.replace(o.spectra, wavelength=o.spectra.wavelength[:-1])}, "spectra.wavelength has shape"),
        (lambda o: {"err": o.err[:, :-1]}, "err has shape"),
    ],
)
def test_inconsistent_observations_are_refused(extracted, change, message):
    with pytest.raises(InputError, match=message):
        extracted.replace(**change(extracted))


def test_damaged_metadata_and_wavelength_extension(tmp_path):
    from exomiri.observation import ObservationMeta

    good = ObservationMeta().to_dict()
    assert ObservationMeta.from_dict(good) == ObservationMeta()
    for key, value in (("substrt1", "x"), ("effinttm", None), ("tso_visit", 1), ("nints", True), ("header", [])):
        with pytest.raises(InputError, match=f"metadata {key}="):
            ObservationMeta.from_dict({**good, key: value})
    path = write_rateints(tmp_path / "w_rateints.fits")
    with fits.open(path) as hdul:
        hdul.append(fits.ImageHDU(np.ones((19, 8), ">f4"), name="WAVELENGTH"))
        hdul.writeto(tmp_path / "wave_rateints.fits")
    with pytest.warns(DataWarning, match=r"wave_rateints.fits: the WAVELENGTH extension has shape \(19, 8\), not the frames' \(20, 8\); it is ignored"):
        obs = exomiri.open(tmp_path / "wave_rateints.fits")
    assert obs.wavelength_extension is None


def test_a_session_missing_a_cube_names_the_file(tmp_path):
    import h5py

    path = tmp_path / "nodq.h5"
    path.write_bytes(SESSIONS[0].read_bytes())
    with h5py.File(path, "a") as f:
        del f["observation/dq"]
    with pytest.raises(exomiri.SessionFormatError, match=r"nodq.h5 could not be read as an exomiri session .*'dq'.*truncated or damaged"):
        exomiri.load(path)
