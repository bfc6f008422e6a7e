"""Sessions: an :class:`~exomiri.LRSObservation` saved to HDF5 and loaded back.

The layout is specified in ``docs/file-format.md``.  Every group and dataset
carries ``encoding-type`` and ``encoding-version`` attributes and the reader
dispatches on them; the root carries the format name and version.  Saves are
atomic: the session is written to a temporary file in the target folder,
flushed to disk, and moved over the target with :func:`os.replace`, so an
interrupted save never damages the previous file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..exceptions import SessionFormatError
from ..observation import LRSObservation, ObservationMeta
from ..products import PRODUCT_TYPES, Product
from ..provenance import StepRecord, core_versions
from . import commit, temporary_beside
from .safefile import GuardedFile

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SessionWriter", "load", "save"]

FORMAT_NAME = "exomiri-session"
FORMAT_VERSION = "1.0"
#: HDF5 1.8 file-format features: readable by every HDF5 library since 2008, and its
#: metadata carries checksums, so most damage is detected instead of crashing the reader.
_LIBVER = ("v108", "v108")
#: gzip level of the cubes.  Noisy floats hardly compress beyond what level 1 gets (after the
#: byte shuffle), and level 1 is several times faster to write.
_GZIP_LEVEL = 1
_ENC_TYPE = "encoding-type"
_ENC_VERSION = "encoding-version"

#: Array fields of LRSObservation stored as datasets of the "observation" group.
ARRAY_FIELDS = (
    "data",
    "err",
    "dq",
    "var_poisson",
    "var_rnoise",
    "profile",
    "outlier_counts",
    "int_times",
    "wavelength_extension",
    "wavelength",
    "trace",
)

#: Migrations from older major.minor versions: version -> function(h5py.File) -> dict of fixes.
MIGRATIONS: dict[str, Any] = {}


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...] | None:
    """Chunks of whole integrations, about 1 MiB each (never under one frame)."""
    if len(shape) == 0 or shape[0] == 0:
        return None
    per_int = int(np.prod(shape[1:], dtype=np.int64)) * itemsize or itemsize
    n = int(np.clip((1 << 20) // per_int, 1, shape[0]))
    return (n, *shape[1:])


def _write_array(group: h5py.Group, name: str, value: np.ndarray) -> None:
    value = np.asarray(value)
    if value.dtype.byteorder == ">":
        value = value.astype(value.dtype.newbyteorder("="))
    kwargs: dict[str, Any] = {}
    if value.size * value.itemsize > 4096 and value.ndim >= 1:
        kwargs = {
            "chunks": _chunks(value.shape, value.itemsize),
            "compression": "gzip",
            "compression_opts": _GZIP_LEVEL,
            "shuffle": value.dtype.kind in "fiu",
        }
    ds = group.create_dataset(name, data=value, **kwargs)
    ds.attrs[_ENC_TYPE] = "array"
    ds.attrs[_ENC_VERSION] = "1.0"


def _write_product(group: h5py.Group, name: str, product: Product) -> None:
    sub = group.create_group(name)
    sub.attrs[_ENC_TYPE] = type(product).__name__
    sub.attrs[_ENC_VERSION] = "1.0"
    for key, value in product.arrays().items():
        _write_array(sub, key, value)
    sub.attrs["scalars"] = json.dumps(product.scalars())


def _wcs_bytes(wcs: Any) -> bytes:
    import asdf

    buffer = io.BytesIO()
    asdf.AsdfFile({"wcs": wcs}).write_to(buffer)
    return buffer.getvalue()


def _wcs_from(raw: bytes) -> Any:
    import asdf

    with asdf.open(io.BytesIO(raw), lazy_load=False, memmap=False) as af:
        return af.tree["wcs"]


def _write_root(f: h5py.File, meta: ObservationMeta) -> h5py.Group:
    """Root attributes and the "observation" group with its metadata."""
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs[_ENC_TYPE] = FORMAT_NAME
    f.attrs[_ENC_VERSION] = FORMAT_VERSION
    f.attrs["written_by"] = json.dumps(core_versions())
    g = f.create_group("observation")
    g.attrs[_ENC_TYPE] = "lrs-observation"
    g.attrs[_ENC_VERSION] = "1.0"
    g.attrs["meta"] = json.dumps(meta.to_dict())
    return g


def _write_rest(f: h5py.File, g: h5py.Group, obs: LRSObservation, skip: tuple[str, ...] = ()) -> None:
    """Array fields (except ``skip``), products, WCS and history."""
    for name in ARRAY_FIELDS:
        value = getattr(obs, name)
        if value is not None and name not in skip:
            _write_array(g, name, value)
    products = g.create_group("products")
    products.attrs[_ENC_TYPE] = "products"
    products.attrs[_ENC_VERSION] = "1.0"
    for name in LRSObservation.PRODUCTS:
        value = getattr(obs, name)
        if value is not None:
            _write_product(products, name, value)
    if obs.wcs is not None:
        ds = g.create_dataset("wcs", data=np.void(_wcs_bytes(obs.wcs)))
        ds.attrs[_ENC_TYPE] = "asdf-wcs"
        ds.attrs[_ENC_VERSION] = "1.0"
    history = f.create_dataset(
        "history",
        data=np.array([r.to_json() for r in obs.history], dtype=object),
        dtype=h5py.string_dtype("utf-8"),
        maxshape=(None,),
        chunks=True,
    )
    history.attrs[_ENC_TYPE] = "json-records"
    history.attrs[_ENC_VERSION] = "1.0"


def _write_session(f: h5py.File, obs: LRSObservation) -> None:
    g = _write_root(f, obs.meta)
    _write_rest(f, g, obs)


def save(obs: LRSObservation, path: str | os.PathLike) -> str:
    """Write ``obs`` to ``path`` atomically and return the path.

    The previous file at ``path``, if any, stays intact until the new one is
    complete on disk.
    """
    target = Path(path)
    tmp = temporary_beside(target, f"save({str(path)!r})")
    fh = None
    try:
        fh = GuardedFile(tmp)  # a failing disk must not leave HDF5 half-open (see safefile)
        with h5py.File(fh, "w", libver=_LIBVER) as f:
            _write_session(f, obs)
        fh.close()
        fh.check(target)
        commit(tmp, target)
    except BaseException:
        if fh is not None:
            fh.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return str(target)


#: Cubes whose first axis runs over integrations, written chunk by chunk by SessionWriter.
APPENDABLE = ("data", "err", "dq", "var_poisson", "var_rnoise", "profile", "outlier_counts")


class SessionWriter:
    """Write a session whose cubes arrive a chunk of integrations at a time.

    The file has the same layout, chunking and compression as :func:`save`
    writes (``docs/file-format.md``); only the order of writing differs.  It
    is built in a temporary file next to ``path`` and moved over ``path``
    by :meth:`finish` only when complete, so the target never holds a
    partial session (an interrupted run removes the temporary file and
    leaves any previous file at ``path`` intact)::

        with SessionWriter("session.h5", nints=obs_nints, meta=meta) as writer:
            for chunk in chunks:                 # consecutive integrations, in order
                writer.append(chunk)             # an LRSObservation of those integrations
            writer.finish(final)                 # products, small arrays, history

    ``finish`` takes an observation holding everything but the cubes: its
    own cube fields are ignored (they may be placeholders); the cubes
    written by ``append`` are kept.  Cubes that are None in the first chunk
    are not written.
    """

    def __init__(self, path: str | os.PathLike, nints: int, meta: ObservationMeta):
        self.target = Path(path)
        self.nints = int(nints)
        if self.nints < 1:
            raise SessionFormatError(f"SessionWriter({path}): nints={nints} must be at least 1.")
        self._tmp = temporary_beside(self.target, f"SessionWriter({str(self.target)!r})")
        self._fh = GuardedFile(self._tmp)
        self._file: h5py.File | None = h5py.File(self._fh, "w", libver=_LIBVER)
        self._group = _write_root(self._file, meta)
        self._written = 0
        self._names: tuple[str, ...] | None = None

    @property
    def written(self) -> int:
        """Integrations appended so far."""
        return self._written

    def _create(self, chunk: LRSObservation) -> None:
        names = []
        for name in APPENDABLE:
            value = getattr(chunk, name)
            if value is None:
                continue
            value = np.asarray(value)
            dtype = value.dtype.newbyteorder("=") if value.dtype.byteorder == ">" else value.dtype
            shape = (self.nints, *value.shape[1:])
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            kwargs: dict[str, Any] = {}
            if size > 4096:  # as _write_array
                kwargs = {
                    "chunks": _chunks(shape, dtype.itemsize),
                    "compression": "gzip",
                    "compression_opts": _GZIP_LEVEL,
                    "shuffle": dtype.kind in "fiu",
                }
            ds = self._group.create_dataset(name, shape=shape, dtype=dtype, **kwargs)
            ds.attrs[_ENC_TYPE] = "array"
            ds.attrs[_ENC_VERSION] = "1.0"
            names.append(name)
        self._names = tuple(names)

    def append(self, chunk: LRSObservation) -> None:
        """Write the cubes of the next ``chunk.nints`` integrations."""
        if self._file is None:
            raise SessionFormatError(f"{self.target}: this SessionWriter is already closed.")
        if self._names is None:
            self._create(chunk)
        stop = self._written + chunk.nints
        if stop > self.nints:
            raise SessionFormatError(
                f"{self.target}: appending {chunk.nints} integrations after {self._written} "
                f"exceeds the {self.nints} announced; pass the right nints to SessionWriter."
            )
        for name in self._names:
            value = getattr(chunk, name)
            if value is None:
                raise SessionFormatError(
                    f"{self.target}: chunk at integration {self._written} has no {name!r} but "
                    "the first chunk had one; every chunk must carry the same cubes."
                )
            self._group[name][self._written : stop] = value
        if self._fh.error is not None:  # a full disk: stop at once
            self.abort()
            self._fh.check(self.target)
        self._written = stop

    def finish(self, obs: LRSObservation) -> str:
        """Write everything else from ``obs``, then move the file into place; returns the path."""
        if self._file is None:
            raise SessionFormatError(f"{self.target}: this SessionWriter is already closed.")
        if self._written != self.nints or obs.nints != self.nints:
            self.abort()
            raise SessionFormatError(
                f"{self.target}: {self._written} of {self.nints} integrations were appended and "
                f"the final observation has {obs.nints}; the session was not written."
            )
        try:
            _write_rest(self._file, self._group, obs, skip=APPENDABLE)
            self._file.close()
            self._file = None
            self._fh.close()
            self._fh.check(self.target)
            commit(self._tmp, self.target)
        except BaseException:
            self.abort()
            raise
        return str(self.target)

    def abort(self) -> None:
        """Close and delete the temporary file; the target is left as it was."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._fh.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file is not None:  # not finished: an error, or finish() was never called
            self.abort()


