"""Binned light curves, xarray datasets and exports."""

import numpy as np
import pytest
import xarray as xr
from astropy.table import Table

import exomiri
from exomiri import InputError, StepOrderError
from exomiri.cli import run_chain
from exomiri.lightcurves import bin_edges, export, fit_depth


@pytest.fixture(scope="module")
def reduced():
    return run_chain(exomiri.simulate(nints=80, seed=12))


def test_binned_flux_is_the_sum_of_its_rows(reduced):
    ds = reduced.light_curves()
    wave = reduced.spectra.wavelength
    rows = (wave >= 7.0) & (wave < 7.5)
    k = int(np.flatnonzero(ds.wavelength_lower.values == 7.0)[0])
    np.testing.assert_allclose(ds.flux.values[:, k], reduced.spectra.flux[:, rows].sum(axis=1))
    np.testing.assert_allclose(
        ds.flux_error.values[:, k], np.sqrt((reduced.spectra.flux_err[:, rows] ** 2).sum(axis=1))
    )
    assert int(ds.n_rows.values[k]) == rows.sum()
    white = (wave >= 5.0) & (wave < 12.0)
    np.testing.assert_allclose(ds.white_flux.values, reduced.spectra.flux[:, white].sum(axis=1))
    np.testing.assert_array_equal(ds.x_shift.values, reduced.shifts.x)
    np.testing.assert_array_equal(ds.time.values, reduced.times)
    assert ds.flux.attrs["units"] == "DN/s" and ds.attrs["target"] == "SIM-1 b"


def test_the_binned_depth_is_the_injected_one(reduced):
    ds = reduced.light_curves(resolution=10)
    regressors = np.column_stack([ds.x_shift.values, ds.y_shift.values])
    depth, err, _ = fit_depth(
        ds.white_flux.values[:, None], ds.white_flux_error.values[:, None],
        reduced.truth.transit_shape, ds.time.values, regressors=regressors,
    )
    wave = reduced.spectra.wavelength
    rows = (wave >= 5.0) & (wave < 12.0)
    truth = reduced.truth
    injected = np.sum(truth.depth[rows] * truth.spectrum[rows]) / np.sum(truth.spectrum[rows])
    assert abs(depth[0] - injected) < 3 * err[0]


def test_bin_choices(reduced):
    spectra = reduced.spectra
    r = bin_edges(spectra, resolution=50)
    np.testing.assert_allclose(r[1:] / r[:-1], r[1] / r[0])
    assert 0.5 * (r[0] + r[1]) / (r[1] - r[0]) == pytest.approx(50, rel=0.05)
    ds = reduced.light_curves(pixels=10)
    assert np.all(ds.n_rows.values[:-1] == 10)
    with pytest.raises(InputError, match="only one"):
        reduced.light_curves(bins=[5, 6], resolution=10)
    with pytest.raises(InputError, match="increasing"):
        reduced.light_curves(bins=[6, 5])


def test_full_resolution_dataset(reduced):
    ds = reduced.to_xarray()
    assert ds.flux.shape == (80, 416)
    assert set(ds.data_vars) >= {
        "flux", "flux_error", "background", "x_shift", "y_shift", "psf_sigma", "n_outliers",
    }
    assert ds.wavelength.attrs["units"] == "micron"
    with pytest.raises(StepOrderError, match=r"obs.extract\(\)"):
        exomiri.simulate(nints=2, seed=0).to_xarray()


def test_exports_round_trip(reduced, tmp_path):
    nc = export(reduced, tmp_path / "lc.nc", resolution=20)
    back = xr.open_dataset(nc, engine="h5netcdf")
    expected = reduced.light_curves(resolution=20)
    np.testing.assert_allclose(back.flux.values, expected.flux.values)
    assert back.flux.attrs["units"] == "DN/s"
    ecsv = export(reduced, tmp_path / "lc.ecsv")
    table = Table.read(ecsv)
    assert table["flux"].shape == (80, 416)
    assert str(table["flux"].unit) == "DN / s"
    np.testing.assert_allclose(table["y_shift"], reduced.shifts.y)
    with pytest.raises(InputError, match=r"\.nc or \.ecsv"):
        export(reduced, tmp_path / "lc.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lc.ecsv", "lc.nc"]


def test_a_failed_export_keeps_the_previous_file(reduced, tmp_path, monkeypatch):
    target = tmp_path / "lc.ecsv"
    target.write_text("previous")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Table, "write", fail)
    with pytest.raises(OSError, match="No space left"):
        export(reduced, target)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["lc.ecsv"]  # no temporary file left
