"""Diagnostic figures: ``obs.plot.<figure>()``.

Every method draws on a new :class:`matplotlib.figure.Figure` (or into the
``ax``/``fig`` given), returns the Figure and never calls ``plt.show``, so it
works with any backend, Agg included, and in notebooks (a returned Figure is
displayed once).  Save with ``fig.savefig("name.png")``.

=====================  ===========================================  ==========================
method                 shows                                        needs
=====================  ===========================================  ==========================
``frame``              median frame (or one integration), trace,    nothing
                       extraction aperture, background columns
``cleaning_map``       fraction of integrations replaced per        ``obs.clean()``
                       pixel; replaced pixels near the trace per row
``cleaning``           one column's windowed polynomial fits with   nothing (or a cleaned obs)
                       the clipped pixels marked
``background``         background per row over time and its mean    ``obs.subtract_background()``
                       level
``spectra``            relative flux, time x wavelength             ``obs.extract()``
``white_light``        white-light curve with errors                ``obs.extract()``
``light_curves``       binned spectral light curves, offset         ``obs.extract()``
``shifts``             x/y shifts, PSF width and trace position     ``obs.align()``
=====================  ===========================================  ==========================

Images take their colour limits from percentiles of the data, so a hot pixel
or a cosmic ray does not wash out the picture.  Time runs in hours from the
first integration (integration numbers where the file has no times).
Wavelength is a non-linear function of the row: images against wavelength are
drawn with :meth:`~matplotlib.axes.Axes.pcolormesh` on the rows' wavelength
bin edges, never stretched linearly.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np

from . import dq as dqflags
from .exceptions import InputError, StepOrderError
from .products import WavelengthQuality

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .observation import LRSObservation
    from .provenance import StepRecord

__all__ = ["PlotAccessor"]

#: Published SLITLESSPRISM defaults (0-based columns/rows), moved to other subarrays
#: with the observation's offsets.
DEFAULT_CENTER = 36
DEFAULT_REGIONS = ((8, 17), (56, 72))
PSF_ROWS = (200, 390)
PSF_COLUMNS = (12, 68)
#: Default extraction: what ``obs.extract()`` does without arguments.
DEFAULT_EXTRACTION = {"method": "optimal", "left": 8.0, "right": 8.0, "mode": "trace"}
#: Rows of the cube reduced at once when taking the median frame.
_MEDIAN_BLOCK_BYTES = 64 * 2**20

_APERTURE_COLOUR = "#ff7f0e"
_TRACE_COLOUR = "#ffffff"
_BACKGROUND_COLOUR = "#17becf"


# --------------------------------------------------------------------------- helpers


def _figure(fig: Figure | None, figsize: tuple[float, float]) -> Figure:
    if fig is not None:
        return fig
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = _figure(None, figsize)
    return fig, fig.add_subplot()


def _last_record(obs: LRSObservation, step: str) -> StepRecord | None:
    for record in reversed(obs.history):
        if record.step == step:
            return record
    return None


def _edges(centres: np.ndarray) -> np.ndarray:
    """Bin edges around monotonic centres: midpoints, the ends mirrored."""
    c = np.asarray(centres, dtype=float)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def _limits(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    finite = np.asarray(values)[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in np.percentile(finite, [low, high]))
    if vmax <= vmin:
        vmax = vmin + max(abs(vmin), 1.0) * 1e-6
    return vmin, vmax


def _asinh_ticks(vmin: float, vmax: float, width: float) -> list[float]:
    """Colour-bar ticks for an arcsinh stretch: 0 and the powers of ten beyond its linear part."""
    ticks = [0.0] if vmin <= 0 <= vmax else []
    for sign, limit in ((1.0, vmax), (-1.0, -vmin)):
        if limit <= width:
            continue
        first = int(np.ceil(np.log10(width)))
        ticks += [sign * 10.0**k for k in range(first, int(np.floor(np.log10(limit))) + 1)]
    if len(ticks) < 2:
        return list(np.linspace(vmin, vmax, 5))
    return sorted(ticks)


def _time_axis(obs: LRSObservation) -> tuple[np.ndarray, str]:
    """Hours since the first integration, or integration numbers without times."""
    t = np.asarray(obs.times, dtype=float)
    if t.size and np.all(np.isfinite(t)) and np.ptp(t) > 0:
        return (t - t[0]) * 24.0, "Time since first integration (h)"
    return np.asarray(obs.integration_numbers, dtype=float), "Integration number"


def _segment_starts(obs: LRSObservation, time: np.ndarray) -> list[float]:
    """Times where a new segment starts (for vertical markers)."""
    numbers = np.asarray(obs.integration_numbers)
    starts = []
    for segment in obs.meta.segments[1:]:
        hit = np.flatnonzero(numbers == segment.first)
        if hit.size:
            starts.append(float(time[hit[0]]))
    return starts


def _relative(flux: np.ndarray) -> np.ndarray:
    """Flux divided by its time median, per column."""
    with np.errstate(invalid="ignore", divide="ignore"):
        median = np.nanmedian(np.where(np.isfinite(flux), flux, np.nan), axis=0)
        return flux / np.where(median > 0, median, np.nan)


def _robust_scatter(series: np.ndarray) -> float:
    """Point-to-point scatter of a time series (insensitive to a transit): MAD of differences."""
    d = np.diff(series[np.isfinite(series)])
    if d.size == 0:
        return np.nan
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def _mark_segments(ax: Axes, obs: LRSObservation, time: np.ndarray) -> None:
    for k, x in enumerate(_segment_starts(obs, time)):
        ax.axvline(x, color="0.5", lw=0.8, ls=":", label="segment start" if k == 0 else None)


# --------------------------------------------------------------------------- the accessor


class PlotAccessor:
    """Diagnostic figures of one observation; reached as ``obs.plot``.

    >>> fig = obs.plot.frame()                      # doctest: +SKIP
    >>> fig.savefig("frame.png")                    # doctest: +SKIP
    """

    def __init__(self, obs: LRSObservation) -> None:
        self._obs = obs

    def __repr__(self) -> str:
        names = ", ".join(
            n for n in sorted(vars(type(self))) if not n.startswith("_") and callable(getattr(self, n))
        )
        return f"<PlotAccessor: {names}>"

    # ------------------------------------------------------------ internals
    def _require(self, attribute: str, call: str, figure: str) -> None:
        if getattr(self._obs, attribute) is None:
            raise StepOrderError(
                f"plot.{figure}() needs {attribute!r}, which this observation does not have yet; "
                f"call {call} first."
            )

    def _median_frame(self) -> np.ndarray:
        """Median over integrations of every pixel (NaN ignored), in blocks of rows."""
        from .steps.extract import nanmedian

        data = self._obs.data
        nints, nrows, ncols = data.shape
        block = max(1, int(_MEDIAN_BLOCK_BYTES // max(nints * ncols * data.itemsize, 1)))
        out = np.empty((nrows, ncols))
        for r0 in range(0, nrows, block):
            out[r0 : r0 + block] = nanmedian(data[:, r0 : r0 + block], axis=0)
        return out

    def _trace_tilt(self) -> np.ndarray:
        """Calibrated trace minus its mean over the PSF-fit rows (0 where uncalibrated)."""
        obs = self._obs
        trace = obs._calibrated_trace()
        r0, r1 = obs._default_rows(PSF_ROWS)
        ref = trace[r0:r1]
        ref = ref[np.isfinite(ref)]
        tilt = trace - (ref.mean() if ref.size else 0.0)
        return np.where(np.isfinite(tilt), tilt, 0.0)

    def _position(self, image: np.ndarray) -> float:
        """Cross-dispersion position of the PSF: from the spectra, else fitted to ``image``."""
        from .steps.extract import fit_psf

        obs = self._obs
        if obs.spectra is not None and np.isfinite(obs.spectra.trace_position).any():
            return float(np.nanmedian(obs.spectra.trace_position))
        position, _ = fit_psf(
            image[None], obs._default_rows(PSF_ROWS), obs._default_columns(PSF_COLUMNS)
        )
        if np.isfinite(position[0]):
            return float(position[0])
        return float(DEFAULT_CENTER + obs.meta.col_offset)

    def _aperture(self, position: float) -> dict[str, Any]:
        """Method, centre per row and edges of the extraction aperture (history or defaults)."""
        obs = self._obs
        record = _last_record(obs, "extract")
        spec = dict(DEFAULT_EXTRACTION)
        centre = None
        if record is not None:
            p = record.parameters
            spec["method"] = record.method or spec["method"]
            spec["left"] = float(p.get("aperture_left_width", spec["left"]))
            spec["right"] = float(p.get("aperture_right_width", spec["right"]))
            spec["mode"] = p.get("trace_position", spec["mode"])
            centre = p.get("aperture_center")
        if centre is None:
            centre = DEFAULT_CENTER + obs.meta.col_offset
        nrows = obs.shape[1]
        mode = spec["mode"]
        if mode == "constant":
            c = np.full(nrows, float(centre))
        elif mode == "gaussian_fits":
            c = np.full(nrows, position)
        else:
            c = position + self._trace_tilt()
        left, right = spec["left"], spec["right"]
        if spec["method"] == "box":
            lo, hi = c - left - 0.5, c + right + 0.5
        else:  # the integer pixel set [rint(c - L), rint(c + R + 1))
            lo, hi = np.rint(c - left) - 0.5, np.rint(c + right + 1) - 0.5
        spec.update(centre=c, lo=lo, hi=hi, from_history=record is not None)
        return spec

    def _regions(self) -> tuple[tuple[int, int], ...]:
        obs = self._obs
        record = _last_record(obs, "subtract_background")
        if record is not None and record.parameters.get("regions"):
            return tuple((int(a), int(b)) for a, b in record.parameters["regions"])
        return tuple(obs._default_columns(r) for r in DEFAULT_REGIONS)

    def _row_wavelength(self) -> np.ndarray | None:
        """Wavelength of every row at the trace (micron; NaN where undefined)."""
        obs = self._obs
        if obs.spectra is not None:
            return np.asarray(obs.spectra.wavelength, dtype=float)
        if obs.wavelength is not None:
            column = int(np.clip(DEFAULT_CENTER + obs.meta.col_offset, 0, obs.shape[2] - 1))
            return np.asarray(obs.wavelength[:, column], dtype=float)
        return None

    def _wavelength_ticks(self, ax: Axes, nrows: int) -> None:
        """A right-hand axis labelled in micron at the rows of whole microns."""
        wave = self._row_wavelength()
        if wave is None or not np.isfinite(wave).any():
            return
        rows = np.arange(nrows, dtype=float)
        ok = np.isfinite(wave)
        ticks, labels = [], []
        for w in range(int(np.ceil(np.nanmin(wave))), int(np.floor(np.nanmax(wave))) + 1):
            # rows run from long to short wavelength: search the crossing row by row
            r = np.flatnonzero(ok[:-1] & ok[1:] & ((wave[:-1] - w) * (wave[1:] - w) <= 0))
            if r.size:
                r0 = r[0]
                frac = (w - wave[r0]) / (wave[r0 + 1] - wave[r0]) if wave[r0 + 1] != wave[r0] else 0
                row = rows[r0] + frac
                if ticks and abs(row - ticks[-1]) < 0.03 * nrows:
                    continue  # the fold crowds whole microns into a few rows
                ticks.append(row)
                labels.append(str(w))
        if not ticks:
            return
        twin = ax.twinx()
        twin.set_ylim(ax.get_ylim())
        twin.set_yticks(ticks, labels)
        twin.set_ylabel("Wavelength (µm)")

    # ------------------------------------------------------------ figures
    def frame(
        self,
        integration: int | None = None,
        *,
        ax: Axes | None = None,
        percentiles: tuple[float, float] = (1.0, 99.7),
    ) -> Figure:
        """The median frame (or integration ``integration``, an index) with the geometry drawn.

        Overlaid: the trace (the calibrated tilt placed at the measured PSF
        position), the extraction aperture and the background columns, taken
        from the last ``extract``/``subtract_background`` records or, before
        those steps ran, their defaults (optimal, 8 columns either side of
        the trace; columns 8-16 and 56-71).  The colour scale is an arcsinh
        stretch between the ``percentiles`` of the frame, so the faint
        background and the bright trace both show.  With a wavelength map the
        right axis is labelled in micron.
        """
        import matplotlib as mpl
        from matplotlib.colors import AsinhNorm

        obs = self._obs
        nints, nrows, ncols = obs.shape
        if integration is None:
            image = self._median_frame()
            title = f"Median of {nints} integrations"
        else:
            index = obs._resolve(integration)
            if index.size != 1 or np.ndim(integration) != 0:
                raise InputError(
                    f"plot.frame(integration={integration!r}) takes one integration index "
                    f"(0 to {nints - 1}), or None for the median frame."
                )
            image = np.asarray(obs.data[int(index[0])], dtype=float)
            title = f"Integration {int(obs.integration_numbers[index[0]])}"
        if obs.meta.target:
            title = f"{obs.meta.target}: {title.lower()}"
        steps = [s for s in obs.steps_done if s not in ("select", "drop")]
        title += "\n" + textwrap.fill(f"after {', '.join(steps)}", 48) if steps else "\n(no step run yet)"

        fig, ax = _axes(ax, (5.2, 8.0))
        vmin, vmax = _limits(image, *percentiles)
        # linear up to the typical pixel level, logarithmic above: background and trace both show
        typical = float(np.nanpercentile(np.abs(image), 50)) if np.isfinite(image).any() else 1.0
        width = max(typical, 1e-3 * (vmax - vmin), 1e-12)
        norm = AsinhNorm(linear_width=width, vmin=vmin, vmax=vmax)
        cmap = mpl.colormaps["magma"].with_extremes(bad="0.6")
        mesh = ax.imshow(
            image, origin="lower", aspect="auto", interpolation="nearest", cmap=cmap, norm=norm
        )
        fig.colorbar(mesh, ax=ax, label="DN/s", pad=0.12, ticks=_asinh_ticks(vmin, vmax, width))

        rows = np.arange(nrows)
        for k, (a, b) in enumerate(self._regions()):
            ax.axvspan(
                a - 0.5,
                b - 0.5,
                facecolor="none",
                edgecolor=_BACKGROUND_COLOUR,
                hatch="//",
                lw=0.8,
                alpha=0.6,
                label="background columns" if k == 0 else None,
            )
        position = self._position(image)
        psf_rows = obs._default_rows(PSF_ROWS)
        calibrated = np.isfinite(obs._calibrated_trace())
        trace = position + self._trace_tilt()
        ax.plot(
            np.where(calibrated, trace, np.nan), rows, color=_TRACE_COLOUR, lw=0.8, ls="--",
            label=f"trace (column {position:.2f} at rows {psf_rows[0]}-{psf_rows[1] - 1})",
        )
        ap = self._aperture(position)
        source = "" if ap["from_history"] else ", default"
        label = (
            f"{ap['method']} aperture ({ap['mode']}, -{ap['left']:g}/+{ap['right']:g} px{source})"
        )
        ax.plot(ap["lo"], rows, color=_APERTURE_COLOUR, lw=1.0, drawstyle="steps-mid", label=label)
        ax.plot(ap["hi"], rows, color=_APERTURE_COLOUR, lw=1.0, drawstyle="steps-mid")
        ax.set_xlim(-0.5, ncols - 0.5)
        ax.set_ylim(-0.5, nrows - 0.5)
        ax.set_xlabel("Column (cross-dispersion)")
        ax.set_ylabel("Row (dispersion)")
        ax.set_title(title, fontsize="medium")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), fontsize="x-small", frameon=False)
        self._wavelength_ticks(ax, nrows)
        return fig

    def cleaning_map(self, *, fig: Figure | None = None) -> Figure:
        """Where ``clean`` replaced pixels.

        Left: the fraction of integrations in which each pixel was replaced
        (its OUTLIER flag), on a log scale; pixels never replaced are grey.
        Right: per row, the replaced pixels within 0-4 columns of the trace
        summed over integrations (``obs.outlier_counts``).
        """
        from matplotlib.colors import LogNorm

        obs = self._obs
        if obs.outlier_counts is None or _last_record(obs, "clean") is None:
            raise StepOrderError(
                "plot.cleaning_map() shows what clean() replaced, and this observation was not "
                "cleaned; call obs.clean() first."
            )
        nints, nrows, ncols = obs.shape
        replaced = np.zeros((nrows, ncols))
        for i0 in range(0, nints, 256):
            replaced += np.count_nonzero(obs.dq[i0 : i0 + 256] & dqflags.OUTLIER, axis=0)
        fraction = replaced / nints

        fig = _figure(fig, (8.0, 7.5))
        ax_map, ax_rows = fig.subplots(1, 2, sharey=True, width_ratios=[1.0, 1.2])
        import matplotlib as mpl

        cmap = mpl.colormaps["viridis"].with_extremes(bad="0.85")
        shown = np.ma.masked_less_equal(fraction, 0.0)
        mesh = ax_map.imshow(
            shown,
            origin="lower",
            aspect="auto",
            interpolation="nearest",
            cmap=cmap,
            norm=LogNorm(vmin=1.0 / nints, vmax=1.0),
        )
        fig.colorbar(mesh, ax=ax_map, location="bottom", label="Fraction of integrations replaced")
        ax_map.set_xlabel("Column")
        ax_map.set_ylabel("Row")
        ax_map.set_xlim(-0.5, ncols - 0.5)
        ax_map.set_ylim(-0.5, nrows - 0.5)
        ax_map.set_title("Replaced pixels (grey: never)", fontsize="medium")

        counts = np.asarray(obs.outlier_counts).sum(axis=0)  # (nrows, 5)
        colours = mpl.colormaps["plasma"](np.linspace(0.0, 0.85, counts.shape[1]))
        edges = np.arange(nrows + 1) - 0.5
        for d in range(counts.shape[1] - 1, -1, -1):
            ax_rows.stairs(
                counts[:, d], edges, orientation="horizontal", color=colours[d], lw=1.0,
                label=f"≤ {d} columns from the trace",
            )
        ax_rows.set_xlabel(f"Replaced pixels per row, sum of {nints} integrations")
        # a pixel flagged in every integration and a single cosmic ray both show
        ax_rows.set_xscale("symlog", linthresh=1.0)
        ax_rows.set_xlim(0, max(2.0 * counts.max(), 10.0))
        ax_rows.legend(loc="upper right", fontsize="small")
        record = _last_record(obs, "clean")
        p = record.parameters
        ax_rows.set_title(
            f"threshold {p.get('outlier_threshold')}, windows {p.get('window_heights')}, "
            f"order {p.get('poly_order')}; {record.diagnostics.get('replaced', '?')} replaced",
            fontsize="small",
        )
        return fig

    def background(self, *, fig: Figure | None = None, percentiles: tuple[float, float] = (1, 99)) -> Figure:
        """The subtracted background at the trace column, per row over time, and its mean level.

        Top left: the background (DN/s per pixel), time x wavelength; top
        right: its change relative to each row's time median (per cent);
        bottom: the mean over the rows with a wavelength (all rows without a
        wavelength map) against time, with segment boundaries marked.
        """
        from matplotlib.colors import LogNorm, Normalize

        obs = self._obs
        self._require("background", "obs.subtract_background()", "background")
        nints, nrows, _ = obs.shape
        column = (
            float(np.nanmedian(obs.spectra.trace_position))
            if obs.spectra is not None and np.isfinite(obs.spectra.trace_position).any()
            else float(DEFAULT_CENTER + obs.meta.col_offset)
        )
        level = np.broadcast_to(obs.background.level(column), (nints, nrows))
        time, time_label = _time_axis(obs)
        t_edges = _edges(time)
        wave = self._row_wavelength()
        if wave is not None and np.isfinite(wave).any():
            keep = np.flatnonzero(np.isfinite(wave))
            order = keep[np.argsort(wave[keep])]
            y_edges = _edges(wave[order])
            y_label = "Wavelength (µm)"
        else:
            order = np.arange(nrows)
            y_edges = _edges(order.astype(float))
            y_label = "Row"
        image = level[:, order].T
        with np.errstate(invalid="ignore", divide="ignore"):
            median = np.nanmedian(image, axis=1, keepdims=True)
            change = 100.0 * (image / median - 1.0)

        fig = _figure(fig, (10.0, 7.5))
        grid = fig.add_gridspec(2, 2, height_ratios=[2.2, 1.0])
        ax_level = fig.add_subplot(grid[0, 0])
        ax_change = fig.add_subplot(grid[0, 1], sharex=ax_level, sharey=ax_level)
        ax_curve = fig.add_subplot(grid[1, :], sharex=ax_level)

        vmin, vmax = _limits(image, *percentiles)
        # the background rises steeply with wavelength: a log scale when it is positive
        norm = LogNorm(vmin, vmax) if vmin > 0 else Normalize(vmin, vmax)
        mesh = ax_level.pcolormesh(
            t_edges, y_edges, image, cmap="viridis", norm=norm, rasterized=True
        )
        fig.colorbar(mesh, ax=ax_level, label="Background (DN/s per pixel)")
        ax_level.set_ylabel(y_label)
        ax_level.set_title(f"Background at column {column:.1f}", fontsize="medium")
        lo, hi = _limits(change, 5.0, 95.0)  # faint rows are noisy in relative terms
        span = max(abs(lo), abs(hi), 1e-6)
        mesh = ax_change.pcolormesh(
            t_edges, y_edges, change, cmap="RdBu_r", vmin=-span, vmax=span, rasterized=True
        )
        fig.colorbar(mesh, ax=ax_change, label="Change from the row's median (%)")
        ax_change.set_title("Relative change", fontsize="medium")
        ax_change.tick_params(labelleft=False)

        with np.errstate(invalid="ignore"):
            mean = np.nanmean(np.where(np.isfinite(image), image, np.nan), axis=0)
        ax_curve.plot(time, mean, ".", ms=3, color="k", label="mean over rows")
        _mark_segments(ax_curve, obs, time)
        ax_curve.set_xlabel(time_label)
        ax_curve.set_ylabel("Mean background\n(DN/s per pixel)")
        record = _last_record(obs, "subtract_background")
        if record is not None:
            columns = ", ".join(f"{a}-{b - 1}" for a, b in self._regions())
            ax_curve.set_title(f"method {record.method}, columns {columns}", fontsize="small")
        if _segment_starts(obs, time):
            ax_curve.legend(loc="best", fontsize="small")
        return fig

    def spectra(
        self,
        *,
        ax: Axes | None = None,
        percentiles: tuple[float, float] = (1, 99),
        cmap: str = "RdBu_r",
    ) -> Figure:
        """The spectral time series: flux over its time median, time x wavelength.

        Each row is one quadrilateral between its wavelength bin edges
        (midpoints between neighbouring rows), so the non-linear dispersion is
        drawn as it is.  Rows without a wavelength are left out.  The colour
        limits are symmetric about 1, from the ``percentiles`` of the rows
        outside the flagged ranges (folded below 4.5 µm, low signal above
        10.5 µm, both marked).
        """
        obs = self._obs
        self._require("spectra", "obs.extract()", "spectra")
        s = obs.spectra
        keep = np.flatnonzero(np.isfinite(s.wavelength))
        if keep.size == 0:
            raise InputError(
                "plot.spectra(): no row of these spectra has a wavelength; run "
                "obs.wavelength_map() before obs.extract()."
            )
        order = keep[np.argsort(s.wavelength[keep])]
        wave = s.wavelength[order]
        relative = _relative(np.asarray(s.flux, dtype=float))[:, order]
        time, time_label = _time_axis(obs)
        good = s.quality[order] == 0
        sample = relative[:, good] if good.any() else relative
        lo, hi = _limits(sample, *percentiles)
        span = max(abs(lo - 1.0), abs(hi - 1.0), 1e-6)

        fig, ax = _axes(ax, (9.0, 5.5))
        mesh = ax.pcolormesh(
            _edges(time), _edges(wave), relative.T, cmap=cmap, vmin=1.0 - span, vmax=1.0 + span,
            rasterized=True,
        )
        fig.colorbar(mesh, ax=ax, label="Flux / time median")
        for limit, text, where in (
            (WavelengthQuality.FOLD_LIMIT_UM, "folded below", "top"),
            (WavelengthQuality.LOW_SIGNAL_LIMIT_UM, "low signal above", "bottom"),
        ):
            if wave[0] < limit < wave[-1]:
                ax.axhline(limit, color="k", lw=0.7, ls="--")
                ax.annotate(
                    text, (1.0, limit), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom" if where == "bottom" else "top", fontsize="x-small",
                    xytext=(-3, 2 if where == "bottom" else -2), textcoords="offset points",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                )
        ax.set_xlabel(time_label)
        ax.set_ylabel("Wavelength (µm)")
        aligned = ", aligned" if s.aligned else ""
        ax.set_title(f"Spectral time series ({s.method} extraction{aligned})", fontsize="medium")
        return fig

    def white_light(
        self,
        *,
        wavelength_range: tuple[float, float] = (5.0, 12.0),
        ax: Axes | None = None,
    ) -> Figure:
        """The white-light curve over ``wavelength_range`` (µm), relative to its median, with errors."""
        obs = self._obs
        self._require("spectra", "obs.extract()", "white_light")
        ds = obs.light_curves(wavelength_range=wavelength_range)
        flux = np.asarray(ds["white_flux"].values, dtype=float)
        err = np.asarray(ds["white_flux_error"].values, dtype=float)
        median = np.nanmedian(flux)
        time, time_label = _time_axis(obs)

        fig, ax = _axes(ax, (9.0, 4.5))
        ax.errorbar(
            time, flux / median, yerr=err / median, fmt=".", ms=3, color="k", ecolor="0.6",
            elinewidth=0.7, label="integrations",
        )
        _mark_segments(ax, obs, time)
        scatter = _robust_scatter(flux / median)
        ax.set_xlabel(time_label)
        ax.set_ylabel("Relative flux")
        ax.set_title(
            f"White light {wavelength_range[0]:g}-{wavelength_range[1]:g} µm: median error "
            f"{np.nanmedian(err / median) * 1e6:.0f} ppm, point-to-point scatter "
            f"{scatter * 1e6:.0f} ppm",
            fontsize="medium",
        )
        return fig

    def shifts(self, *, fig: Figure | None = None) -> Figure:
        """x (cross-dispersion) and y (dispersion) shifts, PSF width and trace position over time."""
        obs = self._obs
        self._require("shifts", "obs.align()", "shifts")
        sh, s = obs.shifts, obs.spectra
        time, time_label = _time_axis(obs)
        panels = [
            ("x shift (px)", sh.x, sh.x_err, "C0"),
            ("y shift (px)", sh.y, sh.y_err, "C1"),
            ("PSF width σ (px)", s.trace_sigma, None, "C2"),
            ("Trace position\n(column)", s.trace_position, None, "C3"),
        ]
        fig = _figure(fig, (9.0, 8.0))
        axes = fig.subplots(len(panels), 1, sharex=True)
        truth = obs.truth
        injected = {
            0: getattr(truth, "x_shift", None),
            1: getattr(truth, "y_shift", None),
        }
        for n, (ax, (label, values, errors, colour)) in enumerate(zip(axes, panels, strict=True)):
            values = np.asarray(values, dtype=float)
            ax.errorbar(
                time, values, yerr=errors, fmt=".", ms=3, color=colour, elinewidth=0.6,
                label="measured", zorder=3,
            )
            if injected.get(n) is not None:
                true = np.asarray(injected[n], dtype=float)
                ax.plot(
                    time, true - np.median(true), color="0.6", lw=0.8, zorder=2,
                    label="injected - median",
                )
                ax.legend(loc="upper right", fontsize="x-small")
            ax.set_ylabel(label)
            _mark_segments(ax, obs, time)
        axes[-1].set_xlabel(time_label)
        axes[0].set_title(
            f"rms x {np.nanstd(sh.x):.4f} px, y {np.nanstd(sh.y):.4f} px "
            f"(median errors {np.nanmedian(sh.x_err):.4f}, {np.nanmedian(sh.y_err):.4f} px)",
            fontsize="medium",
        )
        return fig

    def light_curves(
        self,
        bins: Any = None,
        *,
        resolution: float | None = None,
        pixels: int | None = None,
        wavelength_range: tuple[float, float] = (5.0, 12.0),
        offset: float | None = None,
        ax: Axes | None = None,
    ) -> Figure:
        """Spectral light curves in wavelength bins, relative to their medians, offset vertically.

        Binning as in :meth:`LRSObservation.light_curves` (``bins`` edges in
        µm, or ``resolution``, or ``pixels``; default 0.5 µm bins from 5 to 12
        µm).  The shortest wavelength is on top; each curve is shifted down
        by ``offset`` (default: six times the median point-to-point scatter)
        and labelled with its bin.
        """
        import matplotlib as mpl

        obs = self._obs
        self._require("spectra", "obs.extract()", "light_curves")
        ds = obs.light_curves(
            bins, resolution=resolution, pixels=pixels, wavelength_range=wavelength_range
        )
        flux = _relative(np.asarray(ds["flux"].values, dtype=float))
        lower = np.asarray(ds["wavelength_lower"].values)
        upper = np.asarray(ds["wavelength_upper"].values)
        usable = np.flatnonzero(np.isfinite(flux).any(axis=0))
        if usable.size == 0:
            raise InputError(
                "plot.light_curves(): no bin holds a finite light curve; check the bins "
                f"({lower.min():g}-{upper.max():g} µm) against the spectra's wavelengths."
            )
        scatter = np.array([_robust_scatter(flux[:, k]) for k in usable])
        if offset is None:
            offset = 6.0 * float(np.nanmedian(scatter)) if np.isfinite(scatter).any() else 0.01
        time, time_label = _time_axis(obs)
        fig, ax = _axes(ax, (8.0, max(4.0, 0.45 * usable.size + 2.0)))
        colours = mpl.colormaps["viridis"](np.linspace(0.0, 0.8, usable.size))
        for n, k in enumerate(usable):
            shift = -n * offset
            ax.plot(time, flux[:, k] + shift, ".", ms=2.5, color=colours[n])
            ax.annotate(
                f"{lower[k]:.2f}-{upper[k]:.2f} µm", (1.0, 1.0 + shift),
                xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points",
                va="center", fontsize="x-small", color=colours[n],
            )
        ax.set_xlabel(time_label)
        ax.set_ylabel(f"Relative flux (offsets of {offset:.2g})")
        ax.set_title(f"Spectral light curves, {usable.size} bins", fontsize="medium")
        return fig

    def cleaning(
        self,
        column: int | None = None,
        integration: int = 0,
        *,
        rows: tuple[int, int] | None = None,
        fig: Figure | None = None,
        **clean_params: Any,
    ) -> Figure:
        """One column's windowed polynomial fits from ``clean``, with the clipped pixels marked.

        ``column`` (default: column 36 of SLITLESSPRISM, the trace, on this
        subarray) and ``integration`` (an index) pick the series; ``rows``
        (start, stop) zooms in.

        On an observation that has not been cleaned, the fits are recomputed
        with the kernel of :meth:`LRSObservation.clean` on this very data,
        with the parameters of ``clean()`` updated by ``clean_params``
        (``window_heights``, ``poly_order``, ``outlier_threshold``,
        ``dq_bits_to_mask``, ``weighted``): call it on the observation you are
        about to clean to see what ``clean`` will do.  Pixels clipped by the
        fit are red crosses at their original values; pixels masked from the
        start (NaN or a flagged DQ bit) are open circles at their replacement.

        On a cleaned observation the original values of replaced pixels are
        gone: the fits are recomputed with the parameters of the last
        ``clean`` record on the cleaned data (where replaced pixels sit on
        the fit, so the fits are those ``clean`` found; steps run after it,
        such as a background subtraction, change them slightly) and the
        replaced pixels are marked at their replacement values.
        """
        from .steps import clean as kernel

        obs = self._obs
        nints, nrows, ncols = obs.shape
        if column is None:
            column = DEFAULT_CENTER + obs.meta.col_offset
        if isinstance(column, bool) or not isinstance(column, int | np.integer) or not 0 <= column < ncols:
            raise InputError(
                f"plot.cleaning(column={column!r}): give a column index from 0 to {ncols - 1}."
            )
        index = obs._resolve(integration)
        if index.size != 1 or np.ndim(integration) != 0:
            raise InputError(
                f"plot.cleaning(integration={integration!r}): give one integration index "
                f"(0 to {nints - 1})."
            )
        i = int(index[0])
        record = _last_record(obs, "clean")
        cleaned = record is not None
        defaults = {
            "dq_bits_to_mask": None,
            "window_heights": (40,),
            "poly_order": 4,
            "outlier_threshold": 4.0,
            "weighted": False,
        }
        unknown = sorted(set(clean_params) - set(defaults))
        if unknown:
            raise InputError(
                f"plot.cleaning() got unknown parameter(s) {', '.join(unknown)}; it takes "
                f"{', '.join(defaults)} (as clean() does)."
            )
        if cleaned:
            recorded = {k: record.parameters.get(k, v) for k, v in defaults.items()}
            params = {**recorded, **clean_params}
        else:
            params = {**defaults, **clean_params}
        heights = params["window_heights"]
        if isinstance(heights, int | np.integer):
            heights = (int(heights),)
        heights = tuple(int(h) for h in heights)
        order = int(params["poly_order"])
        threshold = float(params["outlier_threshold"])

        y = np.asarray(obs.data[i, :, column], dtype=np.float64)
        e = np.asarray(obs.err[i, :, column], dtype=np.float64)
        flags = np.asarray(obs.dq[i, :, column])
        series = (y[None, :, None], e[None, :, None])
        if cleaned:
            # replaced pixels lie on the fit: refitting everything reproduces the fits
            result = kernel.clean_cube(
                *series, None, window_heights=heights, poly_order=order,
                outlier_threshold=1e30, weighted=bool(params["weighted"]), n_threads=1,
            )
            replaced = (flags & dqflags.OUTLIER) != 0
            clipped = np.zeros(nrows, dtype=bool)
            masked = replaced
        else:
            bad = dqflags.mask_from_dq(flags, dqflags.bit_numbers(params["dq_bits_to_mask"]))
            result = kernel.clean_cube(
                *series, bad[None, :, None], window_heights=heights, poly_order=order,
                outlier_threshold=threshold, weighted=bool(params["weighted"]), n_threads=1,
            )
            clipped = result.clipped[0, :, 0]
            masked = result.replaced[0, :, 0] & ~clipped
        fit = np.asarray(result.fit[0, :, 0], dtype=np.float64)
        shown = np.where(masked, np.asarray(result.data[0, :, 0], dtype=np.float64), y)
        kept = ~(clipped | masked) & np.isfinite(y)
        windows = kernel.window_edges(nrows, heights)
        r = np.arange(nrows)

        # residuals in units of each window's rms over the kept pixels
        scale = np.full(nrows, np.nan)
        for a, b in windows:
            k = kept[a:b]
            if k.sum() > order + 1:
                res = (y[a:b] - fit[a:b])[k]
                scale[a:b] = np.sqrt(np.sum(res**2) / (k.sum() - order - 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            resid = (y - fit) / scale

        fig = _figure(fig, (11.0, 6.5))
        ax, ax_res = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1.0])
        for n, (a, b) in enumerate(windows):
            if n % 2:
                for axis in (ax, ax_res):
                    axis.axvspan(a - 0.5, b - 0.5, color="0.93", lw=0)
            ax.plot(
                r[a:b], fit[a:b], color="C0", lw=1.5, zorder=3,
                label="polynomial fits" if n == 0 else None,
            )
        ax.plot(r[kept], y[kept], ".", color="k", ms=3, zorder=2, label="kept pixels")
        if masked.any():
            label = "replaced (values after clean)" if cleaned else "masked: NaN or DQ flag (at the fit)"
            ax.plot(r[masked], shown[masked], "o", mfc="none", mec="C1", ms=6, label=label)
        # the y range follows the kept pixels and the fit, not the outliers
        inside = np.concatenate([y[kept], fit[np.isfinite(fit)]])
        low, high = _limits(inside, 0.0, 100.0)
        pad = 0.08 * (high - low)
        low, high = low - pad, high + pad
        if clipped.any():
            cy = y[clipped]
            ax.plot(
                r[clipped], np.clip(cy, low, high), "x", color="C3", ms=7, mew=1.8, clip_on=False,
                zorder=4, label=f"clipped (|t| > {threshold:g}; clamped to the axes)",
            )
        ax.set_ylim(low, high)
        ax.set_ylabel("Data (DN/s)")
        ax.legend(loc="best", fontsize="small", ncols=2)
        number = int(obs.integration_numbers[i])
        if cleaned:
            after = [s.step for s in obs.history[obs.history.index(record) + 1 :]]
            note = (
                f"after clean() (step {obs.history.index(record) + 1} of {len(obs.history)}"
                + (f", followed by {', '.join(after)}" if after else "")
                + "): fits recomputed on the cleaned data; original values of replaced pixels are gone"
            )
        else:
            note = "before clean(): fits and clipping recomputed with the clean() kernel"
        ax.set_title(
            f"Column {column}, integration {i} (number {number}): windows {list(heights)}, order {order}, "
            f"threshold {threshold:g}\n{note}",
            fontsize="medium",
        )

        ax_res.axhline(0.0, color="0.5", lw=0.8)
        for sign in (-1, 1):
            ax_res.axhline(sign * threshold, color="C3", lw=0.8, ls="--")
        ax_res.plot(r[kept], resid[kept], ".", color="k", ms=3)
        if clipped.any():
            limit = 2.5 * threshold
            ax_res.plot(
                r[clipped], np.clip(resid[clipped], -limit, limit), "x", color="C3", ms=7, mew=1.8,
                clip_on=False, zorder=4,
            )
        ax_res.set_ylim(-2.5 * threshold, 2.5 * threshold)
        ax_res.set_ylabel("Residual / window rms")
        ax_res.set_xlabel("Row (dispersion)")
        if rows is not None:
            a, b = (int(v) for v in rows)
            ax.set_xlim(a - 0.5, b - 0.5)
        else:
            ax.set_xlim(-0.5, nrows - 0.5)
        return fig
