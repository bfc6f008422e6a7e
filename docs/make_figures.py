"""Draw the figures of the documentation into docs/img/ with the observation's plot accessor.

    python docs/make_figures.py            # about a minute; writes docs/img/*.png

One simulated observation (300 integrations, seed 0) is reduced with the
documented chain; each figure is a call of ``obs.plot.<name>()`` on the
observation after the step it illustrates.  A PNG larger than
:data:`MAX_BYTES` is reduced to a 256-colour palette, so that each stays
under 150 kB in the repository.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from PIL import Image

import exomiri
from exomiri.cli import Config, run_plan

FOLDER = Path(__file__).parent / "img"
DPI = 80
MAX_BYTES = 140 * 1024
#: Figure file name -> (step after which it is drawn, plot method, its keyword arguments).
FIGURES = {
    "frame-raw": ("wavelength_map", "frame", {}),
    "cleaning-before": (
        "wavelength_map",
        "cleaning",
        {"window_heights": [40], "outlier_threshold": 5.0},
    ),
    "cleaning-map": ("clean", "cleaning_map", {}),
    "background": ("subtract_background", "background", {}),
    "frame-reduced": ("extract", "frame", {}),
    "spectra": ("extract", "spectra", {}),
    "white-light": ("extract", "white_light", {}),
    "light-curves": ("extract", "light_curves", {"resolution": 8}),
    "shifts": ("align", "shifts", {}),
}


def save(figure, path: Path) -> int:
    """Write ``figure`` as PNG (a palette PNG when large); returns the size in bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    if buffer.tell() <= MAX_BYTES:
        path.write_bytes(buffer.getvalue())
    else:
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
        image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    return path.stat().st_size


def main() -> None:
    FOLDER.mkdir(exist_ok=True)
    obs = exomiri.simulate(nints=300, seed=0)
    states = {}
    for planned in Config().plan():
        obs = run_plan(obs, [planned])
        states.setdefault(planned.step, obs)  # the first time each step ran
    for name, (step, method, kwargs) in FIGURES.items():
        size = save(getattr(states[step].plot, method)(**kwargs), FOLDER / f"{name}.png")
        print(f"{name + '.png':<22s} {size / 1024:6.1f} kB")


if __name__ == "__main__":
    main()
