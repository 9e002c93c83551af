"""The CA's certificate revocation list (CRL): making it, publishing it, checking one.

The CRL is made from the CA's record (`jobkit.pki.record`): every revoked
serial, with when it was revoked.  It is signed by the CA with SHA-256 and
carries a CRL number (one more each time) and the CA's key identifier.  Its
``thisUpdate`` is `CLOCK_SKEW` in the past, like certificates, so a server
whose clock is a little behind does not find it "not yet valid"; its
``nextUpdate`` is the CA's own expiry: jobkit's CRL is a local file read at
the TLS handshake, never fetched, so it must not "expire" while the CA is
valid (OpenSSL refuses every client once a CRL it checks has expired).

It is written, 0644, to ``ca/crl.pem`` and, when the PKI folder has a
``server/`` folder, to ``server/crl.pem``, which is what the server loads
(`jobkit.pki.trust`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

from jobkit.pki.files import write_file
from jobkit.pki.layout import CRL_FILE, CRL_MODE, SERVER_FOLDER, PkiError, ca_dir
from jobkit.pki.record import Record, save_record
from jobkit.pki.signing import CLOCK_SKEW, authority_key_id, now

__all__ = ["crl_files", "make_crl", "publish_crl", "read_crl"]


def make_crl(
    ca_cert: x509.Certificate,
    ca_key: EllipticCurvePrivateKey,
    revoked: Iterable[tuple[int, _dt.datetime]],
    number: int,
) -> x509.CertificateRevocationList:
    """A CRL signed by the CA listing ``revoked`` (serial, revocation time) as CRL ``number``."""
    start = now() - CLOCK_SKEW
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(start)
        .next_update(max(ca_cert.not_valid_after_utc, start + _dt.timedelta(days=1)))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(authority_key_id(ca_cert), critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def crl_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Where the CRL of the PKI in ``directory`` goes: ``ca/crl.pem``, ``server/crl.pem``.

    The second only when ``directory`` has a ``server/`` folder.
    """
    root = Path(directory)
    files = [ca_dir(root) / CRL_FILE]
    server = root / SERVER_FOLDER
    if server.is_dir():
        files.append(server / CRL_FILE)
    return files


def publish_crl(
    directory: str | os.PathLike[str],
    ca_cert: x509.Certificate,
    ca_key: EllipticCurvePrivateKey,
    record: Record,
) -> tuple[Record, list[Path]]:
    """Save ``record`` with the next CRL number, then make that CRL and write it.

    The record is saved first, so a CRL never lists a revocation the record
    lacks (the next CRL, made from the record, would silently drop it).
    Each CRL file (see `crl_files`) is replaced atomically: the server never
    reads half a CRL.  Returns the record as saved and the CRL files written.
    """
    record = dataclasses.replace(record, crl_number=record.crl_number + 1)
    save_record(directory, record)
    revoked = [(c.serial, c.revoked_at) for c in record.revoked() if c.revoked_at is not None]
    crl = make_crl(ca_cert, ca_key, revoked, record.crl_number)
    data = crl.public_bytes(serialization.Encoding.PEM)
    files = crl_files(directory)
    for path in files:
        write_file(path, data, CRL_MODE, force=True)
    return record, files


def read_crl(
    path: str | os.PathLike[str], ca_cert: x509.Certificate
) -> x509.CertificateRevocationList:
    """Read and check a CRL: PEM, issued and signed by ``ca_cert``, current.

    For a server about to load a new CRL: one that fails here would refuse
    every client (OpenSSL treats a CRL it cannot use as no CRL found).
    Raises `PkiError` naming the file and the fault.
    """
    shown = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PkiError(f"cannot read the CRL {shown}: {error.strerror}") from None
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        raise PkiError(f"{shown} is not a PEM certificate revocation list") from None
    if crl.issuer != ca_cert.subject:
        raise PkiError(f"{shown} was not issued by the CA {ca_cert.subject.rfc4514_string()}")
    if not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise PkiError(f"{shown} is not signed by the CA's key")
    moment = now()
    if crl.last_update_utc > moment:
        raise PkiError(f"{shown} is not valid yet (thisUpdate {crl.last_update_utc})")
    if crl.next_update_utc is not None and crl.next_update_utc < moment:
        raise PkiError(f"{shown} has expired (nextUpdate {crl.next_update_utc})")
    return crl
