"""Reading signal names the way kill(1) does: ``TERM``, ``SIGTERM``, ``15``."""

from __future__ import annotations

import signal

__all__ = ["parse_signal", "signal_name"]


def parse_signal(value: int | str | signal.Signals) -> int:
    """Return the signal number for ``value``; ``ValueError`` for an unknown signal."""
    if isinstance(value, bool):
        raise TypeError("signal must be an int or a name like 'SIGTERM', not bool")
    if isinstance(value, int):
        number = int(value)
    elif isinstance(value, str):
        text = value.strip().upper()
        if text.isdigit():
            number = int(text)
        else:
            name = text if text.startswith("SIG") else "SIG" + text
            try:
                number = int(signal.Signals[name])
            except KeyError:
                raise ValueError(f"unknown signal: {value!r}") from None
    else:
        raise TypeError(f"signal must be an int or a name, not {type(value).__name__}")
    if number not in signal.valid_signals():
        raise ValueError(f"unknown signal: {value!r}")
    return number


def signal_name(number: int) -> str:
    """``SIGTERM`` for 15; the number as text when it has no name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
