"""The executor contract: how a job is run (next to `jobkit.core.backend`: where its output goes).

An *executor* is configured once per pool (``JobPool(executor="ray",
executor_options={...})``) and runs every job the pool creates.  The pool
keeps what is the same for every executor: the job's id, its record in
SQLite, its output in the pool's output backend (``read``/``follow`` with
absolute offsets, caps, retention), its timeout and its waiters.  The
executor starts the job somewhere, tells the pool what the job writes and
how it ends, and stops or deletes it when asked::

    executor = RayExecutor(address="http://10.0.0.5:8265")   # options checked here
    executor.open(ExecutorContext(pool_id="3f9c...", owner="alice", durable=True))
    submitted = executor.submit(spec)          # blocks until the cluster took it
    # the pool records submitted.handle, then:
    executor.watch(submitted.handle, sink)     # returns at once; the sink gets the rest

An executor whose jobs are processes of this machine may instead take the
*process* half of the contract, `ProcessExecutor`: the pool hands it each
job's `jobkit.core.job.Job`, whose output streams it fills itself (a pipe
spliced straight into the ``file`` or ``tempfile`` backend's file by
`OutputStore.fill_from`: no copy through Python, no `JobSink.output`), and
records the job with its `Process` in one transaction, so that a job costs
two: its start and its end.  The built-in ``local`` executor
(`jobkit.executors.local`) is one; it is registered through the same hook
as any other and found by name like them::

    started = executor.start(spec)             # spawned; spec.job_id is ""
    # the pool records the job with started.process, opens its stores, then:
    executor.run(job, started)                 # returns at once; fills job.streams

Threads and ordering:

* `Executor.submit`, `stop`, `delete`, `detach` and `close` are called from
  the pool's callers' threads, any number at once, for different jobs or the
  same one.  They may block (on the network) but must not wait on a job's
  sink: the pool may hold nothing while calling them, and a sink call may be
  on its way in another thread.
* `find` is called from the thread that opens the pool.
* After `watch`, the executor calls the job's `JobSink` from threads of its
  own, **one call at a time per job**, in order: `JobSink.output` for bytes,
  `JobSink.state` when the job leaves pending, and `JobSink.ended` exactly
  once, last, after every byte the job wrote was handed over.  Nothing is
  called after `ended`, nor once `detach` or `delete` has returned.
* Sink calls are quick (they append to the output backend) and never block
  on the network; the executor may serve many jobs from one thread.

States: a job is `State.PENDING` from `submit` (when `Submission.state`
says so) until the executor calls ``sink.state(State.RUNNING)``; then
``running`` until `JobSink.ended`, whose `Ending` says ``completed`` (with
the exit code), ``killed`` (with the signal, where known), ``error`` (it
could not start: the message says why) or ``lost`` (the cluster forgot it).

Output: `JobSink.output` takes ``(stream, offset, data)`` where ``offset`` is
the absolute offset of ``data`` in that stream.  The sink keeps what it does
not have yet and drops what it has, so an executor that cannot resume
mid-stream (after a restart of the pool, or a reconnect) hands over the
stream again from byte 0.  `JobSink.written` says how much the sink holds.

Re-attaching: the pool records the executor's name and `Submission.handle`
with the job (in ``jobs.db``).  A pool reopened on the same ``state_dir``
calls `watch` again for each job recorded as running by an executor of the
same name, with a sink that already holds the output kept so far; the
executor carries on from there.  `ExecutorContext.pool_id` is the same
across restarts.  Closing a durable pool calls `detach` for each running
job: the job runs on, and the next pool takes it over.

A `ProcessExecutor` is called the same way (`start` and `run` like
`submit` and `watch`, `signal` like `stop`, `kill` like `delete`) and sets
the job's outcome and calls its ``on_drained`` from threads of its own, one
call at a time per job.  Its jobs are never re-attached: a reopened pool
kills what a dead one left of them (`jobkit.core.leftovers`, from the
recorded `Process`) and records them `State.LOST`.

Executors are registered through the ``jobkit_register_executors`` hook (see
`jobkit.core.hookspecs`); an executor factory is any callable taking keyword
options and returning an `Executor`, usually the class itself.
docs/executors.md says all of this for people, with a worked example.
"""