def _check_version(path: Path, f: h5py.File) -> str:
    name = f.attrs.get("format")
    if name != FORMAT_NAME:
        raise SessionFormatError(
            f"{path} is an HDF5 file but not an exomiri session (format={name!r}); "
            "give a file written by LRSObservation.save()."
        )
    version = str(f.attrs.get("format_version", ""))
    try:
        major, _minor = (int(v) for v in version.split("."))
    except ValueError:
        raise SessionFormatError(f"{path}: unreadable format version {version!r}.") from None
    ours = tuple(int(v) for v in FORMAT_VERSION.split("."))
    if major > ours[0]:
        raise SessionFormatError(
            f"{path} was written in session format {version}, newer than this exomiri "
            f"understands ({FORMAT_VERSION}). Upgrade exomiri (pip install -U exomiri) to read it."
        )
    return version


def _read_product(group: h5py.Group, path: Path) -> Product:
    kind = group.attrs.get(_ENC_TYPE)
    cls = PRODUCT_TYPES.get(kind)
    if cls is None and kind == "SimulationTruth":
        from ..simulation import SimulationTruth as cls  # registers itself on import
    if cls is None:
        raise SessionFormatError(
            f"{path}: product {group.name} has unknown encoding-type {kind!r}; a newer exomiri "
            "or a plugin wrote it. Upgrade exomiri or install the plugin."
        )
    values: dict[str, Any] = json.loads(group.attrs.get("scalars", "{}"))
    for key in group:
        values[key] = group[key][()]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def load(path: str | os.PathLike) -> LRSObservation:
    """Load a session written by :meth:`LRSObservation.save`.

    Every array comes back bit for bit and the history record for record, so
    the chain continues exactly where it stopped.
    """
    path = Path(path)
    if not path.exists():
        raise SessionFormatError(f"{path}: no such session file. Check the path.")
    try:
        with h5py.File(path, "r") as f:
            version = _check_version(path, f)
            fixes = MIGRATIONS[version](f) if version in MIGRATIONS else {}
            g = f["observation"]
            fields: dict[str, Any] = {
                "meta": ObservationMeta.from_dict(json.loads(g.attrs["meta"]))
            }
            for name in ARRAY_FIELDS:
                if name in g:
                    fields[name] = g[name][()]
            for name in g["products"]:
                fields[name] = _read_product(g["products"][name], path)
            if "wcs" in g:
                try:
                    fields["wcs"] = _wcs_from(g["wcs"][()].tobytes())
                except Exception as exc:  # an unreadable WCS must not lose the session
                    from ..exceptions import DataWarning

                    warnings.warn(
                        DataWarning(
                            f"{path}: the stored WCS could not be read ({exc}); it is dropped. "
                            "wavelength_map(source='calibration') still works."
                        ),
                        stacklevel=2,
                    )
            records = f["history"][()] if "history" in f else []
            fields["history"] = tuple(
                StepRecord.from_json(r.decode() if isinstance(r, bytes) else r) for r in records
            )
            fields.update(fixes)
            obs = LRSObservation(**fields)
    except (SessionFormatError, Warning):
        raise
    except Exception as exc:  # h5py, JSON, numpy, the constructor: all say the file is damaged
        raise SessionFormatError(
            f"{path} could not be read as an exomiri session ({type(exc).__name__}: {exc}). "
            "The file is truncated or damaged; load an earlier copy or redo the steps."
        ) from exc
    return obs
