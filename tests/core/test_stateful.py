"""A hypothesis state machine drives a JobPool through any order of calls.

Invariants checked after every step: ``list()`` is exactly the created minus
the deleted ids, in creation order; states only move forward; the output of a
finished job never changes once its streams closed; no process outlives its
job's deletion.  A background thread reads and follows all along, so the
calls also race with readers.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from jobkit import JobNotFound, JobOutput, JobPool, State
from tests.conftest import group_members, wait_until

COMMANDS = [
    ("echo", ["hello"]),
    ("sh", ["-c", "printf 'a%.0s' $(seq 1 2000); echo err >&2; exit 3"]),
    ("sleep", ["1000"]),
    ("sh", ["-c", "sleep 1000 & sleep 1000 & wait"]),
    ("no-such-command-jobkit", []),
    ("false", []),
]


class PoolMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.pool = JobPool(self.backend_name)
        self.created: list[str] = []
        self.deleted: set[str] = set()
        self.terminal: dict[str, State] = {}
        self.finished_output: dict[str, JobOutput] = {}
        self.pids: dict[str, int] = {}
        self.stop_reader = threading.Event()
        self.reader_errors: list[BaseException] = []
        self.reader = threading.Thread(target=self._read_all_along, daemon=True)
        self.reader.start()

    backend_name = "memory"

    def _read_all_along(self) -> None:
        while not self.stop_reader.is_set():
            for job in self.pool.list():
                try:
                    self.pool.read(job, "stdout")
                    follower = self.pool.follow(job, "stderr")
                    follower.read(timeout=0.001)
                    follower.cancel()
                except JobNotFound:
                    pass
                except BaseException as exc:
                    self.reader_errors.append(exc)
            self.stop_reader.wait(0.001)

    @rule(target=jobs, command=st.sampled_from(COMMANDS))
    def create(self, command: tuple[str, list[str]]) -> str:
        job = self.pool.create(*command)
        self.created.append(job)
        pid = self.pool.status(job).pid
        if pid is not None:
            self.pids[job] = pid
        return job

    @rule(job=jobs, sig=st.sampled_from(["TERM", "KILL", "INT"]))
    def stop(self, job: str, sig: str) -> None:
        if job in self.deleted:
            with pytest.raises(JobNotFound):
                self.pool.stop(job, sig)
        else:
            self.pool.stop(job, sig)

    @rule(job=jobs)
    def wait(self, job: str) -> None:
        if job in self.deleted:
            return
        try:
            self.pool.wait(job, timeout=0.05)
        except TimeoutError:
            pass

    @rule(job=consumes(jobs))
    def delete(self, job: str) -> None:
        if job in self.deleted:
            with pytest.raises(JobNotFound):
                self.pool.delete(job)
            return
        self.pool.delete(job)
        self.deleted.add(job)
        pid = self.pids.get(job)
        if pid is not None:
            wait_until(lambda: group_members(pid) == [], what=f"job {job}'s processes to die")

    @rule(job=jobs, offset=st.integers(0, 3000), size=st.none() | st.integers(0, 3000))
    def read(self, job: str, offset: int, size: int | None) -> None:
        if job in self.deleted:
            return
        data = self.pool.read(job, "stdout", offset, size)
        whole = self.pool.read(job, "stdout")
        assert whole[offset : None if size is None else offset + size] == data or not whole

    @invariant()
    def listing_is_created_minus_deleted(self) -> None:
        assert self.pool.list() == [j for j in self.created if j not in self.deleted]

    @invariant()
    def states_only_move_forward_and_output_is_final(self) -> None:
        for job in self.pool.list():
            status = self.pool.status(job)
            if job in self.terminal:
                assert status.state is self.terminal[job]
            elif status.state is not State.RUNNING:
                self.terminal[job] = status.state
            if status.state is not State.RUNNING and status.stdout.closed and status.stderr.closed:
                output = self.pool.output(job)
                assert self.finished_output.setdefault(job, output) == output

    def teardown(self) -> None:
        self.stop_reader.set()
        self.reader.join(10)
        pids = [p for j, p in self.pids.items() if j not in self.deleted]
        self.pool.close()
        for pid in pids:
            wait_until(lambda pid=pid: group_members(pid) == [], what="closed jobs to die")
        assert self.reader_errors == []


class TempfilePoolMachine(PoolMachine):
    backend_name = "tempfile"


SETTINGS = settings(
    max_examples=40,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = SETTINGS
TestTempfilePoolMachine = TempfilePoolMachine.TestCase
TestTempfilePoolMachine.settings = SETTINGS
