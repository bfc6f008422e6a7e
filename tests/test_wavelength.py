"""wavelength_map: calibration table, WAVELENGTH array, WCS; recorded source and version."""

import numpy as np
import pytest

import exomiri
from exomiri import InputError, calibration
from exomiri.products import WavelengthQuality


def test_calibration_equals_the_table_at_its_rows(small_obs):
    obs = small_obs.wavelength_map()
    cal = calibration.load()
    rows = cal.rows.astype(int)
    np.testing.assert_allclose(obs.wavelength[rows, 36], cal.wavelength_smooth, atol=1e-3)
    assert np.isnan(obs.wavelength[:7]).all() and np.isnan(obs.wavelength[395:]).all()
    record = obs.history[-1]
    assert record.parameters["source"] == "calibration"
    assert record.parameters["calibration"]["version"] == "FLT-2 9B.00.08"
    np.testing.assert_allclose(obs.trace[rows], cal.trace)


def test_auto_prefers_wcs_then_array_then_calibration(small_obs, linear_wcs):
    wave = np.full(small_obs.shape[1:], 7.0)
    with_array = small_obs.replace(wavelength_extension=wave)
    assert with_array.wavelength_map().history[-1].parameters["source"] == "array"
    assert np.all(with_array.wavelength_map().wavelength == 7.0)
    with_wcs = with_array.replace(wcs=linear_wcs)
    mapped = with_wcs.wavelength_map()
    assert mapped.history[-1].parameters["source"] == "wcs"
    assert mapped.wavelength[300, 10] == pytest.approx(14.0 - 0.02 * 300)
    # an all-zero WAVELENGTH extension counts as absent
    empty = small_obs.replace(wavelength_extension=np.zeros(small_obs.shape[1:]))
    assert empty.wavelength_map().history[-1].parameters["source"] == "calibration"


def test_explicit_sources_that_are_missing(small_obs):
    with pytest.raises(InputError, match="no WCS"):
        small_obs.wavelength_map(source="wcs")
    with pytest.raises(InputError, match="WAVELENGTH extension is missing"):
        small_obs.wavelength_map(source="array")
    with pytest.raises(InputError, match="not one of"):
        small_obs.wavelength_map(source="crds")


def test_other_subarray_uses_its_own_geometry():
    obs = exomiri.simulate(nints=2, seed=0, subarray="SLITLESSPRISM_IP").wavelength_map()
    assert obs.wavelength.shape == (384, 68)
    assert obs.wavelength[300 - 16, 5] == pytest.approx(8.582, abs=1e-3)
    assert obs.trace[300 - 16] == pytest.approx(calibration.load().trace_at(np.array([300.0]))[0] - 2)


def test_quality_marks_fold_and_low_signal():
    q = WavelengthQuality.of(np.array([4.2, 5.0, 10.0, 11.0, np.nan]))
    assert q.tolist() == [1, 0, 0, 2, 4]
