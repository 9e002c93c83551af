"""Mutual TLS 1.3 for cheroot: `TLS13Adapter` and the identity of each peer.

Why not cheroot's ``BuiltinSSLAdapter``:

* it performs the TLS handshake inside cheroot's single accept loop, so one
  client that connects and sends nothing stalls every other client until the
  socket times out (cheroot issue 748).  Our `wrap` only sets the TLS state
  up (``do_handshake_on_connect=False``); the handshake happens on the first
  read, in the worker thread that serves the connection, with its own timeout;
* it reports the client's CN as ``SSL_CLIENT_S_DN_CN``, joining several CNs
  with commas, so a certificate with the CNs ``a`` and ``b`` and one with the
  single CN ``a,b`` look alike.  We read the verified peer certificate itself
  with ``cryptography`` and refuse anything but exactly one CN.

The context accepts TLS 1.3 only, requires a client certificate and trusts
only our CA's ``ca.pem``: the system's trust store is never loaded.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import attrs
from cheroot import errors as cheroot_errors
from cheroot.ssl import Adapter
from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "PEER_ENVIRON_KEY",
    "Peer",
    "SocketReader",
    "SocketWriter",
    "TLS13Adapter",
    "TLSSocket",
    "UnacceptableCertificate",
    "common_name",
    "make_server_context",
]

log = logging.getLogger("jobkit.server.tls")

#: Seconds a new connection has to complete its TLS handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 5.0

#: The WSGI environ key under which every request finds its connection's `Peer`.
PEER_ENVIRON_KEY = "jobkit.peer"


class UnacceptableCertificate(ValueError):
    """A verified client certificate that names no client we can serve (not one CN)."""


def common_name(der: bytes) -> str:
    """The single subject CN of the DER certificate ``der``.

    Raises `UnacceptableCertificate` when the subject has no CN, several CNs
    (in one RDN or in several) or an empty one: such a certificate does not
    say who the client is.
    """
    try:
        certificate = x509.load_der_x509_certificate(der)
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as error:
        raise UnacceptableCertificate(f"the client certificate cannot be read: {error}") from None
    if not names:
        raise UnacceptableCertificate("the client certificate has no subject CN")
    if len(names) > 1:
        raise UnacceptableCertificate(
            f"the client certificate has {len(names)} subject CNs; jobkit needs exactly one"
        )
    value = names[0].value
    name = value if isinstance(value, str) else value.decode("utf-8", "replace")
    if not name:
        raise UnacceptableCertificate("the client certificate's subject CN is empty")
    return name


@attrs.define(eq=False)
class Peer:
    """Who is at the other end of one TLS connection.

    One instance per connection, shared by every request on it through the
    WSGI environ (key `PEER_ENVIRON_KEY`).  It is filled in by the worker
    thread that completes the handshake, before any request is parsed.

    Attributes:
        address: The peer's IP address and port, for logs.
        common_name: The client's identity: the single CN of its verified
            certificate; None until the handshake is done or when refused.
        refusal: Why the verified certificate names no client (then the
            server answers every request with 403).
        handshake_done: True once the TLS handshake succeeded.
    """

    address: str
    common_name: str | None = None
    refusal: str | None = None
    handshake_done: bool = False
    _socket: weakref.ref[TLSSocket] | None = attrs.field(default=None, repr=False)

    def connection_gone(self) -> bool:
        """True if the client closed or reset its side of the connection.

        Used by long responses (follow streams) that send nothing for a while:
        a dead client would otherwise only be noticed at the next write.  It
        looks at the kernel socket without reading from it, so nothing the
        client sent is consumed.  A client that only half-closes (shuts down
        its sending side) while still reading counts as gone, which no HTTP
        client does while waiting for a response.
        """
        sock = None if self._socket is None else self._socket()
        if sock is None:
            return True
        try:
            fd = sock.fileno()
        except OSError:
            return True
        if fd < 0:
            return True
        return _peer_closed(fd)

    def abort(self) -> None:
        """Shut the connection down at the TCP level, waking any blocked reader or writer."""
        sock = None if self._socket is None else self._socket()
        if sock is not None:
            sock.abort()


def _peer_closed(fd: int) -> bool:
    rdhup = getattr(select, "POLLRDHUP", 0)
    if rdhup:
        poller = select.poll()
        poller.register(fd, rdhup | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(0))
    # Elsewhere: peek at the kernel buffer; b"" means the peer sent FIN.
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return True
    try:
        probe.setblocking(False)
        return probe.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        probe.close()


class TLSSocket(ssl.SSLSocket):
    """An ``SSLSocket`` that completes its server-side handshake on first use.

    cheroot calls `TLS13Adapter.wrap` in its accept loop; doing the handshake
    there would let one silent client block everyone.  Instead the first
    ``recv_into`` or ``send`` (made by the worker thread serving the
    connection) performs it, bounded by ``handshake_timeout``.  A failed
    handshake raises cheroot's ``FatalSSLAlert``, which cheroot handles by
    closing the connection quietly.
    """

    # Set by TLS13Adapter.wrap right after the socket is made (SSLSocket has
    # no usable __init__, so these cannot be constructor arguments).
    jobkit_peer: Peer
    jobkit_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    jobkit_handshake_done: bool = False

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if not self.jobkit_handshake_done:
            self._finish_handshake()
        return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        if not self.jobkit_handshake_done:
            self._finish_handshake()
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        if not self.jobkit_handshake_done:
            self._finish_handshake()
        return super().send(data, flags)

    def abort(self) -> None:
        """``shutdown(SHUT_RDWR)`` on the TCP socket, safe from any thread.

        ``SSLSocket.shutdown`` would also drop the TLS state under the feet of
        the thread using it; the plain socket's shutdown only wakes it up.
        """
        try:
            socket.socket.shutdown(self, socket.SHUT_RDWR)
        except OSError:
            pass

    def _finish_handshake(self) -> None:
        """The whole handshake, blocking (for callers that skipped `try_handshake`)."""
        timeout = self.jobkit_handshake_timeout
        previous = self.gettimeout()
        self._handshake(timeout if previous is None else min(previous, timeout), None)

    def try_handshake(self, deadline: float) -> bool:
        """One non-blocking step of the handshake: True once it is complete.

        Called by the worker serving the connection whenever bytes arrived
        (see ``_Connection.communicate``), so that a client that stops half
        way through holds a selector slot, never a worker thread.  Raises
        cheroot's ``FatalSSLAlert`` when it fails or ``deadline``
        (``time.monotonic()``) passes.
        """
        return self._handshake(0.0, deadline)

    def _handshake(self, timeout: float, deadline: float | None) -> bool:
        previous = self.gettimeout()
        self.settimeout(timeout)
        failure: BaseException | None = None
        try:
            self.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if deadline is not None and time.monotonic() <= deadline:
                return False
            failure = TimeoutError("timed out")
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            failure = error
        finally:
            if self.fileno() >= 0:
                self.settimeout(previous)
        if failure is not None:
            # Failed handshakes are routine (scanners, wrong certificates,
            # TLS 1.2 clients); log them for the operator, quietly.
            log.info("TLS handshake with %s failed: %s", self.jobkit_peer.address,
                     _describe(failure))
            raise cheroot_errors.FatalSSLAlert(str(failure))
        self._identify_peer()
        return True

    def _identify_peer(self) -> None:
        peer = self.jobkit_peer
        der = self.getpeercert(binary_form=True)
        if der is None:  # cannot happen with CERT_REQUIRED; refuse if it does
            peer.refusal = "no client certificate"
        else:
            try:
                peer.common_name = common_name(der)
            except UnacceptableCertificate as error:
                peer.refusal = str(error)
                log.info("refusing %s: %s", peer.address, error)
        peer.handshake_done = True
        self.jobkit_handshake_done = True


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    return str(error) or type(error).__name__


def make_server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str],
                        ca: str | os.PathLike[str]) -> ssl.SSLContext:
    """The server's ``SSLContext``: TLS 1.3 only, client certificates from ``ca`` required.

    Only ``ca`` is trusted (``load_verify_locations``); the system store is
    never loaded.  OpenSSL checks the client certificate's chain, validity
    dates and extended key usage (clientAuth) during the handshake.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(os.fspath(cert), os.fspath(key))
    context.load_verify_locations(cafile=os.fspath(ca))
    # No session tickets: every connection proves its client certificate
    # again, and the server keeps no resumption state.
    context.num_tickets = 0
    context.sslsocket_class = TLSSocket
    return context


