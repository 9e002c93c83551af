"""Argument checks shared by `JobPool` and the remote client.

Wrong types raise ``TypeError`` and bad values ``ValueError``, with the same
message locally and remotely.  Only the standard library is imported here:
the CLI's start-up time depends on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = [
    "check_args",
    "check_count",
    "check_env",
    "check_seconds",
    "check_str",
    "is_text",
]


def check_str(what: str, value: object, *, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError(f"{what} must not contain NUL bytes")
    if nonempty and not value:
        raise ValueError(f"{what} must not be empty")
    return value


def check_args(args: object) -> list[str]:
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise TypeError(f"args must be a list of str, not {type(args).__name__}")
    return [check_str(f"args[{i}]", arg) for i, arg in enumerate(args)]


def check_env(env: object) -> dict[str, str]:
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of str to str, not {type(env).__name__}")
    checked = {}
    for key, value in env.items():
        check_str("env key", key, nonempty=True)
        if "=" in key:
            raise ValueError(f"env key must not contain '=': {key!r}")
        checked[key] = check_str(f"env[{key!r}]", value)
    return checked


def check_seconds(what: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{what} must be a positive number of seconds, not {value}")
    return float(value)


def check_count(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, not {value}")
    return value


def is_text(value: str) -> bool:
    """True if ``value`` can travel as UTF-8 text.

    Strings decoded from undecodable bytes (``os.fsdecode``) hold lone
    surrogates: fine for ``execve``, impossible in a JSON request or answer.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
