"""The bundled MIRI LRS slitless wavelength and trace calibration.

The table ``lrs_slitless_flt2.csv`` is the in-flight FLT-2 solution
(``MIRI_FM_MIRIMAGE_P750L_SLITLESSPRISM_DISTORTION_9B.00.08``), shipped with the
package so that wavelengths never need the network.  Its rows and trace
columns are 0-based pixel coordinates of the ``SLITLESSPRISM`` subarray
(full-frame start ``SUBSTRT1=1``, ``SUBSTRT2=529``); :func:`load` converts them to
any subarray from its ``SUBSTRT1``/``SUBSTRT2``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

import numpy as np

__all__ = ["CALIBRATION_FILE", "CALIBRATION_VERSION", "Calibration", "load"]

CALIBRATION_FILE = "lrs_slitless_flt2.csv"
CALIBRATION_VERSION = "FLT-2 9B.00.08"
# The table's own frame: 0-based SLITLESSPRISM rows/columns, i.e. full-frame
# (1-based) SUBSTRT1=1, SUBSTRT2=529.
_TABLE_SUBSTRT1 = 1
_TABLE_SUBSTRT2 = 529


@dataclass(frozen=True)
class Calibration:
    """The calibration table converted to one subarray's pixel coordinates.

    Attributes are 1-D arrays sorted by increasing row: ``rows`` (0-based
    subarray row), ``trace`` (0-based subarray column of the trace centre),
    ``wavelength`` (the table's values, micron) and ``wavelength_smooth``
    (after the spline smoothing the JWST pipeline applies, micron).
    """

    rows: np.ndarray
    trace: np.ndarray
    wavelength: np.ndarray
    wavelength_smooth: np.ndarray
    version: str
    sha256: str
    header: tuple[str, ...]

    def wavelength_at(self, rows: np.ndarray) -> np.ndarray:
        """Wavelength (micron) at (fractional) subarray rows; NaN outside the table."""
        return _interp_nan(rows, self.rows, self.wavelength_smooth)

    def trace_at(self, rows: np.ndarray) -> np.ndarray:
        """Trace centre column at (fractional) subarray rows; NaN outside the table."""
        return _interp_nan(rows, self.rows, self.trace)


def _interp_nan(x, xp, fp):
    x = np.asarray(x, dtype=float)
    out = np.interp(x, xp, fp)
    out[(x < xp[0]) | (x > xp[-1])] = np.nan
    return out


@functools.cache
def _read_table() -> tuple[np.ndarray, tuple[str, ...], str]:
    raw = resources.files(__name__).joinpath(CALIBRATION_FILE).read_bytes()
    text = raw.decode("ascii")
    header = tuple(line[1:].strip() for line in text.splitlines() if line.startswith("#"))
    table = np.loadtxt(text.splitlines(), delimiter=",", comments="#", ndmin=2)
    table = table[np.argsort(table[:, 0])]
    table.flags.writeable = False
    return table, header, hashlib.sha256(raw).hexdigest()


def load(substrt1: int = _TABLE_SUBSTRT1, substrt2: int = _TABLE_SUBSTRT2) -> Calibration:
    """The calibration in the pixel frame of a subarray starting at (SUBSTRT1, SUBSTRT2), 1-based."""
    table, header, sha = _read_table()
    drow = _TABLE_SUBSTRT2 - int(substrt2)
    dcol = _TABLE_SUBSTRT1 - int(substrt1)
    return Calibration(
        rows=table[:, 0] + drow,
        trace=table[:, 1] + dcol,
        wavelength=table[:, 2].copy(),
        wavelength_smooth=table[:, 3].copy(),
        version=CALIBRATION_VERSION,
        sha256=sha,
        header=header,
    )
