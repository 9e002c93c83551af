"""One job's state inside a pool."""

from __future__ import annotations

import logging
import os
import resource
import signal as signals
import subprocess
import threading
from collections.abc import Callable
from datetime import datetime, timezone

import attrs

from jobkit.core.cgroups import JobCgroups
from jobkit.core.leftovers import signal_group_since
from jobkit.core.limits import Limits
from jobkit.core.models import JobStatus, State, StreamInfo, Usage
from jobkit.core.sizes import format_size
from jobkit.core.spawn import ChildProcess
from jobkit.core.stream import OutputStream

__all__ = ["CLOSED_BY_POOL", "Job", "Outcome", "out_of_memory", "usage_from_rusage", "utcnow"]

log = logging.getLogger("jobkit.pool")

#: Seconds a running job's usage, read from its cgroups, may be old in its status.
LIVE_USAGE_AGE = 0.1
#: ``JobStatus.error`` of a job killed because its pool was closed.
CLOSED_BY_POOL = "killed when its pool was closed"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def out_of_memory(limit: int | None) -> str:
    """``JobStatus.error`` of a job whose main process the OOM killer killed."""
    return "out of memory" if limit is None else f"out of memory (limit {format_size(limit)})"


def usage_from_rusage(usage: resource.struct_rusage) -> Usage:
    """What ``wait4`` says the main process and the children it waited for used.

    ``ru_maxrss`` is in KiB, and it is no job's own when not above ours: a
    process started by ``vfork`` runs on its parent's memory until ``exec``,
    and the kernel keeps the peak of that memory as the child's.  Block
    counts are in 512-byte units.
    """
    ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return Usage(
        "rusage",
        usage.ru_utime,
        usage.ru_stime,
        usage.ru_maxrss * 1024 if usage.ru_maxrss > ours else None,
        usage.ru_inblock * 512,
        usage.ru_oublock * 512,
    )


@attrs.frozen
class Outcome:
    """How a job ended; assigned once, in one step, so readers see all of it or none."""

    state: State
    ended_at: datetime
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    usage: Usage | None = None
    oom_killed: bool = False


