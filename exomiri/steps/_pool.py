"""Running independent blocks of work on a small thread pool.

The kernels of the chain work on blocks of integrations (or rows) that do not
depend on each other; numpy's loops and the compiled kernels (``nogil=True``)
release the GIL, so blocks run in parallel on threads.  Block boundaries are
chosen from the data's size only, never from the number of threads, and each
block writes its own part of the output, so results do not depend on the
number of threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["default_threads", "spans", "thread_map"]

T = TypeVar("T")
R = TypeVar("R")


def default_threads() -> int:
    """The CPUs this process may use, at most 8, and at most ``OMP_NUM_THREADS`` where set.

    ``OMP_NUM_THREADS`` is the usual way to share a machine's cores among
    processes (batch scripts set it; Dask's worker processes get 1, so that a
    task does not start threads beside the worker's own).
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if limit.isdigit() and int(limit) > 0:
        n = min(n, int(limit))
    return max(1, min(n, 8))


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` pairs covering ``range(n)`` in pieces of ``size`` (the last may be shorter)."""
    size = max(1, int(size))
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def thread_map(func: Callable[[T], R], items: Iterable[T], n_threads: int | None = None) -> list[R]:
    """``[func(item) for item in items]``, the items spread over ``n_threads`` threads.

    ``n_threads`` None: :func:`default_threads`.  One thread, or one item,
    runs in the calling thread.  The first exception raised by ``func`` is
    raised here.
    """
    items = list(items)
    threads = default_threads() if n_threads is None else max(1, int(n_threads))
    if threads == 1 or len(items) <= 1:
        return [func(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(func, items))
