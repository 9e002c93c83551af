"""`SocketReader` decides when a request is whole enough for a worker: its head,
and the body of a PUT/POST/PATCH up to `SELECTOR_BODY` (see docs/server.md).

Fed a byte stream piece by piece over a real socket pair, as records would
arrive; and against a real server for ``Expect: 100-continue``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from jobkit.server.connection import SELECTOR_BODY, SocketReader
from tests.support.api import ApiClient, raw_tls


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, SocketReader]]:
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    yield theirs, SocketReader(ours)
    ours.close()
    theirs.close()


def feed(pair: tuple[socket.socket, SocketReader], pieces: list[bytes]) -> list[bool]:
    """Send each piece, then ask whether the request is ready; the answers."""
    theirs, reader = pair
    answers = []
    for piece in pieces:
        theirs.sendall(piece)
        answers.append(reader.request_ready())
    return answers


HEAD = b"PUT /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def test_a_body_by_length_is_waited_for(pair: tuple[socket.socket, SocketReader]) -> None:
    body = b'{"cmd": "true"}'
    pieces = [HEAD + b"Content-Length: %d\r\n\r\n" % len(body), body[:5], body[5:]]
    assert feed(pair, pieces) == [False, False, True]


def test_a_get_is_ready_with_its_head(pair: tuple[socket.socket, SocketReader]) -> None:
    assert feed(pair, [b"GET /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"]) == [True]


def test_a_large_body_is_left_to_the_worker(pair: tuple[socket.socket, SocketReader]) -> None:
    head = HEAD + b"Content-Length: %d\r\n\r\n" % (SELECTOR_BODY + 1)
    assert feed(pair, [head]) == [True]


def test_a_chunked_body_trickled_a_byte_a_record(
    pair: tuple[socket.socket, SocketReader],
) -> None:
    """2,000 one-byte chunks, each its own record: ready only after the last
    chunk and the empty trailer, and each look starts where the last stopped
    (a look from the start each time cost seconds of CPU per request)."""
    chunks = [b"1\r\n" + bytes([48 + i % 10]) + b"\r\n" for i in range(2000)]
    pieces = [HEAD + b"Transfer-Encoding: chunked\r\n\r\n", *chunks, b"0\r\n", b"\r\n"]
    answers = feed(pair, pieces)
    assert answers == [False] * (len(pieces) - 1) + [True]
    scan = pair[1]._scan
    assert scan.chunk_total == 2000
    assert pair[1].read(len(HEAD) + 10).startswith(HEAD)  # all of it there, in order


@pytest.mark.parametrize("pieces", [
    [b"zz\r\n"],  # not a size
    [b"%x\r\n" % (SELECTOR_BODY + 1)],  # announces more than is waited for
    [b"1" * 300],  # a size line that never ends
])
def test_a_chunked_body_the_worker_must_answer_is_ready_at_once(
    pair: tuple[socket.socket, SocketReader], pieces: list[bytes]
) -> None:
    assert feed(pair, [HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + pieces[0]]) == [True]


def test_another_transfer_coding_is_ready_with_its_head(
    pair: tuple[socket.socket, SocketReader],
) -> None:
    assert feed(pair, [HEAD + b"Transfer-Encoding: gzip\r\n\r\n"]) == [True]


def test_expect_100_continue_gets_its_100_before_the_body(client: ApiClient) -> None:
    """The client sends its body only once told to: its head alone must reach a worker."""
    body = json.dumps({"cmd": "true"}).encode()
    with raw_tls(client.address, client.context) as sock:
        sock.settimeout(30)
        sock.sendall(HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        assert sock.recv(64).startswith(b"HTTP/1.1 201")
