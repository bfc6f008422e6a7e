"""Wavelength maps: from a WCS, from a WAVELENGTH array, or from the bundled calibration."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..calibration import Calibration

__all__ = ["calibration_map", "is_filled", "wcs_map"]


def is_filled(array: np.ndarray | None) -> bool:
    """True when a WAVELENGTH extension holds real values (not absent, all zero or NaN)."""
    if array is None or np.size(array) == 0:
        return False
    a = np.asarray(array)
    return bool(np.any(np.isfinite(a) & (a > 0)))


def calibration_map(cal: Calibration, shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel wavelength (nrows, ncols) in micron from the calibration table.

    As in the JWST pipeline's slitless solution, the wavelength depends on the
    row only: the table's smoothed values, interpolated linearly between the
    table rows, NaN outside them.
    """
    nrows, ncols = shape
    per_row = cal.wavelength_at(np.arange(nrows, dtype=np.float64))
    return np.repeat(per_row[:, None], ncols, axis=1)


def wcs_map(wcs: Any, shape: tuple[int, int]) -> np.ndarray:
    """Evaluate a (g)WCS on every pixel; the wavelength is its last output (micron)."""
    nrows, ncols = shape
    rows, cols = np.mgrid[0:nrows, 0:ncols]
    out = wcs(cols.ravel().astype(float), rows.ravel().astype(float))
    wavelength = np.asarray(out[-1] if isinstance(out, tuple | list) else out, dtype=np.float64)
    wavelength = wavelength.reshape(nrows, ncols)
    wavelength[~(wavelength > 0)] = np.nan
    return wavelength
