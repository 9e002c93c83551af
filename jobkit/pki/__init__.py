"""jobkit's built-in PKI: where the certificates live, how they are made and revoked.

Modules, so that finding certificates never costs making them:

* `jobkit.pki.layout` (standard library only): file names, folders, modes, the
  default PKI's location, and the errors;
* `jobkit.pki.trust` (standard library only): the server's TLS context checks
  client certificates against the CRL;
* `jobkit.pki.issue` (``cryptography``): the CA, server and client
  certificates, as ``jobkit certs`` makes them;
* `jobkit.pki.record` (no ``cryptography``): the CA's record of what it issued;
* `jobkit.pki.crl` (``cryptography``): the certificate revocation list;
* `jobkit.pki.lifecycle` (``cryptography``): listing, revoking and renewing.

(`jobkit.pki.files` and `jobkit.pki.signing` are their shared internals.)

Every public name of these is here.  The layout's are imported with the
package; the others on first use (PEP 562), so that the client and the CLI
can ``import jobkit.pki`` without loading ``cryptography`` (or ``ssl``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobkit.pki.layout import (
    BUNDLE_FILES,
    CA_FILE,
    CA_FILES,
    CA_FOLDER,
    CERT_FILE,
    CERT_MODE,
    CLIENTS_FOLDER,
    CN_MAX_LENGTH,
    CRL_FILE,
    CRL_MODE,
    DIR_MODE,
    ISSUED_FILE,
    ISSUED_MODE,
    KEY_FILE,
    KEY_MODE,
    SERVER_FOLDER,
    AlreadyExists,
    InvalidName,
    PkiError,
    ca_dir,
    client_dir,
    client_files,
    client_folder,
    default_client_dir,
    default_client_name,
    default_pki_dir,
    server_dir,
    validate_client_name,
)

if TYPE_CHECKING:
    from jobkit.pki.crl import (
        crl_files,
        make_crl,
        publish_crl,
        read_crl,
    )
    from jobkit.pki.issue import (
        CA_VALIDITY,
        DEFAULT_HOSTS,
        LEAF_VALIDITY,
        ensure_default_pki,
        init_pki,
        issue_certificate,
        issue_client,
        load_ca,
        make_ca,
        validate_host,
        write_bundle,
    )
    from jobkit.pki.lifecycle import (
        CertificateStatus,
        Renewal,
        Revocation,
        list_certificates,
        renew,
        revoke,
    )
    from jobkit.pki.record import (
        CLIENT_KIND,
        RECORD_VERSION,
        SERVER_KIND,
        UNKNOWN_KIND,
        IssuedCertificate,
        Record,
        format_serial,
        load_record,
        parse_serial,
        record_file,
        save_record,
    )
    from jobkit.pki.trust import (
        apply_crl,
        server_crl,
    )

__all__ = [
    "BUNDLE_FILES",
    "CA_FILE",
    "CA_FILES",
    "CA_FOLDER",
    "CA_VALIDITY",
    "CERT_FILE",
    "CERT_MODE",
    "CLIENTS_FOLDER",
    "CLIENT_KIND",
    "CN_MAX_LENGTH",
    "CRL_FILE",
    "CRL_MODE",
    "DEFAULT_HOSTS",
    "DIR_MODE",
    "ISSUED_FILE",
    "ISSUED_MODE",
    "KEY_FILE",
    "KEY_MODE",
    "LEAF_VALIDITY",
    "RECORD_VERSION",
    "SERVER_FOLDER",
    "SERVER_KIND",
    "UNKNOWN_KIND",
    "AlreadyExists",
    "CertificateStatus",
    "InvalidName",
    "IssuedCertificate",
    "PkiError",
    "Record",
    "Renewal",
    "Revocation",
    "apply_crl",
    "ca_dir",
    "client_dir",
    "client_files",
    "client_folder",
    "crl_files",
    "default_client_dir",
    "default_client_name",
    "default_pki_dir",
    "ensure_default_pki",
    "format_serial",
    "init_pki",
    "issue_certificate",
    "issue_client",
    "list_certificates",
    "load_ca",
    "load_record",
    "make_ca",
    "make_crl",
    "parse_serial",
    "publish_crl",
    "read_crl",
    "record_file",
    "renew",
    "revoke",
    "save_record",
    "server_crl",
    "server_dir",
    "validate_client_name",
    "validate_host",
    "write_bundle",
]

#: The names imported on first use, and the module of each.
_LAZY = {
    "CA_VALIDITY": "jobkit.pki.issue",
    "CLIENT_KIND": "jobkit.pki.record",
    "DEFAULT_HOSTS": "jobkit.pki.issue",
    "LEAF_VALIDITY": "jobkit.pki.issue",
    "RECORD_VERSION": "jobkit.pki.record",
    "SERVER_KIND": "jobkit.pki.record",
    "UNKNOWN_KIND": "jobkit.pki.record",
    "CertificateStatus": "jobkit.pki.lifecycle",
    "IssuedCertificate": "jobkit.pki.record",
    "Record": "jobkit.pki.record",
    "Renewal": "jobkit.pki.lifecycle",
    "Revocation": "jobkit.pki.lifecycle",
    "apply_crl": "jobkit.pki.trust",
    "crl_files": "jobkit.pki.crl",
    "ensure_default_pki": "jobkit.pki.issue",
    "format_serial": "jobkit.pki.record",
    "init_pki": "jobkit.pki.issue",
    "issue_certificate": "jobkit.pki.issue",
    "issue_client": "jobkit.pki.issue",
    "list_certificates": "jobkit.pki.lifecycle",
    "load_ca": "jobkit.pki.issue",
    "load_record": "jobkit.pki.record",
    "make_ca": "jobkit.pki.issue",
    "make_crl": "jobkit.pki.crl",
    "parse_serial": "jobkit.pki.record",
    "publish_crl": "jobkit.pki.crl",
    "read_crl": "jobkit.pki.crl",
    "record_file": "jobkit.pki.record",
    "renew": "jobkit.pki.lifecycle",
    "revoke": "jobkit.pki.lifecycle",
    "save_record": "jobkit.pki.record",
    "server_crl": "jobkit.pki.trust",
    "validate_host": "jobkit.pki.issue",
    "write_bundle": "jobkit.pki.issue",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jobkit.pki' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
