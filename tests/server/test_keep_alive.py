"""Keep-alive connections: a worker serves a client's next request while it is there.

The worker that answered a request waits a moment for the same connection's
next one (`jobkit.server.connection.KEEP_ALIVE_LINGER`), serving at most a
turn's worth in a row before the connection queues again like any other.
"""

from __future__ import annotations

import re

from jobkit.server.connection import MOST_REQUESTS_A_TURN
from tests.support.api import ApiClient, raw_tls, read_until_closed


def test_one_connection_serves_more_requests_than_a_worker_turn(client: ApiClient) -> None:
    job_id = client.create("sleep", "60")
    conn = client.conn
    # Past the end of several turns: each time the connection goes back to
    # cheroot, and must come back with the next request, open and in step.
    for number in range(3 * MOST_REQUESTS_A_TURN + 1):
        response = client.get(f"/jobs/{job_id}/status")
        assert response.status == 200, (number, response)
        assert response.json()["id"] == job_id
        assert response.headers.get("Connection", "").lower() != "close"
    assert client.conn is conn, "the keep-alive connection was closed on the way"
    client.request("DELETE", f"/jobs/{job_id}")


def test_pipelined_requests_are_each_answered_in_order(client: ApiClient) -> None:
    """Requests sent at once: each next one is already buffered when the last is answered."""
    first = b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n"
    second = b"GET /jobs/no-such-job/status HTTP/1.1\r\nHost: localhost\r\n\r\n"
    last = b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with raw_tls(client.address, client.context) as sock:
        sock.sendall(first + second + last)
        answers = read_until_closed(sock, limit=1 << 24)
    assert _statuses(answers) == [200, 404, 200], answers[:300]


def _statuses(answers: bytes) -> list[int]:
    """The status of each response in ``answers``, read one after another by their lengths."""
    statuses = []
    while answers:
        head, _, rest = answers.partition(b"\r\n\r\n")
        statuses.append(int(head.split(b" ", 2)[1]))
        length = re.search(rb"^content-length: *(\d+)", head, re.IGNORECASE | re.MULTILINE)
        assert length, head
        answers = rest[int(length.group(1)):]
    return statuses
