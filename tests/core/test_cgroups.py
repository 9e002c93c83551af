"""Jobs that leave their session on purpose are still killed, through cgroup v2."""

from __future__ import annotations

import pytest

from jobkit import JobkitError, JobPool, State
from jobkit.core import cgroups
from tests.conftest import process_alive, wait_until

ESCAPE = "setsid sleep 1000 & echo $!; wait"

needs_cgroups = pytest.mark.skipif(
    cgroups.detect() is None, reason="cgroup v2 is not writable here: see docs/architecture.md"
)


def escaped_pid(pool: JobPool, job: str) -> int:
    pid = int(next(iter(pool.follow(job, "stdout"))))

    # `setsid` forks (its parent is a group leader) and the child calls setsid():
    # wait until it has really left the job's session.
    def left() -> bool:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[3]) == pid  # its own session now

    wait_until(left, what="the escapee to call setsid")
    return pid


@needs_cgroups
def test_delete_kills_processes_that_called_setsid() -> None:
    with JobPool(cgroups=True) as pool:
        job = pool.create("sh", ["-c", ESCAPE])
        pid = escaped_pid(pool, job)
        pool.delete(job)
        assert not process_alive(pid)  # delete waited for the whole cgroup


@needs_cgroups
def test_stop_reaches_processes_that_called_setsid() -> None:
    with JobPool(cgroups=True) as pool:
        job = pool.create("sh", ["-c", ESCAPE])
        pid = escaped_pid(pool, job)
        pool.stop(job, "TERM")
        assert pool.wait(job, 10).state is State.COMPLETED or pool.status(job).signal == 15
        wait_until(lambda: not process_alive(pid), what="the escapee to get SIGTERM")


@needs_cgroups
def test_closing_the_pool_kills_escapees_and_removes_the_cgroups() -> None:
    pool = JobPool(cgroups=True)
    job = pool.create("sh", ["-c", ESCAPE])
    pid = escaped_pid(pool, job)
    tree = cgroups.detect()
    assert tree is not None and any(tree.base.iterdir())
    pool.close()
    assert not process_alive(pid)
    assert not tree.base.exists()


def test_without_cgroups_an_escapee_survives_as_documented() -> None:
    with JobPool() as pool:  # the default: process groups only
        job = pool.create("sh", ["-c", ESCAPE])
        pid = escaped_pid(pool, job)
        pool.delete(job)
        assert process_alive(pid)  # the documented limit of process groups
        import os
        import signal

        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(pid))


def test_requiring_cgroups_where_there_are_none_is_an_error(monkeypatch) -> None:
    monkeypatch.setattr(cgroups, "_detected", (True, None))
    with pytest.raises(JobkitError, match="cgroup"):
        JobPool(cgroups=True)
