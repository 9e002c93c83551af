"""Making jobkit's PKI: a root CA, a server certificate and client certificates.

Everything is made with the ``cryptography`` package (never by shelling out to
openssl). Keys are ECDSA P-256 and certificates are signed with SHA-256, as
Mozilla's "modern" TLS profile recommends. Where each file goes, its name and
its mode, and the errors raised here, are `jobkit.pki.layout`'s.

Nothing that exists is ever overwritten unless ``force`` is given; with
``force`` each file is replaced atomically (written beside it, then renamed
over it).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jobkit.pki.crl import crl_files, publish_crl
from jobkit.pki.files import locked, make_dir, refuse_existing, write_file
from jobkit.pki.layout import (
    BUNDLE_FILES,
    CA_FILE,
    CA_FILES,
    CA_FOLDER,
    CERT_FILE,
    CERT_MODE,
    CLIENTS_FOLDER,
    CN_MAX_LENGTH,
    KEY_FILE,
    KEY_MODE,
    SERVER_FOLDER,
    InvalidName,
    PkiError,
    ca_dir,
    client_dir,
    default_client_name,
    default_pki_dir,
    validate_client_name,
)
from jobkit.pki.record import (
    CLIENT_KIND,
    SERVER_KIND,
    IssuedCertificate,
    Record,
    load_record,
    record_file,
    save_record,
)
from jobkit.pki.signing import CLOCK_SKEW, SigningHash, authority_key_id, new_key, now

__all__ = [
    "CA_VALIDITY",
    "DEFAULT_HOSTS",
    "LEAF_VALIDITY",
    "ensure_default_pki",
    "init_pki",
    "issue_certificate",
    "issue_client",
    "load_ca",
    "make_ca",
    "validate_host",
    "write_bundle",
]

#: Names the default server certificate is valid for.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")

#: How long the root CA is valid.
CA_VALIDITY = _dt.timedelta(days=3650)
#: How long server and client certificates are valid (well under the 825 days
#: Apple platforms accept for TLS server certificates).
LEAF_VALIDITY = _dt.timedelta(days=730)

_DNS_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


# -- names ------------------------------------------------------------------------------


def validate_host(host: str) -> str | ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse a host for a server certificate: an IP address, or a DNS name (as str).

    IP literals (``[::1]`` brackets allowed) become IP address SANs; anything else
    must be an ASCII DNS name (a leading ``*.`` wildcard label is allowed) and
    becomes a DNS SAN. Raises `InvalidName` otherwise.
    """
    if not isinstance(host, str):
        raise InvalidName(f"host must be a string, not {type(host).__name__}")
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise InvalidName(f"invalid host {host!r}: IPv6 zone ids cannot go in a certificate")
        return address
    name = host[:-1] if host.endswith(".") else host
    if not name:
        raise InvalidName("host must not be empty")
    if not name.isascii():
        raise InvalidName(
            f"invalid host {host!r}: write international names in their ASCII (xn--) form"
        )
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    # An all-digit last label is a mistyped IP address ("10.0.0.256"), never a DNS name.
    if (
        len(name) > 253
        or labels[-1].isdigit()
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
    ):
        raise InvalidName(f"invalid host {host!r}: not an IP address or a DNS name")
    return name


# -- certificates -----------------------------------------------------------------------


def _name(common_names: Iterable[str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])


def make_ca(
    common_name: str = "jobkit CA",
    *,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
    key: EllipticCurvePrivateKey | None = None,
    path_length: int | None = 0,
) -> tuple[x509.Certificate, EllipticCurvePrivateKey]:
    """Make a self-signed root CA certificate and its key.

    Defaults: a new P-256 key, valid from a few minutes ago for `CA_VALIDITY`
    (10 years), ``basicConstraints`` CA:true (critical) with ``path_length`` 0 (it
    signs leaf certificates only), ``keyUsage`` keyCertSign and cRLSign (critical).
    """
    key = new_key() if key is None else key
    start = now() - CLOCK_SKEW if not_before is None else not_before
    end = start + CA_VALIDITY if not_after is None else not_after
    name = _name([common_name])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256()), key


