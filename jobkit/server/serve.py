"""Running the API: `JobServer` puts `JobApi` on cheroot with `TLS13Adapter`.

Shutdown order matters, and `JobServer.stop` owns it:

1. the app refuses new follow streams and ends the open ones (a response
   generator that never ends would make cheroot's ``stop()`` wait forever);
2. connections still in their TLS handshake are shut down, so silent
   clients do not hold worker threads for the handshake timeout;
3. cheroot stops: no more connections, in-flight responses finish; any
   still running after `SHUTDOWN_TIMEOUT` (a client that stopped reading)
   have their connections cut;
4. every client's pool is closed: every running job is killed and reaped,
   and recorded as killed by the close;
5. ``server.stopped`` is audited, the metrics listener stops, and the state
   folder is let go (a temporary one is removed).

Every client's jobs live in its own durable pool under the state folder
(`jobkit.server.state`), so a restarted server sees every job it recorded.
The audit log (`jobkit.server.auditing`) is ``audit.log`` in that folder
unless told otherwise; the certificates are reloaded on `reload_certificates`
(``jobkit serve``: SIGHUP) and when the CRL file changes
(`jobkit.server.certificates`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any

from jobkit._version import __version__
from jobkit.audit import AUDIT_FILE, AuditLog
from jobkit.core.models import JobStatus
from jobkit.core.pool import DEFAULT_EXECUTOR, LOST_MESSAGE, JobPool, check_executor
from jobkit.core.signals import signal_name
from jobkit.pki.layout import CA_FILE, CERT_FILE, KEY_FILE, server_dir
from jobkit.server.app import JobApi
from jobkit.server.auditing import ServerAudit
from jobkit.server.certificates import Reload, ServerCertificates
from jobkit.server.connection import CherootServer, TLS13Adapter
from jobkit.server.metrics import MetricsListener, ServerMetrics
from jobkit.server.policy import ClientPolicy, ServerPolicy
from jobkit.server.state import ServerState
from jobkit.server.tenants import (
    DEFAULT_MAX_CLIENT_STREAMS,
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_STREAMS,
    DEFAULT_STREAM_IDLE_TIMEOUT,
    StoragePolicy,
    TenantLimits,
)
from jobkit.server.tls import DEFAULT_HANDSHAKE_TIMEOUT, Peer
from jobkit.wire import DEFAULT_HOST, DEFAULT_PORT

__all__ = [
    "DEFAULT_THREADS",
    "JobServer",
]

log = logging.getLogger("jobkit.server")

#: Worker threads: they serve requests, and move the bytes of long responses that are
#: ready to go (a response that waits holds none; see `jobkit.server.pump`).
DEFAULT_THREADS = 64
#: Seconds a connection may sit idle (keep-alive), or stall a read or a write; also
#: what a request (its TLS handshake included) has from its first byte to its last.
CONNECTION_TIMEOUT = 10
#: Seconds cheroot waits for in-flight requests at shutdown before cutting them off.
SHUTDOWN_TIMEOUT = 2


class JobServer:
    """jobkit's HTTPS server: the API on cheroot with mutual TLS 1.3.

    Args:
        certs: A folder made by ``jobkit certs init``, or its ``server/``
            subfolder (``ca.pem``, ``cert.pem``, ``key.pem``).
        host, port: Where to listen; port 0 picks a free port (see `address`).
        storage: Backends, caps and retention of clients' jobs (`StoragePolicy`).
        threads: Worker threads (fixed).
        admins: CNs that may act on every client's jobs.
        max_jobs: Live jobs per client (0: no limit), unless ``resources`` is given.
        resources: Default and maximum limits of jobs and quotas of clients
            (`jobkit.server.policy`); default: ``max_jobs`` only.
        stream_idle_timeout: Seconds a follow stream may send nothing before it
            is ended cleanly (clients resume at their offset); 0: never.
        max_streams, max_client_streams: Output streams (follows, downloads,
            ``/output`` documents) open at once on the server, and of one
            client (see `TenantLimits`).
        handshake_timeout: Seconds a new connection has to finish its TLS handshake.
        connection_timeout: Seconds a connection may idle, or stall a read or write.
        cgroups: For every client's pool: None (default) gives each job its
            own cgroup where this process may create them, so that stop and
            delete reach processes that left the job's session; see `JobPool`.
        state_dir: The server's state folder (see `jobkit.server.state`):
            every client's jobs and output, kept across restarts.  Jobs a
            previous server left running there (it was killed with SIGKILL,
            say) are killed now and recorded as lost.  Only one live server
            may use a folder (`StateDirInUse` otherwise).  None: a temporary
            folder, removed at `stop`.
        audit_log: The audit log file (see `jobkit.server.auditing`);
            default: ``audit.log`` in the state folder.
        metrics_listen: ``(host, port)`` of a plain-HTTP listener serving
            only the metrics (port 0: a free one, see `metrics_address`);
            None: none (admins still read ``GET /metrics``).
        metrics_per_client: Label the per-job metrics with the client's CN.
        executor, executor_options: Where every client's jobs run (see
            `JobPool`; ``ray`` with ``{"address": URL}``), each pool with
            the client's CN as its owner.  Checked at once: an executor
            that cannot reach its cluster raises `ExecutorUnavailable`.

    Use `start` / `stop` (or ``with``), or `run_until_signalled`.
    """

    def __init__(
        self,
        certs: str | os.PathLike[str],
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        storage: StoragePolicy | None = None,
        threads: int = DEFAULT_THREADS,
        admins: Iterable[str] = (),
        max_jobs: int = DEFAULT_MAX_JOBS,
        stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_client_streams: int = DEFAULT_MAX_CLIENT_STREAMS,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        connection_timeout: int = CONNECTION_TIMEOUT,
        cgroups: bool | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        audit_log: str | os.PathLike[str] | None = None,
        metrics_listen: tuple[str, int] | None = None,
        metrics_per_client: bool = False,
        executor: str = DEFAULT_EXECUTOR,
        executor_options: Mapping[str, Any] | None = None,
        resources: ServerPolicy | None = None,
    ) -> None:
        if threads < 2:
            raise ValueError("a server needs at least 2 worker threads")
        check_executor(executor, executor_options)
        folder = server_dir(certs)
        self.certs = folder
        self.metrics = ServerMetrics(per_client=metrics_per_client)
        self.certificates = ServerCertificates(folder, on_reload=self._reloaded)
        self.adapter = TLS13Adapter(
            folder / CERT_FILE, folder / KEY_FILE, folder / CA_FILE,
            handshake_timeout=handshake_timeout, context_source=self.certificates.current,
            on_refused=self._refused,
        )
        # After the certificates were read, so that bad --certs neither kill
        # anything nor hold the folder.
        self.state = ServerState(state_dir)
        try:
            audit_file = self.state.root / AUDIT_FILE if audit_log is None else audit_log
            self.audit = ServerAudit(AuditLog(audit_file))
        except BaseException:
            self.state.close()
            raise
        policy = StoragePolicy() if storage is None else storage
        #: Limits and quotas of clients' jobs.
        self.resources = (ServerPolicy(ClientPolicy(max_jobs=max_jobs)) if resources is None
                          else resources)
        state = self.state
        #: The settings ``server.started`` and ``server.stopped`` record.
        self.config: dict[str, Any] = dict(
            listen=f"{host}:{port}", certs=str(folder), state_dir=str(state.root),
            state_temporary=state.temporary, audit_log=str(self.audit.path),
            backend=policy.backend, allowed_backends=sorted(policy.allowed),
            max_output=policy.max_output, keep_jobs=policy.retention.max_jobs,
            keep_bytes=policy.retention.max_bytes, keep_for=policy.retention.max_age,
            threads=threads, max_streams=max_streams, max_client_streams=max_client_streams,
            admins=sorted(admins), cgroups=cgroups,
            handshake_timeout=handshake_timeout, connection_timeout=connection_timeout,
            metrics_listen=(None if metrics_listen is None
                            else f"{metrics_listen[0]}:{metrics_listen[1]}"),
            metrics_per_client=metrics_per_client,
            crl=self.certificates.checks_revocation, executor=executor,
            **self.resources.describe(),
        )

        def pool_for(name: str) -> JobPool:
            def finished(status: JobStatus) -> None:
                self.api.job_finished(name, status)

            return JobPool(policy.backend, policy.options(policy.backend), cgroups=cgroups,
                           state_dir=state.client_dir(name), retention=policy.retention,
                           on_finished=finished, executor=executor,
                           executor_options=executor_options, owner=name)

        self.api = JobApi(policy, admins=admins,
                          limits=TenantLimits(
                              max_jobs=max_jobs, max_streams=max_streams,
                              max_client_streams=max_client_streams,
                              stream_idle_timeout=stream_idle_timeout),
                          pool_factory=pool_for, audit=self.audit, metrics=self.metrics,
                          resources=self.resources)
        try:
            #: Jobs (``CN/ID``) a previous server left running, now killed and lost.
            self.recovered = self.api.open_tenants(self.state.client_names())
        except BaseException:
            self.api.close()
            self.audit.close()
            self.state.close()
            raise
        for lost in self.recovered:
            owner, _, job_id = lost.rpartition("/")
            self.audit.event("job.finished", cn=owner, job=job_id, state="lost",
                             reason=LOST_MESSAGE)
        self._metrics_listen = metrics_listen
        self._metrics_listener: MetricsListener | None = None
        if self.recovered:
            log.warning("killed %d job(s) left running by a previous server: %s",
                        len(self.recovered), ", ".join(self.recovered))
        server = CherootServer(
            (host, port), self.api, numthreads=threads, max=threads,
            timeout=connection_timeout, shutdown_timeout=SHUTDOWN_TIMEOUT,
            request_queue_size=128,
        )
        server.ssl_adapter = self.adapter
        # Idle keep-alive connections cost a file descriptor, not a thread.
        server.keep_alive_conn_limit = threads * 4
        self._server = server
        self._thread: threading.Thread | None = None
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._stopping = threading.Event()
        self._stopped_serving = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        """The address listened on (the real port once started with port 0)."""
        bound: Any = self._server.bind_addr
        return str(bound[0]), int(bound[1])

    @property
    def url(self) -> str:
        host, port = self.address
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where the metrics listener listens, once started (None without one)."""
        return None if self._metrics_listener is None else self._metrics_listener.address

    def start(self) -> None:
        """Bind, listen and serve in a background thread; return once listening.

        Raises ``OSError`` when an address cannot be bound or the audit log
        cannot be written (then nothing is served).
        """
        self._server.prepare()  # binds: raises OSError (address in use, ...) here
        try:
            if self._metrics_listen is not None:
                self._metrics_listener = MetricsListener(self.metrics, *self._metrics_listen)
                host, port = self._metrics_listener.address
                self.config["metrics_listen"] = f"{host}:{port}"
            host, port = self.address
            self.config["listen"] = f"{host}:{port}"
            if self.audit.log is not None:
                self.audit.log.record("server.started", config=self.config,
                                      version=__version__, pid=os.getpid())
        except BaseException:
            self._server.stop()
            if self._metrics_listener is not None:
                self._metrics_listener.stop()
            raise
        self._thread = threading.Thread(target=self._serve, name="jobkit-server", daemon=True)
        self._thread.start()
        # The shutdown's watchdog is started now, not at shutdown: a server
        # stopping because the machine ran out of processes could not start
        # a thread then, and would hang half-stopped with its jobs running.
        self._cutoff = threading.Thread(target=self._cut_off_stragglers,
                                        name="jobkit-shutdown-watchdog", daemon=True)
        self._cutoff.start()

    def _cut_off_stragglers(self) -> None:
        # cheroot's stop() waits for busy workers, then only shuts down the
        # read side of their sockets, which does not wake one blocked sending
        # to a client that stopped reading (a big response, a follow stream).
        # Cut every connection shortly before cheroot's own deadline.
        self._stopping.wait()
        if not self._stopped_serving.wait(max(0.1, SHUTDOWN_TIMEOUT - 0.5)):
            self.adapter.abort_connections()

    def _serve(self) -> None:
        try:
            self._server.serve()
        except Exception:
            log.exception("the server stopped on an error")

    def reload_certificates(self, trigger: str = "api") -> Reload:
        """Read the certificate, key, CA bundle and CRL again; keep the old ones on failure.

        New connections use the new ones; established connections and jobs
        are not touched.  Audited as ``certs.reloaded``.
        """
        return self.certificates.reload(trigger)

    def _reloaded(self, result: Reload) -> None:
        self.metrics.certificates_reloaded(result.ok)
        fields = {} if result.reason is None else {"reason": result.reason}
        self.audit.event("certs.reloaded", trigger=result.trigger, ok=result.ok,
                         files=list(result.files), **fields)

    def _refused(self, reason: str, peer: Peer) -> None:
        self.metrics.handshake_refused(reason)
        self.audit.event("auth.refused", reason=reason, peer=peer.address)

    def stop(self, reason: str | None = None) -> None:
        """Stop serving and kill every job; see the module docstring for the order.

        ``reason`` (``SIGTERM``...) goes to the audit log's ``server.stopped``.
        """
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self.api.begin_shutdown()
        self.adapter.abort_handshakes()
        self._stopping.set()  # see _cut_off_stragglers
        try:
            self._server.stop()
        finally:
            self._stopped_serving.set()
            self.api.close()  # whatever happened above: every job is killed
            if self._metrics_listener is not None:
                self._metrics_listener.stop()
            self.audit.event("server.stopped", config=self.config,
                             **({} if reason is None else {"reason": reason}))
            self.audit.close()
            self.state.close()
        if self._thread is not None:
            self._thread.join(SHUTDOWN_TIMEOUT + CONNECTION_TIMEOUT)

    def __enter__(self) -> JobServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def run_until_signalled(self, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
                            reload: Iterable[int] = (signal.SIGHUP,)) -> int:
        """Serve until one of ``signals`` arrives, then `stop`; return that signal.

        Each of ``reload`` reloads the certificates (`reload_certificates`)
        and serving goes on.  Must be called from the main thread (signal
        handlers live there).  A second stop signal while stopping is left
        to its default action, so a second Ctrl-C ends a shutdown that hangs.
        """
        received: list[int] = []
        reloads: list[int] = []
        wake = threading.Event()

        def handler(signum: int, frame: FrameType | None) -> None:
            received.append(signum)
            wake.set()

        def reload_handler(signum: int, frame: FrameType | None) -> None:
            reloads.append(signum)  # done by the loop below, not in the handler
            wake.set()

        previous = {signum: signal.signal(signum, handler) for signum in signals}
        previous.update({signum: signal.signal(signum, reload_handler) for signum in reload})
        try:
            if self._thread is None:
                self.start()
            while not received:
                if wake.wait(1.0):
                    wake.clear()
                while reloads:
                    self.reload_certificates(signal_name(reloads.pop()))
                if self._thread is not None and not self._thread.is_alive():
                    break  # serving ended on its own (an error, logged)
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
            self.stop(signal_name(received[0]) if received else "serving ended")
        return received[0] if received else 0


