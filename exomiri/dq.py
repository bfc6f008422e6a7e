"""JWST data-quality flags: names <-> bits, and masks.

Flags are combined with bitwise OR, never added: adding a flag twice carries
into the next bit and silently sets a different flag.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .exceptions import InputError

__all__ = ["FLAGS", "OUTLIER", "bit_mask", "flag_names", "mask_from_dq"]

#: Flag name -> bit number, as defined by the JWST pipeline.
FLAGS: dict[str, int] = {
    "DO_NOT_USE": 0,
    "SATURATED": 1,
    "JUMP_DET": 2,
    "DROPOUT": 3,
    "OUTLIER": 4,
    "PERSISTENCE": 5,
    "AD_FLOOR": 6,
    "CHARGELOSS": 7,
    "UNRELIABLE_ERROR": 8,
    "NON_SCIENCE": 9,
    "DEAD": 10,
    "HOT": 11,
    "WARM": 12,
    "LOW_QE": 13,
    "RC": 14,
    "TELEGRAPH": 15,
    "NONLINEAR": 16,
    "BAD_REF_PIXEL": 17,
    "NO_FLAT_FIELD": 18,
    "NO_GAIN_VALUE": 19,
    "NO_LIN_CORR": 20,
    "NO_SAT_CHECK": 21,
    "UNRELIABLE_BIAS": 22,
    "UNRELIABLE_DARK": 23,
    "UNRELIABLE_SLOPE": 24,
    "UNRELIABLE_FLAT": 25,
    "OPEN": 26,
    "ADJ_OPEN": 27,
    "FLUX_ESTIMATED": 28,
    "MSA_FAILED_OPEN": 29,
    "OTHER_BAD_PIXEL": 30,
    "REFERENCE_PIXEL": 31,
}

_NAMES = {bit: name for name, bit in FLAGS.items()}

#: The value exomiri ORs into ``dq`` for every pixel it replaces.
OUTLIER = np.uint32(1 << FLAGS["OUTLIER"])


def _bit(item: int | str) -> int:
    if isinstance(item, bool):
        raise InputError(f"DQ flag {item!r} is a bool; give a bit number (0-31) or a flag name.")
    if isinstance(item, int | np.integer):
        if not 0 <= int(item) <= 31:
            raise InputError(f"DQ bit {item} is outside 0-31; JWST DQ arrays are 32-bit.")
        return int(item)
    if isinstance(item, str):
        key = item.strip().upper()
        if key in FLAGS:
            return FLAGS[key]
        raise InputError(
            f"Unknown DQ flag name {item!r}. Known names: {', '.join(FLAGS)}."
        )
    raise InputError(
        f"DQ flag {item!r} has type {type(item).__name__}; give bit numbers or names, "
        "e.g. dq_bits_to_mask=[0, 'HOT']."
    )


def bit_mask(bits: Iterable[int | str] | int | str | None) -> np.uint32:
    """Return the OR of the given bits, which may be numbers (``0``) or names (``"HOT"``).

    ``None`` or an empty list gives 0 (nothing masked).
    """
    if bits is None:
        return np.uint32(0)
    if isinstance(bits, int | str | np.integer):
        bits = [bits]
    value = 0
    try:
        items = list(bits)
    except TypeError:
        raise InputError(
            f"DQ bits must be a list of bit numbers or flag names, got {bits!r}."
        ) from None
    for item in items:
        value |= 1 << _bit(item)
    return np.uint32(value)


def bit_numbers(bits: Iterable[int | str] | int | str | None) -> list[int]:
    """Normalise bits given as numbers or names to a sorted list of bit numbers."""
    value = int(bit_mask(bits))
    return [b for b in range(32) if value >> b & 1]


def mask_from_dq(dq: np.ndarray, bits: Iterable[int | str] | int | str | None) -> np.ndarray:
    """Boolean array, True where any of ``bits`` is set in ``dq``."""
    value = bit_mask(bits)
    if value == 0:
        return np.zeros(np.shape(dq), dtype=bool)
    return (np.asarray(dq) & value) != 0


def flag_names(value: int) -> list[str]:
    """Names of the flags set in one DQ value, e.g. ``flag_names(2049) == ['DO_NOT_USE', 'HOT']``."""
    value = int(value)
    return [_NAMES[b] for b in range(32) if value >> b & 1]


__all__ += ["bit_numbers"]
