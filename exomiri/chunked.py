"""Chunked reduction: long observations in bounded memory, serially or on Dask.

:func:`reduce` runs a chain of verbs (by default the documented one:
``wavelength_map``, ``clean``, ``subtract_background(col_wise)``, ``clean``,
``extract(optimal)``, ``align``) over chunks of consecutive integrations,
reading each chunk from the ``*_rateints.fits`` segments only when it is
needed (:class:`~exomiri.io.lazy.SegmentReader`), writing its cubes to the
session file as soon as it is done (:class:`~exomiri.io.hdf5.SessionWriter`)
and keeping only the small products (spectra, shifts, background model,
outlier counts) in memory.

Every step works integration by integration except a few time medians.
They are handled so that the result equals the in-memory chain:

* the time-median templates a chunk cannot compute alone, the spatial
  profile of optimal extraction (``median_spatial_profile=True``, the time
  median of ``clean``'s profiles) and the trace position ``clean`` places its
  outlier counts around (a fit to the time-median frame), come from a first
  pass that runs the whole chain on ``template_integrations`` integrations
  spread evenly over the observation, and are then used by every chunk.
  When the observation has no more integrations than that, the first pass
  sees all of them and the templates are exactly those of the in-memory
  chain;
* ``align`` runs once at the end, on the spectra and cross-dispersion
  profiles of all integrations, so its time-median templates are exact;
* the wavelength of each spectral row (read at the median trace position
  over all integrations) is assigned at the end, as in the in-memory chain.

Differences that remain.  Optimal extraction is not a per-integration
operation: it moves the time-median profile with each integration's jitter
and corrects it with a per-pixel polynomial in the shift fitted over all the
integrations it is given (:func:`exomiri.steps.extract.follow_jitter`), so
each chunk fits that correction to its own integrations.  On a 1000-integration
simulation in chunks of 250 the optimal spectra differ from the in-memory
chain's by 3e-5 relative (median; 0.006 sigma), with rare rows up to a few
sigma where the outlier rejection kept or dropped a pixel differently; box
extraction has no such fit and its spectra are identical.  The cubes, the
background model, the outlier counts and the cross-dispersion shifts are
identical.  Also: with more integrations than ``template_integrations`` the
two templates above are medians of a subsample; pixels that are NaN in the
align region are filled from the chunk's median frame instead of the whole
observation's; extraction without a ``clean`` after the background builds
its profile from each chunk; and each step's history record is the merge of
the chunks' records (parameters as given, durations and counts summed, other
diagnostics the median of the chunks' values).

Execution: ``executor="serial"`` (default) runs the chunks one after the
other in this process; ``executor="dask"`` makes each chunk a Dask task
(input cubes as ``dask.array`` blocks along integrations, or read by the task
itself from the segment files) computed by Dask's current scheduler, so it
runs unchanged on a ``dask.distributed`` cluster once a ``Client`` is
active.  Results are identical either way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np

from .chain import DEFAULT_CHAIN
from .exceptions import InputError
from .io import output_folder
from .io.lazy import SegmentReader
from .observation import LRSObservation, ObservationMeta
from .products import BackgroundModel, Product, Shifts, Spectra
from .provenance import StepRecord

__all__ = ["Reduction", "reduce"]

VERBS = ("wavelength_map", "clean", "subtract_background", "extract", "align")
EXECUTORS = ("serial", "dask")


# --------------------------------------------------------------------------- steps


def _normalise_steps(steps: Any) -> tuple[tuple[str, dict[str, Any]], ...]:
    hint = (
        "Give a list of verb names or (verb, parameters) pairs, e.g. "
        "steps=['wavelength_map', ('clean', {'outlier_threshold': 5.0}), 'extract']."
    )
    if steps is None:
        return DEFAULT_CHAIN
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence):
        raise InputError(f"reduce(steps={steps!r}) is not a list of steps. {hint}")
    out = []
    for step in steps:
        if isinstance(step, str):
            name, params = step, {}
        elif isinstance(step, Sequence) and len(step) == 2 and isinstance(step[1], dict):
            name, params = step[0], dict(step[1])
        else:
            raise InputError(f"reduce(steps=...): {step!r} is not a step. {hint}")
        if name not in VERBS:
            raise InputError(
                f"reduce(steps=...): {name!r} is not a verb; choose from {', '.join(VERBS)}."
            )
        out.append((name, params))
    if not out:
        raise InputError(f"reduce(steps=[]) has nothing to do. {hint}")
    names = [name for name, _ in out]
    if "align" in names and (names.index("align") != len(names) - 1 or names.count("align") > 1):
        raise InputError(
            "reduce(steps=...): align must be the last step (it runs once, on the spectra of "
            "all integrations, after every chunk is done)."
        )
    return tuple(out)


# --------------------------------------------------------------------------- chunk work


@dataclass(frozen=True, eq=False, repr=False)
class _ChunkObservation(LRSObservation):
    """An observation that places ``clean``'s outlier counts with given trace columns.

    ``trace_columns[k]`` replaces the trace of the k-th ``clean`` of the
    chain, which the in-memory chain fits to the time-median frame of all
    integrations; None falls back to the chunk's own median frame.
    """

    trace_columns: tuple[np.ndarray | None, ...] = ()

    def _trace_columns(self, data: np.ndarray) -> np.ndarray:
        k = self.steps_done.count("clean")
        if k < len(self.trace_columns) and self.trace_columns[k] is not None:
            return self.trace_columns[k]
        return super()._trace_columns(data)


_FIELDS = tuple(f.name for f in dataclasses.fields(LRSObservation))


def _plain(obs: LRSObservation) -> LRSObservation:
    return LRSObservation(**{name: getattr(obs, name) for name in _FIELDS})


@dataclass(frozen=True)
class _Plan:
    """Everything a chunk needs besides its integrations (small, picklable)."""

    steps: tuple[tuple[str, dict[str, Any]], ...]
    trace_columns: tuple[np.ndarray | None, ...] = ()
    profile_template: np.ndarray | None = None
    align_rows: tuple[int, int] | None = None
    align_columns: tuple[int, int] | None = None


@dataclass(frozen=True)
class _ChunkOutput:
    obs: LRSObservation  # the chunk after every step but align
    records: tuple[StepRecord, ...]  # the records of those steps
    align_profiles: np.ndarray | None  # (n, 2, ncols) cross-dispersion profiles, variances


def _uses_median_profile(obs: LRSObservation, params: dict[str, Any]) -> bool:
    """Whether ``obs.extract(**params)`` would use the time median of ``clean``'s profile."""
    from .plugins import get_method

    info = get_method("extraction", params.get("method", "optimal"))
    if info.distribution != "exomiri" or info.name != "optimal":
        return False
    if not params.get("median_spatial_profile", True):
        return False
    return obs.profile is not None and obs._last_index("clean") > obs._last_index(
        "subtract_background"
    )


