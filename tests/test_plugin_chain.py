"""The chain with the example plugins, installed for real, selected by name: ``pca`` and ``psf``.

CI installs both distributions from ``plugins/`` with pip (the README's test
command); these tests fail, saying how to install them, where they are not.
"""

import warnings
from importlib import metadata

import numpy as np
import pytest

import exomiri
from exomiri import UnknownMethodError, plugins
from exomiri.lightcurves import fit_depth

CLEAN = {"dq_bits_to_mask": [0, 11], "window_heights": [40], "poly_order": 4, "outlier_threshold": 5.0}
PLUGINS = {
    "pca": ("background", "exomiri-pca-background", "pca_background"),
    "psf": ("extraction", "exomiri-psf-extraction", "psf_extraction"),
}


def version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        pytest.fail(
            f"{distribution} is not installed; install it with "
            f"python -m pip install ./plugins/{distribution} (the README's test command does)."
        )


@pytest.fixture(scope="module")
def reduced():
    obs = exomiri.simulate(nints=120, seed=21)
    return (
        obs.wavelength_map()
        .clean(**CLEAN)
        .subtract_background(method="pca")
        .clean(**CLEAN)
        .extract(method="psf")
        .align()
    )


def test_both_plugins_are_installed_through_their_entry_points(fresh_plugins):
    listed = {p["name"]: p for p in exomiri.list_plugins()}
    for method, (kind, distribution, entry_point) in PLUGINS.items():
        info = exomiri.methods(kind)[method]
        assert (info.distribution, info.version) == (distribution, version(distribution))
        assert listed[entry_point]["distribution"] == distribution
        assert listed[entry_point]["methods"][kind] == [method]
    assert listed["pca_background"]["hooks"] == ["exomiri_register_background_methods"]
    assert listed["psf_extraction"]["hooks"] == ["exomiri_register_extraction_methods"]


def test_the_chain_recovers_the_injected_transit(reduced):
    truth = reduced.truth
    spectra = reduced.spectra
    assert reduced.steps_done == [
        "wavelength_map", "clean", "subtract_background", "clean", "extract", "align"
    ]
    bright = np.isfinite(truth.wavelength) & (truth.spectrum > 0.05 * truth.spectrum.max())
    # per-row errors near the best the simulation allows
    assert 0.95 < np.median(np.median(spectra.flux_err, axis=0)[bright] / truth.noise_floor[bright]) < 1.15
    # the white light curve's depth, against the injected one (flux-weighted over the same rows)
    flux = spectra.flux[:, bright].sum(axis=1, keepdims=True)
    flux_err = np.sqrt((spectra.flux_err[:, bright] ** 2).sum(axis=1, keepdims=True))
    shifts = np.column_stack([reduced.shifts.x, reduced.shifts.y])
    depth, depth_err, _ = fit_depth(flux, flux_err, truth.transit_shape, reduced.times, regressors=shifts)
    injected = np.sum(truth.depth[bright] * truth.spectrum[bright]) / truth.spectrum[bright].sum()
    assert abs(depth[0] - injected) < 4 * depth_err[0]
    assert depth_err[0] < 0.05 * injected


def test_sessions_record_the_plugins_and_name_them_when_they_are_missing(
    reduced, tmp_path, monkeypatch, fresh_plugins
):
    records = {r.step: r for r in reduced.history}
    for step, method in (("subtract_background", "pca"), ("extract", "psf")):
        distribution = PLUGINS[method][1]
        assert (records[step].method, records[step].provider) == (method, distribution)
        assert records[step].provider_version == version(distribution)
    path = reduced.save(tmp_path / "plugins.h5")

    monkeypatch.setenv("EXOMIRI_DISABLED_PLUGINS", "exomiri-pca-background,exomiri-psf-extraction")
    plugins.reset()
    assert "pca" not in exomiri.methods("background")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = exomiri.load(path)
    for name, value in reduced.background.arrays().items():
        np.testing.assert_array_equal(getattr(loaded.background, name), value)
    np.testing.assert_array_equal(loaded.spectra.flux, reduced.spectra.flux)
    assert loaded.history == reduced.history
    for method, call in (
        ("psf", lambda: loaded.extract(method="psf")),
        ("pca", lambda: loaded.subtract_background(method="pca")),
    ):
        distribution = PLUGINS[method][1]
        with pytest.raises(
            UnknownMethodError,
            match=rf"'{method}' is not loaded, although {distribution}=={version(distribution)} "
            r"is installed.*EXOMIRI_DISABLED_PLUGINS",
        ):
            call()
    loaded.extract(method="optimal")  # the built-ins keep working
