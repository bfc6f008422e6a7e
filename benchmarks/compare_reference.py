"""exomiri against the reference tool (ExoTiC-MIRI 1.0.1): speed, and agreement of box spectra.

    python benchmarks/compare_reference.py                  # 40 integrations, 4 for the slow clean
    python benchmarks/compare_reference.py --nints 200 --clean-nints 10

The reference tool needs NumPy < 2 and an older ``jwst``, so it runs in its own
virtual environment, created on first use under ``benchmarks/.reference-venv``
(git-ignored) with ``exotic-miri==1.0.1``, ``numpy<2`` and ``jwst==1.12.5``.
Both tools read the same simulated ``*_rateints.fits`` (``exomiri.simulate``
written with ``.write``).  The reference steps are called directly
(``Step().process(...)``), never through ``Step.call``, and the wavelength map
is exomiri's calibration map handed over as a ``.npy`` file, so nothing
contacts CRDS.

Printed: seconds per integration of every step in both tools (the reference
clean and optimal extraction on the first ``--clean-nints`` integrations only,
they take over a second per integration), and the agreement of the box
spectra extracted from the same raw frames with the same aperture (columns
32-40: ``trace_position="constant"``, centre 36, widths 4; exomiri told not to
mask any DQ bit, as the reference masks none), on rows where no aperture
pixel is NaN (the reference sums NaN into the row).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REFERENCE_PACKAGES = ("exotic-miri==1.0.1", "numpy<2", "jwst==1.12.5")

REFERENCE_SCRIPT = r'''
import json, sys, time, warnings
import numpy as np
warnings.simplefilter("ignore")
from jwst import datamodels
from exotic_miri.stage_2 import (AlignSpectraStep, BackgroundSubtractStep, CleanOutliersStep,
                                 Extract1DBoxStep, Extract1DOptimalStep)

path, wave_path, out_path, n_clean = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
wavelength_map = np.load(wave_path)
model = datamodels.CubeModel(path)
nints = model.data.shape[0]
seconds = {}

def timed(name, n, func, *args):
    t0 = time.perf_counter()
    result = func(*args)
    seconds[name] = (time.perf_counter() - t0) / n
    return result

box = Extract1DBoxStep()
box.trace_position, box.aperture_center = "constant", 36
box.aperture_left_width, box.aperture_right_width = 4, 4
wave, flux, flux_err, sigmas = timed("box", nints, box.process, model, wavelength_map)

bkg = BackgroundSubtractStep()
bkg.method = "col_wise"
timed("subtract_background[col_wise]", nints, bkg.process, model)

small = datamodels.CubeModel(data=model.data[:n_clean].copy(), err=model.err[:n_clean].copy(),
                             dq=model.dq[:n_clean].copy())
clean = CleanOutliersStep()
clean.window_heights, clean.dq_bits_to_mask = [40], [0]
clean.poly_order, clean.outlier_threshold = 4, 5.0
cleaned, profile, counts = timed("clean", n_clean, clean.process, small)

optimal = Extract1DOptimalStep()
optimal.trace_position, optimal.aperture_center = "constant", 36
readnoise = np.full(cleaned.data.shape, 10.0 / (39 * 0.15904))  # DN/s, as simulated
timed("extract[optimal]", n_clean, optimal.process, cleaned, wavelength_map, profile, readnoise)

align = AlignSpectraStep()  # it needs finite frames and spectra (NaN are the raw reference columns)
align.align_spectra = True
finite = datamodels.CubeModel(data=np.nan_to_num(model.data), err=model.err, dq=model.dq)
timed("align", nints, align.process, finite, np.nan_to_num(flux), np.nan_to_num(flux_err))

np.savez(out_path, flux=flux, flux_err=flux_err)
print(json.dumps(seconds))
'''


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_reference_env(venv: Path) -> Path:
    """The reference environment's interpreter, installing it on first use."""
    python = venv_python(venv)
    check = [str(python), "-c", "import exotic_miri, jwst, numpy; assert numpy.__version__ < '2'"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating the reference environment in {venv} ({', '.join(REFERENCE_PACKAGES)}) ...")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", *REFERENCE_PACKAGES],
    ]
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            sys.exit(
                f"The reference environment could not be installed ({' '.join(command[:4])} "
                f"failed with exit code {done.returncode}).\n{tail}\n"
                f"exotic-miri 1.0.1 needs numpy<2 and jwst==1.12.5 from the package index; check "
                f"the connection to it, or remove {venv} and retry."
            )
    if subprocess.run(check, capture_output=True).returncode != 0:
        sys.exit(f"{venv} was created but cannot import exotic_miri/jwst with numpy<2.")
    return python


