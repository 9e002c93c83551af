"""Talking to a server as the docs' curl examples do: HTTPS with a client certificate.

`ApiClient` keeps one keep-alive connection; `raw_tls` gives a bare TLS socket
for what ``http.client`` will not send (junk, slow or half requests).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path
from typing import Any

from jobkit.wire import PROBLEM_MEDIA_TYPE, ProblemKind
from tests.support.waiting import wait_until


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
