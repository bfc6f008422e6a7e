"""Chunked reduction: lazy segment reading, incremental sessions, chunk-wise chain, Dask."""

from __future__ import annotations

import os

import numpy as np
import pytest

import exomiri
from exomiri.chain import DEFAULT_CHAIN
from exomiri.io.hdf5 import SessionWriter, save
from exomiri.io.lazy import SegmentReader

CUBES = ("data", "err", "dq", "var_poisson", "var_rnoise", "profile", "outlier_counts")
BOX_CHAIN = [s if s[0] != "extract" else ("extract", {"method": "box"}) for s in DEFAULT_CHAIN]


@pytest.fixture(scope="module")
def sim():
    return exomiri.simulate(nints=17, seed=11)


@pytest.fixture(scope="module")
def segments(sim, tmp_path_factory):
    folder = tmp_path_factory.mktemp("segments")
    return sim.write(str(folder / "sim"), segments=3)


def run(obs, steps):
    for verb, params in steps:
        obs = getattr(obs, verb)(**params)
    return obs


@pytest.fixture(scope="module")
def box_reference(sim):
    return run(sim, BOX_CHAIN)


def assert_same_cubes(a, b):
    for name in CUBES:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)


def assert_same_products(a, b):
    # Background fits go through BLAS products whose rounding depends on how
    # many rows are fitted together: equal to float64 rounding, not bit for bit.
    for key, value in a.background.arrays().items():
        np.testing.assert_allclose(getattr(b.background, key), value, rtol=1e-12, atol=1e-12)
    for key, value in a.spectra.arrays().items():
        np.testing.assert_array_equal(getattr(b.spectra, key), value, err_msg=key)
    # align weights the x profiles by their variance, which the chunked run hands
    # over as its square root: equal to float64 rounding.
    for key, value in a.shifts.arrays().items():
        np.testing.assert_allclose(getattr(b.shifts, key), value, rtol=1e-10, atol=1e-12)
    assert [r.step for r in a.history] == [r.step for r in b.history]
    assert [r.parameters for r in a.history] == [r.parameters for r in b.history]


# --------------------------------------------------------------------------- lazy reading


def test_reader_ranges_across_segments_equal_open(sim, segments):
    full = exomiri.open(segments)
    reader = SegmentReader(segments)
    assert reader.nints == 17 and reader.shape == sim.shape and reader.meta == full.meta
    for start, stop in [(0, 17), (4, 13), (5, 6), (16, 17)]:
        part = reader.read(start, stop)
        for name in ("data", "err", "dq", "var_poisson", "var_rnoise"):
            value = getattr(part, name)
            assert value.dtype == getattr(full, name).dtype
            np.testing.assert_array_equal(value, getattr(full, name)[start:stop])
        np.testing.assert_array_equal(part.int_times, full.int_times[start:stop])
    picked = reader.read_indices(np.array([0, 1, 6, 12, 16]))
    np.testing.assert_array_equal(picked.data, full.data[[0, 1, 6, 12, 16]])


@pytest.mark.parametrize(("start", "stop"), [(-1, 3), (3, 3), (10, 18)])
def test_reader_rejects_bad_ranges(segments, start, stop):
    with pytest.raises(exomiri.InputError, match=r"read\(start=.*0 <= start < stop <= 17"):
        SegmentReader(segments).read(start, stop)


def test_reader_names_the_missing_segment(segments):
    with pytest.raises(exomiri.InputError, match="missing between"):
        SegmentReader([segments[0], segments[2]])


# --------------------------------------------------------------------------- sessions


def test_session_writer_writes_what_save_writes(box_reference, tmp_path):
    obs = box_reference
    target = tmp_path / "chunked.h5"
    with SessionWriter(target, obs.nints, obs.meta) as writer:
        for start in range(0, obs.nints, 5):
            writer.append(obs[start : start + 5])
        assert not target.exists()  # the target only appears complete
        writer.finish(obs)
    loaded = exomiri.load(target)
    assert_same_cubes(obs, loaded)
    assert_same_products(obs, loaded)
    assert [r.to_json() for r in loaded.history] == [r.to_json() for r in obs.history]
    import h5py

    save(obs, tmp_path / "whole.h5")
    with h5py.File(target) as a, h5py.File(tmp_path / "whole.h5") as b:
        for name in CUBES:
            assert a["observation"][name].chunks == b["observation"][name].chunks
            assert a["observation"][name].compression == b["observation"][name].compression
    assert sorted(os.listdir(tmp_path)) == ["chunked.h5", "whole.h5"]


