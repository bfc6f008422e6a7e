"""Drop-in replacements for the reference tool's stage-2 steps (ExoTiC-MIRI 1.0).

A script written for the reference tool switches to exomiri by changing its
imports::

    from exomiri.compat import GetWavelengthMap          # was exotic_miri.reference
    from exomiri.compat import (                         # was exotic_miri.stage_2
        AlignSpectraStep, BackgroundSubtractStep, CleanOutliersStep,
        Extract1DBoxStep, Extract1DOptimalStep,
    )

Each class has the reference's name, ``.call(...)`` arguments (with the same
defaults) and return values, and runs on exomiri's kernels.  ``.call`` works
on the class and on an instance (instance parameters, given to the
constructor, act as defaults), and ``.run`` on an instance.  The input is a
``jwst.datamodels.CubeModel`` (as loaded with ``datamodels.CubeModel(path)``),
a path to a ``*_rateints.fits`` file, or an :class:`~exomiri.LRSObservation`;
steps that return a cube return the same kind they were given.  ``.call``
never modifies its input: a returned model is a copy.

The intended differences from the reference are listed in each class's
docstring and in ``docs/migration.md``.  Nothing here contacts CRDS or runs a
``jwst`` pipeline step.

The reference's interactive ``draw_*`` options are accepted; they draw
nothing and warn, naming the :mod:`exomiri.plot` figure that shows the same.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .exceptions import ExomiriWarning, InputError
from .observation import (
    INT_TIMES_COLUMNS,
    INT_TIMES_DTYPE,
    LRSObservation,
    ObservationMeta,
    Segment,
)
from .products import BackgroundModel

__all__ = [
    "AlignSpectraStep",
    "BackgroundSubtractStep",
    "CleanOutliersStep",
    "Extract1DBoxStep",
    "Extract1DOptimalStep",
    "GetWavelengthMap",
]

#: Name of the node in which a returned data model carries the subtracted
#: background (``basis``, ``coeffs``, ``cov`` of a :class:`BackgroundModel`),
#: so that the extraction steps can count its noise.  It is saved with the
#: model (in the ASDF extension) and survives ``model.copy()``.
BACKGROUND_NODE = "exomiri_background"

#: Published SLITLESSPRISM pixel coordinates used by the reference steps.
DEFAULT_CENTER = 36
PSF_ROWS = (200, 390)
PSF_COLUMNS = (12, 68)
PROFILE_COLUMNS = (26, 47)
SIGMA_GUESS = 1.59


# --------------------------------------------------------------------------- conversion


def _native(array: Any, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("="))


def _attribute(node: Any, path: str, default: Any = None) -> Any:
    """``node.a.b.c`` for path "a.b.c", or ``default`` where a level is missing or None."""
    for name in path.split("."):
        try:
            node = getattr(node, name)
        except (AttributeError, KeyError):
            return default
        if node is None:
            return default
    return node


def _instance_array(model: Any, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """An array the data model really holds (reading an absent one would create a default)."""
    instance = getattr(model, "instance", {})
    if name not in instance:
        return None
    value = np.asarray(getattr(model, name))
    return value if value.shape == shape else None


def _int_times(model: Any, nints: int, first: int) -> np.ndarray:
    """The INT_TIMES records of the model's integrations; NaN times where it has none."""
    out = np.zeros(nints, dtype=INT_TIMES_DTYPE)
    out["integration_number"] = np.arange(first, first + nints)
    for name in INT_TIMES_COLUMNS[1:]:
        out[name] = np.nan
    table = getattr(model, "instance", {}).get("int_times")
    if table is None:
        return out
    table = np.asarray(table)
    names = table.dtype.names or ()
    if not all(name in names for name in INT_TIMES_COLUMNS) or len(table) == 0:
        return out
    numbers = np.asarray(table["integration_number"])
    wanted = np.arange(first, first + nints)
    rows = np.array([np.flatnonzero(numbers == n)[0] if np.any(numbers == n) else -1 for n in wanted])
    if np.all(rows >= 0):
        picked = table[rows]
    elif len(table) == nints:
        picked = table
    else:
        return out
    for name in INT_TIMES_COLUMNS:
        out[name] = picked[name]
    return out


