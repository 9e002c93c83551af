"""`Client`: the `JobPool` verbs, run by a jobkit server over mutual TLS."""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, urlencode

from jobkit.client.follower import RemoteFollower
from jobkit.client.problems import error_for
from jobkit.client.transport import Reply, Transport, load_tls_context
from jobkit.core.checks import (
    check_args,
    check_count,
    check_env,
    check_seconds,
    check_str,
    is_text,
)
from jobkit.core.errors import JobNotFound, ServerError
from jobkit.pki.layout import client_folder
from jobkit.wire import (
    CHUNK_OFFSETS_PARAMETER,
    DEFAULT_SERVER,
    MAX_PAGE,
    STREAMS,
    StatusRecord,
    parse_address,
    problem_from_json,
    status_from_json,
)

if TYPE_CHECKING:
    # Imported when first needed: the CLI reads statuses as the wire's
    # records and starts faster without attrs (see docs/cli.md, "Start-up").
    from jobkit.core.limits import Limits
    from jobkit.core.models import JobOutput, JobStatus
    from jobkit.core.retention import CleanResult

__all__ = ["DEFAULT_TIMEOUT", "Client"]

#: Seconds to wait for the server to connect or to answer, by default.
DEFAULT_TIMEOUT = 30.0
#: `Client.wait` asks for the status this often at first, then backs off ...
_POLL_FIRST = 0.005
#: ... by this factor, to at most this many seconds between questions.
_POLL_GROWTH = 1.5
_POLL_MAX = 0.25


