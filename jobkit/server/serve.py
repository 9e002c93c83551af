"""Running the API: `JobServer` puts `JobApi` on cheroot with `TLS13Adapter`.

Shutdown order matters, and `JobServer.stop` owns it:

1. the app refuses new follow streams and ends the open ones (a response
   generator that never ends would make cheroot's ``stop()`` wait forever);
2. connections still in their TLS handshake are shut down, so silent
   clients do not hold worker threads for the handshake timeout;
3. cheroot stops: no more connections, in-flight responses finish; any
   still running after `SHUTDOWN_TIMEOUT` (a client that stopped reading)
   have their connections cut;
4. every client's pool is closed: every job is killed and reaped.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

from cheroot import errors as cheroot_errors
from cheroot import server as cheroot_server
from cheroot import wsgi

from jobkit.core.ledger import Ledger
from jobkit.core.pool import JobPool
from jobkit.pki.layout import CA_FILE, CERT_FILE, KEY_FILE, server_dir
from jobkit.server.app import DEFAULT_MAX_JOBS, JobApi, Limits
from jobkit.server.tls import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    SocketReader,
    SocketWriter,
    TLS13Adapter,
    TLSSocket,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_THREADS",
    "JobServer",
    "default_state_dir",
    "parse_listen",
]

log = logging.getLogger("jobkit.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8443
#: Worker threads; half of them may serve follow streams (see `Limits.for_threads`).
DEFAULT_THREADS = 64
#: Seconds a connection may sit idle (keep-alive), or stall a read or a write; also
#: what a request (its TLS handshake included) has from its first byte to its last.
CONNECTION_TIMEOUT = 10
#: Seconds cheroot waits for in-flight requests at shutdown before cutting them off.
SHUTDOWN_TIMEOUT = 2


def default_state_dir(host: str, port: int) -> Path | None:
    """``$XDG_STATE_HOME/jobkit/serve-HOST-PORT``: one ledger per listen address.

    Two live servers cannot listen on one address, so they never share it;
    a server restarted on the same address finds its predecessor's jobs.
    None for port 0, whose address changes every run.
    """
    if port == 0:
        return None
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    safe_host = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
    return root / "jobkit" / f"serve-{safe_host}-{port}"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``PORT`` -> ``(host, port)``.

    A missing host means `DEFAULT_HOST`.  Raises ``ValueError`` with a
    message for people.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, like [::1]:8443")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return host or DEFAULT_HOST, int(port_text)


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    second, text = _date_cache
    if second != now:
        text = email.utils.formatdate(now, usegmt=True)
        _date_cache = (now, text)
    return text


class _Gateway(wsgi.Gateway_10):
    """cheroot's WSGI gateway, sending the headers with the first body chunk.

    cheroot writes the status line and headers, then each body chunk, as
    separate writes; corking the connection's `SocketWriter` around the
    first chunk makes a small response one TLS record and one system call.
    It also closes the connection when the app's response says so.
    """

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        # The app says "Connection: close" when the rest of the request cannot
        # be found in the stream (a malformed or unfinished body); cheroot
        # would otherwise read on, taking leftovers for the next request.
        if any(name.lower() == "connection" and value.lower() == "close"
               for name, value in headers):
            self.req.close_connection = True
        # cheroot formats the Date header anew for every response; one
        # formatting per second is enough.
        headers = [*headers, ("Date", _http_date())]
        return super().start_response(status, headers, exc_info)

    def write(self, chunk: bytes) -> None:
        wfile = self.req.conn.wfile
        if self.req.sent_headers or not isinstance(wfile, SocketWriter):
            super().write(chunk)
            return
        wfile.cork()
        try:
            super().write(chunk)
        finally:
            wfile.uncork()


#: Messages for the errors cheroot answers without one.
_PLAIN_MESSAGES = {
    "408": "timed out waiting for the request",
    "501": "unsupported Transfer-Encoding: only chunked is accepted",
    "503": "the server is too busy; try again later",
}


class _Request(cheroot_server.HTTPRequest):
    """cheroot's request, answering the errors cheroot handles itself in JSON.

    cheroot refuses some requests before the app sees them (a malformed
    request line or header, an unsupported transfer coding, a request that
    times out, ...) with a ``text/plain`` body; every jobkit error is
    ``{"error": ...}`` instead.
    """

    def simple_response(self, status: Any, msg: Any = "") -> None:
        status = str(status)
        if isinstance(msg, bytes):
            msg = msg.decode("latin-1")
        message = str(msg or _PLAIN_MESSAGES.get(status[:3], status[4:])).rstrip(".") or status
        body = json.dumps({"error": message}).encode()
        lines = [
            f"{self.server.protocol} {status}\r\n",
            f"Content-Length: {len(body)}\r\n",
            "Content-Type: application/json\r\n",
        ]
        # cheroot closes the connection after each of these answers (the rest
        # of the request cannot be trusted); say so, or a keep-alive client
        # sends its next request into a closed connection.
        self.close_connection = True
        lines.append("Connection: close\r\n\r\n")
        try:
            self.conn.wfile.write("".join(lines).encode("latin-1") + body)
        except OSError as error:
            if error.args[0] not in cheroot_errors.socket_errors_to_ignore:
                raise


class _Connection(cheroot_server.HTTPConnection):
    """A connection that takes a worker thread only when a request is ready.

    cheroot hands a connection to a worker as soon as a byte arrives, and
    the worker then blocks until the request is complete: as many clients
    as threads, each trickling a handshake or a header a byte a second,
    would stall everyone (a slowloris).  Here each turn of a worker only
    takes what the socket has: until the TLS handshake is done and a whole
    request is buffered, the connection goes back to cheroot's selector,
    holding no thread.  Each request (the handshake included) must be
    complete within the connection timeout of its first byte, however it trickles:
    a request head never holds a thread while it arrives, a body holds one
    for at most that long.
    """

    RequestHandlerClass = _Request
    jobkit_deadline: float | None = None
    _handshake_expires: float | None = None  # time.time(), as cheroot's last_used
    _handshake_deadline: float = 0.0  # the same, in time.monotonic()
    _last_used: float = 0.0

    @property
    def last_used(self) -> float:
        """When cheroot last parked it; cheroot closes it ``server.timeout`` after.

        While the TLS handshake is unfinished, this says "long ago" enough
        for cheroot to close the connection when the handshake timeout ends
        (a client that connects and never speaks holds only a descriptor, and
        not for long).
        """
        if self._handshake_expires is None:
            return self._last_used
        idle_timeout = float(self.server.timeout)
        return min(self._last_used, self._handshake_expires - idle_timeout)

    @last_used.setter
    def last_used(self, value: float) -> None:
        self._last_used = value

    def communicate(self) -> bool:
        sock, reader = self.socket, self.rfile
        if isinstance(sock, TLSSocket) and isinstance(reader, SocketReader):
            now = time.monotonic()
            if self.jobkit_deadline is None:
                self.jobkit_deadline = now + float(self.server.timeout)
            try:
                if not sock.jobkit_handshake_done:
                    timeout = sock.jobkit_handshake_timeout
                    if self._handshake_expires is None:  # from its first turn on
                        self._handshake_expires = time.time() + timeout
                        self._handshake_deadline = now + timeout
                    if not sock.try_handshake(self._handshake_deadline):
                        return True  # back to the selector until more bytes come
                    self._handshake_expires = None
                if not reader.request_ready():
                    return now <= self.jobkit_deadline  # too slow: closed
            except cheroot_errors.FatalSSLAlert:
                return False
            except OSError:
                return False  # reset by the peer while we looked
            reader.deadline = self.jobkit_deadline
            try:
                return self._communicate()
            finally:
                # The next request gets its own deadline; reads between
                # requests use cheroot's idle timeout.
                reader.deadline = self.jobkit_deadline = None
                if sock.fileno() >= 0:
                    sock.settimeout(self.server.timeout)
        return self._communicate()

    def _communicate(self) -> bool:
        keep: bool = super().communicate()  # type: ignore[no-untyped-call]
        return keep


class _CherootServer(wsgi.Server):
    """cheroot's WSGI server, logging through `logging` instead of raw stderr."""

    ConnectionClass = _Connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = _Gateway

    def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        log.log(level, "cheroot: %s", msg, exc_info=traceback)


