"""exomiri: spectral time series from JWST MIRI LRS slitless observations.

>>> import exomiri
>>> obs = exomiri.simulate(nints=50, seed=1)
>>> obs = obs.wavelength_map().clean().subtract_background().extract().align()
>>> obs.spectra.flux.shape
(50, 416)

The public face is small: :func:`open` (read ``*_rateints.fits`` segments),
:func:`load` (a saved session), :func:`simulate` (a synthetic observation with
a known transit), :class:`LRSObservation`, :func:`reduce` (a long observation
chunk by chunk in bounded memory, optionally on Dask; returns a
:class:`Reduction` when the cubes go to a session file), :func:`methods` and
:func:`list_plugins`, :data:`hookimpl` for plugin authors, and the exceptions.
Submodules load lazily so that ``import exomiri`` stays quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .exceptions import (
    DataWarning,
    DuplicateMethodError,
    ExomiriError,
    ExomiriWarning,
    InputError,
    PluginError,
    PluginWarning,
    SessionFormatError,
    StepOrderError,
    UnknownMethodError,
)
from .hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from .chunked import Reduction, reduce
    from .io.fits import open
    from .io.hdf5 import load
    from .observation import LRSObservation
    from .plugins import list_plugins, methods
    from .simulation import simulate

__all__ = [
    "DataWarning",
    "DuplicateMethodError",
    "ExomiriError",
    "ExomiriWarning",
    "InputError",
    "LRSObservation",
    "PluginError",
    "PluginWarning",
    "Reduction",
    "SessionFormatError",
    "StepOrderError",
    "UnknownMethodError",
    "__version__",
    "hookimpl",
    "list_plugins",
    "load",
    "methods",
    "open",
    "reduce",
    "simulate",
]

_LAZY = {
    "open": ".io.fits",
    "load": ".io.hdf5",
    "LRSObservation": ".observation",
    "simulate": ".simulation",
    "methods": ".plugins",
    "list_plugins": ".plugins",
    "reduce": ".chunked",
    "Reduction": ".chunked",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("exomiri")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            return "0+unknown"
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'exomiri' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
