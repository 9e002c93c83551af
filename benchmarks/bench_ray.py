"""The ray executor against Ray's own JobSubmissionClient, in the same run, on the same cluster.

    .venv/bin/python benchmarks/bench_ray.py [--quick] [--address http://HOST:8265]

Without ``--address`` it starts a one-node cluster (``ray start --head
--num-cpus=2``, as tests/executors does) and stops it at the end.

1. Submit-to-first-byte: from the call that submits a job that prints ``hi`` to the
   moment ``hi`` is in the caller's hands.  Ray: ``submit_job`` then
   ``tail_job_logs`` until ``hi`` shows; jobkit: ``pool.create`` then
   ``next(pool.follow(...))``.  Twice: ``echo hi`` (it ends at once) and
   ``sh -c 'echo hi; sleep 5'`` (it runs on, so only the log tail can bring ``hi``).
2. create + wait throughput: a batch of ``true`` jobs submitted at once, then each
   waited for.  Ray: ``submit_job`` each, then ``get_job_status`` every 0.1 s until
   all are final; jobkit: ``pool.create`` each, then ``pool.wait`` each.

Rounds alternate between the two sides so a busy moment hits both alike; medians
are printed with the ratio (target: jobkit adds at most 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# The cluster is started as the tests start theirs.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobkit import JobPool
from tests.support.ray import RayCluster

_ids = itertools.count()


def _name(prefix: str) -> str:
    return f"bench-{prefix}-{time.time_ns()}-{next(_ids)}"


def ray_first_byte(client: object, command: list[str]) -> float:
    """Seconds from ``submit_job`` to ``hi`` in the log, with Ray's client alone."""

    async def tail(handle: str) -> None:
        async for text in client.tail_job_logs(handle):  # type: ignore[attr-defined]
            if "hi\n" in text.replace("Running entrypoint", ""):
                return

    start = time.perf_counter()
    handle = client.submit_job(entrypoint=shlex.join(command),  # type: ignore[attr-defined]
                               submission_id=_name("ray"))
    asyncio.run(tail(handle))
    return time.perf_counter() - start


def jobkit_first_byte(pool: JobPool, command: list[str]) -> float:
    """Seconds from ``create`` to the first byte of stdout, through jobkit."""
    start = time.perf_counter()
    job = pool.create(command[0], command[1:])
    first = next(pool.follow(job, "stdout"))
    elapsed = time.perf_counter() - start
    assert first == b"hi\n", first
    return elapsed


def ray_batch(client: object, count: int) -> float:
    """Seconds to submit ``count`` jobs and see every one final, with Ray's client alone."""
    start = time.perf_counter()
    handles = [client.submit_job(entrypoint="true",  # type: ignore[attr-defined]
                                 submission_id=_name("ray")) for _ in range(count)]
    waiting = set(handles)
    while waiting:
        for handle in list(waiting):
            status = client.get_job_status(handle)  # type: ignore[attr-defined]
            if str(status) in ("SUCCEEDED", "FAILED", "STOPPED"):
                waiting.discard(handle)
        if waiting:
            time.sleep(0.1)
    return time.perf_counter() - start


def jobkit_batch(pool: JobPool, count: int) -> float:
    """Seconds to create ``count`` jobs and wait for each, through jobkit."""
    start = time.perf_counter()
    jobs = [pool.create("true") for _ in range(count)]
    for job in jobs:
        assert pool.wait(job, timeout=600).exit_code == 0
    return time.perf_counter() - start


def interleaved(rounds: int, ray: Callable[[], float],
                ours: Callable[[], float]) -> tuple[list[float], list[float]]:
    theirs: list[float] = []
    mine: list[float] = []
    for index in range(rounds):
        # Alternate who goes first as well.
        order = ((theirs, ray), (mine, ours)) if index % 2 == 0 else ((mine, ours), (theirs, ray))
        for sink, measure in order:
            sink.append(measure())
    return theirs, mine


def report(what: str, theirs: list[float], mine: list[float], unit: str,
           scale: Callable[[float], float]) -> None:
    ray, ours = statistics.median(theirs), statistics.median(mine)
    spread = (f"(ray {min(theirs):.2f}-{max(theirs):.2f} s,"
              f" jobkit {min(mine):.2f}-{max(mine):.2f} s)")
    print(f"{what}: Ray's client {scale(ray):.2f} {unit} | jobkit {scale(ours):.2f} {unit} "
          f"| jobkit/Ray time {ours / ray:.2f}x (target <= 1.10x) {spread}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--address", help="an existing cluster's job submission address")
    args = parser.parse_args()
    cluster = None
    address = args.address
    if address is None:
        started = time.perf_counter()
        cluster = RayCluster.start()
        address = cluster.address
        print(f"one-node cluster at {address} started in {time.perf_counter() - started:.1f} s")
    try:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(address)
        with JobPool(executor="ray", executor_options={"address": address}) as pool:
            # Warm both paths once (worker processes, imports on the cluster).
            ray_first_byte(client, ["echo", "hi"])
            jobkit_first_byte(pool, ["echo", "hi"])
            rounds = 4 if args.quick else 10
            for command in (["echo", "hi"], ["sh", "-c", "echo hi; sleep 5"]):
                theirs, mine = interleaved(rounds, lambda c=command: ray_first_byte(client, c),
                                           lambda c=command: jobkit_first_byte(pool, c))
                report(f"submit to first byte, {shlex.join(command)} ({rounds} rounds, median)",
                       theirs, mine, "s", lambda seconds: seconds)
            batch = 8 if args.quick else 16
            rounds = 2 if args.quick else 4
            theirs, mine = interleaved(rounds, lambda: ray_batch(client, batch),
                                       lambda: jobkit_batch(pool, batch))
            report(f"create + wait, batches of {batch} ({rounds} rounds, median)", theirs, mine,
                   "jobs/s", lambda seconds: batch / seconds)
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
