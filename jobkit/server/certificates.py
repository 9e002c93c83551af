"""The server's certificate, key, CA bundle and CRL, reloaded without a restart.

`ServerCertificates` builds the TLS context from the server's certificate
folder (``cert.pem``, ``key.pem``, ``ca.pem`` and, when it exists,
``crl.pem``: see `jobkit.pki.trust`) and builds it again:

* on `reload` (``jobkit serve`` calls it on SIGHUP);
* when the CRL file changes: every new connection first compares the file's
  ``(st_ino, st_mtime_ns, st_size)`` with what was last loaded (one
  ``stat``, no thread).  ``jobkit certs revoke`` replaces the file
  atomically (a new inode), so a revocation reaches the very next handshake.

A reload builds a whole new context and swaps it in only if every step
worked: the certificate and key load and match, the CA bundle loads, and
the CRL is a PEM CRL issued and signed by that CA and current
(`jobkit.pki.crl.read_crl`).  Otherwise the old context stays, and the
reason is logged (and audited by the caller).  A CRL that disappears after
one was loaded counts as a failure: revocations are never dropped by
accident.  Connections already established keep the context they were made
with; nothing else (running jobs, follow streams) is touched.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import attrs

from jobkit.pki.layout import CA_FILE, CERT_FILE, CRL_FILE, KEY_FILE, PkiError
from jobkit.server.tls import make_server_context

__all__ = ["Reload", "ServerCertificates"]

log = logging.getLogger("jobkit.server")

#: What identifies one version of a file: (inode, mtime in ns, size); None if missing.
_Signature = tuple[int, int, int] | None


def _signature(path: Path) -> _Signature:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


@attrs.frozen
class Reload:
    """What one reload did.

    Attributes:
        trigger: What started it: ``SIGHUP``, ``crl changed``, ``api``.
        ok: True if the new context is in use; False if the old one was kept.
        reason: Why it failed (None when it worked).
        files: The files read.
    """

    trigger: str
    ok: bool
    reason: str | None
    files: tuple[str, ...]


class ServerCertificates:
    """The server's TLS context, built from ``folder`` and rebuilt on demand.

    Args:
        folder: The server's certificate folder (``server/`` of a PKI).
        on_reload: Told every `Reload`, whether it worked or not.

    Raises what building the first context raises (`PkiError`, ``OSError``,
    ``ssl.SSLError``): a server does not start with bad files.
    """

    def __init__(self, folder: Path, *,
                 on_reload: Callable[[Reload], None] | None = None) -> None:
        self.folder = folder
        self.cert, self.key, self.ca = folder / CERT_FILE, folder / KEY_FILE, folder / CA_FILE
        self.crl = folder / CRL_FILE
        self.on_reload = on_reload
        self._lock = threading.Lock()
        self._crl_seen = _signature(self.crl)
        self._crl_loaded = self._crl_seen is not None
        self.context = self._build(self._crl_loaded)

    @property
    def checks_revocation(self) -> bool:
        """True if the context in use checks client certificates against a CRL."""
        return self._crl_loaded

    def _files(self, with_crl: bool) -> tuple[str, ...]:
        files = (self.cert, self.key, self.ca, *((self.crl,) if with_crl else ()))
        return tuple(map(str, files))

    def _build(self, with_crl: bool) -> ssl.SSLContext:
        if not with_crl:
            return make_server_context(self.cert, self.key, self.ca)
        from cryptography import x509

        from jobkit.pki.crl import read_crl

        try:
            ca = x509.load_pem_x509_certificate(self.ca.read_bytes())
        except ValueError:
            raise PkiError(f"{self.ca} is not a PEM certificate") from None
        read_crl(self.crl, ca)  # its issuer, signature and dates, before OpenSSL sees it
        return make_server_context(self.cert, self.key, self.ca, self.crl)

    def current(self) -> ssl.SSLContext:
        """The context for a new connection; reloads first if the CRL file changed.

        Called for every accepted connection: costs one ``stat`` unless the
        CRL changed.  A CRL that failed to load is not tried again until
        the file changes again.
        """
        if _signature(self.crl) != self._crl_seen:
            self.reload("crl changed")
        return self.context

    def reload(self, trigger: str) -> Reload:
        """Build a new context from the files and swap it in; keep the old one on failure."""
        with self._lock:
            seen = _signature(self.crl)
            self._crl_seen = seen
            with_crl = seen is not None
            files = self._files(with_crl)
            try:
                if not with_crl and self._crl_loaded:
                    raise PkiError(f"the CRL {self.crl} is gone; revocations would be "
                                   f"dropped (put a CRL back, e.g. with 'jobkit certs revoke')")
                context = self._build(with_crl)
            except (PkiError, OSError, ValueError) as error:  # ssl.SSLError is an OSError
                reason = _why(error)
                log.error("reloading the certificates (%s) failed; keeping the old ones: %s",
                          trigger, reason)
                result = Reload(trigger, False, reason, files)
            else:
                self.context = context
                self._crl_loaded = with_crl
                log.info("reloaded the certificates (%s): %s", trigger, ", ".join(files))
                result = Reload(trigger, True, None, files)
        if self.on_reload is not None:
            self.on_reload(result)
        return result


def _why(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        return f"OpenSSL: {error.reason or error}".lower().replace("_", " ")
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}"
    return str(error) or type(error).__name__
