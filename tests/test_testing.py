"""exomiri.testing: the contract passes for every built-in and catches each kind of breach."""

import numpy as np
import pytest

from exomiri.builtin.background import ColWise, Constant, Polynomial, RowWise
from exomiri.builtin.extraction import Box, Optimal
from exomiri.products import BackgroundModel
from exomiri.testing import (
    ContractError,
    check_background_method,
    check_extraction_method,
    check_method,
    contract_observation,
)


@pytest.mark.parametrize("method", [Constant, RowWise, ColWise, Polynomial, Box, Optimal])
def test_builtins_keep_the_contract(method, tmp_path):
    out = check_method(method, session_dir=tmp_path)
    assert out.history[-1].method == method.name
    assert (tmp_path / "contract_session.h5").exists()


def test_the_fixture_comes_from_the_pytest11_entry_point(exomiri_check, request):
    out = exomiri_check(Polynomial, order=1)
    assert out.history[-1].parameters["order"] == 1
    plugin = request.config.pluginmanager.get_plugin("exomiri")
    assert plugin is not None and plugin.__name__ == "exomiri.testing"


def test_contract_observation_is_small_clean_and_shared():
    obs = contract_observation()
    assert obs.nints == 16 and obs.wavelength is not None
    assert np.all(obs.truth.depth == 0)
    assert contract_observation() is obs


class Level:
    """A constant background: the median of the region, times ``factor``."""

    name = "level"
    description = "median of the region pixels of each row"

    def estimate(self, frames, *, factor=1.0):
        ncols = frames.data.shape[2]
        region = np.where(frames.mask, np.nan, frames.data)[:, :, frames.region]
        level = np.nanmedian(region, axis=2)[:, :, None] * factor
        return BackgroundModel(np.ones((ncols, 1)), level, np.full((*level.shape, 1), 0.01))


def test_a_correct_method_passes():
    check_background_method(Level)


def test_a_background_in_dn_is_caught():
    effinttm = contract_observation().meta.effinttm
    with pytest.raises(ContractError, match=r"background in the region is 6\.\d+ times"):
        check_background_method(Level, params={"factor": effinttm})


def test_writing_into_the_input_is_caught():
    class Scribbler(Level):
        def estimate(self, frames, *, factor=1.0):
            if frames.data.flags.writeable:  # the host passes read-only arrays
                frames.data[0, 0, 0] = 0.0
            return super().estimate(frames, factor=factor)

    with pytest.raises(ContractError, match=r"modified its input frames\.data"):
        check_background_method(Scribbler)


def test_writing_into_a_read_only_input_fails_through_the_host():
    class Scribbler(Level):
        def estimate(self, frames, *, factor=1.0):
            frames.err[...] = 1.0
            return super().estimate(frames, factor=factor)

    with pytest.raises(ContractError, match=r"failed on the contract observation.*read-only"):
        check_background_method(Scribbler)


def test_randomness_is_caught():
    class Noisy(Level):
        def estimate(self, frames, *, factor=1.0):
            model = super().estimate(frames, factor=factor)
            jitter = np.random.default_rng().normal(0, 1e-6, model.coeffs.shape)
            return BackgroundModel(model.basis, model.coeffs + jitter, model.cov)

    with pytest.raises(ContractError, match="not deterministic"):
        check_background_method(Noisy)


@pytest.mark.parametrize(
    ("default", "shown"),
    [(object(), "object object"), (np.ones(20), "array"), (complex(1, 2), r"\(1\+2j\)")],
)
def test_parameters_that_json_cannot_hold_are_caught(default, shown):
    class Odd(Level):
        def estimate(self, frames, *, factor=1.0, extra=default):
            return super().estimate(frames, factor=factor)

    with pytest.raises(ContractError, match=rf"(?s)parameter extra=.*not recorded exactly.*{shown}"):
        check_background_method(Odd)


def test_a_bad_covariance_is_caught():
    class Negative(Level):
        def estimate(self, frames, *, factor=1.0):
            model = super().estimate(frames, factor=factor)
            return BackgroundModel(model.basis, model.coeffs, -model.cov)

    with pytest.raises(ContractError, match="negative variances"):
        check_background_method(Negative)


def test_an_invalid_class_is_caught():
    class Loose:
        name = "loose"
        description = "takes anything"

        def estimate(self, frames, **params):
            return None

    with pytest.raises(ContractError, match=r"not a valid background method.*keyword-only"):
        check_background_method(Loose)
    with pytest.raises(ContractError, match="neither estimate"):
        check_method(object)


class Scaled(Optimal):
    """Optimal extraction with its flux and errors multiplied."""

    name = "scaled"
    description = "optimal extraction, scaled"

    def extract(self, frames, *, flux_factor=1.0, err_factor=1.0, scalar_position=False):
        result = super().extract(frames)
        position = float(np.nanmedian(result.trace_position)) if scalar_position else None
        return type(result)(
            result.flux * flux_factor,
            result.flux_err * err_factor,
            result.trace_position if position is None else position,
            result.trace_sigma,
            result.n_rejected,
        )


def test_extraction_checks_pass_and_catch_units_errors_and_shapes():
    check_extraction_method(Scaled)
    gain = 3.1
    with pytest.raises(ContractError, match=r"the flux is 3\.\d+ times the sum"):
        check_extraction_method(Scaled, params={"flux_factor": gain, "err_factor": gain})
    with pytest.raises(ContractError, match=r"flux_err is [45]\.\d+ times the scatter"):
        check_extraction_method(Scaled, params={"err_factor": 5.0})
    with pytest.raises(ContractError, match=r"trace_position is float64 of shape \(\)"):
        check_extraction_method(Scaled, params={"scalar_position": True})
