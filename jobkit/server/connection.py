"""Everything jobkit changes inside cheroot, in one place.

cheroot serves the API; these overrides fix what it does not do the way
jobkit needs:

* `TLS13Adapter` sets TLS up without handshaking in cheroot's accept loop
  (where one silent client would stall every other: cheroot issue 748),
  and hands each request the connection's `Peer`;
* `Connection` takes a worker thread only once the TLS handshake is done
  and a whole request head is buffered (no slowloris can hold threads),
  gives each request a deadline from its first byte, and lets the worker
  that answered a keep-alive request wait a moment for the next one;
* `SocketReader` and `SocketWriter` replace cheroot's ``_pyio``-based
  buffered files, which cost most of a small request's time;
* `Gateway` sends a small response's headers and body in one TLS record,
  closes the connection when the app says ``Connection: close``, and makes
  a long body a `jobkit.server.pump.Transfer`, which `Connection` writes in
  non-blocking turns and `CherootServer` parks in its `ResponsePump`;
* `Request` answers what cheroot refuses by itself as a problem document,
  like every other jobkit error (`jobkit.server.errors.problem_body`);
* `CherootServer` logs through `logging` and uses the classes above.

These lean on cheroot's internals, so ``pyproject.toml`` pins cheroot's major
version, and ``tests/server/test_connection.py`` resolves every name below and
fails loudly when one disappears.  The cheroot names jobkit touches:

* ``cheroot.wsgi.Server``: subclassed; its ``ConnectionClass``, ``gateway``,
  ``error_log``, ``ssl_adapter``, ``keep_alive_conn_limit``, ``timeout``,
  ``protocol``, ``bind_addr``, ``prepare``, ``serve``, ``stop``, ``ready``,
  ``wsgi_app``, ``requests`` (the worker pool: its size bounds the turns at
  streams; a worker lingers for a keep-alive client's next request only
  while its queue is empty), ``process_conn`` (queues a connection for a worker: a woken
  transfer) and ``put_conn`` (where a worker hands a connection back: we
  park an unfinished transfer instead);
* ``cheroot.server.HTTPConnection``: subclassed; its ``RequestHandlerClass``,
  ``communicate``, ``last_used`` (cheroot's connection manager reads it to
  close idle connections, and sets it), ``socket``, ``rfile``, ``wfile`` and
  ``server``;
* ``cheroot.server.HTTPRequest``: subclassed; its ``simple_response``,
  ``close_connection``, ``sent_headers``, ``conn``, ``server``,
  ``ensure_headers_sent``, ``chunked_write`` (a transfer frames the body
  itself) and ``header_reader`` (ours: `HeaderReader`);
* ``cheroot.wsgi.Gateway_10``: subclassed; its ``respond`` (replaced: it
  calls the app as cheroot's does), ``start_response``, ``write``, ``env``
  and ``req``;
* ``cheroot.ssl.Adapter``: subclassed; its ``bind``, ``wrap``,
  ``get_environ`` and ``makefile``;
* ``cheroot.server.ChunkedRFile``: its ``closed``, ``read_trailer_lines``
  (`finish_chunked_body`), ``maxlen`` and the ``IOError('Request Entity Too
  Large')`` its ``read`` raises past it (`cap_chunked_body`);
* ``cheroot.server.HeaderReader``: subclassed (`HeaderReader`); its
  ``__call__`` reads header lines with ``rfile.readline()``;
* ``cheroot.workers.threadpool.ThreadPool``: its ``qsize`` (connections
  waiting for a worker);
* ``cheroot.connections.ConnectionManager``: calls ``has_data`` on our
  `SocketReader` before it parks a connection in its selector;
* ``cheroot.errors.MaxSizeExceeded`` (what a capped chunked body may raise);
* ``cheroot.errors.FatalSSLAlert`` (raised by `jobkit.server.tls.TLSSocket`
  for a failed handshake, which cheroot closes quietly) and
  ``cheroot.errors.socket_errors_to_ignore``.
"""

from __future__ import annotations

import email.utils
import errno
import logging
import os
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from cheroot import errors as cheroot_errors
from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.ssl import Adapter

from jobkit.server.errors import problem_body
from jobkit.server.pump import ResponsePump, Source, Transfer
from jobkit.server.tls import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    PEER_ENVIRON_KEY,
    Peer,
    TLSSocket,
    make_server_context,
)
from jobkit.wire import PROBLEM_MEDIA_TYPE, ProblemKind

