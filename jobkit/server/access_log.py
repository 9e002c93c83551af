"""The access log: one line per request, ``CN METHOD PATH STATUS DURATION``.

Logged under ``jobkit.server.access`` when the server closes the response
body, i.e. once the response was sent: the line then has the whole duration
(a follow stream's too), and costs the client no latency.

Each record also carries the request's fields as ``record.jobkit`` (a dict:
``request_id``, ``cn``, ``peer``, ``method``, ``route``, ``path``,
``status``, ``bytes``, ``duration_s``), which ``--log-format json`` writes
(`jobkit.server.log_format`).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs

__all__ = ["FIELDS_ATTRIBUTE", "LoggedBody", "RequestRecord", "access_log", "printable"]

access_log = logging.getLogger("jobkit.server.access")

#: The ``LogRecord`` attribute holding a line's structured fields.
FIELDS_ATTRIBUTE = "jobkit"

# Request ids: this process's random prefix and a counter, unique across restarts.
_RUN = os.urandom(4).hex()
_numbers = itertools.count(1)


def _request_id() -> str:
    return f"{_RUN}-{next(_numbers)}"


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
        peer: The peer's address, ``HOST:PORT``.
        on_done: Called with the record once the response was sent (metrics,
            the audit of refusals); its errors are the caller's to handle.
        request_id: Unique to this request.
        started: When serving began (``time.perf_counter()``).
        status: The response's status code, once the app started the response.
        route: The route template that matched (``/jobs/<job_id>``), or None.
        sent: Body bytes handed to the server.
        write: The server's ``write`` callable, from ``start_response``.
    """

    environ: Mapping[str, Any]
    client: str = "-"
    peer: str = "-"
    on_done: Callable[[RequestRecord], None] | None = None
    request_id: str = attrs.Factory(_request_id)
    started: float = attrs.Factory(time.perf_counter)
    status: int = 0
    route: str | None = None
    sent: int = 0
    write: Callable[[bytes], Any] | None = None

    @property
    def method(self) -> str:
        return str(self.environ.get("REQUEST_METHOD", "-"))

    def finish(self) -> None:
        """The response was sent: write the log line (if the access log is on), tell ``on_done``."""
        try:
            self._log()
        finally:
            if self.on_done is not None:
                self.on_done(self)

    def _log(self) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        environ = self.environ
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING")
        if query:
            path = f"{path}?{query}"
        duration = time.perf_counter() - self.started
        client, method, path = printable(self.client), printable(self.method), printable(path)
        fields = {
            "request_id": self.request_id, "cn": client, "peer": self.peer, "method": method,
            "route": self.route, "path": path, "status": self.status, "bytes": self.sent,
            "duration_s": round(duration, 6),
        }
        # makeRecord + handle is logger.info without its stack walk for the
        # caller's file and line, which an access log does not need and which
        # costs as much as the rest of the line on every request.
        access_log.handle(access_log.makeRecord(
            access_log.name, logging.INFO, __file__, 0, "%s %s %s %d %.1fms",
            (client, method, path, self.status, duration * 1000.0),
            None, extra={FIELDS_ATTRIBUTE: fields},
        ))


class LoggedBody:
    """Wraps a response body to count its bytes and finish its `RequestRecord` when closed."""

    def __init__(self, body: Iterable[bytes], record: RequestRecord) -> None:
        self._body = body
        self._iterator: Iterator[bytes] | None = None  # made on first use: a `source` has none
        self._record = record

    @property
    def source(self) -> object:
        """The body itself, if the server may write it in turns (`jobkit.server.pump`).

        None for a body already whole in memory (a list of chunks), which is
        written at once.
        """
        return None if isinstance(self._body, list) else self._body

    def count(self, sent: int) -> None:
        """``sent`` more bytes of the body went out by way of `source`."""
        self._record.sent += sent

    def __iter__(self) -> Iterator[bytes]:
        body = self._body
        if isinstance(body, list):
            # Whole in memory (most answers): counted at once and iterated in C,
            # not through __next__ (its calls and final StopIteration cost µs).
            self._record.sent += sum(map(len, body))
            return iter(body)
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._body)
        chunk = next(self._iterator)
        self._record.sent += len(chunk)
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._record.finish()
