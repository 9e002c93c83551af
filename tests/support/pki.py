"""Certificates for the tests, made by jobkit's own PKI code.

``pki`` is one PKI for the whole run, with clients alice, bob and `ADMIN`.
Tests keep out of each other's way with fresh identities (`new_client_folder`):
a new client certificate is a new, empty, pool on any server.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from jobkit.pki import init_pki, issue_certificate, issue_client, load_ca, write_bundle

#: The client that the test servers make an admin (``--admin``).
ADMIN = "admin"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PKI for the whole run: alice, bob and an admin."""
    return init_pki(tmp_path_factory.mktemp("pki"), clients=["alice", "bob", ADMIN])


def new_client_folder(pki: Path, prefix: str = "client") -> tuple[str, Path]:
    """A client identity no other test uses: ``(CN, folder)``."""
    # Random, not counted: a name no request can guess is also one no test's
    # made-up path (tests/security) contains by chance.
    name = f"{prefix}-{secrets.token_hex(6)}"
    return name, issue_client(pki, name)


def new_client(pki: Path, prefix: str = "t") -> Path:
    """The folder of a client identity no other test uses."""
    return new_client_folder(pki, prefix)[1]


def forge(pki: Path, folder: Path, *, ca: tuple[Any, Any] | None = None,
          chain: Sequence[Any] = (), **options: Any) -> Path:
    """A client folder holding a certificate made exactly as asked.

    The folder trusts our real CA (so the client accepts the server); the
    certificate is issued by ``ca`` (default: our real CA) with ``options``
    passed to `issue_certificate`.  ``chain`` certificates are appended to
    ``cert.pem``, so that the client sends them along (an intermediate).
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    real_cert, real_key = load_ca(pki)
    ca_cert, ca_key = ca or (real_cert, real_key)
    cert, key = issue_certificate(ca_cert, ca_key, **options)
    write_bundle(folder, cert, key, real_cert)
    if chain:
        with (folder / "cert.pem").open("ab") as file:
            for extra in chain:
                file.write(extra.public_bytes(Encoding.PEM))
    return folder
