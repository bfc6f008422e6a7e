"""Reading rateints segments (fits), sessions (hdf5); where outputs may go."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..exceptions import InputError


def output_folder(path: str | os.PathLike, call: str) -> Path:
    """The folder a file ``path`` will be written into, checked before any work.

    Raises :class:`~exomiri.InputError`, naming ``call`` (what the user
    wrote, e.g. ``"write('out/jw01')"``) and the fix, when the folder is
    missing or not writable.
    """
    folder = Path(path).parent
    if not folder.is_dir():
        raise InputError(
            f"{call}: the folder {folder} does not exist; create it or write somewhere else."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{call}: the folder {folder} is not writable; write somewhere else.")
    return folder


def temporary_beside(path: str | os.PathLike, call: str) -> str:
    """A new private temporary file in the folder of ``path`` (checked with :func:`output_folder`),
    named after it and hidden, for :func:`commit` to move into place."""
    target = Path(path)
    folder = output_folder(target, call)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return tmp


def commit(tmp: str, path: str | os.PathLike) -> None:
    """Flush the finished temporary file to disk and move it over ``path``.

    The temporary file was created private (mode 0600); the result gets the
    mode of the file it replaces, or the usual one for a new file (0666 less
    the umask).
    """
    target = Path(path)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    if target.exists():
        mode = target.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)
    os.replace(tmp, target)
