"""Whole-cube pixel operations of the host: the unusable-pixel mask and the
background cubes that extraction methods see.

Both run the compiled one-pass kernels of :mod:`exomiri.steps._jit_pixels` on
blocks of integrations on a thread pool, and fall back to the numpy
expressions they replace (same results, bit for bit) when numba is missing or
an array is not a native-byte-order, C-ordered cube the kernels take.
"""

from __future__ import annotations

import numpy as np

from ..products import BackgroundModel
from ._pool import spans, thread_map

__all__ = ["background_cubes", "unusable"]

#: Integrations per block run on one thread.
_BLOCK = 32


def _kernel_ready(*arrays: np.ndarray) -> bool:
    return all(a.flags.c_contiguous and a.dtype.isnative for a in arrays)


def unusable(data: np.ndarray, err: np.ndarray, dq: np.ndarray, bits: int, keep_bit: int = 0) -> np.ndarray:
    """True where a pixel must not be used, as a new (nints, nrows, ncols) bool cube.

    A pixel is unusable when ``data`` is not finite, when ``err`` is not
    finite and positive, or when ``dq`` carries one of ``bits`` and not
    ``keep_bit`` (0: any of ``bits`` makes it unusable).
    """
    data, err, dq = np.asarray(data), np.asarray(err), np.asarray(dq)
    bits, keep_bit = int(bits), int(keep_bit)
    kernel = None
    if (
        data.ndim == 3
        and data.shape == err.shape == dq.shape
        and data.dtype.kind == err.dtype.kind == "f"
        and dq.dtype.kind in "iu"
        and _kernel_ready(data, err, dq)
    ):
        try:
            from ._jit_pixels import unusable_into as kernel
        except ImportError:  # pragma: no cover - numba missing
            kernel = None
    if kernel is None:
        bad = ~np.isfinite(data)
        with np.errstate(invalid="ignore"):
            bad |= ~(np.isfinite(err) & (err > 0))
        if bits:
            bad |= ((dq & bits) != 0) & ((dq & keep_bit) == 0)
        return bad
    out = np.empty(data.shape, dtype=bool)

    def work(span: tuple[int, int]) -> None:
        part = slice(*span)
        kernel(data[part], err[part], dq[part], bits, keep_bit, out[part])

    thread_map(work, spans(data.shape[0], _BLOCK))
    return out


def background_cubes(model: BackgroundModel) -> tuple[np.ndarray, np.ndarray]:
    """The model's background and its 1-sigma error at every pixel, float32
    (nints, nrows, ncols): ``model.evaluate(dtype=np.float32)`` and
    ``np.sqrt(model.variance(dtype=np.float32))``, in one pass."""
    coeffs = np.ascontiguousarray(model.coeffs, dtype=np.float32)
    cov = np.ascontiguousarray(model.cov, dtype=np.float32)
    basis = np.ascontiguousarray(model.basis, dtype=np.float32)
    try:
        from ._jit_pixels import background_cubes_into
    except ImportError:  # pragma: no cover - numba missing
        return model.evaluate(dtype=np.float32), np.sqrt(model.variance(dtype=np.float32))
    nints = coeffs.shape[0]
    shape = (nints, coeffs.shape[1], basis.shape[0])  # one row when the model has one
    level = np.empty(shape, dtype=np.float32)
    level_err = np.empty(shape, dtype=np.float32)

    def work(span: tuple[int, int]) -> None:
        part = slice(*span)
        background_cubes_into(coeffs[part], cov[part], basis, level[part], level_err[part])

    thread_map(work, spans(nints, _BLOCK))
    return level, level_err