def _meta(model: Any, shape: tuple[int, int, int]) -> ObservationMeta:
    nints, nrows, ncols = shape
    m = model.meta
    ngroups = int(_attribute(m, "exposure.ngroups", 0))
    tgroup = float(_attribute(m, "exposure.group_time", 0.0))
    effinttm = float(_attribute(m, "exposure.integration_time", 0.0)) or max(ngroups - 1, 0) * tgroup
    first = int(_attribute(m, "exposure.integration_start", 1))
    filename = str(_attribute(m, "filename", ""))
    return ObservationMeta(
        instrument=str(_attribute(m, "instrument.name", "MIRI")),
        detector=str(_attribute(m, "instrument.detector", "MIRIMAGE")),
        filter=str(_attribute(m, "instrument.filter", "P750L")),
        exp_type=str(_attribute(m, "exposure.type", "MIR_LRS-SLITLESS")),
        subarray=str(_attribute(m, "subarray.name", "")),
        substrt1=int(_attribute(m, "subarray.xstart", 1)),
        substrt2=int(_attribute(m, "subarray.ystart", 529)),
        subsize1=int(_attribute(m, "subarray.xsize", ncols)),
        subsize2=int(_attribute(m, "subarray.ysize", nrows)),
        nints=int(_attribute(m, "exposure.nints", nints)),
        ngroups=ngroups,
        nframes=int(_attribute(m, "exposure.nframes", 1)),
        tframe=float(_attribute(m, "exposure.frame_time", 0.0)),
        tgroup=tgroup,
        effinttm=effinttm,
        target=str(_attribute(m, "target.proposer_name", "") or _attribute(m, "target.catalog_name", "")),
        segments=(Segment(filename=filename, first=first, last=first + nints - 1),),
    )


def _from_model(model: Any, step: str) -> LRSObservation:
    """An observation sharing (or, for big-endian arrays, copying) the model's arrays."""
    data = getattr(model, "data", None)
    if data is None or np.ndim(data) != 3:
        raise InputError(
            f"{step}: the input holds {type(model).__name__} data of shape {np.shape(data)}; "
            "expected a cube (nints, nrows, ncols): open the *_rateints.fits with "
            "jwst.datamodels.CubeModel(path)."
        )
    shape = np.shape(data)
    err = _instance_array(model, "err", shape)
    dq = _instance_array(model, "dq", shape)
    wavelength = getattr(model, "instance", {}).get("wavelength")
    first = int(_attribute(model.meta, "exposure.integration_start", 1))
    var = {
        name: None if (a := _instance_array(model, name, shape)) is None else _native(a, np.float32)
        for name in ("var_poisson", "var_rnoise")
    }
    return LRSObservation(
        data=_native(data, np.float32),
        err=np.zeros(shape, np.float32) if err is None else _native(err, np.float32),
        dq=np.zeros(shape, np.uint32) if dq is None else _native(dq, np.uint32),
        int_times=_int_times(model, shape[0], first),
        meta=_meta(model, shape),
        wcs=_attribute(model.meta, "wcs"),
        wavelength_extension=(
            _native(wavelength, np.float64) if wavelength is not None and np.ndim(wavelength) == 2 else None
        ),
        **var,
    )


def _background_of(model: Any) -> BackgroundModel | None:
    """The background a compat step subtracted from this model, if it carries one."""
    node = getattr(model, "instance", {}).get(BACKGROUND_NODE)
    if node is None:
        return None
    try:
        background = BackgroundModel(
            basis=np.asarray(node["basis"]), coeffs=np.asarray(node["coeffs"]), cov=np.asarray(node["cov"])
        )
    except (KeyError, TypeError, ValueError):
        return None
    if background.nints != np.shape(model.data)[0] or background.basis.shape[0] != np.shape(model.data)[2]:
        return None  # integrations were dropped or the frame cut since: it no longer applies
    return background


