"""Many output streams at once (issue 11): follows checked byte for byte, downloads whose
clients stop reading, and a client timed meanwhile.

The jobs write seeded random bytes (`PACED_GENERATOR`) in small pieces with a pause
between them, so a follower waits for every piece, but only after their gate (a named
pipe) is released: the caller opens every follow first, waits until the server counts
them all (`follow_streams`, its ``jobkit_follow_streams`` gauge), then releases the
jobs, so that every stream is a live follow for the whole run.

`follow_all` reads streams in threads of the calling process (one per stream:
``http.client`` over TLS releases the GIL while it waits), and can run in worker
processes too (its arguments and results pickle), so that a benchmark's client side
uses every core.  Each stream's bytes are checked by SHA-256 against what the job
wrote; a follow that ends early (the server's idle end) resumes at its offset, as the
real clients do, and counts the resume.

Used by tests/security/test_stream_load.py and benchmarks/bench_streams.py.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import random
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import ApiClient, client_context
from tests.support.fifos import release

#: The job: once its gate (a named pipe) is released, writes SIZE seeded random bytes
#: to stdout in pieces of CHUNK bytes, PAUSE seconds apart.
PACED_GENERATOR = """\
import random, sys, time
gate, seed, size, chunk, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
int(sys.argv[4]), float(sys.argv[5])
with open(gate, "rb") as held:
    held.read()
data = random.Random(seed).randbytes(size)
out = sys.stdout.buffer
for start in range(0, size, chunk):
    out.write(data[start:start + chunk])
    out.flush()
    time.sleep(pause)
