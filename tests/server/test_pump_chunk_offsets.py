"""``?chunk_offsets=true``: each chunk says where it starts, so a gap need not end the body."""

from __future__ import annotations

import io
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from jobkit.server.serve import JobServer
from jobkit.wire import OFFSET_HEADER
from tests.support.api import ApiClient, raw_tls
from tests.support.fifos import release
from tests.support.servers import ALL_BACKENDS
from tests.support.waiting import wait_until

#: `seq -w` lines of 8 bytes: the line at absolute offset 8 * n says n.
LINES = 4_000_000
SCRIPT = ["seq", "-w", "0", str(LINES - 1)]


@pytest.fixture(scope="module")
def server_options() -> dict[str, Any]:
    return {"storage": ALL_BACKENDS}


def _head(reader: io.BufferedReader) -> dict[str, str]:
    status = reader.readline()
    assert status.startswith(b"HTTP/1.") and b" 200 " in status, status
    headers = {}
    while (line := reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def _chunks(reader: io.BufferedReader) -> list[tuple[int | None, bytes]]:
    """Each chunk of a chunked body: (the offset its extension says, or None; its bytes)."""
    chunks: list[tuple[int | None, bytes]] = []
    while True:
        line = reader.readline()
        match = re.fullmatch(rb"([0-9a-f]+)(?:;offset=(\d+))?\r\n", line)
        assert match, line
        size = int(match.group(1), 16)
        if size == 0:
            assert reader.readline() == b"\r\n"  # no trailers
            return chunks
        data = reader.read(size)
        assert reader.read(2) == b"\r\n"
        chunks.append((None if match.group(2) is None else int(match.group(2)), data))


def _check_lines(start: int, data: bytes) -> None:
    """Every whole line of ``data`` (which starts at ``start``) is the one written there."""
    first = -(-start // 8)
    body = data[first * 8 - start :]
    for n, line in enumerate(body[: len(body) - len(body) % 8].split(b"\n")[:-1]):
        assert line == b"%07d" % (first + n), (start, n)


def _read_chunked_offsets(sock: Any, reader: io.BufferedReader, headers: dict[str, str],
                          job_id: str, end: int) -> int:
    """Read the body: each chunk says where it starts, kept bytes up to ``end``; the gaps."""
    assert headers["transfer-encoding"] == "chunked"
    chunks = _chunks(reader)
    position = 0
    gaps = 0
    for index, (start, data) in enumerate(chunks):
        assert start is not None, f"chunk {index} does not say where it starts"
        assert start >= position, "chunks overlap or go back"
        if index == 0:
            assert start == int(headers[OFFSET_HEADER.lower()])
        gaps += start > position
        _check_lines(start, data)
        position = start + len(data)
    assert position == end  # every kept byte up to the end, in one response
    # The body ended cleanly: the connection answers its next request.
    sock.sendall(f"GET /jobs/{job_id}/status HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    _head(reader)
    return gaps


def _small_window(server: JobServer, client: ApiClient) -> ssl.SSLSocket:
    """A connection whose small receive window keeps the server from sending much ahead."""
    plain = socket.socket()
    plain.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    plain.settimeout(10)
    plain.connect(server.address)
    return client.context.wrap_socket(plain, server_hostname="localhost")


def test_a_ring_follow_with_chunk_offsets_skips_gaps_and_says_where_each_chunk_starts(
    server: JobServer, client: ApiClient
) -> None:
    # The client reads nothing until the job has written everything, so the
    # ring drops bytes the server has not sent yet: gaps, carried in one body.
    sock = _small_window(server, client)
    job_id = client.create(*SCRIPT, backend="ring")
    sock.sendall(f"GET /jobs/{job_id}/stdout?follow=true&chunk_offsets=true HTTP/1.1\r\n"
                 "Host: x\r\n\r\n".encode())
    wait_until(lambda: client.status(job_id)["stdout"]["closed"], what="the job's end")
    reader = sock.makefile("rb")
    gaps = _read_chunked_offsets(sock, reader, _head(reader), job_id, 8 * LINES)
    assert gaps >= 1, "no byte was dropped: the test did not test gaps"
    sock.close()


def test_a_ring_download_with_chunk_offsets_stops_where_it_was_asked_to(
    server: JobServer, client: ApiClient, fifo: Path
) -> None:
    half = LINES // 2
    job_id = client.create("sh", "-c", f"seq -w 0 {half - 1}; cat {fifo} >/dev/null; "
                           f"seq -w {half} {LINES - 1}", backend="ring")
    wait_until(lambda: client.status(job_id)["stdout"]["written"] == 8 * half,
               what="the first half")
    sock = _small_window(server, client)
    sock.sendall(f"GET /jobs/{job_id}/stdout?chunk_offsets=true HTTP/1.1\r\n"
                 "Host: x\r\n\r\n".encode())
    reader = sock.makefile("rb")
    headers = _head(reader)  # the download has begun: it ends at 8 * half
    # Meanwhile the job writes the second half, and the ring drops the rest of
    # the first: past a gap, every byte it keeps lies beyond the download's end.
    release(fifo)
    wait_until(lambda: client.status(job_id)["stdout"]["closed"], what="the job's end")
    _read_chunked_offsets(sock, reader, headers, job_id, 8 * half)
    sock.close()


def test_without_chunk_offsets_a_gap_ends_the_body(server: JobServer, client: ApiClient) -> None:
    sock = raw_tls(server.address, client.context)
    job_id = client.create(*SCRIPT, backend="ring")
    sock.sendall(f"GET /jobs/{job_id}/stdout?follow=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    wait_until(lambda: client.status(job_id)["stdout"]["closed"], what="the job's end")
    reader = sock.makefile("rb")
    headers = _head(reader)
    chunks = _chunks(reader)
    assert all(start is None for start, _ in chunks)  # no extension unless asked
    data = b"".join(part for _, part in chunks)
    start = int(headers[OFFSET_HEADER.lower()])
    _check_lines(start, data)  # contiguous from X-Jobkit-Offset
    assert start + len(data) < 8 * LINES  # ended at the gap, before the end
    sock.close()


def test_http_1_0_cannot_carry_chunk_offsets_so_a_gap_ends_the_body(
    server: JobServer, client: ApiClient
) -> None:
    sock = raw_tls(server.address, client.context)
    job_id = client.create(*SCRIPT, backend="ring")
    request = f"GET /jobs/{job_id}/stdout?follow=true&chunk_offsets=true HTTP/1.0\r\n\r\n"
    sock.sendall(request.encode())
    wait_until(lambda: client.status(job_id)["stdout"]["closed"], what="the job's end")
    reader = sock.makefile("rb")
    headers = _head(reader)
    assert "transfer-encoding" not in headers
    data = reader.read()  # to the connection's end
    start = int(headers[OFFSET_HEADER.lower()])
    _check_lines(start, data)
    assert start + len(data) < 8 * LINES
    sock.close()


@pytest.mark.parametrize("backend", ["tempfile", "memory"])
def test_chunk_offsets_of_a_store_that_keeps_everything_are_contiguous(
    server: JobServer, client: ApiClient, backend: str
) -> None:
    job_id = client.create(*SCRIPT, backend=backend)
    sock = raw_tls(server.address, client.context)
    sock.sendall(f"GET /jobs/{job_id}/stdout?follow=true&chunk_offsets=true&offset=5 "
                 "HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    reader = sock.makefile("rb")
    _head(reader)
    end = 5
    for start, data in _chunks(reader):
        assert start == end
        end += len(data)
    assert end == 8 * LINES
    sock.close()


def test_a_malformed_chunk_offsets_is_refused(client: ApiClient) -> None:
    job_id = client.create("echo", "hi")
    response = client.get(f"/jobs/{job_id}/stdout?chunk_offsets=maybe")
    assert response.status == 400
    assert "chunk_offsets" in response.json()["detail"]
