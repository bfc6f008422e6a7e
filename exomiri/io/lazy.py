"""Reading ``*_rateints.fits`` segments a range of integrations at a time.

:class:`SegmentReader` checks the files from their headers and INT_TIMES
tables alone (the same checks and messages as :func:`exomiri.open`), then
reads any range of integrations on request, touching only the bytes of that
range (FITS images are memory-mapped and sliced).  A range may span segment
boundaries.  ``reader.read(start, stop)`` returns an
:class:`~exomiri.LRSObservation` equal, array for array, to
``exomiri.open(paths)[start:stop]`` without the selection record, so a
long observation can be reduced chunk by chunk in bounded memory.

The reader holds only file names and small metadata, so it pickles cheaply
and can be sent to other processes (Dask workers) that see the same files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ..exceptions import InputError
from ..observation import (
    INT_TIMES_COLUMNS,
    INT_TIMES_DTYPE,
    LRSObservation,
    ObservationMeta,
    Segment,
)
from . import fits as fits_io

__all__ = ["SegmentReader", "read_integrations"]

_OPTIONAL_CUBES = ("VAR_POISSON", "VAR_RNOISE")


@dataclass(frozen=True)
class _SegmentFile:
    path: str
    first: int  # 1-based integration number of the file's first integration
    nints: int
    start: int  # 0-based index of the first integration in the whole observation
    table_rows: np.ndarray  # INT_TIMES row of each integration of the file


def _int_times_rows(path: Path, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """The INT_TIMES table of a file and the row of each integration first..last."""
    with fits.open(path, memmap=True) as hdul:
        table = hdul["INT_TIMES"].data
        if table is None or len(table) == 0:
            raise InputError(
                f"{path}: the INT_TIMES table is empty; exomiri needs the integration times. "
                "Re-run calwebb_detector1 with a recent jwst version."
            )
        numbers = np.asarray(table["integration_number"])
        times = np.zeros(len(table), dtype=INT_TIMES_DTYPE)
        for name in INT_TIMES_COLUMNS:
            times[name] = np.asarray(table[name])
    wanted = np.arange(first, last + 1)
    order = np.argsort(numbers, kind="stable")
    pos = np.searchsorted(numbers[order], wanted)
    pos = np.minimum(pos, len(numbers) - 1)
    found = numbers[order][pos] == wanted
    if not found.all():
        absent = wanted[~found]
        raise InputError(
            f"{path}: INT_TIMES has no row for integration(s) {absent[:5].tolist()}"
            f"{'...' if absent.size > 5 else ''} (INTSTART={first}, INTEND={last})."
        )
    return times, order[pos]


def _scaled(header: fits.Header, raw: np.ndarray) -> np.ndarray:
    """Apply BSCALE/BZERO to raw image values (exactly, for integers with BSCALE = 1)."""
    bscale = header.get("BSCALE", 1)
    bzero = header.get("BZERO", 0)
    if bscale == 1 and bzero == 0:
        return raw
    if raw.dtype.kind in "iu" and bscale == 1 and float(bzero).is_integer():
        return raw.astype(np.int64) + int(bzero)
    return raw * float(bscale) + float(bzero)


class SegmentReader:
    """The segments of one exposure, read a range of integrations at a time.

    ``paths``: a path, a list of paths or a glob pattern, as for
    :func:`exomiri.open`.  Attributes: ``nints``, ``shape`` (of the whole
    cube), ``meta``, ``int_times`` (all integrations), ``wcs`` and
    ``wavelength_extension`` (from the first segment), ``paths``.
    """

    def __init__(self, paths: str | os.PathLike | Iterable[str | os.PathLike]):
        files = fits_io._expand(paths)
        headers = [(f, fits_io._check_header(f)) for f in files]
        headers.sort(key=lambda fk: int(fk[1].get("INTSTART") or 1))
        ref_path, ref = headers[0]
        for path, keys in headers[1:]:
            for key in (*fits_io._IDENTITY_KEYS, "SUBSIZE1", "SUBSIZE2", "SUBSTRT1", "SUBSTRT2"):
                if keys.get(key) != ref.get(key):
                    raise InputError(
                        f"{path} and {ref_path} come from different exposures or frames "
                        f"({key}={keys.get(key)!r} vs {ref.get(key)!r}); read the segments of "
                        "one exposure together."
                    )
        segments: list[_SegmentFile] = []
        times: list[np.ndarray] = []
        start = 0
        previous: tuple[Path, int, int] | None = None
        optional = set(_OPTIONAL_CUBES)
        for path, keys in headers:
            with fits.open(path, memmap=True) as hdul:
                nints = int(hdul["SCI"].shape[0])
            first = int(keys.get("INTSTART") or 1)
            last = int(keys.get("INTEND") or first + nints - 1)
            if last - first + 1 != nints:
                raise InputError(
                    f"{path}: INTSTART={first}, INTEND={last} describe {last - first + 1} "
                    f"integrations but the file holds {nints}."
                )
            if previous is not None:
                prev_path, prev_first, prev_last = previous
                if first <= prev_last:
                    raise InputError(
                        f"{prev_path} (integrations {prev_first}-{prev_last}) and {path} "
                        f"({first}-{last}) overlap; a segment was given twice or the files come "
                        "from different reductions."
                    )
                if first != prev_last + 1:
                    raise InputError(
                        f"Integrations {prev_last + 1}-{first - 1} are missing between "
                        f"{prev_path} and {path}; add the missing segment."
                    )
            table, rows = _int_times_rows(path, first, last)
            times.append(table[rows])
            segments.append(_SegmentFile(str(path), first, nints, start, rows))
            optional &= set(keys["_extensions"])
            start += nints
            previous = (path, first, last)
        self.paths = tuple(s.path for s in segments)
        self._segments = tuple(segments)
        self._optional = tuple(sorted(optional))
        self.int_times = np.concatenate(times)
        self.nints = start
        with fits.open(ref_path, memmap=True) as hdul:
            frame = tuple(int(v) for v in hdul["SCI"].shape[1:])
            wave = (
                np.asarray(hdul["WAVELENGTH"].data)
                if "WAVELENGTH" in ref["_extensions"]
                else None
            )
        self.shape = (self.nints, *frame)
        self.wavelength_extension = (
            None
            if wave is None or wave.ndim != 2
            else np.ascontiguousarray(wave, dtype=np.float64)
        )
        self.wcs = self._read_wcs(ref_path, ref) if "ASDF" in ref["_extensions"] else None
        self.meta: ObservationMeta = fits_io._meta_from(
            ref,
            tuple(
                Segment(Path(s.path).name, s.first, s.first + s.nints - 1) for s in segments
            ),
        )

    @staticmethod
    def _read_wcs(path: Path, keys: dict[str, Any]) -> Any:
        import warnings

        from stdatamodels.jwst import datamodels

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with datamodels.CubeModel(str(path)) as model:
                return getattr(model.meta, "wcs", None)

    def __len__(self) -> int:
        return self.nints

    def __repr__(self) -> str:
        return f"SegmentReader({self.nints} integrations of {self.shape[1]} x {self.shape[2]} in {len(self.paths)} file(s))"

    def _check_range(self, start: int, stop: int) -> tuple[int, int]:
        start, stop = int(start), int(stop)
        if not 0 <= start < stop <= self.nints:
            raise InputError(
                f"read(start={start}, stop={stop}): expected 0 <= start < stop <= {self.nints} "
                "(0-based integration indices, stop excluded)."
            )
        return start, stop

    def arrays(self, start: int, stop: int) -> dict[str, np.ndarray | None]:
        """The cubes of integrations [start, stop): data, err, dq, var_poisson, var_rnoise."""
        start, stop = self._check_range(start, stop)
        n = stop - start
        names = {"SCI": "data", "ERR": "err", "DQ": "dq"} | {
            ext: ext.lower() for ext in self._optional
        }
        dtypes = {"DQ": np.uint32}
        out = {
            name: np.empty((n, *self.shape[1:]), dtype=dtypes.get(ext, np.float32))
            for ext, name in names.items()
        }
        for seg in self._segments:
            lo, hi = max(start, seg.start), min(stop, seg.start + seg.nints)
            if lo >= hi:
                continue
            # Unscaled reads keep the memory map (astropy refuses to map scaled
            # images, such as the uint32 DQ stored as int32 with BZERO).
            with fits.open(seg.path, memmap=True, do_not_scale_image_data=True) as hdul:
                for ext, name in names.items():
                    hdu = hdul[ext]
                    raw = hdu.section[lo - seg.start : hi - seg.start]
                    out[name][lo - start : hi - start] = _scaled(hdu.header, raw)
        for name in ("var_poisson", "var_rnoise"):
            out.setdefault(name, None)
        return out

    def read(self, start: int, stop: int) -> LRSObservation:
        """Integrations [start, stop) (0-based) as an observation."""
        cubes = self.arrays(start, stop)
        return LRSObservation(
            int_times=self.int_times[start:stop].copy(),
            meta=self.meta,
            wcs=self.wcs,
            wavelength_extension=self.wavelength_extension,
            **cubes,
        )

    def read_indices(self, index: np.ndarray) -> LRSObservation:
        """Arbitrary integrations (sorted 0-based indices) as one observation."""
        index = np.asarray(index, dtype=np.int64)
        if index.ndim != 1 or index.size == 0 or (np.diff(index) <= 0).any():
            raise InputError("read_indices needs a non-empty, strictly increasing index array.")
        self._check_range(index[0], index[-1] + 1)
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        parts = [self.arrays(run[0], run[-1] + 1) for run in np.split(index, breaks)]
        cubes = {
            name: None if parts[0][name] is None else np.concatenate([p[name] for p in parts])
            for name in parts[0]
        }
        return LRSObservation(
            int_times=self.int_times[index].copy(),
            meta=self.meta,
            wcs=self.wcs,
            wavelength_extension=self.wavelength_extension,
            **cubes,
        )


def read_integrations(
    paths: str | os.PathLike | Iterable[str | os.PathLike], start: int, stop: int
) -> LRSObservation:
    """Integrations [start, stop) (0-based, across segments) of ``*_rateints.fits`` files."""
    return SegmentReader(paths).read(start, stop)