class _Input:
    """What a step was given: the observation to work on and how to hand results back."""

    def __init__(self, value: Any, step: str) -> None:
        self.model = None
        if isinstance(value, LRSObservation):
            self.obs = value
            self.background = value.background
            return
        if not hasattr(value, "meta") or not hasattr(value, "data"):
            raise InputError(
                f"{step}: got {type(value).__name__}; expected a jwst.datamodels.CubeModel (from "
                "datamodels.CubeModel(path)), a *_rateints.fits path or an exomiri LRSObservation."
            )
        self.model = value
        self.obs = _from_model(value, step)
        self.background = _background_of(value)

    def output(self, obs: LRSObservation, background: BackgroundModel | None = None) -> Any:
        """The new cube as the kind that came in: an observation, or a copy of the model."""
        if self.model is None:
            return obs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.model.copy()
            out.data = np.array(obs.data, dtype=np.float32)
            out.err = np.array(obs.err, dtype=np.float32)
            out.dq = np.array(obs.dq, dtype=np.uint32)
            if background is not None:
                setattr(out, BACKGROUND_NODE, {
                    "basis": np.array(background.basis),
                    "coeffs": np.array(background.coeffs),
                    "cov": np.array(background.cov),
                })
        return out


def _open_model(path: str | os.PathLike, step: str) -> Any:
    from stdatamodels.jwst import datamodels

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{step}: {path}: no such file. Give a *_rateints.fits path or a CubeModel.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # schema chatter about unknown subarray names etc.
        return datamodels.CubeModel(path)


# --------------------------------------------------------------------------- the step base


class _CallMethod:
    """``Step.call(...)`` on the class (default parameters) and on an instance (its parameters)."""

    def __get__(self, instance: Any, owner: type) -> Any:
        step = instance if instance is not None else owner()
        return functools.partial(owner._call, step)


