"""Tenants: each client certificate's CN gets its own `JobPool`, within limits.

A *tenant* is the server's side of one client identity (not to be confused
with `jobkit.client.Client`, the Python client).  Who may act on whose jobs
is decided here too: a caller acts on its own pool, an admin (``--admin``)
may name another with ``?client=CN`` and list every pool with ``?all=true``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

import attrs

from jobkit.core.errors import JobNotFound, PoolClosed
from jobkit.core.plugins import backend_names
from jobkit.core.pool import DURABLE_BACKEND, JobPool
from jobkit.core.retention import Retention
from jobkit.core.sizes import format_size
from jobkit.server.errors import ApiError
from jobkit.server.requests import MAX_BODY
from jobkit.wire import ProblemKind

__all__ = [
    "CLIENT_ENVIRON_KEY",
    "DEFAULT_KEEP_BYTES",
    "DEFAULT_KEEP_JOBS",
    "DEFAULT_MAX_CLIENT_STREAMS",
    "DEFAULT_MAX_JOBS",
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_MAX_STREAMS",
    "DEFAULT_SERVER_BACKEND",
    "DEFAULT_STREAM_IDLE_TIMEOUT",
    "AccessRules",
    "StoragePolicy",
    "Tenant",
    "TenantLimits",
    "Tenants",
]

#: Live (running) jobs one client may have at once by default; more get 429.
DEFAULT_MAX_JOBS = 256
#: The environ key under which the app finds the caller's CN.
CLIENT_ENVIRON_KEY = "jobkit.client"
#: Seconds a follow stream may stay quiet before it is ended (the client resumes).
DEFAULT_STREAM_IDLE_TIMEOUT = 60.0
#: Output streams open at once on one server: each costs a descriptor or two and
#: at most 64 KiB of buffer, never a thread.
DEFAULT_MAX_STREAMS = 2048
#: Output streams one client may hold: 32 clients, not a few, to hold them all.
DEFAULT_MAX_CLIENT_STREAMS = 64
#: The server's output backend: on disk, kept across restarts.
DEFAULT_SERVER_BACKEND = DURABLE_BACKEND
#: Bytes of each stream of each job the server keeps (the newest, with ``file``).
DEFAULT_MAX_OUTPUT = 1 << 30
#: Finished jobs one client keeps; the oldest beyond are deleted.
DEFAULT_KEEP_JOBS = 10_000
#: Bytes of finished jobs' output one client keeps; the oldest jobs beyond are deleted.
DEFAULT_KEEP_BYTES = 10 << 30
#: The backends whose ``max_bytes`` option `StoragePolicy` sets to its cap.
_CAPPED_BY_OPTION = frozenset({"file", "memory"})


@attrs.frozen
class StoragePolicy:
    """Where the server keeps its tenants' output, and how much.

    Attributes:
        backend: The backend of every tenant's jobs, unless a request names
            another of ``allowed``.
        allowed: The backends a request may name (``"backend"`` of
            ``PUT /jobs``); always includes ``backend``.
        max_output: Bytes kept of each stream of each job: ``file`` keeps the
            newest, ``memory`` the first (``ring`` keeps its own capacity,
            and ``tempfile`` has no cap: allow it only if you trust clients).
        retention: When each tenant's finished jobs are deleted on their own.
    """

    backend: str = DEFAULT_SERVER_BACKEND
    allowed: frozenset[str] = frozenset()
    max_output: int = DEFAULT_MAX_OUTPUT
    retention: Retention = attrs.Factory(
        lambda: Retention(max_jobs=DEFAULT_KEEP_JOBS, max_bytes=DEFAULT_KEEP_BYTES)
    )

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "allowed", frozenset(self.allowed) | {self.backend})

    def options(self, backend: str) -> dict[str, object] | None:
        """The options the server gives ``backend``: its cap, where it takes one."""
        return {"max_bytes": self.max_output} if backend in _CAPPED_BY_OPTION else None

    def check(self, backend: str) -> None:
        """Refuse (403) a backend this server does not let clients choose.

        An unknown name is left to the pool, which says so (400).
        """
        if backend not in self.allowed and backend in backend_names():
            raise ApiError(
                ProblemKind.NOT_ALLOWED,
                f"backend {backend!r} is not allowed on this server "
                f"(allowed: {', '.join(sorted(self.allowed))})",
            )

    def describe(self) -> str:
        """One line for the server's start-up log."""
        rules = self.retention
        keep = [f"{rules.max_jobs} finished jobs" if rules.max_jobs is not None else "",
                f"{format_size(rules.max_bytes)}" if rules.max_bytes is not None else "",
                f"{rules.max_age:g} s" if rules.max_age is not None else ""]
        return (f"backend {self.backend}, at most {format_size(self.max_output)} per stream;"
                f" each client keeps at most {', '.join(k for k in keep if k) or 'everything'}")


@attrs.frozen
class TenantLimits:
    """What one server lets its tenants do.

    Attributes:
        max_jobs: Live (running) jobs one tenant may have; 0 means no limit.
            Another ``PUT /jobs`` over it gets 429.
        max_streams: Output streams (follows, raw downloads and ``/output``
            documents) open at once, all tenants together; more get 503.
            None holds a worker thread while it waits (`jobkit.server.pump`);
            each holds a connection, a follower and, while its client does
            not read, one buffer of `jobkit.server.pump.CHUNK` bytes.
        max_client_streams: Output streams one tenant may hold; more get 429.
        stream_idle_timeout: Seconds a follow stream may send nothing before
            it is ended cleanly (the client resumes at its offset); 0: never.
        max_body: The largest request body, in bytes; larger ones get 413.
    """

    max_jobs: int = DEFAULT_MAX_JOBS
    max_streams: int = DEFAULT_MAX_STREAMS
    max_client_streams: int = DEFAULT_MAX_CLIENT_STREAMS
    stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT
    max_body: int = MAX_BODY

    def __attrs_post_init__(self) -> None:
        if self.max_streams < 1 or self.max_client_streams < 1:
            raise ValueError("stream limits must be at least 1")


