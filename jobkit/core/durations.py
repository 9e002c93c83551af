"""Durations for people: ``"90s"``, ``"15m"``, ``"1h30m"``, ``"2d"``, ``"1w"`` to seconds."""

from __future__ import annotations

import re

__all__ = ["parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+|\d+(?:\.\d+)?")


def parse_duration(what: str, text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"15m"``, ``"1h30m"``, ``"2d"`` or ``"1w"``.

    A bare number is seconds.  Raise ``ValueError`` naming ``what`` otherwise.
    """
    cleaned = text.strip().lower()
    if not _WHOLE.fullmatch(cleaned):
        raise ValueError(
            f"{what} must be a duration such as 90s, 15m, 1h30m, 2d or 1w, not {text!r}"
        )
    if cleaned[-1].isdigit():
        return float(cleaned)
    return float(sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned)))
