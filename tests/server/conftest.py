"""Fixtures for the server tests: a PKI made by our own code, real servers on 127.0.0.1.

Most tests share one server per module (starting one costs a little) and keep
out of each other's way by using fresh clients: `make_client` issues a new
client certificate, so a test's client starts with no jobs at all.
"""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobkit.pki import init_pki, issue_client
from jobkit.server.serve import JobServer
from jobkit.server.tenants import StoragePolicy

ADMIN = "admin"

_names = itertools.count(1)


class Response:
    """A whole HTTP response, read."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        content_type = self.headers.get("Content-Type", "")
        assert content_type.startswith(("application/json", "application/problem+json")), (
            self.status, content_type, self.body[:200])
        return json.loads(self.body)

    def problem(self) -> dict[str, Any]:
        """The error answer's problem document, checked for its RFC 9457 shape."""
        return problem_document(self.status, self.headers.get("Content-Type"), self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


class ApiClient:
    """A keep-alive HTTPS connection with a client certificate, as in the docs' curl examples."""

    def __init__(self, address: tuple[str, int], folder: Path, name: str) -> None:
        self.address = address
        self.folder = folder
        self.name = name
        self.context = client_context(folder)
        self._conn: http.client.HTTPSConnection | None = None

    def connect(self, timeout: float = 10.0) -> http.client.HTTPSConnection:
        """A new connection of its own (for streams that run alongside other requests)."""
        host, port = self.address
        return http.client.HTTPSConnection(host, port, context=self.context, timeout=timeout)

    @property
    def conn(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            self._conn = self.connect()
        return self._conn

    def request(self, method: str, path: str, json_body: object = None, *,
                body: bytes | None = None, headers: dict[str, str] | None = None) -> Response:
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            data = response.read()
        except (http.client.HTTPException, OSError):
            self.close()
            raise
        if response.will_close:
            self.close()
        return Response(response.status, response.headers, data)

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def create(self, cmd: str, *args: str, **fields: object) -> str:
        response = self.request("PUT", "/jobs", {"cmd": cmd, "args": list(args), **fields})
        assert response.status == 201, response
        job_id: str = response.json()["id"]
        return job_id

    def status(self, job_id: str, query: str = "") -> dict[str, Any]:
        response = self.get(f"/jobs/{job_id}/status{query}")
        assert response.status == 200, response
        result: dict[str, Any] = response.json()
        return result

    def wait(self, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll the status until the job is no longer running (a deadline, not a sleep)."""
        from tests.conftest import wait_until

        box: list[dict[str, Any]] = []

        def ended() -> bool:
            box[:] = [self.status(job_id)]
            return box[0]["status"] != "running"

        wait_until(ended, timeout, f"job {job_id} to end")
        return box[0]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def problem_document(status: int, content_type: str | None, body: bytes) -> dict[str, Any]:
    """An error answer's body, checked: RFC 9457 problem details of a documented kind."""
    from jobkit.wire import PROBLEM_MEDIA_TYPE, ProblemKind

    assert content_type == PROBLEM_MEDIA_TYPE, (status, content_type, body[:200])
    problem: dict[str, Any] = json.loads(body)
    assert {"type", "title", "status", "detail"} <= set(problem), problem
    assert problem["status"] == status, problem
    kind = ProblemKind.from_type(problem["type"])
    assert kind is ProblemKind.GENERIC or kind.status == status, problem
    assert isinstance(problem["detail"], str) and problem["detail"], problem
    return problem


def client_context(folder: Path) -> ssl.SSLContext:
    """What a client needs: trust the CA in the folder, present its certificate."""
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    context.load_cert_chain(str(folder / "cert.pem"), str(folder / "key.pem"))
    return context


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PKI for the whole run: alice, bob and an admin."""
    return init_pki(tmp_path_factory.mktemp("pki"), clients=["alice", "bob", ADMIN])


#: What the shared test servers let clients choose: every built-in backend.
ALL_BACKENDS = StoragePolicy(allowed=frozenset({"memory", "tempfile", "ring", "file"}))


def start_server(pki: Path, **options: Any) -> JobServer:
    options.setdefault("storage", ALL_BACKENDS)
    server = JobServer(pki, port=0, **options)
    server.start()
    return server


@pytest.fixture(scope="module")
def server(pki: Path) -> Iterator[JobServer]:
    """A server shared by a module's tests; use fresh clients (`make_client`) in each."""
    server = start_server(pki, admins=[ADMIN], threads=16)
    yield server
    server.stop()


@pytest.fixture
def make_client(pki: Path, server: JobServer) -> Iterator[Callable[..., ApiClient]]:
    """``make_client(name=None)``: a client of `server`, with a new certificate unless named."""
    made: list[ApiClient] = []

    def make(name: str | None = None, *, target: JobServer | None = None) -> ApiClient:
        if name is None:
            name = f"client-{next(_names)}"
            issue_client(pki, name)
        client = ApiClient((target or server).address, pki / "clients" / name, name)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., ApiClient]) -> ApiClient:
    return make_client()


def raw_tls(address: tuple[str, int], context: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection with nothing sent yet (the handshake is done on connect)."""
    sock = socket.create_connection(address, timeout=10)
    return context.wrap_socket(sock, server_hostname="localhost")


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the peer sends until it closes the connection."""
    data = bytearray()
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)