def test_interrupted_session_leaves_previous_file(sim, tmp_path):
    target = tmp_path / "s.h5"
    target.write_bytes(b"previous")

    def interrupted():
        with SessionWriter(target, sim.nints, sim.meta) as writer:
            writer.append(sim[:5])
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        interrupted()
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["s.h5"]
    writer = SessionWriter(target, 3, sim.meta)
    with pytest.raises(exomiri.SessionFormatError, match="exceeds the 3 announced"):
        writer.append(sim[:5])
    writer.abort()
    assert os.listdir(tmp_path) == ["s.h5"]


# --------------------------------------------------------------------------- chunked chain


def test_chunked_box_chain_equals_in_memory(sim, box_reference):
    result = exomiri.reduce(sim, chunks=5, steps=BOX_CHAIN)
    assert isinstance(result, exomiri.LRSObservation)
    assert_same_cubes(box_reference, result)
    assert_same_products(box_reference, result)
    assert result.truth is sim.truth


def test_chunked_files_to_session_equal_in_memory(segments, tmp_path):
    reference = run(exomiri.open(segments), BOX_CHAIN)
    result = exomiri.reduce(segments, out=tmp_path / "s.h5", chunks=4, steps=BOX_CHAIN)
    assert isinstance(result, exomiri.Reduction)
    assert result.nints == 17 and result.steps_done == reference.steps_done
    np.testing.assert_array_equal(result.spectra.flux, reference.spectra.flux)
    loaded = result.load()
    assert_same_cubes(reference, loaded)
    assert_same_products(reference, loaded)
    curves = result.light_curves()
    np.testing.assert_allclose(curves["flux"], reference.light_curves()["flux"], rtol=0)
    assert sorted(os.listdir(tmp_path)) == ["s.h5"]


def test_chunked_documented_chain_matches_in_memory(sim):
    """Optimal extraction fits its jitter correction per chunk: everything but the
    optimal spectra (and the y shifts measured from them) is identical, and the
    spectra agree to a small fraction of their errors."""
    reference = run(sim, DEFAULT_CHAIN)
    result = exomiri.reduce(sim, chunks=9)
    assert_same_cubes(reference, result)
    np.testing.assert_allclose(result.shifts.x, reference.shifts.x, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(result.spectra.wavelength, reference.spectra.wavelength)
    good = reference.spectra.quality == 0
    pull = np.abs(result.spectra.flux - reference.spectra.flux)[:, good] / reference.spectra.flux_err[
        :, good
    ]
    assert np.median(pull) < 0.05
    assert np.mean(pull > 1) < 0.01
    # the flux itself is right: within errors of the injected spectrum's scale
    assert np.nanmedian(np.abs(result.spectra.flux / reference.spectra.flux - 1)[:, good]) < 1e-3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunks": 0}, r"chunks=0\) must be a positive integer"),
        ({"steps": ["align", "extract"]}, "align must be the last step"),
        ({"steps": ["smooth"]}, "'smooth' is not a verb"),
        ({"steps": "clean"}, "is not a list of steps"),
        ({"executor": "spark"}, "executor='spark'"),
        ({"steps": [("clean", {"poly_order": -1})]}, "poly_order"),
    ],
)
def test_reduce_rejects_bad_arguments(sim, kwargs, message):
    with pytest.raises(exomiri.InputError, match=message):
        exomiri.reduce(sim[:3], **kwargs)


# --------------------------------------------------------------------------- Dask


@pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning")
def test_dask_on_a_local_cluster_equals_in_memory(sim, box_reference, segments, tmp_path):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        from_memory = exomiri.reduce(sim, chunks=6, steps=BOX_CHAIN, executor="dask")
    # worker processes, as on a cluster: every task and its result travel pickled
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        from_files = exomiri.reduce(
            segments, out=tmp_path / "d.h5", chunks=6, steps=BOX_CHAIN, executor="dask"
        )
    assert_same_cubes(box_reference, from_memory)
    assert_same_products(box_reference, from_memory)
    loaded = from_files.load()
    assert_same_cubes(box_reference, loaded)
    np.testing.assert_array_equal(loaded.spectra.flux, box_reference.spectra.flux)


def test_dask_and_serial_chunks_give_the_same_documented_chain(sim):
    """Whatever runs the chunks, the results are the same, optimal spectra included."""
    pytest.importorskip("dask")
    serial = exomiri.reduce(sim, chunks=9)
    on_dask = exomiri.reduce(sim, chunks=9, executor="dask")  # Dask's default (threaded) scheduler
    assert_same_cubes(serial, on_dask)
    assert_same_products(serial, on_dask)