def _run_chunk(chunk: LRSObservation, plan: _Plan) -> _ChunkOutput:
    """Run the plan's steps (align excepted) on one chunk of integrations."""
    from .steps.align import cross_dispersion_profiles, cross_dispersion_variance

    start_history = len(chunk.history)
    obs = _ChunkObservation(
        **{name: getattr(chunk, name) for name in _FIELDS}, trace_columns=plan.trace_columns
    )
    profiles = None
    for verb, params in plan.steps:
        if verb == "align":
            t0 = perf_counter()
            (r0, r1), (c0, c1) = plan.align_rows, plan.align_columns
            profiles = np.zeros((obs.nints, 2, obs.shape[2]))
            profiles[:, 0, c0:c1] = cross_dispersion_profiles(obs.data, rows=(r0, r1), columns=(c0, c1))
            # the photon-noise variance of each profile value, which align weights by
            profiles[:, 1, c0:c1] = cross_dispersion_variance(obs.err, rows=(r0, r1), columns=(c0, c1))
            duration = perf_counter() - t0
            continue
        if verb == "extract" and plan.profile_template is not None and _uses_median_profile(obs, params):
            own = obs.profile
            template = np.broadcast_to(plan.profile_template, obs.shape)
            obs = obs.replace(profile=template).extract(**params).replace(profile=own)
        else:
            obs = getattr(obs, verb)(**params)
    records = tuple(obs.history[start_history:])
    if profiles is not None:
        records += (StepRecord("align", duration_s=duration),)
    return _ChunkOutput(_plain(obs), records, profiles)


