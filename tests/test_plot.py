"""Diagnostic figures: each is drawn (Agg) on a small reduced simulation and holds real data."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D

import exomiri
from exomiri import StepOrderError
from exomiri.exceptions import InputError

matplotlib.use("Agg")

CLEAN = {"dq_bits_to_mask": [0, 11], "window_heights": [40], "poly_order": 4, "outlier_threshold": 5.0}


@pytest.fixture(scope="module")
def raw():
    return exomiri.simulate(nints=24, seed=5)


@pytest.fixture(scope="module")
def reduced(raw):
    return (
        raw.wavelength_map()
        .clean(**CLEAN)
        .subtract_background(method="row_wise")
        .clean(**CLEAN)
        .extract(method="optimal")
        .align()
    )


def _finite_data(artist) -> np.ndarray:
    """The finite numbers an artist draws."""
    if isinstance(artist, Line2D):
        values = np.concatenate([np.ravel(artist.get_xdata()), np.ravel(artist.get_ydata())])
    elif isinstance(artist, AxesImage | QuadMesh):
        values = np.ma.filled(np.ma.asarray(artist.get_array(), dtype=float), np.nan).ravel()
    else:  # errorbar collections, stairs
        paths = getattr(artist, "get_paths", lambda: [])()
        values = np.concatenate([p.vertices.ravel() for p in paths]) if paths else np.array([])
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def _data_artists(ax) -> list:
    artists = [*ax.lines, *ax.images, *ax.collections, *ax.patches]
    return [a for a in artists if _finite_data(a).size > 1]


def _check(fig, n_axes_with_data: int, labels: list[str]) -> None:
    assert isinstance(fig, Figure)
    with_data = [ax for ax in fig.axes if _data_artists(ax)]
    assert len(with_data) >= n_axes_with_data
    text = " ".join(
        [ax.get_xlabel() for ax in fig.axes]
        + [ax.get_ylabel() for ax in fig.axes]
        + [ax.get_title() for ax in fig.axes]
    )
    for label in labels:
        assert label in text, f"{label!r} not among the labels: {text!r}"
    fig.savefig(io.BytesIO(), format="png", dpi=40)  # renders without error


def test_frame_draws_trace_aperture_and_background(raw, reduced):
    fig = raw.plot.frame()
    _check(fig, 1, ["Column", "Row", "DN/s", "no step run yet"])
    ax = fig.axes[0]
    image = ax.images[0].get_array()
    assert image.shape == raw.shape[1:]
    # the median frame: compare one pixel away from outliers with numpy's median
    assert image[300, 36] == pytest.approx(np.median(raw.data[:, 300, 36]), rel=1e-6)
    assert len(ax.patches) == 2  # the two default background regions
    fig = reduced.plot.frame(integration=3)
    _check(fig, 1, ["integration 4", "Wavelength (µm)"])


def test_frame_aperture_comes_from_the_history(raw):
    obs = raw.wavelength_map().extract(
        method="box", trace_position="constant", aperture_center=30, aperture_left_width=2,
        aperture_right_width=3,
    )
    ax = obs.plot.frame().axes[0]
    lines = [line for line in ax.lines if line.get_label().startswith("box aperture")]
    assert len(lines) == 1
    edges = [np.asarray(line.get_xdata()) for line in ax.lines if line.get_color() == lines[0].get_color()]
    assert np.allclose(sorted(e[0] for e in edges), [30 - 2 - 0.5, 30 + 3 + 0.5])


def test_frame_rejects_a_list_of_integrations(raw):
    with pytest.raises(InputError, match="one integration"):
        raw.plot.frame(integration=[0, 1])


def test_cleaning_map(raw, reduced):
    fig = reduced.plot.cleaning_map()
    _check(fig, 2, ["Column", "Row", "Fraction of integrations replaced"])
    fraction = fig.axes[0].images[0].get_array()
    # the reference columns 0-3 are NaN in every integration: replaced everywhere
    assert np.all(fraction[:, :4] == 1.0)
    with pytest.raises(StepOrderError, match=r"obs\.clean\(\)"):
        raw.plot.cleaning_map()


def test_background(raw, reduced):
    fig = reduced.plot.background()
    _check(fig, 3, ["Wavelength (µm)", "Background (DN/s per pixel)", "Time since first integration (h)"])
    with pytest.raises(StepOrderError, match=r"obs\.subtract_background\(\)"):
        raw.plot.background()


def test_spectra_are_drawn_on_wavelength_edges(raw, reduced):
    fig = reduced.plot.spectra()
    _check(fig, 1, ["Wavelength (µm)", "Flux / time median"])
    mesh = next(c for c in fig.axes[0].collections if isinstance(c, QuadMesh))
    y_edges = mesh.get_coordinates()[:, 0, 1]
    s = reduced.spectra
    wave = np.sort(s.wavelength[np.isfinite(s.wavelength)])
    # one quadrilateral per row, each holding its row's wavelength, with non-uniform heights
    assert y_edges.size == wave.size + 1
    assert np.all((y_edges[:-1] < wave) & (wave < y_edges[1:]))
    heights = np.diff(y_edges)
    assert heights.max() > 2 * heights.min()
    values = np.ma.filled(np.ma.asarray(mesh.get_array(), dtype=float), np.nan)
    assert np.isfinite(values).mean() > 0.95
    assert np.nanmedian(values) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(StepOrderError, match=r"obs\.extract\(\)"):
        raw.plot.spectra()


def test_white_light(raw, reduced):
    fig = reduced.plot.white_light()
    _check(fig, 1, ["Relative flux", "White light 5-12 µm"])
    with pytest.raises(StepOrderError, match=r"obs\.extract\(\)"):
        raw.plot.white_light()


def test_shifts_show_measured_and_injected(raw, reduced):
    fig = reduced.plot.shifts()
    _check(fig, 4, ["x shift (px)", "y shift (px)", "PSF width", "Trace position"])
    with pytest.raises(StepOrderError, match=r"obs\.align\(\)"):
        raw.plot.shifts()


def test_light_curves_are_offset(raw, reduced):
    edges = [5.0, 7.0, 9.0, 11.0]
    fig = reduced.plot.light_curves(bins=edges)
    _check(fig, 1, ["Relative flux", "3 bins"])
    ax = fig.axes[0]
    levels = [np.nanmedian(line.get_ydata()) for line in ax.lines]
    assert len(levels) == 3
    assert np.all(np.diff(levels) < 0)  # shortest wavelength on top, each one lower
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["5.00-7.00 µm", "7.00-9.00 µm", "9.00-11.00 µm"]
    with pytest.raises(StepOrderError, match=r"obs\.extract\(\)"):
        raw.plot.light_curves()


def _line(fig, prefix: str) -> Line2D:
    return next(line for line in fig.axes[0].lines if line.get_label().startswith(prefix))


def test_cleaning_marks_an_injected_cosmic_ray(raw):
    truth = raw.truth
    # a strong hit on a finite, unflagged pixel, away from the edges of the frame
    strong = (truth.cosmic_ray_amplitude > 50 * raw.err[tuple(truth.cosmic_rays.T)]) & (
        truth.cosmic_rays[:, 2] > 10
    )
    i, row, column = (int(v) for v in truth.cosmic_rays[np.flatnonzero(strong)[0]])
    fig = raw.plot.cleaning(column=column, integration=i, **CLEAN)
    _check(fig, 2, ["Row (dispersion)", "Data (DN/s)", "before clean()"])
    clipped = _line(fig, "clipped")
    assert row in np.asarray(clipped.get_xdata()).astype(int)
    # the drawn fit is the one clean() replaces the pixel with
    cleaned = raw.clean(**CLEAN)
    fits = [line for line in fig.axes[0].lines if line.get_color() == _line(fig, "polynomial").get_color()]
    x = np.concatenate([line.get_xdata() for line in fits])
    y = np.concatenate([line.get_ydata() for line in fits])
    assert y[np.flatnonzero(x == row)[0]] == pytest.approx(float(cleaned.data[i, row, column]), rel=1e-5)

    # after clean() the history supplies the parameters and the fits come out the same
    after = cleaned.plot.cleaning(column=column, integration=i)
    _check(after, 2, ["after clean()"])
    fits_after = [
        line for line in after.axes[0].lines if line.get_color() == _line(after, "polynomial").get_color()
    ]
    y_after = np.concatenate([line.get_ydata() for line in fits_after])
    scale = np.nanmax(np.abs(y))
    assert np.allclose(y_after, y, rtol=0, atol=1e-4 * scale)
    replaced = _line(after, "replaced")
    assert row in np.asarray(replaced.get_xdata()).astype(int)


def test_cleaning_checks_its_arguments(raw):
    with pytest.raises(InputError, match="column"):
        raw.plot.cleaning(column=500)
    with pytest.raises(InputError, match="unknown parameter"):
        raw.plot.cleaning(window_widths=[40])


def test_figures_draw_into_given_axes(reduced):
    fig = Figure()
    ax = fig.add_subplot()
    assert reduced.plot.spectra(ax=ax) is fig
    assert _data_artists(ax)
