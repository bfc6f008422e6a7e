"""Contract checks for background and extraction methods, for plugin authors.

Every method, built-in or from a plugin, should pass these checks.  Run them
in a plugin's own tests::

    from exomiri.testing import check_background_method

    def test_contract():
        check_background_method(MyBackground)

or through the ``exomiri_check`` fixture, which pytest finds by itself
wherever exomiri is installed (exomiri declares this module as a ``pytest11``
plugin)::

    def test_contract(exomiri_check):
        exomiri_check(MyBackground, order=2)     # the method's own parameters

A check runs the method on a small simulated observation
(:func:`contract_observation`), through the host
(``obs.subtract_background(method=...)`` or ``obs.extract(method=...)``) and
directly, and raises :class:`ContractError` (an ``AssertionError``) saying
what is wrong and how to fix it.  It verifies that

* the class is a valid method: a string ``name``, ``description``, and an
  ``estimate``/``extract`` whose parameters are keyword-only with defaults;
* the output has the documented shapes and dtypes, finite values and a
  symmetric, non-negative covariance (backgrounds) or positive errors
  (extractions);
* it is on the data's DN/s scale: a background near the level of the region
  pixels, a flux near the sum of the pixels around the trace and errors near
  the scatter between integrations (each within a factor of 2; a result in
  DN or electrons is off by the integration time or the gain);
* the inputs are left alone: the arrays it was given and the observation;
* its parameters survive a JSON round trip (``exomiri.provenance.jsonable``)
  unchanged, so the history records them exactly;
* it is deterministic: the same input gives the same output bit for bit;
* a session holding its products saves and loads back bit for bit, without
  a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import ExomiriWarning
from .plugins import KINDS, get_method
from .products import Product
from .provenance import StepRecord, jsonable

try:  # pytest is only needed for the fixture
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

__all__ = [
    "ContractError",
    "check_background_method",
    "check_extraction_method",
    "check_method",
    "contract_observation",
]

#: The small observation every check runs on: integrations and seed.
CONTRACT_NINTS = 16
CONTRACT_SEED = 2718
#: How far (a factor) a result may stray from the data's own scale.
SCALE_FACTOR = 2.0
#: Share of (integration, row) estimates that must be finite.
MIN_FINITE = 0.9
#: The step (verb) of each kind of method.
STEPS = {"background": "subtract_background", "extraction": "extract"}


class ContractError(AssertionError):
    """A method does not keep the contract every exomiri method keeps."""


def contract_observation(nints: int = CONTRACT_NINTS, seed: int = CONTRACT_SEED):
    """The small simulated observation the checks use, with wavelengths mapped.

    No transit (``depth=0``), so the flux changes between integrations by
    noise and jitter only.  Cached: observations are immutable.
    """
    return _simulated(int(nints), int(seed))


@functools.cache
def _simulated(nints: int, seed: int):
    import exomiri

    return exomiri.simulate(nints=nints, seed=seed, depth=0.0).wavelength_map()


@functools.cache
def _extraction_observation(nints: int, seed: int):
    return _simulated(nints, seed).subtract_background(method="row_wise")


def check_background_method(
    method_class: type,
    /,
    *,
    params: Mapping[str, Any] | None = None,
    observation=None,
    session_dir: str | Path | None = None,
):
    """Check a background method class; returns the observation it produced.

    ``params``: the method's parameters (default: its defaults).
    ``observation``: what to run on (default :func:`contract_observation`).
    ``session_dir``: where the session is saved (default: a temporary folder).
    """
    obs = contract_observation() if observation is None else observation
    return _check("background", method_class, obs, dict(params or {}), session_dir)


def check_extraction_method(
    method_class: type,
    /,
    *,
    params: Mapping[str, Any] | None = None,
    observation=None,
    session_dir: str | Path | None = None,
):
    """Check an extraction method class; returns the observation it produced.

    As :func:`check_background_method`; the default observation has its
    background subtracted with ``row_wise`` first.
    """
    if observation is None:
        observation = _extraction_observation(CONTRACT_NINTS, CONTRACT_SEED)
    return _check("extraction", method_class, observation, dict(params or {}), session_dir)


def check_method(method_class: type, /, **kwargs):
    """:func:`check_background_method` or :func:`check_extraction_method`, by the class's entry."""
    for kind, (_, entry) in KINDS.items():
        if callable(getattr(method_class, entry, None)):
            check = check_background_method if kind == "background" else check_extraction_method
            return check(method_class, **kwargs)
    raise ContractError(
        f"{method_class!r} has neither estimate() (a background method) nor extract() "
        "(an extraction method); see docs/plugins/writing.md."
    )


