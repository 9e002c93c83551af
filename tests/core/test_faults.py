"""Jobs that misbehave: fork storms, early-closed pipes, outside kills."""

from __future__ import annotations

import os
import signal

from jobkit import JobPool, State
from tests.conftest import group_members, wait_until


def test_a_job_that_forks_500_children_is_killed_whole(memory_pool: JobPool) -> None:
    job = memory_pool.create(
        "sh", ["-c", "i=0; while [ $i -lt 500 ]; do sleep 1000 & i=$((i+1)); done; echo up; wait"]
    )
    next(iter(memory_pool.follow(job, "stdout")))
    pgid = memory_pool.status(job).pid
    assert len(group_members(pgid)) == 501
    memory_pool.delete(job)
    wait_until(lambda: group_members(pgid) == [], timeout=30, what="500 children to die")


def test_a_job_that_closes_stdout_early_runs_on(memory_pool: JobPool) -> None:
    job = memory_pool.create("sh", ["-c", "echo before; exec >&-; echo still here >&2; exit 4"])
    status = memory_pool.wait(job, 10)
    assert (status.state, status.exit_code) == (State.COMPLETED, 4)
    wait_until(lambda: memory_pool.status(job).stdout.closed)
    assert memory_pool.output(job).stdout == b"before\n"
    assert memory_pool.output(job).stderr == b"still here\n"


def test_a_job_whose_reader_went_away_gets_sigpipe_not_a_hang(memory_pool: JobPool) -> None:
    # `yes` writes forever; deleting it closes our end of the pipe as well.
    job = memory_pool.create("yes")
    follower = memory_pool.follow(job, "stdout")
    assert next(follower).startswith(b"y\n")
    pgid = memory_pool.status(job).pid
    memory_pool.delete(job)
    wait_until(lambda: group_members(pgid) == [])
    assert list(follower) == []


def test_stop_from_outside_the_pool_with_kill_9(memory_pool: JobPool) -> None:
    job = memory_pool.create("sh", ["-c", "sleep 1000 & wait"])
    pgid = memory_pool.status(job).pid
    os.killpg(pgid, signal.SIGKILL)
    status = memory_pool.wait(job, 10)
    assert (status.state, status.signal) == (State.KILLED, signal.SIGKILL)
    wait_until(lambda: group_members(pgid) == [])
