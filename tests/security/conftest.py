"""Fixtures for the security suite: our own PKI, real servers, and a view of their processes.

Two kinds of server:

* `JobServer` in this process (`server`, `start_server`), for requests whose
  answers are what matters;
* ``jobkit serve`` in a subprocess (`server_process`), when the server's own
  process is looked at (its threads, descriptors and children in ``/proc``),
  when it must run as another user, or with another environment (``TMPDIR``).

Clients are `tests.server.conftest.ApiClient`: one keep-alive HTTPS connection
with a client certificate, as curl would use it.
"""

from __future__ import annotations

import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from jobkit.pki import init_pki, issue_certificate, issue_client, load_ca, write_bundle
from jobkit.server.serve import JobServer
from tests.client.live_server import wait_for_address
from tests.server.conftest import ApiClient

ADMIN = "sec-admin"


# -- PKI ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PKI for the suite: alice, bob and an admin (who can see every pool)."""
    return init_pki(tmp_path_factory.mktemp("security-pki"), clients=["alice", "bob", ADMIN])


def new_client_folder(pki: Path, prefix: str = "sec") -> tuple[str, Path]:
    """A fresh client identity (its own, empty, pool on any server): ``(CN, folder)``."""
    # Random, not counted: pytest loads this file as a conftest and the test
    # modules import it again, so a module-level counter would exist twice.
    name = f"{prefix}-{secrets.token_hex(6)}"
    return name, issue_client(pki, name)


def new_api_client(address: tuple[str, int], pki: Path, prefix: str = "sec") -> ApiClient:
    """An `ApiClient` of ``address`` with a fresh identity."""
    name, folder = new_client_folder(pki, prefix)
    return ApiClient(address, folder, name)


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


# -- servers in this process --------------------------------------------------------------


def start_server(pki: Path, **options: Any) -> JobServer:
    options.setdefault("admins", [ADMIN])
    server = JobServer(pki, port=0, **options)
    server.start()
    return server


@pytest.fixture(scope="module")
def server(pki: Path) -> Iterator[JobServer]:
    """A server shared by a module's tests (16 threads); use fresh clients in each test."""
    server = start_server(pki, threads=16)
    yield server
    server.stop()


@pytest.fixture
def make_client(pki: Path, server: JobServer) -> Iterator[Callable[..., ApiClient]]:
    """``make_client(name=None, target=None)``: a client, with a new identity unless named."""
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
def admin(pki: Path, server: JobServer) -> Iterator[ApiClient]:
    client = ApiClient(server.address, pki / "clients" / ADMIN, ADMIN)
    yield client
    client.close()


def all_jobs(admin: ApiClient) -> list[tuple[str, str]]:
    """Every job on the server as ``(client, id)``, as an admin sees it."""
    response = admin.get("/jobs?all=true")
    assert response.status == 200, response
    return [(job["client"], job["id"]) for job in response.json()["jobs"]]


# -- the server's process, seen from /proc ---------------------------------------------------


def proc_stat(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), zombies included."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields is not None:
                parents[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found += sorted(frontier)
    return found


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def task_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's RLIMIT_NOFILE soft limit to ``wanted`` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- servers in a subprocess -------------------------------------------------------------------


class ServerProcess:
    """A running ``jobkit serve``: its process and the address it listens on."""

    def __init__(self, process: subprocess.Popen[bytes], address: tuple[str, int],
                 log: IO[bytes]) -> None:
        self.process = process
        self.address = address
        self._log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


@contextmanager
def server_process(certs: Path, *options: str, env: Mapping[str, str] | None = None,
                   prefix: Sequence[str] = (), timeout: float = 30.0,
                   cwd: str | None = None) -> Iterator[ServerProcess]:
    """Run ``jobkit serve`` on a free port until the block ends (SIGTERM, then SIGKILL).

    ``prefix`` goes before the Python command (``setpriv ...``, ``prlimit ...``).
    """
    command = [*prefix, sys.executable, "-m", "jobkit", "serve", "--certs", str(certs),
               "--listen", "127.0.0.1:0", "-q", *options]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log,
                                   env=None if env is None else dict(env), cwd=cwd)
        try:
            address = wait_for_address(process, log, timeout)
            yield ServerProcess(process, address, log)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            assert process.stdout is not None
            process.stdout.close()


