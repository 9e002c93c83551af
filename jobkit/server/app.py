"""The HTTP API: a Bottle app that maps requests to per-client `JobPool` calls.

The app is thin: it checks what a request says, calls the library, and turns
the result (or the library's exception) into JSON.  Errors are translated in
one place, `_translate_errors`; anything else a client can cause is answered
with a JSON ``{"error": ...}`` too, never an HTML page.

Who the client is comes from the TLS layer (`jobkit.server.tls`): the single
CN of its verified certificate.  Each CN gets its own `JobPool` on its first
``PUT /jobs``; another client's jobs look exactly like jobs that never
existed (404), unless the caller is an admin (``--admin``), who may name
another client's pool with ``?client=CN`` and list every pool with ``?all=true``.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import parse_qs

import attrs
import bottle  # type: ignore[import-untyped]

from jobkit.core.checks import is_text
from jobkit.core.errors import BackendNotFound, JobNotFound, PoolClosed
from jobkit.core.models import JobStatus, StreamInfo
from jobkit.core.pool import JobPool
from jobkit.core.signals import signal_name
from jobkit.core.stream import Follower
from jobkit.server.openapi import openapi_document
from jobkit.server.tls import PEER_ENVIRON_KEY, Peer

__all__ = [
    "DEFAULT_MAX_JOBS",
    "FOLLOW_POLL_INTERVAL",
    "MAX_BODY",
    "ApiError",
    "JobApi",
    "Limits",
    "status_json",
]

log = logging.getLogger("jobkit.server")
access_log = logging.getLogger("jobkit.server.access")

#: The largest request body accepted (bytes); larger ones get 413.
MAX_BODY = 1 << 20
#: Live (running) jobs one client may have at once by default; more get 429.
DEFAULT_MAX_JOBS = 256
#: A refused body up to this size is read (and dropped) before the 413, so the client sees it.
DRAIN_LIMIT = 8 << 20
#: How often an idle follow stream wakes up to notice shutdown or a dead client.
FOLLOW_POLL_INTERVAL = 0.5
#: The environ key under which the app finds the client's CN.
CLIENT_ENVIRON_KEY = "jobkit.client"

_JSON = "application/json"
_CREATE_FIELDS = frozenset({"cmd", "args", "env", "replace_env", "cwd", "timeout", "backend"})
_STOP_FIELDS = frozenset({"signal"})
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})
#: For errors after which the rest of the request cannot be found in the byte stream.
_CLOSE = {"Connection": "close"}
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ApiError(Exception):
    """A request the API refuses: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@attrs.frozen
