"""Light-curve scatter of extracted spectra against a simulation's truth.

Used by the tests and ``examples/compare_with_optimal.py``.
"""

from __future__ import annotations

import itertools

import numpy as np

from exomiri.lightcurves import bin_spectra

__all__ = ["BIN_EDGES", "binned_scatter", "position_error", "row_scatter"]

#: 0.5 micron bins from 5 to 12 micron.
BIN_EDGES = np.arange(5.0, 12.0 + 1e-9, 0.5)


def _detrended(obs, flux: np.ndarray) -> np.ndarray:
    """``flux`` (nints, n) minus its regression on a line in time and the injected shifts."""
    t = obs.times - obs.times.mean()
    design = np.column_stack([np.ones_like(t), t, obs.truth.x_shift, obs.truth.y_shift])
    coef, *_ = np.linalg.lstsq(design, np.nan_to_num(flux), rcond=None)
    return flux - design @ coef


def row_scatter(obs) -> np.ndarray:
    """Scatter (nwave,) of each row's flux over the integrations, in DN/s, once divided by
    the injected light curve and detrended as in :func:`binned_scatter`."""
    return np.std(_detrended(obs, obs.spectra.flux / obs.truth.light_curve()), axis=0)


def binned_scatter(obs, edges: np.ndarray = BIN_EDGES) -> tuple[np.ndarray, np.ndarray]:
    """Relative scatter of the binned light curves, and what their errors predict.

    The flux of each bin is divided by the injected light curve of the bin
    (weighted by the stellar spectrum), a straight line in time and the
    injected x/y shifts are regressed out, and the rms of what is left is
    divided by the mean flux.  Returns ``(scatter, predicted)`` per bin.
    """
    truth = obs.truth
    spectra = bin_spectra(obs.spectra, edges)
    wave = obs.spectra.wavelength
    injected = []
    for lo, hi in itertools.pairwise(edges):
        rows = (wave >= lo) & (wave < hi)
        weight = truth.spectrum[rows]
        injected.append(truth.light_curve(rows) @ weight / weight.sum())
    flux = spectra.flux / np.column_stack(injected)
    scatter = np.std(_detrended(obs, flux), axis=0) / flux.mean(axis=0)
    predicted = np.median(spectra.flux_err, axis=0) / np.mean(spectra.flux, axis=0)
    return scatter, predicted


def position_error(obs) -> float:
    """Rms of the measured trace position minus the injected x shift (both about their mean)."""
    position = obs.spectra.trace_position
    injected = obs.truth.x_shift
    return float(np.std((position - position.mean()) - (injected - injected.mean())))
