"""Mutual TLS 1.3: the server's context, its sockets, and who each peer is.

The context accepts TLS 1.3 only, requires a client certificate and trusts
only our CA's ``ca.pem``: the system's trust store is never loaded.  Its
sockets (`TLSSocket`) are set up without a handshake; the handshake happens
later, in non-blocking steps, in the worker serving the connection (see
`jobkit.server.connection`, which plugs all this into cheroot).

A client's identity is the single CN of its verified certificate, read from
the certificate itself with ``cryptography`` (not from a text rendering of
the subject, where ``CN=a,b`` and two CNs ``a`` and ``b`` look alike);
anything but exactly one CN is refused (`common_name`).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import time
import weakref
from collections.abc import Callable

import attrs
from cheroot import errors as cheroot_errors
from cryptography import x509
from cryptography.x509.oid import NameOID

from jobkit.pki.trust import apply_crl

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "PEER_ENVIRON_KEY",
    "Peer",
    "TLSSocket",
    "UnacceptableCertificate",
    "common_name",
    "make_server_context",
    "refusal_reason",
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
    """

    address: str
    common_name: str | None = None
    refusal: str | None = None
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
    """An ``SSLSocket`` whose server-side handshake is done in non-blocking steps.

    cheroot accepts connections in one loop; a handshake there would let one
    silent client block everyone.  So the socket is made without a
    handshake, and the worker serving the connection calls `try_handshake`
    each time bytes arrive (`jobkit.server.connection.Connection`), until it
    is done and the peer identified; in between, the connection holds no
    thread.  Nothing reads or writes the socket before that: every request
    is read, and every answer written, only once ``jobkit_handshake_done``
    (were it otherwise, OpenSSL would handshake implicitly, the `Peer` would
    stay unidentified, and every request would be refused with 403).
    """

    # Set by TLS13Adapter.wrap right after the socket is made (SSLSocket has
    # no usable __init__, so these cannot be constructor arguments).
    jobkit_peer: Peer
    jobkit_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    jobkit_handshake_done: bool = False
    #: Told ``(reason, peer)`` when the connection is refused (audit log, metrics).
    jobkit_refused: Callable[[str, Peer], None] | None = None

    def abort(self) -> None:
        """``shutdown(SHUT_RDWR)`` on the TCP socket, safe from any thread.

        ``SSLSocket.shutdown`` would also drop the TLS state under the feet of
        the thread using it; the plain socket's shutdown only wakes it up.
        """
        try:
            socket.socket.shutdown(self, socket.SHUT_RDWR)
        except OSError:
            pass

    def try_handshake(self, deadline: float) -> bool:
        """One non-blocking step of the handshake: True once it is complete.

        Called by the worker serving the connection whenever bytes arrived,
        so that a client that stops half way through holds a selector slot,
        never a worker thread.  Raises cheroot's ``FatalSSLAlert`` (which
        cheroot answers by closing the connection quietly) when it fails or
        ``deadline`` (``time.monotonic()``) passes.
        """
        previous = self.gettimeout()
        self.settimeout(0.0)
        failure: BaseException | None = None
        try:
            self.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if time.monotonic() <= deadline:
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
            reason = refusal_reason(failure)
            log.info("TLS handshake with %s failed: %s", self.jobkit_peer.address, reason)
            self._refused(reason)
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
                self._refused(str(error))
        self.jobkit_handshake_done = True

    def _refused(self, reason: str) -> None:
        if self.jobkit_refused is not None:
            try:
                self.jobkit_refused(reason, self.jobkit_peer)
            except Exception:  # an observer must never break the connection's handling
                log.exception("reporting a refused connection failed")


def refusal_reason(error: BaseException) -> str:
    """Why a handshake failed, in a few words from a small set (a log, a metric's label).

    What OpenSSL said about the client's certificate (``certificate
    revoked``, ``certificate has expired``, ``unable to get local issuer
    certificate``), else the TLS error's reason (``tlsv13 alert certificate
    required``, ``wrong version number``), ``timed out``, or the system's
    words for a socket error (``connection reset by peer``).
    """
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return str(error.verify_message)
    if isinstance(error, ssl.SSLError):
        if error.reason:
            return str(error.reason).lower().replace("_", " ")
        return type(error).__name__
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno).lower()
    return type(error).__name__


def make_server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str],
                        ca: str | os.PathLike[str],
                        crl: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """The server's ``SSLContext``: TLS 1.3 only, client certificates from ``ca`` required.

    Only ``ca`` is trusted (``load_verify_locations``); the system store is
    never loaded.  OpenSSL checks the client certificate's chain, validity
    dates and extended key usage (clientAuth) during the handshake, and,
    given a ``crl`` file, that the certificate is not revoked
    (`jobkit.pki.trust.apply_crl`; check the CRL first, see there).
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
    if crl is not None:
        apply_crl(context, crl)
    return context
