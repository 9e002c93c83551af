"""jobkit's wire format: what the server and its clients say to each other.

The one home of every fact both ends of the HTTP API must agree on:

* the names of a job's output streams and the ``X-Jobkit-Offset`` header;
* the default address (`DEFAULT_HOST`, `DEFAULT_PORT`) and `parse_address`,
  which reads both ``jobkit serve --listen`` and the client's ``--server``;
* the JSON form of a job's status (its limits and usage included):
  `status_to_json` for the server,
  `status_from_json` for the client and the CLI, which read it as a
  `StatusRecord`, never as a raw dict;
* the time format (`format_time`, `parse_time`);
* the error body: RFC 9457 problem details (`problem_json`,
  `problem_from_json`), one `ProblemKind` per kind of refusal, with its
  HTTP status and title.

Only the standard library is imported here (a test enforces it): the
server, the client and the CLI import this module, and ``jobkit status``
must start fast.  So statuses are plain records here; the server hands in
the library's `JobStatus` (anything with its attributes, `StatusFields`),
and the client turns a `StatusRecord` into a `JobStatus` itself.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NamedTuple, Protocol

__all__ = [
    "ACTIVE_STATES",
    "CHUNK_OFFSETS_PARAMETER",
    "CHUNK_OFFSET_EXTENSION",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_SERVER",
    "JSON_MEDIA_TYPE",
    "LIMIT_KEYS",
    "MAX_PAGE",
    "OFFSET_HEADER",
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPE_PREFIX",
    "STREAMS",
    "USAGE_KEYS",
    "LimitsRecord",
    "Problem",
    "ProblemKind",
    "StatusFields",
    "StatusRecord",
    "StreamFields",
    "StreamRecord",
    "UsageRecord",
    "format_time",
    "parse_address",
    "parse_time",
    "problem_from_json",
    "problem_json",
    "status_from_json",
    "status_to_json",
]

#: The states that are not final: ``pending`` (waiting for a cluster's
#: resources, see docs/executors.md) and ``running``.
ACTIVE_STATES = ("pending", "running")
#: The names of a job's two output streams, as they appear in paths and statuses.
STREAMS = ("stdout", "stderr")
#: The most jobs one ``GET /jobs`` page holds, and its size when ``limit`` is not given.
MAX_PAGE = 1000
#: The response header of ``GET /jobs/<id>/stdout|stderr`` saying where its bytes start.
OFFSET_HEADER = "X-Jobkit-Offset"
#: The query parameter of ``GET /jobs/<id>/stdout|stderr`` (``=true``) asking that every
#: chunk of the body say where its bytes start, so that the body may skip bytes the
#: backend dropped instead of ending there (docs/server.md, "Output").
CHUNK_OFFSETS_PARAMETER = "chunk_offsets"
#: The chunk extension that says it: ``<size>;offset=<absolute offset of its first byte>``.
CHUNK_OFFSET_EXTENSION = "offset"
#: The media type of every JSON request and answer but errors.
JSON_MEDIA_TYPE = "application/json"
#: The media type of every error answer (RFC 9457).
PROBLEM_MEDIA_TYPE = "application/problem+json"

#: Where ``jobkit serve`` listens, and the client connects, unless told otherwise.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8443
#: `DEFAULT_HOST` and `DEFAULT_PORT` as one address.
DEFAULT_SERVER = f"{DEFAULT_HOST}:{DEFAULT_PORT}"


# -- addresses ----------------------------------------------------------------------------


def parse_address(text: str, *, listen: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> ``(host, port)``; ``ValueError`` for people.

    The client's ``--server`` (``listen=False``) needs the host and may leave
    the port out (`DEFAULT_PORT`): ``build-box``, ``[::1]``.  The server's
    ``--listen`` (``listen=True``) needs the port and may leave the host out
    (`DEFAULT_HOST`): ``:8443`` or ``8443``; its port may be 0 (any free port).
    """
    if not isinstance(text, str):
        raise TypeError(f"an address must be a string like 'host:{DEFAULT_PORT}', "
                        f"not {type(text).__name__}")
    value = text.strip()
    what = "listen" if listen else "server"

    def refuse(why: str) -> ValueError:
        return ValueError(f"bad {what} address {text!r}: {why}")

    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or not host or (rest and not rest.startswith(":")):
            raise refuse("expected [IPv6]:PORT")
        port_text: str | None = rest[1:] if rest else None
    elif value.count(":") > 1:
        raise refuse(f"write an IPv6 address in brackets, like [::1]:{DEFAULT_PORT}")
    elif ":" in value:
        host, _, port_text = value.partition(":")
    elif listen:
        host, port_text = "", value  # a bare word is the port
    else:
        host, port_text = value, None
    if not host:
        if not listen:
            raise refuse("expected HOST:PORT")
        host = DEFAULT_HOST
    if port_text is None and not listen:
        return host, DEFAULT_PORT
    lowest = 0 if listen else 1
    if (port_text is None or not port_text.isascii() or not port_text.isdigit()
            or not lowest <= int(port_text) <= 65535):
        raise refuse(f"the port must be a number from {lowest} to 65535")
    return host, int(port_text)