class Limits:
    """What one server lets its clients do.

    Attributes:
        max_jobs: Live (running) jobs one client may have; 0 means no limit.
            Another ``PUT /jobs`` over it gets 429.
        max_follows: Follow streams open at once, all clients together.  Each
            holds a worker thread, so this must stay below the thread count to
            leave threads for other requests; more get 503.
        max_client_follows: Follow streams one client may hold; more get 429.
        max_body: The largest request body, in bytes; larger ones get 413.
    """

    max_jobs: int = DEFAULT_MAX_JOBS
    max_follows: int = 32
    max_client_follows: int = 16
    max_body: int = MAX_BODY

    @classmethod
    def for_threads(cls, threads: int, *, max_jobs: int = DEFAULT_MAX_JOBS) -> Limits:
        """Limits for a server with ``threads`` worker threads.

        Half the threads may follow streams (a quarter for one client), so the
        other half always serves ordinary requests.
        """
        follows = max(1, threads // 2)
        return cls(max_jobs=max_jobs, max_follows=follows,
                   max_client_follows=max(1, follows // 2))


def status_json(status: JobStatus) -> dict[str, Any]:
    """The JSON form of a job's status, as ``GET /jobs/<id>/status`` returns it.

    ``error_msg``, ``exit_code``, ``signal`` and ``signal_name`` are present
    only when they apply, as in the design; everything else always is.
    """
    body: dict[str, Any] = {
        "id": status.id,
        "status": status.state.value,
        "cmd": status.command,
        "args": list(status.args),
        "pid": status.pid,
        "created_at": _iso(status.created_at),
        "ended_at": None if status.ended_at is None else _iso(status.ended_at),
        "timed_out": status.timed_out,
        "backend": status.backend,
        "output_error": status.output_error,
        "stdout": _stream_json(status.stdout),
        "stderr": _stream_json(status.stderr),
    }
    if status.error is not None:
        body["error_msg"] = status.error
    if status.exit_code is not None:
        body["exit_code"] = status.exit_code
    if status.signal is not None:
        body["signal"] = status.signal
        body["signal_name"] = signal_name(status.signal)
    return body


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _stream_json(info: StreamInfo) -> dict[str, Any]:
    return {"written": info.written, "dropped": info.dropped, "closed": info.closed}


class _Client:
    """One client's pool and the counters the limits need."""

    __slots__ = ("live", "lock", "name", "pool", "reserved")

    def __init__(self, name: str, pool: JobPool) -> None:
        self.name = name
        self.pool = pool
        self.lock = threading.Lock()
        self.live: set[str] = set()  # ids of jobs that were running when last seen
        self.reserved = 0  # creations in progress


class _ClientPools:
    """The map CN -> `_Client`, created on first use.

    Reads take no lock (a dict lookup is atomic); only creating a client's
    pool does, and it checks again under the lock so two first requests from
    one client make one pool.
    """

    def __init__(self, factory: Callable[[], JobPool]) -> None:
        self._factory = factory
        self._clients: dict[str, _Client] = {}
        self._lock = threading.Lock()
        self._closed = False

    def get(self, name: str) -> _Client | None:
        return self._clients.get(name)

    def get_or_create(self, name: str) -> _Client:
        client = self._clients.get(name)
        if client is not None:
            return client
        with self._lock:
            if self._closed:
                raise PoolClosed
            client = self._clients.get(name)
            if client is None:
                client = self._clients[name] = _Client(name, self._factory())
            return client

    def all(self) -> list[_Client]:
        with self._lock:
            return sorted(self._clients.values(), key=lambda client: client.name)

    def close(self) -> None:
        """Close every pool: every job is killed and reaped."""
        with self._lock:
            self._closed = True
            clients = list(self._clients.values())
        for client in clients:
            client.pool.close()


class _FollowRegistry:
    """The follow streams open now, so that limits and shutdown can see them."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._open: set[_ByteStream] = set()
        # Open follow streams per caller CN: an admin following another
        # client's job spends the admin's allowance, not its owner's.
        self._by_caller: dict[str, int] = {}
        self.shutting_down = False

    def add(self, stream: _ByteStream, caller: str | None, limits: Limits) -> None:
        with self._lock:
            if self.shutting_down:
                raise ApiError(503, "the server is shutting down")
            if len(self._open) >= limits.max_follows:
                raise ApiError(503, f"too many follow streams open on this server "
                                    f"(limit {limits.max_follows}); try again later",
                               {"Retry-After": "1"})
            if caller is not None:
                if self._by_caller.get(caller, 0) >= limits.max_client_follows:
                    raise ApiError(429, f"too many follow streams open for client "
                                        f"{caller!r} (limit {limits.max_client_follows})")
                self._by_caller[caller] = self._by_caller.get(caller, 0) + 1
            self._open.add(stream)

    def remove(self, stream: _ByteStream, caller: str | None) -> None:
        with self._lock:
            if stream in self._open:
                self._open.discard(stream)
                if caller is not None:
                    left = self._by_caller[caller] - 1
                    if left:
                        self._by_caller[caller] = left
                    else:
                        del self._by_caller[caller]
                self._lock.notify_all()

    def count(self) -> int:
        with self._lock:
            return len(self._open)

    def shutdown(self, grace: float) -> None:
        """End every stream: cancel followers, then abort connections still open after ``grace``."""
        with self._lock:
            self.shutting_down = True
            streams = list(self._open)
        for stream in streams:
            stream.cancel()
        deadline = time.monotonic() + grace
        with self._lock:
            while self._open:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            stuck = list(self._open)
        for stream in stuck:  # blocked writing to a client that does not read
            stream.abort()


class _ByteStream:
    """The body of ``GET /jobs/<id>/stdout|stderr``: raw bytes from a `Follower`.

    Without ``follow`` it ends once it has handed out what the stream held
    when the request came (``until``).  With ``follow`` it ends when the
    job's stream ends, when the job is deleted, at shutdown, or when the
    client goes away; it wakes up every `FOLLOW_POLL_INTERVAL` seconds to
    notice the last two, since nothing is written while the job is quiet
    (and no heartbeat can be: it would corrupt the raw bytes).

    It looks like a file to bottle (it has ``read``) and our environ's
    ``wsgi.file_wrapper`` hands it to cheroot untouched, so bottle does not
    block the response headers waiting for the first chunk.
    """

    def __init__(self, follower: Follower, *, until: int | None, peer: Peer | None,
                 on_close: Callable[[_ByteStream], None]) -> None:
        self._follower = follower
        self._until = until
        self.follow = until is None
        self._peer = peer
        self._on_close = on_close
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.read()
        if not data:
            raise StopIteration
        return data

    def read(self, size: int = -1) -> bytes:
        """The next chunk; ``b""`` at the end (``size`` is ignored).

        The body is contiguous from the offset in ``X-Jobkit-Offset``: if the
        backend dropped bytes before we could send them (``ring``), the
        response ends there instead, and the client, resuming from the
        offset it reached, gets a new response saying where bytes start now.
        """
        follower = self._follower
        while not self._done:
            expected = follower.offset
            if self._until is not None:
                if expected >= self._until:
                    break
                data = follower.read(0)
                if not data:  # caught up (b"") or ended (None)
                    break
            else:
                data = follower.read(FOLLOW_POLL_INTERVAL)
                if data is None:
                    break
                if not data:
                    if self._peer is not None and self._peer.connection_gone():
                        break
                    continue
            if follower.offset - len(data) != expected:
                break  # a gap: see the docstring
            return data
        self.close()
        return b""

    def cancel(self) -> None:
        self._follower.cancel()

    def abort(self) -> None:
        self._follower.cancel()
        if self._peer is not None:
            self._peer.abort()

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._follower.cancel()
            self._on_close(self)


def _passthrough_file_wrapper(filelike: Any, block_size: int = 1 << 16) -> Iterable[bytes]:
    """``wsgi.file_wrapper`` that lets our `_ByteStream` through as it is."""
    if isinstance(filelike, _ByteStream):
        return filelike
    return _iter_file(filelike, block_size)


def _iter_file(filelike: Any, block_size: int) -> Iterator[bytes]:
    try:
        while chunk := filelike.read(block_size):
            yield chunk
    finally:
        if hasattr(filelike, "close"):
            filelike.close()


class JobApi:
    """jobkit's WSGI application: the API of `docs/server.md` over per-client pools.

    Args:
        backend: The output backend every client's pool uses by default.
        admins: CNs allowed to list and act on every client's jobs.
        limits: See `Limits`.
        pool_factory: Makes a client's pool (default ``JobPool(backend)``).

    Call `begin_shutdown` when the server stops accepting requests (follow
    streams end) and `close` after it stopped (every job is killed and reaped).
    """

    def __init__(
        self,
        backend: str = "memory",
        *,
        admins: Iterable[str] = (),
        limits: Limits | None = None,
        pool_factory: Callable[[], JobPool] | None = None,
    ) -> None:
        self.backend = backend
        self.admins = frozenset(admins)
        self.limits = Limits() if limits is None else limits
        self._clients = _ClientPools(pool_factory or (lambda: JobPool(backend)))
        self._follows = _FollowRegistry()
        self._openapi = _encode(openapi_document()).encode()
        self.bottle = self._make_bottle()

    # -- lifecycle ----------------------------------------------------------

    def begin_shutdown(self, grace: float = 1.0) -> None:
        """End every follow stream and refuse new ones (503)."""
        self._follows.shutdown(grace)

    def close(self) -> None:
        """Close every client's pool: kill and reap every job."""
        self._follows.shutdown(0)
        self._clients.close()

    @property
    def open_follow_streams(self) -> int:
        """How many follow streams are open now."""
        return self._follows.count()

    # -- WSGI ---------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        peer = environ.get(PEER_ENVIRON_KEY)
        client = peer.common_name if isinstance(peer, Peer) else None
        state: list[Any] = [client or "-", 0, None]  # CN for the log, status, write()

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            state[1] = int(status[:3])
            state[2] = start_response(status, headers, exc_info)
            return state[2]

        try:
            if client is None:
                reason = peer.refusal if isinstance(peer, Peer) else None
                raise ApiError(403, reason or "no verified client certificate")
            environ[CLIENT_ENVIRON_KEY] = client
            environ["wsgi.file_wrapper"] = _passthrough_file_wrapper
            if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
                self._buffer_chunked_body(environ)
            result = self.bottle(environ, start)
        except ApiError as error:
            result = _error_response(start, error.status, error.message, error.headers)
        except Exception:
            log.exception("unexpected error serving %s %s",
                          _printable(environ.get("REQUEST_METHOD", "-")),
                          _printable(environ.get("PATH_INFO", "")))
            result = _error_response(start, 500, "internal server error", exc_info=sys.exc_info())
        if isinstance(result, _ByteStream) and result.follow and state[2] is not None:
            # A server sends the headers with the first body bytes, which a
            # quiet job may not write for hours; WSGI's write() sends them now.
            try:
                state[2](b"")
            except BaseException:
                result.close()  # the client is gone: free the follow slot
                self._log(environ, state, started)
                raise
        # Logged when the server closes the body, i.e. once the response was
        # sent: the line then has the whole duration, and costs the client
        # no latency.
        return _LoggedBody(result, lambda: self._log(environ, state, started))

    def _log(self, environ: Mapping[str, Any], state: list[Any], started: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING")
        if query:
            path = f"{path}?{query}"
        # makeRecord + handle is logger.info without its stack walk for the
        # caller's file and line, which an access log does not need and which
        # costs as much as the rest of the line on every request.
        access_log.handle(access_log.makeRecord(
            access_log.name, logging.INFO, __file__, 0, "%s %s %s %d %.1fms",
            (_printable(state[0]), _printable(environ.get("REQUEST_METHOD", "-")), _printable(path),
             state[1], (time.perf_counter() - started) * 1000.0),
            None,
        ))

    def _buffer_chunked_body(self, environ: dict[str, Any]) -> None:
        # cheroot already decoded the chunked body, and bottle would try to
        # decode it again (bottle issues 700 and 845): read it here, within
        # the limit, and present it as an ordinary body of known length.
        rfile = environ["wsgi.input"]
        try:
            body = rfile.read(self.limits.max_body + 1)
            if len(body) > self.limits.max_body:
                _drain(rfile, DRAIN_LIMIT - len(body))
                raise ApiError(413, f"request body larger than {self.limits.max_body} bytes")
            # cheroot stops after the last chunk and leaves the trailer section
            # (at least its final CRLF) unread; the connection would then look
            # busy and hold a worker thread, idle, until it times out.
            if getattr(rfile, "closed", False) and hasattr(rfile, "read_trailer_lines"):
                for _line in rfile.read_trailer_lines():
                    pass
        except ValueError as error:  # cheroot's ChunkedRFile on a malformed chunk
            raise ApiError(400, f"malformed chunked request body: {error}", _CLOSE) from None
        except OSError as error:
            raise _unreadable(error) from None
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = False

    # -- routes -------------------------------------------------------------

    def _make_bottle(self) -> Any:
        app = bottle.Bottle()
        # Exceptions reach JobApi.__call__, which answers JSON, instead of
        # bottle's HTML error page.
        app.config["catchall"] = False
        app.uninstall(True)  # no JSON/template plugins: routes return bytes
        app.default_error_handler = _bottle_error
        app.install(_translate_errors)
        app.route("/openapi.json", "GET", self.get_openapi)
        app.route("/jobs", "PUT", self.create_job)
        app.route("/jobs", "GET", self.list_jobs)
        app.route("/jobs/<job_id>", "DELETE", self.delete_job)
        app.route("/jobs/<job_id>/status", "GET", self.job_status)
        app.route("/jobs/<job_id>/output", "GET", self.job_output)
        app.route("/jobs/<job_id>/stdout", "GET", self.job_stdout)
        app.route("/jobs/<job_id>/stderr", "GET", self.job_stderr)
        app.route("/jobs/<job_id>/stop", "POST", self.stop_job)
        return app

    def get_openapi(self) -> bytes:
        return _json_body(200, self._openapi)

    def create_job(self) -> bytes:
        environ = bottle.request.environ
        query = _query(environ)
        if "client" in query and query["client"] != environ[CLIENT_ENVIRON_KEY]:
            raise ApiError(400, "a job is always created in the caller's own pool; "
                                "'client' is not accepted on PUT /jobs")
        body = _read_json(environ, self.limits.max_body, required=True)
        _check_fields(body, _CREATE_FIELDS)
        if "cmd" not in body:
            raise ApiError(400, "field 'cmd' is required")
        cmd = _field_str(body, "cmd")
        args = _field_str_list(body, "args")
        env = _field_env(body)
        replace_env = body.get("replace_env", False)
        if not isinstance(replace_env, bool):
            raise ApiError(400, f"field 'replace_env' must be a boolean, "
                                f"not {_json_type(replace_env)}")
        cwd = _field_optional_str(body, "cwd")
        backend = _field_optional_str(body, "backend")
        timeout = _field_timeout(body)

        client = self._clients.get_or_create(environ[CLIENT_ENVIRON_KEY])
        self._reserve(client)
        job_id = None
        try:
            job_id = client.pool.create(cmd, args, env=env, replace_env=replace_env, cwd=cwd,
                                        timeout=timeout, backend=backend)
        finally:
            with client.lock:
                client.reserved -= 1
                if job_id is not None and self.limits.max_jobs:
                    client.live.add(job_id)
        bottle.response.set_header("Location", f"/jobs/{job_id}/status")
        return _json_body(201, _encode({"id": job_id}).encode())

    def _reserve(self, client: _Client) -> None:
        limit = self.limits.max_jobs
        with client.lock:
            if limit and len(client.live) + client.reserved >= limit:
                client.live = {job_id for job_id in client.live if _running(client.pool, job_id)}
                if len(client.live) + client.reserved >= limit:
                    raise ApiError(
                        429, f"too many live jobs: client {client.name!r} has "
                             f"{len(client.live) + client.reserved} running (limit {limit}); "
                             f"wait for some to finish, or stop or delete them")
            client.reserved += 1

    def list_jobs(self) -> bytes:
        environ = bottle.request.environ
        query = _query(environ)
        if _flag(query, "all"):
            if environ[CLIENT_ENVIRON_KEY] not in self.admins:
                raise ApiError(403, "only an admin may list every client's jobs (all=true)")
            clients = self._clients.all()
        else:
            client = self._clients.get(self._owner(environ, query))
            clients = [] if client is None else [client]
        ids: list[str] = []
        jobs: list[dict[str, Any]] = []
        for client in clients:
            for job_id in client.pool.list():
                try:
                    status = client.pool.status(job_id)
                except (JobNotFound, PoolClosed):  # deleted meanwhile
                    continue
                summary = status_json(status)
                summary["client"] = client.name
                ids.append(job_id)
                jobs.append(summary)
        return _json_body(200, _encode({"ids": ids, "jobs": jobs}).encode())

    def delete_job(self, job_id: str) -> bytes:
        client = self._client_for(job_id)
        client.pool.delete(job_id)
        with client.lock:
            client.live.discard(job_id)
        return _json_body(200, _encode({"id": job_id, "deleted": True}).encode())

    def job_status(self, job_id: str) -> bytes:
        status = self._client_for(job_id).pool.status(job_id)
        return _json_body(200, _encode(status_json(status)).encode())

    def job_output(self, job_id: str) -> bytes:
        output = self._client_for(job_id).pool.output(job_id)
        body = {
            "stdout": output.stdout.decode("utf-8", "replace"),
            "stderr": output.stderr.decode("utf-8", "replace"),
        }
        return _json_body(200, _encode(body).encode())

    def job_stdout(self, job_id: str) -> Any:
        return self._raw_stream(job_id, "stdout")

    def job_stderr(self, job_id: str) -> Any:
        return self._raw_stream(job_id, "stderr")

    def _raw_stream(self, job_id: str, stream: str) -> Any:
        environ = bottle.request.environ
        query = _query(environ)
        offset = _count(query, "offset")
        follow = _flag(query, "follow")
        client = self._client_for(job_id, query)
        status = client.pool.status(job_id)
        info: StreamInfo = getattr(status, stream)
        # Bytes before `dropped` are gone (ring): the body starts after them.
        offset = max(offset, info.dropped)
        follower = client.pool.follow(job_id, stream, offset)
        peer = environ.get(PEER_ENVIRON_KEY)
        registry = self._follows
        # The follow limits count only follow streams: a plain read ends by itself.
        counted = environ[CLIENT_ENVIRON_KEY] if follow else None
        body = _ByteStream(
            follower,
            until=None if follow else info.written,
            peer=peer if isinstance(peer, Peer) else None,
            on_close=lambda s: registry.remove(s, counted),
        )
        if follow:
            try:
                registry.add(body, counted, self.limits)
            except ApiError:
                follower.cancel()
                raise
        response = bottle.response
        response.content_type = "application/octet-stream"
        response.set_header("X-Content-Type-Options", "nosniff")
        # Where the bytes start: the requested offset, or the first byte the
        # backend still keeps (ring) if that is later.
        response.set_header("X-Jobkit-Offset", str(offset))
        return body

    def stop_job(self, job_id: str) -> bytes:
        environ = bottle.request.environ
        body = _read_json(environ, self.limits.max_body, required=False)
        _check_fields(body, _STOP_FIELDS)
        signal: Any = body.get("signal", "SIGTERM")
        if isinstance(signal, bool) or not isinstance(signal, (str, int)):
            raise ApiError(400, f"field 'signal' must be a signal name like 'SIGTERM' or a "
                                f"number, not {_json_type(signal)}")
        client = self._client_for(job_id)
        try:
            status = client.pool.stop(job_id, signal)
        except ValueError as error:
            raise ApiError(400, f"field 'signal': {error}") from None
        return _json_body(200, _encode(status_json(status)).encode())

    # -- whose jobs ---------------------------------------------------------

    def _owner(self, environ: Mapping[str, Any], query: Mapping[str, str]) -> str:
        """The CN whose pool the request addresses: the caller's, or ``?client=`` for admins."""
        caller: str = environ[CLIENT_ENVIRON_KEY]
        other = query.get("client")
        if other is None or other == caller:
            return caller
        if caller not in self.admins:
            raise ApiError(403, "only an admin may act on another client's jobs (client=...)")
        return other

    def _client_for(self, job_id: str, query: Mapping[str, str] | None = None) -> _Client:
        environ = bottle.request.environ
        owner = self._owner(environ, _query(environ) if query is None else query)
        client = self._clients.get(owner)
        # Exactly what an unknown id in an existing pool gives: whether a
        # client has a pool yet must not show.  (An id with NUL can never exist;
        # the library would call it a bad value.)
        if client is None or "\0" in job_id:
            raise JobNotFound(job_id)
        return client


# -- helpers ------------------------------------------------------------------------------


class _LoggedBody:
    """Wraps a streamed response body to write the access log line when it ends."""

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._body = body
        self._iterator = iter(body)
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return self._iterator

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


def _running(pool: JobPool, job_id: str) -> bool:
    try:
        return pool.status(job_id).running
    except (JobNotFound, PoolClosed):
        return False


def _json_body(status: int, payload: bytes) -> bytes:
    response = bottle.response
    if status != 200:  # bottle starts every response at 200
        response.status = status
    response.content_type = _JSON
    return payload


def _error_json(message: str) -> bytes:
    return _encode({"error": message}).encode()


def _error_response(start_response: Callable[..., Any], status: int, message: str,
                    headers: Mapping[str, str] | None = None, exc_info: Any = None) -> list[bytes]:
    body = _error_json(message)
    header_list = [("Content-Type", _JSON), ("Content-Length", str(len(body)))]
    header_list += list((headers or {}).items())
    start_response(f"{status} {_reason(status)}", header_list, exc_info)
    return [body]


def _reason(status: int) -> str:
    phrase: str = bottle.HTTP_CODES.get(status, "Unknown")
    return phrase


def _bottle_error(error: Any) -> bytes:
    """Bottle's own errors (unknown path, wrong method, ...) as JSON, not HTML."""
    request = bottle.request
    status = int(error.status_code)
    if status == 404:
        message = f"no such endpoint: {request.path}"
    elif status == 405:
        allowed = error.headers.get("Allow", "")
        message = f"method {request.method} not allowed on {request.path} (allowed: {allowed})"
    elif status >= 500:
        message = "internal server error"
        log.error("bottle error %s on %s %s: %s", status, _printable(request.method),
                  _printable(request.path), error.exception)
    else:
        message = str(error.body or _reason(status))
    bottle.response.content_type = _JSON
    return _error_json(message)


def _translate_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Bottle plugin: map what a route raises to a JSON error, in this one place."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except ApiError as error:
            return _http_error(error.status, error.message, error.headers)
        except JobNotFound as error:
            return _http_error(404, str(error))
        except BackendNotFound as error:
            return _http_error(400, f"field 'backend': {error}")
        except PoolClosed:
            return _http_error(503, "the server is shutting down")
        except (TypeError, ValueError) as error:
            return _http_error(400, str(error))

    return wrapper


def _http_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Any:
    response = bottle.HTTPResponse(_error_json(message), status, headers=dict(headers or {}))
    response.content_type = _JSON
    return response


def _printable(text: str) -> str:
    # Paths and CNs come from clients: never let them forge log lines.
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


# -- reading requests -----------------------------------------------------------------


def _query(environ: Mapping[str, Any]) -> Mapping[str, str]:
    cached: Mapping[str, str] | None = environ.get("jobkit.query")
    if cached is not None:
        return cached
    text = environ.get("QUERY_STRING", "")
    values: dict[str, str] = {}
    if text:
        try:
            parsed = parse_qs(text, keep_blank_values=True, strict_parsing=False,
                              max_num_fields=64)
        except ValueError as error:
            raise ApiError(400, f"bad query string: {error}") from None
        values = {name: items[-1] for name, items in parsed.items()}
    if isinstance(environ, dict):
        environ["jobkit.query"] = values
    return values


def _flag(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ApiError(400, f"query parameter {name!r} must be true or false, not {value!r}")


def _count(query: Mapping[str, str], name: str) -> int:
    value = query.get(name)
    if value is None:
        return 0
    if not value.isascii() or not value.isdigit():
        raise ApiError(400, f"query parameter {name!r} must be a non-negative integer, "
                            f"not {value!r}")
    return int(value)


def _media_type(environ: Mapping[str, Any]) -> str:
    return str(environ.get("CONTENT_TYPE", "")).split(";", 1)[0].strip().lower()


def _read_json(environ: Mapping[str, Any], limit: int, *, required: bool) -> dict[str, Any]:
    """The request's JSON object body; ``{}`` when optional and absent."""
    text = environ.get("CONTENT_LENGTH") or "0"
    try:
        length = int(text)
    except ValueError:
        raise ApiError(400, f"bad Content-Length: {text!r}") from None
    if length > limit:
        if length <= DRAIN_LIMIT:
            _drain(environ["wsgi.input"], length)
        raise ApiError(413, f"request body larger than {limit} bytes")
    if length <= 0:
        if required:
            if _media_type(environ) not in ("", _JSON):
                _unsupported(environ)
            raise ApiError(400, "the request body must be a JSON object")
        return {}
    if _media_type(environ) != _JSON:
        _unsupported(environ)
    try:
        data = environ["wsgi.input"].read(length)
    except OSError as error:
        raise _unreadable(error) from None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise ApiError(400, f"malformed JSON in the request body: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {_json_type(value)}")
    return value


def _drain(rfile: Any, most: int) -> None:
    """Read and drop up to ``most`` bytes of a body we refuse.

    A client still sending its body when the answer comes and the connection
    closes gets a broken pipe instead of our 413; reading a few megabytes of
    it first lets ordinary clients see the answer.  Larger bodies are cut off.
    """
    try:
        while most > 0:
            chunk = rfile.read(min(most, 1 << 16))
            if not chunk:
                return
            most -= len(chunk)
    except (OSError, ValueError):
        return


def _unreadable(error: OSError) -> ApiError:
    status = 408 if isinstance(error, TimeoutError) else 400
    return ApiError(status, f"cannot read the request body: {_describe(error)}", _CLOSE)


def _describe(error: OSError) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return error.strerror or str(error) or type(error).__name__


def _unsupported(environ: Mapping[str, Any]) -> NoReturn:
    given = environ.get("CONTENT_TYPE") or "none"
    raise ApiError(415, f"the request body must be JSON (Content-Type: application/json), "
                        f"not {given}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _check_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(repr(name) for name in unknown)} "
                            f"(known: {', '.join(sorted(allowed))})")


def _check_text(name: str, value: object) -> str:
    """A request's string: a str, no NUL, and valid Unicode.

    JSON can carry lone surrogates (``"\\udc80"``), which no response could
    encode back as UTF-8: refuse them here, naming the field.
    """
    if not isinstance(value, str):
        raise ApiError(400, f"field {name!r} must be a string, not {_json_type(value)}")
    if "\0" in value:
        raise ApiError(400, f"field {name!r} must not contain NUL characters")
    if not is_text(value):
        raise ApiError(400, f"field {name!r} must be valid Unicode (it has a lone surrogate)")
    return value


def _field_str(body: Mapping[str, Any], name: str) -> str:
    return _check_text(name, body[name])


def _field_optional_str(body: Mapping[str, Any], name: str) -> str | None:
    if body.get(name) is None:
        return None
    return _field_str(body, name)


def _field_str_list(body: Mapping[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiError(400, f"field {name!r} must be an array of strings, not {_json_type(value)}")
    for index, item in enumerate(value):
        _check_text(f"{name}[{index}]", item)
    return value


def _field_env(body: Mapping[str, Any]) -> dict[str, str] | None:
    value = body.get("env")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, f"field 'env' must be an object of strings, not {_json_type(value)}")
    for key, item in value.items():
        _check_text("env key", key)
        _check_text(f"env[{key!r}]", item)
    return value


def _field_timeout(body: Mapping[str, Any]) -> float | None:
    value = body.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"field 'timeout' must be a number of seconds, "
                            f"not {_json_type(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ApiError(400, "field 'timeout' is too large") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ApiError(400, f"field 'timeout' must be a positive number of seconds, not {value}")
    return seconds
