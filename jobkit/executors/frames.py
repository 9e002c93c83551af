"""The lines a ``ray`` job's wrapper writes to its stdout, and reading them back.

Ray keeps one log per job, stdout and stderr merged, read back as text, with
lines of its own among the job's.  So the wrapper (`jobkit.executors.ray_entry`)
never lets the job write there: it reads the job's two pipes itself and
writes each chunk as one line of ASCII::

    @jobkit1 o 0 aGVsbG8K                     stdout bytes at offset 0 (base64)
    @jobkit1 e 0 b29wcwo=                     stderr bytes at offset 0
    @jobkit1 start {"pid": 4242}              the command runs
    @jobkit1 end {"exit_code": 3, ...}        how it ended (JSON), always last
    @jobkit1 error {"message": "..."}         it could not start

Every byte survives (binary included), the streams stay apart, and each
chunk carries its absolute offset, so a reader that starts again from the
top of the log (after a reconnect, or a restart of the pool) keeps only what
it did not have.  Lines without the prefix are Ray's own and are dropped.

Standard library only: the wrapper runs on Ray's nodes with nothing else.
"""

from __future__ import annotations

import base64
import json
from typing import Any, NamedTuple

__all__ = ["PREFIX", "Frame", "FrameReader", "data_frame", "event_frame"]

#: What every frame line starts with; the ``1`` is the format's version.
PREFIX = "@jobkit1 "
_PREFIX_BYTES = PREFIX.encode()
#: The stream letter of each stream name, and back.
_LETTERS = {"stdout": "o", "stderr": "e"}
_STREAMS = {letter: name for name, letter in _LETTERS.items()}


class Frame(NamedTuple):
    """One decoded line.

    ``kind`` is ``"stdout"`` or ``"stderr"`` (``offset`` and ``data`` set),
    or ``"start"``, ``"end"``, ``"error"`` (``fields`` set).
    """

    kind: str
    offset: int = 0
    data: bytes = b""
    fields: dict[str, Any] = {}  # noqa: RUF012 - never mutated: a NamedTuple default


def data_frame(stream: str, offset: int, data: bytes) -> bytes:
    """The line of ``data`` written to ``stream`` at ``offset``."""
    return b"%s%s %d %s\n" % (_PREFIX_BYTES, _LETTERS[stream].encode(), offset,
                              base64.b64encode(data))


def event_frame(kind: str, fields: dict[str, Any]) -> bytes:
    """The line of an event (``start``, ``end``, ``error``) with its fields."""
    return f"{PREFIX}{kind} {json.dumps(fields, separators=(',', ':'))}\n".encode("ascii")


class FrameReader:
    """Turns log text, in chunks cut anywhere, into `Frame`\\ s.

    A line that is not a whole, well-formed frame is dropped (Ray's own
    lines, or a line the log cut short).
    """

    def __init__(self) -> None:
        self._partial = ""

    def reset(self) -> None:
        """Forget a partial line: the log is read again from its start."""
        self._partial = ""

    def feed(self, text: str) -> list[Frame]:
        """The frames completed by ``text``."""
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        frames = []
        for line in lines:
            frame = parse_line(line)
            if frame is not None:
                frames.append(frame)
        return frames


def parse_line(line: str) -> Frame | None:
    """The frame ``line`` (without its newline) holds, or None if it holds none."""
    if not line.startswith(PREFIX):
        return None
    kind, _, rest = line[len(PREFIX):].partition(" ")
    try:
        if kind in _STREAMS:
            offset, _, encoded = rest.partition(" ")
            if not offset.isdigit():
                return None
            return Frame(_STREAMS[kind], int(offset),
                         base64.b64decode(encoded, validate=True))
        if kind in ("start", "end", "error"):
            fields = json.loads(rest)
            if isinstance(fields, dict):
                return Frame(kind, fields=fields)
    except ValueError:  # binascii.Error and JSONDecodeError are ValueErrors
        pass
    return None
