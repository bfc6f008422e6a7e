"""The documented chain, as data: one place for the steps and parameters that ``exomiri demo``,
``exomiri reduce``, ``exomiri.reduce`` and the documentation use by default."""

from __future__ import annotations

from typing import Any

__all__ = ["CLEAN_PARAMETERS", "DEFAULT_CHAIN"]

#: The cleaning parameters of published reductions with this mode.
CLEAN_PARAMETERS: dict[str, Any] = {
    "dq_bits_to_mask": [0, 11],
    "window_heights": [40],
    "poly_order": 4,
    "outlier_threshold": 5.0,
}

#: wavelength map, clean, background, clean again, optimal extraction, align: (verb, parameters).
DEFAULT_CHAIN: tuple[tuple[str, dict[str, Any]], ...] = (
    ("wavelength_map", {}),
    ("clean", CLEAN_PARAMETERS),
    ("subtract_background", {"method": "col_wise"}),
    ("clean", CLEAN_PARAMETERS),
    ("extract", {"method": "optimal"}),
    ("align", {}),
)
