"""A real server (subprocess, real certificates) and a client with its own identity per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit.client import Client
from tests.client.live_server import make_pki, new_client, serving


@pytest.fixture(scope="module")
def pki_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("client-pki") / "pki")


# Module scope, not session: the server is our child process, and other
# tests (tests/core) check that the test process has no children left.
@pytest.fixture(scope="module")
def server(pki_root: Path) -> Iterator[str]:
    with serving(pki_root) as address:
        yield address


@pytest.fixture
def certs(pki_root: Path) -> Path:
    """A client folder for a CN no other test uses: an empty pool on the server."""
    return new_client(pki_root)


@pytest.fixture
def client(server: str, certs: Path) -> Iterator[Client]:
    with Client(server, certs, timeout=10) as remote:
        yield remote