#: The longest request head waited for whole before a worker takes it.
MAX_HEAD = 64 * 1024


class SocketReader:
    """The buffered reader cheroot reads requests with, for one connection.

    cheroot's own ``StreamReader`` is built on ``_pyio`` (the pure-Python io
    module) and reads a request line by line through several layers; this
    one keeps a single buffer and finds lines with ``bytearray.find``, which
    is most of what makes small requests cheap.  It implements what cheroot
    uses: ``read``, ``readline``, iteration, ``has_data``, ``close``,
    ``closed`` and ``bytes_read``.
    """

    #: Bytes asked of the socket per receive (one TLS record is at most 16 KiB).
    RECEIVE_SIZE = 1 << 16

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._eof = False
        self.bytes_read = 0
        self.closed = False
        #: While a request is read: when (``time.monotonic()``) it must be in.
        self.deadline: float | None = None

    def has_data(self) -> bool:
        """True if a request head can be read without waiting for the network.

        cheroot asks this before it parks a connection in its selector: a
        request only partly received must be parked, not handed to a worker
        that would then wait for the rest (a slowloris).
        """
        if self._eof or self._request_complete():
            return True
        pending = getattr(self._sock, "pending", None)  # bytes OpenSSL decrypted already
        return bool(pending is not None and pending())

    def request_ready(self) -> bool:
        """Take what the socket has now, without waiting; True once a request head is here.

        The head is the request line and headers, up to the blank line.  The
        end of the connection, or a head longer than `MAX_HEAD`, also count
        as ready: cheroot then closes or answers as it should.  The body is
        read as it comes, within the request's `deadline`.
        """
        previous = self._sock.gettimeout()
        self._sock.settimeout(0.0)
        try:
            while len(self._buffer) <= MAX_HEAD:
                data = self._sock.recv(self.RECEIVE_SIZE)
                if not data:
                    self._eof = True
                    break
                self._buffer += data
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        finally:
            if self._sock.fileno() >= 0:
                self._sock.settimeout(previous)
        return self._eof or self._request_complete()

    def _request_complete(self) -> bool:
        return b"\r\n\r\n" in self._buffer or len(self._buffer) > MAX_HEAD

    def _fill(self) -> bool:
        if self.deadline is not None:
            # A body trickled a byte at a time must not hold the worker for
            # ever: the request as a whole has a deadline, not just each read.
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")  # cheroot answers 408
            timeout = self._sock.gettimeout()
            if timeout is None or timeout > remaining:
                self._sock.settimeout(remaining)
        data = self._sock.recv(self.RECEIVE_SIZE)
        if not data:
            return False
        self._buffer += data
        return True

    def _take(self, count: int) -> bytes:
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        self.bytes_read += len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all until EOF if negative or None); fewer only at EOF."""
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buffer))
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        """One line, newline included, or at most ``size`` bytes of it."""
        limit = None if size is None or size < 0 else size
        searched = 0
        while True:
            newline = self._buffer.find(b"\n", searched)
            if newline >= 0:
                end = newline + 1
                break
            searched = len(self._buffer)
            if limit is not None and searched >= limit:
                end = limit
                break
            if not self._fill():
                end = searched
                break
        return self._take(end if limit is None else min(end, limit))

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        # The socket belongs to cheroot's connection, which closes it.
        self.closed = True
        self._buffer.clear()


class SocketWriter:
    """The writer cheroot writes responses with: straight to ``sendall``.

    cheroot's ``StreamWriter`` copies every chunk twice (into a buffer, then
    out of it) under a lock; a follow stream sends megabytes a second
    through here, so this one hands the caller's bytes to the socket as
    they are.

    Between `cork` and `uncork` writes are held and then sent as one: the
    server corks around a response's first body chunk so that the headers
    and a small body leave in one TLS record and one system call, instead
    of two (each wakes the client).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._held: list[bytes] | None = None
        self.bytes_written = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        if self._held is not None:
            self._held.append(bytes(data))
        else:
            self._send(data)
        self.bytes_written += len(data)
        return len(data)

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as error:
            # The client went away mid-response (`curl | head`, Ctrl-C).
            # cheroot knows EPIPE as a quiet disconnect; an SSL error it
            # would log as a warning with a traceback, for every client.
            raise BrokenPipeError(errno.EPIPE, f"the client went away: {error}") from None

    def cork(self) -> None:
        """Hold writes until `uncork`."""
        if self._held is None:
            self._held = []

    def uncork(self) -> None:
        """Send what was held, as one write."""
        held, self._held = self._held, None
        if held:
            self._send(held[0] if len(held) == 1 else b"".join(held))

    def flush(self) -> None:
        self.uncork()

    def close(self) -> None:
        self.closed = True


