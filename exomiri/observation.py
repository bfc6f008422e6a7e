"""The central object: :class:`LRSObservation`, a frozen cube with fluent verbs.

Every verb checks its prerequisites, calls a kernel from :mod:`exomiri.steps`
(or a registered method), appends one :class:`~exomiri.provenance.StepRecord`
and returns a NEW observation.  Arrays that a step does not change are shared
between the old and the new observation, never copied; every stored array is
read-only, so sharing is safe.
"""

from __future__ import annotations

import dataclasses
import html
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np

from . import dq as dqflags
from .calibration import load as load_calibration
from .exceptions import InputError, StepOrderError
from .products import BackgroundModel, Product, Shifts, Spectra, WavelengthQuality
from .provenance import StepRecord

__all__ = ["INT_TIMES_COLUMNS", "LRSObservation", "ObservationMeta", "Segment"]

#: Columns of the INT_TIMES table, as in JWST products.
INT_TIMES_COLUMNS = (
    "integration_number",
    "int_start_MJD_UTC",
    "int_mid_MJD_UTC",
    "int_end_MJD_UTC",
    "int_start_BJD_TDB",
    "int_mid_BJD_TDB",
    "int_end_BJD_TDB",
)
INT_TIMES_DTYPE = np.dtype(
    [("integration_number", "<i4")] + [(name, "<f8") for name in INT_TIMES_COLUMNS[1:]]
)

#: Full-frame (1-based) start of the SLITLESSPRISM subarray: the frame in which
#: every published default column/row (aperture 36, background 8-16 and 56-71,
#: PSF rows 200-389) is given.
SLITLESSPRISM_START = (1, 529)

DO_NOT_USE = np.uint32(1 << dqflags.FLAGS["DO_NOT_USE"])


@dataclass(frozen=True)
class Segment:
    """One input file and the (1-based, inclusive) integration numbers it holds."""

    filename: str
    first: int
    last: int


