"""No leaks, and scale without threads: fds, threads, children, 2,000 jobs."""

from __future__ import annotations

import threading
from pathlib import Path

from jobkit import JobPool, State
from tests.conftest import children, open_fds, pool_for, thread_count, wait_until


def test_a_thousand_jobs_leave_nothing_behind(backend: str, tmp_path: Path) -> None:
    with pool_for(backend, tmp_path):  # keep the supervisor thread alive for the baseline
        pass
    fds, threads, kids = open_fds(), thread_count(), children()
    with pool_for(backend, tmp_path) as pool:
        for _ in range(10):
            jobs = [pool.create("echo", [str(i)]) for i in range(100)]
            for job in jobs[::2]:
                pool.wait(job, 30)
            for job in jobs:  # half finished, half maybe still running
                pool.delete(job)
        assert pool.list() == []
        assert children() == kids
    assert open_fds() == fds
    assert thread_count() == threads
    assert children() == kids


def test_one_supervisor_thread_for_many_jobs_and_pools() -> None:
    base = thread_count()
    with JobPool() as first, JobPool("ring") as second:
        for pool in (first, second):
            for _ in range(50):
                pool.create("sleep", ["100"])
        names = [t.name for t in threading.enumerate()]
        assert names.count("jobkit-supervisor") == 1
        assert thread_count() == base + 1
    assert thread_count() == base


def test_two_thousand_concurrent_jobs() -> None:
    with JobPool() as pool:
        jobs = [pool.create("sleep", ["1000"]) for _ in range(2000)]
        states = [pool.status(job).state for job in jobs]
        errors = {pool.status(j).error for j, s in zip(jobs, states) if s is State.ERROR}
        assert states.count(State.RUNNING) == 2000, errors
        assert threading.active_count() <= 3  # main, supervisor, maybe pytest-timeout
        probe = pool.create("echo", ["still responsive"])
        assert pool.wait(probe, 30).exit_code == 0
        assert pool.output(probe).stdout == b"still responsive\n"
        pool.stop(jobs[0])
        assert pool.wait(jobs[0], 30).state is State.KILLED
    wait_until(lambda: children() == [], timeout=30, what="every job to be reaped")


FD_LIMIT_SCRIPT = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
from jobkit import JobPool, State
with JobPool() as pool:
    jobs = [pool.create("sleep", ["1000"]) for _ in range(30)]
    states = [pool.status(j).state for j in jobs]
    first_error = pool.status(jobs[states.index(State.ERROR)]).error
    running = [j for j, s in zip(jobs, states) if s is State.RUNNING]
    for job in running[:3]:
        pool.delete(job)
    again = pool.create("echo", ["recovered"])
    pool.wait(again, 30)
    print(states.count(State.RUNNING), states.count(State.ERROR))
    print(first_error)
    print(pool.output(again).stdout.decode().strip())
"""


def test_running_out_of_descriptors_fails_single_jobs_only() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", FD_LIMIT_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    counts, error, recovered = out.stdout.splitlines()
    running, failed = map(int, counts.split())
    assert running > 0 and failed > 0 and running + failed == 30
    assert error.startswith("too many open files (limit 48)")
    assert recovered == "recovered"
