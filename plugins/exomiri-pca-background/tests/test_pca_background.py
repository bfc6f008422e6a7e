"""The pca background method: the exomiri contract, its registration, and the science.

Run from the repository root or from this plugin's folder, with the plugin
installed (``pip install ./plugins/exomiri-pca-background``).
"""

from importlib import metadata

import numpy as np
import pytest

import exomiri
from exomiri import InputError

pca = pytest.importorskip(
    "exomiri_pca_background",
    reason="install the plugin: python -m pip install ./plugins/exomiri-pca-background",
)
scene = pytest.importorskip("exomiri_pca_background.scene")


@pytest.fixture(scope="module")
def glow():
    """100 integrations whose background has a glow changing with time (seed 2)."""
    return scene.variable_background_scene(100, seed=2)


@pytest.fixture(scope="module")
def results(glow):
    obs, _ = glow
    return {m: obs.subtract_background(method=m) for m in ("row_wise", "col_wise", "pca")}


def time_variable_z(out, true):
    """Std of the time-variable part of the error on the trace columns, in units of the
    method's own error estimate (1 when the covariance is honest and nothing is missed)."""
    rows = np.isfinite(out.truth.wavelength)
    error = out.background.evaluate()[:, rows, scene.TRACE_COLUMNS]
    error = error - true[:, rows, scene.TRACE_COLUMNS]
    sigma = np.sqrt(out.background.variance()[:, rows, scene.TRACE_COLUMNS])
    return float(np.std((error - error.mean(axis=0)) / sigma))


def test_contract(exomiri_check):
    exomiri_check(pca.PCABackground)
    exomiri_check(pca.PCABackground, n_components=1, row_block=4, carry_static=True)


def test_registered_through_the_entry_point():
    info = exomiri.methods("background")["pca"]
    assert info.cls is pca.PCABackground
    assert info.distribution == "exomiri-pca-background"
    assert info.version == metadata.version("exomiri-pca-background")
    assert info.parameters["n_components"] is None


def test_pca_beats_row_wise_and_col_wise_on_a_changing_glow(glow, results):
    _, true = glow
    rms = {m: scene.residual_rms(out, true) for m, out in results.items()}
    assert results["pca"].background.basis.shape == (72, 3)  # one pattern found
    assert rms["pca"]["pixel"] < 0.75 * rms["row_wise"]["pixel"]
    assert rms["pca"]["pixel"] < rms["col_wise"]["pixel"]
    # what reaches a white light curve: the glow's changes, mostly removed
    assert rms["pca"]["white"] < 0.4 * rms["col_wise"]["white"]
    assert rms["col_wise"]["white"] < rms["row_wise"]["white"]
    # the changes left over stay close to pca's own error estimate; not so for the others
    assert time_variable_z(results["pca"], true) < 1.6
    assert time_variable_z(results["col_wise"], true) > 3


def test_carrying_the_static_part_removes_the_mean_glow_too(glow, results):
    obs, true = glow
    carried = obs.subtract_background(method="pca", carry_static=True)
    assert scene.residual_rms(carried, true)["pixel"] < 0.6 * scene.residual_rms(
        results["pca"], true
    )["pixel"]


def test_without_a_pattern_pca_is_a_clipped_line_with_an_honest_covariance():
    obs = exomiri.simulate(nints=60, seed=8)
    out = obs.subtract_background(method="pca")
    assert out.background.basis.shape == (72, 2)
    assert 0.9 < time_variable_z(out, obs.truth.background_cube()) < 1.1


def test_provenance_and_session(glow, results, tmp_path):
    record = results["pca"].history[-1]
    assert (record.method, record.provider) == ("pca", "exomiri-pca-background")
    assert record.provider_version == metadata.version("exomiri-pca-background")
    assert record.parameters["row_block"] == 16
    loaded = exomiri.load(results["pca"].save(tmp_path / "pca.h5"))
    np.testing.assert_array_equal(loaded.background.basis, results["pca"].background.basis)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_components": 0}, r"n_components must be an integer >= 1; got 0"),
        ({"row_block": 2.5}, r"row_block must be an integer >= 1; got 2\.5"),
        ({"sigma_clip": -1}, r"sigma_clip must be a positive number"),
        ({"max_iterations": -1}, r"max_iterations must be an integer >= 0"),
        ({"carry_static": "yes"}, r"carry_static must be True or False"),
        ({"n_components": 3, "regions": [(8, 13)]}, r"needs at least 6 background columns"),
    ],
)
def test_bad_parameters_name_the_argument(params, message):
    obs = exomiri.simulate(nints=4, seed=1)
    with pytest.raises(InputError, match=message):
        obs.subtract_background(method="pca", **params)
