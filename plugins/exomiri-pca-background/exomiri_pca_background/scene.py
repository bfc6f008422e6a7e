"""A simulated observation whose background changes shape across the columns with time.

Used by the tests and by ``examples/compare_methods.py``; handy for trying
the method on data whose background is known.
"""

from __future__ import annotations

import numpy as np

import exomiri
from exomiri import LRSObservation

__all__ = ["TRACE_COLUMNS", "glow", "residual_rms", "variable_background_scene"]

#: The columns of the default optimal-extraction aperture (36 +- 8), where the
#: background error reaches the spectrum.
TRACE_COLUMNS = slice(28, 45)


def glow(columns: np.ndarray, centre: float = 24.0, width: float = 12.0) -> np.ndarray:
    """The column shape of the added background: a Gaussian glow, peak 1."""
    columns = np.asarray(columns, dtype=np.float64)
    return np.exp(-0.5 * ((columns - centre) / width) ** 2)


def variable_background_scene(
    nints: int = 200, *, seed: int = 0, amplitude: float = 0.3, **simulate_kwargs
) -> tuple[LRSObservation, np.ndarray]:
    """``exomiri.simulate`` plus a glow whose brightness changes with time.

    The glow (:func:`glow` across the columns) scales with the simulated
    background of each row and with a time series ``amplitude * A(t)``, where
    ``A`` is a sinusoid of three cycles over the visit between 0 and 1 plus
    a random walk, never negative: on the brightest rows it changes the
    background at the trace by tens of DN/s between integrations.  Its photon
    noise is added to the data and to ``err``.

    Returns the observation and the true background cube (nints, nrows,
    ncols) float64, the simulator's background plus the glow.
    """
    obs = exomiri.simulate(nints=nints, seed=seed, **simulate_kwargs)
    truth = obs.truth
    rng = np.random.default_rng([seed, 2024])
    phase = np.linspace(0.0, 1.0, nints)
    walk = np.cumsum(rng.normal(0.0, 1.0, nints))
    walk = (walk - walk.mean()) / max(np.ptp(walk), 1e-12)
    level = np.clip(0.5 + 0.5 * np.sin(2 * np.pi * 3 * phase) + 0.3 * walk, 0.0, None)
    ncols = obs.shape[2]
    extra = (
        amplitude
        * level[:, None, None]
        * truth.background_row[None, :, None]
        * glow(np.arange(ncols))[None, None, :]
    )
    shot = np.sqrt(extra / (truth.gain * truth.effinttm))
    data = obs.data + (extra + rng.standard_normal(extra.shape) * shot).astype(np.float32)
    err = np.sqrt(obs.err.astype(np.float64) ** 2 + shot**2).astype(np.float32)
    return obs.replace(data=data, err=err), truth.background_cube() + extra


def residual_rms(obs: LRSObservation, true_background: np.ndarray) -> dict[str, float]:
    """How far ``obs.background`` lies from the true background on the trace columns.

    ``pixel``: rms over every integration, calibrated row and trace column
    (DN/s per pixel).  ``white``: rms over integrations of the error summed
    over the trace columns and averaged over the calibrated rows, after
    removing its time mean (DN/s): the part that reaches a white light curve.
    """
    rows = np.isfinite(obs.truth.wavelength)
    model = obs.background.evaluate()[:, rows, TRACE_COLUMNS]
    error = model - true_background[:, rows, TRACE_COLUMNS]
    white = np.nanmean(error.sum(axis=2), axis=1)
    return {
        "pixel": float(np.sqrt(np.nanmean(error**2))),
        "white": float(np.std(white - white.mean())),
    }
