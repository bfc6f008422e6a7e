"""Reading and writing *_rateints.fits segments."""

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import exomiri
from exomiri import DataWarning, InputError
from exomiri.observation import INT_TIMES_COLUMNS


def _digest(paths):
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def _cube_model(path, nints=4, nrows=416, ncols=72, first=1, total=None, seed=0, **meta):
    """A rateints file built directly with jwst.datamodels, as the pipeline writes one."""
    from jwst import datamodels

    rng = np.random.default_rng(seed)
    model = datamodels.CubeModel((nints, nrows, ncols))
    model.data = rng.normal(100, 5, (nints, nrows, ncols)).astype(np.float32)
    model.err = np.full((nints, nrows, ncols), 5, np.float32)
    model.dq = rng.integers(0, 2, (nints, nrows, ncols)).astype(np.uint32) * 2048
    times = np.zeros(nints, dtype=model.int_times.dtype if model.int_times is not None else None)
    table = np.zeros(nints, dtype=[(c, "i4" if c == "integration_number" else "f8") for c in INT_TIMES_COLUMNS])
    table["integration_number"] = np.arange(first, first + nints)
    for k, c in enumerate(INT_TIMES_COLUMNS[1:]):
        table[c] = 60000.0 + k + table["integration_number"] * 0.001
    del times
    model.int_times = table
    m = model.meta
    m.instrument.name = meta.get("instrument", "MIRI")
    m.instrument.detector = "MIRIMAGE"
    m.instrument.filter = meta.get("filter", "P750L")
    m.exposure.type = meta.get("exp_type", "MIR_LRS-SLITLESS")
    m.visit.tsovisit = meta.get("tso", True)
    m.subarray.name = "SLITLESSPRISM"
    m.subarray.xstart, m.subarray.ystart, m.subarray.xsize, m.subarray.ysize = 1, 529, ncols, nrows
    m.exposure.nints = total or nints
    m.exposure.ngroups = 40
    m.exposure.frame_time = m.exposure.group_time = 0.159
    m.exposure.integration_time = 6.2
    m.exposure.integration_start = first
    m.exposure.integration_end = first + nints - 1
    m.observation.program_number = meta.get("program", "01234")
    m.observation.observation_number = "001"
    m.observation.visit_number = "001"
    m.observation.exposure_number = "00001"
    m.target.proposer_name = "L 168-9"
    model.save(str(path))
    return model


def test_simulated_files_round_trip(segmented_obs, tmp_path):
    names = segmented_obs.write(str(tmp_path / "sim"))
    assert len(names) == 3 and all(n.endswith("_mirimage_rateints.fits") for n in names)
    before = _digest(names)
    back = exomiri.open(list(reversed(names)))  # order given does not matter
    assert _digest(names) == before  # inputs never written to
    for name in ("data", "err", "dq", "var_poisson", "var_rnoise", "int_times"):
        assert getattr(back, name).tobytes() == getattr(segmented_obs, name).tobytes(), name
    assert [s.first for s in back.meta.segments] == [1, 11, 21]
    assert back.meta.effinttm == pytest.approx(segmented_obs.meta.effinttm)
    assert back.meta.target == "SIM-1 b"
    # the FILENAME key is the final name, not the temporary one
    assert fits.getheader(names[0])["FILENAME"] == Path(names[0]).name


def test_glob_pattern(segmented_obs, tmp_path):
    segmented_obs.write(str(tmp_path / "sim"))
    back = exomiri.open(str(tmp_path / "sim-seg*_rateints.fits"))
    assert back.nints == 30


def test_jwst_built_file_reads_the_same_arrays_and_times(tmp_path):
    path = tmp_path / "jw01234001001_04103_00001_mirimage_rateints.fits"
    model = _cube_model(path)
    obs = exomiri.open(path)
    np.testing.assert_array_equal(obs.data, model.data)
    np.testing.assert_array_equal(obs.err, model.err)
    np.testing.assert_array_equal(obs.dq, model.dq)
    np.testing.assert_array_equal(obs.times, model.int_times["int_mid_BJD_TDB"])
    assert obs.data.dtype == np.float32 and obs.data.dtype.byteorder in "=<|"
    assert obs.meta.target == "L 168-9" and obs.meta.ngroups == 40


