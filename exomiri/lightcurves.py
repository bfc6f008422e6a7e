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


# --------------------------------------------------------------------------- datasets

_UNITS = {
    "flux": "DN/s",
    "flux_error": "DN/s",
    "white_flux": "DN/s",
    "white_flux_error": "DN/s",
    "background": "DN / (s pix)",
    "background_level": "DN / (s pix)",
    "x_shift": "pixel",
    "y_shift": "pixel",
    "trace_position": "pixel",
    "psf_sigma": "pixel",
    "n_outliers": "",
    "wavelength": "micron",
    "wavelength_lower": "micron",
    "wavelength_upper": "micron",
    "time": "d",
}
#: The time coordinate: BJD_TDB in days (a CF "units" of plain days, so that
#: netCDF readers do not take it for a calendar date).
_TIME_ATTRS = {"long_name": "mid-time of the integration", "time_scale": "BJD_TDB"}
#: Wavelength range (micron) of the white-light curve of :func:`to_xarray`.
WHITE_RANGE = (5.0, 12.0)


def bin_edges(
    spectra: Spectra,
    bins: np.ndarray | None = None,
    *,
    resolution: float | None = None,
    pixels: int | None = None,
    wavelength_range: tuple[float, float] = (5.0, 12.0),
) -> np.ndarray:
    """Wavelength bin edges (micron), given as edges, as a resolution or as a width in rows.

    Give at most one of ``bins`` (edges), ``resolution`` (R = lambda / delta
    lambda, constant over ``wavelength_range``) or ``pixels`` (rows per bin,
    counted from the long-wavelength end of the range).  With none, 0.5
    micron bins over ``wavelength_range``.
    """
    given = [x is not None for x in (bins, resolution, pixels)]
    if sum(given) > 1:
        raise InputError("Give only one of bins (edges), resolution or pixels.")
    lo, hi = (float(v) for v in wavelength_range)
    if not 0 < lo < hi:
        raise InputError(f"wavelength_range={wavelength_range!r} must be (low, high) in micron.")
    if bins is not None:
        return np.asarray(bins, dtype=float)
    if resolution is not None:
        if not resolution > 0:
            raise InputError(f"resolution={resolution!r} must be positive (R = lambda / dlambda).")
        n = max(1, int(np.floor(np.log(hi / lo) * resolution)))
        return lo * np.exp(np.arange(n + 1) * np.log(hi / lo) / n)
    if pixels is not None:
        if int(pixels) < 1:
            raise InputError(f"pixels={pixels!r} must be a positive number of rows per bin.")
        wave = spectra.wavelength
        rows = np.flatnonzero(np.isfinite(wave) & (wave >= lo) & (wave < hi))
        if rows.size == 0:
            raise InputError(f"No row has a wavelength in {wavelength_range} micron.")
        # rows run from long to short wavelength; edges at row boundaries
        ordered = np.sort(wave[rows])
        cut = ordered[:: int(pixels)]
        mids = 0.5 * (cut[1:] + ordered[np.arange(int(pixels), len(ordered), int(pixels)) - 1])
        return np.unique(np.concatenate([[ordered[0] - 1e-9], mids, [ordered[-1] + 1e-9]]))
    return np.arange(lo, hi + 1e-9, 0.5)