def exomiri_seconds(obs, runs: int) -> tuple[dict[str, float], np.ndarray]:
    """Median seconds per integration of exomiri's steps, and its raw box spectra."""
    clean = {"dq_bits_to_mask": [0], "window_heights": [40], "poly_order": 4,
             "outlier_threshold": 5.0}
    box = {"method": "box", "trace_position": "constant", "aperture_center": 36,
           "aperture_left_width": 4, "aperture_right_width": 4, "dq_bits_to_mask": []}
    mapped = obs.wavelength_map(source="calibration")
    mapped[:4].clean(**clean).subtract_background(method="col_wise").extract().align()  # warm-up
    times: dict[str, list[float]] = {}
    for _ in range(runs):
        def timed(name, func, **kwargs):
            t0 = time.perf_counter()
            result = func(**kwargs)
            times.setdefault(name, []).append((time.perf_counter() - t0) / obs.nints)
            return result

        raw_box = timed("box", mapped.extract, **box)
        timed("subtract_background[col_wise]", mapped.subtract_background, method="col_wise")
        cleaned = timed("clean", mapped.clean, **clean)
        optimal = timed("extract[optimal]", cleaned.extract, method="optimal")
        timed("align", optimal.align, align_spectra=True)
    return {k: statistics.median(v) for k, v in times.items()}, raw_box.spectra.flux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nints", type=int, default=40, help="integrations to simulate")
    parser.add_argument("--clean-nints", type=int, default=4,
                        help="integrations for the reference tool's clean and optimal extraction")
    parser.add_argument("--runs", type=int, default=3, help="exomiri timing runs (median)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--venv", type=Path, default=HERE / ".reference-venv")
    parser.add_argument("--workdir", type=Path, default=HERE / "output" / "reference")
    args = parser.parse_args(argv)

    python = ensure_reference_env(args.venv)
    import exomiri

    args.workdir.mkdir(parents=True, exist_ok=True)
    obs = exomiri.simulate(nints=args.nints, seed=args.seed)
    path = obs.write(str(args.workdir / "sim_rateints.fits"))[0]
    obs = exomiri.open(path)  # exactly what the reference reads
    wave_path = args.workdir / "wavelength_map.npy"
    np.save(wave_path, obs.wavelength_map(source="calibration").wavelength)
    out_path = args.workdir / "reference_box.npz"

    env = dict(os.environ, CRDS_PATH=str(args.workdir / "crds"),
               CRDS_SERVER_URL="https://crds-offline.invalid", MPLBACKEND="Agg")
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(python), "-c", REFERENCE_SCRIPT, path, str(wave_path), str(out_path),
         str(min(args.clean_nints, args.nints))],
        capture_output=True, text=True, env=env,
    )
    if done.returncode != 0:
        sys.exit(f"The reference tool failed (exit code {done.returncode}):\n{done.stderr[-3000:]}")
    reference = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"reference tool ran in {time.perf_counter() - t0:.1f} s")

    ours, our_box = exomiri_seconds(obs, args.runs)
    print(f"\n{args.nints} integrations (reference clean and optimal on {args.clean_nints})")
    print(f"{'step':<30s} {'reference s/int':>16s} {'exomiri s/int':>14s} {'speed-up':>9s}")
    for name in ("clean", "subtract_background[col_wise]", "box", "extract[optimal]", "align"):
        r, o = reference[name], ours[name]
        print(f"{name:<30s} {r:16.5f} {o:14.6f} {r / o:9.0f}")

    ref_box = np.load(out_path)["flux"]
    rows = np.isfinite(ref_box).all(axis=0) & np.isfinite(our_box).all(axis=0)
    rows &= (np.abs(ref_box) > 0).all(axis=0)
    rel = np.abs(our_box[:, rows] - ref_box[:, rows]) / np.abs(ref_box[:, rows])
    print(f"\nbox spectra, same pixels: {rows.sum()} of {rows.size} rows compared "
          f"(the others hold a NaN pixel in the aperture)")
    print(f"relative difference: max {rel.max():.2e}, median {np.median(rel):.2e} "
          f"(target 1e-5): {'PASS' if rel.max() < 1e-5 else 'FAIL'}")
    return 0 if rel.max() < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
