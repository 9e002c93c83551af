"""Follow streams: several at once, ending on every condition, and within their limits."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobkit.server.serve import JobServer
from tests.support.api import ApiClient
from tests.support.pki import ADMIN
from tests.support.servers import ALL_BACKENDS, new_api_client, running_server
from tests.support.waiting import wait_until


class Follow:
    """One open ``?follow=true`` response on its own connection."""

    def __init__(self, client: ApiClient, path: str) -> None:
        self.conn = client.connect()
        self.conn.request("GET", path)
        self.response = self.conn.getresponse()
        self.received = bytearray()

    def read_until(self, expected: bytes) -> None:
        """Read what arrives until ``received`` ends with ``expected``."""
        while not self.received.endswith(expected):
            chunk = self.response.read1(65536)
            assert chunk, f"stream ended early with {bytes(self.received[-200:])!r}"
            self.received += chunk

    def read_to_end(self) -> bytes:
        self.received += self.response.read()  # returns only once the chunked body ended
        assert self.response.isclosed()
        return bytes(self.received)

    def close(self) -> None:
        self.conn.close()


def test_several_followers_see_the_same_bytes_as_they_come(
    server: JobServer, client: ApiClient, admin: ApiClient, fifo: Path
) -> None:
    job_id = client.create("cat", str(fifo))
    # Two of the owner's (its allowance on this 16-thread server) and two of an admin's.
    followers = [Follow(client, f"/jobs/{job_id}/stdout?follow=true") for _ in range(2)]
    followers += [Follow(admin, f"/jobs/{job_id}/stdout?follow=true&client={client.name}")
                  for _ in range(2)]
    try:
        assert all(f.response.status == 200 for f in followers)
        assert all(f.response.headers["Transfer-Encoding"] == "chunked" for f in followers)
        with open(fifo, "wb", buffering=0) as writer:
            for line in [b"one\n", b"two\n", b"three\n"]:
                writer.write(line)
                for follower in followers:
                    follower.read_until(line)  # each line arrives while the job runs
        # The job ended: every stream ends too, with everything in it.
        for follower in followers:
            assert follower.read_to_end() == b"one\ntwo\nthree\n"
    finally:
        for follower in followers:
            follower.close()
    assert client.wait(job_id)["status"] == "completed"


def test_follow_from_an_offset_and_from_stderr(client: ApiClient, fifo: Path) -> None:
    job_id = client.create("sh", "-c", f"printf 0123456789 >&2; cat {fifo} >&2")
    wait_until(lambda: client.status(job_id)["stderr"]["written"] == 10, what="first bytes")
    follower = Follow(client, f"/jobs/{job_id}/stderr?follow=true&offset=6")
    assert follower.response.headers["X-Jobkit-Offset"] == "6"
    follower.read_until(b"6789")
    with open(fifo, "wb", buffering=0) as writer:
        writer.write(b"more")
    assert follower.read_to_end() == b"6789more"
    follower.close()


def test_follow_of_a_finished_job_returns_everything_and_ends(client: ApiClient) -> None:
    size = 3 * (1 << 20) + 7
    job_id = client.create("head", "-c", str(size), "/dev/urandom", backend="tempfile")
    client.wait(job_id)
    follower = Follow(client, f"/jobs/{job_id}/stdout?follow=true")
    data = follower.read_to_end()
    follower.close()
    assert len(data) == size
    assert data == client.get(f"/jobs/{job_id}/stdout").body


def test_deleting_the_job_ends_its_followers(server: JobServer, client: ApiClient) -> None:
    job_id = client.create("sleep", "600")
    follower = Follow(client, f"/jobs/{job_id}/stdout?follow=true")
    wait_until(lambda: server.api.open_follow_streams >= 1, what="the stream to open")
    assert client.request("DELETE", f"/jobs/{job_id}").status == 200
    assert follower.read_to_end() == b""
    follower.close()


def test_a_client_that_goes_away_ends_its_stream(server: JobServer, client: ApiClient) -> None:
    # A quiet job: nothing is written, so only the disconnect check can notice.
    job_id = client.create("sleep", "600")
    before = server.api.open_follow_streams
    follower = Follow(client, f"/jobs/{job_id}/stdout?follow=true")
    wait_until(lambda: server.api.open_follow_streams == before + 1, what="the stream to open")
    follower.conn.sock.close()  # type: ignore[union-attr]
    follower.close()
    wait_until(lambda: server.api.open_follow_streams == before, timeout=5,
               what="the server to notice the client left")
    assert client.status(job_id)["status"] == "running"
    client.request("DELETE", f"/jobs/{job_id}")


def test_a_follower_on_the_ring_backend_skips_what_was_dropped(client: ApiClient) -> None:
    job_id = client.create("head", "-c", str(3 << 20), "/dev/zero", backend="ring")
    status = client.wait(job_id)
    follower = Follow(client, f"/jobs/{job_id}/stdout?follow=true")
    assert follower.response.headers["X-Jobkit-Offset"] == str(status["stdout"]["dropped"])
    data = follower.read_to_end()
    follower.close()
    assert len(data) == status["stdout"]["written"] - status["stdout"]["dropped"]


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


# -- limits: followers cannot starve other requests ---------------------------------------------


@pytest.fixture
def small_server(pki: Path) -> Iterator[JobServer]:
    # 2 output streams in all, 1 per client
    with running_server(pki, storage=ALL_BACKENDS, threads=4, max_streams=2,
                        max_client_streams=1) as server:
        yield server


def test_stream_limits_are_enforced_and_leave_other_requests_alone(
    small_server: JobServer, make_client: Callable[..., ApiClient]
) -> None:
    limits = small_server.api.limits
    assert (limits.max_streams, limits.max_client_streams) == (2, 1)
    x, y, z = (make_client(target=small_server) for _ in range(3))
    jobs = {client.name: client.create("sleep", "600") for client in (x, y, z)}

    first = Follow(x, f"/jobs/{jobs[x.name]}/stdout?follow=true")
    assert first.response.status == 200
    again = x.get(f"/jobs/{jobs[x.name]}/stderr?follow=true")
    assert again.status == 429 and "output streams" in again.problem()["detail"]
    assert f"for client {x.name!r} (limit 1 " in again.problem()["detail"]
    second = Follow(y, f"/jobs/{jobs[y.name]}/stdout?follow=true")
    assert second.response.status == 200
    full = z.get(f"/jobs/{jobs[z.name]}/stdout?follow=true")
    assert full.status == 503 and "on this server (limit 2 " in full.problem()["detail"]
    assert full.headers["Retry-After"] == "1"

    # With every stream slot taken, ordinary requests are served; a download
    # is a stream too (it holds a connection and a buffer while the client reads).
    for client in (x, y, z):
        assert client.get("/jobs").status == 200
        assert client.get(f"/jobs/{jobs[client.name]}/status").status == 200
    assert x.get(f"/jobs/{jobs[x.name]}/stdout").status == 429
    assert z.get(f"/jobs/{jobs[z.name]}/stdout").status == 503

    first.close()
    wait_until(lambda: small_server.api.open_follow_streams == 1, timeout=5,
               what="the closed stream to be noticed")
    third = Follow(z, f"/jobs/{jobs[z.name]}/stdout?follow=true")
    assert third.response.status == 200
    for follow in (second, third):
        follow.close()


def test_an_unknown_stream_name_is_not_an_endpoint(client: ApiClient) -> None:
    job_id = client.create("true")
    response = client.get(f"/jobs/{job_id}/stdin?follow=true")
    assert response.status == 404


def test_follow_responses_are_raw_bytes(client: ApiClient, fifo: Path) -> None:
    job_id = client.create("cat", str(fifo))
    follower = Follow(client, f"/jobs/{job_id}/stdout?follow=true")
    assert follower.response.headers["Content-Type"] == "application/octet-stream"
    payload = bytes(range(256)) * 64
    with open(fifo, "wb", buffering=0) as writer:
        writer.write(payload)
    assert follower.read_to_end() == payload
    follower.close()


def test_a_follow_response_can_be_read_with_plain_http_client(client: ApiClient) -> None:
    job_id = client.create("printf", "abc")
    client.wait(job_id)
    conn = client.connect()
    conn.request("GET", f"/jobs/{job_id}/stdout?follow=true")
    response: http.client.HTTPResponse = conn.getresponse()
    assert response.read() == b"abc"
    conn.close()


@pytest.fixture
def two_follows_each(pki: Path) -> Iterator[JobServer]:
    with running_server(pki, max_client_streams=2) as server:  # 2 streams per client
        yield server


def test_an_admins_follows_count_against_the_admin(
    two_follows_each: JobServer, make_client: Callable[..., ApiClient]
) -> None:
    bob = make_client(target=two_follows_each)
    admin = make_client(ADMIN, target=two_follows_each)
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


# -- waiting streams hold no worker thread (issue 11) ---------------------------------------


def test_waiting_streams_hold_no_worker_thread(pki: Path) -> None:
    # Two worker threads; ten quiet follows, ten unread downloads and five unread
    # /output documents.  Were a waiting response to keep its thread, nobody
    # else would be served.
    with running_server(pki, threads=2) as server:
        hoarder = new_api_client(server.address, pki, "hoarder")
        other = new_api_client(server.address, pki, "other")
        quiet = hoarder.create("sleep", "600")
        big = hoarder.create("head", "-c", str(32 << 20), "/dev/zero")
        assert hoarder.wait(big, timeout=60)["exit_code"] == 0
        held = [Follow(hoarder, f"/jobs/{quiet}/stdout?follow=true") for _ in range(10)]
        held += [Follow(hoarder, f"/jobs/{big}/output") for _ in range(5)]
        held += [Follow(hoarder, f"/jobs/{big}/stdout") for _ in range(10)]
        try:
            assert all(stream.response.status == 200 for stream in held)
            wait_until(lambda: server.api.open_streams == 25, what="25 open streams")
            workers = server._server.requests
            wait_until(lambda: workers.idle == 2, what="both worker threads to be idle")
            # Everyone else is served: requests, a whole download, a follow.
            job = other.create("sh", "-c", "echo hello; sleep 1; echo bye")
            assert other.get("/jobs").status == 200
            mine = Follow(other, f"/jobs/{job}/stdout?follow=true")
            assert mine.read_to_end() == b"hello\nbye\n"
            mine.close()
            assert other.get(f"/jobs/{job}/stdout").body == b"hello\nbye\n"
            # The unread downloads are whole when finally read.
            assert len(held[-1].read_to_end()) == 32 << 20
        finally:
            for stream in held:
                stream.close()
        wait_until(lambda: server.api.open_streams == 0, timeout=30,
                   what="the streams to be given up")


def test_a_client_that_reads_nothing_is_cut_off_after_the_connection_timeout(
    pki: Path
) -> None:
    with running_server(pki, threads=2, connection_timeout=1) as server:
        client = new_api_client(server.address, pki, "stalled")
        big = client.create("head", "-c", str(32 << 20), "/dev/zero")
        assert client.wait(big, timeout=60)["exit_code"] == 0
        stalled = Follow(client, f"/jobs/{big}/stdout")
        try:
            assert stalled.response.status == 200
            # The connection stays open on our side, unread: the server gives the
            # stream's slot up by itself, and the body never completes.
            wait_until(lambda: server.api.open_streams == 0, timeout=30,
                       what="the stalled download to be cut off")
            with pytest.raises((http.client.IncompleteRead, ConnectionError)):
                stalled.response.read()
        finally:
            stalled.close()
        # (A new client: the first one's idle keep-alive connection timed out too.)
        assert new_api_client(server.address, pki, "next").get("/jobs").status == 200