class _Step:
    """Shared machinery: parameters with defaults, checked by name; ``call`` and ``run``."""

    #: Parameter names and defaults, as in the reference's ``spec``.
    spec: ClassVar[dict[str, Any]] = {}
    #: Accepted ``draw_*`` options and the exomiri figure that shows the same.
    drawings: ClassVar[dict[str, str]] = {}

    call = _CallMethod()

    def __init__(self, **parameters: Any) -> None:
        self.parameters = self._check(parameters)

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        return f"{type(self).__name__}({given})"

    def _check(self, parameters: dict[str, Any]) -> dict[str, Any]:
        known = {**self.spec, **dict.fromkeys(self.drawings, False)}
        unknown = sorted(set(parameters) - set(known))
        if unknown:
            listing = ", ".join(f"{k}={v!r}" for k, v in known.items())
            raise InputError(
                f"{type(self).__name__} has no parameter(s) {', '.join(unknown)}. "
                f"Its parameters are: {listing}."
            )
        return dict(parameters)

    def _call(self, *args: Any, **parameters: Any) -> Any:
        params = {**self.spec, **self.parameters, **self._check(parameters)}
        for name, figure in self.drawings.items():
            if params.pop(name, False):
                warnings.warn(
                    ExomiriWarning(
                        f"{type(self).__name__}({name}=True): exomiri.compat draws nothing "
                        f"interactively; use {figure} on an exomiri observation instead."
                    ),
                    stacklevel=3,
                )
        if args and isinstance(args[0], str | os.PathLike):
            model = _open_model(args[0], type(self).__name__)
            try:
                return self.process(model, *args[1:], **params)
            finally:
                model.close()
        return self.process(*args, **params)

    def run(self, *args: Any) -> Any:
        """Run with the parameters given to the constructor."""
        return self._call(*args)

    def process(self, *args: Any, **params: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


def _heights(window_heights: Any, window_widths: Any) -> tuple[int, ...]:
    given = [w for w in (window_heights, window_widths) if w is not None]
    if len(given) == 2 and list(np.atleast_1d(window_heights)) != list(np.atleast_1d(window_widths)):
        raise InputError(
            f"CleanOutliersStep: window_heights={window_heights!r} and window_widths="
            f"{window_widths!r} disagree; they are two names of one parameter: give one."
        )
    if not given:
        return (40,)
    value = given[0]
    if isinstance(value, int | np.integer):
        return (int(value),)
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        raise InputError(
            f"CleanOutliersStep: window_heights={value!r} must be a list of row counts, "
            "e.g. window_heights=[40]."
        )
    return tuple(value)


def _trace_mode(step: str, trace_position: Any, aperture_center: Any, default_center: float):
    """(mode, centre): ``trace_position`` may be a mode name or, as on the reference's
    documentation page, the column of a constant trace."""
    from .steps.extract import TRACE_MODES

    centre = default_center if aperture_center is None else aperture_center
    if isinstance(trace_position, bool) or not isinstance(trace_position, str | int | float | np.number):
        raise InputError(
            f"{step}: trace_position={trace_position!r} must be 'constant', 'gaussian_fits' "
            "(or exomiri's 'trace'), or the column of a constant trace, e.g. trace_position=36."
        )
    if not isinstance(trace_position, str):
        if aperture_center is not None and float(aperture_center) != float(trace_position):
            raise InputError(
                f"{step}: trace_position={trace_position!r} and aperture_center="
                f"{aperture_center!r} name two different columns for a constant trace; give "
                "trace_position='constant' and the column as aperture_center."
            )
        return "constant", float(trace_position)
    if trace_position not in TRACE_MODES:
        raise InputError(
            f"{step}: trace_position={trace_position!r} is not one of "
            f"{', '.join(map(repr, TRACE_MODES))} (or a column number)."
        )
    if isinstance(centre, bool) or not isinstance(centre, int | float | np.number) or not np.isfinite(centre):
        raise InputError(f"{step}: aperture_center={aperture_center!r} must be a column number, e.g. 36.")
    return trace_position, float(centre)


def _wavelength_map(step: str, wavelength_map: Any, nrows: int) -> np.ndarray:
    wave = np.asarray(wavelength_map, dtype=np.float64)
    if wave.ndim != 2 or wave.shape[0] != nrows:
        raise InputError(
            f"{step}: wavelength_map has shape {wave.shape}; expected ({nrows}, ncols), one row per "
            "detector row, as GetWavelengthMap.call(model) returns."
        )
    return wave


def _wavelengths(wave: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The map's column at the median trace position, truncated to an integer as the reference does."""
    column = int(np.nanmedian(positions)) if np.isfinite(positions).any() else DEFAULT_CENTER
    return np.array(wave[:, int(np.clip(column, 0, wave.shape[1] - 1))])


# --------------------------------------------------------------------------- the steps


class GetWavelengthMap(_Step):
    """The wavelength (micron) of every pixel, shape (nrows, ncols): reference ``GetWavelengthMap``.

    ``call(model, trim_col_start=0, trim_col_end=None, save=False,
    save_path=None, source="auto")``.  Evaluates the model's WCS where
    ``assign_wcs`` attached one, else the file's WAVELENGTH array, else the
    bundled flight calibration (FLT-2); exomiri's
    :meth:`~exomiri.LRSObservation.wavelength_map`.

    Intended difference: it needs no ``assign_wcs``/``srctype`` run (hence
    no CRDS): without a WCS it falls back to the bundled calibration instead
    of failing; ``save=True`` writes ``<file stem>_wavelengthmap.fits`` into
    ``save_path`` (the reference's ``save`` fails).
    """

    spec: ClassVar[dict[str, Any]] = {
        "trim_col_start": 0,
        "trim_col_end": None,
        "save": False,
        "save_path": None,
        "source": "auto",
    }

    def process(self, input: Any, **params: Any) -> np.ndarray:
        given = _Input(input, "GetWavelengthMap")
        wave = np.array(given.obs.wavelength_map(source=params["source"]).wavelength)
        wave = wave[:, params["trim_col_start"] : params["trim_col_end"]]
        if params["save"]:
            from astropy.io import fits

            folder = params["save_path"] or "."
            if not os.path.isdir(folder):
                raise InputError(
                    f"GetWavelengthMap(save=True): save_path={folder!r} is not a folder; give an "
                    "existing folder to write the map into."
                )
            stem = os.path.splitext(given.obs.meta.segments[0].filename or "exomiri")[0]
            fits.PrimaryHDU(wave).writeto(
                os.path.join(folder, f"{stem}_wavelengthmap.fits"), overwrite=True
            )
        return wave


class CleanOutliersStep(_Step):
    """Spatial-profile outlier cleaning: reference ``CleanOutliersStep``.

    ``call(model, dq_bits_to_mask=None, window_heights=None (or window_widths),
    poly_order=4, outlier_threshold=4.0, spatial_profile_left_idx=None,
    spatial_profile_right_idx=None, weighted=False)`` returns ``(cleaned, P,
    O)``: a cleaned copy of the model, the spatial profile ``P`` (nints,
    nrows, ncols; the polynomial fits, negatives set to 0, kept in columns
    [left, right) = [26, 47) on SLITLESSPRISM, each row summing to 1) and
    ``O`` (nints, nrows, 5), per row the replaced pixels within 0..4 columns
    of the trace.  exomiri's :meth:`~exomiri.LRSObservation.clean`.

    Intended differences: DQ flags are OR-ed (OUTLIER), not added (adding 16
    twice carries into bit 5); the input is not modified; outliers are found
    with the externally studentized residual (the reference's ``|r| /
    std(r)`` cannot exceed about 4.9 at the edge of a 40-row window, so a
    threshold of 5 misses single outliers of any size there); replaced
    pixels get the fit's uncertainty as ``err``; ``O`` counts replaced pixels
    around the trace located in the data (the reference counts every pixel
    with any DQ flag around column 36); ``P`` is float32.  The windows default
    to [40] (the reference needs them given); ``no_clean=True`` only sets
    NaN to 0, as in the reference, and returns zero ``P`` and ``O``.
    """

    spec: ClassVar[dict[str, Any]] = {
        "dq_bits_to_mask": None,
        "window_heights": None,
        "window_widths": None,
        "poly_order": 4,
        "outlier_threshold": 4.0,
        "spatial_profile_left_idx": None,
        "spatial_profile_right_idx": None,
        "weighted": False,
        "no_clean": False,
    }
    drawings: ClassVar[dict[str, str]] = {
        "draw_cleaning_col": "obs.plot.cleaning(column, integration)",
        "draw_spatial_profiles": "obs.plot.cleaning_map()",
    }

    def process(self, input: Any, **params: Any) -> tuple[Any, np.ndarray, np.ndarray]:
        given = _Input(input, "CleanOutliersStep")
        obs = given.obs
        heights = _heights(params.pop("window_heights"), params.pop("window_widths"))
        if params.pop("no_clean"):
            data = np.nan_to_num(obs.data)
            out = given.output(obs.replace(data=data), given.background)
            return out, np.zeros(obs.shape, np.float32), np.zeros((*obs.shape[:2], 5), np.int32)
        cleaned = obs.clean(window_heights=heights, **params)
        out = given.output(cleaned, given.background)
        return out, np.array(cleaned.profile), np.array(cleaned.outlier_counts)


class BackgroundSubtractStep(_Step):
    """Background from off-source columns, subtracted: reference ``BackgroundSubtractStep``.

    ``call(model, method="row_wise", bkg_col_left_start=8,
    bkg_col_left_end=17, bkg_col_right_start=56, bkg_col_right_end=72,
    smoothing_length=None, dq_bits_to_mask=[0], return_background=False)``
    returns the background-subtracted copy of the model, as the reference
    tool's documentation page uses it (``proc = step.call(proc,
    method="row_wise")``).  ``return_background=True`` returns ``(model,
    background)`` instead, the cube (nints, nrows, ncols) float64 the
    reference's code returns (scripts written as ``_, bkg =
    step.call(...)`` add this one keyword).  Methods ``constant``,
    ``row_wise``, ``col_wise`` (and any installed exomiri background
    method); exomiri's :meth:`~exomiri.LRSObservation.subtract_background`.

    Intended differences: the background's own noise is added to ``err``
    (the reference leaves ``err`` untouched); pixels that are NaN or carry
    ``dq_bits_to_mask`` (and were not replaced by cleaning) are left out of
    the estimate instead of making it NaN; ``col_wise`` is a sigma-clipped
    least-squares line through all pixels of both regions (the reference
    draws a line through the two regions' medians); rows without a
    background are flagged DO_NOT_USE; the returned model carries the
    subtracted background (node ``exomiri_background``) so that the
    extraction steps count its noise.
    """

    spec: ClassVar[dict[str, Any]] = {
        "method": "row_wise",
        "bkg_col_left_start": 8,
        "bkg_col_left_end": 17,
        "bkg_col_right_start": 56,
        "bkg_col_right_end": 72,
        "smoothing_length": None,
        "dq_bits_to_mask": (0,),
        "return_background": False,
    }

    def process(self, input: Any, **params: Any) -> Any:
        given = _Input(input, "BackgroundSubtractStep")
        regions = (
            (params["bkg_col_left_start"], params["bkg_col_left_end"]),
            (params["bkg_col_right_start"], params["bkg_col_right_end"]),
        )
        subtracted = given.obs.subtract_background(
            method=params["method"],
            regions=regions,
            smoothing_length=params["smoothing_length"],
            dq_bits_to_mask=params["dq_bits_to_mask"],
        )
        out = given.output(subtracted, subtracted.background)
        if params["return_background"]:
            return out, subtracted.background.evaluate()
        return out


def _extraction_frames(given: _Input, params: dict[str, Any], profile: Any = None, var_rnoise: Any = None):
    from .hookspecs import ExtractionInput

    obs = given.obs
    background = given.background
    if background is not None:
        level = background.evaluate(dtype=np.float32)
        level_err = np.sqrt(background.variance(dtype=np.float32))
    else:
        level, level_err = np.zeros(1, np.float32), None
    return ExtractionInput(
        data=obs.data,
        err=obs.err,
        mask=obs.usable_mask(params["dq_bits_to_mask"]),
        trace=obs._calibrated_trace(),
        profile=profile,
        background=np.broadcast_to(level, obs.shape),
        background_err=None if level_err is None else np.broadcast_to(level_err, obs.shape),
        var_rnoise=var_rnoise,
        effinttm=float(obs.meta.effinttm),
        row_offset=obs.meta.row_offset,
        col_offset=obs.meta.col_offset,
    )


def _widths(step: str, left: Any, right: Any) -> tuple[float, float]:
    out = []
    for name, value in (("aperture_left_width", left), ("aperture_right_width", right)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not value >= 0:
            raise InputError(f"{step}: {name}={value!r} must be a number of columns >= 0, e.g. 4.")
        out.append(float(value))
    return out[0], out[1]


class Extract1DBoxStep(_Step):
    """Box extraction: reference ``Extract1DBoxStep``.

    ``call(model, wavelength_map, trace_position="constant",
    aperture_center=36, aperture_left_width=4, aperture_right_width=4,
    dq_bits_to_mask=[0])`` returns ``(wavelengths (nrows,), spectra (nints,
    nrows), uncertainties (nints, nrows), trace_sigmas (nints,))``.
    ``trace_position``: ``"constant"`` (the aperture at ``aperture_center``),
    ``"gaussian_fits"`` (at the PSF centre fitted in each integration), or a
    column number (a constant trace there, as on the reference's
    documentation page).  Every row sums the columns ``[rint(c - L),
    rint(c + R + 1))``, exactly the reference's pixel set; the wavelengths
    are the map's column ``int(median centre)``; ``trace_sigmas`` is the
    width of a Gaussian plus offset fitted to the median of rows 200-389
    over columns 12-67 in each integration.

    Intended differences: a pixel in the aperture that is NaN or carries
    ``dq_bits_to_mask`` (and was not replaced by cleaning) is restored from
    the spatial profile instead of making the row NaN or adding its junk;
    uncertainties include the noise of a background subtracted by
    ``BackgroundSubtractStep``, which is shared by the pixels of a row (the
    reference's ``sqrt(sum err^2)`` counts it as independent); a failed PSF
    fit falls back to ``aperture_center`` instead of a NaN aperture.  For a
    box whose edges follow the tilted trace with fractional pixels, use
    exomiri's ``obs.extract(method="box")``.
    """

    spec: ClassVar[dict[str, Any]] = {
        "trace_position": "constant",
        "aperture_center": None,
        "aperture_left_width": 4,
        "aperture_right_width": 4,
        "dq_bits_to_mask": (0,),
    }
    drawings: ClassVar[dict[str, str]] = {
        "draw_psf_fits": "obs.plot.shifts()",
        "draw_aperture": "obs.plot.frame()",
        "draw_spectra": "obs.plot.spectra()",
    }

    def process(self, input: Any, wavelength_map: Any, **params: Any):
        from .steps import extract as kernels

        step = "Extract1DBoxStep"
        given = _Input(input, step)
        obs = given.obs
        _, nrows, ncols = obs.shape
        off_r, off_c = obs.meta.row_offset, obs.meta.col_offset
        wave = _wavelength_map(step, wavelength_map, nrows)
        mode, centre = _trace_mode(
            step, params["trace_position"], params["aperture_center"], DEFAULT_CENTER + off_c
        )
        left, right = _widths(step, params["aperture_left_width"], params["aperture_right_width"])
        if np.rint(centre - left) < 0 or np.rint(centre + right + 1) > ncols:
            raise InputError(
                f"{step}: the aperture [rint({centre:g} - {left:g}), rint({centre:g} + {right:g} + 1)) "
                f"leaves the frame's columns 0..{ncols - 1}; move aperture_center or narrow it."
            )
        frames = _extraction_frames(given, params)
        fit_rows = (PSF_ROWS[0] + off_r, PSF_ROWS[1] + off_r)
        position, sigma = kernels.fit_psf(
            frames.data, fit_rows, (PSF_COLUMNS[0] + off_c, PSF_COLUMNS[1] + off_c), SIGMA_GUESS,
            mask=frames.mask,
        )
        centres = kernels.aperture_centers(mode, centre, frames.trace, position, fit_rows=fit_rows)
        weights = kernels.aperture_mask(centres, left, right, ncols).astype(np.float32)
        flux, flux_err, _ = kernels.box(
            frames.data,
            frames.err,
            weights,
            frames.mask,
            None,
            profile_columns=(PROFILE_COLUMNS[0] + off_c, PROFILE_COLUMNS[1] + off_c),
            background_err=frames.background_err,
        )
        return _wavelengths(wave, centres[:, 0]), flux, flux_err, sigma


class Extract1DOptimalStep(_Step):
    """Optimal extraction (Horne 1986): reference ``Extract1DOptimalStep``.

    ``call(model, wavelength_map, P, readnoise, median_spatial_profile=False,
    trace_position="constant", aperture_center=36, aperture_left_width=8,
    aperture_right_width=8, gain=3.1, rejection_threshold=5.0,
    max_iterations=10, dq_bits_to_mask=[0])`` returns the same four arrays as
    :class:`Extract1DBoxStep`.  ``P`` is the spatial profile from
    :class:`CleanOutliersStep` ((nints, nrows, ncols) or one (nrows, ncols)
    frame); ``readnoise`` the read noise of one read in DN (a number, an
    array broadcasting to the cube, or a ``ReadnoiseModel``), or None to use
    the file's VAR_RNOISE.  The aperture is the integer pixel set
    ``[rint(c - L), rint(c + R + 1))``; exomiri's ``optimal`` extraction
    method.

    Intended differences: the variance model has consistent units: read
    noise converted to the variance of the fitted slope, ``12 readnoise^2 /
    (ngroups (ngroups^2 - 1) tgroup^2)`` in (DN/s)^2, plus the Poisson
    noise of the star's model and of the subtracted background at ``gain``
    e-/DN over the effective integration time (the reference adds DN of read
    noise to DN/s of flux, without gain or time, and returns NaN when the
    read noise is 0); pixels deviating by more than ``rejection_threshold``
    sigma are rejected one at a time (Horne's step 7; ``max_iterations=0``
    turns this off); masked pixels are left out; the error is ``1 /
    sqrt(sum(P^2 / V))`` and counts the subtracted background's shared
    noise; ``median_spatial_profile=True`` moves the median profile with each
    integration's measured position.
    """

    spec: ClassVar[dict[str, Any]] = {
        "median_spatial_profile": False,
        "trace_position": "constant",
        "aperture_center": None,
        "aperture_left_width": 8,
        "aperture_right_width": 8,
        "gain": 3.1,
        "rejection_threshold": 5.0,
        "max_iterations": 10,
        "dq_bits_to_mask": (0,),
    }
    drawings: ClassVar[dict[str, str]] = Extract1DBoxStep.drawings

    def process(self, input: Any, wavelength_map: Any, P: Any, readnoise: Any, **params: Any):
        from .builtin.extraction import Optimal

        step = "Extract1DOptimalStep"
        given = _Input(input, step)
        obs = given.obs
        nints, nrows, _ = obs.shape
        wave = _wavelength_map(step, wavelength_map, nrows)
        mode, centre = _trace_mode(
            step, params["trace_position"], params["aperture_center"], DEFAULT_CENTER + obs.meta.col_offset
        )
        profile = np.asarray(P)
        if profile.shape not in (obs.shape, obs.shape[1:]):
            raise InputError(
                f"{step}: P has shape {profile.shape}; expected {obs.shape} (one profile per "
                f"integration, as CleanOutliersStep returns) or {obs.shape[1:]}."
            )
        profile = np.broadcast_to(profile, obs.shape)
        frames = _extraction_frames(given, params, profile, _read_variance(step, readnoise, obs))
        result = Optimal().extract(
            frames,
            aperture_center=centre,
            aperture_left_width=params["aperture_left_width"],
            aperture_right_width=params["aperture_right_width"],
            trace_position=mode,
            gain=params["gain"],
            rejection_threshold=params["rejection_threshold"],
            max_iterations=params["max_iterations"],
            median_spatial_profile=bool(params["median_spatial_profile"]),
        )
        positions = np.full(nints, centre) if mode == "constant" else result.trace_position
        return (
            _wavelengths(wave, positions),
            np.asarray(result.flux),
            np.asarray(result.flux_err),
            np.asarray(result.trace_sigma),
        )


def _read_variance(step: str, readnoise: Any, obs: LRSObservation) -> np.ndarray | None:
    """Read noise of one read (DN) as the variance of the fitted slope ((DN/s)^2)."""
    if readnoise is None:
        return obs.var_rnoise
    rn = np.asarray(getattr(readnoise, "data", readnoise), dtype=np.float64)
    n, tgroup = obs.meta.ngroups, obs.meta.tgroup
    if n < 2 or not tgroup > 0:
        raise InputError(
            f"{step}: converting readnoise to the variance of a slope needs NGROUPS >= 2 and "
            f"TGROUP > 0 from the file's header; got NGROUPS={n}, TGROUP={tgroup}. Pass "
            "readnoise=None to use the file's VAR_RNOISE."
        )
    try:
        rn = np.broadcast_to(rn, obs.shape)
    except ValueError:
        raise InputError(
            f"{step}: readnoise has shape {rn.shape}, which does not broadcast to the cube "
            f"{obs.shape}; give a number, a ({obs.shape[1]}, {obs.shape[2]}) frame or a cube."
        ) from None
    return 12.0 * rn**2 / (n * (n * n - 1) * tgroup**2)


class AlignSpectraStep(_Step):
    """Trace positions over time, and optionally re-aligned spectra: reference ``AlignSpectraStep``.

    ``call(model, spec, spec_unc, align_spectra=True)`` returns ``(spec,
    spec_unc, x_shifts, y_shifts)``: y (dispersion) shifts of each spectrum
    against the time-median, x (cross-dispersion) shifts of the column
    profile summed over rows 200-389 and columns 12-67; positive means
    towards the higher index.  With ``align_spectra=True`` (the reference
    code's default; its docstring says False) the spectra are re-sampled
    onto the median's rows, ``aligned(r) = spec(r + y)``.  exomiri's
    :meth:`~exomiri.LRSObservation.align`.

    Intended differences: shifts come from a weighted least-squares fit of
    the interpolated template (the reference's parabola through the
    cross-correlation peak has been measured 25-40% low on smooth,
    featureless spectra) and ignore NaN; re-alignment propagates
    the errors through the interpolation (the reference interpolates them
    like fluxes) and gives NaN where it would extrapolate.
    """

    spec: ClassVar[dict[str, Any]] = {"align_spectra": True}
    drawings: ClassVar[dict[str, str]] = {
        "draw_cross_correlation_fits": "obs.plot.shifts()",
        "draw_trace_positions": "obs.plot.shifts()",
    }

    def process(self, input: Any, spec: Any, spec_unc: Any, **params: Any):
        from .steps import align as kernel

        step = "AlignSpectraStep"
        given = _Input(input, step)
        obs = given.obs
        flux = np.asarray(spec, dtype=np.float64)
        err = np.asarray(spec_unc, dtype=np.float64)
        if flux.ndim != 2 or flux.shape[0] != obs.nints or err.shape != flux.shape:
            raise InputError(
                f"{step}: spec {flux.shape} and spec_unc {err.shape} must both be (nints, nrows) "
                f"with nints = {obs.nints}, as the extraction steps return them."
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            weights = np.where(np.isfinite(err) & (err > 0), 1.0 / err**2, 0.0)
        y, _ = kernel.measure_shifts(flux, weights=weights)
        rows = obs._default_rows(PSF_ROWS)
        columns = obs._default_columns(PSF_COLUMNS)
        x, _ = kernel.cross_dispersion_shifts(obs.data, obs.err, rows, columns)
        if params["align_spectra"]:
            flux, err = kernel.resample(flux, err, y)
        return flux, err, x, y

