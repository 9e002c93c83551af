"""One job's state inside a pool."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import attrs

from jobkit.core.cgroups import CgroupTree
from jobkit.core.leftovers import signal_group_since
from jobkit.core.models import JobStatus, State, StreamInfo
from jobkit.core.stream import OutputStream

__all__ = ["CLOSED_BY_POOL", "Job", "Outcome", "utcnow"]

log = logging.getLogger("jobkit.pool")

#: ``JobStatus.error`` of a job killed because its pool was closed.
CLOSED_BY_POOL = "killed when its pool was closed"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@attrs.frozen
class Outcome:
    """How a job ended; assigned once, in one step, so readers see all of it or none."""

    state: State
    ended_at: datetime
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None


@attrs.define(eq=False)
class Job:
    """Everything the pool knows about one job.

    ``outcome`` is None while the main process runs.  Only the supervisor
    thread sets it (or `JobPool.create` for a job that never started); the
    pool's ``on_end`` records it, and ``ended`` is set right after, so that
    whoever waits for the job finds it recorded.

    The main process is reaped as soon as it exits, so a finished job holds
    no zombie and no pidfd.  ``lock`` orders that reaping with `signal_group`:
    while the leader is unreaped its pid (the group id) cannot be reused, so
    ``killpg`` is safe; after, the group is signalled only if members born
    since the leader are left in it (see `jobkit.core.leftovers`).
    """

    id: str
    command: str
    args: tuple[str, ...]
    backend: str
    created_at: datetime
    streams: dict[str, OutputStream]
    process: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    #: The parent's read ends of the output pipes, by stream name.
    fds: dict[str, int] = attrs.Factory(dict)
    #: The job's own cgroup, where jobkit could make one (see jobkit.core.cgroups).
    cgroup: Path | None = None
    #: Set by the supervisor once the job left its pool (deleted, or pool closed).
    forgotten: bool = False
    #: Streams whose pipe was enlarged because the job writes a lot.
    grown: set[str] = attrs.Factory(set)
    timeout: float | None = None
    timed_out: bool = False
    outcome: Outcome | None = None
    ended: threading.Event = attrs.Factory(threading.Event)
    #: The leader's start time in clock ticks since boot, for `signal_group`.
    start_ticks: int | None = None
    #: True once the leader was reaped: its pid may belong to someone else.
    leader_gone: bool = False
    #: Set by `JobPool.close` before it kills the job.
    closing: bool = False
    lock: threading.Lock = attrs.Factory(threading.Lock)
    #: The status as recorded when the job ended.
    recorded: JobStatus | None = None
    #: Called (in the supervisor thread) with the job once its outcome is set.
    on_end: Callable[[Job], None] | None = None
    #: Called (in the supervisor thread) once it has ended and both streams are drained.
    on_drained: Callable[[Job], None] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.outcome is None

    @property
    def drained(self) -> bool:
        """True once both output pipes are closed (or never opened)."""
        return not self.fds

    def finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        if self.on_end is not None:
            try:
                self.on_end(self)
            except Exception:  # a full disk must not leave waiters hanging
                log.exception("job %s: cannot record its end", self.id)
        self.ended.set()

    def finish_with_returncode(self, returncode: int) -> None:
        if self.closing:
            self.finish(Outcome(
                State.KILLED, utcnow(), error=CLOSED_BY_POOL,
                signal=-returncode if returncode < 0 else None,
                exit_code=returncode if returncode >= 0 else None,
            ))
        elif returncode < 0:
            self.finish(Outcome(State.KILLED, utcnow(), signal=-returncode))
        else:
            self.finish(Outcome(State.COMPLETED, utcnow(), exit_code=returncode))

    def signal_group(self, signal: int) -> None:
        """Send ``signal`` to the job's whole process group and cgroup, if anything is left."""
        if self.process is None:
            return
        with self.lock:
            if not self.leader_gone:
                try:
                    os.killpg(self.process.pid, signal)
                except ProcessLookupError:
                    pass  # the whole group is gone already
            elif self.start_ticks is not None:
                signal_group_since(self.process.pid, self.start_ticks, signal)
        if self.cgroup is not None:
            CgroupTree.signal(self.cgroup, signal)  # also those that left the group

    def status(self) -> JobStatus:
        outcome = self.outcome  # read once: it is replaced, never mutated
        errors = [f"{s.name}: {s.error}" for s in self.streams.values() if s.error]
        stdout, stderr = (
            self.streams[name].info() if name in self.streams else StreamInfo()
            for name in ("stdout", "stderr")
        )
        return JobStatus(
            id=self.id,
            state=State.RUNNING if outcome is None else outcome.state,
            command=self.command,
            args=self.args,
            pid=self.pid,
            created_at=self.created_at,
            backend=self.backend,
            exit_code=None if outcome is None else outcome.exit_code,
            signal=None if outcome is None else outcome.signal,
            error=None if outcome is None else outcome.error,
            timed_out=self.timed_out,
            ended_at=None if outcome is None else outcome.ended_at,
            output_error="; ".join(errors) or None,
            stdout=stdout,
            stderr=stderr,
        )