# -- times --------------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    """An aware UTC datetime as the API writes it: ISO 8601 with a ``Z``."""
    return moment.isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """`format_time` backwards (any ISO 8601 offset is read); ``ValueError`` if malformed."""
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO 8601 time, got {text!r}")
    # datetime.fromisoformat reads a "Z" suffix only from Python 3.11 on.
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


# -- statuses -----------------------------------------------------------------------------


class StreamFields(Protocol):
    """What `status_to_json` reads of one stream (the library's `StreamInfo`)."""

    @property
    def written(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def closed(self) -> bool: ...


class LimitsFields(Protocol):
    """What `status_to_json` reads of a job's limits (the library's `Limits`)."""

    @property
    def cpu(self) -> float | None: ...
    @property
    def memory(self) -> int | None: ...
    @property
    def pids(self) -> int | None: ...
    @property
    def io_read_bps(self) -> int | None: ...
    @property
    def io_write_bps(self) -> int | None: ...
    @property
    def strict(self) -> bool: ...


class UsageFields(Protocol):
    """What `status_to_json` reads of a job's usage (the library's `Usage`)."""

    @property
    def source(self) -> str: ...
    @property
    def cpu_user_s(self) -> float: ...
    @property
    def cpu_system_s(self) -> float: ...
    @property
    def peak_memory(self) -> int | None: ...
    @property
    def io_read_bytes(self) -> int | None: ...
    @property
    def io_write_bytes(self) -> int | None: ...


class StatusFields(Protocol):
    """What `status_to_json` reads of a status: the attributes of the library's `JobStatus`.

    ``state`` is the state's value (`State` is a ``str`` enum), so any state
    the library has, today's or a later one's, goes on the wire as it is.
    """

    @property
    def id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def command(self) -> str: ...
    @property
    def args(self) -> tuple[str, ...]: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def ended_at(self) -> datetime | None: ...
    @property
    def timed_out(self) -> bool: ...
    @property
    def backend(self) -> str: ...
    @property
    def output_error(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def signal(self) -> int | None: ...
    @property
    def stdout(self) -> StreamFields: ...
    @property
    def stderr(self) -> StreamFields: ...
    @property
    def executor(self) -> str: ...
    @property
    def handle(self) -> str | None: ...
    @property
    def limits(self) -> LimitsFields | None: ...
    @property
    def network(self) -> bool: ...
    @property
    def enforced_by(self) -> str | None: ...
    @property
    def unenforced(self) -> tuple[str, ...]: ...
    @property
    def oom_killed(self) -> bool: ...
    @property
    def usage(self) -> UsageFields | None: ...


class StreamRecord(NamedTuple):
    """How much one stream holds, as the server said (the fields of `StreamInfo`)."""

    written: int = 0
    dropped: int = 0
    closed: bool = False


#: The keys of a job's ``limits`` object, in order (the fields of the library's `Limits`).
LIMIT_KEYS = ("cpu", "memory", "pids", "io_read_bps", "io_write_bps", "strict")
#: The keys of a job's ``usage`` object, in order (the fields of the library's `Usage`).
USAGE_KEYS = ("source", "cpu_user_s", "cpu_system_s", "peak_memory", "io_read_bytes",
              "io_write_bytes")


class LimitsRecord(NamedTuple):
    """A job's limits as the server sent them (the fields of the library's `Limits`).

    Sizes are bytes, ``cpu`` CPUs; None is no limit.
    """

    cpu: float | None = None
    memory: int | None = None
    pids: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    strict: bool = True


# The records below mirror the library's attrs values field for field, on
# purpose: the CLI reads statuses through them without importing attrs (see
# docs/cli.md, "Start-up time"), and tests/test_wire.py fails if the two
# ever differ.  So pylint's duplicate-code check is told these lines are known.
# pylint: disable=duplicate-code
class UsageRecord(NamedTuple):
    """What a job used, as the server sent it (the fields of the library's `Usage`)."""

    source: str
    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    peak_memory: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None

    @property
    def cpu_s(self) -> float:
        """User and system CPU seconds together."""
        return self.cpu_user_s + self.cpu_system_s


class StatusRecord(NamedTuple):
    """A job's status as the server sent it, decoded by `status_from_json`.

    The attributes are those of the library's `JobStatus` (``state`` is the
    state's value, so a state this client does not know yet still reads),
    plus what only the wire carries: ``signal_name`` (the server's name for
    ``signal``) and ``client`` (whose job it is, in ``GET /jobs`` listings).
    """

    id: str
    state: str
    command: str
    args: tuple[str, ...]
    pid: int | None
    created_at: datetime
    backend: str
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    timed_out: bool = False
    ended_at: datetime | None = None
    output_error: str | None = None
    stdout: StreamRecord = StreamRecord()
    stderr: StreamRecord = StreamRecord()
    executor: str = "local"
    handle: str | None = None
    limits: LimitsRecord | None = None
    network: bool = True
    enforced_by: str | None = None
    unenforced: tuple[str, ...] = ()
    oom_killed: bool = False
    usage: UsageRecord | None = None
    signal_name: str | None = None
    client: str | None = None

    @property
    def running(self) -> bool:
        """True while the job has not ended: it runs, or waits for a cluster (pending)."""
        return self.state in ACTIVE_STATES

    def stream(self, name: str) -> StreamRecord:
        """``stdout`` or ``stderr`` by name (one of `STREAMS`)."""
        if name not in STREAMS:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {name!r}")
        record: StreamRecord = getattr(self, name)
        return record


def status_to_json(status: StatusFields, *,
                   signal_name: Callable[[int], str]) -> dict[str, Any]:
    """The JSON form of a job's status, as ``GET /jobs/<id>/status`` answers it.

    ``error_msg``, ``exit_code``, ``signal`` and ``signal_name`` (made with
    ``signal_name``) are present only when they apply; every other key always
    is, in this order.
    """
    body: dict[str, Any] = {
        "id": status.id,
        "status": _value(status.state),
        "cmd": status.command,
        "args": list(status.args),
        "pid": status.pid,
        "created_at": format_time(status.created_at),
        "ended_at": None if status.ended_at is None else format_time(status.ended_at),
        "timed_out": status.timed_out,
        "backend": status.backend,
        "output_error": status.output_error,
        "stdout": _stream_to_json(status.stdout),
        "stderr": _stream_to_json(status.stderr),
        "executor": status.executor,
        "handle": status.handle,
        "limits": _fields_to_json(status.limits, LIMIT_KEYS),
        "network": status.network,
        "enforced_by": status.enforced_by,
        "unenforced": list(status.unenforced),
        "oom_killed": status.oom_killed,
        "usage": _fields_to_json(status.usage, USAGE_KEYS),
    }
    if status.error is not None:
        body["error_msg"] = status.error
    if status.exit_code is not None:
        body["exit_code"] = status.exit_code
    if status.signal is not None:
        body["signal"] = status.signal
        body["signal_name"] = signal_name(status.signal)
    return body


def _value(state: object) -> str:
    # An enum member (the library's State) or already its value.
    return str(getattr(state, "value", state))


def _fields_to_json(value: object, keys: tuple[str, ...]) -> dict[str, Any] | None:
    return None if value is None else {key: getattr(value, key) for key in keys}


def _stream_to_json(info: StreamFields) -> dict[str, Any]:
    return {"written": info.written, "dropped": info.dropped, "closed": info.closed}


def status_from_json(data: object) -> StatusRecord:
    """A `StatusRecord` from ``GET /jobs/<id>/status`` (or one ``GET /jobs`` summary).

    Raises ``ValueError`` when the document is not a status.
    """
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    try:
        ended_at = data.get("ended_at")
        return StatusRecord(
            id=_str(data["id"]),
            state=_str(data["status"]),
            command=_str(data["cmd"]),
            args=tuple(_str(arg) for arg in data.get("args") or ()),
            pid=_optional_int(data.get("pid")),
            created_at=parse_time(data["created_at"]),
            backend=_str(data.get("backend", "")),
            exit_code=_optional_int(data.get("exit_code")),
            signal=_optional_int(data.get("signal")),
            error=_optional_str(data.get("error_msg")),
            timed_out=data.get("timed_out") is True,
            ended_at=None if ended_at is None else parse_time(ended_at),
            output_error=_optional_str(data.get("output_error")),
            stdout=_stream_from_json(data.get("stdout")),
            stderr=_stream_from_json(data.get("stderr")),
            executor=_str(data.get("executor", "local")),
            handle=_optional_str(data.get("handle")),
            limits=_limits_from_json(data.get("limits")),
            network=data.get("network") is not False,
            enforced_by=_optional_str(data.get("enforced_by")),
            unenforced=tuple(_str(name) for name in data.get("unenforced") or ()),
            oom_killed=data.get("oom_killed") is True,
            usage=_usage_from_json(data.get("usage")),
            signal_name=_optional_str(data.get("signal_name")),
            client=_optional_str(data.get("client")),
        )
    except KeyError as error:
        raise ValueError(f"not a job status: no {error.args[0]!r}") from None
    except TypeError as error:
        raise ValueError(f"not a job status: {error}") from None


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _optional_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _optional_number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _limits_from_json(value: object) -> LimitsRecord | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"limits: expected an object, got {value!r}")
    return LimitsRecord(
        cpu=_optional_number(value.get("cpu")),
        memory=_optional_int(value.get("memory")),
        pids=_optional_int(value.get("pids")),
        io_read_bps=_optional_int(value.get("io_read_bps")),
        io_write_bps=_optional_int(value.get("io_write_bps")),
        strict=value.get("strict") is not False,
    )


def _usage_from_json(value: object) -> UsageRecord | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"usage: expected an object, got {value!r}")
    return UsageRecord(
        source=_str(value.get("source", "")),
        cpu_user_s=_optional_number(value.get("cpu_user_s")) or 0.0,
        cpu_system_s=_optional_number(value.get("cpu_system_s")) or 0.0,
        peak_memory=_optional_int(value.get("peak_memory")),
        io_read_bytes=_optional_int(value.get("io_read_bytes")),
        io_write_bytes=_optional_int(value.get("io_write_bytes")),
    )


