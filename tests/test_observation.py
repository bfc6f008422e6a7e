"""LRSObservation: immutable, shares unchanged arrays, clear step-order errors."""

import numpy as np
import pytest

import exomiri
from exomiri import InputError, StepOrderError
from exomiri.provenance import StepRecord


def test_arrays_are_read_only(small_obs):
    for name in ("data", "err", "dq", "int_times", "var_poisson"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(small_obs, name)[0, ...] = 0
    with pytest.raises(AttributeError):
        small_obs.data = None


def test_caller_arrays_stay_writeable():
    data = np.ones((2, 10, 8), np.float32)
    times = exomiri.simulate(nints=2, seed=0).int_times.copy()
    obs = exomiri.LRSObservation(
        data=data, err=data.copy(), dq=np.zeros(data.shape, np.uint32), int_times=times,
        meta=exomiri.simulate(nints=2, seed=0).meta,
    )
    assert data.flags.writeable
    assert not obs.data.flags.writeable
    assert np.shares_memory(obs.data, data)


def test_verbs_return_new_observations_and_share_unchanged_arrays(small_obs):
    mapped = small_obs.wavelength_map()
    assert mapped is not small_obs
    assert small_obs.wavelength is None and small_obs.history == ()
    assert np.shares_memory(mapped.data, small_obs.data)
    assert np.shares_memory(mapped.err, small_obs.err)
    assert [r.step for r in mapped.history] == ["wavelength_map"]


def test_pipe_and_replace(small_obs):
    def add_record(obs, name):
        return obs.replace(StepRecord.create(name))

    out = small_obs.pipe(add_record, "custom")
    assert out.steps_done == ["custom"]
    assert small_obs.steps_done == []


def test_shape_mismatch_is_refused(small_obs):
    with pytest.raises(InputError, match="err has shape"):
        small_obs.replace(err=small_obs.err[:, :10])
    with pytest.raises(InputError, match="int_times"):
        small_obs.replace(int_times=small_obs.int_times[:3])


def test_step_order_errors_name_the_call(small_obs):
    with pytest.raises(StepOrderError, match=r"obs.wavelength_map\(\)"):
        small_obs.extract()
    with pytest.raises(StepOrderError, match=r"obs.extract\(\)"):
        small_obs.align()


def test_repr_and_html(small_obs):
    text = repr(small_obs.wavelength_map())
    assert "SIM-1 b" in text and "40 integrations x 416 rows x 72 cols" in text
    assert "wavelength_map" in text and "MiB" in text
    page = small_obs.wavelength_map()._repr_html_()
    assert "<table>" in page and "wavelength_map" in page and "SIM-1 b" in page


def test_nbytes_counts_shared_arrays_once(small_obs):
    mapped = small_obs.wavelength_map()
    extra = mapped.wavelength.nbytes + mapped.trace.nbytes
    assert mapped.nbytes == small_obs.nbytes + extra