"""

#: Bytes asked of a socket at a time.
READ_SIZE = 64 << 10
#: Times a follow is asked again after it ended short: the server ends a stream only
#: after a quiet minute, so more means the job ended without writing everything.
MAX_RESUMES = 5


@attrs.frozen
class Pacing:
    """How a paced job writes: ``size`` bytes in pieces of ``chunk``, ``pause`` s apart.

    Attributes:
        size: Bytes written in all.
        chunk: Bytes per write.
        pause: Seconds between writes.
    """

    size: int
    chunk: int
    pause: float

    def seconds(self) -> float:
        """About how long a job writes once released."""
        return -(-self.size // self.chunk) * self.pause


@attrs.frozen
class GatedJob:
    """A paced job of one client, held at its gate until `release` d.

    Attributes:
        job_id: Its id in its client's pool.
        gate: The named pipe it waits on.
        size: Bytes it writes to stdout.
        sha256: Hex SHA-256 of those bytes.
    """

    job_id: str
    gate: Path
    size: int
    sha256: str


def paced_bytes(seed: int, size: int) -> bytes:
    """What `PACED_GENERATOR` writes for ``seed`` and ``size``."""
    return random.Random(seed).randbytes(size)


def create_gated_job(client: ApiClient, gate: Path, seed: int, pacing: Pacing) -> GatedJob:
    """Create a `PACED_GENERATOR` job of ``client`` held at a new named pipe ``gate``."""
    os.mkfifo(gate, 0o600)
    job_id = client.create(sys.executable, "-c", PACED_GENERATOR, str(gate), str(seed),
                           str(pacing.size), str(pacing.chunk), repr(pacing.pause))
    digest = hashlib.sha256(paced_bytes(seed, pacing.size)).hexdigest()
    return GatedJob(job_id, gate, pacing.size, digest)


def release_all(jobs: Sequence[GatedJob]) -> None:
    """Let every job go on (each once it opened its gate; no sleeping)."""
    for job in jobs:
        release(job.gate)


@attrs.frozen
class FollowPlan:
    """Follows to open: ``count`` streams of one job's stdout, as one client.

    Attributes:
        name: The client's CN.
        folder: Its certificate folder.
        job: The job followed.
        count: How many streams of it, each on a connection of its own.
    """

    name: str
    folder: Path
    job: GatedJob
    count: int


@attrs.define
class FollowLoad:
    """Gated jobs of many clients and the follows to open on them.

    Attributes:
        plans: The follows, by client and job.
        jobs: Every job by ``(CN, id)`` (ids are per client).
    """

    plans: list[FollowPlan] = attrs.Factory(list)
    jobs: dict[tuple[str, str], GatedJob] = attrs.Factory(dict)

    @classmethod
    def create(cls, address: tuple[str, int], identities: Sequence[tuple[str, Path]], *,
               jobs_per_client: int, follows_per_job: int, pacing: Pacing,
               gates: Path) -> FollowLoad:
        """Create ``jobs_per_client`` gated jobs for each identity (``(CN, folder)``),
        their gates in folder ``gates``, each to be followed ``follows_per_job`` times."""
        load = cls()
        gates.mkdir(parents=True, exist_ok=True)
        for index, (name, folder) in enumerate(identities):
            client = ApiClient(address, folder, name)
            try:
                for number in range(jobs_per_client):
                    seed = index * jobs_per_client + number
                    job = create_gated_job(client, gates / f"gate-{seed}", seed, pacing)
                    load.jobs[(name, job.job_id)] = job
                    load.plans.append(FollowPlan(name, folder, job, follows_per_job))
            finally:
                client.close()
        return load

    @property
    def streams(self) -> int:
        """How many follows the plans open."""
        return sum(plan.count for plan in self.plans)

    def release(self) -> None:
        """Let every job write."""
        release_all(list(self.jobs.values()))

    def problems(self, results: Sequence[StreamResult]) -> list[str]:
        """What is wrong with ``results`` (`stream_problems`, and a stream missing)."""
        found = stream_problems(results, self.jobs)
        if len(results) != self.streams:
            found.append(f"{len(results)} streams reported, {self.streams} opened")
        return found


@attrs.frozen
class StreamResult:
    """What one follow stream received.

    Attributes:
        client: The CN that followed.
        job_id: The job followed.
        received: Bytes received.
        sha256: Hex SHA-256 of those bytes.
        resumes: Times the stream ended before the job did and was asked again
            from its offset (as a client does after the server's idle end).
        error: What went wrong (a status, an exception), or None.
    """

    client: str
    job_id: str
    received: int
    sha256: str
    resumes: int = 0
    error: str | None = None

    def problem(self, job: GatedJob) -> str | None:
        """Why this is not every byte of ``job``, or None if it is."""
        if self.error is not None:
            return f"{self.client} {self.job_id}: {self.error}"
        if (self.received, self.sha256) != (job.size, job.sha256):
            return (f"{self.client} {self.job_id}: {self.received} bytes of {job.size}, "
                    f"SHA-256 {'equal' if self.sha256 == job.sha256 else 'differs'}")
        return None


def follow_once(address: tuple[str, int], context: ssl.SSLContext, plan: FollowPlan,
                timeout: float, give_up: float) -> StreamResult:
    """Follow ``plan.job``'s stdout to its end on a connection of its own, resuming at the
    offset reached if the server ends the stream before the job writes everything."""
    digest = hashlib.sha256()
    received = resumes = 0
    host, port = address
    while True:
        conn = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
        try:
            conn.request("GET", f"/jobs/{plan.job.job_id}/stdout?follow=true&offset={received}")
            response = conn.getresponse()
            if response.status != 200:
                error = f"status {response.status}: {response.read(300)!r}"
                return StreamResult(plan.name, plan.job.job_id, received, digest.hexdigest(),
                                    resumes, error)
            while data := response.read1(READ_SIZE):
                digest.update(data)
                received += len(data)
        except (OSError, http.client.HTTPException) as error:
            return StreamResult(plan.name, plan.job.job_id, received, digest.hexdigest(),
                                resumes, f"{type(error).__name__}: {error}")
        finally:
            conn.close()
        # The stream ended: the job ended, or the server ended a quiet stream (the job
        # may have written everything already and not yet exited: nothing is missing).
        if received >= plan.job.size or resumes == MAX_RESUMES or time.monotonic() > give_up:
            return StreamResult(plan.name, plan.job.job_id, received, digest.hexdigest(),
                                resumes)
        resumes += 1


def follow_all(address: tuple[str, int], plans: Sequence[FollowPlan],
               timeout: float = 300.0,
               on_end: Callable[[StreamResult], None] | None = None) -> list[StreamResult]:
    """Open every follow of ``plans`` at once, one thread each, and read each to its end.

    Returns one `StreamResult` per stream; a stream still unfinished after
    ``timeout`` seconds is reported as an error.  Streams of a job that was never
    released wait that long: release the jobs once `follow_streams` counts them.
    ``on_end`` is called with each result as its stream ends (a refused stream
    ends at once: the caller need not wait for the others to know).
    """
    contexts: dict[Path, ssl.SSLContext] = {}
    results: list[StreamResult] = []
    lock = threading.Lock()
    give_up = time.monotonic() + timeout

    def run(plan: FollowPlan, context: ssl.SSLContext) -> None:
        result = follow_once(address, context, plan, timeout, give_up)
        with lock:
            results.append(result)
        if on_end is not None:
            on_end(result)

    threads = []
    # Small stacks: a thousand threads that only read a socket need little of one.
    previous = threading.stack_size(512 << 10)
    try:
        for plan in plans:
            if plan.folder not in contexts:
                contexts[plan.folder] = client_context(plan.folder)
            for _ in range(plan.count):
                thread = threading.Thread(target=run, args=(plan, contexts[plan.folder]),
                                          daemon=True)
                thread.start()
                threads.append(thread)
    finally:
        threading.stack_size(previous)
    for thread in threads:
        thread.join(max(0.0, give_up - time.monotonic()))
    missing = len(threads) - len(results)
    with lock:
        return results + [StreamResult("?", "?", 0, "", 0, f"unfinished after {timeout} s")
                          for _ in range(missing)]


def stream_problems(results: Sequence[StreamResult],
                    jobs: dict[tuple[str, str], GatedJob]) -> list[str]:
    """Every stream that did not receive exactly its job's bytes, said (``jobs`` by
    ``(CN, id)``: ids are per client)."""
    problems = []
    for result in results:
        job = jobs.get((result.client, result.job_id))
        problem = (result.problem(job) if job is not None
                   else f"{result.client} {result.job_id}: {result.error or 'unknown job'}")
        if problem is not None:
            problems.append(problem)
    return problems


def follow_streams(admin: ApiClient) -> int:
    """The follow streams the server says are open (its ``jobkit_follow_streams`` gauge)."""
    admin.close()  # a new connection: the last scrape's may have idled past the timeout
    response = admin.get("/metrics")
    assert response.status == 200, response
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            if sample.name == "jobkit_follow_streams":
                return int(sample.value)
    raise AssertionError("no jobkit_follow_streams in /metrics")


def open_unread(client: ApiClient, path: str) -> http.client.HTTPSConnection:
    """Ask for ``path`` on a new connection, read only the answer's head (200), and read
    nothing more: the client that stops reading its download."""
    conn = client.connect(timeout=60)
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200, (response.status, response.read(300))
    return conn


@attrs.define
class LatencyProbe:
    """A client that times its own requests (``GET /jobs`` on a keep-alive connection).

    Attributes:
        client: Whose requests.
        path: What it asks for.
        samples: ``(when, seconds)`` of each request, ``when`` a `time.monotonic`.
    """

    client: ApiClient
    path: str = "/jobs"
    samples: list[tuple[float, float]] = attrs.Factory(list)

    def once(self) -> float:
        """One request, checked (200), timed."""
        when = time.monotonic()
        start = time.perf_counter()
        response = self.client.get(self.path)
        seconds = time.perf_counter() - start
        assert response.status == 200, response
        self.samples.append((when, seconds))
        return seconds

    def reconnect(self) -> None:
        """A new connection, its handshake done by an untimed request (the server closes
        one left idle for its connection timeout)."""
        self.client.close()
        assert self.client.get(self.path).status == 200

    def run(self, count: int) -> list[float]:
        """``count`` requests one after another on a new connection; their times."""
        self.reconnect()
        return [self.once() for _ in range(count)]

    def run_until(self, done: Callable[[], bool], least: int = 0) -> list[float]:
        """Requests one after another on a new connection until ``done()`` (and at least
        ``least`` of them); their times."""
        self.reconnect()
        times: list[float] = []
        while len(times) < least or not done():
            times.append(self.once())
        return times

    def between(self, start: float, end: float) -> list[float]:
        """The times of requests that started between two `time.monotonic` readings."""
        return [seconds for when, seconds in self.samples if start <= when <= end]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` (0..1) percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]
