"""Compare ``psf`` with exomiri's ``optimal`` extraction on a simulated observation.

    python examples/compare_with_optimal.py [--nints 300] [--jitter 0.12] [--seed 3] [--out FILE]

Prints the scatter of the binned light curves (0.5 micron bins, detrended
against the injected transit, a line in time and the injected shifts), the
error of the trace positions against the injected x shifts and the run
times, and with ``--out`` draws the figure shown in the README.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from exomiri_psf_extraction.evaluation import BIN_EDGES, binned_scatter, position_error

import exomiri

METHODS = {
    "optimal": ("optimal", {}),
    "psf": ("psf", {}),
    "psf, refine=False": ("psf", {"refine": False}),
}
STYLES = {"optimal": "tab:orange", "psf": "tab:blue", "psf, refine=False": "tab:cyan"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nints", type=int, default=300)
    parser.add_argument("--jitter", type=float, default=0.12)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    obs = exomiri.simulate(nints=args.nints, seed=args.seed, jitter=args.jitter)
    obs = obs.wavelength_map().subtract_background(method="col_wise")
    centres = 0.5 * (BIN_EDGES[:-1] + BIN_EDGES[1:])
    results, scatter = {}, {}
    print(f"{args.nints} integrations, jitter {args.jitter} px, seed {args.seed}")
    print("bin centres (micron)    " + " ".join(f"{c:6.2f}" for c in centres))
    for label, (method, params) in METHODS.items():
        t0 = time.perf_counter()
        out = obs.extract(method=method, **params)
        seconds = time.perf_counter() - t0
        results[label] = out
        scatter[label], predicted = binned_scatter(out)
        print(f"{label:18s} ppm  " + " ".join(f"{v * 1e6:6.0f}" for v in scatter[label]))
        print(
            f"{'':18s}      trace position error {position_error(out):.4f} px, {seconds:.1f} s"
        )
    print(f"{'predicted (psf)':18s} ppm  " + " ".join(f"{v * 1e6:6.0f}" for v in predicted))
    ratio = scatter["psf"] / scatter["optimal"]
    print("psf / optimal            " + " ".join(f"{v:6.3f}" for v in ratio))
    if args.out:
        figure(obs, results, scatter, predicted, centres, args)
        print(f"figure: {args.out}")


def figure(obs, results, scatter, predicted, centres, args) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=90)
    for label, values in scatter.items():
        left.plot(centres, values / predicted, "o-", ms=3, color=STYLES[label], label=label)
    left.axhline(1.0, color="k", lw=0.8, ls=":")
    left.set_xlabel("wavelength (micron)")
    left.set_ylabel("scatter of 0.5 micron light curves\n/ photon-noise prediction")
    left.set_title(f"{args.nints} integrations, {args.jitter} px rms jitter", fontsize=10)
    left.legend(fontsize=8)

    injected = obs.truth.x_shift - obs.truth.x_shift.mean()
    for label in ("optimal", "psf"):
        position = results[label].spectra.trace_position
        right.plot(
            (position - position.mean() - injected) * 1e3,
            lw=0.8,
            color=STYLES[label],
            label=f"{label}: {position_error(results[label]) * 1e3:.1f} mpx rms",
        )
    right.set_xlabel("integration")
    right.set_ylabel("trace position - injected x shift (mpx)")
    right.set_title("trace position as a decorrelation vector", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