def _stream_from_json(value: object) -> StreamRecord:
    if not isinstance(value, dict):
        return StreamRecord()
    written, dropped = value.get("written", 0), value.get("dropped", 0)
    return StreamRecord(
        written=_optional_int(written) or 0,
        dropped=_optional_int(dropped) or 0,
        closed=value.get("closed") is True,
    )


# -- problems (RFC 9457) ------------------------------------------------------------------

#: The ``type`` of a problem is this followed by its kind's slug.  It names
#: the kind; it is not a link to follow.
PROBLEM_TYPE_PREFIX = "urn:jobkit:problem:"


class ProblemKind(enum.Enum):
    """Every kind of error answer, with its HTTP status and title.

    Clients tell kinds apart by ``type`` (`type_uri`), never by the wording
    of ``detail``, which is for people and may change.  `GENERIC` is RFC
    9457's ``about:blank``: an answer with nothing to say beyond its status
    (what cheroot refuses on its own, say a request line too long); its
    status and title are then the response's.
    """

    BAD_REQUEST = ("bad-request", 400, "Malformed request")
    BAD_FIELD = ("bad-field", 400, "A field or parameter has a bad value")
    UNKNOWN_BACKEND = ("unknown-backend", 400, "No such output backend")
    BAD_CERTIFICATE_IDENTITY = ("bad-certificate-identity", 403,
                                "The client certificate names no single client")
    NOT_ALLOWED = ("not-allowed", 403, "Not allowed to this client")
    NO_SUCH_JOB = ("no-such-job", 404, "No such job")
    NO_SUCH_ENDPOINT = ("no-such-endpoint", 404, "No such endpoint")
    METHOD_NOT_ALLOWED = ("method-not-allowed", 405, "Method not allowed")
    REQUEST_TIMEOUT = ("request-timeout", 408, "The request did not arrive in time")
    BODY_TOO_LARGE = ("body-too-large", 413, "Request too large")
    UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", 415, "The body must be JSON")
    QUOTA_EXCEEDED = ("quota-exceeded", 429, "Over this client's limit")
    INTERNAL_ERROR = ("internal-error", 500, "Internal server error")
    NOT_IMPLEMENTED = ("not-implemented", 501, "Not implemented")
    SERVER_BUSY = ("server-busy", 503, "The server is too busy")
    SERVER_STOPPING = ("server-stopping", 503, "The server is shutting down")
    EXECUTOR_UNAVAILABLE = ("executor-unavailable", 503,
                            "The cluster that runs the jobs cannot be reached")
    STORAGE_FAILED = ("storage-failed", 507, "The server cannot store it")
    GENERIC = ("about:blank", 0, "")

    def __init__(self, slug: str, status: int, title: str) -> None:
        self.slug = slug
        self.status = status
        self.title = title

    @property
    def type_uri(self) -> str:
        """The problem's ``type``: ``urn:jobkit:problem:<slug>``, or ``about:blank``."""
        if self is ProblemKind.GENERIC:
            return self.slug
        return PROBLEM_TYPE_PREFIX + self.slug

    @classmethod
    def from_type(cls, type_uri: object) -> ProblemKind:
        """The kind a ``type`` names; `GENERIC` for one this version does not know."""
        if isinstance(type_uri, str) and type_uri.startswith(PROBLEM_TYPE_PREFIX):
            wanted = type_uri[len(PROBLEM_TYPE_PREFIX):]
            for kind in cls:
                if kind.slug == wanted:
                    return kind
        return cls.GENERIC

    @classmethod
    def for_status(cls, status: int) -> ProblemKind:
        """The kind of an answer known only by its status (cheroot's own refusals)."""
        return _BY_STATUS.get(status, cls.GENERIC)


