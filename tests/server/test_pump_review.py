"""Review of the response pump: long bodies written in turns, parked while they wait."""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobkit.server.pump import LARGE_BUFFERS, LARGE_BUFFERS_PER_CLIENT
from jobkit.server.serve import JobServer
from tests.support.api import ApiClient, raw_tls, read_until_closed
from tests.support.servers import ALL_BACKENDS, start_server
from tests.support.waiting import wait_until

#: What the documentation promises for a stop ("within a few seconds").
STOP_BOUND = 5.0


def _read_until(sock: socket.socket, marker: bytes) -> bytearray:
    """What ``sock`` received up to and including ``marker`` (or a little past it)."""
    data = bytearray()
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, bytes(data)
        data += chunk
    return data


def _stop_in_time(server: JobServer) -> None:
    start = time.monotonic()
    server.stop()
    elapsed = time.monotonic() - start
    assert elapsed < STOP_BOUND, f"stop took {elapsed:.1f} s"


@pytest.fixture(scope="module")
def server_options() -> dict[str, Any]:
    return {"storage": ALL_BACKENDS}


def _pump(server: JobServer) -> Any:
    return server._server.pump  # type: ignore[attr-defined]


def _idle(server: JobServer) -> bool:
    """No stream open, no transfer live or watched by the epoll, every large buffer free."""
    pump = _pump(server)
    return (server.api.open_streams == 0 and len(pump) == 0 and not pump._watched
            and pump.large_buffers.free == LARGE_BUFFERS)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a killed client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_head_on_a_stream_route_has_no_body(server: JobServer, client: ApiClient) -> None:
    job_id = client.create("sh", "-c", "echo hello; exec sleep 600")
    wait_until(lambda: client.status(job_id)["stdout"]["written"] == 6, what="output")
    for path in (f"/jobs/{job_id}/stdout?follow=true", f"/jobs/{job_id}/stdout",
                 f"/jobs/{job_id}/output"):
        response = client.request("HEAD", path)
        assert response.status == 200, (path, response)
        assert response.body == b"", path
        # The connection stays in step: the next answer is the next request's.
        assert client.status(job_id)["status"] == "running"
    wait_until(lambda: _idle(server), what="every stream to be released")
    client.request("DELETE", f"/jobs/{job_id}")


