"""Compare ``pca`` with ``row_wise`` and ``col_wise`` on a background whose shape changes in time.

    python examples/compare_methods.py [--nints 300] [--seed 2] [--out pca_vs_row_wise.png]

Prints the residual rms of each method against the injected background on
the trace columns and draws the figure shown in the README.
"""

from __future__ import annotations

import argparse
import time
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from exomiri_pca_background.scene import TRACE_COLUMNS, residual_rms, variable_background_scene

METHODS = {
    "row_wise": ("row_wise", {}),
    "col_wise": ("col_wise", {}),
    "pca": ("pca", {}),
    "pca, carry_static": ("pca", {"carry_static": True}),
}
COLOURS = {"row_wise": "tab:orange", "col_wise": "tab:green", "pca": "tab:blue"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nints", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--out", default="pca_vs_row_wise.png")
    args = parser.parse_args()

    obs, true = variable_background_scene(args.nints, seed=args.seed)
    rows = np.isfinite(obs.truth.wavelength)
    results = {}
    print(f"{args.nints} integrations, seed {args.seed}; error on columns 28-44, rows with a wavelength")
    print(f"{'method':18s} {'pixel rms':>10s} {'changing':>9s} {'white':>8s} {'time':>6s}")
    for label, (method, params) in METHODS.items():
        t0 = time.perf_counter()
        out = obs.subtract_background(method=method, **params)
        seconds = time.perf_counter() - t0
        error = out.background.evaluate()[:, rows, TRACE_COLUMNS] - true[:, rows, TRACE_COLUMNS]
        changing = float(np.sqrt(np.mean((error - error.mean(axis=0)) ** 2)))
        rms = residual_rms(out, true)
        results[label] = out
        print(
            f"{label:18s} {rms['pixel']:10.2f} {changing:9.2f} {rms['white']:8.2f} {seconds:5.1f}s"
        )

    figure(obs, true, results, rows, args.out)
    print(f"figure: {args.out}")


def figure(obs, true, results, rows, path) -> None:
    ncols = obs.shape[2]
    columns = np.arange(ncols)
    brightest = int(np.argmax(true[:, 100, 24] - true[:, 100, 60]))
    band = slice(90, 110)  # rows near 12.5 micron, where the background is bright
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=90)

    for start, stop in ((8, 17), (56, 72)):
        left.axvspan(start - 0.5, stop - 0.5, color="0.92")
    left.axvspan(TRACE_COLUMNS.start - 0.5, TRACE_COLUMNS.stop - 0.5, color="gold", alpha=0.25)
    pixels = np.where(obs.usable_mask(), np.nan, obs.data)[brightest, band]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the reference columns hold no data
        data = np.nanmedian(pixels, axis=0)
    left.plot(columns, data, ".", color="0.5", label="data (star near column 36)")
    left.plot(columns, true[brightest, band].mean(axis=0), "k-", lw=2, label="injected")
    for label in ("row_wise", "col_wise", "pca", "pca, carry_static"):
        model = results[label].background.evaluate(np.array([brightest]))[0, band].mean(axis=0)
        style = "--" if "carry" in label else "-"
        left.plot(columns, model, style, color=COLOURS[label.split(",")[0]], label=label)
    left.set_ylim(0, 1.6 * np.nanmax(true[brightest, band]))
    left.set_xlabel("column (grey: background regions, gold: trace)")
    left.set_ylabel("background, rows 90-109 (DN/s)")
    left.set_title(f"integration {brightest}: the glow at its brightest", fontsize=10)
    left.legend(fontsize=8, loc="upper right")

    minutes = (obs.times - obs.times[0]) * 1440
    for label in ("row_wise", "col_wise", "pca"):
        error = results[label].background.evaluate()[:, rows, TRACE_COLUMNS]
        error = error - true[:, rows, TRACE_COLUMNS]
        white = error.sum(axis=2).mean(axis=1)
        right.plot(minutes, white - white.mean(), color=COLOURS[label], lw=1, label=label)
    right.set_xlabel("time (minutes)")
    right.set_ylabel("error summed over the trace columns,\nmean over rows, minus its mean (DN/s)")
    right.set_title("what reaches the white light curve", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