def _per_integration(obs) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Decorrelation vectors per integration, NaN where a step has not run."""
    n = obs.nints
    nan = np.full(n, np.nan)
    spectra, shifts = obs.spectra, obs.shifts
    background = _row_background(obs)
    if background is not None:
        wave = spectra.wavelength
        with np.errstate(invalid="ignore"):
            rows = np.flatnonzero((wave >= WHITE_RANGE[0]) & (wave < WHITE_RANGE[1]))
        level = np.mean(background[:, rows], axis=1) if rows.size else nan
    white = bin_spectra(spectra, np.array(WHITE_RANGE))
    return {
        "x_shift": (("time",), shifts.x if shifts is not None else nan),
        "y_shift": (("time",), shifts.y if shifts is not None else nan),
        "trace_position": (("time",), spectra.trace_position),
        "psf_sigma": (("time",), spectra.trace_sigma),
        "background_level": (("time",), level if background is not None else nan),
        "white_flux": (("time",), white.flux[:, 0]),
        "white_flux_error": (("time",), white.flux_err[:, 0]),
    }


def _row_background(obs) -> np.ndarray | None:
    if obs.background is None:
        return None
    column = float(np.nanmedian(obs.spectra.trace_position))
    level = obs.background.level(column)
    return np.broadcast_to(level, (obs.nints, obs.shape[1]))


def _attrs(obs) -> dict[str, str]:
    import json

    return {
        "target": obs.meta.target,
        "exposure": obs.meta.exposure,
        "subarray": obs.meta.subarray,
        "effinttm_s": float(obs.meta.effinttm),
        "history": json.dumps([json.loads(r.to_json()) for r in obs.history]),
        "created_by": "exomiri",
    }


def _with_units(ds):
    for name, unit in _UNITS.items():
        if name in ds.variables:
            ds[name].attrs["units"] = unit
    ds["time"].attrs.update(_TIME_ATTRS)
    return ds


def to_xarray(obs):
    """The spectra at full resolution as an ``xarray.Dataset`` (time x wavelength).

    Variables: ``flux``, ``flux_error``, ``background`` (at the trace, per
    pixel), ``n_outliers`` (values replaced within 4 columns of the trace by
    ``clean``, plus those of a later ``clean_time``: pixels, or one per
    replaced spectral channel) on (time, wavelength); on time, the
    decorrelation vectors ``x_shift``, ``y_shift`` (from ``align``; NaN
    before), ``trace_position``, ``psf_sigma``, ``background_level`` (the
    background at the trace averaged over the rows of :data:`WHITE_RANGE`,
    per pixel; NaN without background subtraction) and the white-light
    ``white_flux``/``white_flux_error`` (rows of :data:`WHITE_RANGE`);
    coordinates ``time`` (BJD_TDB mid-times in days), ``integration_number``,
    ``wavelength`` (micron, one per detector row, in row order), ``row`` and
    ``quality``.  Every variable carries its ``units``.
    """
    import xarray as xr

    if obs.spectra is None:
        from .exceptions import StepOrderError

        raise StepOrderError("to_xarray() needs spectra; call obs.extract() first.")
    s = obs.spectra
    data_vars = {
        "flux": (("time", "wavelength"), s.flux),
        "flux_error": (("time", "wavelength"), s.flux_err),
        **_per_integration(obs),
    }
    background = _row_background(obs)
    if background is not None:
        data_vars["background"] = (("time", "wavelength"), np.array(background))
    if obs.outlier_counts is not None:
        data_vars["n_outliers"] = (("time", "wavelength"), obs.outlier_counts[..., -1])
    ds = xr.Dataset(
        data_vars,
        coords={
            "time": obs.times,
            "integration_number": ("time", obs.integration_numbers),
            "wavelength": s.wavelength,
            "row": ("wavelength", s.rows),
            "quality": ("wavelength", s.quality),
        },
        attrs=_attrs(obs),
    )
    return _with_units(ds)


def light_curves(
    obs,
    bins: np.ndarray | None = None,
    *,
    resolution: float | None = None,
    pixels: int | None = None,
    wavelength_range: tuple[float, float] = (5.0, 12.0),
):
    """Binned spectral light curves and the white-light curve as an ``xarray.Dataset``.

    Bins: see :func:`bin_edges`.  Variables as in :func:`to_xarray`, summed
    (flux, n_outliers) or averaged (background) over the rows of each bin,
    plus ``white_flux``/``white_flux_error`` over ``wavelength_range`` and
    the bin edges ``wavelength_lower``/``wavelength_upper``.
    """
    import xarray as xr

    full = to_xarray(obs)
    edges = bin_edges(
        obs.spectra, bins, resolution=resolution, pixels=pixels, wavelength_range=wavelength_range
    )
    binned = bin_spectra(obs.spectra, edges)
    white = bin_spectra(obs.spectra, np.array([edges[0], edges[-1]]))
    data_vars = {
        "flux": (("time", "wavelength"), binned.flux),
        "flux_error": (("time", "wavelength"), binned.flux_err),
        **{k: (v.dims, v.values) for k, v in full.data_vars.items() if v.dims == ("time",)},
        # the white light over this call's range, not to_xarray's
        "white_flux": (("time",), white.flux[:, 0]),
        "white_flux_error": (("time",), white.flux_err[:, 0]),
    }
    wave = obs.spectra.wavelength
    index = np.digitize(wave, edges) - 1
    members = [np.flatnonzero(index == k) for k in range(len(edges) - 1)]
    for name, reduce in (("background", np.mean), ("n_outliers", np.sum)):
        if name in full:
            values = full[name].values
            data_vars[name] = (
                ("time", "wavelength"),
                np.column_stack(
                    [reduce(values[:, m], axis=1) if m.size else np.full(obs.nints, np.nan) for m in members]
                ),
            )
    ds = xr.Dataset(
        data_vars,
        coords={
            "time": obs.times,
            "integration_number": ("time", obs.integration_numbers),
            "wavelength": binned.wavelength,
            "wavelength_lower": ("wavelength", edges[:-1]),
            "wavelength_upper": ("wavelength", edges[1:]),
            "n_rows": ("wavelength", binned.n_rows),
        },
        attrs=_attrs(obs),
    )
    return _with_units(ds)


def export(obs, path, **binning) -> str:
    """Write light curves to ``path``: ``.nc`` (netCDF-4, via xarray) or ``.ecsv`` (astropy).

    With no binning arguments the spectra are written at full resolution
    (:func:`to_xarray`); with ``bins``/``resolution``/``pixels`` binned
    (:func:`light_curves`).  Units are written with the values.  The file is
    written under a temporary name beside ``path`` and moved into place when
    complete, so a failed export never leaves a partial file.
    """
    import os
    from pathlib import Path

    from .io import commit, temporary_beside

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".nc", ".ecsv"):
        raise InputError(f"Cannot export to {path.name!r}: use a .nc or .ecsv file name.")
    tmp = temporary_beside(path, f"export to {str(path)!r}")
    try:
        ds = light_curves(obs, **binning) if binning else to_xarray(obs)
        if suffix == ".nc":
            ds.to_netcdf(tmp, engine="h5netcdf")
        else:
            from astropy import units as u
            from astropy.table import Table

            table = Table(meta=dict(ds.attrs))
            table["time"] = ds["time"].values * u.day
            table.meta["time_scale"] = "BJD_TDB mid-times of the integrations"
            table["integration_number"] = ds["integration_number"].values
            for name, var in ds.data_vars.items():
                unit = var.attrs.get("units") or None
                table[name] = var.values * (u.Unit(unit) if unit else 1)
            table.meta["wavelength_micron"] = ds["wavelength"].values.tolist()
            table.write(tmp, format="ascii.ecsv", overwrite=True)
        commit(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return str(path)


