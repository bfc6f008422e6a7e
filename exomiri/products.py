"""Products that steps add to an observation.

Each product is a frozen dataclass of numpy arrays and small scalars.  The
class attribute ``per_integration`` names the arrays whose first axis runs over
integrations, which is all that sessions, selections and chunked runs need to
know to store, slice and join them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "PRODUCT_TYPES",
    "BackgroundModel",
    "Product",
    "Shifts",
    "Spectra",
    "WavelengthQuality",
]


def _readonly(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        view = value.view()
        view.flags.writeable = False
        return view
    return value


@dataclass(frozen=True)
class Product:
    """Base class: arrays are stored read-only; see ``per_integration``."""

    per_integration: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _readonly(getattr(self, f.name)))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }

    def scalars(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not isinstance(getattr(self, f.name), np.ndarray)
        }

    def take(self, index: np.ndarray | slice) -> Product:
        """The product restricted to some integrations (index along the first axis)."""
        changes = {name: getattr(self, name)[index] for name in self.per_integration}
        return dataclasses.replace(self, **changes)

    @classmethod
    def concatenate(cls, parts: list[Product]) -> Product:
        """Join products of consecutive integration chunks."""
        first = parts[0]
        changes = {
            name: np.concatenate([getattr(p, name) for p in parts], axis=0)
            for name in cls.per_integration
        }
        return dataclasses.replace(first, **changes)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())


class WavelengthQuality:
    """Bits of :attr:`Spectra.quality`: ranges to use with caution, never hidden."""

    #: Below ~4.5 micron the prism folds back: 4.2-4.5 micron land on the same pixels.
    FOLDED = 1
    #: Above 10.5 micron the throughput is low; published work treats it with caution.
    LOW_SIGNAL = 2
    #: No wavelength is defined for this row.
    NO_WAVELENGTH = 4

    FOLD_LIMIT_UM = 4.5
    LOW_SIGNAL_LIMIT_UM = 10.5

    @classmethod
    def of(cls, wavelength: np.ndarray) -> np.ndarray:
        wavelength = np.asarray(wavelength, dtype=float)
        q = np.zeros(wavelength.shape, dtype=np.uint8)
        finite = np.isfinite(wavelength)
        q[~finite] |= cls.NO_WAVELENGTH
        with np.errstate(invalid="ignore"):
            q[finite & (wavelength < cls.FOLD_LIMIT_UM)] |= cls.FOLDED
            q[finite & (wavelength > cls.LOW_SIGNAL_LIMIT_UM)] |= cls.LOW_SIGNAL
        return q


@dataclass(frozen=True)
class Spectra(Product):
    """Extracted time-series spectra, one per integration, in detector row order.

    ``wavelength`` (nwave,) micron, ``rows`` the detector row of each
    wavelength, ``flux``/``flux_err`` (nints, nwave) in the data's units
    (DN/s), ``trace_position``/``trace_sigma`` (nints,) the cross-dispersion
    centre (column) and Gaussian width (pixels) of the PSF, ``quality``
    (nwave,) bits of :class:`WavelengthQuality`, ``n_rejected`` (nints, nwave)
    pixels rejected by the extraction.
    """

    per_integration: ClassVar[tuple[str, ...]] = (
        "flux",
        "flux_err",
        "trace_position",
        "trace_sigma",
        "n_rejected",
    )

    wavelength: np.ndarray
    rows: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    trace_position: np.ndarray
    trace_sigma: np.ndarray
    quality: np.ndarray
    n_rejected: np.ndarray
    method: str = ""
    aligned: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.flux.shape


@dataclass(frozen=True)
class Shifts(Product):
    """Positions of the trace relative to the time-median, per integration (pixels).

    ``x`` is cross-dispersion (columns), ``y`` dispersion (rows); positive means
    towards the higher index.  ``x_err``/``y_err`` are 1-sigma uncertainties.
    """

    per_integration: ClassVar[tuple[str, ...]] = ("x", "y", "x_err", "y_err")

    x: np.ndarray
    y: np.ndarray
    x_err: np.ndarray
    y_err: np.ndarray


@dataclass(frozen=True)
class BackgroundModel(Product):
    """A background that is linear in a few functions of the column.

    ``background[i, r, c] = sum_k coeffs[i, r, k] * basis[c, k]``.  ``basis``
    is (ncols, k); ``coeffs`` is (nints, nrows, k) where nrows may be 1 (one
    value for all rows); ``cov`` (nints, nrows, k, k) is the covariance of the
    coefficients, from which the host adds the background's own variance to
    ``err``.  Storing this instead of a cube keeps a 10,000-integration model
    to a few megabytes.
    """

    per_integration: ClassVar[tuple[str, ...]] = ("coeffs", "cov")

    basis: np.ndarray
    coeffs: np.ndarray
    cov: np.ndarray

    def __post_init__(self) -> None:
        basis = np.asarray(self.basis, dtype=np.float64)
        coeffs = np.asarray(self.coeffs, dtype=np.float64)
        cov = np.asarray(self.cov, dtype=np.float64)
        if basis.ndim == 1:
            basis = basis[:, None]
        k = basis.shape[1]
        if coeffs.ndim != 3 or coeffs.shape[2] != k:
            raise ValueError(
                f"BackgroundModel coeffs must be (nints, nrows, {k}) for a basis of {k} "
                f"function(s); got shape {coeffs.shape}."
            )
        if cov.shape != (*coeffs.shape, k):
            raise ValueError(
                f"BackgroundModel cov must have shape {(*coeffs.shape, k)}; got {cov.shape}."
            )
        object.__setattr__(self, "basis", basis)
        object.__setattr__(self, "coeffs", coeffs)
        object.__setattr__(self, "cov", cov)
        super().__post_init__()

    @property
    def nints(self) -> int:
        return self.coeffs.shape[0]

    def evaluate(self, index: slice | np.ndarray = slice(None), dtype: type = np.float64) -> np.ndarray:
        """The background cube (nints, nrows, ncols) for the selected integrations."""
        coeffs = self.coeffs[index].astype(dtype, copy=False)
        basis = self.basis.astype(dtype, copy=False)
        out = coeffs[..., 0, None] * basis[:, 0]
        for k in range(1, basis.shape[1]):
            out += coeffs[..., k, None] * basis[:, k]
        return out

    def variance(self, index: slice | np.ndarray = slice(None), dtype: type = np.float64) -> np.ndarray:
        """Variance of the background estimate at every pixel (nints, nrows, ncols)."""
        cov = self.cov[index].astype(dtype, copy=False)
        basis = self.basis.astype(dtype, copy=False)
        nk = basis.shape[1]
        out = np.zeros((*cov.shape[:2], basis.shape[0]), dtype)
        for k in range(nk):
            for m in range(nk):
                out += cov[..., k, m, None] * (basis[:, k] * basis[:, m])
        return out

    def level(self, column: float | None = None) -> np.ndarray:
        """Background (nints, nrows) at one column (default: the middle of the subarray)."""
        ncols = self.basis.shape[0]
        column = (ncols - 1) / 2 if column is None else column
        lo = int(np.clip(np.floor(column), 0, ncols - 1))
        hi = min(lo + 1, ncols - 1)
        frac = column - lo
        b = (1 - frac) * self.basis[lo] + frac * self.basis[hi]
        return self.coeffs @ b


PRODUCT_TYPES: dict[str, type[Product]] = {
    cls.__name__: cls for cls in (Spectra, Shifts, BackgroundModel)
}
