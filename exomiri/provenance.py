"""Provenance: one :class:`StepRecord` per step, appended, never edited."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

__all__ = ["StepRecord", "core_versions", "jsonable"]

_CORE_PACKAGES = ("exomiri", "numpy", "scipy", "astropy", "jwst", "pluggy", "h5py")


@functools.cache
def core_versions() -> dict[str, str]:
    """Versions of Python and the core packages, for the record."""
    versions = {"python": platform.python_version()}
    for name in _CORE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def jsonable(value: Any) -> Any:
    """A JSON-safe rendering of a parameter value.

    Arrays are replaced by their shape, dtype and a short hash, so a record
    stays small and still tells two different arrays apart.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if np.isfinite(value) else str(value)
    if isinstance(value, np.ndarray):
        if value.size <= 16 and value.ndim <= 1 and value.dtype.kind in "biuf":
            return jsonable(value.tolist())
        digest = hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest()[:12]
        return {"array": {"shape": list(value.shape), "dtype": str(value.dtype), "sha1": digest}}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


@dataclass(frozen=True)
class StepRecord:
    """What one step did.

    ``parameters`` are the effective parameters (defaults filled in),
    ``provider``/``provider_version`` the distribution that supplied the method,
    ``diagnostics`` a few small numbers (pixels cleaned, median shift...).
    """

    step: str
    parameters: dict[str, Any] = field(default_factory=dict)
    method: str | None = None
    provider: str = "exomiri"
    provider_version: str = ""
    diagnostics: dict[str, Any] = field(default_factory=dict)
    time_utc: str = ""
    duration_s: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        step: str,
        parameters: dict[str, Any] | None = None,
        *,
        method: str | None = None,
        provider: str = "exomiri",
        provider_version: str | None = None,
        diagnostics: dict[str, Any] | None = None,
        duration_s: float = 0.0,
    ) -> StepRecord:
        versions = core_versions()
        return cls(
            step=step,
            parameters=jsonable(dict(parameters or {})),
            method=method,
            provider=provider,
            provider_version=provider_version or versions.get(provider, ""),
            diagnostics=jsonable(dict(diagnostics or {})),
            time_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
            duration_s=round(float(duration_s), 6),
            versions=dict(versions),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StepRecord:
        return cls(**json.loads(text))

    def summary(self) -> str:
        """One line: step, method and the parameters."""
        params = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        name = f"{self.step}[{self.method}]" if self.method else self.step
        return f"{name}({params})"
