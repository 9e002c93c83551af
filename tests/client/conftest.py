"""A real server (``jobkit serve`` in a subprocess, real certificates) and a client with
its own identity per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit.client import Client


@pytest.fixture(scope="module")
def server(live_server: str) -> str:
    """The client's server: ``jobkit serve`` in a subprocess, ``"127.0.0.1:PORT"``."""
    return live_server


@pytest.fixture
def client(server: str, certs: Path) -> Iterator[Client]:
    """A `Client` of ``server`` as a new identity: no jobs yet."""
    with Client(server, certs, timeout=10) as remote:
        yield remote
