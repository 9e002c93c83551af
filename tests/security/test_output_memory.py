"""``GET /jobs/ID/output`` streams: several at once on a large output leave the server's RSS
where it was (it used to build the JSON in memory, about 14 times the output)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.support.api import ApiClient
from tests.support.pki import new_client_folder
from tests.support.processes import server_process

MIB = 1 << 20


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def parallel_outputs(pki: Path, size: int, parallel: int) -> None:
    with server_process(pki) as served:
        name, folder = new_client_folder(pki, "output")
        client = ApiClient(served.address, folder, name)
        # Text that JSON escapes (\n, \t, a control byte) and some that it does not.
        job_id = client.create("sh", "-c", f"yes 'ab\tc\x01d' | head -c {size}")
        assert client.wait(job_id, timeout=120)["stdout"]["written"] == size
        client.get(f"/jobs/{job_id}/output")  # warm up: the first response's buffers
        before = rss(served.pid)
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                peak[0] = max(peak[0], rss(served.pid))

        bodies: list[bytes] = []

        def fetch() -> None:
            reader = ApiClient(served.address, folder, name)
            response = reader.get(f"/jobs/{job_id}/output")
            assert response.status == 200
            bodies.append(response.body)
            reader.close()

        sampler = threading.Thread(target=sample)
        sampler.start()
        fetchers = [threading.Thread(target=fetch) for _ in range(parallel)]
        for thread in fetchers:
            thread.start()
        for thread in fetchers:
            thread.join()
        done.set()
        sampler.join()
        assert len(bodies) == parallel
        line = "ab\tc\x01d\n"
        expected = (line * (size // len(line) + 1))[:size]
        for body in bodies:  # the same document as decoding the whole output at once
            assert json.loads(body) == {"stdout": expected, "stderr": ""}
        assert peak[0] - before < 48 * MIB, (
            f"RSS grew by {(peak[0] - before) / MIB:.0f} MiB serving {parallel} x {size / MIB:.0f}"
            " MiB of output"
        )
        client.close()


def test_parallel_output_documents_keep_the_servers_memory_flat(pki: Path) -> None:
    parallel_outputs(pki, 64 * MIB, parallel=4)


@pytest.mark.slow
def test_parallel_output_documents_of_a_gibibyte(pki: Path) -> None:
    parallel_outputs(pki, 1 << 30, parallel=4)
