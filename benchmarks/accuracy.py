"""What the chain recovers of a known signal: simulated observations against their injected truth.

    python benchmarks/accuracy.py                  # 3 seeds of 1000 integrations (about 30 s)
    python benchmarks/accuracy.py --seeds 10 --nints 1000

The tests assert these quantities within tolerances; this script prints the numbers
themselves, for the documentation and for comparing versions.

* ``clean``: of the simulator's cosmic-ray hits stronger than 10 sigma on pixels not
  already flagged, the fraction replaced; the fraction of clean pixels near the trace
  that were replaced anyway; the fraction of replaced hits whose new value is within
  3 sigma of the noiseless scene.  200 integrations with 20 hits per integration.
* ``clean_time``: 600 hits of 5-20 sigma added on the trace's peak pixel of 300
  integrations (a 2% transit and a settling ramp); of those the spatial ``clean``
  lets through, the fraction ``clean_time`` finds, by strength.
* The documented chain (``exomiri.chain.DEFAULT_CHAIN``) on ``--nints`` integrations per
  seed, light curves in 0.5 micron bins from 5 to 12 micron fitted with the injected
  transit shape and a baseline linear in time and the measured x/y shifts:

  - depth pulls ``(fitted - injected) / error`` per bin, their mean, and the errors (ppm);
  - the rms of that fit's relative residuals over the truth's noise floor per integration
    (photon and read noise with the true profile, plus the noise of estimating the
    background from the region columns);
  - the same scatter over what ``flux_err`` predicts (1 means honest errors);
  - optimal over box extraction with the same aperture (8 columns either side): flux
    ratio (median, 5-10 micron) and light-curve scatter ratio;
  - the measured x and y shifts against the injected pointing: slope and rms about the line.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import exomiri
from exomiri import dq as dqflags
from exomiri.chain import CLEAN_PARAMETERS, DEFAULT_CHAIN
from exomiri.lightcurves import bin_spectra, fit_depth

EDGES = np.arange(5.0, 12.0 + 1e-9, 0.5)
REGIONS = ((8, 17), (56, 72))  # the background regions of subtract_background's default


def run_chain(obs, until: str | None = None):
    """The documented chain, or its steps before the first ``until``."""
    for verb, params in DEFAULT_CHAIN:
        if verb == until:
            break
        obs = getattr(obs, verb)(**params)
    return obs


def on_trace(obs, half_width: int = 4) -> np.ndarray:
    """(nints, rows, cols) True within ``half_width`` columns of the true trace, on rows with light."""
    truth = obs.truth
    near = np.abs(np.arange(obs.shape[2])[None, :] - truth.trace[:, None]) <= half_width
    near &= np.isfinite(truth.wavelength)[:, None]
    return np.broadcast_to(near, obs.shape)


def clean_figures(seed: int) -> None:
    obs = exomiri.simulate(nints=200, seed=seed, cosmic_rays=20)
    cleaned = obs.clean(**CLEAN_PARAMETERS)
    truth = obs.truth
    i, r, c = truth.cosmic_rays.T
    strong = (truth.cosmic_ray_amplitude / obs.err[i, r, c] > 10) & (obs.dq[i, r, c] == 0)
    replaced = (cleaned.dq & dqflags.OUTLIER) != 0
    found = replaced[i, r, c] & strong
    clean_pixels = on_trace(obs) & (obs.dq == 0)
    clean_pixels[i, r, c] = False
    noiseless = truth.noiseless()[i[found], r[found], c[found]]
    z = (cleaned.data[i[found], r[found], c[found]] - noiseless) / obs.err[i[found], r[found], c[found]]
    print(f"clean (200 integrations, seed {seed})")
    print(f"  hits > 10 sigma replaced       {found.sum()} of {strong.sum()} ({found.sum() / strong.sum():.2%})")
    print(f"  clean trace pixels replaced    {replaced[clean_pixels].mean():.1e}")
    print(f"  replaced within 3 sigma        {np.mean(np.abs(z) < 3):.2%} of the hits found")


def clean_time_figures(seed: int) -> None:
    obs = exomiri.simulate(nints=300, seed=seed, ngroups=200, depth=0.02, ramp=(0.005, 15.0), segments=3)
    truth = obs.truth
    rng = np.random.default_rng(seed + 1)
    ints, rows = np.unique(
        np.column_stack([rng.integers(0, obs.nints, 600), rng.integers(40, 395, 600)]), axis=0
    ).T
    cols = np.rint(truth.trace[rows] + truth.x_shift[ints]).astype(int)
    sigma = rng.uniform(5.0, 20.0, ints.size)
    data = np.array(obs.data)
    data[ints, rows, cols] += (sigma * obs.err[ints, rows, cols]).astype(np.float32)
    prepared = run_chain(obs.replace(data=data), until="extract")
    cleaned = prepared.clean_time()
    hits = (ints, rows, cols)
    missed = (prepared.dq[hits] & dqflags.OUTLIER) == 0
    found = (cleaned.dq[hits] & dqflags.OUTLIER) != 0
    print(f"clean_time (300 integrations, seed {seed}, {ints.size} hits of 5-20 sigma on the trace peak)")
    print(f"  let through by clean           {missed.sum()}")
    for lo, hi in ((5, 6), (6, 8), (8, 20)):
        band = missed & (sigma >= lo) & (sigma < hi)
        print(f"  found at {lo:2d}-{hi:2d} sigma            {found[band].sum()} of {band.sum()}")
    print(f"  found of those let through     {found[missed].mean():.1%}")
    print(f"  found by clean and clean_time  {found.sum()} of {found.size} ({found.mean():.1%})")


def chain_figures(nints: int, seed: int) -> dict[str, np.ndarray | float]:
    t0 = time.perf_counter()
    reduced = run_chain(exomiri.simulate(nints=nints, seed=seed))
    box = reduced.extract(method="box", aperture_left_width=8, aperture_right_width=8).align()
    truth, wave = reduced.truth, reduced.spectra.wavelength
    injected = truth.binned_depth(wave, EDGES)
    lc, lc_box = bin_spectra(reduced.spectra, EDGES), bin_spectra(box.spectra, EDGES)
    shifts = np.column_stack([reduced.shifts.x, reduced.shifts.y])
    depth, err, scatter = fit_depth(
        lc.flux, lc.flux_err, truth.transit_shape, reduced.times, regressors=shifts
    )
    box_shifts = np.column_stack([box.shifts.x, box.shifts.y])
    box_scatter = fit_depth(
        lc_box.flux, lc_box.flux_err, truth.transit_shape, box.times, regressors=box_shifts
    )[2]
    out: dict[str, np.ndarray | float] = {
        "pull": (depth - injected) / err,
        "err_ppm": err * 1e6,
        "scatter_over_floor": scatter / truth.binned_noise_floor(wave, EDGES, REGIONS),
        "scatter_over_flux_err": scatter / np.median(lc.flux_err / lc.flux, axis=0),
        "optimal_over_box_flux": float(np.nanmedian((lc.flux / lc_box.flux)[:, :10])),
        "optimal_over_box_scatter": scatter / box_scatter,
    }
    for axis, measured, injected_shift in (
        ("x", reduced.shifts.x, truth.x_shift), ("y", reduced.shifts.y, truth.y_shift)
    ):
        slope, offset = np.polyfit(injected_shift, measured, 1)
        out[f"{axis}_slope"] = float(slope)
        out[f"{axis}_rms"] = float(np.std(measured - (slope * injected_shift + offset)))
    out["seconds"] = time.perf_counter() - t0
    return out


def span(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{np.nanmin(values):+.3f} .. {np.nanmax(values):+.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nints", type=int, default=1000, help="integrations per chain run")
    parser.add_argument("--seeds", type=int, default=3, help="number of chain runs (seeds 11, 12, ...)")
    args = parser.parse_args(argv)

    clean_figures(seed=5)
    print()
    clean_time_figures(seed=21)
    print()
    print(f"the documented chain, {args.nints} integrations, bins of 0.5 micron from 5 to 12 micron")
    runs = []
    for seed in range(11, 11 + args.seeds):
        f = chain_figures(args.nints, seed)
        runs.append(f)
        print(f"seed {seed} ({f['seconds']:.0f} s)")
        print(f"  depth pulls                    {span(f['pull'])} (mean {np.mean(f['pull']):+.2f})")
        print(f"  depth errors, ppm              {np.min(f['err_ppm']):.0f} .. {np.max(f['err_ppm']):.0f}")
        print(f"  scatter / noise floor          {span(f['scatter_over_floor'])}")
        print(f"  scatter / flux_err             {span(f['scatter_over_flux_err'])}")
        print(f"  optimal / box flux (5-10 um)   {f['optimal_over_box_flux']:.5f}")
        print(f"  optimal / box scatter          {span(f['optimal_over_box_scatter'])}")
        print(f"  x shifts: slope {f['x_slope']:.4f}, rms {f['x_rms']:.4f} px;"
              f"  y shifts: slope {f['y_slope']:.4f}, rms {f['y_rms']:.4f} px")
    pulls = np.concatenate([f["pull"] for f in runs])
    per_seed = [np.mean(f["pull"]) for f in runs]
    print(f"all seeds: {pulls.size} bins, pulls mean {np.mean(pulls):+.2f} (seed means "
          f"{np.mean(per_seed):+.2f} +/- {np.std(per_seed) / np.sqrt(len(per_seed)):.2f}), "
          f"std {np.std(pulls):.2f}, |pull| > 3: {np.sum(np.abs(pulls) > 3)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
