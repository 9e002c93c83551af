"""The HTTP API: a Bottle app whose routes map requests to per-tenant `JobPool` calls.

The app is thin: it checks what a request says (`jobkit.server.requests`),
calls the library, and turns the result into JSON (`jobkit.wire`) or the
refusal into a problem document (`jobkit.server.errors`).

Who the client is comes from the TLS layer (`jobkit.server.tls`): the single
CN of its verified certificate.  Each CN is a tenant with its own `JobPool`
(`jobkit.server.tenants`), made on its first ``PUT /jobs``; another
tenant's jobs look exactly like jobs that never existed (404), unless the
caller is an admin.
"""

from __future__ import annotations

import codecs
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import bottle  # type: ignore[import-untyped]

from jobkit.core.errors import JobNotFound, PoolClosed
from jobkit.core.models import State, StreamInfo
from jobkit.core.pool import DEFAULT_BACKEND, JobPool
from jobkit.core.signals import parse_signal, signal_name
from jobkit.server.access_log import LoggedBody, RequestRecord, printable
from jobkit.server.auditing import ServerAudit
from jobkit.server.errors import (
    REFUSAL_ENVIRON_KEY,
    ApiError,
    bottle_error,
    encode_json,
    error_response,
    internal_error,
    translate_errors,
)
from jobkit.server.metrics import UNMATCHED, ServerMetrics
from jobkit.server.openapi import openapi_document
from jobkit.server.policy import ClientPolicy, QuotaLedger, ServerPolicy
from jobkit.server.pump import CHUNK
from jobkit.server.requests import (
    buffer_chunked_body,
    check_fields,
    count_parameter,
    field_bool,
    field_env,
    field_limits,
    field_optional_str,
    field_str,
    field_str_list,
    field_timeout,
    flag_parameter,
    json_type,
    query,
    read_json,
)
from jobkit.server.state import encode_name
from jobkit.server.streams import (
    ByteStream,
    CountedBody,
    StreamRegistry,
    passthrough_file_wrapper,
)
from jobkit.server.tenants import (
    CLIENT_ENVIRON_KEY,
    AccessRules,
    StoragePolicy,
    Tenant,
    TenantLimits,
    Tenants,
)
from jobkit.server.tls import PEER_ENVIRON_KEY, Peer
from jobkit.wire import (
    CHUNK_OFFSETS_PARAMETER,
    JSON_MEDIA_TYPE,
    MAX_PAGE,
    OFFSET_HEADER,
    STREAMS,
    ProblemKind,
    status_to_json,
)

__all__ = ["JobApi", "status_json"]

log = logging.getLogger("jobkit.server")

_CREATE_FIELDS = frozenset({"cmd", "args", "env", "replace_env", "cwd", "timeout", "backend",
                            "limits", "network"})
_STOP_FIELDS = frozenset({"signal"})
_CLEAN_FIELDS = frozenset({"older_than", "states"})
#: Bytes of output read at once while streaming ``GET /jobs/<id>/output``.
_OUTPUT_CHUNK = 1 << 18


def status_json(status: Any) -> dict[str, Any]:
    """The JSON form of a library `JobStatus` (`jobkit.wire.status_to_json`)."""
    return status_to_json(status, signal_name=signal_name)