# --------------------------------------------------------------------------- sources


def _take(obs: LRSObservation, index: slice | np.ndarray) -> LRSObservation:
    """Some integrations of an in-memory observation, without a history record."""
    changes: dict[str, Any] = {}
    for name in LRSObservation.PER_INTEGRATION:
        value = getattr(obs, name)
        if value is not None:
            changes[name] = value[index]
    for name in LRSObservation.PRODUCTS:
        value = getattr(obs, name)
        if value is not None:
            changes[name] = value.take(index)
    return dataclasses.replace(obs, **changes)


def _slice(obs: LRSObservation, start: int, stop: int) -> LRSObservation:
    return _take(obs, slice(start, stop))


def _copy_first(obs: LRSObservation) -> LRSObservation:
    """The first integration of ``obs`` with its own copies of the cubes (no views)."""
    first = _slice(obs, 0, 1)
    return dataclasses.replace(
        first,
        **{name: np.array(getattr(first, name)) for name in _CUBES if getattr(first, name) is not None},
    )


class _Source:
    """Integrations of an in-memory observation or of segment files, by range."""

    def __init__(self, source: Any):
        if isinstance(source, LRSObservation):
            self.obs, self.reader = source, None
            self.nints, self.meta = source.nints, source.meta
        else:
            self.obs = None
            self.reader = source if isinstance(source, SegmentReader) else SegmentReader(source)
            self.nints, self.meta = self.reader.nints, self.reader.meta

    def read(self, start: int, stop: int) -> LRSObservation:
        if self.obs is not None:
            return _slice(self.obs, start, stop)
        return self.reader.read(start, stop)

    def sample(self, index: np.ndarray) -> LRSObservation:
        if self.obs is not None:
            return self.obs if index.size == self.nints else _take(self.obs, index)
        return self.reader.read_indices(index)

    @property
    def history(self) -> tuple[StepRecord, ...]:
        return () if self.obs is None else self.obs.history

    @property
    def truth(self) -> Product | None:
        return None if self.obs is None else self.obs.truth


# --------------------------------------------------------------------------- templates


def _make_plan(source: _Source, steps, template_integrations: int) -> tuple[_Plan, LRSObservation]:
    """Run the whole chain on a subsample; return the plan and the subsample's result.

    Running every step here also checks every parameter before the long pass.
    """
    from .steps.extract import nanmedian

    n = min(template_integrations, source.nints)
    index = np.unique(np.linspace(0, source.nints - 1, n).round().astype(np.int64))
    obs = source.sample(index)
    trace_columns: list[np.ndarray | None] = []
    profile_template = None
    align_rows = align_columns = None
    for verb, params in steps:
        if verb == "extract" and _uses_median_profile(obs, params):
            profile_template = nanmedian(np.asarray(obs.profile), axis=0)
        obs = getattr(obs, verb)(**params)
        if verb == "clean":
            trace_columns.append(LRSObservation._trace_columns(obs, obs.data))
        if verb == "align":
            align_rows = tuple(obs.history[-1].parameters["x_rows"])
            align_columns = tuple(obs.history[-1].parameters["x_columns"])
    plan = _Plan(steps, tuple(trace_columns), profile_template, align_rows, align_columns)
    return plan, obs


# --------------------------------------------------------------------------- assembling


def _merge_records(chunk_records: list[tuple[StepRecord, ...]]) -> list[StepRecord]:
    merged = []
    for records in zip(*chunk_records, strict=True):
        first = records[0]
        diagnostics: dict[str, Any] = {}
        for key, value in first.diagnostics.items():
            values = [r.diagnostics.get(key) for r in records]
            if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                diagnostics[key] = int(sum(values))
            elif all(isinstance(v, float | int) and not isinstance(v, bool) for v in values):
                diagnostics[key] = float(np.median(values))
            else:
                diagnostics[key] = value
        merged.append(
            dataclasses.replace(
                first,
                diagnostics=diagnostics,
                duration_s=round(sum(r.duration_s for r in records), 6),
            )
        )
    return merged


