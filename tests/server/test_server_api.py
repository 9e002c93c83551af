"""The API's happy paths, endpoint by endpoint, against a real server."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import os
import signal
from pathlib import Path

import pytest

from jobkit.server.app import JobApi
from jobkit.server.openapi import openapi_document
from jobkit.server.serve import JobServer
from jobkit.wire import ProblemKind
from tests.support.api import ApiClient, raw_tls, read_until_closed
from tests.support.procs import process_alive
from tests.support.waiting import wait_until


def test_create_then_status_output_and_list(client: ApiClient) -> None:
    command = {"cmd": "sh", "args": ["-c", "echo out; echo err >&2"]}
    response = client.request("PUT", "/jobs", command)
    assert response.status == 201
    job_id = response.json()["id"]
    assert response.headers["Location"] == f"/jobs/{job_id}/status"

    status = client.wait(job_id)
    assert status["status"] == "completed"
    assert status["exit_code"] == 0
    assert "error_msg" not in status and "signal" not in status
    assert status["id"] == job_id
    assert status["cmd"] == "sh" and status["args"] == ["-c", "echo out; echo err >&2"]
    assert isinstance(status["pid"], int)
    created = dt.datetime.fromisoformat(status["created_at"].replace("Z", "+00:00"))
    ended = dt.datetime.fromisoformat(status["ended_at"].replace("Z", "+00:00"))
    assert created <= ended and created.tzinfo is not None
    assert status["timed_out"] is False and status["output_error"] is None
    assert status["backend"] == "file"
    assert status["stdout"] == {"written": 4, "dropped": 0, "closed": True}
    assert status["stderr"] == {"written": 4, "dropped": 0, "closed": True}

    assert client.get(f"/jobs/{job_id}/output").json() == {"stdout": "out\n", "stderr": "err\n"}
    listing = client.get("/jobs").json()
    assert listing["ids"] == [job_id]
    (summary,) = listing["jobs"]
    assert summary == {**status, "client": client.name}


def test_ids_are_listed_oldest_first(client: ApiClient) -> None:
    ids = [client.create("true") for _ in range(3)]
    assert client.get("/jobs").json()["ids"] == ids


def test_a_command_that_cannot_start_is_a_job_in_error(client: ApiClient) -> None:
    job_id = client.create("/nonexistent/jobkit-test-command")
    status = client.wait(job_id)
    assert status["status"] == "error"
    assert status.get("error_msg")
    assert status["pid"] is None
    assert client.get(f"/jobs/{job_id}/output").json() == {"stdout": "", "stderr": ""}


def test_output_replaces_invalid_utf8(client: ApiClient) -> None:
    job_id = client.create("printf", r"ok \377 é")
    client.wait(job_id)
    assert client.get(f"/jobs/{job_id}/output").json()["stdout"] == "ok \ufffd é"
    raw = client.get(f"/jobs/{job_id}/stdout")
    assert raw.body == b"ok \xff " + "é".encode()


def test_output_of_many_chunks_decodes_characters_split_between_them(client: ApiClient) -> None:
    # 3-byte characters and control characters over many of the server's
    # slices: none may be split into U+FFFD or lost.
    text = "€\x01a" * 100_000
    job_id = client.create("python3", "-c", f"import sys; sys.stdout.write({text[:3]!r} * 100_000)")
    assert client.wait(job_id)["exit_code"] == 0
    assert client.get(f"/jobs/{job_id}/output").json()["stdout"] == text


def test_env_cwd_timeout_and_backend(client: ApiClient, tmp_path: Path) -> None:
    job_id = client.create("sh", "-c", 'echo "$JOBKIT_TEST" && pwd', env={"JOBKIT_TEST": "hello"},
                           cwd=str(tmp_path), backend="tempfile")
    status = client.wait(job_id)
    assert status["backend"] == "tempfile"
    assert client.get(f"/jobs/{job_id}/output").json()["stdout"] == f"hello\n{tmp_path}\n"

    response = client.request("PUT", "/jobs", {"cmd": "/usr/bin/env", "env": {"ONLY": "1"},
                                               "replace_env": True})
    assert response.status == 201
    job_id = response.json()["id"]
    client.wait(job_id)
    assert client.get(f"/jobs/{job_id}/output").json()["stdout"] == "ONLY=1\n"
    response = client.request("PUT", "/jobs", {"cmd": "true", "replace_env": "yes"})
    assert response.status == 400
    assert response.problem()["detail"] == "field 'replace_env' must be a boolean, not a string"

    job_id = client.create("sleep", "30", timeout=0.2)
    status = client.wait(job_id)
    assert status["timed_out"] is True
    assert status["status"] == "killed" and status["signal_name"] == "SIGTERM"


def test_stop_sends_sigterm_by_default_and_other_signals_by_name_or_number(
    client: ApiClient,
) -> None:
    first = client.create("sleep", "30")
    response = client.request("POST", f"/jobs/{first}/stop")
    assert response.status == 200 and response.json()["id"] == first
    status = client.wait(first)
    assert status["status"] == "killed"
    assert (status["signal"], status["signal_name"]) == (signal.SIGTERM, "SIGTERM")
    # A stopped job stays listed until deleted.
    assert first in client.get("/jobs").json()["ids"]

    for value, name in [("KILL", "SIGKILL"), (int(signal.SIGINT), "SIGINT")]:
        job_id = client.create("sleep", "30")
        response = client.request("POST", f"/jobs/{job_id}/stop", {"signal": value})
        assert response.status == 200
        assert client.wait(job_id)["signal_name"] == name


def test_delete_kills_and_forgets(client: ApiClient) -> None:
    job_id = client.create("sleep", "30")
    pid = client.status(job_id)["pid"]
    response = client.request("DELETE", f"/jobs/{job_id}")
    assert response.status == 200
    assert response.json() == {"id": job_id, "deleted": True}
    assert not process_alive(pid)
    assert client.get(f"/jobs/{job_id}/status").status == 404
    assert client.request("DELETE", f"/jobs/{job_id}").status == 404
    assert job_id not in client.get("/jobs").json()["ids"]


def test_raw_stdout_and_stderr_from_an_offset(client: ApiClient) -> None:
    job_id = client.create("sh", "-c", "printf 0123456789; printf abc >&2")
    client.wait(job_id)
    response = client.get(f"/jobs/{job_id}/stdout")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["X-Jobkit-Offset"] == "0"
    assert response.body == b"0123456789"
    response = client.get(f"/jobs/{job_id}/stdout?offset=4")
    assert (response.body, response.headers["X-Jobkit-Offset"]) == (b"456789", "4")
    assert client.get(f"/jobs/{job_id}/stdout?offset=99").body == b""
    assert client.get(f"/jobs/{job_id}/stderr?offset=1").body == b"bc"


def test_raw_bytes_of_a_large_output_arrive_whole(client: ApiClient) -> None:
    size = 5 * (1 << 20) + 123
    job_id = client.create("head", "-c", str(size), "/dev/urandom", backend="tempfile")
    client.wait(job_id)
    data = client.get(f"/jobs/{job_id}/stdout").body
    assert len(data) == size
    assert client.get(f"/jobs/{job_id}/stdout?offset={size - 10}").body == data[-10:]


def test_ring_backend_reports_where_the_bytes_start(client: ApiClient) -> None:
    job_id = client.create("head", "-c", str(4 << 20), "/dev/zero", backend="ring")
    status = client.wait(job_id)
    dropped = status["stdout"]["dropped"]
    assert dropped > 0  # the ring keeps only the newest bytes
    response = client.get(f"/jobs/{job_id}/stdout")
    assert response.headers["X-Jobkit-Offset"] == str(dropped)
    assert len(response.body) == status["stdout"]["written"] - dropped


def test_a_chunked_put_works(client: ApiClient) -> None:
    # bottle would decode the chunked body a second time (bottle issues 700, 845).
    conn = client.connect()
    body = json.dumps({"cmd": "echo", "args": ["chunked"]}).encode()
    conn.request("PUT", "/jobs", body=iter([body[:7], body[7:20], body[20:]]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 201, response.read()
    job_id = json.loads(response.read())["id"]
    # The connection stays usable: the chunked body was consumed to its very end.
    conn.request("GET", f"/jobs/{job_id}/status")
    response = conn.getresponse()
    assert response.status == 200
    response.read()
    conn.close()
    client.wait(job_id)
    assert client.get(f"/jobs/{job_id}/output").json()["stdout"] == "chunked\n"


def test_a_chunked_put_with_trailers_works(server: JobServer, client: ApiClient) -> None:
    body = json.dumps({"cmd": "true"}).encode()
    request = (b"PUT /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
               + b"GET /jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with raw_tls(server.address, client.context) as sock:
        sock.sendall(request)
        replies = read_until_closed(sock)
    assert replies.startswith(b"HTTP/1.1 201 Created")
    assert replies.count(b"HTTP/1.1 200 OK") == 1


def test_head_works_like_get_without_a_body(client: ApiClient) -> None:
    job_id = client.create("true")
    response = client.request("HEAD", f"/jobs/{job_id}/status")
    assert response.status == 200 and response.body == b""


def test_openapi_describes_every_route(server: JobServer, client: ApiClient) -> None:
    document = client.get("/openapi.json").json()
    assert document == json.loads(json.dumps(openapi_document()))
    assert document["openapi"].startswith("3.1")
    described = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete"}
    }
    served = {
        (route.rule.replace("<job_id>", "{id}"), route.method)
        for route in server.api.bottle.routes
    }
    assert described == served


def test_access_log_has_one_line_per_request(client: ApiClient,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="jobkit.server.access"):
        job_id = client.create("true")
        client.get(f"/jobs/{job_id}/status?x=1")
        client.get("/jobs/999/status")
        wait_until(lambda: len(_access(caplog)) >= 3, what="three access log lines")
    lines = _access(caplog)
    assert len(lines) == 3
    expected = [("PUT", "/jobs", "201"), ("GET", f"/jobs/{job_id}/status?x=1", "200"),
                ("GET", "/jobs/999/status", "404")]
    for line, (method, path, status) in zip(lines, expected, strict=True):
        cn, got_method, got_path, got_status, duration = line.split(" ")
        assert (cn, got_method, got_path, got_status) == (client.name, method, path, status)
        assert duration.endswith("ms") and float(duration[:-2]) >= 0


def test_the_access_log_cannot_be_forged_through_the_path(client: ApiClient,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="jobkit.server.access"):
        client.get("/jobs/x%0Afake%20line/status")
        wait_until(lambda: _access(caplog), what="an access log line")
    (line,) = _access(caplog)
    assert "\n" not in line and "\\x0a" in line


def test_control_characters_in_the_method_cannot_forge_log_lines(
    server: JobServer, client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="jobkit.server.access"):
        sock = raw_tls(server.address, client.context)
        sock.sendall(b"G\rET /jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        read_until_closed(sock)
        sock.close()
        wait_until(lambda: any("/jobs" in r.getMessage() for r in caplog.records
                               if r.name == "jobkit.server.access"))
    lines = [r.getMessage() for r in caplog.records if r.name == "jobkit.server.access"]
    assert all("\r" not in line for line in lines)
    assert any("G\\x0dET /jobs" in line for line in lines)


def _access(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "jobkit.server.access"]


def test_the_app_without_tls_refuses_everyone() -> None:
    # Behind anything but our TLS adapter there is no identity, so no access.
    api = JobApi()
    seen: list[str] = []
    body = api({"REQUEST_METHOD": "GET", "PATH_INFO": "/jobs", "QUERY_STRING": ""},
               lambda status, headers, exc_info=None: seen.append(status))
    assert seen == ["403 Forbidden"]
    problem = json.loads(b"".join(body))
    assert problem["type"] == ProblemKind.BAD_CERTIFICATE_IDENTITY.type_uri
    assert problem["detail"] == "no verified client certificate"
    api.close()


def test_http_client_keeps_one_connection_for_many_requests(client: ApiClient) -> None:
    job_id = client.create("true")
    sock = client.conn.sock
    for _ in range(20):
        assert client.get(f"/jobs/{job_id}/status").status == 200
    assert client.conn.sock is sock


def test_pid_is_the_jobs_process(client: ApiClient) -> None:
    job_id = client.create("sleep", "30")
    pid = client.status(job_id)["pid"]

    def cmdline() -> list[bytes]:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[:2]

    # Just after create the child may still be inside exec (an empty cmdline).
    wait_until(lambda: cmdline() == [b"sleep", b"30"], what="the job to be exec'd")
    assert os.getpgid(pid) == pid
    client.request("DELETE", f"/jobs/{job_id}")


def test_status_of_a_running_job(client: ApiClient) -> None:
    job_id = client.create("sleep", "30")
    status = client.status(job_id)
    assert status["status"] == "running"
    assert status["ended_at"] is None
    assert "exit_code" not in status
    client.request("DELETE", f"/jobs/{job_id}")


def test_http_1_0_clients_are_served(server: JobServer, client: ApiClient) -> None:
    conn = client.connect()
    conn._http_vsn = 10  # type: ignore[attr-defined]
    conn._http_vsn_str = "HTTP/1.0"  # type: ignore[attr-defined]
    conn.request("GET", "/jobs")
    response: http.client.HTTPResponse = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read()) == {"ids": [], "jobs": [], "next": None}
    conn.close()