def issue_certificate(
    ca_cert: x509.Certificate,
    ca_key: EllipticCurvePrivateKey,
    *,
    common_names: Sequence[str] = ("jobkit client",),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    extended_usages: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    is_ca: bool = False,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
    key: EllipticCurvePrivateKey | None = None,
    hash_algorithm: SigningHash | None = None,
) -> tuple[x509.Certificate, EllipticCurvePrivateKey]:
    """Issue a certificate signed by ``ca_cert``/``ca_key``; return it and its key.

    This is the low-level tool that `init_pki` and `issue_client` use, and that
    tests use to forge certificates of every kind, valid or not: nothing here
    checks that the result makes sense (``ca_cert`` need not be a CA, names are
    not validated, validity may lie in the past).

    Args:
        common_names: one subject CN attribute per entry (none, or several, on purpose).
        dns_names, ip_addresses: subjectAltName entries (the extension is left out
            when both are empty).
        extended_usages: extendedKeyUsage OIDs (left out when empty).
        is_ca: make an (intermediate) CA: basicConstraints CA:true, keyCertSign.
        not_before: default a few minutes ago.
        not_after: default `LEAF_VALIDITY` after ``not_before``, but never past the
            issuer's own expiry.
        key: the subject key; default a new P-256 key.
        hash_algorithm: signature hash; default SHA-256.
    """
    key = new_key() if key is None else key
    start = now() - CLOCK_SKEW if not_before is None else not_before
    if not_after is None:
        end = min(start + LEAF_VALIDITY, ca_cert.not_valid_after_utc)
    else:
        end = not_after
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_names))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authority_key_id(ca_cert), critical=False)
    )
    if extended_usages:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(extended_usages)), critical=False
        )
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alt_names += [x509.IPAddress(address) for address in ip_addresses]
    if alt_names:
        # RFC 5280: the SAN extension is critical only when the subject is empty.
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alt_names), critical=not common_names
        )
    algorithm = hashes.SHA256() if hash_algorithm is None else hash_algorithm
    return builder.sign(ca_key, algorithm), key


def _server_certificate(
    ca_cert: x509.Certificate, ca_key: EllipticCurvePrivateKey, hosts: Sequence[str]
) -> tuple[x509.Certificate, EllipticCurvePrivateKey]:
    parsed = [validate_host(host) for host in hosts]
    if not parsed:
        raise InvalidName("a server certificate needs at least one host")
    dns_names = list(dict.fromkeys(h for h in parsed if isinstance(h, str)))
    ips = list(dict.fromkeys(h for h in parsed if not isinstance(h, str)))
    first = str(parsed[0])
    return issue_certificate(
        ca_cert,
        ca_key,
        # A DNS name may be up to 253 characters but a CN only 64: clients match
        # on the SANs anyway, so the CN is only a label.
        common_names=[first if len(first) <= CN_MAX_LENGTH else "jobkit server"],
        dns_names=dns_names,
        ip_addresses=ips,
        extended_usages=[ExtendedKeyUsageOID.SERVER_AUTH],
    )


def _client_certificate(
    ca_cert: x509.Certificate, ca_key: EllipticCurvePrivateKey, name: str
) -> tuple[x509.Certificate, EllipticCurvePrivateKey]:
    return issue_certificate(
        ca_cert,
        ca_key,
        common_names=[name],
        extended_usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )


