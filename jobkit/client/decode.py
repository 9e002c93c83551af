"""The server's JSON back into the library's values (`JobStatus`, `StreamInfo`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jobkit.core.models import JobStatus, State, StreamInfo

__all__ = ["status_from_json"]


def status_from_json(data: Any) -> JobStatus:
    """A `JobStatus` from ``GET /jobs/<id>/status`` (or one ``GET /jobs`` summary).

    Raises ``ValueError`` when the document is not a status.
    """
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    try:
        return JobStatus(
            id=str(data["id"]),
            state=State(data["status"]),
            command=str(data["cmd"]),
            args=tuple(str(arg) for arg in data.get("args") or ()),
            pid=_optional_int(data.get("pid")),
            created_at=_time(data["created_at"]),
            backend=str(data.get("backend", "")),
            exit_code=_optional_int(data.get("exit_code")),
            signal=_optional_int(data.get("signal")),
            error=_optional_str(data.get("error_msg")),
            timed_out=bool(data.get("timed_out", False)),
            ended_at=None if data.get("ended_at") is None else _time(data["ended_at"]),
            output_error=_optional_str(data.get("output_error")),
            stdout=_stream(data.get("stdout")),
            stderr=_stream(data.get("stderr")),
        )
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a job status: {error!r}") from None


def _time(value: Any) -> datetime:
    text = str(value)
    # datetime.fromisoformat reads a "Z" suffix only from Python 3.11 on.
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _stream(value: Any) -> StreamInfo:
    if not isinstance(value, dict):
        return StreamInfo()
    return StreamInfo(
        written=int(value.get("written", 0)),
        dropped=int(value.get("dropped", 0)),
        closed=bool(value.get("closed", False)),
    )
