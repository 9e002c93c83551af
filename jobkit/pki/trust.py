"""The server's TLS trust from the PKI's CRL: revoked client certificates refused at the handshake.

Standard library only (``ssl``).  The server makes its ``SSLContext`` as
before, then calls `apply_crl` with `server_crl`'s file: OpenSSL then
checks every client certificate against the CRL during the handshake
(``VERIFY_CRL_CHECK_LEAF``) and answers a revoked one with the TLS alert
``certificate revoked``, before any HTTP is read.

Things the caller must know:

* A context only ever *adds* CRLs (OpenSSL has no way to remove one from its
  store), so a new CRL needs a new context: build one, and swap it in only
  if every step worked, keeping the old one otherwise.
* Once the check is on, a client whose CA has no usable CRL in the context
  is refused ("unable to get certificate CRL"): a CRL from another CA, or an
  expired one, shuts every client out.  That fails closed, but check a new
  CRL first with `jobkit.pki.crl.read_crl` (it needs ``cryptography``) to
  keep the old context instead.
* `apply_crl` refuses a file holding anything but CRLs: ``load_verify_locations``
  would otherwise *trust* a certificate found in it.
"""

from __future__ import annotations

import os
import re
import ssl
from typing import TYPE_CHECKING

from jobkit.pki.layout import CRL_FILE, PkiError, server_dir

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["apply_crl", "server_crl"]

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


def server_crl(certs: str | os.PathLike[str]) -> Path | None:
    """The CRL the server given ``--certs certs`` loads: ``SERVER_FOLDER/crl.pem``, if it exists.

    ``certs`` is what `jobkit.pki.layout.server_dir` accepts (the PKI folder or
    its ``server/`` folder).  None for a PKI made before jobkit kept a CRL:
    then no revocation is checked, until the first ``jobkit certs revoke``
    writes one.  Raises `PkiError` as `server_dir` does.
    """
    path = server_dir(certs) / CRL_FILE
    return path if path.is_file() else None


def apply_crl(context: ssl.SSLContext, crl: str | os.PathLike[str]) -> None:
    """Load the CRL file ``crl`` into ``context`` and check client certificates against it.

    ``context.load_verify_locations(cafile=crl)``, then ``verify_flags |=
    VERIFY_CRL_CHECK_LEAF`` (the client's own certificate is checked: our CA
    signs leaves only).  Raises `PkiError` when the file cannot be read or
    holds anything but PEM CRLs, ``ssl.SSLError`` when OpenSSL cannot load it.
    """
    path = os.fspath(crl)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise PkiError(f"cannot read the CRL {path}: {error.strerror}") from None
    kinds = set(_PEM_BEGIN.findall(data))
    if kinds != {b"X509 CRL"}:
        found = ", ".join(sorted(k.decode() for k in kinds)) or "nothing in PEM"
        raise PkiError(f"{path} must hold PEM CRLs only (found: {found})")
    context.load_verify_locations(cafile=path)
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
