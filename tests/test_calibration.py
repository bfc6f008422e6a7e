import numpy as np
import pytest

from exomiri import calibration


def test_table_is_shipped_with_its_header():
    cal = calibration.load()
    assert cal.version == "FLT-2 9B.00.08"
    assert any("9B.00.08" in line for line in cal.header)
    assert len(cal.rows) == 388
    assert np.all(np.diff(cal.rows) > 0)


@pytest.mark.parametrize(
    ("row", "expected"),
    [(300, 8.582), (350, 6.909), (380, 5.426), (200, 10.924), (100, 12.666)],
)
def test_spot_checks_from_the_brief(row, expected):
    assert calibration.load().wavelength_at(np.array([row]))[0] == pytest.approx(expected, abs=1e-3)


def test_outside_the_table_is_nan():
    w = calibration.load().wavelength_at(np.array([0.0, 6.5, 7.0, 394.0, 394.5, 415.0]))
    assert np.isnan(w[[0, 1, 4, 5]]).all()
    assert np.isfinite(w[[2, 3]]).all()


def test_other_subarray_is_shifted_by_its_start():
    base = calibration.load()
    other = calibration.load(substrt1=3, substrt2=545)
    np.testing.assert_allclose(other.rows, base.rows - 16)
    np.testing.assert_allclose(other.trace, base.trace - 2)
    np.testing.assert_allclose(other.wavelength_smooth, base.wavelength_smooth)


def test_trace_is_tilted_by_about_1p3_pixels():
    cal = calibration.load()
    assert 1.2 < cal.trace.max() - cal.trace.min() < 1.4