# --------------------------------------------------------------------------
# the check


def _check(kind: str, cls: type, obs, params: dict[str, Any], session_dir):
    entry = KINDS[kind][1]
    try:
        info = get_method(kind, cls)
    except (TypeError, ValueError) as exc:
        raise ContractError(f"{cls!r} is not a valid {kind} method: {exc}") from exc
    label = f"{kind} method {info.name!r} ({cls.__module__}.{cls.__qualname__})"
    if not info.description:
        raise ContractError(f"{label}: 'description' is empty; give one line saying what it does.")
    unknown = sorted(set(params) - set(info.parameters))
    if unknown:
        raise ContractError(f"{label} has no parameter(s) {', '.join(unknown)}.")
    effective = {**info.parameters, **params}
    for name, value in effective.items():
        _check_jsonable(label, name, value)

    before = _digest(obs)
    seen: list[Any] = []
    recorded = _host_run(kind, _recording(cls, entry, seen), obs, params, label)
    host = _host_run(kind, cls, obs, params, label)
    frames = seen[0]
    _same_products(label, recorded, host, kind, "two runs through the host")

    # directly, on writeable copies of what the host passed
    copies = dataclasses.replace(
        frames,
        **{k: np.array(v) for k, v in vars(frames).items() if isinstance(v, np.ndarray)},
    )
    result = getattr(cls(), entry)(copies, **effective)
    for name, value in vars(frames).items():
        if isinstance(value, np.ndarray) and not _identical(value, getattr(copies, name)):
            raise ContractError(
                f"{label} modified its input frames.{name}; methods must never write into "
                "their inputs (work on copies: np.array(x), x.astype(...), np.where(...))."
            )
    if _digest(obs) != before:
        raise ContractError(f"{label} modified the observation it ran on.")

    if kind == "background":
        _check_background(label, result, host, frames)
    else:
        _check_extraction(label, result, host, frames)
    _check_record(label, host.history[-1], info, kind)
    _check_session(label, host, session_dir)
    return host


def _recording(cls: type, entry: str, seen: list) -> type:
    """A subclass of ``cls`` whose entry also keeps the frames it was given."""
    original = getattr(cls, entry)

    @functools.wraps(original)
    def record(self, frames, **kwargs):
        seen.append(frames)
        return original(self, frames, **kwargs)

    return type(cls.__name__, (cls,), {entry: record, "__module__": cls.__module__})


def _host_run(kind: str, cls: type, obs, params: dict[str, Any], label: str):
    verb = getattr(obs, STEPS[kind])
    try:
        return verb(method=cls, **params)
    except Exception as exc:
        raise ContractError(
            f"{label} failed on the contract observation ({obs.nints} simulated "
            f"integrations): {type(exc).__name__}: {exc}"
        ) from exc


