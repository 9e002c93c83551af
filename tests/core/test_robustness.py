"""Edge cases that once broke the pool: huge timeouts, races with close, pid reuse,
broken plugins and databases, forks, garbage-collected pools."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

import jobkit
from jobkit import JobNotFound, JobPool, PoolClosed, State, StorageFailed
from jobkit.backends.memory import MemoryStore
from jobkit.core import plugins
from tests.conftest import children, group_members, process_alive, wait_until


def test_huge_timeouts_are_fine_everywhere(memory_pool: JobPool) -> None:
    # epoll refuses waits over ~24.8 days; a 300-year job timeout must not
    # take the supervisor (and so every other job) down.
    sleeper = memory_pool.create("sleep", ["1000"], timeout=1e10)
    quick = memory_pool.create("echo", ["alive"])
    assert memory_pool.wait(quick, timeout=1e10).exit_code == 0
    assert memory_pool.output(quick).stdout == b"alive\n"
    assert b"".join(memory_pool.follow(quick, "stdout")) == b"alive\n"
    follower = memory_pool.follow(sleeper, "stdout")
    memory_pool.stop(sleeper, "KILL")
    assert follower.read(timeout=1e10) is None
    assert memory_pool.wait(sleeper, 10).state is State.KILLED


def test_a_finished_job_is_reaped_at_once(memory_pool: JobPool) -> None:
    # No zombie per finished job: stop() then signals the group only if
    # members born since the leader are left in it (never a reused pid).
    job = memory_pool.create("true")
    pid = memory_pool.wait(job, 10).pid
    assert not os.path.exists(f"/proc/{pid}")
    assert pid not in children()
    memory_pool.stop(job)  # signals nothing: the group has no live member
    memory_pool.delete(job)


def churn(
    pool: JobPool, go: threading.Event, started: list[int], errors: list[BaseException]
) -> None:
    """Create and delete jobs until the pool is closed under our feet."""
    go.wait()
    try:
        while True:
            job = pool.create("sleep", ["1000"])
            pid = pool.status(job).pid
            if pid:
                started.append(pid)
            pool.delete(job)
    except (PoolClosed, JobNotFound):
        pass
    except BaseException as exc:
        errors.append(exc)


def test_close_racing_creates_and_deletes() -> None:
    for _ in range(20):
        pool = JobPool()
        started: list[int] = []
        errors: list[BaseException] = []
        go = threading.Event()
        threads = [
            threading.Thread(target=churn, args=(pool, go, started, errors)) for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        go.set()
        wait_until(lambda: len(started) >= 3, what="jobs to start")  # noqa: B023
        pool.close()
        for thread in threads:
            thread.join(30)
        assert errors == []
        for pid in started:
            wait_until(lambda pid=pid: not process_alive(pid), what="every job to die")


GC_SCRIPT = """
import gc
from jobkit import JobPool
def start():
    pool = JobPool()  # never closed, and forgotten when start() returns
    job = pool.create("sh", ["-c", "sleep 1000 & sleep 1000"])
    return pool.status(job).pid
print(start(), flush=True)
gc.collect()
"""


def test_a_forgotten_pool_still_kills_its_jobs_at_exit() -> None:
    out = subprocess.run(
        [sys.executable, "-c", GC_SCRIPT], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    pgid = int(out.stdout)
    wait_until(lambda: group_members(pgid) == [], what="the forgotten pool's jobs to die")


class Exploding:
    """A plugin whose store raises something other than OSError."""

    @jobkit.hookimpl
    def jobkit_register_backends(self, register):  # type: ignore[no-untyped-def]
        class ExplodingStore(MemoryStore):
            def fill_from(self, fd: int, limit: int) -> int:
                raise RuntimeError("plugin bug")

            def close(self) -> None:
                raise RuntimeError("close bug")

        class ExplodingBackend:
            def open_store(self, job_id: str, stream: str) -> ExplodingStore:
                return ExplodingStore()

        register("exploding", ExplodingBackend)


class BadHook:
    @jobkit.hookimpl
    def jobkit_register_backends(self, register):  # type: ignore[no-untyped-def]
        raise RuntimeError("hook bug")


@pytest.fixture
def broken_plugins():
    added = [Exploding(), BadHook()]
    for plugin in added:
        plugins.pm.register(plugin)
    plugins.reset()
    yield
    for plugin in added:
        plugins.pm.unregister(plugin)
    plugins.reset()


def test_broken_plugins_cannot_break_the_pool(broken_plugins) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = plugins.backend_names()
    assert "exploding" in names and "memory" in names
    assert any("failed to register its backends: hook bug" in str(w.message) for w in caught)
    with JobPool("exploding") as pool:
        job = pool.create("echo", ["lost"])
        status = pool.wait(job, 10)
        assert status.exit_code == 0
        assert status.output_error and "plugin bug" in status.output_error
        pool.delete(job)  # its store's close() raises: logged, not raised
        other = pool.create("true", backend="memory")
        assert pool.wait(other, 10).exit_code == 0


def test_a_job_that_cannot_be_recorded_is_not_created_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    with JobPool(state_dir=tmp_path, backend="memory") as pool:
        kids = children()
        real_add = pool._records.add

        def broken(*args: object, **kwargs: object) -> str:
            raise StorageFailed("cannot record jobs: disk I/O error")

        pool._records.add = broken  # type: ignore[method-assign]
        with pytest.raises(StorageFailed, match="disk I/O error"):
            pool.create("sleep", ["1000"])
        assert children() == kids  # its process was killed and reaped, not left running
        pool._records.add = real_add  # type: ignore[method-assign]
        job = pool.create("true")
        assert pool.wait(job, 10).exit_code == 0


def test_pools_work_in_a_forked_child(memory_pool: JobPool) -> None:
    memory_pool.wait(memory_pool.create("true"), 10)  # the supervisor runs in the parent
    pid = os.fork()
    if pid == 0:  # the child: a fresh pool must work; the inherited one is closed
        code = 1
        try:
            try:
                memory_pool.status("1")
            except PoolClosed:
                with JobPool() as pool:
                    job = pool.create("echo", ["child"])
                    if pool.wait(job, 10).exit_code == 0 and pool.output(job).stdout == b"child\n":
                        code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert memory_pool.wait(memory_pool.create("true"), 10).exit_code == 0


def test_a_ring_of_zero_keeps_followers_until_the_stream_ends(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with JobPool("ring", {"capacity": 0}) as pool:
        job = pool.create(
            "sh", ["-c", f"echo one; while [ ! -e {gate} ]; do sleep 0.01; done; echo two"]
        )
        follower = pool.follow(job, "stdout")
        wait_until(lambda: pool.status(job).stdout.written == 4)
        assert follower.read(timeout=0.05) == b""  # nothing kept, but not the end
        gate.touch()
        pool.wait(job, 10)
        assert follower.read(timeout=10) is None  # the stream ended
        assert follower.offset == 8


