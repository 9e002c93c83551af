"""Output streams cannot be hoarded (issue 11): one client's unread downloads and two
clients' quiet follows hold no worker thread and take only their own share of the stream
slots, and other clients' requests and follows go on; a quiet follow ends cleanly and the
client resumes."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit.client import Client
from jobkit.server.serve import JobServer
from tests.support.api import ApiClient
from tests.support.servers import new_api_client, running_server
from tests.support.waiting import wait_until


@pytest.fixture
def server(pki: Path) -> Iterator[JobServer]:
    # 16 threads, fewer than one client's allowance of streams (64): were a
    # waiting stream to hold a thread, nobody else would be served.
    with running_server(pki, threads=16) as served:
        yield served


def open_stream(client: ApiClient, path: str) -> tuple[http.client.HTTPSConnection, int, str]:
    """Ask for ``path`` on a new connection and read only the answer's head (and a refusal)."""
    conn = client.connect()
    conn.request("GET", path)
    response = conn.getresponse()
    detail = "" if response.status == 200 else json.loads(response.read())["detail"]
    return conn, response.status, detail


def test_seventy_unread_downloads_take_one_clients_share(server: JobServer, pki: Path) -> None:
    allowance = server.api.limits.max_client_streams
    assert allowance > 16  # more than the threads
    hoarder = new_api_client(server.address, pki, "hoarder")
    other = new_api_client(server.address, pki, "other")
    big = hoarder.create("head", "-c", str(64 << 20), "/dev/zero")
    assert hoarder.wait(big, timeout=60)["exit_code"] == 0
    held, statuses = [], []
    for _ in range(allowance + 6):  # opened, never read
        conn, status, detail = open_stream(hoarder, f"/jobs/{big}/stdout")
        statuses.append(status)
        if status == 200:
            held.append(conn)
        else:
            assert status == 429 and f"client {hoarder.name!r} (limit {allowance} " in detail
            conn.close()
    assert statuses.count(200) == allowance and statuses.count(429) == 6
    try:
        # Everyone else is served as usual: requests, downloads and follows.
        job = other.create("sh", "-c", "echo hello; sleep 1000")
        for _ in range(20):
            assert other.get("/jobs").status == 200
        wait_until(lambda: other.get(f"/jobs/{job}/stdout").body == b"hello\n",
                   what="the other client's download")
        conn, status, _ = open_stream(other, f"/jobs/{job}/stdout?follow=true")
        assert status == 200
        conn.close()
    finally:
        for conn in held:
            conn.close()
    wait_until(lambda: server.api.open_streams == 0, timeout=30,
               what="the unread downloads to be given up")


def test_two_clients_hoarding_follows_leave_slots_for_others(
    server: JobServer, pki: Path
) -> None:
    allowance = server.api.limits.max_client_streams
    hoarders = [new_api_client(server.address, pki, "hoard") for _ in range(2)]
    held = []
    for hoarder in hoarders:
        quiet = hoarder.create("sleep", "1000")
        granted = 0
        for _ in range(allowance + 2):
            conn, status, detail = open_stream(hoarder, f"/jobs/{quiet}/stdout?follow=true")
            if status == 200:
                granted += 1
                held.append(conn)
            else:
                assert status == 429 and "output streams" in detail
                conn.close()
        assert granted == allowance
    try:
        other = new_api_client(server.address, pki, "other")
        job = other.create("sh", "-c", "echo mine; sleep 1000")
        conn, status, _ = open_stream(other, f"/jobs/{job}/stdout?follow=true")
        assert status == 200
        conn.close()
    finally:
        for conn in held:
            conn.close()


def test_a_quiet_follow_ends_cleanly_and_the_client_resumes(pki: Path) -> None:
    with running_server(pki, threads=8, stream_idle_timeout=0.5) as server:
        raw = new_api_client(server.address, pki, "idle")
        quiet = raw.create("sh", "-c", "echo first; sleep 1000")
        conn = raw.connect()
        conn.request("GET", f"/jobs/{quiet}/stdout?follow=true")
        response = conn.getresponse()
        # The whole chunked body arrives and ends while the job still runs.
        assert response.read() == b"first\n"
        assert raw.status(quiet)["status"] == "running"
        conn.close()
        wait_until(lambda: server.api.open_streams == 0, what="the stream's slot to be free")
        # The Python client's follow resumes at its offset across such ends.
        late = raw.create("sh", "-c", "echo early; sleep 2; echo late")
        with Client(f"127.0.0.1:{server.address[1]}", raw.folder) as client:
            assert b"".join(client.follow(late, "stdout")) == b"early\nlate\n"
