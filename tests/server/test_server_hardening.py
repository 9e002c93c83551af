"""What a review found a client could do to the server, each fixed and kept fixed."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from jobkit.server.serve import JobServer
from tests.conftest import wait_until
from tests.server.conftest import ADMIN, ApiClient, raw_tls, read_until_closed, start_server


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cmd": "\udc80x"}, "cmd"),
        ({"cmd": "echo", "args": ["ok", "\udc80"]}, "args[1]"),
        ({"cmd": "echo", "env": {"A": "\ud800"}}, "env['A']"),
        ({"cmd": "echo", "env": {"\udc80": "x"}}, "env key"),
        ({"cmd": "echo", "cwd": "/tmp/\udc80"}, "cwd"),
    ],
)
def test_lone_surrogates_are_refused_naming_the_field(
    client: ApiClient, fields: dict[str, object], field: str
) -> None:
    # json.dumps writes them as \\udc80 escapes, which JSON allows and UTF-8 cannot carry.
    response = client.request("PUT", "/jobs", fields)
    assert response.status == 400
    assert response.problem()["detail"] == (
        f"field {field!r} must be valid Unicode (it has a lone surrogate)"
    )
    listing = client.get("/jobs")  # nothing half-created that would break the listing
    assert listing.status == 200 and listing.json()["ids"] == []


def test_a_huge_integer_timeout_is_a_400(client: ApiClient) -> None:
    body = b'{"cmd": "true", "timeout": 1' + b"0" * 400 + b"}"
    response = client.request("PUT", "/jobs", body=body,
                              headers={"Content-Type": "application/json"})
    assert (response.status, response.problem()["detail"]) == (400, "field 'timeout' is too large")


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


@pytest.fixture
def small_server(pki: Path) -> JobServer:
    server = start_server(pki, admins=[ADMIN], threads=8)  # 2 follows per client
    yield server
    server.stop()


def test_an_admins_follows_count_against_the_admin(
    small_server: JobServer, make_client: Callable[..., ApiClient]
) -> None:
    bob = make_client(target=small_server)
    admin = make_client(ADMIN, target=small_server)
    job = bob.create("sleep", "1000")
    streams = []
    for _ in range(2):
        conn = admin.connect()
        conn.request("GET", f"/jobs/{job}/stdout?follow=true&client={bob.name}")
        assert conn.getresponse().status == 200
        streams.append(conn)
    conn = admin.connect()
    conn.request("GET", f"/jobs/{job}/stdout?follow=true&client={bob.name}")
    third = conn.getresponse()
    assert third.status == 429 and ADMIN in json.loads(third.read())["detail"]
    conn.close()
    own = bob.connect()
    own.request("GET", f"/jobs/{job}/stdout?follow=true")
    assert own.getresponse().status == 200  # bob's allowance is untouched
    for stream in (*streams, own):
        stream.close()
    bob.request("DELETE", f"/jobs/{job}")


def test_a_follow_never_sends_bytes_from_another_offset(client: ApiClient) -> None:
    # Fixed-width numbered lines: every byte's absolute offset is known, so
    # the body must equal the text at the offset the header announces.
    line = 16
    script = "i=0; while [ $i -lt 200000 ]; do printf '%015d\\n' $i; i=$((i+1)); done"
    job = client.create("sh", "-c", script, backend="ring")
    for _ in range(5):
        conn = client.connect()
        conn.request("GET", f"/jobs/{job}/stdout?follow=true")
        response = conn.getresponse()
        start = int(response.headers["X-Jobkit-Offset"])
        body = response.read(256 * 1024)
        conn.close()
        first = start // line
        expected = b"".join(b"%015d\n" % i for i in range(first, first + len(body) // line + 2))
        skew = start - first * line
        assert body == expected[skew : skew + len(body)]
    client.request("DELETE", f"/jobs/{job}")


def test_a_client_leaving_mid_stream_is_not_a_warning(
    server: JobServer, client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    job = client.create("yes")
    with caplog.at_level(logging.WARNING):
        conn = client.connect()
        conn.request("GET", f"/jobs/{job}/stdout?follow=true")
        response = conn.getresponse()
        response.read(1 << 20)
        conn.sock.close()  # gone, mid-stream
        conn.close()
        # The server notices on its next write, or within its poll interval.
        wait_until(lambda: server.api._follows.count() == 0, what="the stream to end")
        client.request("DELETE", f"/jobs/{job}")
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(
        ("jobkit.server", "cheroot"))]
    assert noisy == []