@attrs.define(eq=False)
class Job:
    """Everything the pool knows about one job.

    ``outcome`` is None while the main process runs.  The supervisor thread
    sets it, or a waiter that ended the job in its own thread (holding
    ``busy``), or `JobPool.create` for a job that never started; the same
    thread records it (``on_end``) and then wakes the waiters (``ended``),
    so whoever returns from `JobPool.wait` finds the end recorded.

    The main process is reaped as soon as it exits, so a finished job holds
    no zombie and no pidfd.  ``lock`` orders that reaping with `signal_group`:
    while the leader is unreaped its pid (the group id) cannot be reused, so
    ``killpg`` is safe; after, the group is signalled only if members born
    since the leader are left in it (see `jobkit.core.leftovers`).

    A job with cgroups runs until its whole tree is gone: when its main
    process exits while other processes of it live on, ``leader_returncode``
    keeps its status and the supervisor watches the tree until it is empty.
    """

    id: str
    command: str
    args: tuple[str, ...]
    backend: str
    created_at: datetime
    streams: dict[str, OutputStream]
    #: Its main process (`jobkit.core.spawn`; an executor of its own may use a Popen).
    process: ChildProcess | subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    #: The parent's read ends of the output pipes, by stream name.
    fds: dict[str, int] = attrs.Factory(dict)
    #: The job's cgroups while it runs, where it has some (see jobkit.core.cgroups).
    groups: JobCgroups | None = None
    #: True if its tree was held by cgroups (then nothing is left once it ended).
    contained: bool = False
    limits: Limits | None = None
    network: bool = True
    enforced_by: str | None = None
    unenforced: tuple[str, ...] = ()
    #: The main process's status once reaped, while the rest of its tree runs on.
    leader_returncode: int | None = None
    #: What ``wait4`` said the main process used.
    rusage: resource.struct_rusage | None = None
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
    #: Held by whoever drains the job's pipes or reaps it: the supervisor, or
    #: a waiter ending the job in its own thread (ordered before ``lock``).
    busy: threading.Lock = attrs.Factory(threading.Lock)
    #: The status as recorded when the job ended.
    recorded: JobStatus | None = None
    #: Called with the job once its outcome is set, before waiters are woken
    #: (in the thread that set it: the supervisor's, or a waiter's).
    on_end: Callable[[Job], None] | None = None
    #: Called (in the supervisor thread) after the waiters were woken.
    on_finished: Callable[[Job], None] | None = None
    #: Called (in the supervisor thread) once it has ended and both streams are drained.
    on_drained: Callable[[Job], None] | None = None
    #: The executor that runs it (see jobkit.core.executor) and its handle there.
    executor: str = "local"
    handle: str | None = None
    #: True while its executor says it waits for resources (`State.PENDING`).
    pending: bool = False
    #: Its status once it can no longer change (see `status`).
    _final: JobStatus | None = attrs.field(default=None, init=False, repr=False)

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

    def finish(
        self, outcome: Outcome, later: Callable[[Callable[[], None]], None] | None = None
    ) -> None:
        """Set the outcome, record it (``on_end``), wake the waiters, then tell
        ``on_finished``.

        Recorded first, so that a caller of `JobPool.wait` finds the end in
        the records (``clean`` right after ``wait`` deletes the job, and a
        durable pool has it on disk).  ``later``, if given, runs
        ``on_finished`` instead (in the executor's thread, when a waiter
        ended the job in its own: see
        `jobkit.core.supervisor.Supervisor.await_end`).
        """
        self.outcome = outcome
        if self.on_end is not None:
            try:
                self.on_end(self)
            except Exception:  # a plugin's callback, say: the job has ended anyway
                log.exception("job %s: cannot record its end", self.id)
        self.ended.set()
        on_finished = self.on_finished
        if on_finished is None:
            return

        def tell() -> None:
            try:
                on_finished(self)
            except Exception:  # the user's callback: the job has ended anyway
                log.exception("job %s: on_finished failed", self.id)

        if later is None:
            tell()
        else:
            later(tell)

    @property
    def lingering(self) -> bool:
        """True while the main process has exited but the rest of the tree runs."""
        return self.leader_returncode is not None and self.outcome is None

    def finish_with_returncode(
        self, returncode: int, usage: Usage | None = None, oom_killed: bool = False,
        later: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        signal = -returncode if returncode < 0 else None
        exit_code = returncode if returncode >= 0 else None
        state = State.KILLED if returncode < 0 else State.COMPLETED
        error = None
        if self.closing:
            state, error = State.KILLED, CLOSED_BY_POOL
        elif oom_killed and signal == signals.SIGKILL:
            error = out_of_memory(self.limits.memory if self.limits else None)
        self.finish(Outcome(state, utcnow(), exit_code, signal, error, usage, oom_killed), later)

    def signal_group(self, signal: int, newest: dict[int, int] | None = None) -> bool:
        """Send ``signal`` to the job's whole process group and cgroups, if anything is left.

        Returns False when nothing of the job could have been reached.
        ``newest``: a `jobkit.core.leftovers.newest_members` snapshot, for
        signalling many jobs at one look at ``/proc``.
        """
        if self.process is None:
            return False
        hit = True
        with self.lock:
            if not self.leader_gone:
                try:
                    os.killpg(self.process.pid, signal)
                except ProcessLookupError:
                    pass  # the whole group is gone already
            elif not self.contained:
                # No cgroup: members of its group born since the leader, never a reused pid.
                hit = self.start_ticks is not None and signal_group_since(
                    self.process.pid, self.start_ticks, signal, newest
                )
        groups = self.groups
        if groups is not None:
            groups.signal(signal)  # also those that left the group
        return hit

    def status(self) -> JobStatus:
        """A snapshot; the same object every time once the job has ended and its
        streams are closed (recording its end, settling it and each waiter
        asked for it anew: three copies per job, on the path to the waiter)."""
        final = self._final
        if final is not None:
            return final
        outcome = self.outcome  # read once: it is replaced, never mutated
        # Looked at before the streams' sizes: closed streams no longer grow.
        settled = outcome is not None and all(s.closed for s in self.streams.values())
        errors = [f"{s.name}: {s.error}" for s in self.streams.values() if s.error]
        stdout, stderr = (
            self.streams[name].info() if name in self.streams else StreamInfo()
            for name in ("stdout", "stderr")
        )
        groups = self.groups  # live usage, where the cgroups can say
        usage = (groups.usage(max_age=LIVE_USAGE_AGE) if outcome is None and groups is not None
                 else None)
        if outcome is not None:
            usage = outcome.usage
        status = JobStatus(
            id=self.id,
            state=(State.PENDING if self.pending else State.RUNNING) if outcome is None
            else outcome.state,
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
            limits=self.limits,
            network=self.network,
            enforced_by=self.enforced_by,
            unenforced=self.unenforced,
            oom_killed=outcome is not None and outcome.oom_killed,
            usage=usage,
            executor=self.executor,
            handle=self.handle,
        )
        if settled:
            self._final = status
        return status