def _concatenate(parts: list[Product | None]) -> Product | None:
    if any(p is None for p in parts):
        return None
    return type(parts[0]).concatenate(parts)


def _spectra(skeleton: LRSObservation, parts: list[Spectra], method: Any) -> Spectra:
    """The spectra of all chunks, with wavelengths placed as the in-memory chain does."""
    from .hookspecs import ExtractionResult
    from .plugins import get_method

    joined = Spectra.concatenate(parts)
    result = ExtractionResult(
        flux=joined.flux,
        flux_err=joined.flux_err,
        trace_position=joined.trace_position,
        trace_sigma=joined.trace_sigma,
        n_rejected=joined.n_rejected,
    )
    return skeleton._spectra_from(result, get_method("extraction", method))


def _align(skeleton: LRSObservation, profiles: np.ndarray, plan: _Plan, params: dict) -> LRSObservation:
    """``align`` on the whole observation from its cross-dispersion profiles.

    The verb itself runs, on an observation whose cubes repeat each
    integration's profile and its variance (``profiles`` (nints, 2, ncols))
    on every row without copying them (a zero stride): over one row the
    data sum to exactly the profile and the squared errors to the variance
    (to float64 rounding: the error is its square root), so
    ``align(x_rows=(r, r + 1))`` measures what the in-memory chain measures
    over ``x_rows``.  The record then gets the real ``x_rows`` back.
    """
    nints, nrows, ncols = skeleton.shape

    def repeated(values: np.ndarray) -> np.ndarray:
        values = np.ascontiguousarray(values, dtype=np.float64)
        return np.lib.stride_tricks.as_strided(
            values,
            shape=(nints, nrows, ncols),
            strides=(values.strides[0], 0, values.strides[1]),
            writeable=False,
        )

    cube = repeated(profiles[:, 0])
    err = repeated(np.sqrt(profiles[:, 1]))
    row = plan.align_rows[0]
    obs = skeleton.replace(data=cube, err=err).align(**{**params, "x_rows": (row, row + 1)})
    record = obs.history[-1]
    record = dataclasses.replace(
        record, parameters={**record.parameters, "x_rows": list(plan.align_rows)}
    )
    return obs.replace(history=(*obs.history[:-1], record))


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True, eq=False, repr=False)
class Reduction:
    """What :func:`reduce` keeps in memory when the cubes went to a session file.

    The products (``spectra``, ``shifts``, ``background``, ``outlier_counts``,
    ``truth``), the integration times, wavelength map, metadata and history,
    and ``session``, the path of the file that holds everything (cubes
    included): ``reduction.load()`` reads it back as an
    :class:`~exomiri.LRSObservation`.  ``to_xarray()`` and
    ``light_curves()`` work as on an observation.
    """

    session: str
    shape: tuple[int, int, int]
    meta: ObservationMeta
    int_times: np.ndarray
    wavelength: np.ndarray | None = None
    trace: np.ndarray | None = None
    outlier_counts: np.ndarray | None = None
    background: BackgroundModel | None = None
    spectra: Spectra | None = None
    shifts: Shifts | None = None
    truth: Product | None = None
    history: tuple[StepRecord, ...] = field(default_factory=tuple)

    @property
    def nints(self) -> int:
        return self.shape[0]

    @property
    def times(self) -> np.ndarray:
        return self.int_times["int_mid_BJD_TDB"]

    @property
    def integration_numbers(self) -> np.ndarray:
        return self.int_times["integration_number"]

    @property
    def steps_done(self) -> list[str]:
        return [r.step for r in self.history]

    def load(self) -> LRSObservation:
        """The whole session (cubes included) as an observation, in memory."""
        from .io.hdf5 import load

        return load(self.session)

    def to_xarray(self):
        from .lightcurves import to_xarray

        return to_xarray(self)

    def light_curves(self, bins=None, *, resolution=None, pixels=None, wavelength_range=(5.0, 12.0)):
        from .lightcurves import light_curves

        return light_curves(
            self, bins, resolution=resolution, pixels=pixels, wavelength_range=wavelength_range
        )

    def __repr__(self) -> str:
        return (
            f"<Reduction {self.meta.target or 'observation'}: {self.nints} integrations, "
            f"steps {' > '.join(self.steps_done) or 'none'}; session {self.session}>"
        )


