"""`JobPool.wait` on a local job ends it in the waiter's own thread when it gets there first.

The waiter and the supervisor race to drain and reap the same job; these
tests check what that race must never change: every byte is read before
wait returns, every waiter sees the same final status, the end's callbacks
run once and in the supervisor thread, and a timed-out wait leaves the job
alone.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from jobkit import JobPool, JobStatus, State
from jobkit.core.leftovers import process_start, signal_group_since
from jobkit.core.records import DATABASE_NAME
from tests.support.waiting import wait_until

#: A job that writes a known amount to each stream, then exits with code 7.
WRITER = ("sh", ["-c", "head -c 300000 /dev/zero; head -c 70000 /dev/zero >&2; exit 7"])


def test_every_byte_is_read_before_wait_returns() -> None:
    with JobPool(cgroups=False) as pool:
        for _ in range(60):
            job = pool.create(*WRITER)
            status = pool.wait(job)
            # Read at once: the bytes must all be there, not arriving behind us.
            assert (status.state, status.exit_code) == (State.COMPLETED, 7)
            assert len(pool.read(job, "stdout")) == 300_000
            assert len(pool.read(job, "stderr")) == 70_000
            assert (status.stdout.written, status.stdout.closed) == (300_000, True)


def test_many_waiters_see_the_same_end() -> None:
    statuses: list[JobStatus] = []
    errors: list[BaseException] = []
    with JobPool(cgroups=False) as pool:
        for _ in range(10):
            job = pool.create(*WRITER)
            statuses.clear()

            def wait(job: str = job) -> None:
                try:
                    statuses.append(pool.wait(job, timeout=30))
                except BaseException as exc:  # reported below, with the job
                    errors.append(exc)

            threads = [threading.Thread(target=wait) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert not errors
            assert len(statuses) == 6
            assert {(s.state, s.exit_code, s.stdout.written, s.stderr.written)
                    for s in statuses} == {(State.COMPLETED, 7, 300_000, 70_000)}


def test_the_end_is_recorded_once_and_in_the_supervisor_thread() -> None:
    threads: dict[str, list[str]] = {}
    lock = threading.Lock()

    def finished(status: JobStatus) -> None:
        with lock:
            threads.setdefault(status.id, []).append(threading.current_thread().name)

    with JobPool(cgroups=False, on_finished=finished) as pool:
        jobs = []
        for _ in range(100):
            job = pool.create("true")
            pool.wait(job)
            jobs.append(job)
        wait_until(lambda: len(threads) == len(jobs), what="every end recorded")
    assert all(names == ["jobkit-supervisor"] for names in threads.values()), threads


def test_a_wait_that_times_out_leaves_the_job_running() -> None:
    with JobPool(cgroups=False) as pool:
        job = pool.create("sleep", ["1000"])
        with pytest.raises(TimeoutError):
            pool.wait(job, timeout=0.05)
        with pytest.raises(TimeoutError):
            pool.wait(job, timeout=0)
        assert pool.status(job).state is State.RUNNING
        pool.stop(job)
        status = pool.wait(job, timeout=30)
        assert status.state is State.KILLED


def test_a_wait_while_the_job_is_deleted_returns() -> None:
    with JobPool(cgroups=False) as pool:
        for _ in range(20):
            job = pool.create("sleep", ["1000"])
            outcome: list[object] = []

            def wait(job: str = job, outcome: list[object] = outcome) -> None:
                try:
                    outcome.append(pool.wait(job, timeout=30).state)
                except Exception as exc:  # the job may be gone before wait looks
                    outcome.append(type(exc).__name__)

            thread = threading.Thread(target=wait)
            thread.start()
            pool.delete(job)
            thread.join(30)
            assert not thread.is_alive()
            assert outcome in ([State.KILLED], ["JobNotFound"]), outcome


def count_looks_at_proc(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """From now on, count the listings of /proc (one per look at every process)."""
    looks = 0
    real_listdir = os.listdir

    def listdir(path: str = ".") -> list[str]:
        nonlocal looks
        looks += path == "/proc"
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    return lambda: looks


def test_close_looks_at_proc_once_for_every_finished_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing kills what finished jobs left in their groups: with one look at
    /proc for all of them, not one per job (15,000 jobs took minutes)."""
    pool = JobPool(cgroups=False)
    jobs = [pool.create("true") for _ in range(300)]
    # A job that left a process behind in its group: the close must kill it.
    leaver = pool.create("sh", ["-c", "sleep 1000 & echo $!"])
    for job in [*jobs, leaver]:
        pool.wait(job)
    wait_until(lambda: pool.read(leaver, "stdout").strip(), what="the leftover's pid")
    leftover = int(pool.read(leaver, "stdout"))
    looks = count_looks_at_proc(monkeypatch)
    pool.close()
    assert looks() == 1

    def gone() -> bool:
        try:
            with open(f"/proc/{leftover}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_until(gone, what="the leftover killed by the close")


def test_deleting_finished_jobs_looks_at_proc_only_for_groups_left_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A finished job whose group is empty is deleted without a look at every
    process (retention deletes one per job end)."""
    with JobPool(cgroups=False) as pool:
        jobs = [pool.create("true") for _ in range(50)]
        for job in jobs:
            pool.wait(job)
        looks = count_looks_at_proc(monkeypatch)
        for job in jobs:
            pool.delete(job)
        assert looks() == 0
        assert pool.clean().jobs == 0


@pytest.mark.parametrize("durable", [False, True], ids=["in-memory", "durable"])
def test_the_end_is_recorded_before_wait_returns(durable: bool, tmp_path: Path) -> None:
    """``clean`` right after ``wait`` finds the job finished, every time, and a
    durable pool has its end on disk (another connection reads it)."""
    state_dir = tmp_path / "state" if durable else None
    with JobPool(cgroups=False, state_dir=state_dir) as pool:
        for _ in range(300):
            job = pool.create("true")
            pool.wait(job)
            if durable:
                assert state_dir is not None
                with sqlite3.connect(state_dir / DATABASE_NAME) as db:
                    (state,) = db.execute(
                        "SELECT state FROM jobs WHERE id = ?", (int(job),)).fetchone()
                assert state == "completed"
            assert pool.clean().jobs == 1


def test_a_group_id_reused_by_another_group_is_never_signalled() -> None:
    """A reaped job's group id may be taken by a new group (a new process
    with the leader's pid that called setsid): it is not the job's."""
    other = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        born = process_start(other.pid)
        assert born is not None
        # As if `other` had the pid of a job leader reaped earlier (born
        # before it): its group has members born since, but leads it itself.
        assert not signal_group_since(other.pid, born - 1000, signal.SIGKILL)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_wait_that_races_close_returns_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool closes between wait finding the job and waiting for it."""
    pool = JobPool(cgroups=False)
    job = pool.create("sleep", ["1000"])
    found, go = threading.Event(), threading.Event()
    live = pool._live

    def slow_live(job_id: str) -> object:
        value = live(job_id)
        found.set()
        go.wait(30)
        return value

    monkeypatch.setattr(pool, "_live", slow_live)
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(pool.wait(job, timeout=30).state))
    thread.start()
    assert found.wait(30)
    pool.close()
    go.set()
    thread.join(30)
    assert outcome == [State.KILLED]


def test_a_wait_without_a_descriptor_to_spare_still_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of descriptors, wait leaves the job's end to the supervisor."""
    def no_descriptor(fd: int) -> int:
        raise OSError(24, "Too many open files")

    with JobPool(cgroups=False) as pool:
        job = pool.create("sh", ["-c", "exit 4"])
        monkeypatch.setattr(os, "dup", no_descriptor)
        status = pool.wait(job, timeout=30)
        assert (status.state, status.exit_code) == (State.COMPLETED, 4)