from __future__ import annotations

import abc
import signal as signals
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from jobkit.core.limits import Limits
from jobkit.core.models import State, Usage

if TYPE_CHECKING:  # the contract's module stays light: plugins import it to register
    from jobkit.core.job import Job

__all__ = [
    "CannotRun",
    "Ending",
    "Executor",
    "ExecutorContext",
    "JobSink",
    "JobSpec",
    "Process",
    "ProcessExecutor",
    "Started",
    "Submission",
]


class CannotRun(Exception):
    """Raised by `Executor.submit`: this job cannot run here (a limit the executor
    cannot honour, say).  The job is created in `State.ERROR` with the message."""


@attrs.frozen
class ExecutorContext:
    """What the pool tells its executor once, before the first job.

    Attributes:
        pool_id: A name for the pool, unique and the same across restarts of a
            durable pool: executors put it in the names they give jobs.
        owner: Whose jobs these are (``jobkit serve`` passes the client's
            CN), or None; executors record it with each job.
        durable: True if the pool has a ``state_dir``: its running jobs
            are re-attached after a restart, so closing it `detach`es them.
        env: The pool's ``env``: the whole environment its jobs start from
            (`JobSpec.env` already holds it), or None for the executor's
            default (``local``: the pool process's environment at each
            job's start).
        cgroups: The pool's ``cgroups`` argument, for executors whose jobs
            are processes of this machine: False, only jobs with limits get
            cgroups; None, every job where possible; True, every job, and
            the executor's `Executor.open` raises
            `jobkit.core.errors.JobkitError` where that is impossible.
            Other executors ignore it.
    """

    pool_id: str
    owner: str | None
    durable: bool
    env: Mapping[str, str] | None = None
    cgroups: bool | None = False


@attrs.frozen
class JobSpec:
    """What to run, as `JobPool.create` was given it.

    Attributes:
        job_id: The pool's id of the job.
        command: The program; no shell is involved.
        args: Its arguments.
        env: Variables to set over the environment the executor's jobs
            start from (the pool's ``env`` and ``create``'s ``env``, never
            the pool process's own environment).
        replace_env: Start from an empty environment plus ``env``
            (``env`` is then ``create``'s alone).
        cwd: The working directory, or None for the executor's default.
        timeout: Seconds after which the job gets SIGTERM, then SIGKILL
            ``kill_after`` seconds later; the `Ending` then says ``timed_out``.
        kill_after: See ``timeout``.
        limits: The job's `Limits`, or None.
        network: False if the job must run without network.
    """

    job_id: str
    command: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    replace_env: bool
    cwd: str | None
    timeout: float | None
    kill_after: float
    limits: Limits | None
    network: bool


@attrs.frozen
class Submission:
    """What `Executor.submit` says of a job it took.

    Attributes:
        handle: The executor's name for the job: recorded by the pool, and
            all it gets back to find the job again (`watch`, `stop`, `delete`).
        state: `State.PENDING` (waiting for the cluster) or `State.RUNNING`.
        enforced_by: What enforces the job's limits (``"none"`` when
            nothing does), as `JobStatus.enforced_by`; None without limits.
        unenforced: The names of the limits nothing enforces.
    """

    handle: str
    state: State = State.PENDING
    enforced_by: str | None = None
    unenforced: tuple[str, ...] = ()


@attrs.frozen
class Ending:
    """How a job ended, as its executor tells `JobSink.ended`.

    Attributes:
        state: ``COMPLETED``, ``KILLED``, ``ERROR`` or ``LOST``.
        exit_code: The exit status, when completed.
        signal: The signal that killed the main process, when killed and known.
        error: A message for people (why it could not start, why it is lost).
        timed_out: True when the job's ``timeout`` stopped it.
        usage: What it used, where the executor knows.
    """

    state: State
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    timed_out: bool = False
    usage: Usage | None = None


