"""Which transfers fill the pump's large (1 MiB) buffers: bulk streams only."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from jobkit.server.serve import JobServer
from tests.support.api import ApiClient, raw_tls
from tests.support.servers import ALL_BACKENDS
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def server_options() -> dict[str, Any]:
    return {"storage": ALL_BACKENDS}


@pytest.fixture
def handed_out(server: JobServer, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the large buffers the server's pump hands out while the test runs."""
    buffers = server._server.pump.large_buffers  # type: ignore[attr-defined]
    counted: list[int] = []
    original = buffers.buffer

    def buffer() -> bytearray:
        counted.append(1)
        return original()

    monkeypatch.setattr(buffers, "buffer", buffer)
    return counted


def _open_writer(fifo: Path) -> int:
    """``fifo`` opened for writing, once the job has opened it for reading."""
    opened: list[int] = []

    def ready() -> bool:
        try:
            opened.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as error:
            if error.errno != errno.ENXIO:  # no reader yet
                raise
            return False
        return True

    wait_until(ready, what=f"the job to open {fifo}")
    return opened[0]


def _read_exactly(sock: Any, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the connection ended"
        data += chunk
    return data


@pytest.mark.parametrize("backend", ["tempfile", "ring"])
def test_a_follow_of_a_trickle_never_fills_a_large_buffer(
    server: JobServer, client: ApiClient, fifo: Path, handed_out: list[int], backend: str
) -> None:
    # A client that keeps up, and a job that writes a line at a time: a
    # megabyte buffer (touched whole) for each of its lines would be waste.
    job_id = client.create("sh", "-c", f"exec 3<{fifo}; while read line <&3; do echo $line; done",
                           backend=backend)
    sock = raw_tls(server.address, client.context)
    sock.sendall(f"GET /jobs/{job_id}/stdout?follow=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    writer = _open_writer(fifo)
    try:
        for n in range(20):
            os.write(writer, b"line %02d\n" % n)
            assert _read_exactly(sock, 13) == b"8\r\nline %02d\n\r\n" % n
    finally:
        os.close(writer)
    sock.close()
    assert handed_out == []


def test_a_bulk_follow_fills_large_buffers(
    server: JobServer, client: ApiClient, handed_out: list[int]
) -> None:
    job_id = client.create("head", "-c", str(32 << 20), "/dev/zero", backend="tempfile")
    response = client.get(f"/jobs/{job_id}/stdout?follow=true")
    assert response.status == 200 and len(response.body) == 32 << 20
    assert handed_out, "a client that keeps up with a bulk stream got no large buffer"