@dataclass(frozen=True)
class ObservationMeta:
    """Header metadata.  Geometry comes from here, never from a hard-coded 416 x 72."""

    instrument: str = "MIRI"
    detector: str = "MIRIMAGE"
    filter: str = "P750L"
    exp_type: str = "MIR_LRS-SLITLESS"
    tso_visit: bool = True
    subarray: str = "SLITLESSPRISM"
    substrt1: int = 1
    substrt2: int = 529
    subsize1: int = 72
    subsize2: int = 416
    nints: int = 0
    ngroups: int = 0
    nframes: int = 1
    tframe: float = 0.15904
    tgroup: float = 0.15904
    effinttm: float = 0.0
    target: str = ""
    exposure: str = ""
    segments: tuple[Segment, ...] = ()
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def col_offset(self) -> int:
        """Add to a SLITLESSPRISM column to get this subarray's column."""
        return SLITLESSPRISM_START[0] - self.substrt1

    @property
    def row_offset(self) -> int:
        """Add to a SLITLESSPRISM row to get this subarray's row."""
        return SLITLESSPRISM_START[1] - self.substrt2

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["segments"] = [dataclasses.asdict(s) for s in self.segments]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObservationMeta:
        d = dict(d)
        d["segments"] = tuple(Segment(**s) for s in d.get("segments", ()))
        kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
        for f in dataclasses.fields(cls):  # a damaged record must not pass for a good one
            value, kind = d.get(f.name), kinds.get(str(f.type))
            wrong = kind is not None and (
                not isinstance(value, kind) or (isinstance(value, bool) and f.type != "bool")
            )
            if f.name in d and (wrong or (f.name == "header" and not isinstance(value, dict))):
                raise InputError(f"Observation metadata {f.name}={value!r} is not of type {f.type}.")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _readonly(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.flags.writeable:
        view = value.view()
        view.flags.writeable = False
        return view
    return value


def _normalise_regions(regions: Any, what: str = "regions") -> tuple[tuple[int, int], ...]:
    if isinstance(regions, str | bytes) or not isinstance(regions, Sequence | np.ndarray):
        raise InputError(
            f"{what}={regions!r} is not a list of (start, stop) column pairs; "
            "write e.g. regions=((8, 17), (56, 72))."
        )
    out = []
    for pair in regions:
        if isinstance(pair, str | bytes) or len(np.atleast_1d(pair)) != 2:
            raise InputError(
                f"{what} entry {pair!r} is not a (start, stop) pair; "
                "write e.g. regions=((8, 17), (56, 72))."
            )
        if not all(_is_integer(v) for v in pair):
            raise InputError(
                f"{what} entry {pair!r} must hold integer column numbers; "
                "write e.g. regions=((8, 17), (56, 72))."
            )
        start, stop = (int(v) for v in pair)
        out.append((start, stop))
    return tuple(out)


def _is_integer(value: Any) -> bool:
    """An integer (Python or numpy), and not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise InputError(f"{name} must be True or False; got {value!r}.")
    return bool(value)


def _pixel_range(call: str, value: Any, size: int, what: str, example: str) -> tuple[int, int]:
    """A half-open (start, stop) range of integers inside [0, size]; ``call`` is e.g. ``align(x_rows``."""
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Sequence | np.ndarray)
        or len(value) != 2
        or not all(_is_integer(v) for v in value)
    ):
        raise InputError(
            f"{call}={value!r}): expected a (start, stop) pair of integer {what}, e.g. "
            f"{call}={example})."
        )
    start, stop = (int(v) for v in value)
    if not 0 <= start < stop <= size:
        raise InputError(
            f"{call}={value!r}): the half-open range must lie inside the frame's {size} {what}: "
            f"0 <= start < stop <= {size}."
        )
    return start, stop


@dataclass(frozen=True, eq=False, repr=False)
class LRSObservation:
    """A MIRI LRS slitless time series and everything the steps derived from it.

    Cubes are (nints, nrows, ncols): rows are the dispersion axis (wavelength
    falls as the row rises), columns the cross-dispersion axis.  ``data`` and
    ``err`` are in DN/s, ``dq`` holds JWST flag bits.  ``int_times`` is the
    INT_TIMES table (one record per integration); ``times`` the BJD_TDB
    mid-times.  Products appear as steps run: ``wavelength``/``trace``
    (:meth:`wavelength_map`), ``profile``/``outlier_counts`` (:meth:`clean`),
    ``background`` (:meth:`subtract_background`), ``spectra``
    (:meth:`extract`), ``shifts`` (:meth:`align`).  ``history`` holds one
    provenance record per step.
    """

    data: np.ndarray
    err: np.ndarray
    dq: np.ndarray
    int_times: np.ndarray
    meta: ObservationMeta
    var_poisson: np.ndarray | None = None
    var_rnoise: np.ndarray | None = None
    wcs: Any = None
    wavelength_extension: np.ndarray | None = None
    wavelength: np.ndarray | None = None
    trace: np.ndarray | None = None
    profile: np.ndarray | None = None
    outlier_counts: np.ndarray | None = None
    background: BackgroundModel | None = None
    spectra: Spectra | None = None
    shifts: Shifts | None = None
    truth: Product | None = None
    history: tuple[StepRecord, ...] = ()

    #: Arrays whose first axis runs over integrations.
    PER_INTEGRATION = (
        "data",
        "err",
        "dq",
        "var_poisson",
        "var_rnoise",
        "int_times",
        "profile",
        "outlier_counts",
    )
    #: Fields holding :class:`~exomiri.products.Product` objects.
    PRODUCTS = ("background", "spectra", "shifts", "truth")

    def __post_init__(self) -> None:
        if np.ndim(self.data) != 3:
            raise InputError(
                f"data must be a cube (nints, nrows, ncols); got shape {np.shape(self.data)}."
            )
        shape = self.data.shape
        for name in ("err", "dq", "var_poisson", "var_rnoise", "profile"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != shape:
                raise InputError(
                    f"{name} has shape {np.shape(value)} but data has shape {shape}; "
                    "every cube of one observation must have the same shape."
                )
        if len(self.int_times) != shape[0]:
            raise InputError(
                f"int_times has {len(self.int_times)} records for {shape[0]} integrations; "
                "the INT_TIMES table must have one row per integration."
            )
        self._check_kinds()
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _readonly(getattr(self, f.name)))
        object.__setattr__(self, "history", tuple(self.history))

    def _check_kinds(self) -> None:
        """Refuse arrays of the wrong kind or frame (a damaged file, a mix-up by hand)."""
        nints, nrows, ncols = self.data.shape
        kinds = {"data": "fiu", "err": "fiu", "dq": "iu", "var_poisson": "fiu", "var_rnoise": "fiu"}
        for name, allowed in kinds.items():
            value = getattr(self, name)
            if value is not None and np.asarray(value).dtype.kind not in allowed:
                raise InputError(
                    f"{name} has dtype {np.asarray(value).dtype}; expected "
                    f"{'integer DQ flags' if name == 'dq' else 'real numbers'}."
                )
        names = getattr(np.asarray(self.int_times).dtype, "names", None) or ()
        missing = [c for c in INT_TIMES_COLUMNS if c not in names]
        if missing:
            raise InputError(f"int_times has no column(s) {', '.join(missing)}; see INT_TIMES_COLUMNS.")
        frames = {
            "wavelength": (nrows, ncols),
            "wavelength_extension": (nrows, ncols),
            "trace": (nrows,),
        }
        for name, expected in frames.items():
            value = getattr(self, name)
            if value is not None and np.shape(value) != expected:
                raise InputError(
                    f"{name} has shape {np.shape(value)}; expected {expected} for frames of "
                    f"{nrows} x {ncols}."
                )
        if self.outlier_counts is not None and np.shape(self.outlier_counts)[:2] != (nints, nrows):
            raise InputError(
                f"outlier_counts has shape {np.shape(self.outlier_counts)}; expected "
                f"({nints}, {nrows}, ...)."
            )
        for name in self.PRODUCTS:
            product = getattr(self, name)
            for field_name in getattr(product, "per_integration", ()):
                length = np.shape(getattr(product, field_name))[:1]
                if length != (nints,):
                    raise InputError(
                        f"{name}.{field_name} has shape {np.shape(getattr(product, field_name))}; "
                        f"its first axis must run over the {nints} integrations."
                    )
        if self.spectra is not None:
            nwave = np.shape(self.spectra.flux)[1:]
            for field_name in ("flux_err", "n_rejected", "wavelength", "rows", "quality"):
                shape = np.shape(getattr(self.spectra, field_name))
                if shape[-1:] != nwave or len(shape) not in (1, 2):
                    raise InputError(
                        f"spectra.{field_name} has shape {shape}; spectra.flux has "
                        f"{np.shape(self.spectra.flux)}."
                    )

    # ------------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape

    @property
    def nints(self) -> int:
        return self.data.shape[0]

    @property
    def times(self) -> np.ndarray:
        """BJD_TDB mid-times of the integrations (days)."""
        return self.int_times["int_mid_BJD_TDB"]

    @property
    def integration_numbers(self) -> np.ndarray:
        """1-based integration numbers within the exposure."""
        return self.int_times["integration_number"]

    @property
    def steps_done(self) -> list[str]:
        return [r.step for r in self.history]

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays of this observation (shared arrays counted once)."""
        seen: dict[int, int] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            arrays = value.arrays().values() if isinstance(value, Product) else [value]
            for a in arrays:
                if isinstance(a, np.ndarray):
                    base = a.base if a.base is not None else a
                    seen[id(base)] = max(seen.get(id(base), 0), a.nbytes)
        return sum(seen.values())

    def replace(self, record: StepRecord | None = None, **changes: Any) -> LRSObservation:
        """A new observation with some fields changed and, optionally, one record appended."""
        if record is not None:
            changes["history"] = (*self.history, record)
        return dataclasses.replace(self, **changes)

    def pipe(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``func(self, *args, **kwargs)``, for chaining your own functions."""
        return func(self, *args, **kwargs)

    @property
    def plot(self):
        """Diagnostic figures: ``obs.plot.frame()``, ``obs.plot.spectra()``... (see :mod:`exomiri.plot`)."""
        from .plot import PlotAccessor

        return PlotAccessor(self)

    # ------------------------------------------------------------- selection
    def _resolve(self, integrations: Any) -> np.ndarray:
        """Indices of the chosen integrations, sorted and unique: they stay in time order."""
        n = self.nints
        if isinstance(integrations, slice):
            return np.unique(np.arange(n)[integrations])
        index = np.asarray(integrations)
        if index.dtype == bool:
            if index.shape != (n,):
                raise InputError(
                    f"A boolean selection must have one value per integration ({n}); got {index.shape}."
                )
            return np.flatnonzero(index)
        if index.ndim > 1 or (index.size and index.dtype.kind not in "iu"):
            raise InputError(
                f"Select integrations with an int, a slice, integer indices or a boolean mask; "
                f"got {integrations!r}."
            )
        index = np.atleast_1d(index).astype(np.int64)
        if index.size and (index.min() < -n or index.max() >= n):
            raise InputError(
                f"Integration index out of range for {n} integrations: {integrations!r}; indices "
                f"run from 0 to {n - 1} (or from -{n} counted from the end)."
            )
        return np.unique(np.where(index < 0, index + n, index))

    def _time_window(self, time: Any) -> np.ndarray:
        """Indices of the integrations whose mid-time lies in the (start, end) window ``time``.

        Numbers are BJD_TDB; an astropy ``Time`` in the TDB (or TCB) scale is
        compared with the BJD_TDB mid-times, one in any other scale (UTC, TT,
        TAI) with the MJD_UTC mid-times (a ``Time`` cannot know the light
        travel time to the barycentre); a ``Quantity`` is a time since the
        start of the first integration.
        """
        from astropy import units as u
        from astropy.time import Time

        if isinstance(time, Time) and time.shape == (2,):
            time = (time[0], time[1])
        if (
            not isinstance(time, Sequence | np.ndarray)
            or isinstance(time, str | bytes | Time)
            or len(time) != 2
        ):
            raise InputError(
                f"time={time!r} must be a (start, end) pair: BJD_TDB values, astropy Times, or "
                "Quantities counted from the start of the first integration "
                "(e.g. time=(1 * u.hour, None)); None leaves an end open."
            )
        start = self.int_times["int_start_BJD_TDB"][0]
        bjd = self.int_times["int_mid_BJD_TDB"]
        mjd_utc = self.int_times["int_mid_MJD_UTC"]

        def convert(value: Any) -> tuple[float, np.ndarray]:
            if isinstance(value, Time):
                if value.ndim or value.size != 1:
                    raise InputError(f"time={time!r}: {value!r} must be a single time.")
                if value.scale in ("tdb", "tcb"):
                    return float(value.tdb.jd), bjd
                return float(value.utc.mjd), mjd_utc
            try:
                if isinstance(value, u.Quantity):
                    return float(start + value.to_value(u.day)), bjd
                if isinstance(value, bool | str | bytes):
                    raise TypeError(type(value).__name__)
                return float(value), bjd
            except (TypeError, ValueError, u.UnitsError) as exc:
                raise InputError(
                    f"time={time!r}: {value!r} is not a BJD_TDB value, an astropy Time or a time "
                    f"Quantity ({exc}); write e.g. time=(1 * u.hour, None)."
                ) from None

        keep = np.ones(self.nints, dtype=bool)
        if time[0] is not None:
            t0, column = convert(time[0])
            keep &= column >= t0
        if time[1] is not None:
            t1, column = convert(time[1])
            keep &= column <= t1
        return np.flatnonzero(keep)

    def select(self, integrations: Any = None, time: Any = None) -> LRSObservation:
        """A new observation holding only some integrations, with every product kept consistent.

        ``integrations``: an int, a slice, integer indices or a boolean mask;
        ``time``: a (start, end) window of mid-times (ends included), each a
        BJD_TDB value, an astropy ``Time`` (TDB: BJD_TDB; UTC and other
        scales: compared with the MJD_UTC mid-times), a ``Quantity`` counted
        from the start of the first integration (``time=(1 * u.hour, None)``
        skips the first hour) or None (open).  Both may be given.  The kept
        integrations stay in time order; times, integration numbers, products
        and the truth follow them, and the selection is recorded in the
        history (the kept integration numbers, as [first, last] runs).

        Steps that work integration by integration (``wavelength_map``,
        ``clean``, ``subtract_background``, box extraction) give the same
        result whether a selection is made before or after them.  Steps that
        use the time series as a whole do not: ``align`` measures shifts
        against the median of the integrations it sees, optimal extraction
        uses the time-median profile, and ``clean_time`` compares neighbours
        in time; select before them what should shape them (e.g. drop the
        settling ramp first).
        """
        t0 = perf_counter()
        index = np.arange(self.nints)
        if integrations is not None:
            index = self._resolve(integrations)
        if time is not None:
            index = index[np.isin(index, self._time_window(time))]
        if index.size == 0:
            raise InputError(
                f"select(integrations={integrations!r}, time={time!r}) leaves no integration; "
                f"this observation has {self.nints} integrations with mid-times BJD_TDB "
                f"{self.times[0]:.6f} to {self.times[-1]:.6f}. Widen the selection."
            )
        params = {} if time is None else {"time": [None if v is None else str(v) for v in time]}
        return self._take(index, "select", t0, params)

    def drop(self, integrations: Any) -> LRSObservation:
        """A new observation without the given integrations (indices, slice or mask)."""
        t0 = perf_counter()
        keep = np.setdiff1d(np.arange(self.nints), self._resolve(integrations))
        if keep.size == 0:
            raise InputError(
                f"drop({integrations!r}) would leave none of the {self.nints} integrations; "
                "drop fewer."
            )
        return self._take(keep, "drop", t0)

    def __getitem__(self, integrations: Any) -> LRSObservation:
        if isinstance(integrations, tuple):
            raise InputError("Index an observation by integrations only, e.g. obs[100:].")
        t0 = perf_counter()
        index = self._resolve(integrations)
        if index.size == 0:
            raise InputError(
                f"obs[{integrations!r}] selects no integration of {self.nints}; widen it."
            )
        return self._take(index, "select", t0)

    def _take(
        self, index: np.ndarray, step: str, t0: float, params: dict[str, Any] | None = None
    ) -> LRSObservation:
        changes: dict[str, Any] = {}
        for name in self.PER_INTEGRATION:
            value = getattr(self, name)
            if value is not None:
                changes[name] = value[index]
        for name in self.PRODUCTS:
            value = getattr(self, name)
            if value is not None:
                changes[name] = value.take(index)
        numbers = self.integration_numbers[index]
        record = StepRecord.create(
            step,
            {"integration_numbers": _ranges(numbers), **(params or {})},
            diagnostics={"kept": int(index.size), "of": self.nints},
            duration_s=perf_counter() - t0,
        )
        return self.replace(record, **changes)

    def usable_mask(self, dq_bits_to_mask: Any = (0,)) -> np.ndarray:
        """True where a pixel must not be used.

        A pixel is unusable when its value is not finite, when its ``err`` is
        not finite and positive (it cannot be weighted, and an error of 0
        would claim infinite precision), or when it carries one of
        ``dq_bits_to_mask`` and :meth:`clean` has not replaced it (a replaced
        pixel has the OUTLIER bit OR-ed in).
        """
        from .steps.pixels import unusable

        bits = dqflags.bit_mask(dq_bits_to_mask)
        return unusable(self.data, self.err, self.dq, bits, dqflags.OUTLIER)

    # --------------------------------------------------------------- display
    def __repr__(self) -> str:
        nints, nrows, ncols = self.shape
        target = self.meta.target or "unknown target"
        steps = ", ".join(self.steps_done) or "none"
        return (
            f"<LRSObservation {target}: {nints} integrations x {nrows} rows x {ncols} cols "
            f"({self.meta.subarray}), steps: {steps}, {self.nbytes / 2**20:.1f} MiB>"
        )

    def _repr_html_(self) -> str:
        nints, nrows, ncols = self.shape
        rows = [
            ("Target", self.meta.target or "unknown"),
            ("Shape", f"{nints} integrations x {nrows} rows x {ncols} columns"),
            ("Subarray", f"{self.meta.subarray} (SUBSTRT {self.meta.substrt1}, {self.meta.substrt2})"),
            ("Segments", ", ".join(s.filename for s in self.meta.segments) or "none"),
            ("Memory", f"{self.nbytes / 2**20:.1f} MiB"),
            (
                "Products",
                ", ".join(
                    name
                    for name in ("wavelength", "profile", "background", "spectra", "shifts")
                    if getattr(self, name) is not None
                )
                or "none",
            ),
        ]
        table = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        steps = "".join(
            f"<li><code>{html.escape(r.summary())}</code> ({r.duration_s:.2f} s)</li>"
            for r in self.history
        )
        return (
            "<div><strong>LRSObservation</strong>"
            f"<table>{table}</table><div>Steps:</div><ol>{steps or '<li>none</li>'}</ol></div>"
        )

    # ------------------------------------------------------------ step tools
    def _last_index(self, step: str) -> int:
        for i in range(len(self.history) - 1, -1, -1):
            if self.history[i].step == step:
                return i
        return -1

    def _require(self, attribute: str, call: str, step: str) -> None:
        if getattr(self, attribute) is None:
            raise StepOrderError(
                f"{step}() needs {attribute!r}, which this observation does not have yet; "
                f"call {call} first."
            )

    def _default_columns(self, cols: tuple[int, int]) -> tuple[int, int]:
        ncols = self.shape[2]
        off = self.meta.col_offset
        return (int(np.clip(cols[0] + off, 0, ncols)), int(np.clip(cols[1] + off, 0, ncols)))

    def _default_rows(self, rows: tuple[int, int]) -> tuple[int, int]:
        nrows = self.shape[1]
        off = self.meta.row_offset
        return (int(np.clip(rows[0] + off, 0, nrows)), int(np.clip(rows[1] + off, 0, nrows)))

    def _calibrated_trace(self) -> np.ndarray:
        if self.trace is not None:
            return self.trace
        cal = load_calibration(self.meta.substrt1, self.meta.substrt2)
        return cal.trace_at(np.arange(self.shape[1]))

    # ------------------------------------------------------------------ steps
    def wavelength_map(self, source: str = "auto") -> LRSObservation:
        """Wavelength of every pixel (micron) and the calibrated trace column of every row.

        ``source``: ``"wcs"`` evaluates the WCS that ``assign_wcs`` attached to
        the file; ``"array"`` uses the file's ``WAVELENGTH`` extension;
        ``"calibration"`` uses the bundled flight table (FLT-2), never the
        network; ``"auto"`` takes the first of these that is available.  The
        source and the calibration version are recorded in the history.
        """
        from .steps import wavelength as kernel

        t0 = perf_counter()
        choices = ("auto", "wcs", "array", "calibration")
        if source not in choices:
            raise InputError(
                f"wavelength_map(source={source!r}) is not one of {', '.join(choices)}."
            )
        has_array = kernel.is_filled(self.wavelength_extension)
        if source == "auto":
            source = "wcs" if self.wcs is not None else "array" if has_array else "calibration"
        cal = load_calibration(self.meta.substrt1, self.meta.substrt2)
        nrows, ncols = self.shape[1:]
        params: dict[str, Any] = {"source": source}
        if source == "wcs":
            if self.wcs is None:
                raise InputError(
                    "wavelength_map(source='wcs'): this observation carries no WCS "
                    "(assign_wcs was not run on the file). Use source='calibration' for the "
                    "bundled flight solution."
                )
            wavelength = kernel.wcs_map(self.wcs, (nrows, ncols))
            params["reference"] = {
                k: v for k, v in self.meta.header.items() if k.startswith("R_") or k == "CRDS_CTX"
            }
        elif source == "array":
            if not has_array:
                raise InputError(
                    "wavelength_map(source='array'): the file's WAVELENGTH extension is missing "
                    "or empty. Use source='calibration'."
                )
            wavelength = np.where(
                self.wavelength_extension > 0, self.wavelength_extension, np.nan
            ).astype(np.float64)
        else:
            wavelength = kernel.calibration_map(cal, (nrows, ncols))
            params["calibration"] = {"version": cal.version, "sha256": cal.sha256}
        trace = cal.trace_at(np.arange(nrows))
        finite = np.isfinite(wavelength)
        diagnostics = {
            "rows_with_wavelength": int(np.any(finite, axis=1).sum()),
            "range_um": [float(np.nanmin(wavelength)), float(np.nanmax(wavelength))]
            if finite.any()
            else None,
        }
        record = StepRecord.create(
            "wavelength_map", params, diagnostics=diagnostics, duration_s=perf_counter() - t0
        )
        return self.replace(record, wavelength=wavelength, trace=trace)

    def clean(
        self,
        dq_bits_to_mask: Any = None,
        window_heights: Sequence[int] = (40,),
        poly_order: int = 4,
        outlier_threshold: float = 4.0,
        spatial_profile_left_idx: int | None = None,
        spatial_profile_right_idx: int | None = None,
        weighted: bool = False,
    ) -> LRSObservation:
        """Replace outliers found against a windowed polynomial spatial profile.

        Frame by frame, for every column and every window of rows
        (``window_heights`` cycled to cover all rows), a polynomial of order
        ``poly_order`` is fitted along the dispersion direction and the single
        worst pixel is dropped while ``|residual| / std(residuals) >
        outlier_threshold``.  Pixels that are NaN, carry one of
        ``dq_bits_to_mask`` (numbers or names), or were dropped are replaced by
        the fit; their ``err`` becomes the fit's uncertainty and ``OUTLIER`` is
        OR-ed into ``dq``.  ``weighted=True`` fits with inverse-variance
        weights.  Adds ``profile`` (the fit, negatives set to 0, kept in
        columns [spatial_profile_left_idx, spatial_profile_right_idx) (26 and
        47 on SLITLESSPRISM), normalised per row) and ``outlier_counts``
        (per integration and row, replaced pixels within 0..4 columns of the
        trace).
        """
        from .steps import clean as kernel

        t0 = perf_counter()
        if _is_integer(window_heights):
            window_heights = (int(window_heights),)
        if isinstance(window_heights, str) or not isinstance(window_heights, Sequence | np.ndarray):
            raise InputError(
                f"clean(window_heights={window_heights!r}): expected a list of row counts, "
                "e.g. window_heights=[40]."
            )
        kernel.window_edges(self.shape[1], window_heights)  # validates the heights
        window_heights = tuple(int(h) for h in window_heights)
        if _is_integer(poly_order) and min(h for h in window_heights if h) <= poly_order:
            raise InputError(
                f"clean(window_heights={list(window_heights)}, poly_order={poly_order}): a window "
                f"needs more than poly_order = {poly_order} rows to determine the polynomial (and "
                f"at least {poly_order + 3} to find outliers); use taller windows or a lower "
                "poly_order."
            )
        weighted = _flag("clean(weighted=...)", weighted)
        bits = dqflags.bit_numbers(dq_bits_to_mask)
        left, right = self._default_columns((26, 47))
        for name, value in (
            ("spatial_profile_left_idx", spatial_profile_left_idx),
            ("spatial_profile_right_idx", spatial_profile_right_idx),
        ):
            if value is not None and not _is_integer(value):
                raise InputError(
                    f"clean({name}={value!r}): expected an integer column (or None for the "
                    f"default), e.g. {name}={left if 'left' in name else right}."
                )
        left = left if spatial_profile_left_idx is None else int(spatial_profile_left_idx)
        right = right if spatial_profile_right_idx is None else int(spatial_profile_right_idx)
        if not 0 <= left < right <= self.shape[2]:
            raise InputError(
                f"clean(spatial_profile_left_idx={left}, spatial_profile_right_idx={right}): the "
                f"profile columns [left, right) must satisfy 0 <= left < right <= {self.shape[2]}."
            )
        bad = dqflags.mask_from_dq(self.dq, bits)
        result = kernel.clean_cube(
            self.data,
            self.err,
            bad,
            window_heights=window_heights,
            poly_order=poly_order,
            outlier_threshold=outlier_threshold,
            weighted=bool(weighted),
        )
        profile = kernel.spatial_profile(result.fit, left, right)
        counts = kernel.outlier_counts(result.replaced, self._trace_columns(result.data))
        new_dq = self.dq | (result.replaced.astype(np.uint32) * dqflags.OUTLIER)
        n_pix = result.replaced.size
        diagnostics = {
            "replaced": int(result.replaced.sum()),
            "clipped": int(result.clipped.sum()),
            "replaced_fraction": float(result.replaced.sum() / n_pix),
            "replaced_near_trace": int(counts[..., -1].sum()),
        }
        params = {
            "dq_bits_to_mask": bits,
            "window_heights": [int(h) for h in window_heights],
            "poly_order": poly_order,
            "outlier_threshold": outlier_threshold,
            "spatial_profile_left_idx": left,
            "spatial_profile_right_idx": right,
            "weighted": bool(weighted),
        }
        record = StepRecord.create(
            "clean", params, diagnostics=diagnostics, duration_s=perf_counter() - t0
        )
        return self.replace(
            record,
            data=result.data,
            err=result.err,
            dq=new_dq,
            profile=profile,
            outlier_counts=counts,
        )

    def _trace_columns(self, data: np.ndarray) -> np.ndarray:
        """Per-row trace column: the calibrated tilt placed at the measured PSF position."""
        from .steps.extract import fit_psf, nanmedian

        rows = self._default_rows((200, 390))
        cols = self._default_columns((12, 68))
        tilt = self._calibrated_trace()
        # The median of at most 64 frames spread over the visit places the trace well enough.
        sample = np.unique(np.linspace(0, len(data) - 1, min(len(data), 64)).astype(int))
        median_frame = nanmedian(data[sample, rows[0] : rows[1], :], axis=0)
        position, _ = fit_psf(median_frame[None], rows=(0, rows[1] - rows[0]), columns=cols)
        anchor = np.nanmean(tilt[rows[0] : rows[1]])
        centre = float(position[0]) if np.isfinite(position[0]) else 36.0 + self.meta.col_offset
        return np.where(np.isfinite(tilt), tilt - anchor, 0.0) + centre

    def clean_time(
        self,
        on: str = "pixels",
        window: int = 11,
        threshold: float = 4.0,
        n_components: int = 3,
        dq_bits_to_mask: Any = (0,),
    ) -> LRSObservation:
        """Replace outliers found against the running median of each value's neighbours in time.

        The spatial :meth:`clean` judges a pixel within its own frame; this
        step judges it within its own time series, which catches what a frame
        cannot show, such as a moderate cosmic-ray hit on the peak of the
        trace.  ``on="pixels"`` cleans the cube (run it after :meth:`clean`
        and :meth:`subtract_background`, before :meth:`extract`);
        ``on="spectra"`` cleans the extracted spectra, channel by channel.

        Each value is compared with the median of the ``window`` integrations
        centred on it (the value itself left out; 11: five on each side),
        after dividing out the common mode (the white-light variation: transit,
        ramps, steps, so a transit of any depth and ingress is followed, never
        clipped) and fitting out the ``n_components`` time patterns shared by
        the series that scatter more than their errors (pointing jitter).  A
        value is replaced when it deviates by more than ``threshold`` times its
        expected spread, from ``err`` (``flux_err``) or, where larger, the
        series' own robust scatter; on Gaussian noise that is a fraction
        ``2 * norm.sf(threshold)`` of good values (6e-5 at 4, 6e-7 at 5).
        A hit of A sigma is found with a probability of about
        ``norm.cdf((A - 1.08 threshold) / 1.08)`` (90% at 5.7 sigma for the
        default 4).  The replacement is the median of the neighbours (without
        replaced values) and its error that median's, plus the series'
        scatter beyond its errors.  Pixels carrying
        ``dq_bits_to_mask`` that :meth:`clean` has not replaced, NaN values
        and values with an error that is not finite and positive are neither
        used nor changed.  See :mod:`exomiri.steps.timeclean`.

        Pixels get OUTLIER OR-ed into ``dq``.  The replacements near the trace
        (within 4 columns; one per channel on spectra) are added to
        ``outlier_counts``, per integration and row, which ``to_xarray`` and
        ``light_curves`` report as ``n_outliers`` (a later :meth:`clean`
        starts the counts afresh).  The history record's diagnostics hold the
        totals.
        """
        from .steps import clean as clean_kernel
        from .steps import timeclean as kernel
        from .steps.extract import nanmedian

        t0 = perf_counter()
        choices = ("pixels", "spectra")
        if not isinstance(on, str) or on not in choices:
            raise InputError(
                f"clean_time(on={on!r}) is not one of {', '.join(map(repr, choices))}: clean the "
                "cube's pixels (before extract) or the extracted spectra."
            )
        window = kernel.check_window(window)
        threshold = kernel.check_threshold(threshold)
        n_components = kernel.check_components(n_components)
        if self.nints < kernel.MIN_NEIGHBOURS + 1:
            raise InputError(
                f"clean_time() needs at least {kernel.MIN_NEIGHBOURS + 1} integrations to compare "
                f"each with its neighbours; this observation has {self.nints}. Use clean() alone."
            )
        bits = dqflags.bit_numbers(dq_bits_to_mask)
        counts = (
            np.zeros((self.nints, self.shape[1], 5), np.int32)
            if self.outlier_counts is None
            else np.array(self.outlier_counts)
        )
        changes: dict[str, Any] = {}
        if on == "pixels":
            result = kernel.clean_series(
                self.data,
                self.err,
                self.usable_mask(bits),
                window=window,
                threshold=threshold,
                n_components=n_components,
            )
            replaced = result.replaced
            # The trace's place from the median of at most 64 frames spread over the visit.
            sample = np.unique(np.linspace(0, self.nints - 1, 64).astype(np.int64))
            with warnings.catch_warnings():  # columns that are NaN throughout (before clean)
                warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
                trace = self._trace_columns(result.values[sample])
            near = clean_kernel.outlier_counts(replaced, trace)
            counts += near
            changes.update(
                data=result.values,
                err=result.err,
                dq=self.dq | (replaced.astype(np.uint32) * dqflags.OUTLIER),
            )
            n_near = int(near[..., -1].sum())
            with np.errstate(invalid="ignore", divide="ignore"):
                err = self.err[sample]
                typical = nanmedian(np.where(err > 0, err, np.nan), axis=0)
                ratio = result.scatter / typical
        else:
            self._require("spectra", "obs.extract()", "clean_time(on='spectra')")
            spectra = self.spectra
            with np.errstate(invalid="ignore"):
                unusable = ~(np.isfinite(spectra.flux_err) & (spectra.flux_err > 0))
            unusable |= ((spectra.quality & WavelengthQuality.NO_WAVELENGTH) != 0)[None, :]
            result = kernel.clean_series(
                spectra.flux,
                spectra.flux_err,
                unusable,
                window=window,
                threshold=threshold,
                n_components=n_components,
            )
            replaced = result.replaced
            counts[:, spectra.rows, :] += replaced[..., None].astype(np.int32)
            changes["spectra"] = dataclasses.replace(
                spectra, flux=result.values, flux_err=result.err
            )
            n_near = int(replaced.sum())
            with np.errstate(invalid="ignore", divide="ignore"):
                typical = nanmedian(np.where(unusable, np.nan, spectra.flux_err), axis=0)
                ratio = result.scatter / typical
        per_integration = replaced.reshape(self.nints, -1).sum(axis=1)
        diagnostics = {
            "replaced": int(replaced.sum()),
            "replaced_fraction": float(replaced.mean()),
            "replaced_near_trace": n_near,
            "integrations_with_replacements": int(np.count_nonzero(per_integration)),
            "most_in_one_integration": int(per_integration.max()),
            "common_mode_range": [float(result.common_mode.min()), float(result.common_mode.max())],
            "shared_patterns": int(result.basis.shape[1]),
            "median_scatter_over_err": float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else None,
        }
        params = {
            "on": on,
            "window": window,
            "threshold": threshold,
            "n_components": n_components,
            "dq_bits_to_mask": bits,
        }
        record = StepRecord.create(
            "clean_time", params, diagnostics=diagnostics, duration_s=perf_counter() - t0
        )
        return self.replace(record, outlier_counts=counts, **changes)

    def subtract_background(
        self,
        method: str | type = "row_wise",
        regions: Sequence[Sequence[int]] | None = None,
        smoothing_length: int | None = None,
        dq_bits_to_mask: Any = (0,),
        **method_params: Any,
    ) -> LRSObservation:
        """Estimate the background from off-source columns and subtract it.

        ``method`` is a registered background method name (see
        ``exomiri.methods("background")``) or a method class; its own
        parameters are passed as keywords.  ``regions`` are half-open column
        ranges (default ``((8, 17), (56, 72))`` on SLITLESSPRISM).
        ``smoothing_length`` applies a running median along rows.  The host
        subtracts the model, adds its variance to ``err``, flags rows it could
        not estimate as DO_NOT_USE, and stores the model compactly as
        ``background``.
        """
        from .hookspecs import BackgroundInput
        from .plugins import get_method
        from .steps import background as kernel

        t0 = perf_counter()
        info = get_method("background", method, self.history)
        params = _check_params(info, method_params)
        if regions is None:
            regions = tuple(self._default_columns(r) for r in ((8, 17), (56, 72)))
        regions = _normalise_regions(regions)
        region = kernel.region_mask(regions, self.shape[2])
        frames = BackgroundInput(
            data=self.data,
            err=self.err,
            mask=self.usable_mask(dq_bits_to_mask),
            region=_readonly(region),
            columns=_readonly(np.arange(self.shape[2], dtype=np.float64)),
        )
        try:
            model = info.cls().estimate(frames, **params)
        except Exception as exc:
            exc.add_note(f"in background method {info.name!r} from {info.distribution}=={info.version}")
            raise
        model = _check_background_model(model, self.shape, info)
        if smoothing_length is not None:
            coeffs, cov = kernel.smooth_rows(model.coeffs, model.cov, smoothing_length)
            model = BackgroundModel(basis=model.basis, coeffs=coeffs, cov=cov)
        data, err = kernel.subtract(self.data, self.err, model)
        failed = ~np.isfinite(data) & np.isfinite(self.data)
        new_dq = self.dq | (failed.astype(np.uint32) * DO_NOT_USE) if failed.any() else self.dq
        level = model.level(float(np.nanmedian(self._calibrated_trace())))
        diagnostics = {
            "median_level": float(np.nanmedian(level)),
            "pixels_without_background": int(failed.sum()),
        }
        record = StepRecord.create(
            "subtract_background",
            {
                "regions": [list(r) for r in regions],
                "smoothing_length": smoothing_length,
                "dq_bits_to_mask": dqflags.bit_numbers(dq_bits_to_mask),
                **params,
            },
            method=info.name,
            provider=info.distribution,
            provider_version=info.version,
            diagnostics=diagnostics,
            duration_s=perf_counter() - t0,
        )
        return self.replace(record, data=data, err=err, dq=new_dq, background=model)

    def extract(
        self,
        method: str | type = "optimal",
        dq_bits_to_mask: Any = (0,),
        **method_params: Any,
    ) -> LRSObservation:
        """Extract one spectrum per integration.

        ``method`` is a registered extraction method (``"optimal"``, ``"box"``,
        or one from a plugin; see ``exomiri.methods("extraction")``) or a
        method class; its parameters (``aperture_center``,
        ``aperture_left_width``, ``aperture_right_width``, ``trace_position``,
        ...) are passed as keywords.  The profile from :meth:`clean` is used
        when ``clean`` ran after the last background subtraction; otherwise
        the method builds one from the data.  Adds ``spectra``.
        """
        from .hookspecs import ExtractionInput
        from .plugins import get_method

        t0 = perf_counter()
        self._require("wavelength", "obs.wavelength_map()", "extract")
        info = get_method("extraction", method, self.history)
        params = _check_params(info, method_params)
        profile_ok = self.profile is not None and self._last_index("clean") > self._last_index(
            "subtract_background"
        )
        if self.background is not None:
            from .steps.pixels import background_cubes

            background, background_err = background_cubes(self.background)
            background_err = np.broadcast_to(background_err, self.shape)
        else:
            background, background_err = np.zeros(1, np.float32), None
        background = np.broadcast_to(background, self.shape)
        frames = ExtractionInput(
            data=self.data,
            err=self.err,
            mask=_readonly(self.usable_mask(dq_bits_to_mask)),
            trace=self._calibrated_trace(),
            profile=self.profile if profile_ok else None,
            background=background,
            background_err=background_err,
            var_rnoise=self.var_rnoise,
            effinttm=float(self.meta.effinttm),
            row_offset=self.meta.row_offset,
            col_offset=self.meta.col_offset,
        )
        try:
            result = info.cls().extract(frames, **params)
        except Exception as exc:
            exc.add_note(f"in extraction method {info.name!r} from {info.distribution}=={info.version}")
            raise
        spectra = self._spectra_from(result, info)
        self._warn_blind_rows(frames.mask, spectra.trace_position)
        diagnostics = {
            "median_flux": float(np.nanmedian(spectra.flux)),
            "median_trace_position": float(np.nanmedian(spectra.trace_position)),
            "median_trace_sigma": float(np.nanmedian(spectra.trace_sigma)),
            "rejected": int(np.nansum(spectra.n_rejected)),
            "profile": "clean" if profile_ok else "built from data",
        }
        record = StepRecord.create(
            "extract",
            {"dq_bits_to_mask": dqflags.bit_numbers(dq_bits_to_mask), **params},
            method=info.name,
            provider=info.distribution,
            provider_version=info.version,
            diagnostics=diagnostics,
            duration_s=perf_counter() - t0,
        )
        return self.replace(record, spectra=spectra, shifts=None)

    #: Rows in a run at least this long where the trace core is never usable are
    #: beyond what a profile built from neighbouring rows can bridge.
    BLIND_RUN = 11

    def _warn_blind_rows(self, mask: np.ndarray, position: np.ndarray) -> None:
        """Warn where a pixel within one column of the trace is unusable in every
        integration over a run of rows (a saturated or dead column): no integration
        shows its flux, so no profile can restore it."""
        finite = np.isfinite(position)
        if not finite.any():
            return
        tilt = self._calibrated_trace()
        rows = self._default_rows((200, 390))
        anchor = np.nanmean(tilt[rows[0] : rows[1]]) if rows[1] > rows[0] else np.nan
        shape = np.where(np.isfinite(tilt) & np.isfinite(anchor), tilt - anchor, 0.0)
        centre = np.rint(shape + float(np.median(position[finite]))).astype(int)
        never = np.all(mask, axis=0)  # (nrows, ncols)
        r = np.arange(self.shape[1])
        blind = np.zeros(self.shape[1], dtype=bool)
        for offset in (-1, 0, 1):
            c = centre + offset
            inside = (c >= 0) & (c < self.shape[2])
            blind[inside] |= never[r[inside], c[inside]]
        # keep runs of at least BLIND_RUN rows
        edges = np.flatnonzero(np.diff(np.concatenate([[0], blind.astype(np.int8), [0]])))
        runs = [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True)]
        runs = [(int(a), int(b)) for a, b in runs if b - a >= self.BLIND_RUN]
        if runs:
            from .exceptions import DataWarning

            listed = ", ".join(f"{a}-{b - 1}" for a, b in runs[:5])
            warnings.warn(
                DataWarning(
                    f"extract: in rows {listed}{'...' if len(runs) > 5 else ''} a pixel within "
                    "one column of the trace is unusable in every integration (a saturated, "
                    "dead or fully masked column); no profile can restore its flux, so those "
                    "rows' fluxes may be low; the pixels are counted in spectra.n_rejected. Use them for "
                    "relative (transit) measurements only, or leave them out."
                ),
                stacklevel=3,
            )

    def _spectra_from(self, result: Any, info: Any) -> Spectra:
        nints, nrows, ncols = self.shape
        label = f"extraction method {info.name!r} from {info.distribution}=={info.version}"
        flux = np.asarray(result.flux, dtype=np.float64)
        flux_err = np.asarray(result.flux_err, dtype=np.float64)
        for name, arr in (("flux", flux), ("flux_err", flux_err)):
            if arr.shape != (nints, nrows):
                from .exceptions import PluginError

                raise PluginError(
                    f"The {label} returned {name} of shape {arr.shape}; expected {(nints, nrows)}."
                )
        position = np.broadcast_to(np.asarray(result.trace_position, dtype=np.float64), (nints,))
        sigma = np.broadcast_to(np.asarray(result.trace_sigma, dtype=np.float64), (nints,))
        rejected = (
            np.zeros((nints, nrows), np.int32)
            if result.n_rejected is None
            else np.asarray(result.n_rejected, dtype=np.int32)
        )
        # Wavelength of each row at the median trace position (the map may vary across columns).
        tilt = self._calibrated_trace()
        centre = float(np.nanmedian(position)) if np.isfinite(position).any() else 36.0
        rows_psf = self._default_rows((200, 390))
        anchor = np.nanmean(tilt[rows_psf[0] : rows_psf[1]])
        cols = np.clip(np.where(np.isfinite(tilt), tilt - anchor, 0.0) + centre, 0, ncols - 1)
        lo = np.floor(cols).astype(int)
        hi = np.minimum(lo + 1, ncols - 1)
        frac = cols - lo
        r = np.arange(nrows)
        wave = (1 - frac) * self.wavelength[r, lo] + frac * self.wavelength[r, hi]
        return Spectra(
            wavelength=wave,
            rows=np.arange(nrows),
            flux=flux,
            flux_err=flux_err,
            trace_position=np.array(position),
            trace_sigma=np.array(sigma),
            quality=WavelengthQuality.of(wave),
            n_rejected=rejected,
            method=info.name,
        )

    def align(
        self,
        align_spectra: bool = False,
        x_rows: tuple[int, int] | None = None,
        x_columns: tuple[int, int] | None = None,
    ) -> LRSObservation:
        """Measure the trace position against the time-median, per integration.

        ``shifts.y`` (dispersion) comes from the spectra, ``shifts.x``
        (cross-dispersion) from the column profile summed over ``x_rows``
        (default rows 200-389 on SLITLESSPRISM) and ``x_columns`` (12-67);
        positive means towards the higher index.  The shifts are fitted by
        least squares against an interpolated template, which is unbiased on
        smooth spectra.  ``align_spectra=True`` re-samples flux and errors onto
        the template's rows, propagating the errors through the interpolation.
        """
        from .steps import align as kernel

        t0 = perf_counter()
        self._require("spectra", "obs.extract()", "align")
        spectra = self.spectra
        align_spectra = _flag("align(align_spectra=...)", align_spectra)
        nrows, ncols = self.shape[1:]
        x_rows = (
            self._default_rows((200, 390))
            if x_rows is None
            else _pixel_range("align(x_rows", x_rows, nrows, "rows", "(200, 390)")
        )
        x_columns = (
            self._default_columns((12, 68))
            if x_columns is None
            else _pixel_range("align(x_columns", x_columns, ncols, "columns", "(12, 68)")
        )
        if x_columns[1] - x_columns[0] < 8:
            raise InputError(
                f"align(x_columns={x_columns}) spans {x_columns[1] - x_columns[0]} columns; the "
                "cross-dispersion shift is fitted to at least 8. Widen x_columns, e.g. (12, 68)."
            )
        if not (0 <= x_rows[0] < x_rows[1] <= nrows and 0 <= x_columns[0] < x_columns[1] <= ncols):
            raise InputError(
                f"align(x_rows={x_rows}, x_columns={x_columns}) must be half-open ranges inside "
                f"the {nrows} x {ncols} frame."
            )
        use = (spectra.quality & WavelengthQuality.NO_WAVELENGTH) == 0
        flux = np.where(use, spectra.flux, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            weights = np.where(use, 1.0 / spectra.flux_err**2, 0.0)
        weights[~np.isfinite(weights)] = 0.0
        y, y_err = kernel.measure_shifts(flux, weights=weights)
        x, x_err = kernel.cross_dispersion_shifts(self.data, self.err, x_rows, x_columns)
        shifts = Shifts(x=x, y=y, x_err=x_err, y_err=y_err)
        new_spectra = spectra
        if align_spectra:
            aligned_flux, aligned_err = kernel.resample(spectra.flux, spectra.flux_err, y)
            new_spectra = dataclasses.replace(
                spectra, flux=aligned_flux, flux_err=aligned_err, aligned=True
            )
        diagnostics = {
            "x_rms": float(np.nanstd(x)),
            "y_rms": float(np.nanstd(y)),
            "x_median_err": float(np.nanmedian(x_err)),
            "y_median_err": float(np.nanmedian(y_err)),
        }
        record = StepRecord.create(
            "align",
            {"align_spectra": bool(align_spectra), "x_rows": list(x_rows), "x_columns": list(x_columns)},
            diagnostics=diagnostics,
            duration_s=perf_counter() - t0,
        )
        return self.replace(record, shifts=shifts, spectra=new_spectra)

    # ---------------------------------------------------------- light curves
    def to_xarray(self):
        """The spectra and decorrelation vectors as an ``xarray.Dataset`` (time x wavelength)."""
        from .lightcurves import to_xarray

        return to_xarray(self)

    def light_curves(self, bins=None, *, resolution=None, pixels=None, wavelength_range=(5.0, 12.0)):
        """Binned spectral light curves and the white-light curve (``xarray.Dataset``).

        ``bins``: edges in micron; or ``resolution`` (R); or ``pixels`` (rows
        per bin); default 0.5 micron bins from 5 to 12 micron.
        """
        from .lightcurves import light_curves

        self._require("spectra", "obs.extract()", "light_curves")
        return light_curves(
            self, bins, resolution=resolution, pixels=pixels, wavelength_range=wavelength_range
        )

    # ------------------------------------------------------------- in and out
    def save(self, path: str) -> str:
        """Save everything to an HDF5 session file, atomically; returns the path."""
        import os

        from .io.hdf5 import save

        if not isinstance(path, str | os.PathLike):
            raise InputError(
                f"save(path={path!r}): expected a file name (str or pathlib.Path), e.g. "
                "obs.save('session.h5')."
            )
        return save(self, path)

    def write(self, path: str, segments: int | None = None) -> list[str]:
        """Write the cube as ``*_rateints.fits`` segment(s); returns the file names."""
        from .io.fits import write

        return write(self, path, segments=segments)


def _ranges(numbers: np.ndarray) -> list[list[int]]:
    """Integration numbers as [first, last] runs: compact in the history, exact."""
    numbers = np.asarray(numbers, dtype=np.int64)
    if numbers.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(numbers) != 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [numbers.size - 1]])
    return [[int(numbers[a]), int(numbers[b])] for a, b in zip(starts, ends, strict=True)]


def _check_params(info: Any, given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(info.parameters))
    if unknown:
        known = ", ".join(f"{k}={v!r}" for k, v in info.parameters.items()) or "none"
        raise InputError(
            f"The {info.kind} method {info.name!r} has no parameter(s) {', '.join(unknown)}. "
            f"Its parameters are: {known}."
        )
    return {**info.parameters, **given}


def _check_background_model(model: Any, shape: tuple[int, int, int], info: Any) -> BackgroundModel:
    from .exceptions import PluginError

    label = f"background method {info.name!r} from {info.distribution}=={info.version}"
    if not isinstance(model, BackgroundModel):
        raise PluginError(f"The {label} returned {type(model).__name__}; expected a BackgroundModel.")
    nints, nrows, ncols = shape
    if model.basis.shape[0] != ncols:
        raise PluginError(
            f"The {label} returned a basis for {model.basis.shape[0]} columns; the frame has {ncols}."
        )
    if model.coeffs.shape[0] != nints or model.coeffs.shape[1] not in (1, nrows):
        raise PluginError(
            f"The {label} returned coefficients of shape {model.coeffs.shape}; expected "
            f"({nints}, {nrows} or 1, k)."
        )
    return model