class JobSink(abc.ABC):
    """The pool's side of one job run by an executor (see the module docstring)."""

    @property
    @abc.abstractmethod
    def job_id(self) -> str:
        """The pool's id of the job."""

    @abc.abstractmethod
    def written(self, stream: str) -> int:
        """How many bytes of ``stream`` the pool holds: where new output starts."""

    @abc.abstractmethod
    def output(self, stream: str, offset: int, data: bytes) -> None:
        """``data`` was written to ``stream`` (``"stdout"`` or ``"stderr"``) at ``offset``."""

    @abc.abstractmethod
    def state(self, state: State) -> None:
        """The job is now ``state`` (`State.RUNNING`, or `State.PENDING` again)."""

    @abc.abstractmethod
    def ended(self, ending: Ending) -> None:
        """The job has ended, and every byte it wrote was handed to `output`."""


class Executor(abc.ABC):
    """Runs a pool's jobs: on a cluster through `submit` and a `JobSink`, or, for a
    `ProcessExecutor`, as processes of this machine.

    See the module docstring for the threading and ordering rules.
    """

    def open(self, context: ExecutorContext) -> None:  # noqa: B027 - optional
        """Called once by the pool before anything else."""

    @abc.abstractmethod
    def submit(self, spec: JobSpec) -> Submission:
        """Start the job (or queue it) and return its handle.

        Raise `CannotRun` for a job that cannot run here (it is created in
        error), `jobkit.core.errors.ExecutorUnavailable` when the cluster
        cannot be reached (nothing is created).
        """

    @abc.abstractmethod
    def watch(self, handle: str, sink: JobSink) -> None:
        """Start handing the job's output, state and end to ``sink``; return at once.

        Also called for a job recorded by an earlier pool (a restart):
        ``sink`` then holds the output kept so far.
        """

    def find(self, job_id: str) -> str | None:
        """The handle of the pool's job ``job_id`` on the cluster, or None.

        Called when a reopened pool finds a job recorded without a handle
        (the previous pool ended between `submit` and recording it): an
        executor that names jobs after `ExecutorContext.pool_id` and the
        job's id can find it again.  None (the default) records it
        `State.LOST`, and leaves it alone wherever it runs.
        """
        return None

    @abc.abstractmethod
    def stop(self, handle: str, signal: int) -> None:
        """Ask the job to stop (its whole tree), with ``signal`` where the executor can.

        Returns once asked; the end comes through the sink.  No error for a
        job that has ended.
        """

    @abc.abstractmethod
    def delete(self, handle: str) -> None:
        """Kill the job, wait until nothing of it runs, and forget it on the cluster.

        Stops the sink calls first, as `detach`.  No error for a job the
        cluster does not know.
        """

    @abc.abstractmethod
    def detach(self, handle: str) -> None:
        """Stop the sink calls for this job; it runs on (a durable pool is closing)."""

    def close(self) -> None:  # noqa: B027 - optional
        """The pool is closed: let go of connections and threads (after `detach` of all)."""


@attrs.frozen
class Process:
    """A job's main process on this machine, as the pool records it.

    Enough for a later pool on the same ``state_dir`` to kill what is left
    of the job after its pool died, without ever hitting a process that
    reused the pid (`jobkit.core.leftovers.kill_leftover`).

    Attributes:
        pid: The main process's pid, the leader of the job's process group.
        start: The first and last clock tick since boot in which it started
            (`jobkit.core.leftovers.boot_ticks` around the spawn).
        boot_id: The boot it started in (`jobkit.core.leftovers.boot_id`).
        cgroups: Its cgroup folders, if it has any.
    """

    pid: int
    start: tuple[int, int]
    boot_id: str
    cgroups: tuple[str, ...] = ()