class JobApi:
    """jobkit's WSGI application: the API of `docs/server.md` over per-tenant pools.

    Args:
        storage: Which backends tenants' jobs use, and their caps (see
            `StoragePolicy`); default: ``memory`` with the default cap.
        admins: CNs allowed to list and act on every tenant's jobs.
        limits: See `TenantLimits`.
        pool_factory: Makes the pool of the tenant of that name (default:
            an in-memory pool with ``storage``'s backend).  Its pool must
            report finished jobs to `job_finished` (``on_finished``).
        audit: Where security-relevant acts are recorded (see
            `jobkit.server.auditing`); default: nowhere.
        metrics: The server's metrics; default: a registry of its own.
        resources: Default and maximum limits of jobs, and quotas of clients
            (`jobkit.server.policy`); default: ``limits``' ``max_jobs`` only.

    Call `begin_shutdown` when the server stops accepting requests (follow
    streams end) and `close` after it stopped (every job is killed and reaped).
    """

    def __init__(
        self,
        storage: StoragePolicy | None = None,
        *,
        admins: Iterable[str] = (),
        limits: TenantLimits | None = None,
        pool_factory: Callable[[str], JobPool] | None = None,
        audit: ServerAudit | None = None,
        metrics: ServerMetrics | None = None,
        resources: ServerPolicy | None = None,
    ) -> None:
        self.storage = StoragePolicy(backend=DEFAULT_BACKEND) if storage is None else storage
        self.access = AccessRules(frozenset(admins))
        self.limits = TenantLimits() if limits is None else limits
        self.audit = ServerAudit(None) if audit is None else audit
        self.metrics = ServerMetrics() if metrics is None else metrics
        self.resources = (ServerPolicy(ClientPolicy(max_jobs=self.limits.max_jobs))
                          if resources is None else resources)
        self._quotas = QuotaLedger()
        storage = self.storage
        self._tenants = Tenants(pool_factory or (
            lambda name: JobPool(storage.backend, storage.options(storage.backend),
                                 on_finished=lambda status: self.job_finished(name, status))
        ))
        self._follows = StreamRegistry()
        self.metrics.count_follow_streams(self._follows.count_follows)
        self._openapi = encode_json(openapi_document()).encode()
        self.bottle = self._make_bottle()

    # -- lifecycle ----------------------------------------------------------

    def begin_shutdown(self, grace: float = 1.0) -> None:
        """End every follow stream and refuse new ones (503)."""
        self._follows.shutdown(grace)

    def open_tenants(self, names: Iterable[str]) -> list[str]:
        """Open known tenants' pools now (see `Tenants.open`); return the lost jobs."""
        return self._tenants.open(names)

    def close(self) -> None:
        """Close every tenant's pool: kill and reap every job."""
        self._follows.shutdown(0)
        self._tenants.close()

    @property
    def open_follow_streams(self) -> int:
        """How many follow streams are open now."""
        return self._follows.count_follows()

    @property
    def open_streams(self) -> int:
        """How many output streams of any kind (follows, downloads, documents) are open now."""
        return self._follows.count()

    def job_finished(self, owner: str, status: Any) -> None:
        """A job of ``owner`` ended: let its place go, audit it and count it (a pool's
        ``on_finished``)."""
        # It no longer counts against the live-job limit or the quotas.  Without
        # this, a client's counted set grew to the limit and each PUT at it read
        # every counted job's status to drop the ended ones (about 8 ms for 256
        # durable jobs, once every 256 PUTs).  A job that ends before its creation
        # is counted is still dropped there, when the count reaches the limit.
        tenant = self._tenants.get(owner)
        if tenant is not None:
            tenant.forget(status.id)
        self._quotas.forget(owner, status.id)
        self.audit.finished(owner, status)
        self.metrics.job_finished(owner, status)

    # -- WSGI ---------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        peer = environ.get(PEER_ENVIRON_KEY)
        client = peer.common_name if isinstance(peer, Peer) else None
        record = RequestRecord(environ, client or "-",
                               peer.address if isinstance(peer, Peer) else "-", self._done)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            record.status = int(status[:3])
            record.write = start_response(status, headers, exc_info)
            return record.write

        try:
            if client is None:
                reason = peer.refusal if isinstance(peer, Peer) else None
                raise ApiError(ProblemKind.BAD_CERTIFICATE_IDENTITY,
                               reason or "no verified client certificate")
            environ[CLIENT_ENVIRON_KEY] = client
            environ["wsgi.file_wrapper"] = passthrough_file_wrapper
            if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
                buffer_chunked_body(environ, self.limits.max_body)
            try:
                result = self.bottle(environ, start)
            finally:
                route = environ.get("bottle.route")
                record.route = getattr(route, "rule", None)
        except ApiError as error:
            result = error_response(start, error)
        except Exception:
            log.exception("unexpected error serving %s %s",
                          printable(environ.get("REQUEST_METHOD", "-")),
                          printable(environ.get("PATH_INFO", "")))
            result = error_response(start, internal_error(), exc_info=sys.exc_info())
        return LoggedBody(result, record)

    def _done(self, record: RequestRecord) -> None:
        """A response was sent: count it; audit it if it was a refusal (403) of a known CN."""
        route = record.route or UNMATCHED
        self.metrics.request_done(record.method, route, record.status,
                                  time.perf_counter() - record.started)
        if record.status == 403 and record.client != "-":
            environ = record.environ
            fields: dict[str, Any] = {"method": printable(record.method), "route": route}
            job_id = environ.get("route.url_args", {}).get("job_id")
            if isinstance(job_id, str):
                fields["job"] = job_id
            reason = environ.get(REFUSAL_ENVIRON_KEY)
            if isinstance(reason, str):
                fields["reason"] = reason
            self.audit.event("authz.refused", cn=record.client, peer=record.peer, **fields)

    # -- routes -------------------------------------------------------------

    def _make_bottle(self) -> Any:
        app = bottle.Bottle()
        # Exceptions reach JobApi.__call__, which answers a problem, instead
        # of bottle's HTML error page.
        app.config["catchall"] = False
        app.uninstall(True)  # no JSON/template plugins: routes return bytes
        app.default_error_handler = bottle_error
        app.install(translate_errors)
        app.route("/openapi.json", "GET", self.get_openapi)
        app.route("/jobs", "PUT", self.create_job)
        app.route("/jobs", "GET", self.list_jobs)
        app.route("/jobs/clean", "POST", self.clean_jobs)
        app.route("/jobs/<job_id>", "DELETE", self.delete_job)
        app.route("/jobs/<job_id>/status", "GET", self.job_status)
        app.route("/jobs/<job_id>/output", "GET", self.job_output)
        for stream in STREAMS:
            app.route(f"/jobs/<job_id>/{stream}", "GET", self._stream_route(stream))
        app.route("/jobs/<job_id>/stop", "POST", self.stop_job)
        app.route("/metrics", "GET", self.get_metrics)
        return app

    def get_openapi(self) -> bytes:
        return _json_body(200, self._openapi)

    def get_metrics(self) -> bytes:
        """The server's metrics in Prometheus's text format, for admins only."""
        self.access.check_admin(bottle.request.environ[CLIENT_ENVIRON_KEY], "read the metrics")
        body, content_type = self.metrics.exposition()
        bottle.response.content_type = content_type
        return body

    def create_job(self) -> bytes:
        environ = bottle.request.environ
        caller = environ[CLIENT_ENVIRON_KEY]
        self.access.check_create(caller, query(environ))
        body = read_json(environ, self.limits.max_body, required=True)
        check_fields(body, _CREATE_FIELDS)
        if "cmd" not in body:
            raise ApiError(ProblemKind.BAD_FIELD, "field 'cmd' is required")
        cmd = field_str(body, "cmd")
        args = field_str_list(body, "args")
        env = field_env(body)
        replace_env = body.get("replace_env", False)
        if not isinstance(replace_env, bool):
            raise ApiError(ProblemKind.BAD_FIELD, f"field 'replace_env' must be a boolean, "
                                                  f"not {json_type(replace_env)}")
        cwd = field_optional_str(body, "cwd")
        backend = field_optional_str(body, "backend")
        options = None
        if backend is not None:
            self.storage.check(backend)
            options = self.storage.options(backend)
        timeout = field_timeout(body)
        network = field_bool(body, "network", True)
        rules = self.resources.for_client(caller)
        limits = rules.limits_for(field_limits(body))  # 403 over a maximum
        share = rules.share(limits)

        tenant = self._tenants.get_or_create(caller)
        try:
            tenant.reserve(rules.max_jobs)
        except ApiError as error:
            if error.kind is ProblemKind.QUOTA_EXCEEDED:
                self.metrics.quota_refused(caller, "live_jobs")
            raise
        try:
            self._quotas.reserve(caller, rules, share,
                                 lambda job_id: _still_running(tenant.pool, job_id))
        except ApiError as error:
            tenant.created(None, counted=False)
            self.metrics.quota_refused(caller, str(error.members.get("quota")))
            raise
        job_id = None
        started = time.perf_counter()
        self.audit.creating(caller)
        try:
            job_id = tenant.pool.create(cmd, args, env=env, replace_env=replace_env, cwd=cwd,
                                        timeout=timeout, backend=backend,
                                        backend_options=options, limits=limits,
                                        network=network)
        finally:
            self._quotas.created(caller, share, job_id)
            tenant.created(job_id, counted=bool(rules.max_jobs))
            if job_id is None:
                self.audit.created(caller, None)
        self.metrics.job_started(caller, time.perf_counter() - started)
        try:
            # Environment values are never recorded (jobkit.audit): only the command line.
            self.audit.created(caller, job_id, command=cmd, args=args, peer=_peer(environ),
                               cwd=cwd, backend=backend or self.storage.backend,
                               limits=_audited_limits(timeout, limits, network))
        except ApiError:
            # A job nobody may learn was created: it must not run unrecorded.
            tenant.pool.delete(job_id)
            tenant.forget(job_id)
            raise
        bottle.response.set_header("Location", f"/jobs/{job_id}/status")
        return _json_body(201, encode_json({"id": job_id}).encode())

    def list_jobs(self) -> bytes:
        """A page of jobs: ``limit`` (at most `MAX_PAGE`), ``after`` (the ``next``
        of the previous page) and ``order`` (``oldest`` first, or ``newest``)."""
        environ = bottle.request.environ
        parameters = query(environ)
        caller = environ[CLIENT_ENVIRON_KEY]
        limit = count_parameter(parameters, "limit") if "limit" in parameters else MAX_PAGE
        if not 1 <= limit <= MAX_PAGE:
            raise ApiError(ProblemKind.BAD_FIELD,
                           f"query parameter 'limit' must be from 1 to {MAX_PAGE}, not {limit}")
        order = parameters.get("order", "oldest")
        if order not in ("oldest", "newest"):
            raise ApiError(ProblemKind.BAD_FIELD,
                           f"query parameter 'order' must be 'oldest' or 'newest', not {order!r}")
        after = parameters.get("after")
        if flag_parameter(parameters, "all"):
            self.access.check_list_all(caller)
            tenants = self._tenants.all()
        else:
            tenant = self._tenants.get(self.access.owner(caller, parameters))
            tenants = [] if tenant is None else [tenant]
        many = len(tenants) != 1 or flag_parameter(parameters, "all")
        # Across tenants a cursor is ENCODED-CN/ID: tenants in name order,
        # each tenant's jobs in the order asked for.
        start, after_id = "", after
        if many and after is not None:
            start, _, after_id = after.rpartition("/")
        ids: list[str] = []
        jobs: list[dict[str, Any]] = []
        cursor = None
        for tenant in tenants:
            key = encode_name(tenant.name)
            if many and after is not None and key < start:
                continue
            since = after_id if (not many or key == start) else None
            for job_id in tenant.pool.list(limit=limit - len(ids) + 1, after=since,
                                           newest_first=order == "newest"):
                if len(ids) == limit:
                    cursor = ids[-1] if not many else f"{encode_name(jobs[-1]['client'])}/{ids[-1]}"
                    break
                try:
                    status = tenant.pool.status(job_id)
                except (JobNotFound, PoolClosed):  # deleted meanwhile
                    continue
                summary = status_json(status)
                summary["client"] = tenant.name
                ids.append(job_id)
                jobs.append(summary)
            if cursor is not None:
                break
        return _json_body(200, encode_json({"ids": ids, "jobs": jobs, "next": cursor}).encode())

    def clean_jobs(self) -> bytes:
        """Delete the caller's finished jobs, all or those matching the body's filters."""
        environ = bottle.request.environ
        body = read_json(environ, self.limits.max_body, required=False)
        check_fields(body, _CLEAN_FIELDS)
        older_than = body.get("older_than")
        if older_than is not None and (
            isinstance(older_than, bool) or not isinstance(older_than, (int, float))
            or not 0 <= older_than < 1e12
        ):
            raise ApiError(ProblemKind.BAD_FIELD,
                               "field 'older_than' must be a number of seconds from 0, "
                               f"not {json_type(older_than)}")
        states = body.get("states")
        finished = [state.value for state in State if state.final]
        if states is not None and (
            not isinstance(states, list) or not all(s in finished for s in states)
        ):
            raise ApiError(ProblemKind.BAD_FIELD,
                           f"field 'states' must be a list of {', '.join(finished)}")
        caller = environ[CLIENT_ENVIRON_KEY]
        owner = self.access.owner(caller, query(environ))
        tenant = self._tenants.get(owner)
        jobs = freed = 0
        if tenant is not None:
            self.audit.request_event("jobs.cleaned", cn=caller, peer=_peer(environ),
                                     **_owner_field(caller, owner),
                                     **({} if older_than is None else {"older_than": older_than}),
                                     **({} if states is None else {"states": states}))
            result = tenant.pool.clean(older_than=older_than, states=states)
            jobs, freed = result.jobs, result.bytes
        return _json_body(200, encode_json({"deleted": jobs, "bytes": freed}).encode())

    def delete_job(self, job_id: str) -> bytes:
        tenant = self._tenant_for(job_id, audit=False)
        tenant.pool.status(job_id)  # an unknown job is a 404, and nothing to record
        caller = bottle.request.environ[CLIENT_ENVIRON_KEY]
        self.audit.request_event("job.deleted", cn=caller, job=job_id,
                                 peer=_peer(bottle.request.environ),
                                 **_owner_field(caller, tenant.name))
        tenant.pool.delete(job_id)
        tenant.forget(job_id)
        self._quotas.forget(tenant.name, job_id)
        return _json_body(200, encode_json({"id": job_id, "deleted": True}).encode())

    def job_status(self, job_id: str) -> bytes:
        status = self._tenant_for(job_id).pool.status(job_id)
        return _json_body(200, encode_json(status_json(status)).encode())

    def job_output(self, job_id: str) -> CountedBody:
        caller = bottle.request.environ[CLIENT_ENVIRON_KEY]
        pool = self._tenant_for(job_id).pool
        status = pool.status(job_id)  # before the headers: an unknown job is still a 404
        registry = self._follows
        peer = bottle.request.environ.get(PEER_ENVIRON_KEY)
        body = CountedBody(
            _output_document(pool, job_id, status.stdout.written, status.stderr.written),
            on_close=lambda b: registry.remove(b, caller, follow=False),
            peer=peer if isinstance(peer, Peer) else None,
        )
        self._count_stream(body, caller, follow=False)
        bottle.response.content_type = JSON_MEDIA_TYPE
        return body

    def _count_stream(self, body: Any, caller: str, *, follow: bool) -> None:
        """Take an output-stream slot for ``body``, or refuse (429, 503) naming the limit."""
        try:
            self._follows.add(body, caller, self.limits, follow=follow)
        except ApiError as error:
            if error.kind is ProblemKind.QUOTA_EXCEEDED:
                self.metrics.quota_refused(caller, "output_streams")
            raise

    def _stream_route(self, stream: str) -> Callable[[str], Any]:
        def route(job_id: str) -> Any:
            return self._raw_stream(job_id, stream)

        route.__name__ = f"job_{stream}"
        return route

    def _raw_stream(self, job_id: str, stream: str) -> Any:
        environ = bottle.request.environ
        parameters = query(environ)
        offset = count_parameter(parameters, "offset")
        follow = flag_parameter(parameters, "follow")
        chunk_offsets = flag_parameter(parameters, CHUNK_OFFSETS_PARAMETER)
        tenant = self._tenant_for(job_id, parameters)
        status = tenant.pool.status(job_id)
        info: StreamInfo = getattr(status, stream)
        # Bytes before `dropped` are gone (ring): the body starts after them.
        offset = max(offset, info.dropped)
        follower = tenant.pool.follow(job_id, stream, offset)
        peer = environ.get(PEER_ENVIRON_KEY)
        registry = self._follows
        # Every stream counts against the caller, downloads too: a client that
        # stops reading holds the thread writing to it until the write times out.
        caller = environ[CLIENT_ENVIRON_KEY]
        body = ByteStream(
            follower,
            until=None if follow else info.written,
            peer=peer if isinstance(peer, Peer) else None,
            on_close=lambda s: registry.remove(s, caller, follow=follow),
            idle_timeout=self.limits.stream_idle_timeout,
            chunk_offsets=chunk_offsets,
        )
        try:
            self._count_stream(body, caller, follow=follow)
        except ApiError:
            follower.cancel()
            raise
        response = bottle.response
        response.content_type = "application/octet-stream"
        response.set_header("X-Content-Type-Options", "nosniff")
        # Where the bytes start: the requested offset, or the first byte the
        # backend still keeps (ring) if that is later.
        response.set_header(OFFSET_HEADER, str(offset))
        return body

    def stop_job(self, job_id: str) -> bytes:
        environ = bottle.request.environ
        body = read_json(environ, self.limits.max_body, required=False)
        check_fields(body, _STOP_FIELDS)
        signal: Any = body.get("signal", "SIGTERM")
        if isinstance(signal, float) and signal.is_integer() and abs(signal) < 1e9:
            signal = int(signal)  # JSON has one number type: 1e3 is 1000
        if isinstance(signal, bool) or not isinstance(signal, (str, int)):
            shown = repr(signal) if isinstance(signal, float) else json_type(signal)
            raise ApiError(ProblemKind.BAD_FIELD,
                           f"field 'signal' must be a signal name like 'SIGTERM' or a "
                           f"whole number, not {shown}")
        try:
            number = parse_signal(signal)
        except ValueError as error:
            raise ApiError(ProblemKind.BAD_FIELD, f"field 'signal': {error}") from None
        tenant = self._tenant_for(job_id, audit=False)
        tenant.pool.status(job_id)  # an unknown job is a 404, and nothing to record
        caller = environ[CLIENT_ENVIRON_KEY]
        self.audit.request_event("job.stopped", cn=caller, job=job_id,
                                 signal=signal_name(number), peer=_peer(environ),
                                 **_owner_field(caller, tenant.name))
        status = tenant.pool.stop(job_id, number)
        return _json_body(200, encode_json(status_json(status)).encode())

    # -- whose jobs ---------------------------------------------------------

    def _tenant_for(self, job_id: str, parameters: Mapping[str, str] | None = None, *,
                    audit: bool = True) -> Tenant:
        """The pool of the job a request names; an admin's read of another's job is audited.

        ``audit`` False: the caller records the act itself (stop, delete).
        """
        environ = bottle.request.environ
        caller = environ[CLIENT_ENVIRON_KEY]
        owner = self.access.owner(caller, query(environ) if parameters is None else parameters)
        tenant = self._tenants.get(owner)
        # Exactly what an unknown id in an existing pool gives: whether a
        # client has a pool yet must not show.  (An id with NUL can never exist;
        # the library would call it a bad value.)
        if tenant is None or "\0" in job_id:
            raise JobNotFound(job_id)
        if audit and owner != caller:
            tenant.pool.status(job_id)  # an unknown job is a 404, and nothing to record
            route = environ.get("bottle.route")
            action = str(getattr(route, "rule", "?")).rpartition("/")[2]
            self.audit.request_event("admin.acted", cn=caller, owner=owner, action=action,
                                     job=job_id, peer=_peer(environ))
        return tenant


