"""Peak memory and speed of a chunked reduction of a long observation.

    python benchmarks/bench_memory.py 10000                 # 10,000 integrations, chunks of 500
    python benchmarks/bench_memory.py 2000 --chunks 250 --executor dask

1. Simulates the observation piece by piece (``exomiri.simulate`` holds a
   whole observation in memory, so each piece of ``--segment`` integrations is
   simulated with its own seed, renumbered to follow the previous one and
   written as the next ``*-segNNN_mirimage_rateints.fits`` segment), unless
   the segments are already in ``--workdir``.
2. Runs ``exomiri.reduce(segments, out=session.h5, chunks=...)`` (the
   documented chain) in a fresh child process and reports that process's
   peak resident set size (``resource.getrusage``), the wall time, the
   integrations per second and the size of the session file.

The segments take about 0.6 MB per integration on disk (6 GB for 10,000),
the session about half that.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEM = "jw09999001001_04103_00001"


def simulate_segments(nints: int, segment: int, folder: Path) -> list[str]:
    import exomiri

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    nseg = (nints + segment - 1) // segment
    for k in range(nseg):
        name = folder / f"{STEM}-seg{k + 1:03d}_mirimage_rateints.fits"
        names.append(str(name))
        if name.exists():
            continue
        first = k * segment
        n = min(segment, nints - first)
        piece = exomiri.simulate(nints=n, seed=k)
        times = piece.int_times.copy()
        times["integration_number"] += first
        step = (times["int_start_MJD_UTC"][1] - times["int_start_MJD_UTC"][0]) if n > 1 else 0.0
        for column in times.dtype.names[1:]:
            times[column] += first * step
        piece = dataclasses.replace(
            piece,
            int_times=times,
            meta=dataclasses.replace(piece.meta, nints=nints, segments=()),
            truth=None,
        )
        piece.write(str(name))
        del piece
        print(f"  wrote {name.name} (integrations {first + 1}-{first + n})", flush=True)
    return names


def child(args: argparse.Namespace) -> int:
    import exomiri

    segments = sorted(str(p) for p in Path(args.workdir).glob(f"{STEM}-seg*_mirimage_rateints.fits"))
    out = Path(args.workdir) / "session.h5"
    t0 = time.perf_counter()
    result = exomiri.reduce(
        segments,
        out=out,
        chunks=args.chunks,
        template_integrations=args.template,
        executor=args.executor,
    )
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "nints": result.nints,
        "seconds": seconds,
        "peak_rss_bytes": peak,
        "session_bytes": out.stat().st_size,
        "steps": result.steps_done,
    }))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nints", type=int, nargs="?", default=10000)
    parser.add_argument("--chunks", type=int, default=500, help="integrations per chunk")
    parser.add_argument("--template", type=int, default=500, help="template_integrations")
    parser.add_argument("--segment", type=int, default=500, help="integrations per segment file")
    parser.add_argument("--executor", default="serial", choices=("serial", "dask"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workdir = args.workdir or HERE / "output" / f"memory-{args.nints}"
    if args.child:
        return child(args)

    t0 = time.perf_counter()
    print(f"segments of {args.nints} simulated integrations in {args.workdir}:", flush=True)
    simulate_segments(args.nints, args.segment, args.workdir)
    print(f"  ready in {time.perf_counter() - t0:.0f} s", flush=True)
    command = [sys.executable, __file__, str(args.nints), "--child", "--chunks", str(args.chunks),
               "--template", str(args.template), "--executor", args.executor,
               "--workdir", str(args.workdir)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the reduction failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"exomiri.reduce({report['nints']} integrations, chunks={args.chunks}, "
          f"template_integrations={args.template}, executor={args.executor!r})")
    print(f"  steps: {' > '.join(report['steps'])}")
    print(f"  wall time: {report['seconds']:.0f} s ({report['nints'] / report['seconds']:.1f} integrations/s)")
    print(f"  peak RSS: {report['peak_rss_bytes'] / 1e9:.2f} GB")
    print(f"  session file: {report['session_bytes'] / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
