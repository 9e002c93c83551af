"""The values that cross jobkit's boundaries: states, statuses and outputs."""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

from jobkit.core.limits import Limits

__all__ = ["STREAMS", "JobOutput", "JobStatus", "State", "StreamInfo", "Usage"]

#: The names of the two output streams every job has.
STREAMS = ("stdout", "stderr")


class State(str, enum.Enum):
    """Where a job is in its life. Only ``PENDING`` and ``RUNNING`` are not final."""

    #: Waiting for a cluster's resources before it starts (an executor such
    #: as ``ray`` reports it; local jobs never are: they start at once).
    PENDING = "pending"
    RUNNING = "running"
    #: The job could not be started; ``JobStatus.error`` says why.
    ERROR = "error"
    #: The main process exited; ``JobStatus.exit_code`` has its status.
    COMPLETED = "completed"
    #: The main process died of a signal; ``JobStatus.signal`` has its number.
    #: A job killed because its pool was closed, or by the OOM killer, says
    #: so in ``JobStatus.error``.
    KILLED = "killed"
    #: The pool that ran the job ended without closing (it was killed or
    #: crashed) while the job ran; the next pool on the same ``state_dir``
    #: killed what was left of it.  ``JobStatus.error`` says so.
    LOST = "lost"

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        """True for the states a job never leaves (all but pending and running)."""
        return self not in _ACTIVE


#: The states that change.
_ACTIVE = frozenset({State.PENDING, State.RUNNING})


@attrs.frozen
class StreamInfo:
    """How much one output stream holds.

    Attributes:
        written: Bytes the job wrote to the stream so far (its absolute end offset).
        dropped: Bytes no longer kept (the ``ring`` backend drops the oldest);
            readable data starts at this offset.
        closed: True once every writer closed the stream and it was fully drained.
    """

    written: int = 0
    dropped: int = 0
    closed: bool = False


@attrs.frozen
class Usage:
    """What a job used, for its whole process tree where it had cgroups.

    Attributes:
        source: Where the figures come from: ``"cgroup"`` (the job's cgroups:
            every process of its tree, escaped ones included) or
            ``"rusage"`` (``wait4`` of the main process: itself and the
            descendants it waited for; only once it has ended).
        cpu_user_s: CPU seconds spent in user mode.
        cpu_system_s: CPU seconds spent in the kernel on the job's behalf.
        peak_memory: The most memory the job held at once, in bytes (a
            cgroup's peak counts page cache; ``rusage`` counts the largest
            resident set of one process).  None where unknown.
        io_read_bytes: Bytes read from block devices, where known (cgroup
            only; cgroup v1 sees reads and direct writes only).
        io_write_bytes: Bytes written to block devices, where known.
    """

    source: str
    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    peak_memory: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None

    @property
    def cpu_s(self) -> float:
        """User and system CPU seconds together."""
        return self.cpu_user_s + self.cpu_system_s


@attrs.frozen
class JobStatus:
    """A snapshot of one job.

    Attributes:
        id: The job's id within its pool.
        state: See `State`.
        command: The command as given to ``create``.
        args: The arguments as given to ``create``.
        pid: The main process id (also its process group and session id);
            None when the job never started.
        exit_code: The exit status, when ``state`` is ``COMPLETED``.
        signal: The number of the signal that killed the main process, when
            ``state`` is ``KILLED`` (whoever sent it).
        error: A message for people: why a job is in ``ERROR`` or ``LOST``,
            or that it was ``KILLED`` by its pool's close or for running out
            of memory (``out of memory (limit 256 MiB)``).
        timed_out: True when jobkit stopped the job because its ``timeout`` passed.
        created_at: When ``create`` was called (UTC).
        ended_at: When the main process was reaped or the start failed (UTC).
        backend: The name of the output backend holding the job's output.
        output_error: Set when storing output failed (e.g. the disk is full);
            the job runs on and later output is discarded.
        stdout: How much stdout holds.
        stderr: How much stderr holds.
        limits: The job's `Limits`, as given to ``create``; None if none.
        network: False when the job ran in its own network namespace with
            only a loopback interface.
        enforced_by: What enforced the limits: ``"cgroup2"``, ``"cgroup1"``,
            ``"cgroup1+cgroup2"``, or ``"none"`` (best effort, nothing
            could); None for a job without limits.
        unenforced: The names of limits this machine could not enforce
            (only with ``Limits(strict=False)``).
        oom_killed: True when the kernel's OOM killer killed a process of
            the job because of its memory limit.
        usage: What the job used (see `Usage`): live while it runs where it
            has cgroups, final once it has ended; None while unknown.
        executor: The name of the executor that ran it (``"local"``,
            ``"ray"``, a plugin's; see docs/executors.md).
        handle: The executor's name for the job (``ray``: its submission id);
            None for local jobs, and for a job the executor never took.
    """

    id: str
    state: State
    command: str
    args: tuple[str, ...]
    pid: int | None
    created_at: datetime
    backend: str
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    timed_out: bool = False
    ended_at: datetime | None = None
    output_error: str | None = None
    stdout: StreamInfo = StreamInfo()
    stderr: StreamInfo = StreamInfo()
    limits: Limits | None = None
    network: bool = True
    enforced_by: str | None = None
    unenforced: tuple[str, ...] = ()
    oom_killed: bool = False
    usage: Usage | None = None
    executor: str = "local"
    handle: str | None = None

    @property
    def running(self) -> bool:
        """True while the job has not ended: running, or pending (see `State.final`)."""
        return not self.state.final


@attrs.frozen
class JobOutput:
    """Everything a job's output backend still holds, as bytes.

    Attributes:
        stdout: The bytes the job wrote to standard output.
        stderr: The bytes the job wrote to standard error.
    """

    stdout: bytes
    stderr: bytes