#: The kind each status means when nothing more is known about the answer.
_BY_STATUS = {
    400: ProblemKind.BAD_REQUEST,
    404: ProblemKind.NO_SUCH_ENDPOINT,
    405: ProblemKind.METHOD_NOT_ALLOWED,
    408: ProblemKind.REQUEST_TIMEOUT,
    413: ProblemKind.BODY_TOO_LARGE,
    500: ProblemKind.INTERNAL_ERROR,
    501: ProblemKind.NOT_IMPLEMENTED,
    503: ProblemKind.SERVER_BUSY,
}


def problem_json(kind: ProblemKind, detail: str, *, status: int | None = None,
                 **members: Any) -> dict[str, Any]:
    """The error body: ``type``, ``title``, ``status``, ``detail`` and extension ``members``.

    ``status`` is needed only for `ProblemKind.GENERIC` (it defaults to the
    kind's).  The members a kind carries are in `docs/server.md`, e.g.
    ``job_id`` for `ProblemKind.NO_SUCH_JOB`.
    """
    code = kind.status if status is None else status
    title = kind.title
    if kind is ProblemKind.GENERIC:
        import http

        try:
            title = http.HTTPStatus(code).phrase
        except ValueError:
            title = "Error"
    return {"type": kind.type_uri, "title": title, "status": code, "detail": detail,
            **members}


class Problem(NamedTuple):
    """An error answer, decoded by `problem_from_json`.

    Attributes:
        kind: What went wrong, from the body's ``type``.
        status: The HTTP status of the answer.
        detail: The server's message, for people.
        members: Extension members of the kind (``job_id``, ...).
    """

    kind: ProblemKind
    status: int
    detail: str
    members: Mapping[str, Any]


def problem_from_json(status: int, body: bytes) -> Problem:
    """The `Problem` an error answer with ``status`` and ``body`` stands for.

    A body that is not a problem (a proxy's HTML page, say) is a
    `ProblemKind.GENERIC` problem saying which status came back.
    """
    try:
        data = json.loads(body)
    except ValueError:  # UnicodeDecodeError is a ValueError
        data = None
    if not isinstance(data, dict):
        return Problem(ProblemKind.GENERIC, status, f"HTTP {status} from the server", {})
    kind = ProblemKind.from_type(data.get("type"))
    detail = data.get("detail")
    if not isinstance(detail, str) or not detail:
        detail = f"HTTP {status} from the server"
    members = {key: value for key, value in data.items()
               if key not in ("type", "title", "status", "detail")}
    return Problem(kind, status, detail, members)
