"""How well ways of carrying a column pattern across the trace recover smooth shapes.

    python examples/bridges.py

For each shape ``p`` (noise-free), the part left once a line is fitted to
the background regions (8-16 and 56-71) is known on the regions and must be
carried across columns 17-55; the table gives the rms error on the trace
columns 28-44 divided by the rms of that part there (0: exact, 1: as bad as
leaving it out).  ``pca`` uses the natural cubic spline.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline

COLUMNS = np.arange(72.0)
REGION = np.zeros(72, dtype=bool)
REGION[8:17] = REGION[56:72] = True
TRACE = slice(28, 45)


def straight(values: np.ndarray) -> np.ndarray:
    return np.interp(COLUMNS, COLUMNS[REGION], values[REGION])


def polynomial(order: int):
    def bridge(values: np.ndarray) -> np.ndarray:
        return np.polyval(np.polyfit(COLUMNS[REGION], values[REGION], order), COLUMNS)

    bridge.__name__ = f"degree {order}"
    return bridge


def natural_spline(values: np.ndarray) -> np.ndarray:
    return CubicSpline(COLUMNS[REGION], values[REGION], bc_type="natural")(COLUMNS)


def shapes() -> dict[str, np.ndarray]:
    out = {
        f"glow {c}+-{w}": np.exp(-0.5 * ((COLUMNS - c) / w) ** 2)
        for c, w in ((24, 12), (36, 15), (48, 10), (36, 30), (10, 20), (60, 8), (20, 40))
    }
    out["parabola"] = ((COLUMNS - 30) / 36) ** 2
    out["sine"] = np.sin(2 * np.pi * COLUMNS / 60)
    out["exponential"] = np.exp(-COLUMNS / 20)
    return out


def main() -> None:
    bridges = [straight, polynomial(2), polynomial(3), polynomial(4), natural_spline]
    line = np.column_stack([np.ones_like(COLUMNS), COLUMNS])
    print(f"{'shape':14s}" + "".join(f"{b.__name__:>16s}" for b in bridges))
    for name, p in shapes().items():
        coef, *_ = np.linalg.lstsq(line[REGION], p[REGION], rcond=None)
        rest = p - line @ coef
        size = np.sqrt(np.mean(rest[TRACE] ** 2))
        errors = [np.sqrt(np.mean((b(rest)[TRACE] - rest[TRACE]) ** 2)) / size for b in bridges]
        print(f"{name:14s}" + "".join(f"{e:16.2f}" for e in errors))


if __name__ == "__main__":
    main()
