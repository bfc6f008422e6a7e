"""A file that HDF5 writes through and that survives a failing disk.

When a write fails inside the HDF5 library (a full disk, a quota, a vanished
network share), HDF5 keeps the file open with metadata it cannot flush, and
closing or even garbage-collecting it later can crash the whole Python
process (seen with a full disk: a segmentation fault, which in a notebook
kills the kernel and every unsaved result).  :class:`GuardedFile` is handed
to :class:`h5py.File` as a Python file object instead of a path: it writes
through to the real file until the first failure, records it, and from then
on accepts and discards every write, so that HDF5 finishes and closes
normally.  The caller then calls :meth:`GuardedFile.check`, which raises a
clear :class:`~exomiri.SessionFormatError`, and deletes the incomplete file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..exceptions import SessionFormatError

__all__ = ["GuardedFile"]


class GuardedFile:
    """A binary file opened for writing (truncated) whose first write error is kept, not raised.

    Offers what :class:`h5py.File` needs of a file object: ``read``,
    ``readinto``, ``write``, ``seek``, ``tell``, ``truncate`` and ``flush``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = open(self.path, "w+b", buffering=0)  # noqa: SIM115 - closed by close()
        self.error: OSError | None = None

    def _failed(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):  # a raw write may be short when the disk fills
                    n = self._fh.write(view[done:])
                    if not n:
                        raise OSError(28, os.strerror(28))
                    done += n
            except OSError as exc:
                self._failed(exc)
        return len(view)

    def read(self, size: int = -1) -> bytes:
        return self._fh.read(size)

    def readinto(self, buffer) -> int:
        return self._fh.readinto(buffer)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def truncate(self, size: int | None = None) -> int:
        try:
            return self._fh.truncate(size)
        except OSError as exc:
            self._failed(exc)
            return self._fh.tell() if size is None else size

    def flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as exc:
            self._failed(exc)

    def fsync(self) -> None:
        """Force what was written to disk (a failure is recorded like a write error)."""
        if self.error is None:
            try:
                os.fsync(self._fh.fileno())
            except OSError as exc:
                self._failed(exc)

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError as exc:
            self._failed(exc)

    def check(self, target: str | os.PathLike) -> None:
        """Raise a :class:`SessionFormatError` if any write to this file failed."""
        if self.error is not None:
            reason = self.error.strerror or str(self.error)
            raise SessionFormatError(
                self.error.errno,
                f"Could not save {target}: writing {self.path.name} failed ({reason}). The "
                f"previous file at {target}, if any, is untouched; free some space (or choose "
                "another folder) and save again.",
            ) from self.error
