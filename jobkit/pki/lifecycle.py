"""After issuing: listing every certificate the CA issued, revoking and renewing them.

Each command reads the CA's record (`jobkit.pki.record`) and first adds to
it any certificate found in the PKI's folders that the CA signed but the
record lacks (one made before the record existed), so that a PKI made by an
older jobkit can be listed and revoked too.  `revoke` and `renew` hold the
CA folder's lock (`jobkit.pki.files.locked`) while they change anything.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

from jobkit.pki.crl import publish_crl
from jobkit.pki.files import locked
from jobkit.pki.issue import (
    certificate_cn,
    client_record_folder,
    folder_certificate,
    issue_certificate,
    load_ca,
    record_entry,
    write_bundle,
)
from jobkit.pki.layout import (
    CLIENTS_FOLDER,
    SERVER_FOLDER,
    PkiError,
    ca_dir,
    client_dir,
    validate_client_name,
)
from jobkit.pki.record import (
    CLIENT_KIND,
    SERVER_KIND,
    UNKNOWN_KIND,
    IssuedCertificate,
    Record,
    load_record,
    save_record,
)
from jobkit.pki.signing import now

__all__ = [
    "CertificateStatus",
    "Renewal",
    "Revocation",
    "list_certificates",
    "renew",
    "revoke",
]


@dataclasses.dataclass(frozen=True)
class CertificateStatus:
    """One issued certificate as ``jobkit certs list`` shows it.

    Attributes:
        certificate: What the record says of it.
        current: It is the certificate in its folder now (not replaced since).
        expired: Its validity has ended.
    """

    certificate: IssuedCertificate
    current: bool
    expired: bool

    @property
    def status(self) -> str:
        """``revoked``, ``expired``, ``current``, or ``replaced`` (still valid: revoke it)."""
        if self.certificate.revoked:
            return "revoked"
        if self.expired:
            return "expired"
        return "current" if self.current else "replaced"

    def to_json(self) -> dict[str, Any]:
        """The record's fields, with ``revoked``, ``expired``, ``current`` and ``status``."""
        return {**self.certificate.to_json(), "revoked": self.certificate.revoked,
                "expired": self.expired, "current": self.current, "status": self.status}


@dataclasses.dataclass(frozen=True)
class Revocation:
    """What `revoke` did.

    Attributes:
        revoked: The certificates revoked now.
        already: Those asked for that were revoked already.
        crl_files: The CRL files written.
        unrecorded: The serial asked for was in no record (revoked anyway).
    """

    revoked: tuple[IssuedCertificate, ...]
    already: tuple[IssuedCertificate, ...]
    crl_files: tuple[Path, ...]
    unrecorded: bool = False


@dataclasses.dataclass(frozen=True)
class Renewal:
    """What `renew` did.

    Attributes:
        folder: Where the new certificate and key were written.
        certificate: The new certificate.
        replaced: The certificate it replaced.
        revoked: Earlier certificates revoked (``revoke_old``).
        crl_files: The CRL files written (none unless something was revoked).
    """

    folder: Path
    certificate: IssuedCertificate
    replaced: IssuedCertificate
    revoked: tuple[IssuedCertificate, ...] = ()
    crl_files: tuple[Path, ...] = ()


def _in_folders(root: Path, ca_cert: x509.Certificate) -> list[IssuedCertificate]:
    """The certificates the CA signed that sit in the PKI's folders now."""
    found = []
    server = folder_certificate(root / SERVER_FOLDER, ca_cert)
    if server is not None:
        found.append(record_entry(server, SERVER_KIND, certificate_cn(server), SERVER_FOLDER))
    try:
        folders = sorted(p for p in (root / CLIENTS_FOLDER).iterdir() if p.is_dir())
    except OSError:
        folders = []
    for folder in folders:
        cert = folder_certificate(folder, ca_cert)
        if cert is not None:
            relative = client_record_folder(folder.name)
            found.append(record_entry(cert, CLIENT_KIND, folder.name, relative))
    return found


def _synced(root: Path, ca_cert: x509.Certificate) -> tuple[Record, set[int]]:
    """The record with what the folders hold added, and the serials the folders hold."""
    record = load_record(root)
    current = set()
    for certificate in _in_folders(root, ca_cert):
        record = record.add(certificate)
        current.add(certificate.serial)
    return record, current


def list_certificates(directory: str | os.PathLike[str]) -> list[CertificateStatus]:
    """Every certificate the CA in ``directory`` issued, oldest first, with its status.

    Certificates found in the folders but missing from the record are listed
    (last) without being written to the record.  Raises `PkiError`.
    """
    root = Path(directory)
    ca_cert, _ = load_ca(root)
    record, current = _synced(root, ca_cert)
    moment = now()
    return [
        CertificateStatus(c, c.serial in current, c.not_after is not None and c.not_after <= moment)
        for c in record.certificates
    ]


