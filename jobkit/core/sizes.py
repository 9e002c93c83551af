"""Sizes for people: ``"256M"``, ``"1.5GiB"``, ``1024`` to bytes, and back."""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_size"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?", re.IGNORECASE)


def parse_size(what: str, value: object) -> int:
    """Bytes from an int or a string such as ``"64K"``, ``"256M"``, ``"1.5GiB"``, ``"10MB"``.

    Units are binary (K = 1024), as Docker and systemd read them.  Raise
    ``TypeError`` for other types, ``ValueError`` naming ``what`` for
    nonsense (negative, empty, unknown unit, fractions of a byte).
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        kind = type(value).__name__
        raise TypeError(f"{what} must be a size such as 1048576 or '1M', not {kind}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} must not be negative, not {value}")
        return value
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{what} must be a size such as '512K', '256M' or '1G', not {value!r}")
    number, unit = match.groups()
    size = float(number) * _UNITS[unit.upper()]
    if size != int(size):
        raise ValueError(f"{what} must be a whole number of bytes, not {value!r}")
    if size > 1 << 62:
        raise ValueError(f"{what} is too large: {value!r}")
    return int(size)


def format_size(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``: the largest binary unit that keeps the number >= 1."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}".replace(".0 ", " ")
        value /= 1024
    raise AssertionError("unreachable")
