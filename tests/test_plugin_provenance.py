"""Sessions made with a plugin method, loaded where the plugin is missing or disabled."""

import importlib
import warnings

import numpy as np
import pytest
from test_plugins import FLAT, make_distribution

import exomiri
from exomiri import UnknownMethodError, plugins
from exomiri.products import BackgroundModel


@pytest.fixture
def flat_session(tmp_path, monkeypatch, fresh_plugins, small_obs):
    """A session whose background came from the throw-away distribution exomiri-flat 1.2.0,
    which is uninstalled (taken off sys.path) once the session is saved."""
    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, "exomiri-flat", "1.2.0", "exomiri_flat", FLAT.format(name="flat"))
    with monkeypatch.context() as patch:
        patch.syspath_prepend(str(site))
        importlib.invalidate_caches()
        out = small_obs.subtract_background(method="flat", level=2.0)
        path = out.save(tmp_path / "flat.h5")
    importlib.invalidate_caches()
    plugins.reset()
    return out, path, site


def test_missing_plugin_session_loads_silently_and_names_the_distribution(flat_session):
    out, path, _ = flat_session
    assert "flat" not in exomiri.methods("background")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = exomiri.load(path)
    record = loaded.history[-1]
    assert (record.method, record.provider, record.provider_version) == (
        "flat",
        "exomiri-flat",
        "1.2.0",
    )
    for name, value in out.background.arrays().items():
        np.testing.assert_array_equal(getattr(loaded.background, name), value)
    np.testing.assert_array_equal(loaded.data, out.data)
    with pytest.raises(
        UnknownMethodError,
        match=r"'flat' is not installed\. This observation's history records it from "
        r"exomiri-flat==1\.2\.0; install that with: python -m pip install 'exomiri-flat==1\.2\.0'",
    ):
        loaded.subtract_background(method="flat")
    # other methods keep working on the loaded session
    loaded.subtract_background(method="row_wise")


def test_disabled_plugin_is_reported_as_installed_but_not_loaded(flat_session, monkeypatch):
    _, path, site = flat_session
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("EXOMIRI_DISABLED_PLUGINS", "exomiri-flat")
    importlib.invalidate_caches()
    plugins.reset()
    loaded = exomiri.load(path)
    with pytest.raises(
        UnknownMethodError,
        match=r"'flat' is not loaded, although exomiri-flat==1\.2\.0 is installed.*"
        r"EXOMIRI_DISABLED_PLUGINS",
    ):
        loaded.subtract_background(method="flat")


def test_a_method_class_recorded_from_local_code(small_obs, fresh_plugins):
    class Half:
        name = "half"
        description = "half the median of the region"

        def estimate(self, frames, *, fraction=0.5):
            nints, nrows, ncols = frames.data.shape
            level = np.nanmedian(frames.data[:, :, frames.region], axis=2, keepdims=True)
            return BackgroundModel(
                np.ones((ncols, 1)), level * fraction, np.zeros((nints, nrows, 1, 1))
            )

    out = small_obs.subtract_background(method=Half)
    assert out.history[-1].provider == "local"
    with pytest.raises(UnknownMethodError, match=r"class passed directly.*method=TheClass"):
        out.subtract_background(method="half")
    with pytest.raises(UnknownMethodError, match="or check the spelling"):
        out.subtract_background(method="halves")