def test_http10_follow_ends_by_closing(server: JobServer, client: ApiClient) -> None:
    job_id = client.create("sh", "-c", "printf abc; exec sleep 600")
    wait_until(lambda: client.status(job_id)["stdout"]["written"] == 3, what="output")
    sock = raw_tls(server.address, client.context)
    sock.sendall(f"GET /jobs/{job_id}/stdout?follow=true HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    data = _read_until(sock, b"abc")
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower(), head
    assert body == b"abc"
    client.request("DELETE", f"/jobs/{job_id}")
    rest = read_until_closed(sock)
    assert rest == b"", rest
    sock.close()
    wait_until(lambda: _idle(server), what="every stream to be released")


def test_a_request_pipelined_behind_a_download_is_answered(
    server: JobServer, client: ApiClient
) -> None:
    job_id = client.create("head", "-c", str(3 << 20), "/dev/urandom", backend="tempfile")
    client.wait(job_id)
    sock = raw_tls(server.address, client.context)
    sock.sendall(f"GET /jobs/{job_id}/stdout HTTP/1.1\r\nHost: x\r\n\r\n"
                 f"GET /jobs/{job_id}/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                 .encode())
    data = read_until_closed(sock, limit=8 << 20)
    sock.close()
    assert data.count(b"HTTP/1.1 200") == 2, data[-300:]
    assert data.endswith(b"}"), data[-300:]
    wait_until(lambda: _idle(server), what="every stream to be released")


def test_junk_sent_during_a_follow_is_answered_after_it(
    server: JobServer, client: ApiClient
) -> None:
    job_id = client.create("sh", "-c", "printf abc; exec sleep 600")
    wait_until(lambda: client.status(job_id)["stdout"]["written"] == 3, what="output")
    sock = raw_tls(server.address, client.context)
    sock.sendall(f"GET /jobs/{job_id}/stdout?follow=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = _read_until(sock, b"abc")
    sock.sendall(b"\x00\x01 garbage \xff\r\n\r\n")
    assert client.status(job_id)["status"] == "running"
    client.request("DELETE", f"/jobs/{job_id}")
    data += read_until_closed(sock)
    sock.close()
    assert b"0\r\n\r\n" in data, data
    assert b"HTTP/1.1 400" in data.partition(b"0\r\n\r\n")[2], data
    wait_until(lambda: _idle(server), what="every stream to be released")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_many_follows_of_a_quiet_job_come_and_go(
    server: JobServer, make_client: Callable[..., ApiClient]
) -> None:
    owner = make_client()
    job_id = owner.create("sleep", "600")
    wait_until(lambda: _idle(server), what="a quiet server")
    threads, fds = threading.active_count(), _fds()
    stream = server.api._tenants.get(owner.name).pool._stream(job_id, "stdout")
    for _round in range(10):
        followers = []
        for _ in range(50):
            sock = raw_tls(server.address, owner.context)
            sock.sendall(f"GET /jobs/{job_id}/stdout?follow=true HTTP/1.1\r\nHost: x\r\n\r\n"
                         .encode())
            followers.append(sock)
        # Each gets its headers: it is open and parked.
        for sock in followers:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        wait_until(lambda: server.api.open_follow_streams == 50, what="50 follows")
        wait_until(lambda: len(stream.waiters) == 50, what="50 parked")
        for sock in followers[:25]:
            sock.close()
        for sock in followers[25:]:
            _reset(sock)
        wait_until(lambda: _idle(server), what="every stream to be released")
    assert len(stream.waiters) == 0
    wait_until(lambda: threading.active_count() <= threads and _fds() <= fds,
               what=f"threads {threads} and descriptors {fds} back")
    owner.close()  # idle for longer than the connection timeout
    owner.request("DELETE", f"/jobs/{job_id}")


def test_stop_with_streams_waiting_for_data_for_their_clients_and_in_turns(
    pki: Path, make_client: Callable[..., ApiClient], caplog: pytest.LogCaptureFixture
) -> None:
    hooked: list[Any] = []
    previous_hook = threading.excepthook
    threading.excepthook = hooked.append
    threads = {t.ident for t in threading.enumerate()}
    server = start_server(pki, storage=ALL_BACKENDS, threads=4)
    sockets: list[ssl.SSLSocket] = []
    readers: list[threading.Thread] = []
    try:
        client = make_client(target=server)
        quiet = client.create("sleep", "600")
        big = client.create("head", "-c", str(64 << 20), "/dev/zero", backend="tempfile")
        client.wait(big)
        for _ in range(6):  # waiting for data
            sock = raw_tls(server.address, client.context)
            sock.sendall(f"GET /jobs/{quiet}/stdout?follow=true HTTP/1.1\r\nHost: x\r\n\r\n"
                         .encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sockets.append(sock)
        for path in ("stdout", "output", "stdout?follow=true") * 2:  # waiting for the client
            sock = raw_tls(server.address, client.context)
            sock.sendall(f"GET /jobs/{big}/{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(100)
            sockets.append(sock)
        for _ in range(6):  # reading as fast as it can: in turns, or queued for one
            sock = raw_tls(server.address, client.context)
            sock.sendall(f"GET /jobs/{big}/stdout HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            reader = threading.Thread(target=read_until_closed, args=(sock, 1 << 40))
            reader.start()
            readers.append(reader)
            sockets.append(sock)
        wait_until(lambda: server.api.open_streams == 18, what="18 streams")
    finally:
        _stop_in_time(server)
    try:
        for reader in readers:
            reader.join(STOP_BOUND)
            assert not reader.is_alive()
        wait_until(lambda: {t.ident for t in threading.enumerate()} <= threads,
                   timeout=STOP_BOUND,
                   what=f"no thread left: {threading.enumerate()}")
        assert not hooked, hooked
        errors = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
        assert not errors, [r.getMessage() for r in errors]
    finally:
        threading.excepthook = previous_hook
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_unread_downloads_whose_clients_leave_are_released(
    server: JobServer, client: ApiClient, how: str
) -> None:
    job_id = client.create("head", "-c", str(32 << 20), "/dev/zero", backend="tempfile")
    client.wait(job_id)
    wait_until(lambda: _idle(server), what="a quiet server")
    sockets = []
    for path in ("stdout", "output") * 8:
        sock = raw_tls(server.address, client.context)
        sock.sendall(f"GET /jobs/{job_id}/{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(100)
        sockets.append(sock)
    wait_until(lambda: server.api.open_streams == 16, what="16 downloads")
    for sock in sockets:
        if how == "reset":
            _reset(sock)
        else:
            sock.close()
    # Well before the write timeout: the epoll hears of each.
    wait_until(lambda: _idle(server), timeout=5, what="every stream to be released")


def test_an_http10_keep_alive_follow_still_ends_by_closing(
    server: JobServer, client: ApiClient
) -> None:
    job_id = client.create("sh", "-c", "printf abc; exec sleep 600")
    wait_until(lambda: client.status(job_id)["stdout"]["written"] == 3, what="output")
    sock = raw_tls(server.address, client.context)
    sock.sendall(f"GET /jobs/{job_id}/stdout?follow=true HTTP/1.0\r\nHost: x\r\n"
                 f"Connection: keep-alive\r\n\r\n".encode())
    data = _read_until(sock, b"abc")
    head = bytes(data).partition(b"\r\n\r\n")[0].lower()
    assert b"chunked" not in head and b"content-length" not in head, head
    client.request("DELETE", f"/jobs/{job_id}")
    assert read_until_closed(sock) == b""
    sock.close()
    wait_until(lambda: _idle(server), what="every stream to be released")


def test_a_request_pipelined_behind_a_follow_is_answered_when_it_ends(
    server: JobServer, client: ApiClient, fifo: Path
) -> None:
    job_id = client.create("cat", str(fifo))
    sock = raw_tls(server.address, client.context)
    sock.sendall(f"GET /jobs/{job_id}/stdout?follow=true HTTP/1.1\r\nHost: x\r\n\r\n"
                 f"GET /jobs/{job_id}/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                 .encode())
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    with open(fifo, "wb", buffering=0) as writer:
        writer.write(b"line\n")  # the job ends when the writer closes
    data = read_until_closed(sock)
    sock.close()
    follow, end, status = data.partition(b"0\r\n\r\n")
    assert b"line\n" in follow and end, data
    # The stream ends when the job closes its stdout, maybe before its exit is seen.
    assert status.startswith(b"HTTP/1.1 200") and job_id.encode() in status, status
    wait_until(lambda: _idle(server), what="every stream to be released")


@pytest.mark.parametrize("follow", [True, False], ids=["follow", "download"])
def test_an_offset_past_the_end_gives_an_empty_body(
    server: JobServer, client: ApiClient, fifo: Path, follow: bool
) -> None:
    job_id = client.create("cat", str(fifo))
    conn = client.connect()
    conn.request("GET", f"/jobs/{job_id}/stdout?offset=1000000"
                 + ("&follow=true" if follow else ""))
    response = conn.getresponse()
    assert response.headers["X-Jobkit-Offset"] == "1000000"
    with open(fifo, "wb", buffering=0) as writer:
        writer.write(b"short\n")
    assert response.read() == b""
    conn.close()
    client.wait(job_id)
    wait_until(lambda: _idle(server), what="every stream to be released")



def test_the_pump_thread_ends_quietly_when_stopped_while_it_polls(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # stop() wakes the thread out of its poll (an eventfd) and closes the epoll
    # only once the thread has ended: it never polls a closed epoll.
    from jobkit.server import pump as pump_module

    polling = threading.Event()
    real_epoll = select.epoll

    class WatchedEpoll:
        def __init__(self) -> None:
            self._epoll = real_epoll()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._epoll, name)

        def poll(self, timeout: float | None = -1, maxevents: int = -1) -> Any:
            polling.set()
            return self._epoll.poll(timeout, maxevents)

    monkeypatch.setattr(pump_module.select, "epoll", WatchedEpoll)
    hooked: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", hooked.append)
    pump = pump_module.ResponsePump(lambda conn: None, write_timeout=1.0,
                                    peer_gone=lambda transfer: False, max_turns=1)
    pump.start()
    assert polling.wait(STOP_BOUND)
    thread = pump._thread
    assert thread is not None
    assert pump.stop() == []
    assert not thread.is_alive()
    assert pump.stop() == []  # a second stop (cheroot's, after a failed start) is harmless
    assert not hooked, [(h.exc_type, h.exc_value) for h in hooked]


def test_a_download_ends_at_what_was_written_when_the_request_came(
    server: JobServer, client: ApiClient, fifo: Path
) -> None:
    # docs/server.md: "from ?offset=N to what was written when the request came".
    size = 30_000_000  # more than sockets hold in flight; not a multiple of any buffer size
    job_id = client.create("sh", "-c", f"head -c {size} /dev/zero; cat {fifo}", backend="tempfile")
    wait_until(lambda: client.status(job_id)["stdout"]["written"] == size, what="first bytes")
    sock = raw_tls(server.address, client.context)
    sock.sendall(f"GET /jobs/{job_id}/stdout HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                 .encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 200")  # the rest waits: we read no more
    with open(fifo, "wb", buffering=0) as writer:
        writer.write(b"x" * (2 << 20))
    wait_until(lambda: client.status(job_id)["stdout"]["written"] == size + (2 << 20),
               what="more output")
    data = read_until_closed(sock, limit=64 << 20)
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Length" not in head  # chunked: count the data, not the framing
    received, rest = bytearray(), body
    while rest:
        line, _, rest = rest.partition(b"\r\n")
        length = int(line, 16)
        if not length:
            break
        received += rest[:length]
        rest = rest[length + 2:]
    assert (len(received), received.count(b"x")) == (size, 0)
    client.wait(job_id)


def test_an_http10_body_ends_with_a_tls_close_notify(server: JobServer, client: ApiClient) -> None:
    # Its end is the connection's end: without close_notify a client cannot
    # tell it from a connection cut by someone in between (a truncation).
    job_id = client.create("sh", "-c", "printf abc; exec sleep 600")
    wait_until(lambda: client.status(job_id)["stdout"]["written"] == 3, what="output")
    sock = client.context.wrap_socket(socket.create_connection(server.address, timeout=10),
                                      server_hostname="localhost", suppress_ragged_eofs=False)
    sock.sendall(f"GET /jobs/{job_id}/stdout?follow=true HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    data = _read_until(sock, b"abc")
    client.request("DELETE", f"/jobs/{job_id}")
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ssl.SSLEOFError as error:
        pytest.fail(f"the body ended without close_notify: {error}")
    finally:
        sock.close()


def test_a_follow_that_ends_does_not_wake_the_other_followers(
    server: JobServer, make_client: Callable[..., ApiClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = make_client()
    job_id = owner.create("sleep", "600")
    stream = server.api._tenants.get(owner.name).pool._stream(job_id, "stdout")
    sockets = []
    for _ in range(40):
        sock = raw_tls(server.address, owner.context)
        sock.sendall(f"GET /jobs/{job_id}/stdout?follow=true HTTP/1.1\r\nHost: x\r\n\r\n"
                     .encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sockets.append(sock)
    wait_until(lambda: len(stream.waiters) == 40, what="40 parked")
    pump = _pump(server)
    turns: list[Any] = []
    dispatch = pump._dispatch
    monkeypatch.setattr(pump, "_dispatch", lambda conn: (turns.append(conn), dispatch(conn)))
    sockets.pop().close()
    wait_until(lambda: server.api.open_follow_streams == 39, what="one follow to end")
    wait_until(lambda: len(stream.waiters) == 39, what="the others parked again")
    try:
        assert len(turns) <= 1, f"{len(turns)} turns for one follow that ended"
    finally:
        for sock in sockets:
            sock.close()
        wait_until(lambda: _idle(server), what="every stream to be released")
        owner.request("DELETE", f"/jobs/{job_id}")



def test_a_client_that_reads_nothing_holds_no_more_than_its_share_of_large_buffers(
    server: JobServer, make_client: Callable[..., ApiClient]
) -> None:
    # docs/architecture.md: a transfer fills a 1 MiB buffer "while its client keeps up".
    client = make_client()  # one client: its allowance (64 streams) is enough
    job_id = client.create("head", "-c", str(64 << 20), "/dev/zero", backend="tempfile")
    client.wait(job_id)
    wait_until(lambda: _idle(server), what="a quiet server")
    sockets = []
    try:
        for _ in range(LARGE_BUFFERS):
            sock = raw_tls(server.address, client.context)
            sock.sendall(f"GET /jobs/{job_id}/stdout HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(100)
            sockets.append(sock)
        wait_until(lambda: server.api.open_streams == LARGE_BUFFERS, what="the downloads")
        wait_until(lambda: all(t.waiting.value == "writable" for t in _pump(server)._connections),
                   what="every download to wait for its client")
        # It holds its share of the large buffers at most; the rest stay free.
        buffers = _pump(server).large_buffers
        assert buffers.held_by(client.name) <= LARGE_BUFFERS_PER_CLIENT
        assert buffers.free >= LARGE_BUFFERS - LARGE_BUFFERS_PER_CLIENT
    finally:
        for sock in sockets:
            sock.close()
