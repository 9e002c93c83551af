"""A real server (subprocess, real certificates) and a client with its own identity per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit.client import Client
from tests.client.live_server import certs, pki_root, server  # noqa: F401 - fixtures


@pytest.fixture
def client(server: str, certs: Path) -> Iterator[Client]:
    with Client(server, certs, timeout=10) as remote:
        yield remote
