"""Synthetic MIRI LRS slitless time series with a known transit.

:func:`simulate` renders a physically sensible scene: the flight wavelength
solution and tilted trace from the bundled table, a wavelength-dependent PSF
with wings, a stellar spectrum through the prism's throughput, a background
that rises with wavelength, has a gradient across columns and drifts slowly,
photon and read noise consistent with ``err``, cosmic-ray hits, hot and dead
pixels with their DQ flags, sub-pixel pointing jitter in x and y, and a
transit whose depth varies with wavelength.  The truth comes back with the
observation as ``obs.truth`` (a :class:`SimulationTruth`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.special import erf

from . import dq as dqflags
from .calibration import load as load_calibration
from .exceptions import InputError
from .observation import INT_TIMES_DTYPE, LRSObservation, ObservationMeta, Segment
from .products import PRODUCT_TYPES, Product

__all__ = ["GEOMETRIES", "SimulationTruth", "default_depth", "simulate"]

#: Subarray name -> (SUBSTRT1, SUBSTRT2, ncols, nrows).  SLITLESSPRISM is the
#: flight definition; the SLITLESSPRISM_IP start is an assumption made for
#: simulation only (real files carry their own SUBSTRT keys, which is all
#: exomiri reads).
GEOMETRIES: dict[str, tuple[int, int, int, int]] = {
    "SLITLESSPRISM": (1, 529, 72, 416),
    "SLITLESSPRISM_IP": (3, 545, 68, 384),
}

_REFERENCE_COLUMNS = 4  # columns 0-3 of SLITLESSPRISM are reference pixels


def default_depth(wavelength: np.ndarray) -> np.ndarray:
    """The default injected transit depth: 0.5% with a methane-like bump and a slope."""
    w = np.asarray(wavelength, dtype=float)
    return (
        0.0050
        + 0.0006 * np.exp(-0.5 * ((w - 7.7) / 0.45) ** 2)
        + 0.0003 * np.exp(-0.5 * ((w - 10.5) / 0.8) ** 2)
        - 0.00002 * (w - 8.0)
    )


@dataclass(frozen=True)
class SimulationTruth(Product):
    """What was injected.  Rows are subarray rows; fluxes in DN/s.

    Per integration: ``x_shift``/``y_shift`` (pixels, + towards higher
    column/row), ``transit_shape`` (0 out of transit, 1 at full depth; the
    flux of row r is ``spectrum[r] * (1 - depth[r] * transit_shape)``, times
    ``ramp``), ``background_scale`` (the background's slow drift factor),
    ``ramp`` (multiplicative settling ramp on the star).  Per row:
    ``wavelength``, ``depth``, ``spectrum`` (star, summed over the PSF, out of
    transit), ``trace`` (PSF centre column without jitter), ``psf_sigma``
    (core Gaussian sigma), ``wing_sigma``, ``wing_fraction``,
    ``background_row`` (background at the trace column, before drift),
    ``noise_floor`` (the best possible 1-sigma error of one integration's flux
    in that row: 1/sqrt(sum P^2/V) with the true profile P and variance V).
    ``grid``/``cumulative``/``cumulative_depth``: the cumulative integrals,
    on a fine grid of row positions, of the stellar spectrum (already blurred
    by the PSF along the dispersion direction) and of spectrum times depth;
    a row's flux is the difference of ``cumulative`` across its edges, which
    renders sub-pixel y shifts exactly.
    ``cosmic_rays`` (n, 3) integration/row/column of each hit with
    ``cosmic_ray_amplitude`` (DN/s); ``hot_pixels``/``dead_pixels`` (m, 2)
    row/column.
    """

    per_integration: ClassVar[tuple[str, ...]] = (
        "x_shift",
        "y_shift",
        "transit_shape",
        "background_scale",
        "ramp",
    )

    x_shift: np.ndarray
    y_shift: np.ndarray
    transit_shape: np.ndarray
    background_scale: np.ndarray
    ramp: np.ndarray
    wavelength: np.ndarray
    depth: np.ndarray
    spectrum: np.ndarray
    trace: np.ndarray
    psf_sigma: np.ndarray
    wing_sigma: np.ndarray
    wing_fraction: np.ndarray
    background_row: np.ndarray
    noise_floor: np.ndarray
    grid: np.ndarray
    cumulative: np.ndarray
    cumulative_depth: np.ndarray
    cosmic_rays: np.ndarray
    cosmic_ray_amplitude: np.ndarray
    hot_pixels: np.ndarray
    dead_pixels: np.ndarray
    background_gradient: float = 0.0
    ncols: int = 72
    gain: float = 3.1
    read_noise_rate: float = 0.0
    effinttm: float = 0.0

    def take(self, index: np.ndarray | slice) -> SimulationTruth:
        idx = np.arange(len(self.x_shift))[index]
        keep = np.isin(self.cosmic_rays[:, 0], idx)
        remap = np.full(len(self.x_shift), -1)
        remap[idx] = np.arange(len(idx))
        rays = self.cosmic_rays[keep].copy()
        rays[:, 0] = remap[rays[:, 0]]
        base = super().take(index)
        return dataclasses.replace(
            base, cosmic_rays=rays, cosmic_ray_amplitude=self.cosmic_ray_amplitude[keep]
        )

    @classmethod
    def concatenate(cls, parts: list[Product]) -> SimulationTruth:
        base = super().concatenate(parts)
        offsets = np.cumsum([0] + [len(p.x_shift) for p in parts[:-1]])
        rays = [p.cosmic_rays + np.array([o, 0, 0]) for p, o in zip(parts, offsets, strict=True)]
        return dataclasses.replace(
            base,
            cosmic_rays=np.concatenate(rays),
            cosmic_ray_amplitude=np.concatenate([p.cosmic_ray_amplitude for p in parts]),
        )

    def background_cube(self, index: slice | np.ndarray = slice(None)) -> np.ndarray:
        """The true background (nints, nrows, ncols) of the selected integrations."""
        return (
            self.background_scale[index, None, None]
            * self.background_row[None, :, None]
            * _gradient(self.ncols, self.background_gradient, self.trace)[None]
        )

    def noiseless(self, index: slice | np.ndarray = slice(None)) -> np.ndarray:
        """The noiseless frames (star + background, no outliers) of the selected integrations."""
        idx = np.arange(len(self.x_shift))[index]
        return _render_star(self, idx) + self.background_cube(idx)

    def light_curve(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The injected relative flux (nints, nrows_selected): 1 - depth * transit_shape."""
        return 1.0 - self.transit_shape[:, None] * self.depth[None, rows]

    def binned_depth(self, wavelength: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """The injected depth of each wavelength bin ``[edges[k], edges[k + 1])``.

        ``wavelength`` (nrows,) assigns rows to bins (e.g. ``obs.spectra.wavelength``);
        a bin's depth is the depth of its rows weighted by the stellar flux, as a
        light curve summed over the bin sees it.  NaN for a bin without rows.
        """
        return np.array([
            _weighted_mean(self.depth[rows], self.spectrum[rows])
            for rows in _bin_rows(wavelength, edges)
        ])

    def binned_noise_floor(
        self,
        wavelength: np.ndarray,
        edges: np.ndarray,
        background_regions: tuple[tuple[int, int], ...] | None = None,
    ) -> np.ndarray:
        """The best possible relative 1-sigma error of one integration's flux in each bin.

        From ``noise_floor`` (photon and read noise with the true profile) of the
        bin's rows.  With ``background_regions`` (half-open column ranges), the
        noise of estimating the background from those columns is added: a line
        fitted across the region pixels of a row, whose error every pixel of the
        row shares, enters an optimally weighted flux as ``(sum of weights)^2``
        times the variance of the line at the trace.
        """
        extra = np.zeros_like(self.noise_floor)
        if background_regions is not None:
            extra = self._background_estimation_variance(background_regions)
        return np.array([
            np.sqrt(np.sum(self.noise_floor[rows] ** 2 + extra[rows])) / np.sum(self.spectrum[rows])
            if rows.any() else np.nan
            for rows in _bin_rows(wavelength, edges)
        ])

    def _background_estimation_variance(self, regions: tuple[tuple[int, int], ...]) -> np.ndarray:
        """Per row, the variance (DN/s)^2 a background line fitted over ``regions`` adds to an
        optimally extracted flux (see :meth:`binned_noise_floor`)."""
        q = self.gain * self.effinttm
        still = dataclasses.replace(
            self.take(slice(0, 1)), x_shift=np.zeros(1), y_shift=np.zeros(1),
            transit_shape=np.zeros(1), ramp=np.ones(1),
        )
        background = self.background_cube([0])[0]
        star = still.noiseless()[0] - background
        with np.errstate(invalid="ignore", divide="ignore"):
            profile = star / star.sum(axis=1, keepdims=True)
            variance = (star + background) / q + self.read_noise_rate**2
            weight_sum = np.sum(profile / variance, axis=1) / np.sum(profile**2 / variance, axis=1)
        cols = np.concatenate([np.arange(a, b) for a, b in regions])
        design = np.column_stack([np.ones(len(cols)), cols])
        at_trace = np.array([1.0, float(np.nanmedian(self.trace))])
        leverage = at_trace @ np.linalg.inv(design.T @ design) @ at_trace
        pixel_variance = np.mean(background[:, cols] / q, axis=1) + self.read_noise_rate**2
        return np.nan_to_num(weight_sum**2 * leverage * pixel_variance)


def _bin_rows(wavelength: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
    """Boolean row masks of the bins ``[edges[k], edges[k + 1])`` (NaN wavelengths in none)."""
    wavelength = np.asarray(wavelength, dtype=float)
    edges = np.asarray(edges, dtype=float)
    return [(wavelength >= lo) & (wavelength < hi) for lo, hi in itertools.pairwise(edges)]


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = np.sum(weights)
    return float(np.sum(values * weights) / total) if total > 0 else np.nan


def _gradient(ncols: int, gradient: float, trace: np.ndarray) -> np.ndarray:
    centre = float(np.nanmedian(trace))
    cols = np.arange(ncols, dtype=np.float64)
    return 1.0 + gradient * (cols - centre) / (ncols / 2)


def _blackbody_photons(wavelength_um: np.ndarray, temperature: float) -> np.ndarray:
    """Photon spectral radiance, arbitrary units, of a blackbody."""
    x = 14387.77 / (wavelength_um * temperature)
    return wavelength_um**-4 / np.expm1(x)


def _throughput(wavelength_um: np.ndarray) -> np.ndarray:
    """A smooth model of the LRS prism response: peaks near 7 um, low past 12 um."""
    w = np.asarray(wavelength_um, dtype=float)
    rise = 1.0 / (1.0 + np.exp(-(w - 4.6) / 0.18))
    fall = np.exp(-0.5 * ((w - 7.0) / 3.6) ** 2)
    return rise * fall


def _pixel_profile(cols: np.ndarray, centre: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Fraction of a unit Gaussian (centre, sigma) falling in each pixel [c - 0.5, c + 0.5]."""
    s = np.sqrt(2.0) * sigma
    upper = erf((cols + 0.5 - centre) / s)
    lower = erf((cols - 0.5 - centre) / s)
    return 0.5 * (upper - lower)


def _render_star(truth: SimulationTruth, idx: np.ndarray) -> np.ndarray:
    """Noiseless stellar frames for integrations ``idx`` (float64)."""
    nrows = truth.spectrum.shape[0]
    rows = np.arange(nrows, dtype=np.float64)
    cols = np.arange(truth.ncols, dtype=np.float64)
    out = np.empty((len(idx), nrows, truth.ncols))
    for k, i in enumerate(idx):
        # Dispersion shift: the light that lands on row r comes from rows r - dy.
        y = rows - truth.y_shift[i]
        upper, lower = y + 0.5, y - 0.5
        flux = np.interp(upper, truth.grid, truth.cumulative) - np.interp(
            lower, truth.grid, truth.cumulative
        )
        absorbed = np.interp(upper, truth.grid, truth.cumulative_depth) - np.interp(
            lower, truth.grid, truth.cumulative_depth
        )
        flux = (flux - absorbed * truth.transit_shape[i]) * truth.ramp[i]
        sigma = np.interp(y, rows, truth.psf_sigma)[:, None]
        wing_sigma = np.interp(y, rows, truth.wing_sigma)[:, None]
        frac = np.interp(y, rows, truth.wing_fraction)[:, None]
        centre = (np.interp(y, rows, truth.trace) + truth.x_shift[i])[:, None]
        profile = (1.0 - frac) * _pixel_profile(cols[None], centre, sigma)
        profile += frac * _pixel_profile(cols[None], centre, wing_sigma)
        out[k] = flux[:, None] * profile
    return out


def _transit_shape(t: np.ndarray, t0: float, duration: float) -> np.ndarray:
    """Shape (0 out of transit, 1 at full depth) of a planet of radius ratio 0.07
    crossing a uniform stellar disc along a straight chord (impact parameter 0.3)
    in ``duration`` from first to last contact."""
    k = 0.07
    b = 0.3
    half_chord = np.sqrt((1 + k) ** 2 - b**2)
    z = np.sqrt(b**2 + (half_chord * (t - t0) / (duration / 2)) ** 2)
    area = _overlap_area(z, k)
    return area / (np.pi * k**2)


def _overlap_area(z: np.ndarray, k: float) -> np.ndarray:
    """Area of a disc of radius k at distance z overlapping the unit disc."""
    z = np.asarray(z, dtype=float)
    area = np.zeros_like(z)
    inside = z <= 1 - k
    area[inside] = np.pi * k**2
    part = (z > 1 - k) & (z < 1 + k)
    zp = z[part]
    k0 = np.arccos(np.clip((zp**2 + k**2 - 1) / (2 * k * zp), -1, 1))
    k1 = np.arccos(np.clip((zp**2 + 1 - k**2) / (2 * zp), -1, 1))
    root = np.sqrt(np.clip(4 * zp**2 - (1 + zp**2 - k**2) ** 2, 0, None))
    area[part] = k**2 * k0 + k1 - 0.5 * root
    return area


def simulate(
    nints: int = 200,
    *,
    seed: int = 0,
    subarray: str = "SLITLESSPRISM",
    ngroups: int = 40,
    star_flux: float = 2.0e4,
    stellar_temperature: float = 3500.0,
    depth: Callable[[np.ndarray], np.ndarray] | float | None = None,
    jitter: float = 0.02,
    x_shifts: np.ndarray | None = None,
    y_shifts: np.ndarray | None = None,
    trace_offset: float = -1.25,
    background: float = 3.0,
    background_gradient: float = 0.05,
    background_drift: float = 0.01,
    read_noise: float = 10.0,
    gain: float = 3.1,
    cosmic_rays: float = 3.0,
    hot_pixels: int = 20,
    dead_pixels: int = 10,
    ramp: tuple[float, float] | None = None,
    segments: int = 1,
    target: str = "SIM-1 b",
) -> LRSObservation:
    """A synthetic MIRI LRS slitless observation with a known transit; truth in ``obs.truth``.

    Parameters
    ----------
    nints : number of integrations.
    seed : seed of the random generator (same seed, same observation).
    subarray : a key of :data:`GEOMETRIES`.
    ngroups : groups per integration (sets the integration time and read noise).
    star_flux : peak over rows of the stellar flux per row, summed over the PSF (DN/s).
    stellar_temperature : blackbody temperature of the star (K).
    depth : transit depth, a number or a function of wavelength (micron);
        default :func:`default_depth`.
    jitter : rms pointing jitter in x and in y (pixels), on top of a slow
        linear drift of the same size; ``x_shifts``/``y_shifts`` (nints,)
        override it.
    trace_offset : offset of the star from the calibrated trace (columns);
        the default puts the PSF near column 36.3 at row 300, as in flight data.
    background : background at 5 micron (DN/s per pixel); it rises with
        wavelength, has a relative ``background_gradient`` across the half
        width of the frame, and drifts by ``background_drift`` over the visit.
    read_noise : read noise per group read (DN).
    gain : electrons per DN.
    cosmic_rays : mean number of unflagged cosmic-ray hits per frame.
    hot_pixels, dead_pixels : numbers of flagged bad pixels.
    ramp : (amplitude, timescale in minutes) of a settling ramp on the
        stellar flux at the start of the visit, or None.
    segments : number of segments the observation is split into when written.
    """
    if subarray not in GEOMETRIES:
        raise InputError(f"simulate(subarray={subarray!r}): known subarrays are {', '.join(GEOMETRIES)}.")
    if int(nints) < 1:
        raise InputError(f"simulate(nints={nints}) needs at least one integration.")
    nints = int(nints)
    rng = np.random.default_rng(seed)
    substrt1, substrt2, ncols, nrows = GEOMETRIES[subarray]
    cal = load_calibration(substrt1, substrt2)
    rows = np.arange(nrows, dtype=np.float64)

    # --- timing
    tframe = 0.15904
    effinttm = (ngroups - 1) * tframe
    t_int = (ngroups + 1) * tframe  # one reset frame between integrations
    mjd0 = 60200.0
    start = mjd0 + np.arange(nints) * t_int / 86400.0
    int_times = np.zeros(nints, dtype=INT_TIMES_DTYPE)
    int_times["integration_number"] = np.arange(1, nints + 1)
    int_times["int_start_MJD_UTC"] = start
    int_times["int_mid_MJD_UTC"] = start + 0.5 * t_int / 86400.0
    int_times["int_end_MJD_UTC"] = start + t_int / 86400.0
    bary = 2400000.5 + 0.0035
    for a, b in (("start", "start"), ("mid", "mid"), ("end", "end")):
        int_times[f"int_{b}_BJD_TDB"] = int_times[f"int_{a}_MJD_UTC"] + bary
    t = int_times["int_mid_MJD_UTC"]
    phase = (t - t[0]) / max(t[-1] - t[0], 1e-9)

    # --- wavelength, throughput, stellar spectrum per row
    # Outside the calibrated rows hold the end values so the scene stays finite.
    wave = np.interp(rows, cal.rows, cal.wavelength_smooth)
    calibrated = (rows >= cal.rows[0]) & (rows <= cal.rows[-1])
    psf_sigma = np.sqrt((0.126 * wave) ** 2 + 0.7**2)

    # Spectral density per unit row on a fine grid: light only where the
    # calibration defines wavelengths, blurred along the dispersion direction
    # by the PSF core, then integrated so that any pixel's share is exact.
    step = 0.05
    grid = np.arange(-8.0, nrows + 8.0, step)
    wave_fine = np.interp(grid, cal.rows, cal.wavelength_smooth)
    density = (
        _blackbody_photons(wave_fine, stellar_temperature)
        * _throughput(wave_fine)
        * np.abs(np.gradient(wave_fine, step))
    )
    density[(grid < cal.rows[0] - 0.5) | (grid > cal.rows[-1] + 0.5)] = 0.0
    if depth is None:
        depth_fine = default_depth(wave_fine)
    elif callable(depth):
        depth_fine = np.asarray(depth(wave_fine), dtype=float) * np.ones_like(grid)
    else:
        depth_fine = np.full_like(grid, float(depth))
    blur = float(np.median(psf_sigma[calibrated])) / step
    kernel = np.exp(-0.5 * (np.arange(-int(5 * blur), int(5 * blur) + 1) / blur) ** 2)
    kernel /= kernel.sum()
    # the light the planet removes is blurred by the same PSF as the light itself (once)
    absorbed = np.convolve(density * depth_fine, kernel, mode="same")
    density = np.convolve(density, kernel, mode="same")
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * step)])
    cumulative_depth = np.concatenate([[0.0], np.cumsum(0.5 * (absorbed[1:] + absorbed[:-1]) * step)])
    spectrum = np.interp(rows + 0.5, grid, cumulative) - np.interp(rows - 0.5, grid, cumulative)
    scale = star_flux / spectrum.max()
    spectrum *= scale
    cumulative *= scale
    cumulative_depth *= scale
    with np.errstate(divide="ignore", invalid="ignore"):
        depth_rows = (
            np.interp(rows + 0.5, grid, cumulative_depth) - np.interp(rows - 0.5, grid, cumulative_depth)
        ) / spectrum
    depth_rows[~np.isfinite(depth_rows)] = 0.0

    # --- PSF: diffraction core broadened by the detector, plus wide wings
    wing_sigma = 4.0 * psf_sigma
    wing_fraction = np.clip(0.06 + 0.01 * (wave - 5.0), 0.04, 0.15)
    trace = np.interp(rows, cal.rows, cal.trace) + trace_offset

    # --- pointing
    def shifts(given: np.ndarray | None) -> np.ndarray:
        if given is not None:
            given = np.asarray(given, dtype=float)
            if given.shape != (nints,):
                raise InputError(f"simulate(): shifts must have shape ({nints},), got {given.shape}.")
            return given
        return jitter * (phase - 0.5) + rng.normal(0.0, jitter, nints)

    x_shift = shifts(x_shifts)
    y_shift = shifts(y_shifts)

    # --- transit, ramp, background drift
    duration = 0.35 * max(t[-1] - t[0], t_int / 86400.0)
    transit = _transit_shape(t, t[0] + 0.5 * (t[-1] - t[0]), duration)
    if ramp is None:
        ramp_curve = np.ones(nints)
    else:
        amplitude, minutes = ramp
        ramp_curve = 1.0 - amplitude * np.exp(-(t - t[0]) * 1440.0 / minutes)
    background_scale = 1.0 + background_drift * (phase - 0.5)
    background_row = background * np.exp((np.clip(wave, 4.0, 14.5) - 5.0) / 2.2)

    # --- noise model (DN/s)
    read_var = 12.0 * read_noise**2 / (ngroups * (ngroups**2 - 1) * tframe**2)

    truth = SimulationTruth(
        x_shift=x_shift,
        y_shift=y_shift,
        transit_shape=transit,
        background_scale=background_scale,
        ramp=ramp_curve,
        wavelength=np.where(calibrated, wave, np.nan),
        depth=depth_rows,
        spectrum=spectrum,
        trace=trace,
        psf_sigma=psf_sigma,
        wing_sigma=wing_sigma,
        wing_fraction=wing_fraction,
        background_row=background_row,
        noise_floor=np.zeros(nrows),
        grid=grid,
        cumulative=cumulative,
        cumulative_depth=cumulative_depth,
        cosmic_rays=np.zeros((0, 3), dtype=np.int64),
        cosmic_ray_amplitude=np.zeros(0),
        hot_pixels=np.zeros((0, 2), dtype=np.int64),
        dead_pixels=np.zeros((0, 2), dtype=np.int64),
        background_gradient=background_gradient,
        gain=gain,
        read_noise_rate=float(np.sqrt(read_var)),
        effinttm=effinttm,
        ncols=ncols,
    )

    # --- the best possible per-row error, from the true profile and variance
    mid = np.array([int(np.argmin(transit))])
    centred = dataclasses.replace(
        truth, x_shift=np.zeros(nints), y_shift=np.zeros(nints), transit_shape=np.zeros(nints),
        ramp=np.ones(nints),
    )
    star0 = _render_star(centred, mid)[0]
    bkg0 = truth.background_cube(mid)[0]
    var0 = np.maximum(star0 + bkg0, 0.0) / (gain * effinttm) + read_var
    with np.errstate(divide="ignore", invalid="ignore"):
        prof = star0 / spectrum[:, None]
        floor = 1.0 / np.sqrt(np.sum(prof**2 / var0, axis=1))
    floor[spectrum <= 1e-6 * star_flux] = np.nan

    # --- render, add noise, chunk by chunk
    data = np.empty((nints, nrows, ncols), dtype=np.float32)
    err = np.empty_like(data)
    var_poisson = np.empty_like(data)
    chunk = 128
    for s in range(0, nints, chunk):
        idx = np.arange(s, min(s + chunk, nints))
        model = _render_star(truth, idx) + truth.background_cube(idx)
        vp = np.maximum(model, 0.0) / (gain * effinttm)
        e = np.sqrt(vp + read_var)
        data[idx] = model + rng.standard_normal(model.shape) * e
        err[idx] = e
        var_poisson[idx] = vp
    var_rnoise = np.full(data.shape, read_var, dtype=np.float32)
    dq = np.zeros(data.shape, dtype=np.uint32)

    # --- cosmic rays: unflagged single-pixel hits of 8 to 300 sigma
    n_rays = rng.poisson(cosmic_rays * nints)
    ray_pos = np.column_stack(
        [rng.integers(0, nints, n_rays), rng.integers(0, nrows, n_rays),
         rng.integers(_REFERENCE_COLUMNS, ncols, n_rays)]
    )
    ray_pos = np.unique(ray_pos, axis=0)
    sig = err[ray_pos[:, 0], ray_pos[:, 1], ray_pos[:, 2]]
    ray_amp = 10 ** rng.uniform(np.log10(8.0), np.log10(300.0), len(ray_pos)) * sig
    np.add.at(data, (ray_pos[:, 0], ray_pos[:, 1], ray_pos[:, 2]), ray_amp.astype(np.float32))

    # --- flagged pixels: reference columns, hot and dead pixels
    ref_flags = dqflags.bit_mask(["DO_NOT_USE", "REFERENCE_PIXEL"])
    # Full-frame columns 1-4 (1-based) are reference pixels.
    ref_cols = int(np.clip(_REFERENCE_COLUMNS + 1 - substrt1, 0, ncols))
    data[:, :, :ref_cols] = np.nan
    dq[:, :, :ref_cols] |= ref_flags
    flat = rng.choice(nrows * (ncols - ref_cols), hot_pixels + dead_pixels, replace=False)
    bad_rows, bad_cols = np.divmod(flat, ncols - ref_cols)
    bad_cols = bad_cols + ref_cols
    hot = np.column_stack([bad_rows[:hot_pixels], bad_cols[:hot_pixels]])
    dead = np.column_stack([bad_rows[hot_pixels:], bad_cols[hot_pixels:]])
    hot_level = rng.uniform(50.0, 500.0, len(hot)).astype(np.float32)
    data[:, hot[:, 0], hot[:, 1]] += hot_level
    dq[:, hot[:, 0], hot[:, 1]] |= dqflags.bit_mask(["DO_NOT_USE", "HOT"])
    data[:, dead[:, 0], dead[:, 1]] = np.nan
    dq[:, dead[:, 0], dead[:, 1]] |= dqflags.bit_mask(["DO_NOT_USE", "DEAD"])

    truth = dataclasses.replace(
        truth,
        noise_floor=floor,
        cosmic_rays=ray_pos,
        cosmic_ray_amplitude=ray_amp,
        hot_pixels=hot,
        dead_pixels=dead,
    )

    bounds = np.array_split(np.arange(nints), max(1, min(int(segments), nints)))
    stem = "jw09999001001_04103_00001"
    segs = tuple(
        Segment(
            filename=f"{stem}-seg{k + 1:03d}_mirimage_rateints.fits"
            if len(bounds) > 1
            else f"{stem}_mirimage_rateints.fits",
            first=int(b[0]) + 1,
            last=int(b[-1]) + 1,
        )
        for k, b in enumerate(bounds)
    )
    meta = ObservationMeta(
        subarray=subarray,
        substrt1=substrt1,
        substrt2=substrt2,
        subsize1=ncols,
        subsize2=nrows,
        nints=nints,
        ngroups=ngroups,
        nframes=1,
        tframe=tframe,
        tgroup=tframe,
        effinttm=effinttm,
        target=target,
        exposure=stem,
        segments=segs,
        header={
            "PROGRAM": "09999", "OBSERVTN": "001", "VISIT": "001", "VISITGRP": "04",
            "SEQ_ID": "1", "ACT_ID": "03", "EXPOSURE": "00001",
            "TARGPROP": target, "SIMULATED": True,
        },
    )
    return LRSObservation(
        data=data,
        err=err,
        dq=dq,
        int_times=int_times,
        meta=meta,
        var_poisson=var_poisson,
        var_rnoise=var_rnoise,
        truth=truth,
    )


PRODUCT_TYPES["SimulationTruth"] = SimulationTruth
