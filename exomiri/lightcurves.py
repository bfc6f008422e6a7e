"""Spectral light curves: binning spectra in wavelength and fitting a transit depth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .exceptions import InputError
from .products import Spectra

__all__ = ["BinnedLightCurves", "bin_spectra", "fit_depth"]


@dataclass(frozen=True)
class BinnedLightCurves:
    """Light curves summed over wavelength bins.

    ``edges`` (nbins + 1,) micron; ``wavelength`` (nbins,) bin centres;
    ``flux``/``flux_err`` (nints, nbins) summed flux of the rows in each bin;
    ``n_rows`` (nbins,) rows contributing to each bin.
    """

    edges: np.ndarray
    wavelength: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    n_rows: np.ndarray


def bin_spectra(spectra: Spectra, edges: np.ndarray) -> BinnedLightCurves:
    """Sum the flux of the rows whose wavelength falls in each [edge_k, edge_k+1) bin.

    Rows with a NaN flux in an integration leave that integration's bin flux
    NaN (it cannot be compared with the others).
    """
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise InputError(f"bin edges must be increasing, with at least two values; got {edges!r}.")
    wave = spectra.wavelength
    index = np.digitize(wave, edges) - 1
    index[~np.isfinite(wave)] = -1
    nbins = len(edges) - 1
    onehot = np.zeros((len(wave), nbins))
    ok = (index >= 0) & (index < nbins)
    onehot[np.flatnonzero(ok), index[ok]] = 1.0
    flux = np.where(np.isfinite(spectra.flux), spectra.flux, 0.0) @ onehot
    var = np.where(np.isfinite(spectra.flux_err), spectra.flux_err**2, 0.0) @ onehot
    bad = (~np.isfinite(spectra.flux) | ~np.isfinite(spectra.flux_err)).astype(float) @ onehot
    n_rows = onehot.sum(axis=0).astype(int)
    flux[(bad > 0) | (n_rows == 0)[None, :]] = np.nan
    return BinnedLightCurves(
        edges=edges,
        wavelength=0.5 * (edges[1:] + edges[:-1]),
        flux=flux,
        flux_err=np.sqrt(var),
        n_rows=n_rows,
    )


def fit_depth(
    flux: np.ndarray,
    flux_err: np.ndarray,
    shape: np.ndarray,
    time: np.ndarray,
    regressors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``flux = (c0 + c1 (t - tmid) + sum_j b_j x_j) (1 - depth * shape)`` per column.

    ``shape`` (nints,) is the transit's shape (0 out of transit, 1 at full
    depth), e.g. from a white-light fit or, for simulations, the truth.
    ``regressors`` (nints, m) are decorrelation vectors (x/y shifts, PSF
    width, ...), centred before use.  The baseline times (1 - depth * shape)
    is linearised as baseline - c0 depth shape - c1 depth t shape, exact for a
    baseline linear in time and first order in depth times the regressors'
    small terms.  Returns ``depth``, its 1-sigma error (scaled up by the
    reduced chi-square when that exceeds 1) and the rms of the relative
    residuals (nbins,).
    """
    flux = np.atleast_2d(np.asarray(flux, dtype=float).T).T
    flux_err = np.atleast_2d(np.asarray(flux_err, dtype=float).T).T
    t = np.asarray(time, dtype=float)
    t = t - np.mean(t)
    s = np.asarray(shape, dtype=float)
    columns = [np.ones_like(t), t, -s, -s * t]
    if regressors is not None:
        x = np.asarray(regressors, dtype=float).reshape(len(t), -1)
        columns += list((x - np.nanmean(x, axis=0)).T)
    design = np.column_stack(columns)
    nparam = design.shape[1]
    nb = flux.shape[1]
    depth = np.full(nb, np.nan)
    depth_err = np.full(nb, np.nan)
    rms = np.full(nb, np.nan)
    for k in range(nb):
        ok = np.isfinite(flux[:, k]) & np.isfinite(flux_err[:, k]) & (flux_err[:, k] > 0)
        ok &= np.all(np.isfinite(design), axis=1)
        if ok.sum() < nparam + 2:
            continue
        w = 1.0 / flux_err[ok, k]
        a = design[ok] * w[:, None]
        b = flux[ok, k] * w
        coef, *_ = np.linalg.lstsq(a, b, rcond=None)
        cov = np.linalg.inv(a.T @ a)
        resid = b - a @ coef
        chi2 = float(resid @ resid) / max(ok.sum() - nparam, 1)
        cov *= max(chi2, 1.0)
        d = coef[2] / coef[0]
        # depth = coef2 / coef0: propagate both uncertainties.
        grad = np.zeros(nparam)
        grad[0], grad[2] = -coef[2] / coef[0] ** 2, 1.0 / coef[0]
        depth[k] = d
        depth_err[k] = float(np.sqrt(grad @ cov @ grad))
        model = design[ok] @ coef
        rms[k] = float(np.std((flux[ok, k] - model) / model))
    return depth, depth_err, rms