# -- files ------------------------------------------------------------------------------


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_bundle(
    folder: str | os.PathLike[str],
    cert: x509.Certificate,
    key: EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    force: bool = False,
) -> Path:
    """Write ``ca.pem``, ``cert.pem`` and ``key.pem`` (0600) into ``folder``; return it.

    ``folder`` is created 0700 if missing. Raises `AlreadyExists` if any of the
    three files exists, unless ``force``.
    """
    path = Path(folder)
    if not force:
        refuse_existing(path / name for name in BUNDLE_FILES)
    make_dir(path)
    write_file(path / KEY_FILE, _key_pem(key), KEY_MODE, force=force)
    write_file(path / CERT_FILE, _cert_pem(cert), CERT_MODE, force=force)
    write_file(path / CA_FILE, _cert_pem(ca_cert), CERT_MODE, force=force)
    return path


def _write_ca(
    folder: Path, cert: x509.Certificate, key: EllipticCurvePrivateKey, *, force: bool
) -> None:
    make_dir(folder)
    write_file(folder / KEY_FILE, _key_pem(key), KEY_MODE, force=force)
    write_file(folder / CERT_FILE, _cert_pem(cert), CERT_MODE, force=force)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"cannot read the {what}: {path} does not exist") from None
    except OSError as error:
        raise PkiError(f"cannot read the {what} {path}: {error.strerror}") from None


