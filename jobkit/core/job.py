"""One job's state inside a pool."""

from __future__ import annotations

import os
import subprocess
import threading
from datetime import datetime, timezone
from pathlib import Path

import attrs

from jobkit.core.cgroups import CgroupTree
from jobkit.core.models import JobStatus, State, StreamInfo
from jobkit.core.stream import OutputStream

__all__ = ["Job", "Outcome", "utcnow"]


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
    thread sets it (or `JobPool.create` for a job that never started), and
    ``ended`` is set right after.
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

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.outcome is None

    def finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.ended.set()

    def finish_with_returncode(self, returncode: int) -> None:
        if returncode < 0:
            self.finish(Outcome(State.KILLED, utcnow(), signal=-returncode))
        else:
            self.finish(Outcome(State.COMPLETED, utcnow(), exit_code=returncode))

    def signal_group(self, signal: int) -> None:
        """Send ``signal`` to the job's whole process group and cgroup, if anything is left."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal)
        except ProcessLookupError:
            pass  # the whole group is gone already
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
