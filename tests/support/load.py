"""A load driver: many clients, each with its own certificate, driving jobs on one server.

Each client runs in a thread and loops until the time is up: it creates a job
that writes known bytes (a seeded generator, so the test knows what to
expect), follows its stdout while it runs, polls its status until it ends,
reads both streams raw and as JSON, checks that the job is listed, deletes it
and checks it is gone.  Every byte received is checked against the bytes the
job wrote, by SHA-256.  Anything unexpected (a status, a digest, an exception)
counts as an error and is kept for the report.

Used by tests/security/test_load.py and benchmarks/bench_load.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from tests.support.api import ApiClient

#: The job: writes the hex of N seeded random bytes to stdout (in 8 KiB writes,
#: so a follower sees it arrive piece by piece) and the first N/4 raw bytes to stderr.
GENERATOR = """\
import random, sys
seed, size = int(sys.argv[1]), int(sys.argv[2])
data = random.Random(seed).randbytes(size)
text = data.hex().encode()
out = sys.stdout.buffer
for start in range(0, len(text), 8192):
    out.write(text[start:start + 8192])
    out.flush()
sys.stderr.buffer.write(data[:size // 4])
"""


def expected_output(seed: int, size: int) -> tuple[bytes, bytes]:
    """What `GENERATOR` writes for ``seed`` and ``size``: (stdout, stderr)."""
    data = random.Random(seed).randbytes(size)
    return data.hex().encode(), data[: size // 4]


@attrs.define
class Figures:
    """What a load run did."""

    clients: int
    duration: float = 0.0
    requests: int = 0
    jobs: int = 0
    bytes_followed: int = 0
    bytes_read: int = 0
    errors: list[str] = attrs.Factory(list)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)

    def add(self, *, requests: int = 0, jobs: int = 0, followed: int = 0, read: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.jobs += jobs
            self.bytes_followed += followed
            self.bytes_read += read

    def error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    def summary(self) -> str:
        seconds = max(self.duration, 1e-9)
        mib = (self.bytes_followed + self.bytes_read) / (1 << 20)
        return (f"load: {self.clients} clients for {self.duration:.1f} s: "
                f"{self.requests} requests ({self.requests / seconds:.0f}/s), "
                f"{self.jobs} jobs ({self.jobs / seconds:.1f}/s), "
                f"{mib:.1f} MiB checked ({self.bytes_followed / (1 << 20):.1f} MiB followed, "
                f"{self.bytes_read / (1 << 20):.1f} MiB read back), "
                f"{len(self.errors)} errors")


class LoadClient:
    """One client identity, looping over the job life cycle until ``deadline``."""

    def __init__(self, index: int, address: tuple[str, int], folder: Path, name: str,
                 figures: Figures, sizes: tuple[int, int]) -> None:
        self.index = index
        self.api = ApiClient(address, folder, name)
        self.figures = figures
        self.sizes = sizes
        self.random = random.Random(index)

    def run(self, deadline: float) -> None:
        try:
            while time.monotonic() < deadline:
                self.one_job()
        except Exception as error:  # counted, not raised: the run goes on for the others
            self.figures.error(f"client {self.index}: {type(error).__name__}: {error}")
        finally:
            self.api.close()

    def request(self, method: str, path: str, body: object = None) -> Any:
        self.figures.add(requests=1)
        return self.api.request(method, path, body)

    def expect(self, response: Any, status: int, what: str) -> Any:
        if response.status != status:
            raise AssertionError(f"{what}: {response.status} {response.body[:200]!r}")
        return response

    def one_job(self) -> None:
        seed = self.random.getrandbits(32)
        size = self.random.randint(*self.sizes)
        stdout, stderr = expected_output(seed, size)
        created = self.expect(self.request("PUT", "/jobs", {
            "cmd": sys.executable, "args": ["-c", GENERATOR, str(seed), str(size)]}), 201,
            "create")
        job_id = created.json()["id"]
        base = f"/jobs/{job_id}"

        followed = self.follow(f"{base}/stdout?follow=true")
        self.check(followed, stdout, "followed stdout")
        self.figures.add(followed=len(followed))

        status = self.poll(base)
        if (status["status"], status.get("exit_code")) != ("completed", 0):
            raise AssertionError(f"job {job_id} ended as {status}")
        if (status["stdout"]["written"], status["stderr"]["written"]) != (len(stdout),
                                                                          len(stderr)):
            raise AssertionError(f"job {job_id}: written {status['stdout']} {status['stderr']}")

        raw_out = self.expect(self.request("GET", f"{base}/stdout"), 200, "stdout").body
        raw_err = self.expect(self.request("GET", f"{base}/stderr"), 200, "stderr").body
        self.check(raw_out, stdout, "stdout")
        self.check(raw_err, stderr, "stderr")
        output = self.expect(self.request("GET", f"{base}/output"), 200, "output").json()
        self.check(output["stdout"].encode(), stdout, "output.stdout")
        if output["stderr"] != stderr.decode("utf-8", "replace"):
            raise AssertionError(f"job {job_id}: output.stderr differs")
        self.figures.add(read=len(raw_out) + len(raw_err) + len(stdout))

        listing = self.expect(self.request("GET", "/jobs"), 200, "list").json()
        if job_id not in listing["ids"]:
            raise AssertionError(f"job {job_id} not listed: {listing['ids']}")
        self.expect(self.request("DELETE", base), 200, "delete")
        self.expect(self.request("GET", f"{base}/status"), 404, "status after delete")
        self.figures.add(jobs=1)

    def follow(self, path: str) -> bytes:
        """The whole body of a follow stream, on a connection of its own."""
        self.figures.add(requests=1)
        conn = self.api.connect(timeout=60)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise AssertionError(f"follow: {response.status} {body[:200]!r}")
        return body

    def poll(self, base: str) -> dict[str, Any]:
        """The status, asked until the job is no longer running (60 s at most)."""
        give_up = time.monotonic() + 60
        delay = 0.005
        while True:
            status: dict[str, Any] = self.expect(
                self.request("GET", f"{base}/status"), 200, "status").json()
            if status["status"] != "running":
                return status
            if time.monotonic() > give_up:
                raise AssertionError(f"{base} still running after 60 s")
            # A client polling a status backs off; this is its pace, not a
            # synchronisation (the answer, not the time, decides).
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    @staticmethod
    def check(received: bytes, written: bytes, what: str) -> None:
        if hashlib.sha256(received).digest() != hashlib.sha256(written).digest():
            raise AssertionError(f"{what}: {len(received)} bytes received, "
                                 f"{len(written)} written, SHA-256 differs")


def run_load(address: tuple[str, int], identities: list[tuple[str, Path]], seconds: float,
             sizes: tuple[int, int] = (1 << 10, 128 << 10),
             sample: Callable[[], None] | None = None) -> Figures:
    """Run one `LoadClient` per identity (``(CN, folder)``) for ``seconds``; return the figures.

    ``sample`` is called about every 0.1 s while the clients run (to record peaks).
    """
    figures = Figures(clients=len(identities))
    clients = [LoadClient(index, address, folder, name, figures, sizes)
               for index, (name, folder) in enumerate(identities)]
    started = time.monotonic()
    deadline = started + seconds
    threads = [threading.Thread(target=client.run, args=(deadline,), name=f"load-{i}")
               for i, client in enumerate(clients)]
    for thread in threads:
        thread.start()
    give_up = deadline + 120
    while time.monotonic() < give_up:
        alive = [thread for thread in threads if thread.is_alive()]
        if not alive:
            break
        if sample is not None:
            sample()
        alive[0].join(0.1)
    for thread in threads:
        if thread.is_alive():
            figures.error(f"{thread.name} did not finish")
    figures.duration = time.monotonic() - started
    return figures


def report(figures: Figures, extra: dict[str, Any] | None = None) -> str:
    """The summary line, then the first errors (and any extra figures as JSON)."""
    lines = [figures.summary()]
    lines += [f"  error: {message}" for message in figures.errors[:10]]
    if extra:
        lines.append("  " + json.dumps(extra, sort_keys=True))
    return "\n".join(lines)


