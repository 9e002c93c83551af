"""jobkit's built-in PKI: where the certificates live, and how they are made.

Two modules, so that finding certificates never costs making them:

* `jobkit.pki.layout` (standard library only): file names, folders, modes, the
  default PKI's location, and the errors;
* `jobkit.pki.issue` (``cryptography``): the CA, server and client
  certificates, as ``jobkit certs`` makes them.

Every public name of both is here.  The layout's are imported with the
package; the issuing ones on first use (PEP 562), so that the client and the
CLI can ``import jobkit.pki`` without loading ``cryptography``.
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
    DIR_MODE,
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

__all__ = [
    "BUNDLE_FILES",
    "CA_FILE",
    "CA_FILES",
    "CA_FOLDER",
    "CA_VALIDITY",
    "CERT_FILE",
    "CERT_MODE",
    "CLIENTS_FOLDER",
    "CN_MAX_LENGTH",
    "DEFAULT_HOSTS",
    "DIR_MODE",
    "KEY_FILE",
    "KEY_MODE",
    "LEAF_VALIDITY",
    "SERVER_FOLDER",
    "AlreadyExists",
    "InvalidName",
    "PkiError",
    "ca_dir",
    "client_dir",
    "client_files",
    "client_folder",
    "default_client_dir",
    "default_client_name",
    "default_pki_dir",
    "ensure_default_pki",
    "init_pki",
    "issue_certificate",
    "issue_client",
    "load_ca",
    "make_ca",
    "server_dir",
    "validate_client_name",
    "validate_host",
    "write_bundle",
]

#: The names imported from `jobkit.pki.issue` on first use.
_ISSUE_NAMES = frozenset({
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
})


def __getattr__(name: str) -> Any:
    if name not in _ISSUE_NAMES:
        raise AttributeError(f"module 'jobkit.pki' has no attribute {name!r}")
    value = getattr(importlib.import_module("jobkit.pki.issue"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