# --------------------------------------------------------------------------
# the pieces


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape, dtype and bytes (NaN payloads included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _digest(obs) -> dict[str, Any]:
    """A hash of every array of an observation (its products too), and its history."""
    out: dict[str, Any] = {"history": tuple(obs.history)}
    for f in dataclasses.fields(obs):
        value = getattr(obs, f.name)
        arrays = value.arrays() if isinstance(value, Product) else {"": value}
        for key, a in arrays.items():
            if isinstance(a, np.ndarray):
                digest = hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()
                out[f"{f.name}.{key}"] = (a.shape, str(a.dtype), digest)
    return out


def _check_jsonable(label: str, name: str, value: Any) -> None:
    rendered = jsonable(value)
    fell_back = isinstance(rendered, str) and not isinstance(value, str | float)
    hashed = isinstance(value, np.ndarray) and isinstance(rendered, dict)
    if fell_back or hashed or json.loads(json.dumps(rendered)) != rendered:
        raise ContractError(
            f"{label}: parameter {name}={value!r} is not recorded exactly in the history "
            f"(it becomes {rendered!r}). Use None, bools, numbers, strings, or lists/dicts of "
            "them (arrays of at most 16 numbers)."
        )


def _same_products(label: str, a, b, kind: str, what: str) -> None:
    field = "background" if kind == "background" else "spectra"
    for name, value in getattr(a, field).arrays().items():
        if not _identical(value, getattr(getattr(b, field), name)):
            raise ContractError(
                f"{label} is not deterministic: {field}.{name} differs between {what}. "
                "Seed any random generator from the input, never from the clock."
            )


def _check_background(label: str, model, host, frames) -> None:
    from .products import BackgroundModel

    nints, nrows, ncols = frames.data.shape
    if not isinstance(model, BackgroundModel):
        raise ContractError(f"{label} returned {type(model).__name__}; expected a BackgroundModel.")
    for name in ("basis", "coeffs", "cov"):
        if not _identical(getattr(model, name), getattr(host.background, name)):
            raise ContractError(
                f"{label} is not deterministic: model.{name} differs between a direct call "
                "and the run through the host."
            )
    k = model.basis.shape[1]
    if model.basis.shape != (ncols, k) or not np.isfinite(model.basis).all():
        raise ContractError(
            f"{label}: basis must be a finite ({ncols}, k) array; got shape {model.basis.shape} "
            f"with {int((~np.isfinite(model.basis)).sum())} non-finite values."
        )
    if model.coeffs.shape[:2] not in ((nints, nrows), (nints, 1)):
        raise ContractError(
            f"{label}: coeffs have shape {model.coeffs.shape}; expected ({nints}, {nrows} or 1, k)."
        )
    finite = np.isfinite(model.coeffs).all(axis=2)
    if finite.mean() < MIN_FINITE:
        raise ContractError(
            f"{label}: only {finite.mean():.0%} of the (integration, row) coefficients are "
            f"finite on a clean simulated observation; expected at least {MIN_FINITE:.0%}."
        )
    cov = model.cov[finite]
    if not np.isfinite(cov).all():
        raise ContractError(f"{label}: cov is not finite where the coefficients are.")
    scale = np.abs(cov).max() if cov.size else 0.0
    if not np.allclose(cov, cov.swapaxes(-1, -2), rtol=1e-8, atol=1e-12 * scale):
        raise ContractError(f"{label}: cov is not symmetric.")
    if (np.diagonal(cov, axis1=-2, axis2=-1) < 0).any():
        raise ContractError(f"{label}: cov has negative variances on its diagonal.")
    variance = model.variance()
    if (variance[np.isfinite(variance)] < -1e-9 * max(scale, 1e-300)).any():
        raise ContractError(f"{label}: the background variance is negative at some pixels.")

    # scale: the model against the region pixels, row by row
    region = np.asarray(frames.region)
    data = np.where(frames.mask, np.nan, frames.data)[:, :, region].astype(np.float64)
    level = np.broadcast_to(model.evaluate(), frames.data.shape)[:, :, region]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
        ratio = np.nanmedian(
            np.nanmedian(level, axis=(0, 2)) / np.nanmedian(data, axis=(0, 2))
        )
    _check_scale(label, "the background in the region", "the region pixels", ratio)


def _check_extraction(label: str, result, host, frames) -> None:
    nints, nrows, ncols = frames.data.shape
    fields = ("flux", "flux_err", "trace_position", "trace_sigma", "n_rejected")
    for name in fields:
        if not hasattr(result, name):
            raise ContractError(f"{label} returned {type(result).__name__} without {name!r}.")
    for name, shape in (("flux", (nints, nrows)), ("flux_err", (nints, nrows))):
        value = np.asarray(getattr(result, name))
        if value.shape != shape or value.dtype.kind != "f":
            raise ContractError(
                f"{label}: {name} is {value.dtype} of shape {value.shape}; expected floats "
                f"of shape {shape}."
            )
    for name in ("trace_position", "trace_sigma"):
        value = np.asarray(getattr(result, name))
        if value.shape != (nints,) or value.dtype.kind != "f":
            raise ContractError(
                f"{label}: {name} is {value.dtype} of shape {value.shape}; expected floats "
                f"of shape ({nints},), one per integration."
            )
    if result.n_rejected is not None:
        value = np.asarray(result.n_rejected)
        if value.shape != (nints, nrows) or value.dtype.kind not in "iu":
            raise ContractError(
                f"{label}: n_rejected is {value.dtype} of shape {value.shape}; expected "
                f"integers of shape ({nints}, {nrows}), or None."
            )
    for name in fields[:4]:
        direct = np.asarray(getattr(result, name), dtype=np.float64)
        if not _identical(direct, getattr(host.spectra, name)):
            raise ContractError(
                f"{label} is not deterministic: {name} differs between a direct call and the "
                "run through the host."
            )

    flux = np.asarray(result.flux, dtype=np.float64)
    err = np.asarray(result.flux_err, dtype=np.float64)
    position = np.asarray(result.trace_position, dtype=np.float64)
    sigma = np.asarray(result.trace_sigma, dtype=np.float64)
    if not (np.isfinite(position) & (position >= 0) & (position <= ncols - 1)).mean() >= MIN_FINITE:
        raise ContractError(
            f"{label}: trace_position must be a column inside the frame (0..{ncols - 1}) in "
            f"most integrations; got {position}."
        )
    if not (np.isfinite(sigma) & (sigma > 0) & (sigma < ncols)).mean() >= MIN_FINITE:
        raise ContractError(
            f"{label}: trace_sigma must be a positive width in pixels in most integrations; "
            f"got {sigma}."
        )
    # the bright rows: where the pixels around the trace hold most of the light
    trace = np.asarray(frames.trace, dtype=np.float64)
    fallback = np.nanmedian(trace) if np.isfinite(trace).any() else 36.0 + frames.col_offset
    centre = np.rint(np.where(np.isfinite(trace), trace, fallback)).astype(int)
    cols = np.clip(centre[:, None] + np.arange(-8, 9), 0, ncols - 1)
    data = np.where(frames.mask, np.nan, frames.data).astype(np.float64)
    box = np.nansum(np.take_along_axis(data, np.broadcast_to(cols, (nints, *cols.shape)), 2), 2)
    typical = np.median(box, axis=0)
    bright = typical > 0.2 * typical.max()
    finite = np.isfinite(flux[:, bright]) & np.isfinite(err[:, bright])
    if finite.mean() < MIN_FINITE:
        raise ContractError(
            f"{label}: flux or flux_err is not finite in {1 - finite.mean():.0%} of the "
            "bright rows of a clean simulated observation."
        )
    if (err[:, bright][finite] <= 0).any():
        raise ContractError(f"{label}: flux_err must be positive.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ratio = np.nanmedian(np.nanmedian(flux[:, bright], 0) / typical[bright])
        # the scatter between consecutive integrations (robust to slow changes)
        steps = np.diff(flux[:, bright], axis=0) / np.sqrt(2)
        scatter = 1.4826 * np.nanmedian(np.abs(steps - np.nanmedian(steps, 0)), 0)
        noise = np.nanmedian(np.nanmedian(err[:, bright], 0) / scatter)
    _check_scale(label, "the flux", "the sum of the 17 pixels around the trace", ratio)
    _check_scale(label, "flux_err", "the scatter of the flux between integrations", noise)


def _check_scale(label: str, what: str, reference: str, ratio: float) -> None:
    if not (np.isfinite(ratio) and 1 / SCALE_FACTOR <= ratio <= SCALE_FACTOR):
        raise ContractError(
            f"{label}: {what} is {ratio:.3g} times {reference}; expected within a factor of "
            f"{SCALE_FACTOR:g}. Results must be in the data's units (DN/s): divide DN by the "
            "integration time, electrons by the gain."
        )


def _check_record(label: str, record: StepRecord, info, kind: str) -> None:
    if record.step != STEPS[kind] or record.method != info.name:
        raise ContractError(f"{label}: the history records {record.summary()}.")
    if StepRecord.from_json(record.to_json()) != record:
        raise ContractError(f"{label}: its history record does not survive a JSON round trip.")


def _check_session(label: str, obs, session_dir) -> None:
    from .io.hdf5 import load

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(session_dir) if session_dir is not None else Path(scratch)
        path = obs.save(folder / "contract_session.h5")
        with warnings.catch_warnings():
            warnings.simplefilter("error", ExomiriWarning)
            try:
                loaded = load(path)
            except ExomiriWarning as warning:
                raise ContractError(f"{label}: loading its session warned: {warning}") from None
    before, after = _digest(obs), _digest(loaded)
    if before != after:
        differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        raise ContractError(
            f"{label}: a saved session does not load back bit for bit ({', '.join(differ)})."
        )


# --------------------------------------------------------------------------
# the pytest fixture (this module is registered as a pytest11 plugin)

if pytest is not None:

    @pytest.fixture
    def exomiri_check(tmp_path) -> Callable[..., Any]:
        """``exomiri_check(MethodClass, **params)``: :func:`check_method`, sessions under tmp_path."""

        def check(method_class: type, /, **params: Any):
            return check_method(method_class, params=params, session_dir=tmp_path)

        return check
