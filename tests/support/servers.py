"""`JobServer` in this process, on 127.0.0.1, and clients of it.

Most tests share one ``server`` per module (starting one costs a little) and
keep out of each other's way with fresh clients: ``make_client`` issues a new
client certificate, so a test's client starts with no jobs at all.

The ``server`` is as ``jobkit serve`` makes it, with `ADMIN` as an admin and 16
threads; a conftest or a module changes it by overriding ``server_options``
(tests/server lets clients choose every backend, to check each one's contract).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from jobkit.server.serve import JobServer
from jobkit.server.tenants import StoragePolicy
from tests.support.api import ApiClient
from tests.support.pki import ADMIN, new_client_folder

#: A storage policy that lets clients choose every built-in backend.
ALL_BACKENDS = StoragePolicy(allowed=frozenset({"memory", "tempfile", "ring", "file"}))


def start_server(pki: Path, **options: Any) -> JobServer:
    """A started `JobServer` on a free port; `ADMIN` is an admin unless ``admins`` says."""
    options.setdefault("admins", [ADMIN])
    server = JobServer(pki, port=0, **options)
    server.start()
    return server


@contextmanager
def running_server(pki: Path, **options: Any) -> Iterator[JobServer]:
    """`start_server` for the length of a block."""
    server = start_server(pki, **options)
    try:
        yield server
    finally:
        server.stop()


def new_api_client(address: tuple[str, int], pki: Path, prefix: str = "client") -> ApiClient:
    """An `ApiClient` of ``address`` with a fresh identity."""
    name, folder = new_client_folder(pki, prefix)
    return ApiClient(address, folder, name)


def all_jobs(admin: ApiClient) -> list[tuple[str, str]]:
    """Every job on the server as ``(client, id)``, as an admin sees it."""
    response = admin.get("/jobs?all=true")
    assert response.status == 200, response
    return [(job["client"], job["id"]) for job in response.json()["jobs"]]


@pytest.fixture(scope="module")
def server_options() -> dict[str, Any]:
    """`JobServer` options of the module's ``server`` beyond `start_server`'s."""
    return {}


@pytest.fixture(scope="module")
def server(pki: Path, server_options: dict[str, Any]) -> Iterator[JobServer]:
    """A server shared by a module's tests; use fresh clients (``make_client``) in each."""
    with running_server(pki, **{"threads": 16, **server_options}) as running:
        yield running


@pytest.fixture
def make_client(pki: Path, server: JobServer) -> Iterator[Callable[..., ApiClient]]:
    """``make_client(name=None, target=None)``: a client of ``target`` (default: ``server``),
    with a new identity unless named."""
    made: list[ApiClient] = []

    def make(name: str | None = None, *, target: JobServer | None = None) -> ApiClient:
        if name is None:
            name, folder = new_client_folder(pki)
        else:
            folder = pki / "clients" / name
        client = ApiClient((target or server).address, folder, name)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., ApiClient]) -> ApiClient:
    """A client of ``server`` with no jobs yet."""
    return make_client()


@pytest.fixture
def admin(make_client: Callable[..., ApiClient]) -> ApiClient:
    """`ADMIN`, a client of ``server`` that may see and drive every client's jobs."""
    return make_client(ADMIN)
