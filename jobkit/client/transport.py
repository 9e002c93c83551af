"""HTTPS connections to one jobkit server: mutual TLS 1.3, keep-alive, error translation.

Built on the standard library's ``http.client`` and ``ssl`` only: they start
fast, speak exactly the HTTP/1.1 jobkit's API needs (keep-alive, chunked
streaming) and leave TLS to OpenSSL with no trust store we did not ask for.

Every network failure leaves this module as one of the client errors of
`jobkit.core.errors`, in one place (`translate_error`):

* the server cannot be reached, or the connection broke: `ConnectionFailed`;
* TLS failed: the server refused our certificate (with TLS 1.3 that arrives as
  an alert on the first read, after the handshake looked fine to us), or we
  refused the server's: `AuthenticationFailed`.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import threading

from jobkit._version import __version__
from jobkit.core.errors import AuthenticationFailed, ClientError, ConnectionFailed
from jobkit.pki.layout import client_files

__all__ = ["Reply", "Transport", "load_tls_context", "translate_error"]

#: Idle keep-alive connections kept per client (more are closed when returned).
MAX_IDLE = 4

_USER_AGENT = f"jobkit/{__version__}"
# Requests that may be sent twice: the retry after a dropped keep-alive
# connection cannot tell whether the server saw the first attempt.
_RETRYABLE = frozenset({"GET", "HEAD", "DELETE"})
# What a keep-alive connection the server closed while idle looks like.
_DROPPED = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


def load_tls_context(folder: str | os.PathLike[str]) -> ssl.SSLContext:
    """A TLS 1.3-only client context from a client folder (``ca.pem``, ``cert.pem``, ``key.pem``).

    Only ``ca.pem`` is trusted (the system's store is never loaded) and the
    server's certificate must name the host we connect to.  Raises
    ``FileNotFoundError`` / ``NotADirectoryError`` / ``PermissionError`` naming the
    missing or unreadable folder or file, and ``ValueError`` for a file that is
    not a usable certificate or key.
    """
    ca, cert, key = client_files(folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks host names
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as error:
        raise ValueError(f"{ca} is not a usable CA certificate: {_reason(error)}") from None
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise ValueError(f"{cert} and {key} are not a usable certificate and key: "
                         f"{_reason(error)}") from None
    return context


def _reason(error: ssl.SSLError) -> str:
    reason = error.reason or ""
    if reason:
        return reason.lower().replace("_", " ")
    return str(error)


def translate_error(error: BaseException, address: str, *, reading: bool = False) -> ClientError:
    """The client error for a network ``error`` met talking to ``address``.

    ``reading`` says the connection was up (so a reset means it broke, rather
    than that nobody listens).
    """
    if isinstance(error, ClientError):
        return error
    if isinstance(error, ssl.SSLCertVerificationError):
        why = error.verify_message or _reason(error)
        return AuthenticationFailed(f"refusing the server at {address}: its certificate "
                                    f"is not trusted by our ca.pem ({why})")
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        if "PROTOCOL_VERSION" in reason or reason == "UNSUPPORTED_PROTOCOL":
            return AuthenticationFailed(f"the server at {address} does not speak TLS 1.3")
        if "ALERT" in reason:
            alert = reason.partition("ALERT_")[2].lower().replace("_", " ")
            return AuthenticationFailed(
                f"the server at {address} refused our client certificate ({alert})"
            )
        if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            return ConnectionFailed(f"{address} does not speak TLS: is it a jobkit server?")
        if isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return ConnectionFailed(f"the server at {address} closed the connection")
        return ConnectionFailed(f"TLS failed with {address}: {_reason(error)}")
    if isinstance(error, TimeoutError):
        doing = "waiting for" if reading else "connecting to"
        return ConnectionFailed(f"timed out {doing} the server at {address}")
    if isinstance(error, socket.gaierror):
        return ConnectionFailed(f"cannot connect to {address}: cannot resolve the host name "
                                f"({error.strerror})")
    if isinstance(error, ConnectionRefusedError):
        return ConnectionFailed(f"cannot connect to {address}: connection refused "
                                f"(is 'jobkit serve' running there?)")
    if isinstance(error, http.client.RemoteDisconnected):
        return ConnectionFailed(f"the server at {address} closed the connection "
                                f"without answering")
    if isinstance(error, http.client.IncompleteRead):
        return ConnectionFailed(f"lost the connection to the server at {address} "
                                f"in the middle of a response")
    if isinstance(error, http.client.HTTPException):
        return ConnectionFailed(f"bad HTTP from the server at {address}: "
                                f"{type(error).__name__} {error}".rstrip())
    if isinstance(error, OSError):
        what = error.strerror or str(error) or type(error).__name__
        if reading:
            return ConnectionFailed(f"lost the connection to the server at {address}: {what}")
        return ConnectionFailed(f"cannot connect to {address}: {what}")
    return ConnectionFailed(f"talking to {address} failed: {error!r}")


class Reply:
    """One response: ``status``, ``headers`` and, unless streamed, the ``body``.

    For a streamed reply, ``response`` is the open ``HTTPResponse`` and the
    caller must `Transport.finish` it.
    """

    __slots__ = ("body", "connection", "headers", "response", "status")

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes,
                 response: http.client.HTTPResponse | None = None,
                 connection: http.client.HTTPSConnection | None = None) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.response = response
        self.connection = connection


class Transport:
    """Keep-alive HTTPS connections to one server, safe to share between threads.

    A request takes an idle connection (or opens one), and gives it back when
    the response was read to its end.  An idle connection the server closed
    (its keep-alive timeout) is noticed before reuse; one that drops the
    request anyway is replaced and the request sent again, once, when the
    method is safe to repeat (GET, HEAD, DELETE).
    """

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.timeout = timeout
        self._context = context
        self._idle: list[http.client.HTTPSConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- connections ----------------------------------------------------------------

    def _connect(self) -> http.client.HTTPSConnection:
        connection = http.client.HTTPSConnection(self.host, self.port, context=self._context,
                                                 timeout=self.timeout)
        try:
            connection.connect()  # TCP and the TLS handshake, with the server checked
        except Exception as error:
            connection.close()
            raise translate_error(error, self.address) from None
        except BaseException:
            connection.close()
            raise
        sock = connection.sock
        if sock is not None:
            # Requests go out in one write; do not let Nagle hold them back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _take(self) -> tuple[http.client.HTTPSConnection, bool]:
        """An idle connection that still looks alive, else a new one; and whether it is new."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._connect(), True
            sock = connection.sock
            if sock is not None and not _readable(sock):
                return connection, False
            # Readable while idle: the server closed it (or sent junk). Drop it.
            connection.close()

    def _give_back(self, connection: http.client.HTTPSConnection) -> None:
        if connection.sock is None:
            return
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close the idle connections; later requests open new ones."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # -- requests -------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None, *,
                stream: bool = False) -> Reply:
        """Send one request; return the whole reply, or its open response if ``stream``.

        Raises `ConnectionFailed` or `AuthenticationFailed`.
        """
        headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        connection, fresh = self._take()
        try:
            response = self._send(connection, method, path, body, headers)
        except _DROPPED as error:
            connection.close()
            if fresh or method not in _RETRYABLE:
                raise self._dropped(error, fresh) from None
            connection, fresh = self._connect(), True
            try:
                response = self._send(connection, method, path, body, headers)
            except Exception as error:
                connection.close()
                raise self._dropped(error, fresh) from None
            except BaseException:
                connection.close()
                raise
        except Exception as error:
            connection.close()
            raise translate_error(error, self.address, reading=True) from None
        except BaseException:
            connection.close()
            raise
        if stream and 200 <= response.status < 300:
            return Reply(response.status, response.headers, b"", response, connection)
        try:
            data = response.read()
        except Exception as error:
            connection.close()
            raise translate_error(error, self.address, reading=True) from None
        except BaseException:
            connection.close()
            raise
        self._give_back(connection)
        return Reply(response.status, response.headers, data)

    def _send(self, connection: http.client.HTTPSConnection, method: str, path: str,
              body: bytes | None, headers: dict[str, str]) -> http.client.HTTPResponse:
        try:
            connection.request(method, path, body, headers)
        except OSError as error:
            # The server may have refused our certificate and closed the
            # connection before we wrote: its alert is then waiting, unread,
            # behind the error the write got.  Read it: it says why.
            raise _pending_alert(connection, min(self.timeout, 1.0)) or error from None
        return connection.getresponse()

    def _dropped(self, error: BaseException, fresh: bool) -> ClientError:
        if fresh and isinstance(error, _DROPPED):
            # A new connection that the server cuts before answering the first
            # request: with TLS 1.3 that is how a refused client certificate can
            # look when the alert itself got lost in the reset.
            return AuthenticationFailed(
                f"the server at {self.address} closed the connection right after the TLS "
                f"handshake: it probably refused our client certificate"
            )
        return translate_error(error, self.address, reading=True)

    def wait_forever(self, reply: Reply) -> None:
        """Let a streamed reply's reads block without a timeout, with TCP keep-alive on.

        A dead server is then noticed in about a minute; `finish` restores the
        connection's timeout before it is reused.
        """
        sock = None if reply.connection is None else reply.connection.sock
        if sock is None:
            return
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)

    def finish(self, reply: Reply, *, reusable: bool) -> None:
        """Done with a streamed reply: keep its connection if ``reusable``, else close it."""
        connection = reply.connection
        reply.connection = None
        if reply.response is not None:
            reusable = reusable and reply.response.isclosed()
        if connection is None:
            return
        if reusable:
            if connection.sock is not None:
                connection.sock.settimeout(self.timeout)  # see `wait_forever`
            self._give_back(connection)
        else:
            connection.close()


def _pending_alert(connection: http.client.HTTPSConnection,
                   timeout: float) -> ssl.SSLError | None:
    """The TLS alert the server sent before closing ``connection``, if there is one."""
    sock = connection.sock
    if sock is None:
        return None
    try:
        sock.settimeout(timeout)
        sock.recv(1)
    except ssl.SSLError as error:
        if "ALERT" in (error.reason or ""):
            return error
    except OSError:
        pass
    return None


def _readable(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