# --------------------------------------------------------------------------- executors


def _serial(source: _Source, bounds: list[tuple[int, int]], plan: _Plan) -> Iterable[_ChunkOutput]:
    for start, stop in bounds:
        yield _run_chunk(source.read(start, stop), plan)


_CUBES = ("data", "err", "dq", "var_poisson", "var_rnoise", "profile", "outlier_counts")


def _chunk_from_blocks(cubes: dict[str, np.ndarray], fields: dict[str, Any]) -> LRSObservation:
    return LRSObservation(**cubes, **fields)


def _dask(
    source: _Source, bounds: list[tuple[int, int]], plan: _Plan, in_flight: int
) -> Iterable[_ChunkOutput]:
    """Each chunk a Dask task, computed by the current scheduler ``in_flight`` at a time."""
    try:
        import dask
        import dask.array as da
    except ImportError as exc:
        raise InputError(
            "reduce(executor='dask') needs Dask: pip install 'exomiri[dask]'."
        ) from exc

    run = dask.delayed(_run_chunk, pure=True)
    if source.obs is not None:
        obs = source.obs
        sizes = tuple(stop - start for start, stop in bounds)
        # The cubes become dask.array blocks along integrations; the small fields
        # (times, products, metadata) travel with each task.
        blocks = {
            name: da.from_array(np.asarray(value), chunks=(sizes, *value.shape[1:]))
            .to_delayed()
            .ravel()
            for name in _CUBES
            if (value := getattr(obs, name)) is not None
        }
        make = dask.delayed(_chunk_from_blocks, pure=True)
        tasks = []
        for k, (start, stop) in enumerate(bounds):
            small = _slice(dataclasses.replace(obs, **dict.fromkeys(_CUBES[3:])), start, stop)
            fields = {
                f: getattr(small, f) for f in _FIELDS if f not in _CUBES
            }
            tasks.append(run(make({name: b[k] for name, b in blocks.items()}, fields), plan))
    else:
        read = dask.delayed(SegmentReader.read, pure=True)
        tasks = [run(read(source.reader, start, stop), plan) for start, stop in bounds]
    for first in range(0, len(tasks), in_flight):
        yield from dask.compute(*tasks[first : first + in_flight])


# --------------------------------------------------------------------------- reduce


def _positive_int(name: str, value: Any, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"reduce({name}={value!r}) must be a positive integer, e.g. {name}={example}.")
    return int(value)


