"""Speed and peak memory of the documented chain, step by step.

    python benchmarks/bench_chain.py 1000                 # simulate 1000 integrations
    python benchmarks/bench_chain.py 1000 --runs 5
    python benchmarks/bench_chain.py 0 --read "jw*_rateints.fits"   # real segments

For every step of the documented chain (``wavelength_map``, ``clean``,
``subtract_background``, ``clean``, ``extract``, ``align``; the chain of
``exomiri.chain.DEFAULT_CHAIN``) it prints the median integrations per second over
``--runs`` runs (after one warm-up run on a few integrations, so that plugin
loading and imports are not counted), the whole chain's rate, and the peak
resident set size of the process (``resource.getrusage``), which includes the
input observation itself.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import exomiri
from exomiri.chain import DEFAULT_CHAIN as CHAIN


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6


def run_once(obs) -> list[float]:
    """Seconds spent in each step of the chain."""
    times = []
    for verb, params in CHAIN:
        t0 = time.perf_counter()
        obs = getattr(obs, verb)(**params)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nints", type=int, help="integrations to simulate (ignored with --read)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--read", nargs="+", help="read these *_rateints.fits instead")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    obs = exomiri.open(args.read) if args.read else exomiri.simulate(nints=args.nints, seed=args.seed)
    n = obs.nints
    print(f"observation: {n} integrations of {obs.shape[1]} x {obs.shape[2]} "
          f"({obs.nbytes / 1e6:.0f} MB, loaded in {time.perf_counter() - t0:.1f} s)")
    run_once(obs[: min(n, 8)])  # warm-up: imports, plugin loading, caches

    runs = [run_once(obs) for _ in range(args.runs)]
    print(f"{'step':<30s} {'median int/s':>13s} {'min':>9s} {'max':>9s}   ({args.runs} runs)")
    for k, (verb, params) in enumerate(CHAIN):
        rates = [n / r[k] for r in runs]
        label = f"{verb}[{params['method']}]" if "method" in params else verb
        print(f"{label:<30s} {statistics.median(rates):13.0f} {min(rates):9.0f} {max(rates):9.0f}")
    totals = [n / sum(r) for r in runs]
    print(f"{'whole chain':<30s} {statistics.median(totals):13.1f} {min(totals):9.1f} {max(totals):9.1f}")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
