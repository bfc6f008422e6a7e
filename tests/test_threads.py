"""Steps that split their work over threads give the same results with any number of them."""

from __future__ import annotations

import numpy as np
import pytest

import exomiri
from exomiri.steps import _pool

CLEAN = {"dq_bits_to_mask": [0, 11], "window_heights": [40], "poly_order": 4, "outlier_threshold": 5.0}


def every_array(obs) -> dict[str, np.ndarray]:
    """The observation's cubes and the arrays of its products, by name."""
    out = {name: np.asarray(getattr(obs, name)) for name in ("data", "err", "dq", "profile")}
    for name in ("background", "spectra", "shifts"):
        product = getattr(obs, name)
        if product is not None:
            out.update({f"{name}.{key}": value for key, value in product.arrays().items()})
    return out


def chain(obs, background: dict, extract: dict):
    return (
        obs.wavelength_map()
        .clean(**CLEAN)
        .subtract_background(**background)
        .clean(**CLEAN)
        .extract(**extract)
        .align()
    )


@pytest.fixture(scope="module")
def obs():
    # more integrations than one block of every threaded kernel holds (16-32), in several blocks
    return exomiri.simulate(nints=75, seed=4)


@pytest.mark.parametrize(
    ("background", "extract"),
    [
        ({"method": "col_wise"}, {"method": "optimal"}),
        ({"method": "polynomial", "order": 2, "weighted": True}, {"method": "box"}),
        ({"method": "row_wise", "smoothing_length": 5}, {"method": "optimal", "variance": "err"}),
    ],
)
def test_the_chain_does_not_depend_on_the_number_of_threads(monkeypatch, obs, background, extract):
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(_pool, "default_threads", lambda threads=threads: threads)
        results.append(every_array(chain(obs, background, extract)))
    one = results[0]
    assert np.isfinite(one["spectra.flux"]).mean() > 0.9  # a real reduction, not NaN throughout
    for other in results[1:]:
        assert other.keys() == one.keys()
        for name in one:
            np.testing.assert_array_equal(other[name], one[name], err_msg=name)


def test_thread_map_keeps_order_and_raises_the_first_error():
    assert _pool.thread_map(lambda x: x * x, range(10), n_threads=3) == [x * x for x in range(10)]
    assert _pool.spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert _pool.spans(0, 4) == []

    def fail(x):
        if x == 2:
            raise ValueError("block 2")
        return x

    with pytest.raises(ValueError, match="block 2"):
        _pool.thread_map(fail, range(5), n_threads=2)


def test_omp_num_threads_caps_the_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    free = _pool.default_threads()
    assert 1 <= free <= 8
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Dask gives its worker processes
    assert _pool.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    assert _pool.default_threads() == free
    for ignored in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        assert _pool.default_threads() == free