def test_three_segments_stitch_in_order(tmp_path):
    paths = [tmp_path / f"x-seg{k:03d}_mirimage_rateints.fits" for k in (1, 2, 3)]
    for k, p in enumerate(paths):
        _cube_model(p, nints=3, nrows=20, first=1 + 3 * k, total=9, seed=k)
    obs = exomiri.open([paths[2], paths[0], paths[1]])
    np.testing.assert_array_equal(obs.integration_numbers, np.arange(1, 10))
    np.testing.assert_array_equal(obs.data[3:6], exomiri.open(paths[1]).data)
    assert np.all(np.diff(obs.times) > 0)


def test_gap_and_overlap_are_errors_naming_the_files(tmp_path):
    a, b, c = (tmp_path / f"s{k}_rateints.fits" for k in range(3))
    _cube_model(a, nints=3, nrows=20, first=1, total=9)
    _cube_model(b, nints=3, nrows=20, first=7, total=9)
    _cube_model(c, nints=3, nrows=20, first=3, total=9)
    with pytest.raises(InputError, match=r"Integrations 4-6 are missing between .*s0_rateints.fits"):
        exomiri.open([a, b])
    with pytest.raises(InputError, match="overlap"):
        exomiri.open([a, c])


def test_different_exposures_are_refused(tmp_path):
    a, b = tmp_path / "a_rateints.fits", tmp_path / "b_rateints.fits"
    _cube_model(a, nints=2, nrows=20, first=1, total=4)
    _cube_model(b, nints=2, nrows=20, first=3, total=4, program="05555")
    with pytest.raises(InputError, match="different exposures"):
        exomiri.open([a, b])


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"instrument": "NIRSPEC"}, "INSTRUME='NIRSPEC', expected 'MIRI'"),
        ({"exp_type": "MIR_IMAGE"}, "EXP_TYPE='MIR_IMAGE'"),
        ({"filter": "F1500W"}, "FILTER='F1500W'"),
        ({"tso": False}, "not a time-series observation"),
    ],
)
def test_wrong_mode_names_the_file(tmp_path, meta, message):
    path = tmp_path / "wrong_rateints.fits"
    _cube_model(path, nints=2, nrows=20, **meta)
    with pytest.raises(InputError, match=message) as info:
        exomiri.open(path)
    assert "wrong_rateints.fits" in str(info.value)


def test_missing_extension_and_missing_file(tmp_path):
    path = tmp_path / "noerr_rateints.fits"
    _cube_model(path, nints=2, nrows=20)
    with fits.open(path) as hdul:
        del hdul["ERR"]
        hdul.writeto(tmp_path / "cut_rateints.fits")
    with pytest.raises(InputError, match=r"missing extension.*ERR") as info:
        exomiri.open(tmp_path / "cut_rateints.fits")
    assert "cut_rateints.fits" in str(info.value)
    with pytest.raises(InputError, match="no such file"):
        exomiri.open(tmp_path / "absent_rateints.fits")
    (tmp_path / "text_rateints.fits").write_text("not fits")
    with pytest.raises(InputError, match="not a readable FITS file"):
        exomiri.open(tmp_path / "text_rateints.fits")


def test_all_nan_frame_warns(tmp_path):
    obs = exomiri.simulate(nints=3, seed=0)
    data = np.array(obs.data)
    data[1] = np.nan
    names = obs.replace(data=data).write(str(tmp_path / "nan"), segments=1)
    with pytest.warns(DataWarning, match=r"all NaN or all zero \(indices \[1\]\)"):
        exomiri.open(names)


def test_big_endian_inputs_come_back_native(tmp_path):
    path = tmp_path / "be_rateints.fits"
    _cube_model(path, nints=2, nrows=20)
    assert fits.getdata(path, "SCI").dtype.byteorder == ">"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        obs = exomiri.open(path)
    assert obs.data.dtype.isnative and obs.dq.dtype == np.uint32


def test_a_wcs_in_the_file_is_read_and_used(tmp_path, linear_wcs):
    obs = exomiri.simulate(nints=3, seed=0).replace(wcs=linear_wcs)
    back = exomiri.open(obs.write(str(tmp_path / "wcs"), segments=1))
    mapped = back.wavelength_map()
    assert mapped.history[-1].parameters["source"] == "wcs"
    assert mapped.wavelength[300, 5] == pytest.approx(8.0)