@attrs.frozen
class Started:
    """What `ProcessExecutor.start` says of a job.

    Attributes:
        process: Its main process, or None if it could not start.
        error: Why it could not start (the job is created in `State.ERROR`).
        enforced_by: What enforces its limits, as `Submission.enforced_by`.
        unenforced: The names of the limits nothing enforces.
        token: The executor's own state of the job, handed back to its
            `ProcessExecutor.run` or `ProcessExecutor.discard`.
    """

    process: Process | None
    error: str | None = None
    enforced_by: str | None = None
    unenforced: tuple[str, ...] = ()
    token: object = None


class ProcessExecutor(Executor):
    """An executor whose jobs are processes of this machine, fed straight into their stores.

    Instead of `submit`, `watch` and a `JobSink`, the pool hands it the job
    itself (`jobkit.core.job.Job`): it moves the job's output into
    ``job.streams`` (`OutputStream`: ``store.fill_from(fd, budget)`` splices
    a pipe into a file, then ``notify()``; ``mark_closed()`` at the end of
    a stream), sets the job's outcome once (``job.finish`` or
    ``job.finish_with_returncode``, which records it and wakes waiters),
    and calls ``job.on_drained(job)`` once the job has ended and its streams
    are closed.  Those calls come from the executor's own threads, one at a
    time per job.  See the module docstring for the order of calls.
    """

    @abc.abstractmethod
    def start(self, spec: JobSpec) -> Started:
        """Start the job's process (``spec.job_id`` is "": the pool records it after).

        Failures to start are no exception: `Started.error` says why.
        Called from the pool's callers' threads, any number at once.
        """

    @abc.abstractmethod
    def run(self, job: Job, started: Started) -> None:
        """The job is recorded and its stores open: feed them and watch its end.

        Returns at once.  A job that cannot be watched is ended (in
        `State.ERROR`, say) as any other.
        """

    @abc.abstractmethod
    def discard(self, started: Started) -> None:
        """Kill and reap a started process that never became a job (its record failed)."""

    @abc.abstractmethod
    def signal(self, job: Job, signal: int) -> None:
        """Send ``signal`` to the job's whole tree (`JobPool.stop`); no error once it
        has ended (what is left of it is still signalled, never a reused pid)."""

    @abc.abstractmethod
    def kill(self, job: Job) -> None:
        """Kill the job's whole tree, wait until it is gone, and stop feeding its
        streams (`JobPool.delete`, and `JobPool.close` after a SIGKILL to all)."""

    def kill_all(self, jobs: Sequence[Job]) -> None:
        """`kill` every one of ``jobs`` (`JobPool.close`): signalled all first, so
        that they die in parallel.  An executor may do it more cheaply than
        one at a time (``local`` looks at ``/proc`` once for all of them)."""
        for job in jobs:
            self.signal(job, signals.SIGKILL)
        for job in jobs:
            self.kill(job)

    def await_end(self, job: Job, timeout: float | None) -> bool:
        """Block until ``job`` has ended (or ``timeout`` s passed); True if it has.

        `JobPool.wait` calls it.  The default waits on ``job.ended``; an
        executor may end the job in the caller's thread instead, if it gets
        there first (``local`` does: see `jobkit.core.supervisor`).
        """
        return job.ended.wait(timeout)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` soon where it cannot race with this executor's calls on the
        job (the pool's retry of an end a full disk kept from being recorded).
        The default runs it at once."""
        fn()

    # The job-at-a-distance half of the contract is never called on a
    # ProcessExecutor: the pool uses the methods above instead.

    def submit(self, spec: JobSpec) -> Submission:
        raise TypeError(f"{type(self).__name__} runs processes: use start()")

    def watch(self, handle: str, sink: JobSink) -> None:
        raise TypeError(f"{type(self).__name__} runs processes: use run()")

    def stop(self, handle: str, signal: int) -> None:
        raise TypeError(f"{type(self).__name__} runs processes: use signal()")

    def delete(self, handle: str) -> None:
        raise TypeError(f"{type(self).__name__} runs processes: use kill()")

    def detach(self, handle: str) -> None:
        raise TypeError(f"{type(self).__name__} runs processes: its jobs never run on")