__all__ = [
    "KEEP_ALIVE_LINGER",
    "MAX_HEAD",
    "MOST_REQUESTS_A_TURN",
    "CherootServer",
    "Connection",
    "Gateway",
    "HeaderReader",
    "Request",
    "SocketReader",
    "SocketWriter",
    "TLS13Adapter",
    "body_too_large",
    "cap_chunked_body",
    "finish_chunked_body",
]

log = logging.getLogger("jobkit.server")

#: The longest request head waited for whole before a worker takes it.
MAX_HEAD = 64 * 1024
#: A request body up to this size is buffered while the connection waits in
#: cheroot's selector, so trickling it holds no worker thread; a larger one
#: (up to the 1 MiB body limit) is read by the worker, within the request's
#: deadline.  The same size as a head: a parked connection holds at most
#: about two receive buffers.
SELECTOR_BODY = 64 * 1024
#: Seconds a worker that answered a keep-alive request waits for the connection's
#: next request before handing the connection back to cheroot's selector.
KEEP_ALIVE_LINGER = 0.002
#: The most requests of one connection a worker serves in a row (then the connection
#: queues again like any other).
MOST_REQUESTS_A_TURN = 64


# -- the TLS adapter ----------------------------------------------------------------------


class TLS13Adapter(Adapter):
    """cheroot SSL adapter for mutual TLS 1.3 with identity by certificate CN.

    Why not cheroot's ``BuiltinSSLAdapter``: it performs the TLS handshake
    inside cheroot's single accept loop, so one client that connects and
    sends nothing stalls every other client until the socket times out
    (cheroot issue 748); and it reports the client's CN as
    ``SSL_CLIENT_S_DN_CN``, joining several CNs with commas, so a
    certificate with the CNs ``a`` and ``b`` and one with the single CN
    ``a,b`` look alike.  Our `wrap` only sets the TLS state up; `Connection`
    completes the handshake, and `jobkit.server.tls` reads the identity.

    Args:
        certificate: The server's certificate (PEM file).
        private_key: Its private key (PEM file).
        certificate_chain: The CA certificate that client certificates must
            chain to (our ``ca.pem``).  Required: there is no default trust.
        handshake_timeout: Seconds a new connection has to finish the handshake.
        context_source: Returns the context for each new connection (see
            `jobkit.server.certificates`, which reloads it); default: one
            context made from the three files, for good.
        on_refused: Told ``(reason, peer)`` for every connection refused at
            its handshake or for its certificate's CN (not those cut off by
            a shutdown).

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
        context_source: Callable[[], ssl.SSLContext] | None = None,
        on_refused: Callable[[str, Peer], None] | None = None,
    ) -> None:
        if certificate_chain is None:
            raise ValueError("TLS13Adapter needs the CA certificate that signs client certificates")
        if private_key_password is not None:
            raise ValueError("TLS13Adapter does not support encrypted private keys")
        if ciphers is not None:  # set_ciphers does not apply to TLS 1.3 suites
            raise ValueError("TLS 1.3 cipher suites are OpenSSL's defaults; ciphers is unsupported")
        super().__init__(certificate, private_key, certificate_chain, ciphers)
        self._context_source = context_source
        self.context = (make_server_context(certificate, private_key, certificate_chain)
                        if context_source is None else context_source())
        self.handshake_timeout = handshake_timeout
        self.on_refused = on_refused
        self._sockets: weakref.WeakSet[TLSSocket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stopping = False

    def bind(self, sock: socket.socket) -> socket.socket:
        return sock

    def wrap(self, sock: socket.socket) -> tuple[TLSSocket, dict[str, Any]]:
        """Set TLS up on an accepted socket, without handshaking (see `TLSSocket`)."""
        try:
            host, port = sock.getpeername()[:2]
            address = f"{host}:{port}"
        except (OSError, TypeError):
            address = "?"
        if self._context_source is not None:
            self.context = self._context_source()
        try:
            tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as error:
            raise cheroot_errors.FatalSSLAlert(str(error)) from None
        assert isinstance(tls, TLSSocket)
        peer = Peer(address, socket=weakref.ref(tls))
        tls.jobkit_peer = peer
        tls.jobkit_handshake_timeout = self.handshake_timeout
        tls.jobkit_refused = self._refused
        with self._lock:
            self._sockets.add(tls)
        environ = self.get_environ()
        environ[PEER_ENVIRON_KEY] = peer
        return tls, environ

    def _refused(self, reason: str, peer: Peer) -> None:
        # Handshakes cut off by a shutdown are the server's doing, not a refusal.
        if not self._stopping and self.on_refused is not None:
            self.on_refused(reason, peer)

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
        self._stopping = True
        with self._lock:
            pending = [s for s in self._sockets if not s.jobkit_handshake_done]
        for sock in pending:
            sock.abort()
        return len(pending)


# -- reading and writing a connection -----------------------------------------------------


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
        self._scan = _RequestScan()

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
        """Take what the socket has now (up to a whole request), without waiting; True once
        a request is here.

        A request is its head (the request line and headers, up to the blank
        line) and a body of up to `SELECTOR_BODY` bytes.  The end of the
        connection, or a head longer than `MAX_HEAD`, also count as ready:
        cheroot then closes or answers as it should.  A larger body is read
        as it comes, by the worker, within the request's `deadline`.
        """
        if self._eof or self._request_complete():
            return True
        previous = self._sock.gettimeout()
        self._sock.settimeout(0.0)
        try:
            # Only until the head is whole: one more receive would find nothing,
            # which costs a system call and an SSLWantReadError on every request.
            while not self._request_complete():
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
        # What was found of the request at the buffer's front is kept between
        # calls (`_RequestScan`), so each received record costs a look at its
        # own bytes, not the whole request again: a client sending a body in
        # one-byte records must not make the server re-parse it every time.
        scan = self._scan
        if scan.ready:
            return True
        buffer = self._buffer
        if scan.body_start < 0:
            head_end = buffer.find(b"\r\n\r\n", max(0, scan.searched - 3))
            if head_end < 0:
                scan.searched = len(buffer)
                return len(buffer) > MAX_HEAD
            scan.body_start = head_end + 4
            head = bytes(buffer[:scan.body_start]).lower()
            # The API reads no other request's body; a client that waits for
            # "100 Continue" sends its body only once a worker answers that.
            if not head.startswith(_READS_BODY) or b"\nexpect:" in head:
                scan.ready = True
                return True
            scan.length = _content_length(head)
            scan.chunk_at = scan.searched = scan.body_start
        body = len(buffer) - scan.body_start
        if scan.length is not None:
            done = scan.length > SELECTOR_BODY or body >= scan.length
        else:  # chunked
            done = body > SELECTOR_BODY or _chunks_complete(buffer, scan)
        scan.ready = done
        return done

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
        self._scan = _RequestScan()  # the front moved: look at it afresh
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

    def awaits_body(self) -> bool:
        """True while a whole request head is here and its body still arrives
        (in the selector: see `SELECTOR_BODY`)."""
        return (not self.closed and not self._eof and b"\r\n\r\n" in self._buffer
                and not self._request_complete())

    def close(self) -> None:
        # The socket belongs to cheroot's connection, which closes it.
        self.closed = True
        self._buffer.clear()


#: The methods whose body the API reads (`SocketReader` waits for it in the selector).
_READS_BODY = (b"put ", b"post ", b"patch ")


class _RequestScan:
    """How far `SocketReader` got in the request at the front of its buffer."""

    __slots__ = ("body_start", "chunk_at", "chunk_total", "length", "ready", "searched")

    def __init__(self) -> None:
        self.searched = 0  # bytes looked at for the head's end
        self.body_start = -1  # where the body starts, once the head is whole
        self.length: int | None = 0  # Content-Length; None if chunked
        self.chunk_at = 0  # the next chunk's size line
        self.chunk_total = 0  # the bytes of the chunks before it
        self.ready = False


def _content_length(head: bytes) -> int | None:
    """The (lower-cased) head's ``Content-Length`` if it has one that is a number;
    None if chunked; 0 without one, or for what cheroot answers at once (a
    malformed length, another transfer coding)."""
    coding = head.find(b"\ntransfer-encoding:")
    if coding >= 0:
        # Chunked: read in the selector.  Another coding: cheroot refuses it (501) at once.
        return None if b"chunked" in head[coding:head.find(b"\n", coding + 1)] else 0
    at = head.find(b"\ncontent-length:")
    if at < 0:
        return 0
    value = head[at + 16:head.find(b"\n", at + 1)].strip()
    return int(value) if value.isdigit() and len(value) < 12 else 0


def _chunks_complete(buffer: bytearray, scan: _RequestScan) -> bool:
    """True once a chunked body is all here, or is for the worker to answer:
    larger than `SELECTOR_BODY` in all (announced or sent), or malformed.
    Walks on from where the last call stopped (``scan``)."""
    at = scan.chunk_at
    while True:
        line_end = buffer.find(b"\r\n", at, at + 258)
        if line_end < 0:
            return len(buffer) - at > 256  # a size line that long is malformed
        size_text = bytes(buffer[at:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return True
        if size < 0 or scan.chunk_total + size > SELECTOR_BODY:
            return True
        if size == 0:  # the last chunk: then trailers, up to an empty line
            at = line_end + 2
            if buffer.startswith(b"\r\n", at):
                return True
            found = buffer.find(b"\r\n\r\n", max(at, scan.searched - 3))
            scan.searched = len(buffer)  # trailers trickled: only new bytes next time
            return found >= 0
        if len(buffer) < line_end + 2 + size + 2:
            return False  # this chunk is still arriving: look again from its size line
        scan.chunk_total += size
        at = scan.chunk_at = line_end + 2 + size + 2


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

    def take_held(self) -> bytes:
        """Stop holding writes; return what was held, unsent (a `Transfer` sends it)."""
        held, self._held = self._held, None
        return b"".join(held or ())

    def uncork(self) -> None:
        """Send what was held, as one write."""
        held, self._held = self._held, None
        if held:
            self._send(held[0] if len(held) == 1 else b"".join(held))

    def flush(self) -> None:
        self.uncork()

    def close(self) -> None:
        self.closed = True


def cap_chunked_body(rfile: Any, limit: int) -> None:
    """Make cheroot's chunked body reader refuse, before reading, a chunk past ``limit``.

    Without it, a chunk that announces more than the limit is waited for
    until the request's deadline (408) instead of refused at once (413).
    The chunk-size lines count against ``maxlen`` too: allow for them.
    """
    if isinstance(rfile, cheroot_server.ChunkedRFile):
        rfile.maxlen = limit + _CHUNK_LINES_ALLOWANCE


def body_too_large(error: BaseException) -> bool:
    """True if ``error`` is cheroot refusing a chunked body past its ``maxlen``."""
    return isinstance(error, cheroot_errors.MaxSizeExceeded) or (
        type(error) is OSError and error.args == ("Request Entity Too Large",)
    )


#: Bytes of chunk-size lines a capped chunked body may carry besides its data.
_CHUNK_LINES_ALLOWANCE = 64 << 10


class HeaderReader(cheroot_server.HeaderReader):
    """cheroot's header parser, refusing conflicting ``Content-Length`` headers.

    cheroot keeps the last of several; RFC 9112 (6.3) says a request whose
    ``Content-Length`` headers disagree must be refused (400), since a proxy
    in front may have framed it by another.
    """

    def __call__(self, rfile: Any, hdict: Any = None) -> Any:
        recorder = _LengthRecorder(rfile)
        result = super().__call__(recorder, hdict)
        if len(recorder.lengths) > 1:
            raise ValueError("conflicting Content-Length headers")
        return result


class _LengthRecorder:
    """Hands cheroot's header parser the lines of ``rfile``, noting each Content-Length.

    A class of its own, not one made in `HeaderReader.__call__`: making a
    class costs some 6 µs, on every request.
    """

    __slots__ = ("_rfile", "lengths")

    def __init__(self, rfile: Any) -> None:
        self._rfile = rfile
        self.lengths: set[bytes] = set()

    def readline(self, *args: Any) -> bytes:
        line: bytes = self._rfile.readline(*args)
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"content-length":
            self.lengths.add(value.strip())
        return line


def finish_chunked_body(rfile: Any) -> None:
    """Read the trailer section of a chunked body cheroot decoded to its last chunk.

    cheroot's ``ChunkedRFile`` stops after the last chunk and leaves the
    trailer section (at least its final CRLF) unread; the connection would
    then look busy and hold a worker thread, idle, until it times out.
    Anything else is left alone.
    """
    if getattr(rfile, "closed", False) and hasattr(rfile, "read_trailer_lines"):
        for _line in rfile.read_trailer_lines():
            pass


# -- requests, responses, connections -----------------------------------------------------


_date_cache: tuple[int, str] = (0, "")


def _peer_gone(transfer: Transfer) -> bool:
    sock = transfer.sock
    return not isinstance(sock, TLSSocket) or sock.jobkit_peer.connection_gone()


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    second, text = _date_cache
    if second != now:
        text = email.utils.formatdate(now, usegmt=True)
        _date_cache = (now, text)
    return text


class Gateway(wsgi.Gateway_10):
    """cheroot's WSGI gateway, sending the headers with the first body chunk.

    cheroot writes the status line and headers, then each body chunk, as
    separate writes; corking the connection's `SocketWriter` around the
    first chunk makes a small response one TLS record and one system call.
    It also closes the connection when the app's response says so, and
    turns a long body (one whose ``source`` is a `jobkit.server.pump.Source`)
    into a `Transfer` that the connection writes in turns, holding no
    worker while it waits.
    """

    def respond(self) -> None:
        response = self.req.server.wsgi_app(self.env, self.start_response)
        source = getattr(response, "source", None)
        wfile = self.req.conn.wfile
        # ``source is not None`` first: a Protocol's isinstance costs some 10 µs.
        if source is not None and isinstance(source, Source) and isinstance(wfile, SocketWriter):
            self._begin_transfer(response, source, wfile)
            return
        # What cheroot's Gateway.respond does with any other body.
        try:
            for chunk in filter(None, response):
                if not isinstance(chunk, bytes):
                    raise ValueError("WSGI Applications must yield bytes")
                self.write(chunk)
        finally:
            self.req.ensure_headers_sent()
            if hasattr(response, "close"):
                response.close()

    def _begin_transfer(self, response: Any, source: Source, wfile: SocketWriter) -> None:
        req = self.req
        wfile.cork()
        try:
            req.ensure_headers_sent()
        finally:
            head = wfile.take_held()
        # The transfer frames the body and writes its last chunk; cheroot must not.
        chunked, req.chunked_write = req.chunked_write, False
        pump = getattr(req.server, "pump", None)
        req.conn.jobkit_transfer = Transfer(
            req.conn.socket, source, head=head, chunked=chunked,
            keep_alive=not req.close_connection, count=response.count, close=response.close,
            large_buffers=None if pump is None else pump.large_buffers,
            client=getattr(getattr(req.conn.socket, "jobkit_peer", None), "common_name", None)
            or "-")

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


def closing_problem(protocol: str, status: Any, msg: Any = "") -> bytes:
    """A whole problem+json answer that closes the connection (``Connection: close``:
    or a keep-alive client sends its next request into a closed connection)."""
    status = str(status)
    if isinstance(msg, bytes):
        msg = msg.decode("latin-1")
    detail = str(msg or _PLAIN_MESSAGES.get(status[:3], status[4:])).rstrip(".") or status
    code = int(status[:3])
    body = problem_body(ProblemKind.for_status(code), detail, status=code)
    head = (f"{protocol} {status}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: {PROBLEM_MEDIA_TYPE}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


class Request(cheroot_server.HTTPRequest):
    """cheroot's request, answering the errors cheroot handles itself as problems.

    cheroot refuses some requests before the app sees them (a malformed
    request line or header, an unsupported transfer coding, a request that
    times out, ...) with a ``text/plain`` body; every jobkit error is a
    problem document instead, its kind known by the status alone.
    """

    header_reader = HeaderReader()

    def simple_response(self, status: Any, msg: Any = "") -> None:
        # cheroot closes the connection after each of these answers (the rest
        # of the request cannot be trusted); the answer says so.
        self.close_connection = True
        try:
            self.conn.wfile.write(closing_problem(self.server.protocol, status, msg))
        except OSError as error:
            if error.args[0] not in cheroot_errors.socket_errors_to_ignore:
                raise


class Connection(cheroot_server.HTTPConnection):
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

    RequestHandlerClass = Request
    #: The long response being written, between its worker turns (see `Gateway`).
    jobkit_transfer: Transfer | None = None
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

    def close(self) -> None:
        """Close; a request whose body never came whole is answered 408 first.

        Such a request waits in the selector (`SELECTOR_BODY`), not in a
        worker, so it is cheroot closing the connection (its deadline passed,
        or it sat idle) that ends it: the client still learns why, as it
        would from a worker that waited.
        """
        reader, sock = self.rfile, self.socket
        if (isinstance(reader, SocketReader) and self.jobkit_transfer is None
                and reader.awaits_body() and sock.fileno() >= 0):
            try:
                sock.settimeout(0.0)  # a short answer, never waited for
                sock.sendall(closing_problem(self.server.protocol, "408 Request Timeout"))
            except OSError:
                pass  # gone, or not reading: it is closed all the same
        super().close()

    def communicate(self) -> bool:
        if self.jobkit_transfer is not None:  # a worker's turn at a long response
            return self._take_turn(self.jobkit_transfer)
        sock, reader = self.socket, self.rfile
        if not (isinstance(sock, TLSSocket) and isinstance(reader, SocketReader)):
            return self._communicate()
        for _ in range(MOST_REQUESTS_A_TURN):
            keep, served = self._serve(sock, reader)
            if not (keep and served and self.jobkit_transfer is None
                    and self._next_request_soon(sock, reader)):
                return keep
        return True

    def _serve(self, sock: TLSSocket, reader: SocketReader) -> tuple[bool, bool]:
        """Serve the request the connection has, if it is whole; (keep it, served one)."""
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
                    return True, False  # back to the selector until more bytes come
                self._handshake_expires = None
            if not reader.request_ready():
                return now <= self.jobkit_deadline, False  # too slow: closed
        except cheroot_errors.FatalSSLAlert:
            return False, False
        except OSError:
            return False, False  # reset by the peer while we looked
        reader.deadline = self.jobkit_deadline
        try:
            return self._communicate(), True
        finally:
            # The next request gets its own deadline; reads between
            # requests use cheroot's idle timeout.
            reader.deadline = self.jobkit_deadline = None
            # Only if a read changed it: each settimeout is a system call.
            timeout = float(self.server.timeout)
            if sock.fileno() >= 0 and sock.gettimeout() != timeout:
                sock.settimeout(timeout)

    def _next_request_soon(self, sock: TLSSocket, reader: SocketReader) -> bool:
        """True if the client's next request starts within `KEEP_ALIVE_LINGER`.

        A keep-alive client sends its next request a fraction of a
        millisecond after it read the answer; handing the connection back to
        cheroot's selector, to be handed to a worker again when that request
        comes, costs two thread wake-ups and several system calls.  So the
        worker waits that long for it, unless other connections wait for a
        worker.  Only its first bytes are waited for: a head that trickles
        goes back to the selector as before.
        """
        server = self.server
        if not server.ready or server.requests.qsize:
            return False
        if reader.has_data():
            return True
        fd = sock.fileno()
        if fd < 0:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        try:
            return bool(poller.poll(KEEP_ALIVE_LINGER * 1000))
        except OSError:
            return False

    def _communicate(self) -> bool:
        keep: bool = super().communicate()  # type: ignore[no-untyped-call]
        if self.jobkit_transfer is not None:  # the response is a long body: start it
            return self._take_turn(self.jobkit_transfer)
        return keep

    def _take_turn(self, transfer: Transfer) -> bool:
        """Move what is ready of ``transfer``; True to keep the connection.

        Unfinished, the transfer stays with the connection, which cheroot
        hands back through ``put_conn``, where `CherootServer` parks it.
        """
        sock = self.socket
        sock.settimeout(0.0)
        transfer.turn()
        pump = getattr(self.server, "pump", None)
        if pump is not None and transfer.dispatched:
            pump.turn_over(transfer)
        if not transfer.done:
            return True
        self.jobkit_transfer = None
        if pump is not None:
            pump.forget(transfer)
        if sock.fileno() >= 0:
            sock.settimeout(self.server.timeout)
        return transfer.keep_alive


class CherootServer(wsgi.Server):
    """cheroot's WSGI server with the classes above, logging through `logging`.

    It parks a connection whose long response waits in its `ResponsePump`,
    not in cheroot's selector (which waits for requests).
    """

    ConnectionClass = Connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = Gateway
        self.pump = ResponsePump(self.process_conn, write_timeout=float(self.timeout),
                                 peer_gone=_peer_gone,
                                 max_turns=max(1, self.requests.min // 2))

    def prepare(self) -> None:
        super().prepare()
        self.pump.start()

    def put_conn(self, conn: Any) -> None:
        transfer = getattr(conn, "jobkit_transfer", None)
        if transfer is None:
            super().put_conn(conn)
        elif not (self.ready and self.pump.park(transfer, conn)):
            transfer.abandon()  # shutting down
            conn.close()

    def stop(self) -> None:
        super().stop()
        for conn in self.pump.stop():
            try:
                conn.close()
            except OSError:
                pass

    def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        log.log(level, "cheroot: %s", msg, exc_info=traceback)