class Client:
    """A jobkit server's jobs, with the same verbs, values and errors as `JobPool`.

    Code written against a `JobPool` runs against a server by swapping the
    object: the methods take the same arguments and return the same
    `JobStatus`, `JobOutput` and bytes; ``create`` checks its arguments the
    same way (``TypeError`` / ``ValueError``); an unknown id raises
    `JobNotFound` and an unknown backend `BackendNotFound`.  On top of those:

    * `ConnectionFailed`: the server cannot be reached, or the connection
      broke; the message names the address;
    * `AuthenticationFailed`: TLS failed, either way round (the server refused
      our certificate, or its certificate is not from our CA);
    * `ServerError`: any other error answer, with its message and HTTP status.

    Args:
        server: ``HOST:PORT`` (``[IPv6]:PORT``; the port defaults to 8443).
        certs: A client certificate folder holding ``ca.pem``, ``cert.pem``
            and ``key.pem``; by default the one ``jobkit serve`` makes for the
            current user (see `default_client_dir`).
        timeout: Seconds to wait for a connection or an answer.  Follow
            streams wait for output as long as the job runs.

    Raises ``FileNotFoundError`` (or another ``OSError``) naming the missing
    or unreadable folder or file, ``ValueError`` for certificates that cannot
    be loaded or a malformed ``server``, and `PkiError` when ``certs`` is None
    and there is no default folder to go by (no home folder or user name).

    The client keeps a few connections alive between calls and is safe to
    share between threads.  Close it (or use ``with``) when done.
    """

    def __init__(self, server: str = DEFAULT_SERVER,
                 certs: str | os.PathLike[str] | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        host, port = parse_address(server)
        timeout = check_seconds("timeout", timeout)
        folder = client_folder(certs)
        #: The client certificate folder in use.
        self.certs = folder
        self._transport = Transport(host, port, load_tls_context(folder), timeout)
        #: ``host:port`` of the server, as used in messages.
        self.server = self._transport.address

    def __repr__(self) -> str:
        return f"<Client server={self.server!r} certs={self.certs!r}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the idle connections.  The client stays usable (it reconnects)."""
        self._transport.close()

    # -- jobs -----------------------------------------------------------------------

    def create(
        self,
        command: str,
        args: Any = (),
        *,
        env: Any = None,
        replace_env: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        backend: str | None = None,
        backend_options: Any = None,
        limits: Limits | None = None,
        network: bool = True,
    ) -> str:
        """Start ``command`` with ``args`` on the server; return the new job's id.

        As `JobPool.create`: no shell, OS failures give a job in ``error``
        state.  ``env`` is added to the server's environment (or replaces it,
        with ``replace_env``) and ``cwd`` is a path on the server.
        ``backend_options`` are the server's to choose (``jobkit serve``):
        setting them raises ``ValueError``.  ``limits`` (a `Limits`) and
        ``network`` as for `JobPool.create`, within the server's policy: a
        limit over the server's maximum raises `ServerError` (403), and a job
        over this client's quota `ServerError` (429), each naming which.
        """
        body: dict[str, Any] = {
            "cmd": _check_text("command", check_str("command", command, nonempty=True)),
            "args": [_check_text(f"args[{i}]", arg) for i, arg in enumerate(check_args(args))],
        }
        if env is not None:
            body["env"] = {
                _check_text("env key", key): _check_text(f"env[{key!r}]", value)
                for key, value in check_env(env).items()
            }
        if cwd is not None:
            body["cwd"] = _check_text("cwd", check_str("cwd", os.fspath(cwd), nonempty=True))
        if timeout is not None:
            body["timeout"] = check_seconds("timeout", timeout)
        if backend is not None:
            body["backend"] = check_str("backend", backend, nonempty=True)
        if replace_env:
            body["replace_env"] = True
        if limits is not None:
            from jobkit.core.limits import Limits

            if not isinstance(limits, Limits):
                raise TypeError(f"limits must be a Limits, not {type(limits).__name__}")
            body["limits"] = limits.to_dict()
        if not isinstance(network, bool):
            raise TypeError(f"network must be True or False, not {type(network).__name__}")
        if not network:
            body["network"] = False
        if backend_options is not None:
            raise ValueError("backend_options are not supported by the jobkit server")
        data = self._json("PUT", "/jobs", body=body, backend=backend)
        job_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(job_id, str):
            raise ServerError(f"the server at {self.server} answered PUT /jobs without an id",
                              201)
        return job_id

    def list(
        self, *, limit: int | None = None, after: str | None = None, newest_first: bool = False
    ) -> list[str]:
        """The ids of our jobs on the server, oldest first (or newest first).

        As `JobPool.list`: ``limit`` caps how many (None: every job, fetched
        a page at a time), ``after`` is the last id of the previous page.
        """
        return [job["id"] for job in self._pages(limit, after, newest_first)]

    def jobs(
        self, *, limit: int | None = None, after: str | None = None, newest_first: bool = False
    ) -> builtins.list[JobStatus]:
        """The status of our jobs, as `list` orders and pages them (a page per request)."""
        return [self._decode(job) for job in self._pages(limit, after, newest_first)]

    def jobs_json(self) -> builtins.list[dict[str, Any]]:
        """Every job's JSON summary, oldest first, fetched a page at a time."""
        return builtins.list(self._pages(None, None, False))

    def list_json(
        self, *, limit: int | None = None, after: str | None = None, newest_first: bool = False
    ) -> dict[str, Any]:
        """One page of the server's ``GET /jobs``: ``{"ids": [...], "jobs": [...], "next": ...}``.

        ``next`` is the ``after`` of the following page, or None on the last.
        """
        parameters = {"order": "newest" if newest_first else "oldest"}
        if limit is not None:
            parameters["limit"] = str(check_count("limit", limit))
        if after is not None:
            parameters["after"] = check_str("after", after)
        data = self._json("GET", "/jobs?" + urlencode(parameters))
        if (not isinstance(data, dict) or not isinstance(data.get("jobs"), builtins.list)
                or not all(isinstance(job, dict) and isinstance(job.get("id"), str)
                           for job in data["jobs"])):
            raise ServerError(f"the server at {self.server} sent a malformed job list", 200)
        return data

    def _pages(self, limit: int | None, after: str | None,
               newest_first: bool) -> Iterator[dict[str, Any]]:
        """Job documents, a page per request, until ``limit`` or the last page."""
        left = limit
        while left is None or left > 0:
            page = self.list_json(limit=None if left is None else min(left, MAX_PAGE),
                                  after=after, newest_first=newest_first)
            jobs = page["jobs"]
            yield from jobs if left is None else jobs[:left]
            if left is not None:
                left -= len(jobs)
            after = page.get("next")
            if not isinstance(after, str) or not jobs:
                return

    def clean(
        self, *, older_than: float | None = None, states: Sequence[str] | None = None
    ) -> CleanResult:
        """Delete our finished jobs (all, or those ended ``older_than`` seconds ago or
        more, or in one of ``states``), as `JobPool.clean`; running jobs are never touched.
        """
        from jobkit.core.models import State
        from jobkit.core.retention import CleanResult

        body: dict[str, Any] = {}
        if older_than is not None:
            body["older_than"] = check_seconds("older_than", older_than, allow_zero=True)
        if states is not None:
            if isinstance(states, (str, bytes)) or not isinstance(states, Sequence):
                raise TypeError("states must be a list of states")
            body["states"] = [State(state).value for state in states]
        data = self._json("POST", "/jobs/clean", body=body)
        if not isinstance(data, dict) or not all(
            isinstance(data.get(key), int) for key in ("deleted", "bytes")
        ):
            raise ServerError(f"the server at {self.server} sent a malformed clean result", 200)
        return CleanResult(jobs=data["deleted"], bytes=data["bytes"])

    def status(self, job_id: str) -> JobStatus:
        """A snapshot of the job's state; `JobNotFound` for an unknown id."""
        return self._decode(self.status_json(job_id))

    def status_json(self, job_id: str) -> dict[str, Any]:
        """The server's ``GET /jobs/<id>/status`` document, as a dict."""
        data = self._json("GET", f"{_job_path(job_id)}/status", job_id=job_id)
        if not isinstance(data, dict):
            raise ServerError(f"the server at {self.server} sent a malformed status", 200)
        return data

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until the job's main process has ended; return its status.

        Asks the server for the status, first after 5 ms, backing off to every
        0.25 s: the HTTP API has no "wait" call, and a follow stream would end
        when the output closes, which is not the same as the process ending.
        Raises ``TimeoutError`` if ``timeout`` seconds pass first.
        """
        return self._decode(self.wait_json(job_id, timeout))

    def wait_json(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """`wait`, returning the server's status document (as `status_json`)."""
        if timeout is not None:
            timeout = check_seconds("timeout", timeout, allow_zero=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _POLL_FIRST
        while True:
            data = self.status_json(job_id)
            if not self.status_record(data).running:
                return data
            pause = delay
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"job {job_id} still running after {timeout} s")
                pause = min(pause, remaining)
            time.sleep(pause)
            delay = min(delay * _POLL_GROWTH, _POLL_MAX)

    def output(self, job_id: str) -> JobOutput:
        """Everything the job's output backend holds, stdout and stderr, as bytes.

        Read from the raw ``/stdout`` and ``/stderr`` endpoints, so the bytes
        are exact (``GET /jobs/<id>/output`` replaces invalid UTF-8).
        """
        from jobkit.core.models import JobOutput

        stdout, stderr = (self.read(job_id, stream) for stream in STREAMS)
        return JobOutput(stdout=stdout, stderr=stderr)

    def read(self, job_id: str, stream: str, offset: int = 0, size: int | None = None) -> bytes:
        """Up to ``size`` bytes (all, if None) of ``stream`` from absolute ``offset``.

        What the stream holds now, without waiting; ``b""`` at or past the end.
        """
        if size is not None:
            check_count("size", size)
        chunks: builtins.list[bytes] = []
        wanted = size
        with self._stream(job_id, stream, offset, follow=False) as reader:
            for chunk in reader:
                if wanted is not None:
                    chunk = chunk[:wanted]
                    wanted -= len(chunk)
                chunks.append(chunk)
                if wanted == 0:
                    break
        return b"".join(chunks)

    def chunks(self, job_id: str, stream: str, offset: int = 0) -> RemoteFollower:
        """What ``stream`` holds now from ``offset`` on, as an iterator of chunks.

        Like `read` without holding everything in memory at once (``jobkit
        output`` writes each chunk as it arrives); it does not wait for more.
        """
        return self._stream(job_id, stream, offset, follow=False)

    def follow(self, job_id: str, stream: str, offset: int = 0) -> RemoteFollower:
        """A `RemoteFollower` of ``stream``'s bytes from ``offset`` on, as they arrive.

        It ends when the stream is closed and drained, when the job is deleted
        or when its ``cancel()`` is called.  Each follower holds one
        connection (and one of the server's follow slots) until it ends.
        """
        return self._stream(job_id, stream, offset, follow=True)

    def stop(self, job_id: str, signal: int | str = "SIGTERM") -> JobStatus:
        """Send ``signal`` (default SIGTERM) to the job's whole process group.

        ``signal`` is a number or a name (``"TERM"``, ``"SIGTERM"``, ``"15"``).
        Returns the job's status, as the server saw it right after.
        """
        from jobkit.core.signals import parse_signal, signal_name

        name = signal_name(parse_signal(signal))
        data = self._json("POST", f"{_job_path(job_id)}/stop", body={"signal": name},
                          job_id=job_id)
        return self._decode(data)

    def delete(self, job_id: str) -> None:
        """SIGKILL the job's process group, reap it, free its output, forget it."""
        self._json("DELETE", _job_path(job_id), job_id=job_id)

    # -- requests -------------------------------------------------------------------

    def _stream(self, job_id: str, stream: str, offset: int, *, follow: bool) -> RemoteFollower:
        path = _job_path(job_id)
        if stream not in STREAMS:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        check_count("offset", offset)

        def open_at(start: int) -> Reply:
            query = f"?offset={start}"
            if follow:
                # Chunk offsets: a ring's gap does not end the response (see
                # follower.py).  Not for `read`, which joins what it gets.
                query += f"&follow=true&{CHUNK_OFFSETS_PARAMETER}=true"
            reply = self._transport.request("GET", f"{path}/{stream}{query}", stream=True)
            if reply.status != 200:
                self._transport.finish(reply, reusable=True)
                self._raise(reply, job_id=job_id)
            if follow:
                # A quiet job sends nothing for as long as it likes: no read
                # timeout, but TCP keep-alive to notice a server that vanished.
                self._transport.wait_forever(reply)
            return reply

        def ended_at(position: int) -> bool:
            """Is the stream really over at ``position``?  (A server stopping also
            ends follow responses cleanly; then the job lives on elsewhere or not.)"""
            try:
                info = self.status_record(self.status_json(job_id)).stream(stream)
            except JobNotFound:
                return True  # deleted: its followers end
            return info.closed and position >= info.written

        return RemoteFollower(self._transport, open_at(offset), offset,
                              reopen=open_at if follow else None,
                              ended_at=ended_at if follow else None)

    def status_record(self, document: Any) -> StatusRecord:
        """A status document (from `status_json`, `wait_json` or `list_json`) as a record.

        Raises `ServerError` when it is not a job status.
        """
        try:
            return status_from_json(document)
        except ValueError as error:
            raise ServerError(f"the server at {self.server} sent a malformed job status: "
                              f"{error}", 200) from None

    def _decode(self, data: Any) -> JobStatus:
        from jobkit.core.limits import Limits
        from jobkit.core.models import JobStatus, State, StreamInfo, Usage

        record = self.status_record(data)
        try:
            state = State(record.state)
        except ValueError:
            raise ServerError(f"the server at {self.server} sent a job state this client "
                              f"does not know: {record.state!r}", 200) from None
        return JobStatus(
            id=record.id, state=state, command=record.command, args=record.args,
            pid=record.pid, created_at=record.created_at, backend=record.backend,
            exit_code=record.exit_code, signal=record.signal, error=record.error,
            timed_out=record.timed_out, ended_at=record.ended_at,
            output_error=record.output_error,
            stdout=StreamInfo(*record.stdout), stderr=StreamInfo(*record.stderr),
            executor=record.executor, handle=record.handle,
            limits=None if record.limits is None else Limits(**record.limits._asdict()),
            network=record.network, enforced_by=record.enforced_by,
            unenforced=record.unenforced, oom_killed=record.oom_killed,
            usage=None if record.usage is None else Usage(**record.usage._asdict()),
        )

    def _json(self, method: str, path: str, *, body: dict[str, Any] | None = None,
              job_id: str | None = None, backend: str | None = None) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        reply = self._transport.request(method, path, payload)
        if not 200 <= reply.status < 300:
            self._raise(reply, job_id=job_id, backend=backend)
        try:
            return json.loads(reply.body)
        except ValueError:
            raise ServerError(f"the server at {self.server} sent malformed JSON for "
                              f"{method} {path}", reply.status) from None

    def _raise(self, reply: Reply, *, job_id: str | None = None,
               backend: str | None = None) -> NoReturn:
        """Raise the library's error for an error reply (mapped by `error_for`)."""
        problem = problem_from_json(reply.status, reply.body)
        raise error_for(problem, self.server, job_id=job_id, backend=backend)


def _job_path(job_id: str) -> str:
    check_str("job_id", job_id)
    if not job_id or not is_text(job_id):
        raise JobNotFound(job_id)  # no server job has such an id: as JobPool says
    return "/jobs/" + quote(job_id, safe="")


def _check_text(what: str, value: str) -> str:
    if not is_text(value):
        raise ValueError(f"{what} is not valid UTF-8 text: the jobkit API carries text only "
                         f"({value!r})")
    return value

