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

The built-in ``local`` executor is the exception: its jobs are run by the
pool itself (``spawn`` and the one supervisor thread, see
`jobkit.core.supervisor`), which no per-call contract could make as cheap.
It is registered through the same hook as any other, so that it is named,
listed and chosen like them; `LocalExecutor` marks it.

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

Executors are registered through the ``jobkit_register_executors`` hook (see
`jobkit.core.hookspecs`); an executor factory is any callable taking keyword
options and returning an `Executor`, usually the class itself.
docs/executors.md says all of this for people, with a worked example.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import attrs

from jobkit.core.limits import Limits
from jobkit.core.models import State, Usage

__all__ = [
    "CannotRun",
    "Ending",
    "Executor",
    "ExecutorContext",
    "JobSink",
    "JobSpec",
    "LocalExecutor",
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
    """

    pool_id: str
    owner: str | None
    durable: bool


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
        replace_env: Start from an empty environment plus ``env``.
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
    """Runs a pool's jobs somewhere else than in the pool's process.

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


class LocalExecutor:
    """The built-in ``local`` executor: jobs run as processes of this machine.

    The pool runs them itself (see the module docstring); this value only
    names the choice.  It takes no options.
    """
