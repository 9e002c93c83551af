"""The access log: one line per request, ``CN METHOD PATH STATUS DURATION``.

Logged under ``jobkit.server.access`` when the server closes the response
body, i.e. once the response was sent: the line then has the whole duration
(a follow stream's too), and costs the client no latency.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs

__all__ = ["LoggedBody", "RequestRecord", "access_log", "printable"]

access_log = logging.getLogger("jobkit.server.access")


def printable(text: str) -> str:
    """``text`` with control characters as ``\\xNN``: paths and CNs come from clients,
    and must never forge log lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


@attrs.define
class RequestRecord:
    """What the access log line of one request says, filled in as the request is served.

    Attributes:
        environ: The request's WSGI environ (method, path, query).
        client: The caller's CN, or ``-`` for a connection with no identity.
        started: When serving began (``time.perf_counter()``).
        status: The response's status code, once the app started the response.
        write: The server's ``write`` callable, from ``start_response``.
    """

    environ: Mapping[str, Any]
    client: str = "-"
    started: float = attrs.Factory(time.perf_counter)
    status: int = 0
    write: Callable[[bytes], Any] | None = None

    def log(self) -> None:
        """Write the line (if the access log is on)."""
        if not access_log.isEnabledFor(logging.INFO):
            return
        environ = self.environ
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING")
        if query:
            path = f"{path}?{query}"
        # makeRecord + handle is logger.info without its stack walk for the
        # caller's file and line, which an access log does not need and which
        # costs as much as the rest of the line on every request.
        access_log.handle(access_log.makeRecord(
            access_log.name, logging.INFO, __file__, 0, "%s %s %s %d %.1fms",
            (printable(self.client), printable(environ.get("REQUEST_METHOD", "-")),
             printable(path), self.status, (time.perf_counter() - self.started) * 1000.0),
            None,
        ))


class LoggedBody:
    """Wraps a response body to write the access log line when the server closes it."""

    def __init__(self, body: Iterable[bytes], record: RequestRecord) -> None:
        self._body = body
        self._iterator = iter(body)
        self._record = record

    def __iter__(self) -> Iterator[bytes]:
        return self._iterator

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._record.log()