def reduce(
    source: Any,
    out: str | os.PathLike | None = None,
    *,
    chunks: int = 500,
    steps: Sequence[Any] | None = None,
    template_integrations: int = 500,
    executor: str = "serial",
    in_flight: int = 4,
) -> LRSObservation | Reduction:
    """Reduce an observation chunk by chunk; see the module docstring for the guarantees.

    ``source``: ``*_rateints.fits`` path(s) or glob (read chunk by chunk), a
    :class:`~exomiri.io.lazy.SegmentReader`, or an in-memory
    :class:`~exomiri.LRSObservation`.  ``out``: the session file to write
    (atomically, cubes appended chunk by chunk); then a :class:`Reduction`
    holding the small products is returned.  Without ``out`` everything is
    joined in memory and an :class:`~exomiri.LRSObservation` is returned,
    equal to running the steps on the whole observation.  ``chunks``:
    integrations per chunk.  ``steps``: verb names or (verb, parameters)
    pairs, default :data:`DEFAULT_CHAIN`; ``align`` must come last.
    ``template_integrations``: integrations (spread evenly) from which the
    time-median templates are taken.  ``executor``: ``"serial"`` or
    ``"dask"`` (Dask's current scheduler, a distributed cluster when a
    ``Client`` is active); ``in_flight``: chunks computed at once on Dask.

    Peak memory grows with ``chunks`` and ``template_integrations`` (about
    0.6 MB per integration of either, plus the products), not with the
    length of the observation.
    """
    chunks = _positive_int("chunks", chunks, 500)
    template_integrations = _positive_int("template_integrations", template_integrations, 500)
    in_flight = _positive_int("in_flight", in_flight, 4)
    if executor not in EXECUTORS:
        raise InputError(f"reduce(executor={executor!r}) must be one of {', '.join(EXECUTORS)}.")
    steps = _normalise_steps(steps)
    if out is not None:  # before any long work
        output_folder(out, f"reduce(out={str(out)!r})")
    src = _Source(source)
    plan, sample = _make_plan(src, steps, template_integrations)
    del sample
    nints = src.nints
    bounds = [(start, min(start + chunks, nints)) for start in range(0, nints, chunks)]
    outputs = _serial(src, bounds, plan) if executor == "serial" else _dask(src, bounds, plan, in_flight)

    writer = None
    if out is not None:
        from .io.hdf5 import SessionWriter

        writer = SessionWriter(out, nints, src.meta)
    try:
        kept: dict[str, list[Any]] = {}
        records: list[tuple[StepRecord, ...]] = []
        profiles: list[np.ndarray] = []
        last: LRSObservation | None = None
        for output in outputs:
            chunk = output.obs
            if writer is not None:
                writer.append(chunk)
                cube_names = ("outlier_counts",)
            else:
                cube_names = _CUBES
            for name in (*cube_names, "int_times", "background", "spectra", "shifts"):
                kept.setdefault(name, []).append(getattr(chunk, name))
            records.append(output.records)
            if output.align_profiles is not None:
                profiles.append(output.align_profiles)
            # keep one integration's worth of the last chunk (for its fields and dtypes), and
            # let go of its cubes before the next chunk is computed
            last = _copy_first(chunk)
            del output, chunk
        assert last is not None

        def joined(name: str) -> Any:
            values = kept.get(name)
            if values is None or any(v is None for v in values):
                return None
            if isinstance(values[0], Product):
                return _concatenate(values)
            return np.concatenate(values, axis=0)

        merged = _merge_records(records)
        history = (*src.history, *merged)
        shape = (nints, *last.shape[1:])
        placeholder = {
            name: np.broadcast_to(np.zeros((), dtype=getattr(last, name).dtype), shape)
            for name in ("data", "err", "dq")
        }
        skeleton = dataclasses.replace(
            last,
            **placeholder,
            var_poisson=None,
            var_rnoise=None,
            profile=None,
            outlier_counts=joined("outlier_counts"),
            int_times=joined("int_times"),
            background=joined("background"),
            shifts=None,
            spectra=None,
            truth=src.truth,
            history=history if "align" not in dict(steps) else history[:-1],
        )
        extract_params = [p for verb, p in steps if verb == "extract"]
        if kept["spectra"][0] is not None:
            skeleton = skeleton.replace(
                spectra=_spectra(skeleton, kept["spectra"], extract_params[-1].get("method", "optimal"))
            )
        if profiles:
            aligned = _align(skeleton, np.concatenate(profiles), plan, dict(steps)["align"])
            record = dataclasses.replace(
                aligned.history[-1],
                duration_s=round(aligned.history[-1].duration_s + history[-1].duration_s, 6),
            )
            skeleton = aligned.replace(history=(*aligned.history[:-1], record))

        if writer is None:
            cubes = {name: joined(name) for name in _CUBES[:-1]}
            return skeleton.replace(**cubes)
        path = writer.finish(skeleton)
        return Reduction(
            session=path,
            shape=shape,
            meta=skeleton.meta,
            int_times=skeleton.int_times,
            wavelength=skeleton.wavelength,
            trace=skeleton.trace,
            outlier_counts=skeleton.outlier_counts,
            background=skeleton.background,
            spectra=skeleton.spectra,
            shifts=skeleton.shifts,
            truth=skeleton.truth,
            history=skeleton.history,
        )
    finally:
        if writer is not None:
            writer.abort()  # no-op once finished