class TLS13Adapter(Adapter):
    """cheroot SSL adapter for mutual TLS 1.3 with identity by certificate CN.

    Args:
        certificate: The server's certificate (PEM file).
        private_key: Its private key (PEM file).
        certificate_chain: The CA certificate that client certificates must
            chain to (our ``ca.pem``).  Required: there is no default trust.
        handshake_timeout: Seconds a new connection has to finish the handshake.

    Each request's environ gets ``wsgi.url_scheme``, ``HTTPS`` and the
    connection's `Peer` under `PEER_ENVIRON_KEY`.
    """

    def __init__(
        self,
        certificate: str | os.PathLike[str],
        private_key: str | os.PathLike[str],
        certificate_chain: str | os.PathLike[str] | None = None,
        ciphers: str | None = None,
        *,
        private_key_password: str | bytes | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        if certificate_chain is None:
            raise ValueError("TLS13Adapter needs the CA certificate that signs client certificates")
        if private_key_password is not None:
            raise ValueError("TLS13Adapter does not support encrypted private keys")
        if ciphers is not None:  # set_ciphers does not apply to TLS 1.3 suites
            raise ValueError("TLS 1.3 cipher suites are OpenSSL's defaults; ciphers is unsupported")
        super().__init__(certificate, private_key, certificate_chain, ciphers)
        self.context = make_server_context(certificate, private_key, certificate_chain)
        self.handshake_timeout = handshake_timeout
        self._sockets: weakref.WeakSet[TLSSocket] = weakref.WeakSet()
        self._lock = threading.Lock()

    def bind(self, sock: socket.socket) -> socket.socket:
        return sock

    def wrap(self, sock: socket.socket) -> tuple[TLSSocket, dict[str, Any]]:
        """Set TLS up on an accepted socket, without handshaking (see `TLSSocket`)."""
        try:
            host, port = sock.getpeername()[:2]
            address = f"{host}:{port}"
        except (OSError, TypeError):
            address = "?"
        try:
            tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as error:
            raise cheroot_errors.FatalSSLAlert(str(error)) from None
        assert isinstance(tls, TLSSocket)
        peer = Peer(address, socket=weakref.ref(tls))
        tls.jobkit_peer = peer
        tls.jobkit_handshake_timeout = self.handshake_timeout
        with self._lock:
            self._sockets.add(tls)
        environ = self.get_environ()
        environ[PEER_ENVIRON_KEY] = peer
        return tls, environ

    def get_environ(self) -> dict[str, Any]:
        return {"wsgi.url_scheme": "https", "HTTPS": "on"}

    def makefile(self, sock: socket.socket, mode: str = "r", bufsize: int = -1) -> Any:
        if "r" in mode:
            return SocketReader(sock)
        return SocketWriter(sock)

    def abort_connections(self) -> int:
        """Shut down every connection still open; return how many.

        The last step of a shutdown: it wakes worker threads blocked sending
        to a client that stopped reading, which nothing else would.
        """
        with self._lock:
            open_sockets = [s for s in self._sockets if s.fileno() >= 0]
        for sock in open_sockets:
            sock.abort()
        return len(open_sockets)

    def abort_handshakes(self) -> int:
        """Shut down every connection still in its handshake; return how many.

        Called at shutdown so that silent clients do not hold worker threads
        for the whole handshake timeout.
        """
        with self._lock:
            pending = [s for s in self._sockets if not s.jobkit_handshake_done]
        for sock in pending:
            sock.abort()
        return len(pending)
