"""Sessions: bit-for-bit round trips, atomic saves, clear errors for damaged or newer files."""

import dataclasses
import os

import h5py
import numpy as np
import pytest

import exomiri
from exomiri import SessionFormatError
from exomiri.io import hdf5
from exomiri.products import BackgroundModel, Shifts, Spectra


def _assert_same(a, b):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            assert x.tobytes() == y.tobytes(), f.name
        elif dataclasses.is_dataclass(x) and not isinstance(x, type) and f.name != "meta":
            _assert_same(x, y)
        elif f.name not in ("wcs",):
            assert x == y, f.name


def _with_products(obs):
    nints, nrows, ncols = obs.shape
    rng = np.random.default_rng(0)
    spectra = Spectra(
        wavelength=np.linspace(14, 4, nrows), rows=np.arange(nrows),
        flux=rng.normal(size=(nints, nrows)), flux_err=rng.random((nints, nrows)),
        trace_position=rng.normal(36, 0.01, nints), trace_sigma=rng.normal(1.4, 0.01, nints),
        quality=np.zeros(nrows, np.uint8), n_rejected=np.zeros((nints, nrows), np.int32),
        method="box",
    )
    background = BackgroundModel(
        basis=np.ones((ncols, 1)), coeffs=rng.random((nints, nrows, 1)),
        cov=rng.random((nints, nrows, 1, 1)),
    )
    shifts = Shifts(x=rng.normal(size=nints), y=rng.normal(size=nints),
                    x_err=np.full(nints, 0.01), y_err=np.full(nints, 0.02))
    return obs.wavelength_map().replace(spectra=spectra, background=background, shifts=shifts)


def test_round_trip_is_bit_for_bit(small_obs, tmp_path):
    obs = _with_products(small_obs)
    path = obs.save(tmp_path / "s.h5")
    back = exomiri.load(path)
    _assert_same(obs, back)
    assert back.meta == obs.meta
    assert back.history == obs.history
    assert back.truth.cosmic_rays.tobytes() == obs.truth.cosmic_rays.tobytes()
    assert not back.data.flags.writeable


def test_format_attributes_and_layout(small_obs, tmp_path):
    path = small_obs.wavelength_map().save(tmp_path / "s.h5")
    with h5py.File(path) as f:
        assert f.attrs["format"] == "exomiri-session" and f.attrs["format_version"] == "1.0"
        assert f["observation"].attrs["encoding-type"] == "lrs-observation"
        data = f["observation/data"]
        assert data.chunks[1:] == data.shape[1:]  # chunks hold whole integrations
        assert 10 * 2**10 <= np.prod(data.chunks) * data.dtype.itemsize <= 2**20
        assert data.compression == "gzip"
        assert f["history"].attrs["encoding-type"] == "json-records"
        for name in f["observation"]:
            assert "encoding-type" in f["observation"][name].attrs, name


def test_wcs_survives(small_obs, tmp_path, linear_wcs):
    back = exomiri.load(small_obs.replace(wcs=linear_wcs).save(tmp_path / "w.h5"))
    assert back.wcs(1.0, 300.0)[-1] == pytest.approx(8.0)


def test_interrupted_save_keeps_the_previous_file(small_obs, tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    small_obs.save(path)
    before = path.read_bytes()

    def broken(f, obs):
        f.create_dataset("partial", data=np.zeros(1000))
        raise OSError("No space left on device")

    monkeypatch.setattr(hdf5, "_write_session", broken)
    with pytest.raises(OSError, match="No space left"):
        small_obs.wavelength_map().save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["s.h5"]  # no temporary file left behind


def test_truncated_file_gives_a_clear_error(small_obs, tmp_path):
    path = tmp_path / "s.h5"
    small_obs.save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SessionFormatError, match="truncated or damaged"):
        exomiri.load(path)


def test_newer_format_is_refused_with_upgrade_advice(small_obs, tmp_path):
    path = tmp_path / "s.h5"
    small_obs.save(path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = "2.0"
    with pytest.raises(SessionFormatError, match="Upgrade exomiri"):
        exomiri.load(path)


def test_not_a_session(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(SessionFormatError, match="not an exomiri session"):
        exomiri.load(path)
    with pytest.raises(SessionFormatError, match="no such session"):
        exomiri.load(tmp_path / "absent.h5")


def test_a_new_session_gets_the_usual_file_mode(small_obs, tmp_path):
    umask = os.umask(0o022)
    try:
        path = tmp_path / "mode.h5"
        small_obs.save(path)
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o600)
        small_obs.save(path)  # replacing a file keeps its mode
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)
