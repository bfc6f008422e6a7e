"""The psf extraction method: the exomiri contract, its registration, and the science.

Run from the repository root or from this plugin's folder, with the plugin
installed (``pip install ./plugins/exomiri-psf-extraction``).
"""

from importlib import metadata

import numpy as np
import pytest

import exomiri
from exomiri import InputError

psf = pytest.importorskip(
    "exomiri_psf_extraction",
    reason="install the plugin: python -m pip install ./plugins/exomiri-psf-extraction",
)
evaluation = pytest.importorskip("exomiri_psf_extraction.evaluation")


@pytest.fixture(scope="module")
def jittery():
    """100 integrations with 0.12 px rms pointing jitter, background subtracted (seed 3)."""
    obs = exomiri.simulate(nints=100, seed=3, jitter=0.12)
    return obs.wavelength_map().subtract_background(method="col_wise")


@pytest.fixture(scope="module")
def extracted(jittery):
    return {
        "optimal": jittery.extract(method="optimal"),
        "psf": jittery.extract(method="psf"),
        "psf, refine=False": jittery.extract(method="psf", refine=False),
    }


def test_contract(exomiri_check):
    exomiri_check(psf.PSFExtraction)
    exomiri_check(psf.PSFExtraction, fit_width=False, refine=False, variance="err")


def test_registered_through_the_entry_point():
    info = exomiri.methods("extraction")["psf"]
    assert info.cls is psf.PSFExtraction
    assert (info.distribution, info.version) == (
        "exomiri-psf-extraction",
        metadata.version("exomiri-psf-extraction"),
    )


def test_light_curves_as_good_as_optimal_and_at_the_photon_noise(jittery, extracted):
    truth = jittery.truth
    scatter = {name: evaluation.binned_scatter(out)[0] for name, out in extracted.items()}
    ratio = scatter["psf"] / scatter["optimal"]
    assert np.all(ratio < 1.05) and ratio.mean() < 1.0
    # per row: the detrended flux scatter against the best possible error of the simulation
    out = extracted["psf"]
    bright = np.isfinite(truth.wavelength) & (truth.spectrum > 0.01 * truth.spectrum.max())
    rows = evaluation.row_scatter(out)[bright]
    assert np.median(rows / truth.noise_floor[bright]) < 1.05
    assert 0.93 < np.median(np.median(out.spectra.flux_err, axis=0)[bright] / rows) < 1.07


def test_learning_the_undersampled_psf_matters_at_short_wavelengths(extracted):
    refined = evaluation.binned_scatter(extracted["psf"])[0]
    plain = evaluation.binned_scatter(extracted["psf, refine=False"])[0]
    assert plain[0] > 1.2 * refined[0]  # 5.0-5.5 micron, PSF sigma ~0.8 px
    assert np.all(plain[4:] / refined[4:] > 0.95)  # longer wavelengths: well sampled anyway


def test_trace_position_and_width_follow_the_pointing(extracted):
    psf_error = evaluation.position_error(extracted["psf"])
    assert psf_error < 0.002
    assert psf_error < 0.3 * evaluation.position_error(extracted["optimal"])
    sigma = extracted["psf"].spectra.trace_sigma
    assert np.std(sigma) < 0.002 * np.mean(sigma)  # the simulated PSF does not change width


def test_read_noise_estimated_from_err_when_the_frames_carry_none(jittery, extracted):
    out = jittery.replace(var_rnoise=None).extract(method="psf")
    reference = extracted["psf"].spectra
    bright = jittery.truth.spectrum > 0.01 * jittery.truth.spectrum.max()
    ratio = out.spectra.flux_err[:, bright] / reference.flux_err[:, bright]
    assert abs(np.median(ratio) - 1) < 0.01
    np.testing.assert_allclose(out.spectra.flux[:, bright], reference.flux[:, bright], rtol=1e-3)


def test_provenance(extracted):
    record = extracted["psf"].history[-1]
    assert (record.step, record.method, record.provider) == ("extract", "psf", "exomiri-psf-extraction")
    assert record.parameters["half_width"] == 8 and record.parameters["refine"] is True


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"half_width": 1}, r"half_width must be >= 2; got 1"),
        ({"half_width": 40}, r"PSF window .* reaches beyond the frame's columns 0\.\.71"),
        ({"variance": "rms"}, r"variance must be 'model' or 'err'; got 'rms'"),
        ({"fit_width": "yes"}, r"fit_width must be True or False"),
        ({"gain": 0}, r"gain must be >= 1e-06"),
    ],
)
def test_bad_parameters_name_the_argument(params, message):
    obs = exomiri.simulate(nints=3, seed=1).wavelength_map()
    with pytest.raises(InputError, match=message):
        obs.extract(method="psf", **params)