def _still_running(pool: JobPool, job_id: str) -> bool:
    try:
        return pool.status(job_id).running
    except (JobNotFound, PoolClosed):
        return False


def _audited_limits(timeout: float | None, limits: Any,
                    network: bool) -> dict[str, Any] | None:
    """What the audit log's ``job.created`` records of a job's limits."""
    fields: dict[str, Any] = {} if limits is None else {
        name: value for name, value in limits.to_dict().items()
        if value is not None and name != "strict"}
    if timeout is not None:
        fields["timeout_s"] = timeout
    if not network:
        fields["network"] = False
    return fields or None


def _peer(environ: Mapping[str, Any]) -> str:
    peer = environ.get(PEER_ENVIRON_KEY)
    return peer.address if isinstance(peer, Peer) else "-"


def _owner_field(caller: str, owner: str) -> dict[str, str]:
    """``{"owner": owner}`` when an admin acts on another client's jobs."""
    return {} if owner == caller else {"owner": owner}


def _output_document(pool: JobPool, job_id: str, *ends: int) -> Iterator[bytes]:
    """``{"stdout": "...", "stderr": "..."}``, streamed a bounded chunk at a time.

    Each chunk comes from at most `jobkit.server.pump.CHUNK` bytes of output,
    so that what a client that stops reading holds stays small.

    The text is what each stream held when the request came, decoded as
    UTF-8 with U+FFFD for bad bytes: the same document as decoding each
    stream whole, at a memory cost that does not grow with the output.
    """
    for name, end, opening in zip(STREAMS, ends, (b'{"stdout":"', b'","stderr":"')):
        yield opening
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        follower = pool.follow(job_id, name, 0)
        try:
            while follower.offset < end:
                # A pump-sized slice: escaped, it may grow six-fold (\u0001).
                data = follower.read(timeout=0, limit=CHUNK)
                if not data:
                    break  # deleted meanwhile, or nothing more kept
                data = data[: max(0, end - (follower.offset - len(data)))]
                yield _escape(decoder.decode(data))
            yield _escape(decoder.decode(b"", final=True))
        finally:
            follower.cancel()
    yield b'"}'


def _escape(text: str) -> bytes:
    """``text`` as the inside of a JSON string (as `encode_json` writes it)."""
    return json.dumps(text, ensure_ascii=False)[1:-1].encode()


def _json_body(status: int, payload: bytes) -> bytes:
    response = bottle.response
    if status != 200:  # bottle starts every response at 200
        response.status = status
    response.content_type = JSON_MEDIA_TYPE
    return payload