def load_ca(
    directory: str | os.PathLike[str],
) -> tuple[x509.Certificate, EllipticCurvePrivateKey]:
    """Load the CA certificate and key from ``directory`` (made by `init_pki`).

    ``directory`` may be the PKI folder or its ``ca/`` subfolder. Raises
    `PkiError` naming the file when one is missing, unreadable, not what it
    should be (a P-256 key, a CA certificate), or when key and certificate do not
    belong together.
    """
    root = Path(directory)
    folder = ca_dir(root)
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    if not cert_path.exists() and not key_path.exists():
        raise PkiError(
            f"no CA in {root}: {cert_path} does not exist "
            f"(make a PKI with 'jobkit certs init {root}')"
        )
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path, "CA certificate"))
    except ValueError:
        raise PkiError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(_read(key_path, "CA key"), password=None)
    except TypeError:
        raise PkiError(f"{key_path} is encrypted; jobkit needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PkiError(f"{key_path} is not a PEM private key") from None
    if not isinstance(key, EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an elliptic-curve key")
    if cert.public_key() != key.public_key():
        raise PkiError(f"{key_path} is not the key of {cert_path}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PkiError(f"{cert_path} is not a CA certificate")
    return cert, key


def init_pki(
    directory: str | os.PathLike[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    clients: Sequence[str] = (),
    *,
    force: bool = False,
) -> Path:
    """Make a new CA, a server certificate for ``hosts`` and one certificate per client.

    Writes ``DIR/ca/{cert,key}.pem``, ``DIR/server/{ca,cert,key}.pem`` and
    ``DIR/clients/NAME/{ca,cert,key}.pem`` (see the module docstring) and returns
    ``DIR``. Every name is checked and every target path is checked for an
    existing file before anything is written, so a refused call leaves nothing
    behind. Raises `InvalidName` for a bad host or client name and
    `AlreadyExists` when a file exists and ``force`` is false.

    With ``force`` the CA is replaced, so client folders made earlier that are
    not re-issued here stop being accepted by the new server certificate's CA.
    """
    root = Path(directory)
    if isinstance(hosts, str) or isinstance(clients, str):
        raise TypeError("hosts and clients must be sequences of strings, not a string")
    for host in hosts:
        validate_host(host)
    if not hosts:
        raise InvalidName("a server certificate needs at least one host")
    client_names = list(dict.fromkeys(validate_client_name(name) for name in clients))
    targets = [root / CA_FOLDER / name for name in CA_FILES]
    targets += [record_file(root), *crl_files(root)]
    targets += [root / SERVER_FOLDER / name for name in BUNDLE_FILES]
    for name in client_names:
        targets += [client_dir(root, name) / file for file in BUNDLE_FILES]
    if not force:
        refuse_existing(targets)

    ca_cert, ca_key = make_ca()
    make_dir(root)
    _write_ca(root / CA_FOLDER, ca_cert, ca_key, force=force)
    server_cert, server_key = _server_certificate(ca_cert, ca_key, hosts)
    write_bundle(root / SERVER_FOLDER, server_cert, server_key, ca_cert, force=force)
    issued = [
        record_entry(server_cert, SERVER_KIND, certificate_cn(server_cert), SERVER_FOLDER)
    ]
    make_dir(root / CLIENTS_FOLDER)
    for name in client_names:
        cert, key = _client_certificate(ca_cert, ca_key, name)
        write_bundle(client_dir(root, name), cert, key, ca_cert, force=force)
        issued.append(record_entry(cert, CLIENT_KIND, name, client_record_folder(name)))
    # A new CA starts a new record, and an empty CRL, so the server always has one to load.
    publish_crl(root, ca_cert, ca_key, Record(tuple(issued)))
    return root


def issue_client(directory: str | os.PathLike[str], name: str, *, force: bool = False) -> Path:
    """Issue a client certificate for ``name`` from the CA in ``directory``.

    Writes ``DIR/clients/NAME/{ca,cert,key}.pem`` and returns that folder.
    Raises `InvalidName`, `AlreadyExists` (unless ``force``), or `PkiError` when
    the CA cannot be loaded.
    """
    root = Path(directory)
    folder = client_dir(root, name)
    if not force:
        refuse_existing(folder / file for file in BUNDLE_FILES)
    ca_cert, ca_key = load_ca(root)
    make_dir(root / CLIENTS_FOLDER)
    relative = client_record_folder(name)
    with locked(ca_dir(root)):
        record = load_record(root)
        if force:
            # The certificate replaced stays valid: keep it in the record, to revoke it.
            old = folder_certificate(folder, ca_cert)
            if old is not None:
                record = record.add(record_entry(old, CLIENT_KIND, name, relative))
        cert, key = _client_certificate(ca_cert, ca_key, name)
        write_bundle(folder, cert, key, ca_cert, force=force)
        save_record(root, record.add(record_entry(cert, CLIENT_KIND, name, relative)))
    return folder


# -- the record -------------------------------------------------------------------------


def certificate_cn(cert: x509.Certificate) -> str:
    """The first subject CN of ``cert``, or ``""``."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def client_record_folder(name: str) -> str:
    """Client ``name``'s folder as the record names it, relative to the PKI folder."""
    return f"{CLIENTS_FOLDER}/{name}"


def record_entry(cert: x509.Certificate, kind: str, name: str, folder: str) -> IssuedCertificate:
    """The record's entry for ``cert``, issued as ``kind`` to ``name`` into ``folder``."""
    return IssuedCertificate(cert.serial_number, name, kind, folder,
                             cert.not_valid_before_utc, cert.not_valid_after_utc)


def folder_certificate(folder: Path, ca_cert: x509.Certificate) -> x509.Certificate | None:
    """The certificate in ``folder/cert.pem`` if it is there and ``ca_cert`` signed it."""
    try:
        cert = x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
        cert.verify_directly_issued_by(ca_cert)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return None
    return cert


# -- the default PKI --------------------------------------------------------------------


def ensure_default_pki() -> tuple[Path, bool]:
    """Create the default PKI folder if it does not exist; return ``(folder, created)``.

    A new one has a server certificate for `DEFAULT_HOSTS` and one client named
    after the current user. It is built in a temporary sibling folder and renamed
    into place, so a crash never leaves half a PKI behind and two servers starting
    at once end up sharing one. An existing folder is left exactly as it is.
    """
    target = default_pki_dir()
    if target.exists():
        return target, False
    user = default_client_name()
    make_dir(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=".pki-", dir=target.parent))
    try:
        init_pki(staging, DEFAULT_HOSTS, [user])
        try:
            staging.rename(target)
        except OSError:
            # Another process won the race (rename onto a non-empty folder fails).
            if not target.is_dir():
                raise
            return target, False
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target, True