class JobServer:
    """jobkit's HTTPS server: the API on cheroot with mutual TLS 1.3.

    Args:
        certs: A folder made by ``jobkit certs init``, or its ``server/``
            subfolder (``ca.pem``, ``cert.pem``, ``key.pem``).
        host, port: Where to listen; port 0 picks a free port (see `address`).
        backend: The output backend for jobs.
        threads: Worker threads (fixed).  Half may serve follow streams.
        admins: CNs that may act on every client's jobs.
        max_jobs: Live jobs per client (0: no limit).
        handshake_timeout: Seconds a new connection has to finish its TLS handshake.
        connection_timeout: Seconds a connection may idle, or stall a read or write.
        cgroups: For every client's pool: None (default) gives each job its
            own cgroup where this process may create them, so that stop and
            delete reach processes that left the job's session; see `JobPool`.
        state_dir: A folder for the crash-recovery `Ledger`: the jobs a
            previous server left there (it was killed with SIGKILL, say) are
            killed now, and this server records its own.  Only one live
            server may use a folder (`LedgerInUse` otherwise).  None: no ledger.

    Use `start` / `stop` (or ``with``), or `run_until_signalled`.
    """

    def __init__(
        self,
        certs: str | os.PathLike[str],
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        backend: str = "memory",
        threads: int = DEFAULT_THREADS,
        admins: Iterable[str] = (),
        max_jobs: int = DEFAULT_MAX_JOBS,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        connection_timeout: int = CONNECTION_TIMEOUT,
        cgroups: bool | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if threads < 2:
            raise ValueError("a server needs at least 2 worker threads")
        folder = server_dir(certs)
        self.certs = folder
        self.adapter = TLS13Adapter(
            folder / CERT_FILE, folder / KEY_FILE, folder / CA_FILE,
            handshake_timeout=handshake_timeout,
        )
        # After the certificates were read, so that bad --certs neither kill
        # anything nor hold the folder.
        self.ledger = None if state_dir is None else Ledger(state_dir)
        #: Process groups of the previous run that this server killed.
        self.recovered: list[int] = []
        if self.ledger is not None:
            self.recovered = self.ledger.recover()
            if self.recovered:
                log.warning(
                    "killed %d job(s) left running by a previous server: process groups %s",
                    len(self.recovered), ", ".join(map(str, self.recovered)),
                )
        ledger = self.ledger
        self.api = JobApi(backend, admins=admins,
                          limits=Limits.for_threads(threads, max_jobs=max_jobs),
                          pool_factory=lambda: JobPool(backend, cgroups=cgroups, ledger=ledger))
        server = _CherootServer(
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

    def start(self) -> None:
        """Bind, listen and serve in a background thread; return once listening."""
        self._server.prepare()  # binds: raises OSError (address in use, ...) here
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

    def stop(self) -> None:
        """Stop serving and kill every job; see the module docstring for the order."""
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
        if self.ledger is not None:
            self.ledger.close()
        if self._thread is not None:
            self._thread.join(SHUTDOWN_TIMEOUT + CONNECTION_TIMEOUT)

    def __enter__(self) -> JobServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def run_until_signalled(self, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)
                            ) -> int:
        """Serve until one of ``signals`` arrives, then `stop`; return that signal.

        Must be called from the main thread (signal handlers live there).  A
        second signal while stopping is left to its default action, so a
        second Ctrl-C ends a shutdown that hangs.
        """
        received: list[int] = []
        wake = threading.Event()

        def handler(signum: int, frame: FrameType | None) -> None:
            received.append(signum)
            wake.set()

        wanted = list(signals)
        previous = {signum: signal.signal(signum, handler) for signum in wanted}
        try:
            if self._thread is None:
                self.start()
            while not wake.wait(1.0):
                if self._thread is not None and not self._thread.is_alive():
                    break  # serving ended on its own (an error, logged)
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
            self.stop()
        return received[0] if received else 0

