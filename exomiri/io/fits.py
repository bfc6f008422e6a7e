"""Reading and writing ``*_rateints.fits`` segments.

Files are read with ``jwst``'s data models (``stdatamodels``), which never
contact CRDS.  Each file is first checked with a plain FITS header read so that
a wrong file gets a clear :class:`~exomiri.InputError` naming the file, the
problem and the fix, rather than a schema traceback.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ..dq import FLAGS
from ..exceptions import DataWarning, ExomiriError, InputError
from ..observation import (
    INT_TIMES_COLUMNS,
    INT_TIMES_DTYPE,
    LRSObservation,
    ObservationMeta,
    Segment,
)
from . import output_folder

__all__ = ["history_lines", "open", "write"]

_REQUIRED_EXTENSIONS = ("SCI", "ERR", "DQ", "INT_TIMES")
_HEADER_KEYS = (
    "TELESCOP", "INSTRUME", "DETECTOR", "FILTER", "EXP_TYPE", "TSOVISIT", "READPATT",
    "SUBARRAY", "SUBSTRT1", "SUBSTRT2", "SUBSIZE1", "SUBSIZE2", "NINTS", "NGROUPS", "NFRAMES",
    "TFRAME", "TGROUP", "EFFINTTM", "EFFEXPTM", "INTSTART", "INTEND", "TARGNAME", "TARGPROP",
    "PROGRAM", "OBSERVTN", "VISIT", "VISITGRP", "SEQ_ID", "ACT_ID", "EXPOSURE", "EXPSTART",
    "EXPEND", "DATE-OBS", "TIME-OBS", "CAL_VER", "CRDS_CTX", "CRDS_VER", "R_DISTOR",
    "R_SPCWCS", "R_SPECWCS", "R_GAIN", "R_READNO", "FILENAME",
)
DO_NOT_USE = np.uint32(1 << FLAGS["DO_NOT_USE"])
UNRELIABLE_ERROR = np.uint32(1 << FLAGS["UNRELIABLE_ERROR"])
#: Primary header keys that must be numbers when present: integers, or any real number.
_NUMERIC_KEYS = {
    **dict.fromkeys(
        ("SUBSTRT1", "SUBSTRT2", "SUBSIZE1", "SUBSIZE2", "NINTS", "NGROUPS", "NFRAMES", "INTSTART",
         "INTEND"),
        int,
    ),
    **dict.fromkeys(("TFRAME", "TGROUP", "EFFINTTM", "EFFEXPTM"), int | float),
}
_IDENTITY_KEYS = ("PROGRAM", "OBSERVTN", "VISIT", "EXPOSURE", "NINTS", "SUBARRAY", "TARGPROP")


def _expand(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    hint = "pass a path, a list of paths or a glob, e.g. exomiri.open('jw*_rateints.fits')"
    if not isinstance(paths, Iterable) or isinstance(paths, bytes):
        raise InputError(f"exomiri.open({paths!r}): not a file name; {hint}.")
    out: list[Path] = []
    for p in paths:
        if not isinstance(p, str | os.PathLike):
            raise InputError(f"exomiri.open(): {p!r} is not a file name; {hint}.")
        text = os.fspath(p)
        if any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text))
            if not matches:
                raise InputError(f"No file matches {text!r}; check the pattern and the folder.")
            out.extend(Path(m) for m in matches)
        else:
            out.append(Path(text))
    if not out:
        raise InputError("exomiri.open() was given no files; pass a path, a list of paths or a glob.")
    return out


def _check_header(path: Path) -> dict[str, Any]:
    """Validate one file from its headers alone; return the primary keys we keep."""
    if not path.exists():
        raise InputError(f"{path}: no such file. Check the path (and the current directory).")
    try:
        with fits.open(path, memmap=True) as hdul:
            names = [h.name for h in hdul]
            header = hdul[0].header
            keys = {k: header[k] for k in _HEADER_KEYS if k in header}
            keys["_extensions"] = tuple(names)
            shapes = {
                name: hdul[name].shape if hdul[name].is_image else (hdul[name].header.get("NAXIS2", 0),)
                for name in _REQUIRED_EXTENSIONS
                if name in names
            }
    except Exception as exc:  # astropy raises OSError, VerifyError, KeyError... on damaged files
        raise InputError(
            f"{path}: not a readable FITS file ({type(exc).__name__}: {exc}). Give a JWST "
            "*_rateints.fits file."
        ) from exc

    def need(key: str, expected: Any, fix: str) -> None:
        value = keys.get(key)
        if value is None:
            raise InputError(f"{path}: primary header has no {key}; expected {key}={expected!r}. {fix}")
        if (isinstance(expected, tuple) and value not in expected) or (
            not isinstance(expected, tuple) and value != expected
        ):
            raise InputError(f"{path}: {key}={value!r}, expected {expected!r}. {fix}")

    mode_fix = "exomiri reduces MIRI LRS slitless time series (MIRIMAGE, P750L, MIR_LRS-SLITLESS)."
    need("INSTRUME", "MIRI", mode_fix)
    need("DETECTOR", "MIRIMAGE", mode_fix)
    need("EXP_TYPE", "MIR_LRS-SLITLESS", mode_fix)
    need("FILTER", "P750L", mode_fix)
    tso = keys.get("TSOVISIT")
    if tso is not True and str(tso).strip().upper() not in ("T", "TRUE"):
        raise InputError(
            f"{path}: TSOVISIT={tso!r}; this is not a time-series observation. exomiri needs the "
            "*_rateints.fits of a TSO visit (TSOVISIT=T)."
        )
    missing = [e for e in _REQUIRED_EXTENSIONS if e not in names]
    if missing:
        raise InputError(
            f"{path}: missing extension(s) {', '.join(missing)}; a *_rateints.fits file has "
            f"{', '.join(_REQUIRED_EXTENSIONS)}. Was this file written by calwebb_detector1?"
        )
    sci = shapes["SCI"]
    if len(sci) != 3:
        raise InputError(
            f"{path}: SCI has shape {sci}; expected a cube (nints, nrows, ncols). Give the "
            "*_rateints.fits (per integration), not the *_rate.fits."
        )
    for name in ("ERR", "DQ"):
        if shapes[name] != sci:
            raise InputError(
                f"{path}: {name} has shape {shapes[name]} but SCI has {sci}; the file is damaged."
            )
    for key in ("SUBSTRT1", "SUBSTRT2", "SUBSIZE1", "SUBSIZE2"):
        if key not in keys:
            raise InputError(f"{path}: primary header has no {key}; cannot place the subarray.")
    for key, kinds in _NUMERIC_KEYS.items():
        value = keys.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise InputError(
                f"{path}: {key}={value!r} in the primary header is not a number; the header is "
                "damaged. Use the file as the pipeline wrote it."
            )
    if (keys["SUBSIZE2"], keys["SUBSIZE1"]) != tuple(sci[1:]):
        raise InputError(
            f"{path}: SUBSIZE2 x SUBSIZE1 = {keys['SUBSIZE2']} x {keys['SUBSIZE1']} but the frames "
            f"are {sci[1]} x {sci[2]}; the header does not describe the data."
        )
    return keys


def _native(array: np.ndarray | None, dtype: Any) -> np.ndarray | None:
    if array is None:
        return None
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("="))


def _read_checked(path: Path, keys: dict[str, Any]) -> dict[str, Any]:
    """:func:`_read_one`, with whatever the data model raises on a damaged file (schema,
    array and table errors of any type) turned into an InputError naming the file."""
    try:
        part = _read_one(path, keys)
    except ExomiriError:
        raise
    except Exception as exc:
        raise InputError(
            f"{path}: the JWST data model cannot read it ({type(exc).__name__}: {exc}). The file "
            "is damaged, or was not written by calwebb_detector1; use the file as the pipeline "
            "wrote it."
        ) from exc
    for note in part.pop("notes"):
        warnings.warn(DataWarning(note), stacklevel=4)
    return part


def _read_one(path: Path, keys: dict[str, Any]) -> dict[str, Any]:
    from stdatamodels.jwst import datamodels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # schema chatter about unknown subarray names etc.
        with datamodels.CubeModel(str(path)) as model:
            nints = model.data.shape[0]
            first = int(keys.get("INTSTART") or 1)
            last = int(keys.get("INTEND") or first + nints - 1)
            if last - first + 1 != nints:
                raise InputError(
                    f"{path}: INTSTART={first}, INTEND={last} describe {last - first + 1} "
                    f"integrations but the file holds {nints}; the header does not describe the "
                    "data. Use the file as the pipeline wrote it."
                )
            table = model.int_times
            if table is None or len(table) == 0:
                raise InputError(
                    f"{path}: the INT_TIMES table is empty; exomiri needs the integration times. "
                    "Re-run calwebb_detector1 with a recent jwst version."
                )
            numbers = np.asarray(table["integration_number"])
            rows = [np.flatnonzero(numbers == n) for n in range(first, last + 1)]
            if any(len(r) == 0 for r in rows):
                absent = [n for n, r in zip(range(first, last + 1), rows, strict=True) if len(r) == 0]
                raise InputError(
                    f"{path}: INT_TIMES has no row for integration(s) {absent[:5]}"
                    f"{'...' if len(absent) > 5 else ''} (INTSTART={first}, INTEND={last})."
                )
            picked = np.asarray(table)[np.array([r[0] for r in rows])]
            int_times = np.zeros(nints, dtype=INT_TIMES_DTYPE)
            for name in INT_TIMES_COLUMNS:
                int_times[name] = picked[name]

            extensions = keys["_extensions"]

            def optional(name: str) -> np.ndarray | None:
                # Reading an absent array from a data model creates a default one: check first.
                if name.upper() not in extensions:
                    return None
                value = getattr(model, name)
                return _native(value, np.float32) if np.shape(value) == model.data.shape else None

            wave = model.wavelength if "WAVELENGTH" in extensions else None
            notes = []  # warned about by _read_checked, outside the silenced block
            if wave is not None and np.shape(wave) != model.data.shape[1:]:
                notes.append(
                    f"{path}: the WAVELENGTH extension has shape {np.shape(wave)}, not the "
                    f"frames' {model.data.shape[1:]}; it is ignored (wavelength_map() uses "
                    "the WCS or the bundled calibration)."
                )
                wave = None
            wcs = getattr(model.meta, "wcs", None)
            return {
                "data": _native(model.data, np.float32),
                "err": _native(model.err, np.float32),
                "dq": _native(model.dq, np.uint32),
                "var_poisson": optional("var_poisson"),
                "var_rnoise": optional("var_rnoise"),
                "wavelength": _native(wave, np.float64) if wave is not None and np.ndim(wave) == 2 else None,
                "wcs": wcs,
                "int_times": int_times,
                "notes": notes,
                "first": first,
                "last": last,
            }


def _meta_from(keys: dict[str, Any], segments: tuple[Segment, ...]) -> ObservationMeta:
    def get(key: str, default: Any, cast: Any = None) -> Any:
        value = keys.get(key, default)
        return default if value is None else (cast(value) if cast else value)

    exposure = "jw{}{}{}_{}{}{}_{}".format(
        get("PROGRAM", ""), get("OBSERVTN", ""), get("VISIT", ""), get("VISITGRP", ""),
        get("SEQ_ID", ""), get("ACT_ID", ""), get("EXPOSURE", ""),
    )
    header = {
        k: (v if isinstance(v, bool | int | float | str) else str(v))
        for k, v in keys.items()
        if not k.startswith("_")
    }
    header.pop("INTSTART", None)
    header.pop("INTEND", None)
    header.pop("FILENAME", None)
    return ObservationMeta(
        instrument=get("INSTRUME", "MIRI", str),
        detector=get("DETECTOR", "MIRIMAGE", str),
        filter=get("FILTER", "P750L", str),
        exp_type=get("EXP_TYPE", "MIR_LRS-SLITLESS", str),
        tso_visit=True,
        subarray=get("SUBARRAY", "", str),
        substrt1=get("SUBSTRT1", 1, int),
        substrt2=get("SUBSTRT2", 529, int),
        subsize1=get("SUBSIZE1", 72, int),
        subsize2=get("SUBSIZE2", 416, int),
        nints=get("NINTS", 0, int),
        ngroups=get("NGROUPS", 0, int),
        nframes=get("NFRAMES", 1, int),
        tframe=get("TFRAME", 0.0, float),
        tgroup=get("TGROUP", 0.0, float),
        # Older files lack EFFINTTM: the slope spans NGROUPS - 1 group times.
        effinttm=get("EFFINTTM", 0.0, float)
        or max(get("NGROUPS", 0, int) - 1, 0) * get("TGROUP", 0.0, float),
        target=get("TARGPROP", "", str) or get("TARGNAME", "", str),
        exposure=exposure,
        segments=segments,
        header=header,
    )


def open(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> LRSObservation:
    """Read one or more ``*_rateints.fits`` segments into one :class:`LRSObservation`.

    ``paths`` may be a path, a list of paths or a glob pattern.  Segments are
    sorted by their first integration number and stitched; they must come
    from one exposure and follow one another without gaps or overlaps.
    Input files are opened read-only and never modified.
    """
    files = _expand(paths)
    headers = [(f, _check_header(f)) for f in files]
    headers.sort(key=lambda fk: int(fk[1].get("INTSTART") or 1))
    ref_path, ref = headers[0]
    for path, keys in headers[1:]:
        for key in _IDENTITY_KEYS:
            if keys.get(key) != ref.get(key):
                raise InputError(
                    f"{path} and {ref_path} come from different exposures ({key}={keys.get(key)!r} "
                    f"vs {ref.get(key)!r}); open the segments of one exposure together."
                )
        for key in ("SUBSIZE1", "SUBSIZE2", "SUBSTRT1", "SUBSTRT2"):
            if keys.get(key) != ref.get(key):
                raise InputError(
                    f"{path} and {ref_path} have different frames ({key}={keys.get(key)} vs "
                    f"{ref.get(key)}); segments of one exposure share one subarray."
                )
    parts = [_read_checked(path, keys) for path, keys in headers]
    for (prev_path, _), (path, _), a, b in zip(headers, headers[1:], parts, parts[1:], strict=False):
        if b["first"] <= a["last"]:
            raise InputError(
                f"{prev_path} (integrations {a['first']}-{a['last']}) and {path} "
                f"({b['first']}-{b['last']}) overlap; a segment was given twice or the files "
                "come from different reductions."
            )
        if b["first"] != a["last"] + 1:
            raise InputError(
                f"Integrations {a['last'] + 1}-{b['first'] - 1} are missing between {prev_path} "
                f"and {path}; add the missing segment, or open the pieces separately."
            )
    segments = tuple(
        Segment(filename=path.name, first=p["first"], last=p["last"])
        for (path, _), p in zip(headers, parts, strict=True)
    )

    def join(name: str) -> np.ndarray | None:
        values = [p[name] for p in parts]
        if any(v is None for v in values):
            return None
        return values[0] if len(values) == 1 else np.concatenate(values, axis=0)

    data, err = join("data"), join("err")
    dq = _flag_unusable(data, err, join("dq"), files)
    return LRSObservation(
        data=data,
        err=err,
        dq=dq,
        int_times=np.concatenate([p["int_times"] for p in parts]),
        meta=_meta_from(ref, segments),
        var_poisson=join("var_poisson"),
        var_rnoise=join("var_rnoise"),
        wcs=parts[0]["wcs"],
        wavelength_extension=parts[0]["wavelength"],
    )


def _flag_unusable(
    data: np.ndarray, err: np.ndarray, dq: np.ndarray, files: list[Path]
) -> np.ndarray:
    """Flag what no step can use, warn about it, and return the new DQ (the input is kept).

    * An integration whose SCI is all NaN or all zero gets DO_NOT_USE on every pixel.
    * A pixel with finite SCI but an ERR that is not finite and positive gets
      UNRELIABLE_ERROR (such pixels are unusable in every step, see
      :meth:`LRSObservation.usable_mask`); a warning names those not already
      DO_NOT_USE.
    """
    names = ", ".join(f.name for f in files)
    finite = np.isfinite(data)
    empty = ~np.any(finite & (data != 0), axis=(1, 2))
    flags = np.zeros(dq.shape, dtype=np.uint32)
    if empty.any():
        idx = np.flatnonzero(empty)
        flags[idx] |= DO_NOT_USE
        warnings.warn(
            DataWarning(
                f"{len(idx)} integration(s) of {names} are all NaN or "
                f"all zero (indices {idx[:10].tolist()}{'...' if len(idx) > 10 else ''}); "
                "they are flagged DO_NOT_USE and their spectra will be NaN. "
                f"Drop them (obs.drop({idx[:10].tolist()})) before fitting light curves."
            ),
            stacklevel=3,
        )
    with np.errstate(invalid="ignore"):
        bad_err = finite & ~(np.isfinite(err) & (err > 0))
    if bad_err.any():
        flags[bad_err] |= UNRELIABLE_ERROR
        surprising = bad_err & ((dq & DO_NOT_USE) == 0) & ~empty[:, None, None]
        if surprising.any():
            i, r, c = (int(v[0]) for v in np.nonzero(surprising))
            warnings.warn(
                DataWarning(
                    f"{int(surprising.sum())} pixel(s) of {names} have a finite SCI value but an "
                    f"ERR that is zero, negative or NaN (the first at integration index {i}, row "
                    f"{r}, column {c}); they are flagged UNRELIABLE_ERROR and no step uses them. "
                    "Check the ERR extension of the file."
                ),
                stacklevel=3,
            )
    return dq | flags if flags.any() else dq


def _segment_names(path: str, n: int) -> list[str]:
    p = Path(path)
    if n == 1:
        return [str(p) if p.suffix == ".fits" else f"{p}_rateints.fits"]
    if p.suffix == ".fits":
        stem = re.sub(r"(-seg\d+)?(_mirimage)?_rateints$", "", p.stem)
        stem = str(p.with_name(stem))
    else:
        stem = str(p)
    return [f"{stem}-seg{i + 1:03d}_mirimage_rateints.fits" for i in range(n)]


#: Characters of text on one FITS HISTORY card.
_HISTORY_WIDTH = 72
_HISTORY_INDENT = "  "


def _history_cards(entry: str) -> list[str]:
    """One history entry as HISTORY card texts: continuation cards are indented."""
    import textwrap

    return textwrap.wrap(
        entry,
        width=_HISTORY_WIDTH,
        subsequent_indent=_HISTORY_INDENT,
        break_long_words=True,
        break_on_hyphens=False,
    )


def history_lines(header: fits.Header) -> list[str]:
    """The HISTORY of a header written by :func:`write`, one entry per line.

    Cards indented by two spaces continue the entry before them.
    """
    lines: list[str] = []
    for card in header.get("HISTORY", []):
        text = str(card)
        if lines and text.startswith(_HISTORY_INDENT):
            lines[-1] += " " + text.strip()
        else:
            lines.append(text)
    return lines


def write(obs: LRSObservation, path: str, segments: int | None = None) -> list[str]:
    """Write the observation's cube as ``*_rateints.fits`` file(s) readable by ``jwst``.

    ``segments``: number of files to split the integrations into (default: the
    split of the files it was read from, without the integrations a selection
    dropped, or one file).  A file never spans a gap in the integration
    numbers (its INTSTART..INTEND hold exactly its integrations), so a
    selection with a gap inside a segment writes that segment as two files.
    ``path`` is a file name (one file) or a prefix; files are named
    ``<prefix>-segNNN_mirimage_rateints.fits``, NNN counting from 001 in time
    order.  Each file is written to a temporary name and moved into place, so
    a failed write leaves no partial file.

    The processing history goes into the FITS HISTORY, one entry per step:
    ``exomiri <version>: step[method](parameters)``; an entry longer than a
    HISTORY card continues on the following cards, each indented by two
    spaces (:func:`history_lines` joins them back).
    """
    from stdatamodels.jwst import datamodels

    nints = obs.nints
    numbers = obs.integration_numbers
    splits = []
    if segments is None and obs.meta.segments:
        # The split of the files it was read from (integrations dropped since are skipped).
        splits = [
            np.flatnonzero((numbers >= s.first) & (numbers <= s.last)) for s in obs.meta.segments
        ]
        splits = [s for s in splits if s.size]
        if sum(s.size for s in splits) != nints:
            splits = []
    if not splits:
        if segments is not None and (
            isinstance(segments, bool) or not isinstance(segments, int | np.integer)
        ):
            raise InputError(f"write(segments={segments!r}) must be an integer number of files.")
        n = 1 if segments is None else int(segments)
        if not 1 <= n <= nints:
            raise InputError(f"write(segments={segments}) must be between 1 and {nints}.")
        splits = np.array_split(np.arange(nints), n)
    # No file spans a gap in the integration numbers.
    splits = [
        run for idx in splits for run in np.split(idx, np.flatnonzero(np.diff(numbers[idx]) != 1) + 1)
    ]
    if not isinstance(path, str | os.PathLike):
        raise InputError(
            f"write(path={path!r}): expected a file name or prefix (str or pathlib.Path), e.g. "
            "obs.write('reduced/jw01234001001_04103_00001')."
        )
    names = _segment_names(path, len(splits))
    output_folder(names[0], f"write({str(path)!r})")
    meta = obs.meta
    for name, idx in zip(names, splits, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = datamodels.CubeModel(data=np.asarray(obs.data[idx]))
            model.err = np.asarray(obs.err[idx])
            model.dq = np.asarray(obs.dq[idx])
            for extra in ("var_poisson", "var_rnoise"):
                value = getattr(obs, extra)
                if value is not None:
                    setattr(model, extra, np.asarray(value[idx]))
            times = np.zeros(len(idx), dtype=model.int_times.dtype if model.int_times is not None
                             else INT_TIMES_DTYPE)
            for col in INT_TIMES_COLUMNS:
                times[col] = obs.int_times[col][idx]
            model.int_times = times
            m = model.meta
            m.filename = Path(name).name
            m.telescope = "JWST"
            m.instrument.name = meta.instrument
            m.instrument.detector = meta.detector
            m.instrument.filter = meta.filter
            m.exposure.type = meta.exp_type
            m.visit.tsovisit = True
            m.subarray.name = meta.subarray
            m.subarray.xstart, m.subarray.ystart = meta.substrt1, meta.substrt2
            m.subarray.xsize, m.subarray.ysize = meta.subsize1, meta.subsize2
            m.exposure.nints = meta.nints or nints
            m.exposure.ngroups = meta.ngroups
            m.exposure.nframes = meta.nframes
            m.exposure.frame_time = meta.tframe
            m.exposure.group_time = meta.tgroup
            m.exposure.integration_time = meta.effinttm
            m.exposure.integration_start = int(numbers[idx[0]])
            m.exposure.integration_end = int(numbers[idx[-1]])
            m.target.proposer_name = meta.target
            m.target.catalog_name = meta.target
            h = meta.header
            for key, attr in (("PROGRAM", "program_number"), ("OBSERVTN", "observation_number"),
                              ("VISIT", "visit_number"), ("VISITGRP", "visit_group"),
                              ("SEQ_ID", "sequence_id"), ("ACT_ID", "activity_id"),
                              ("EXPOSURE", "exposure_number")):
                if key in h:
                    setattr(m.observation, attr, str(h[key]))
            m.bunit_data = "DN/s"
            m.bunit_err = "DN/s"
            if obs.wcs is not None:
                m.wcs = obs.wcs
            for record in obs.history:
                for line in _history_cards(f"exomiri {record.provider_version}: {record.summary()}"):
                    model.add_history_entry(line)
            # Write under the final name inside a temporary folder next to the target (the
            # data model stamps FILENAME from the path), then move it into place.
            scratch = tempfile.mkdtemp(prefix=".exomiri-", dir=Path(name).parent)
            tmp = os.path.join(scratch, Path(name).name)
            try:
                model.save(tmp)
                os.replace(tmp, name)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return names
