"""Write the small reference session of the current format: ``tests/data/session-<version>.h5``.

Run ``python tests/data/make_sessions.py`` once when a new session format
version is released, and commit the file.  Files of released versions are
frozen: an existing file is never overwritten, so that CI keeps proving that
exomiri reads (migrates) every format it ever wrote.  ``build()`` is also
what the test compares the files with.

The observation is built by hand (3 integrations of 20 x 8 pixels, every
optional cube, every product type, a WCS and a short history) from closed
formulas, so that it is small (a few tens of kB) and its values are known.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPE = (3, 20, 8)  # integrations, rows, columns


def _ramp(shape, scale=1.0, offset=0.0):
    """Distinct, exactly representable values: offset + scale * (flat index)."""
    return offset + scale * np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)


def build():
    from astropy import units as u
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gwcs

    from exomiri.observation import INT_TIMES_DTYPE, LRSObservation, ObservationMeta, Segment
    from exomiri.products import BackgroundModel, Shifts, Spectra, WavelengthQuality
    from exomiri.provenance import StepRecord
    from exomiri.simulation import SimulationTruth

    nints, nrows, ncols = SHAPE
    data = _ramp(SHAPE, 0.5, 100.0).astype(np.float32)
    data[1, 4, 2] = np.nan  # a missing pixel
    dq = np.zeros(SHAPE, np.uint32)
    dq[1, 4, 2] = 1
    dq[:, :, 0] = 2**31 | 1  # reference pixels
    int_times = np.zeros(nints, INT_TIMES_DTYPE)
    int_times["integration_number"] = np.arange(11, 11 + nints)
    for k, name in enumerate(INT_TIMES_DTYPE.names[1:]):
        int_times[name] = 60000.0 + 0.25 * k + 0.001 * np.arange(nints)
    rows = np.arange(nrows, dtype=np.float64)
    wavelength = np.repeat((14.0 - 0.5 * rows)[:, None], ncols, axis=1)
    spectrum_wave = 14.0 - 0.5 * rows
    meta = ObservationMeta(
        subsize1=ncols, subsize2=nrows, substrt1=1, substrt2=529, nints=12, ngroups=10,
        tframe=0.159, tgroup=0.159, effinttm=1.431, target="REFERENCE",
        exposure="jw01234001001_03103_00001",
        segments=(Segment("ref-seg002_mirimage_rateints.fits", 11, 13),),
        header={"PROGRAM": "01234", "CAL_VER": "1.14.0", "TSOVISIT": True, "NGROUPS": 10},
    )
    lam = models.Polynomial1D(1, c0=14.0, c1=-0.5)
    forward = models.Mapping((0, 1, 1)) | (models.Identity(1) & models.Identity(1) & lam)
    world = cf.CompositeFrame(
        [
            cf.Frame2D(name="pix", axes_order=(0, 1)),
            cf.SpectralFrame(name="spec", axes_order=(2,), unit=u.micron),
        ],
        name="world",
    )
    wcs = gwcs.WCS(forward_transform=forward, input_frame=cf.Frame2D(name="detector"), output_frame=world)
    background = BackgroundModel(
        basis=np.stack([np.ones(ncols), np.linspace(-1, 1, ncols)], axis=1),
        coeffs=_ramp((nints, nrows, 2), 0.01, 1.0),
        cov=np.broadcast_to(np.array([[1e-4, 1e-5], [1e-5, 4e-4]]), (nints, nrows, 2, 2)).copy(),
    )
    spectra = Spectra(
        wavelength=spectrum_wave,
        rows=np.arange(nrows),
        flux=_ramp((nints, nrows), 2.0, 1000.0),
        flux_err=np.full((nints, nrows), 3.5),
        trace_position=np.array([3.5, 3.52, 3.48]),
        trace_sigma=np.array([1.4, 1.41, 1.39]),
        quality=WavelengthQuality.of(spectrum_wave),
        n_rejected=(np.arange(nints * nrows).reshape(nints, nrows) % 3).astype(np.int32),
        method="optimal",
        aligned=True,
    )
    shifts = Shifts(
        x=np.array([0.01, -0.02, 0.005]),
        y=np.array([-0.03, 0.0, 0.04]),
        x_err=np.full(nints, 1e-3),
        y_err=np.full(nints, 4e-3),
    )
    truth = SimulationTruth(
        x_shift=np.array([0.01, -0.02, 0.005]),
        y_shift=np.array([-0.03, 0.0, 0.04]),
        transit_shape=np.array([0.0, 1.0, 0.5]),
        background_scale=np.array([1.0, 1.01, 0.99]),
        ramp=np.ones(nints),
        wavelength=spectrum_wave,
        depth=np.full(nrows, 0.005),
        spectrum=1000.0 + 2.0 * rows,
        trace=np.full(nrows, 3.5),
        psf_sigma=np.full(nrows, 1.4),
        wing_sigma=np.full(nrows, 4.0),
        wing_fraction=np.full(nrows, 0.1),
        background_row=np.full(nrows, 3.0),
        noise_floor=np.full(nrows, 3.4),
        grid=np.linspace(-1.0, nrows, 5),
        cumulative=np.linspace(0.0, 1.0, 5),
        cumulative_depth=np.linspace(0.0, 0.005, 5),
        cosmic_rays=np.array([[0, 5, 3], [2, 11, 4]]),
        cosmic_ray_amplitude=np.array([250.0, 80.0]),
        hot_pixels=np.array([[7, 6]]),
        dead_pixels=np.array([[9, 1]]),
        background_gradient=0.05,
        ncols=ncols,
        effinttm=1.431,
    )
    versions = {"exomiri": "0.1.0", "numpy": "2.0.0"}
    history = (
        StepRecord("wavelength_map", {"source": "wcs"}, None, "exomiri", "0.1.0",
                   {"rows_with_wavelength": 20}, "2026-01-01T00:00:00.000+00:00", 0.001, versions),
        StepRecord("clean", {"dq_bits_to_mask": [0, 11], "window_heights": [20], "poly_order": 2},
                   None, "exomiri", "0.1.0", {"replaced": 4}, "2026-01-01T00:00:01.000+00:00",
                   0.01, versions),
        StepRecord("extract", {"aperture_center": 3.5}, "optimal", "exomiri", "0.1.0",
                   {"rejected": 2}, "2026-01-01T00:00:02.000+00:00", 0.02, versions),
    )
    return LRSObservation(
        data=data,
        err=_ramp(SHAPE, 0.001, 2.0).astype(np.float32),
        dq=dq,
        int_times=int_times,
        meta=meta,
        var_poisson=_ramp(SHAPE, 0.01, 1.0).astype(np.float32),
        var_rnoise=np.full(SHAPE, 2.25, np.float32),
        wcs=wcs,
        wavelength_extension=wavelength + 0.001,
        wavelength=wavelength,
        trace=np.full(nrows, 3.5),
        profile=np.broadcast_to(np.float32(1 / ncols), SHAPE).copy(),
        outlier_counts=(np.arange(nints * nrows * 5).reshape(nints, nrows, 5) % 2).astype(np.int32),
        background=background,
        spectra=spectra,
        shifts=shifts,
        truth=truth,
        history=history,
    )


def main() -> int:
    from exomiri.io.hdf5 import FORMAT_VERSION

    path = HERE / f"session-{FORMAT_VERSION}.h5"
    if path.exists():
        print(f"{path} exists; files of released formats are never rewritten.")
        return 1
    build().save(path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
