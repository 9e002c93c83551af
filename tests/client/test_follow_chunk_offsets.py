"""`Client.follow` of a ring that drops bytes: one response, every byte at its offset."""

from __future__ import annotations

from typing import Any

from jobkit.client import Client
from tests.support.waiting import wait_until

#: `seq -w` lines of 8 bytes: the line at absolute offset 8 * n says n.
LINES = 4_000_000


def _check_lines(start: int, data: bytes) -> None:
    first = -(-start // 8)
    body = data[first * 8 - start :]
    for n, line in enumerate(body[: len(body) - len(body) % 8].split(b"\n")[:-1]):
        assert line == b"%07d" % (first + n), (start, n)


def test_a_ring_follow_skips_gaps_in_one_response(client: Client) -> None:
    job_id = client.create("seq", ["-w", "0", str(LINES - 1)], backend="ring")
    follower = client.follow(job_id, "stdout")
    reopened: list[int] = []
    reopen: Any = follower._reopen
    follower._reopen = lambda start: reopened.append(start) or reopen(start)
    first = next(follower)
    # Read nothing more until the job has written 32 MB: far more than the ring
    # (1 MiB) and the sockets hold, so the ring drops bytes not sent yet.
    wait_until(lambda: client.status(job_id).stdout.closed, what="the job's end")
    chunks = [(follower.offset - len(first), first)]
    chunks += [(follower.offset - len(chunk), chunk) for chunk in follower]
    position = gaps = 0
    for start, data in chunks:
        assert start >= position
        gaps += start > position
        _check_lines(start, data)
        position = start + len(data)
    assert position == follower.offset == 8 * LINES
    assert gaps >= 1, "no byte was dropped: the test did not test gaps"
    assert reopened == [], "a gap ended the response"


def test_a_plain_read_of_a_ring_is_its_kept_bytes(client: Client) -> None:
    job_id = client.create("seq", ["-w", "0", str(LINES - 1)], backend="ring")
    wait_until(lambda: client.status(job_id).stdout.closed, what="the job's end")
    info = client.status(job_id).stdout
    chunks = client.chunks(job_id, "stdout")
    data = b"".join(chunks)
    assert len(data) == info.written - info.dropped and chunks.offset == info.written
    _check_lines(info.dropped, data)
