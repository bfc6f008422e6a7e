"""Hook specifications: how background and extraction methods join exomiri.

A plugin is a module (or object) with functions marked ``@exomiri.hookimpl``
whose names match the specs below.  It is found through the entry-point group
``exomiri``::

    [project.entry-points.exomiri]
    my_methods = "my_package.exomiri_plugin"

The built-in methods in :mod:`exomiri.builtin` register through these very
hooks.  A method is a small class with ``name``, ``description`` and one method
(``estimate`` for backgrounds, ``extract`` for extractions) whose parameters
after the input are keyword-only with defaults; exomiri discovers them from
the signature, validates what users pass, and records them in the provenance.

The host owns the arithmetic: a background method returns a
:class:`BackgroundModel`, and the host subtracts it, adds its variance to
``err`` and stores it; an extraction method returns an
:class:`ExtractionResult`, and the host attaches wavelengths and quality.
Methods receive plain arrays and never touch files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pluggy

from .products import BackgroundModel

__all__ = [
    "BackgroundInput",
    "BackgroundModel",
    "ExtractionInput",
    "ExtractionResult",
    "exomiri_register_background_methods",
    "exomiri_register_extraction_methods",
    "hookimpl",
    "hookspec",
]

PROJECT = "exomiri"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class BackgroundInput:
    """What a background method sees (all arrays read-only).

    ``data``/``err``: (nints, nrows, ncols) float, DN/s.
    ``mask``: (nints, nrows, ncols) bool, True where a pixel must not be used
    (NaN, or flagged DO_NOT_USE and not replaced by ``clean``).
    ``region``: (ncols,) bool, True on the background columns the user chose.
    ``columns``: (ncols,) float, the column index of each column.
    """

    data: np.ndarray
    err: np.ndarray
    mask: np.ndarray
    region: np.ndarray
    columns: np.ndarray


@dataclass(frozen=True)
class ExtractionInput:
    """What an extraction method sees (all arrays read-only).

    ``data``/``err``/``mask``: (nints, nrows, ncols), as for backgrounds.
    ``trace``: (nrows,) the calibrated trace centre column of each row (its
    tilt); ``profile``: (nints, nrows, ncols) spatial profile normalised per
    row, or None when none is available; ``background``: (nints, nrows, ncols)
    background already subtracted from ``data`` (zeros if none was), for
    variance models; ``var_rnoise``: read-noise variance cube (DN/s)^2 or None;
    ``effinttm``: effective integration time (s).  ``row_offset`` and
    ``col_offset`` convert pixel coordinates given for the ``SLITLESSPRISM``
    subarray (the frame of every published default, e.g. aperture centre 36)
    to this subarray's: add them (both 0 for ``SLITLESSPRISM``).
    """

    data: np.ndarray
    err: np.ndarray
    mask: np.ndarray
    trace: np.ndarray
    profile: np.ndarray | None
    background: np.ndarray
    var_rnoise: np.ndarray | None
    effinttm: float
    row_offset: int = 0
    col_offset: int = 0
    background_err: np.ndarray | None = None


@dataclass(frozen=True)
class ExtractionResult:
    """What an extraction method returns.

    ``flux``/``flux_err``: (nints, nrows) in the data's units;
    ``trace_position``/``trace_sigma``: (nints,) PSF centre column and Gaussian
    width; ``n_rejected``: (nints, nrows) pixels left out (optional).
    """

    flux: np.ndarray
    flux_err: np.ndarray
    trace_position: np.ndarray
    trace_sigma: np.ndarray
    n_rejected: np.ndarray | None = None


Register = Callable[[type], None]


@hookspec
def exomiri_register_background_methods(register: Register) -> None:
    """Register background methods.

    Call ``register(MethodClass)`` once per method.  The class needs ``name``
    (str), ``description`` (str) and
    ``estimate(self, frames: BackgroundInput, *, <parameters with defaults>)
    -> BackgroundModel``.  Not ``firstresult``: every plugin is called.
    """


@hookspec
def exomiri_register_extraction_methods(register: Register) -> None:
    """Register extraction methods.

    Call ``register(MethodClass)`` once per method.  The class needs ``name``
    (str), ``description`` (str) and
    ``extract(self, frames: ExtractionInput, *, <parameters with defaults>)
    -> ExtractionResult``.  Not ``firstresult``: every plugin is called.
    """
