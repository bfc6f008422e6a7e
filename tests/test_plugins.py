"""The plugin host, exercised with real entry points of distributions made on the fly."""

import importlib
import textwrap
import warnings

import numpy as np
import pytest

import exomiri
from exomiri import DuplicateMethodError, InputError, PluginWarning, UnknownMethodError, plugins
from exomiri.products import BackgroundModel

FLAT = """
import numpy as np
from exomiri import hookimpl
from exomiri.products import BackgroundModel


class Flat:
    name = "{name}"
    description = "a constant level given by the user"

    def estimate(self, frames, *, level=0.0):
        nints, _, ncols = frames.data.shape
        return BackgroundModel(
            basis=np.ones((ncols, 1)),
            coeffs=np.full((nints, 1, 1), float(level)),
            cov=np.zeros((nints, 1, 1, 1)),
        )


@hookimpl
def exomiri_register_background_methods(register):
    register(Flat)
"""


def make_distribution(root, dist, version, module, source, entry_name=None):
    """Install a tiny distribution (module + dist-info with an [exomiri] entry point) under root."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[exomiri]\n{entry_name or module} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch, fresh_plugins):
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return tmp_path


def test_builtins_register_through_the_hooks(fresh_plugins):
    background = exomiri.methods("background")
    assert {"constant", "row_wise", "col_wise", "polynomial"} <= set(background)
    assert {"box", "optimal"} <= set(exomiri.methods("extraction"))
    info = background["row_wise"]
    assert info.distribution == "exomiri" and info.version == exomiri.__version__
    assert info.plugin == "exomiri.builtin.background"
    assert info.description
    assert exomiri.methods("extraction")["box"].parameters["aperture_left_width"] == 4
    with pytest.raises(InputError, match="Unknown method kind"):
        exomiri.methods("spectra")


def test_third_party_method_is_listed_used_and_recorded(site, small_obs):
    make_distribution(site, "exomiri-flat", "1.2.0", "exomiri_flat", FLAT.format(name="flat"))
    info = exomiri.methods("background")["flat"]
    assert (info.distribution, info.version) == ("exomiri-flat", "1.2.0")
    assert info.parameters == {"level": 0.0}
    out = small_obs.subtract_background(method="flat", level=5.0)
    np.testing.assert_allclose(out.data[:, 50, 40], small_obs.data[:, 50, 40] - 5.0, rtol=1e-6)
    record = out.history[-1]
    assert (record.method, record.provider, record.provider_version) == ("flat", "exomiri-flat", "1.2.0")
    assert record.parameters["level"] == 5.0
    listed = {p["name"]: p for p in exomiri.list_plugins()}
    assert listed["exomiri_flat"]["methods"]["background"] == ["flat"]
    assert listed["exomiri_flat"]["hooks"] == ["exomiri_register_background_methods"]
    assert listed["exomiri.builtin.extraction"]["methods"]["extraction"] == ["box", "optimal"]


def test_import_error_is_a_warning_naming_the_distribution(site):
    make_distribution(site, "exomiri-broken", "0.1", "exomiri_broken", "import no_such_module\n")
    with pytest.warns(PluginWarning, match=r"exomiri-broken==0.1 failed to load \(ModuleNotFoundError"):
        found = exomiri.methods("background")
    assert "row_wise" in found


def test_hook_typo_is_a_warning(site):
    source = FLAT.format(name="typo").replace(
        "def exomiri_register_background_methods", "def exomiri_register_backgrund_methods"
    )
    make_distribution(site, "exomiri-typo", "0.2", "exomiri_typo", source)
    with pytest.warns(PluginWarning, match=r"exomiri-typo==0.2 implements unknown hook.*backgrund"):
        found = exomiri.methods("background")
    assert "typo" not in found and "row_wise" in found


def test_duplicate_names_name_both_distributions(site, small_obs):
    make_distribution(site, "exomiri-dup", "3.0", "exomiri_dup", FLAT.format(name="row_wise"))
    with pytest.warns(PluginWarning, match=r"exomiri==.* and exomiri-dup==3.0"):
        exomiri.methods("background")
    with pytest.raises(DuplicateMethodError, match=r"exomiri==.* and exomiri-dup==3.0"):
        small_obs.subtract_background(method="row_wise")
    # everything else keeps working
    small_obs.subtract_background(method="constant")


def test_disable_and_allow_lists(site, monkeypatch):
    make_distribution(site, "exomiri-flat", "1.0", "exomiri_flat", FLAT.format(name="flat"))
    monkeypatch.setenv("EXOMIRI_DISABLED_PLUGINS", "exomiri-flat")
    assert "flat" not in exomiri.methods("background")
    plugins.reset()
    monkeypatch.delenv("EXOMIRI_DISABLED_PLUGINS")
    monkeypatch.setenv("EXOMIRI_LOAD_PLUGINS", "something-else")
    found = exomiri.methods("background")
    assert "flat" not in found and "row_wise" in found  # built-ins always load
    plugins.reset()
    monkeypatch.setenv("EXOMIRI_LOAD_PLUGINS", "exomiri_flat")
    assert "flat" in exomiri.methods("background")


def test_method_errors_are_helpful(small_obs, fresh_plugins):
    with pytest.raises(UnknownMethodError, match="Known background methods: col_wise, constant"):
        small_obs.subtract_background(method="rowwise")
    with pytest.raises(InputError, match=r"no parameter\(s\) smoothing.*Its parameters are"):
        small_obs.subtract_background(method="row_wise", smoothing=3)


def test_a_class_can_be_passed_directly(small_obs, fresh_plugins):
    class Half:
        name = "half"
        description = "half the data"

        def estimate(self, frames, *, fraction=0.5):
            nints, nrows, ncols = frames.data.shape
            level = np.nanmedian(frames.data[:, :, frames.region], axis=2, keepdims=True) * fraction
            return BackgroundModel(np.ones((ncols, 1)), level, np.zeros((nints, nrows, 1, 1)))

    out = small_obs.subtract_background(method=Half, fraction=0.0)
    np.testing.assert_array_equal(out.data, small_obs.data)
    assert out.history[-1].method == "half"


def test_kwargs_in_a_method_is_rejected_with_a_warning(site):
    source = FLAT.format(name="loose").replace("*, level=0.0", "**params")
    make_distribution(site, "exomiri-loose", "0.3", "exomiri_loose", source)
    with pytest.warns(PluginWarning, match=r"exomiri-loose==0.3.*keyword-only"):
        found = exomiri.methods("background")
    assert "loose" not in found


def test_loading_happens_once(fresh_plugins):
    first = plugins.get_plugin_manager()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plugins.get_plugin_manager() is first