@attrs.define(eq=False)
class Tenant:
    """One client identity's pool and the counters its live-job limit needs.

    Attributes:
        name: The CN.
        pool: Its jobs.
    """

    name: str
    pool: JobPool
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    #: Ids of counted jobs not known to have ended (`forget` when one does).
    _live: set[str] = attrs.field(factory=set, init=False)
    #: Creations in progress.
    _reserved: int = attrs.field(default=0, init=False)

    def reserve(self, limit: int) -> None:
        """Take a place for a job about to be created; `ApiError` (429) over ``limit``.

        0 means no limit.  Call `created` once the creation is over, whatever happened.
        """
        with self._lock:
            if limit and len(self._live) + self._reserved >= limit:
                self._live = {job_id for job_id in self._live if self._running(job_id)}
                if len(self._live) + self._reserved >= limit:
                    raise ApiError(
                        ProblemKind.QUOTA_EXCEEDED,
                        f"too many live jobs: client {self.name!r} has "
                        f"{len(self._live) + self._reserved} running (limit {limit}); "
                        f"wait for some to finish, or stop or delete them")
            self._reserved += 1

    def created(self, job_id: str | None, *, counted: bool) -> None:
        """The creation `reserve` made room for is over; ``job_id`` None if it failed."""
        with self._lock:
            self._reserved -= 1
            if job_id is not None and counted:
                self._live.add(job_id)

    def forget(self, job_id: str) -> None:
        """``job_id`` ended or was deleted: it no longer counts."""
        with self._lock:
            self._live.discard(job_id)

    def _running(self, job_id: str) -> bool:
        try:
            return self.pool.status(job_id).running
        except (JobNotFound, PoolClosed):
            return False


class Tenants:
    """The map CN -> `Tenant`, created on first use.

    Reads take no lock (a dict lookup is atomic); only creating a tenant's
    pool does, and it checks again under the lock so two first requests from
    one client make one pool.

    Args:
        factory: Makes the pool of the tenant of that name.
    """

    def __init__(self, factory: Callable[[str], JobPool]) -> None:
        self._factory = factory
        self._tenants: dict[str, Tenant] = {}
        self._lock = threading.Lock()
        self._closed = False

    def get(self, name: str) -> Tenant | None:
        """The tenant ``name``, or None if it never created a job."""
        return self._tenants.get(name)

    def get_or_create(self, name: str) -> Tenant:
        """The tenant ``name``, made with a new pool if needed; `PoolClosed` once closed."""
        tenant = self._tenants.get(name)
        if tenant is not None:
            return tenant
        with self._lock:
            if self._closed:
                raise PoolClosed
            tenant = self._tenants.get(name)
            if tenant is None:
                tenant = self._tenants[name] = Tenant(name, self._factory(name))
            return tenant

    def open(self, names: Iterable[str]) -> list[str]:
        """Open the pools of tenants known from before (a restart); return the lost job ids.

        Each pool, opened, kills and marks `State.LOST` the jobs a dead
        previous server left running.
        """
        lost = []
        for name in names:
            pool = self.get_or_create(name).pool
            lost += [f"{name}/{job_id}" for job_id in pool.recovered]
        return lost

    def all(self) -> list[Tenant]:
        """Every tenant, by name."""
        with self._lock:
            return sorted(self._tenants.values(), key=lambda tenant: tenant.name)

    def close(self) -> None:
        """Close every pool: every job is killed and reaped."""
        with self._lock:
            self._closed = True
            tenants = list(self._tenants.values())
        for tenant in tenants:
            tenant.pool.close()


@attrs.frozen
class AccessRules:
    """Who may act on whose jobs.

    Attributes:
        admins: CNs allowed to list and act on every tenant's jobs.
    """

    admins: frozenset[str] = frozenset()

    def owner(self, caller: str, parameters: Mapping[str, str]) -> str:
        """The CN whose pool a request addresses: the caller's, or ``?client=`` for admins."""
        other = parameters.get("client")
        if other is None or other == caller:
            return caller
        if caller not in self.admins:
            raise ApiError(ProblemKind.NOT_ALLOWED,
                           "only an admin may act on another client's jobs (client=...)")
        return other

    def check_admin(self, caller: str, what: str) -> None:
        """Refuse (403) anyone but an admin: only an admin may ``what``."""
        if caller not in self.admins:
            raise ApiError(ProblemKind.NOT_ALLOWED, f"only an admin may {what}")

    def check_list_all(self, caller: str) -> None:
        """Refuse ``?all=true`` to anyone but an admin."""
        if caller not in self.admins:
            raise ApiError(ProblemKind.NOT_ALLOWED,
                           "only an admin may list every client's jobs (all=true)")

    def check_create(self, caller: str, parameters: Mapping[str, str]) -> None:
        """A job is always created in the caller's own pool: refuse ``?client=`` another."""
        if "client" in parameters and parameters["client"] != caller:
            raise ApiError(ProblemKind.BAD_FIELD,
                           "a job is always created in the caller's own pool; "
                           "'client' is not accepted on PUT /jobs")
