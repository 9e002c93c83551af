"""Every problem kind, end to end: a real server answers it, the client's mapping turns it
into an exception, and the CLI's table turns that into an exit code.

Each kind is provoked for real on a server on 127.0.0.1 (some need a server
of their own: a tiny one, a stopping one); the answer goes through
`jobkit.wire.problem_from_json`, `jobkit.client.problems.error_for` (what
`Client` raises) and `jobkit.cli.errors.translate` (what ``jobkit`` exits
with).  Nothing here depends on the wording of ``detail``: only on kinds,
statuses, exception classes and exit codes.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobkit.cli.errors import translate
from jobkit.client.problems import error_for
from jobkit.core.errors import AuthenticationFailed, BackendNotFound, JobNotFound, ServerError
from jobkit.pki import issue_certificate, load_ca, write_bundle
from jobkit.server.serve import JobServer
from jobkit.server.tenants import Tenants
from jobkit.wire import Problem, ProblemKind, problem_from_json
from tests.support.api import ApiClient, problem_document, raw_tls, read_until_closed
from tests.support.forwarder import Forwarder

K = ProblemKind
#: What each kind becomes in the client, and then the CLI's exit code.
EXPECTED: dict[ProblemKind, tuple[type[Exception], int]] = {
    K.BAD_REQUEST: (ValueError, 2),
    K.BAD_FIELD: (ValueError, 2),
    K.UNKNOWN_BACKEND: (BackendNotFound, 2),
    K.BAD_CERTIFICATE_IDENTITY: (AuthenticationFailed, 5),
    K.NOT_ALLOWED: (ServerError, 1),
    K.NO_SUCH_JOB: (JobNotFound, 3),
    K.NO_SUCH_ENDPOINT: (ServerError, 1),
    K.METHOD_NOT_ALLOWED: (ServerError, 1),
    K.REQUEST_TIMEOUT: (ServerError, 1),
    K.BODY_TOO_LARGE: (ValueError, 2),
    K.UNSUPPORTED_MEDIA_TYPE: (ServerError, 1),
    K.QUOTA_EXCEEDED: (ServerError, 1),
    K.INTERNAL_ERROR: (ServerError, 1),
    K.NOT_IMPLEMENTED: (ServerError, 1),
    K.SERVER_BUSY: (ServerError, 1),
    K.SERVER_STOPPING: (ServerError, 1),
    K.STORAGE_FAILED: (ServerError, 1),
    K.EXECUTOR_UNAVAILABLE: (ServerError, 1),
    K.GENERIC: (ServerError, 1),
}
JSON = {"Content-Type": "application/json"}


def test_every_kind_is_covered() -> None:
    assert set(EXPECTED) == set(ProblemKind) == set(PROVOKE)


class Lab:
    """The servers and clients the provocations need, made once for the module."""

    def __init__(self, pki: Path, server: JobServer, make_client: Callable[..., ApiClient],
                 request: pytest.FixtureRequest):
        self.pki = pki
        self.server = server
        self.make_client = make_client
        self.request = request

    def client(self, target: JobServer | None = None) -> ApiClient:
        return self.make_client(target=target)

    def raw(self, request: bytes, target: JobServer | None = None) -> tuple[int, str, bytes]:
        """Send ``request`` as it is; (status, content type, body) of the answer."""
        client = self.client(target)
        with raw_tls((target or self.server).address, client.context) as sock:
            sock.sendall(request)
            reply = read_until_closed(sock)
        head, _, body = reply.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
        return int(status_line.split()[1]), headers["content-type"], body


Answer = tuple[int, str, bytes]


def _answer(response: Any) -> Answer:
    return response.status, response.headers["Content-Type"], response.body


def _two_cns(lab: Lab) -> Answer:
    folder = lab.pki / "two-cns"
    if not folder.exists():
        ca_cert, ca_key = load_ca(lab.pki)
        cert, key = issue_certificate(ca_cert, ca_key, common_names=["a", "b"])
        write_bundle(folder, cert, key, ca_cert)
    return _answer(ApiClient(lab.server.address, folder, "two-cns").get("/jobs"))


def _quota(lab: Lab) -> Answer:
    server = _start(lab, max_jobs=1, threads=4)
    try:
        client = lab.client(server)
        client.create("sleep", "30")
        return _answer(client.request("PUT", "/jobs", {"cmd": "true"}))
    finally:
        server.stop()


def _busy(lab: Lab) -> Answer:
    server = _start(lab, max_streams=1)  # one output stream for the whole server
    try:
        first, second = lab.client(server), lab.client(server)
        job_id = first.create("sleep", "30")
        held = first.connect()
        held.request("GET", f"/jobs/{job_id}/stdout?follow=true")
        assert held.getresponse().status == 200
        other = second.create("sleep", "30")
        answer = _answer(second.get(f"/jobs/{other}/stdout?follow=true"))
        held.close()
        return answer
    finally:
        server.stop()


def _stopping(lab: Lab) -> Answer:
    server = _start(lab, threads=4)
    try:
        client = lab.client(server)
        job_id = client.create("sleep", "30")
        server.api.begin_shutdown(grace=0)
        return _answer(client.get(f"/jobs/{job_id}/stdout?follow=true"))
    finally:
        server.stop()


def _timeout(lab: Lab) -> Answer:
    server = _start(lab, threads=4, connection_timeout=1)
    try:
        # A body that never arrives whole: the request's deadline passes.
        return lab.raw(b"PUT /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{", server)
    finally:
        server.stop()


def _internal(lab: Lab) -> Answer:
    client = lab.client()
    with pytest.MonkeyPatch.context() as patch:
        def broken(self: Tenants, name: str) -> Any:
            raise RuntimeError("a bug")

        patch.setattr(Tenants, "get_or_create", broken)
        return _answer(client.request("PUT", "/jobs", {"cmd": "true"}))


def _storage_full(lab: Lab) -> Answer:
    # A real full disk: the state folder on a tmpfs of 256 KiB, filled up.
    mount = Path(tempfile.mkdtemp(prefix="jobkit-full-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        server = _start(lab, threads=4, state_dir=mount / "state")
        try:
            with contextlib.suppress(OSError), open(mount / "filler", "wb", buffering=0) as out:
                while True:
                    out.write(b"\0" * 4096)
            return _answer(lab.client(server).request("PUT", "/jobs", {"cmd": "true"}))
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def _cluster_gone(lab: Lab) -> Answer:
    # A real Ray cluster that the server reached at start, then cannot.
    cluster = lab.request.getfixturevalue("ray_cluster")
    host, _, port = cluster.address.removeprefix("http://").partition(":")
    forwarder = Forwarder((host, int(port)))
    try:
        server = _start(lab, threads=4, executor="ray",
                        executor_options={"address": f"http://127.0.0.1:{forwarder.port}"})
        try:
            forwarder.close()
            return _answer(lab.client(server).request("PUT", "/jobs", {"cmd": "true"}))
        finally:
            server.stop()
    finally:
        forwarder.close()


def _start(lab: Lab, **options: Any) -> JobServer:
    server = JobServer(lab.pki, port=0, **options)
    server.start()
    return server


PROVOKE: dict[ProblemKind, Callable[[Lab], Answer]] = {
    K.BAD_REQUEST: lambda lab: _answer(lab.client().request(
        "PUT", "/jobs", body=b"{", headers=JSON)),
    K.BAD_FIELD: lambda lab: _answer(lab.client().request("PUT", "/jobs", {"cmd": 3})),
    K.UNKNOWN_BACKEND: lambda lab: _answer(lab.client().request(
        "PUT", "/jobs", {"cmd": "true", "backend": "nope"})),
    K.BAD_CERTIFICATE_IDENTITY: _two_cns,
    K.NOT_ALLOWED: lambda lab: _answer(lab.client().get("/jobs?all=true")),
    K.NO_SUCH_JOB: lambda lab: _answer(lab.client().get("/jobs/12345/status")),
    K.NO_SUCH_ENDPOINT: lambda lab: _answer(lab.client().get("/nowhere")),
    K.METHOD_NOT_ALLOWED: lambda lab: _answer(lab.client().request("POST", "/jobs")),
    K.REQUEST_TIMEOUT: _timeout,
    K.BODY_TOO_LARGE: lambda lab: _answer(lab.client().request(
        "PUT", "/jobs", body=b" " * (2 << 20), headers=JSON)),
    K.UNSUPPORTED_MEDIA_TYPE: lambda lab: _answer(lab.client().request(
        "PUT", "/jobs", body=b"{}", headers={"Content-Type": "text/plain"})),
    K.QUOTA_EXCEEDED: _quota,
    K.INTERNAL_ERROR: _internal,
    K.NOT_IMPLEMENTED: lambda lab: lab.raw(
        b"PUT /jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
    K.SERVER_BUSY: _busy,
    K.SERVER_STOPPING: _stopping,
    K.STORAGE_FAILED: _storage_full,
    K.EXECUTOR_UNAVAILABLE: _cluster_gone,
    # An HTTP version cheroot does not speak: it refuses with a kind of nothing.
    K.GENERIC: lambda lab: lab.raw(b"GET /jobs HTTP/2.0\r\nHost: x\r\n\r\n"),
}


@pytest.fixture
def lab(pki: Path, server: JobServer, make_client: Callable[..., ApiClient],
        request: pytest.FixtureRequest) -> Iterator[Lab]:
    yield Lab(pki, server, make_client, request)


@pytest.mark.parametrize("kind", [
    pytest.param(kind, marks=[pytest.mark.ray] if kind is K.EXECUTOR_UNAVAILABLE else [])
    for kind in ProblemKind], ids=lambda kind: kind.slug)
def test_a_kind_goes_from_the_server_to_an_exception_to_an_exit_code(
        lab: Lab, kind: ProblemKind) -> None:
    status, content_type, body = PROVOKE[kind](lab)
    document = problem_document(status, content_type, body)
    problem = problem_from_json(status, body)
    assert problem.kind is kind, document
    if kind is not ProblemKind.GENERIC:
        assert (status, document["title"]) == (kind.status, kind.title)
    error = error_for(problem, "127.0.0.1:1", job_id="12345", backend="nope")
    expected_class, expected_code = EXPECTED[kind]
    assert type(error) is expected_class, error
    if isinstance(error, ServerError):
        assert error.status == status
        assert error.kind == (None if kind is ProblemKind.GENERIC else kind.slug)
    failure = translate(error)
    assert failure is not None and failure.exit_code == expected_code


def test_the_members_of_a_kind_rebuild_the_librarys_exception(lab: Lab) -> None:
    _, _, body = PROVOKE[K.UNKNOWN_BACKEND](lab)
    error = error_for(problem_from_json(400, body), "x")  # no hint from the request
    assert isinstance(error, BackendNotFound) and error.name == "nope"
    from jobkit.core.plugins import backend_names

    assert str(error) == str(BackendNotFound("nope", backend_names()))
    _, _, body = PROVOKE[K.NO_SUCH_JOB](lab)
    missing = error_for(problem_from_json(404, body), "x")
    assert isinstance(missing, JobNotFound) and missing.job_id == "12345"


def test_a_problem_without_its_members_still_maps() -> None:
    missing = error_for(Problem(K.NO_SUCH_JOB, 404, "gone", {}), "x", job_id="9")
    assert isinstance(missing, JobNotFound) and missing.job_id == "9"
    unknown = error_for(Problem(K.UNKNOWN_BACKEND, 400, "no", {}), "x", backend="b")
    assert isinstance(unknown, BackendNotFound) and unknown.name == "b"