def revoke(
    directory: str | os.PathLike[str], name: str | None = None, *, serial: int | None = None
) -> Revocation:
    """Revoke every certificate issued to client ``name``, or the one with ``serial``.

    Then the CRL is made again and written (see `jobkit.pki.crl.publish_crl`),
    even when nothing new was revoked, so that running it again repairs a CRL
    that was lost.  A ``serial`` in no record is revoked all the same (a
    certificate issued before the record existed and since replaced).
    Raises `InvalidName` for a bad name, `PkiError` when no certificate was
    issued to ``name`` or the CA cannot be loaded.
    """
    if (name is None) == (serial is None):
        raise TypeError("give a name or a serial, not both")
    root = Path(directory)
    ca_cert, ca_key = load_ca(root)
    unrecorded = False
    with locked(ca_dir(root)):
        record, _ = _synced(root, ca_cert)
        if serial is not None:
            if record.find(serial) is None:
                unrecorded = True
                record = record.add(IssuedCertificate(serial, "", UNKNOWN_KIND, "", None, None))
            targets = {serial}
        else:
            assert name is not None
            validate_client_name(name)
            targets = {c.serial for c in record.named(name, CLIENT_KIND)}
            if not targets:
                raise PkiError(
                    f"no client certificate was issued to {name!r} by the CA in {root} "
                    f"(see 'jobkit certs list {root}'; revoke the server's by --serial)"
                )
        before = {c.serial for c in record.revoked()}
        record, files = publish_crl(root, ca_cert, ca_key, record.revoke(targets, now()))
    chosen = [c for c in record.certificates if c.serial in targets]
    return Revocation(
        revoked=tuple(c for c in chosen if c.serial not in before),
        already=tuple(c for c in chosen if c.serial in before),
        crl_files=tuple(files),
        unrecorded=unrecorded,
    )


def _like(
    old: x509.Certificate, ca_cert: x509.Certificate, ca_key: EllipticCurvePrivateKey
) -> tuple[x509.Certificate, EllipticCurvePrivateKey]:
    """A new certificate and key with ``old``'s subject CNs, names and usages."""
    common_names = [str(a.value) for a in
                    old.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)]
    try:
        san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        dns_names, addresses = [], []
    else:
        dns_names = san.get_values_for_type(x509.DNSName)
        addresses = san.get_values_for_type(x509.IPAddress)
    try:
        usages = list(old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    return issue_certificate(
        ca_cert, ca_key, common_names=common_names, dns_names=dns_names,
        ip_addresses=addresses,  # type: ignore[arg-type]  # never networks in our SANs
        extended_usages=usages,
    )


def renew(
    directory: str | os.PathLike[str],
    name: str | None = None,
    *,
    server: bool = False,
    revoke_old: bool = False,
) -> Renewal:
    """Issue client ``name``'s certificate again (or the server's): new key, new serial.

    The new certificate has the old one's CN, names (the server's hosts) and
    usages, and a full validity from now (never past the CA's).  Its
    folder's ``cert.pem`` and ``key.pem`` are replaced atomically, one after
    the other.  The old certificate stays valid until it expires, unless
    ``revoke_old``: then every earlier certificate of the same client (or
    server) is revoked and the CRL written.  Raises `PkiError` when there is
    no certificate to renew.
    """
    if server == (name is not None):
        raise TypeError("give a client name, or server=True")
    root = Path(directory)
    ca_cert, ca_key = load_ca(root)
    if server:
        folder, kind, relative = root / SERVER_FOLDER, SERVER_KIND, SERVER_FOLDER
        make = f"'jobkit certs init {root}'"
    else:
        assert name is not None
        folder, kind, relative = client_dir(root, name), CLIENT_KIND, client_record_folder(name)
        make = f"'jobkit certs client {root} {name}'"
    with locked(ca_dir(root)):
        record, _ = _synced(root, ca_cert)
        old = folder_certificate(folder, ca_cert)
        if old is None:
            raise PkiError(f"no certificate of this CA to renew in {folder} (make one with {make})")
        cert, key = _like(old, ca_cert, ca_key)
        write_bundle(folder, cert, key, ca_cert, force=True)
        entry = record_entry(cert, kind, certificate_cn(cert) if name is None else name, relative)
        record = record.add(entry)
        replaced = record.find(old.serial_number)
        assert replaced is not None  # _synced added it
        earlier = {c.serial for c in record.certificates
                   if c.kind == kind and (server or c.name == name)
                   and c.serial != cert.serial_number and not c.revoked}
        files: list[Path] = []
        if revoke_old and earlier:
            record, files = publish_crl(root, ca_cert, ca_key, record.revoke(earlier, now()))
        else:
            save_record(root, record)
    revoked = tuple(c for c in record.certificates if revoke_old and c.serial in earlier)
    return Renewal(folder, entry, replaced, revoked, tuple(files))
