"""`JobPool`: create, watch, stop and delete jobs, and keep their records."""

from __future__ import annotations

import atexit
import fcntl
import functools
import logging
import os
import signal as signals
import threading
import time
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from pathlib import Path
from threading import TIMEOUT_MAX
from typing import Any, TypeGuard

import attrs

from jobkit.core import plugins
from jobkit.core.backend import DurableBackend, OutputBackend, OutputStore, ResumableBackend
from jobkit.core.checks import check_args, check_count, check_env, check_seconds, check_str
from jobkit.core.errors import (
    ExecutorUnavailable,
    JobkitError,
    JobNotFound,
    PoolClosed,
    StateDirInUse,
    StorageFailed,
)
from jobkit.core.executor import (
    CannotRun,
    Executor,
    ExecutorContext,
    JobSpec,
    ProcessExecutor,
    Started,
)
from jobkit.core.feed import JobFeed
from jobkit.core.job import CLOSED_BY_POOL, Job, Outcome, utcnow
from jobkit.core.leftovers import boot_id, kill_leftover, signal_group_since
from jobkit.core.limits import Limits
from jobkit.core.models import STREAMS, JobOutput, JobStatus, State, StreamInfo
from jobkit.core.records import DATABASE_NAME, Incarnation, JobRecords
from jobkit.core.retention import CleanResult, Retention
from jobkit.core.signals import parse_signal
from jobkit.core.stream import Follower, OutputStream

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_EXECUTOR",
    "DEFAULT_KILL_AFTER",
    "DURABLE_BACKEND",
    "JobPool",
    "check_executor",
]

log = logging.getLogger("jobkit.pool")

#: The backend of a pool without a ``state_dir``.
DEFAULT_BACKEND = "memory"
#: The backend of a pool with a ``state_dir``: output kept across restarts.
DURABLE_BACKEND = "file"
#: Where jobs run unless the pool says otherwise: processes of this machine.
DEFAULT_EXECUTOR = "local"
#: Seconds between SIGTERM and SIGKILL when a job's timeout passes.
DEFAULT_KILL_AFTER = 5.0
#: ``JobStatus.error`` of a job whose pool died while it ran.
LOST_MESSAGE = (
    "lost: the pool that ran it ended without closing (killed or crashed);"
    " what was left of it was killed when the pool was reopened"
)
_MEMORY_LOST = "the output was held in memory by a pool that has ended"
#: ``JobStatus.error`` of a running job a pool deleted (whatever ran it).
_DELETED = "deleted while it ran"

#: Every pool not closed yet, held strongly: a pool with running jobs must not
#: vanish with its last reference and leave them running after the exit.
_open_pools: set[JobPool] = set()


def _disown_after_fork() -> None:
    # A fork's child inherits the pools but not their supervisor thread, and
    # the jobs are its parent's: the child's copies are closed, never used.
    for pool in _open_pools:
        pool._lock = threading.Lock()  # another thread may have held it at the fork
        pool._idle = threading.Condition(pool._lock)
        pool._jobs, pool._busy, pool._closed = {}, 0, True
    _open_pools.clear()


os.register_at_fork(after_in_child=_disown_after_fork)


@atexit.register
def _close_open_pools() -> None:
    # No job outlives an interpreter that forgot to close its pool.
    for pool in list(_open_pools):
        pool.close()


class JobPool:
    """A thread-safe set of jobs: processes with captured stdout and stderr.

    Args:
        backend: Name of the output backend new jobs use unless ``create``
            says otherwise (``memory``, ``tempfile``, ``ring``, ``file`` or a
            plugin's).  Default: ``file`` with a ``state_dir``, else ``memory``.
        backend_options: Keyword options for that backend,
            e.g. ``{"capacity": 65536}`` for ``ring``.
        env: The environment jobs start from; ``None`` means this process's
            environment at the time of each ``create``.
        kill_after: Seconds between SIGTERM and SIGKILL when a job's timeout passes.
        cgroups: Put every job in cgroups of its own, so that its timeout,
            `stop` and `delete` reach processes that left its session
            (``setsid``), it runs until its whole tree is gone, and its usage
            counts the whole tree.  False (default): only jobs with `Limits`
            get cgroups; None: every job, where this process may create
            cgroups; True: required (``JobkitError`` if impossible).  See
            docs/limits.md for the cost.  (For ``local``, and any executor
            whose jobs are processes of this machine; others ignore it.)
        state_dir: A folder (made 0700) where the pool keeps every job's
            record in SQLite (``jobs.db``) and, with the ``file`` backend,
            its output.  A pool reopened on it sees every job recorded
            before, continues the ids, and kills and marks `State.LOST` the
            jobs a dead previous owner left running.  One pool at a time may
            own a folder (`StateDirInUse`).  None: records in memory only.
        retention: When finished jobs are deleted on their own (see
            `Retention`); default: never.
        on_finished: Called with a job's final status once it ended (its
            main process exited, or it could not start), once per job, in
            the executor's thread (``local``: the supervisor's): it must be
            quick and must not block.  Its exceptions are logged and ignored.
        executor: Where jobs run: ``local`` (default: processes of this
            machine), ``ray`` (a Ray cluster, with the ``jobkit[ray]``
            extra), or a plugin's; see docs/executors.md.
        executor_options: Keyword options for it, e.g.
            ``{"address": "http://127.0.0.1:8265"}`` for ``ray``.
        owner: Whose jobs these are (``jobkit serve``: the client's CN);
            executors record it with each job (``ray``: in its metadata).

    Use it as a context manager, or call `close`; either kills and reaps every
    job still running.  So does the interpreter's exit.  (A durable pool's
    jobs on a cluster executor such as ``ray`` run on instead: the next pool
    on its ``state_dir`` re-attaches them, see docs/executors.md.)
    """

    def __init__(
        self,
        backend: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        kill_after: float = DEFAULT_KILL_AFTER,
        cgroups: bool | None = False,
        state_dir: str | os.PathLike[str] | None = None,
        retention: Retention | None = None,
        on_finished: Callable[[JobStatus], None] | None = None,
        executor: str = DEFAULT_EXECUTOR,
        executor_options: Mapping[str, Any] | None = None,
        owner: str | None = None,
    ) -> None:
        if backend is None:
            backend = DEFAULT_BACKEND if state_dir is None else DURABLE_BACKEND
        self._backend_name = check_str("backend", backend)
        self._env = None if env is None else check_env(env)
        self._kill_after = check_seconds("kill_after", kill_after, allow_zero=True)
        if retention is not None and not isinstance(retention, Retention):
            raise TypeError(f"retention must be a Retention, not {type(retention).__name__}")
        self._retention = retention or Retention()
        self._on_finished = on_finished
        #: Each job's ``on_finished``: none at all if the pool has none.
        self._tell = None if on_finished is None else self._tell_finished
        self._executor_name = check_str("executor", executor, nonempty=True)
        if owner is not None:
            owner = check_str("owner", owner)
        if cgroups is not None and not isinstance(cgroups, bool):
            raise TypeError(f"cgroups must be True, False or None, not {type(cgroups).__name__}")
        self._state_dir = None if state_dir is None else Path(os.fspath(state_dir))
        self._lock_fd = -1 if self._state_dir is None else _claim(self._state_dir)
        try:
            self._backends: dict[str, OutputBackend] = {}
            self._backend = self._make_backend(backend, backend_options)
            self._records = JobRecords(
                None if self._state_dir is None else self._state_dir / DATABASE_NAME
            )
        except BaseException:
            self._release_claim()
            raise
        try:
            #: Who runs the jobs, found by name through the plugins like any other.
            self._executor = _make_executor(self._executor_name, executor_options)
            self._executor.open(ExecutorContext(
                self._records.pool_id(), owner, durable=self._state_dir is not None,
                env=self._env, cgroups=cgroups))
        except BaseException:
            self._records.close()
            self._release_claim()
            raise
        #: The executor, if its jobs are processes of this machine that it
        #: feeds into their stores itself (``local``): see `ProcessExecutor`.
        self._processes = (self._executor if isinstance(self._executor, ProcessExecutor)
                           else None)
        #: Jobs that hold something live: running ones, and finished ones
        #: whose output lives in this process (a non-durable backend) or
        #: whose pipes are still open.  The rest are only records.
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._closed = False
        self._records_gone = False
        #: Durable jobs that settled before `create` listed them.
        self._settled_early: set[str] = set()
        #: Ended jobs whose end could not be recorded yet (a full disk).
        self._unrecorded: set[Job] = set()
        self._boot = boot_id()
        #: Jobs recorded as running that the executor still runs: watched again below.
        reattached: list[Job] = []
        try:
            #: Ids of the jobs this pool found running from a dead previous owner (now lost).
            self.recovered: tuple[str, ...] = self._recover(reattached)
            self._finished, self._kept = self._records.finished_totals()
        except BaseException:
            self._executor.close()
            self._records.close()
            self._release_claim()
            raise
        #: Ids of the jobs an earlier pool left running on this pool's executor,
        #: taken over by this one (their output continues).
        self.reattached: tuple[str, ...] = tuple(job.id for job in reattached)
        _open_pools.add(self)
        for job in reattached:
            assert job.handle is not None
            self._executor.watch(job.handle, JobFeed(job, self._drained))
        self._apply_retention()

    def __enter__(self) -> JobPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._jobs)} live jobs"
        return f"<JobPool backend={self._backend_name!r} {state}>"

    @property
    def backend(self) -> str:
        """The name of the pool's default output backend."""
        return self._backend_name

    @property
    def state_dir(self) -> Path | None:
        """The folder the pool keeps its records in, or None."""
        return self._state_dir

    @property
    def executor(self) -> str:
        """The name of the executor that runs the pool's jobs."""
        return self._executor_name

    # -- jobs ---------------------------------------------------------------

    def create(
        self,
        command: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        replace_env: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        backend: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        network: bool = True,
    ) -> str:
        """Start ``command`` with ``args`` and return the new job's id.

        No shell is involved.  ``command`` is looked up in ``PATH`` (of the
        job's environment) unless it contains a ``/``.  OS-level failures
        (command not found, too many processes, ...) never raise: the job is
        created in `State.ERROR` with a message.  Bad argument types raise
        ``TypeError``; NUL bytes and other bad values raise ``ValueError``.
        Ids are never reused, not even after a delete or a restart on the
        same ``state_dir``.

        Args:
            env: Variables set for the job, over the pool's environment.
                Their values are never recorded.
            replace_env: Use ``env`` as the whole environment instead.
            cwd: The job's working directory (default: this process's).
            timeout: Seconds after which the job's whole tree gets
                SIGTERM, then SIGKILL ``kill_after`` seconds later;
                ``JobStatus.timed_out`` then says so.
            backend: The output backend for this job instead of the pool's.
            backend_options: Options for ``backend``.
            limits: What the job's whole tree may use (see `Limits`),
                enforced from before its first instruction.  A strict limit
                this machine cannot enforce ends the job in `State.ERROR`
                with a message naming what is missing.
            network: False: the job runs in a network namespace of its own
                with only loopback (needs root); `State.ERROR` where that is
                impossible.
        """
        command = check_str("command", command, nonempty=True)
        arguments = tuple(check_args(args))
        extra = {} if env is None else check_env(env)
        # Variables over the environment the executor's jobs start from, never
        # ours: the executor knows that one (`ExecutorContext.env`).
        job_env = extra if replace_env or not self._env else {**self._env, **extra}
        workdir = None if cwd is None else check_str("cwd", os.fspath(cwd), nonempty=True)
        if timeout is not None:
            timeout = check_seconds("timeout", timeout)
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be a Limits, not {type(limits).__name__}")
        if not isinstance(network, bool):
            raise TypeError(f"network must be True or False, not {type(network).__name__}")
        if backend is None and backend_options is None:
            backend_name, output = self._backend_name, self._backend
        else:
            backend_name = self._backend_name if backend is None else backend
            output = self._make_backend(check_str("backend", backend_name), backend_options)

        with self._lock:
            self._check_open()
            self._busy += 1
            unrecorded = bool(self._unrecorded)
        if unrecorded:
            self._flush()
        try:
            spec = JobSpec("", command, arguments, job_env, replace_env, workdir, timeout,
                           self._kill_after, limits, network)
            if self._processes is not None:
                job = self._start(self._processes, spec, backend_name, output)
            else:
                job = self._submit(self._executor, spec, backend_name, output)
            with self._lock:
                if not self._closed:
                    if job.id not in self._settled_early:
                        self._jobs[job.id] = job
                    self._settled_early.discard(job.id)
                    return job.id
            self._let_go([job])  # closed meanwhile: `close` did not see this one
            raise PoolClosed
        finally:
            self._done()

    def _start(
        self, executor: ProcessExecutor, spec: JobSpec, backend_name: str, output: OutputBackend
    ) -> Job:
        """Start a job's process, record it with its process, and let its executor feed it.

        Started first, then recorded in one transaction (its id is the row's),
        so a job costs two transactions: this and its end.
        """
        created_at = utcnow()
        started = executor.start(spec)
        process = started.process
        try:
            job_id = self._records.add(
                spec.command, spec.args, spec.cwd, spec.timeout, backend_name, created_at,
                process=None if process is None else (
                    process.pid, process.start, process.boot_id, process.cgroups),
                limits=spec.limits, network=spec.network, enforced_by=started.enforced_by,
                unenforced=started.unenforced, executor=self._executor_name,
            )
        except BaseException:
            if process is not None:  # never a process nobody recorded
                executor.discard(started)
            raise
        streams: dict[str, OutputStream] = {}
        job = Job(job_id, spec.command, spec.args, backend_name, created_at, streams,
                  timeout=spec.timeout, limits=spec.limits, network=spec.network,
                  enforced_by=started.enforced_by, unenforced=started.unenforced,
                  on_end=self._ended, on_drained=self._drained, on_finished=self._tell,
                  executor=self._executor_name)
        failure = started.error
        try:
            for name in STREAMS:
                streams[name] = OutputStream(name, output.open_store(job_id, name))
        except OSError as exc:
            failure = failure or f"cannot open output storage: {exc.strerror or exc}"
            streams.clear()
            streams.update((name, OutputStream(name, _GoneStore(0))) for name in STREAMS)
            if process is not None:
                executor.discard(started)
                started = Started(None)
        if started.process is None:
            for stream in streams.values():
                stream.mark_closed()
            job.finish(Outcome(State.ERROR, utcnow(), error=failure))
            self._drained(job)
            return job
        executor.run(job, started)
        return job

    def _submit(
        self, executor: Executor, spec: JobSpec, backend_name: str, output: OutputBackend
    ) -> Job:
        """Record a job, hand it to ``executor``, record its handle, and watch it.

        Three transactions (the id is needed before the executor names the
        job); nothing is left of the job if the executor cannot be reached.
        """
        created_at = utcnow()
        job_id = self._records.add(
            spec.command, spec.args, spec.cwd, spec.timeout, backend_name, created_at,
            limits=spec.limits, network=spec.network, executor=self._executor_name,
        )
        spec = attrs.evolve(spec, job_id=job_id)
        streams: dict[str, OutputStream] = {}
        job = Job(job_id, spec.command, spec.args, backend_name, created_at, streams,
                  timeout=spec.timeout, limits=spec.limits, network=spec.network,
                  on_end=self._ended, on_drained=self._drained, on_finished=self._tell,
                  executor=self._executor_name, pending=True)
        failure = None
        try:
            for name in STREAMS:
                streams[name] = OutputStream(name, output.open_store(job_id, name))
            submission = executor.submit(spec)
        except OSError as exc:
            failure = f"cannot open output storage: {exc.strerror or exc}"
        except CannotRun as exc:
            failure = str(exc)
        except BaseException:
            self._forget_unsubmitted(job, output)
            raise
        if failure is not None:
            streams.update((name, OutputStream(name, _GoneStore(0)))
                           for name in STREAMS if name not in streams)
            for stream in streams.values():
                stream.mark_closed()
            job.pending = False
            job.finish(Outcome(State.ERROR, utcnow(), error=failure))
            self._drained(job)
            return job
        job.handle = submission.handle
        job.pending = submission.state is State.PENDING
        job.enforced_by, job.unenforced = submission.enforced_by, submission.unenforced
        try:
            self._records.submitted(job_id, submission.handle, submission.enforced_by,
                                    submission.unenforced)
        except BaseException:
            try:  # never a job nobody recorded
                executor.delete(submission.handle)
            finally:
                self._forget_unsubmitted(job, output)
            raise
        executor.watch(submission.handle, JobFeed(job, self._drained))
        return job

    def _forget_unsubmitted(self, job: Job, output: OutputBackend) -> None:
        """Remove all trace of a job its executor did not take (its id stays used)."""
        for stream in job.streams.values():
            stream.release()
        try:
            if _durable(output):
                output.delete_output(job.id)
            self._records.remove([job.id])
        except (OSError, StorageFailed) as error:
            # Left recorded as running: a reopened pool finds it gone and marks it lost.
            log.warning("job %s: cannot remove the record of a job never run: %s", job.id, error)

    # -- the executor's calls -----------------------------------------------

    def _tell_finished(self, job: Job) -> None:
        """A job's end is recorded and its waiters woken: tell ``on_finished``."""
        assert self._on_finished is not None
        self._on_finished(job.status())


    def _ended(self, job: Job) -> None:
        """Record a job's end (the executor's thread, or `create` for a failed start).

        If the disk is full the job stays in memory, its true state served
        from there, and its end is recorded at the next chance (`_flush`).
        """
        if self._records_closed():
            return
        status = job.status()
        try:
            self._records.finished(status)
        except StorageFailed as error:
            log.warning("job %s: %s; will record its end later", job.id, error)
            with self._lock:
                self._unrecorded.add(job)
            return
        with self._lock:
            self._unrecorded.discard(job)
            self._finished += 1
            self._kept += _kept(status)
            job.recorded = status

    def _drained(self, job: Job) -> None:
        """The job has ended and both its pipes are closed: let go of what it holds.

        A job with durable output becomes a record and two files: its stores
        are closed (followers still read them by name) and the pool forgets
        the object.  Others keep their stores, which hold the output.
        """
        if self._records_closed():
            return
        if job.recorded is None:
            self._ended(job)  # its end could not be recorded: try again
        recorded = job.recorded
        if recorded is None:
            return  # still not: it stays in memory until it is (see `_flush`)
        status = job.status()
        if (recorded.stdout, recorded.stderr) != (status.stdout, status.stderr):
            try:
                self._records.output_settled(job.id, status.stdout, status.stderr,
                                             status.output_error)
            except StorageFailed as error:
                log.warning("job %s: %s", job.id, error)
                return  # the record's sizes lag: keep the object, whose are right
            with self._lock:
                self._kept += _kept(status) - _kept(recorded)
                job.recorded = status
        durable = _durable(self._backend_of(job.backend))
        if durable and (job.groups is None or job.groups.remove(wait=0)):
            for stream in job.streams.values():
                try:
                    stream.store.close()
                except Exception:
                    log.exception("job %s: cannot close its output store", job.id)
            with self._lock:
                if self._jobs.pop(job.id, None) is None:
                    self._settled_early.add(job.id)  # `create` has not listed it yet
        self._apply_retention()

    def _flush(self) -> None:
        """Record the ends that a full disk kept from being recorded, if it can now."""
        with self._lock:
            pending = [job for job in self._unrecorded if job.drained]
        for job in pending:
            if self._processes is not None:  # never at once with its own calls on the job
                self._processes.call_soon(functools.partial(self._drained, job))
            else:
                self._drained(job)

    def _records_closed(self) -> bool:
        return self._records_gone

    # -- reading ------------------------------------------------------------

    def list(
        self, *, limit: int | None = None, after: str | None = None, newest_first: bool = False
    ) -> list[str]:
        """The ids of the pool's jobs, oldest first (or newest first).

        ``limit`` caps how many; ``after`` is a cursor, the last id of the
        previous page: the page starts past it, in the order asked for.
        Each page costs the same however many jobs the pool holds.
        """
        if limit is not None:
            check_count("limit", limit)
        if after is not None:
            check_str("after", after)
        with self._lock:
            self._check_open()
        return self._records.ids(after=after, limit=limit, newest_first=newest_first)

    def status(self, job_id: str) -> JobStatus:
        """A snapshot of the job's state; `JobNotFound` for an unknown id."""
        job = self._live(job_id)
        if job is not None:
            return job.status()
        return self._recorded(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until the job's main process has ended; return its status.

        Everything the main process wrote is readable by then.  Raise
        ``TimeoutError`` if ``timeout`` seconds pass first.
        """
        if timeout is not None:
            timeout = min(check_seconds("timeout", timeout, allow_zero=True), TIMEOUT_MAX)
        job = self._live(job_id)
        if job is None:
            return self._recorded(job_id)
        ended = (job.ended.wait(timeout) if self._processes is None
                 else self._processes.await_end(job, timeout))
        if not ended:
            raise TimeoutError(f"job {job_id} still running after {timeout} s")
        return job.status()

    def output(self, job_id: str) -> JobOutput:
        """Everything the job's output backend holds, stdout and stderr."""
        stdout, stderr = (self._stream(job_id, name).read(0, None)[1] for name in STREAMS)
        return JobOutput(stdout=stdout, stderr=stderr)

    def read(self, job_id: str, stream: str, offset: int = 0, size: int | None = None) -> bytes:
        """Up to ``size`` bytes (all, if None) of ``stream`` from absolute ``offset``.

        Returns what is there now, without waiting; ``b""`` at or past the
        end.  Bytes the backend dropped (``ring``, a capped ``file``) are
        skipped: the result then starts at ``StreamInfo.dropped``.
        """
        check_count("offset", offset)
        if size is not None:
            check_count("size", size)
        return self._stream(job_id, stream).read(offset, size)[1]

    def follow(self, job_id: str, stream: str, offset: int = 0) -> Follower:
        """An iterator of ``stream``'s bytes from ``offset`` on, as they arrive.

        It ends when the stream is closed and drained, when the job is
        deleted, or when another thread calls its ``cancel()``.  Any number
        of followers may read one job at once.
        """
        check_count("offset", offset)
        return Follower(self._stream(job_id, stream), offset)

    # -- acting -------------------------------------------------------------

    def stop(self, job_id: str, signal: int | str = signals.SIGTERM) -> JobStatus:
        """Send ``signal`` (default SIGTERM) to the job's whole process group.

        The job stays in the pool; its state changes when its main process
        ends.  Signalling a finished job reaches what is left of its group
        (nothing, usually) and is not an error.  Returns the job's status.
        """
        number = parse_signal(signal)
        job = self._live(job_id)
        if job is not None:
            if self._processes is not None:
                self._processes.signal(job, number)
            elif job.running and job.handle is not None:
                self._executor.stop(job.handle, number)
            return job.status()
        status = self._recorded(job_id)
        self._signal_leftovers(status.id, number)
        return status

    def delete(self, job_id: str) -> None:
        """SIGKILL the job's process group, reap it, remove its output and record.

        The id is never handed out again.
        """
        check_str("job_id", job_id)
        with self._lock:
            self._check_open()
            job = self._jobs.pop(job_id, None)
            self._busy += 1
        try:
            if job is None:
                status = self._recorded(job_id)
                self._signal_leftovers(job_id, signals.SIGKILL)
                if status.handle is not None and status.executor == self._executor_name:
                    self._forget_remote(status.handle)
                counted = not status.running
            elif self._processes is not None:
                self._processes.kill(job)
                status = job.status()
                with self._lock:
                    self._unrecorded.discard(job)
                counted = job.recorded is not None
            else:
                try:
                    self._delete_remote(job)
                except BaseException:
                    with self._lock:  # still there: the caller may try again
                        self._jobs.setdefault(job_id, job)
                    raise
                status = job.status()
                counted = job.recorded is not None
            self._remove(job_id, status, counted=counted)
        finally:
            self._done()

    def clean(
        self, *, older_than: float | None = None, states: Sequence[State | str] | None = None
    ) -> CleanResult:
        """Delete finished jobs: all, or those ended ``older_than`` seconds ago or more,
        or in one of ``states``.  Running jobs are never touched.
        """
        if older_than is not None:
            older_than = check_seconds("older_than", older_than, allow_zero=True)
        wanted = None
        if states is not None:
            if isinstance(states, (str, bytes)) or not isinstance(states, Sequence):
                raise TypeError("states must be a list of states")
            wanted = [State(s).value for s in states]
            if State.RUNNING.value in wanted:
                raise ValueError("clean deletes finished jobs only, not running ones")
        with self._lock:
            self._check_open()
        before = None if older_than is None else time.time() - older_than
        victims = list(self._records.finished_jobs(ended_before=before, states=wanted))
        return self._prune(victims, "clean")

    def close(self) -> None:
        """Kill and reap every running job; later calls raise `PoolClosed`.

        A pool with a ``state_dir`` records those jobs as killed by the close
        (`State.KILLED`, ``error`` says so) and keeps every record and all
        durable output for the next pool on that folder.  Without one, all
        output is freed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # A create or delete in flight still needs the supervisor.
            while self._busy:
                self._idle.wait()
            jobs = list(self._jobs.values())
            self._jobs.clear()
        self._let_go(jobs, closing=True)
        self._records_gone = True
        self._records.close()
        _open_pools.discard(self)
        self._executor.close()
        self._release_claim()

    # -- helpers ------------------------------------------------------------

    def _let_go(self, jobs: Sequence[Job], *, closing: bool = False) -> None:
        """Let go of live jobs: the pool is closing (``closing``), or was closed
        while `create` made one of them.

        Processes of this machine are killed (``closing``: recorded as killed
        by the close); jobs elsewhere see `_let_go_remote`.
        """
        executor = self._processes
        if executor is None:
            self._let_go_remote(jobs)
            return
        if closing:
            for job in jobs:
                if job.running:
                    job.closing = True
        executor.kill_all(jobs)

    def _delete_remote(self, job: Job) -> None:
        """Delete a job another executor runs: on the cluster, then here.

        Raises (`ExecutorUnavailable`) with nothing changed if the cluster
        cannot be reached while the job may still run there.
        """
        if job.handle is None:  # it never ran there (refused, say)
            pass
        elif job.running:
            self._executor.delete(job.handle)
        else:
            self._forget_remote(job.handle)
        with job.lock:
            job.forgotten = True  # its feed takes nothing more
            if job.outcome is None:
                job.pending = False
                job.finish(Outcome(State.KILLED, utcnow(), signal=signals.SIGKILL,
                                   error=_DELETED))
        for stream in job.streams.values():
            stream.release()

    def _forget_remote(self, handle: str) -> None:
        """Forget a finished job on its cluster; a cluster out of reach keeps it."""
        try:
            self._executor.delete(handle)
        except ExecutorUnavailable as error:
            log.warning("job %s: not deleted on its cluster: %s", handle, error)

    def _let_go_remote(self, jobs: Sequence[Job]) -> None:
        """`close` for jobs another executor runs.

        A durable pool lets them run on (the next pool re-attaches them);
        one without a ``state_dir`` could never find them again, so it
        stops them and records them killed by the close.
        """
        executor = self._executor
        for job in jobs:
            with job.lock:
                job.forgotten = True
            if job.handle is None:  # it never ran there (refused, say): nothing to let go
                for stream in job.streams.values():
                    stream.release()
                continue
            if job.running and self._state_dir is None:
                try:
                    executor.stop(job.handle, signals.SIGKILL)
                except ExecutorUnavailable as error:
                    log.warning("job %s: cannot stop it on its cluster: %s", job.id, error)
            executor.detach(job.handle)
            if job.running and self._state_dir is None:
                with job.lock:
                    job.pending = False
                    job.finish(Outcome(State.KILLED, utcnow(), error=CLOSED_BY_POOL))
            for stream in job.streams.values():
                stream.release()

    def _remove(self, job_id: str, status: JobStatus, *, counted: bool) -> None:
        """Remove a killed job's output, then its record (``counted``: in the totals)."""
        backend = self._backend_of(status.backend)
        if _durable(backend):
            backend.delete_output(job_id)
        self._records.remove([job_id])
        if counted:
            with self._lock:
                self._finished -= 1
                self._kept -= _kept(status)

    def _signal_leftovers(self, job_id: str, number: int) -> None:
        """Signal what is left of a finished job's group (never a reused pid)."""
        leftover = self._records.incarnation(job_id)
        if (
            leftover is not None
            and leftover.pid
            and leftover.start is not None
            and leftover.boot_id == self._boot
        ):
            signal_group_since(leftover.pid, leftover.start[0], number)

    def _prune(self, victims: Sequence[tuple[str, int]], reason: str) -> CleanResult:
        jobs = freed = 0
        for job_id, kept in victims:
            try:
                self.delete(job_id)
            except (JobNotFound, PoolClosed):
                continue
            jobs += 1
            freed += kept
            if reason != "clean":
                log.info("pruned job %s (%s)", job_id, reason)
        return CleanResult(jobs=jobs, bytes=freed)

    def _apply_retention(self) -> None:
        """Delete the oldest finished jobs past the retention rules.

        Each query is bounded (an index range, or a batch of the oldest), so
        a pool at its limits pays for what it deletes, not for what it keeps.
        """
        rules = self._retention
        if self._closed:
            return
        if rules.max_age is not None:
            before = time.time() - rules.max_age
            self._prune(list(self._records.finished_jobs(ended_before=before, limit=1000)),
                        f"older than {rules.max_age:g} s")
        while True:
            with self._lock:
                excess = 0 if rules.max_jobs is None else self._finished - rules.max_jobs
                over_bytes = rules.max_bytes is not None and self._kept > rules.max_bytes
            if excess <= 0 and not over_bytes:
                return
            batch = list(self._records.finished_jobs(limit=max(excess, 16)))
            if not batch:
                return
            for job_id, kept in batch:
                with self._lock:
                    over_count = rules.max_jobs is not None and self._finished > rules.max_jobs
                    over_bytes = rules.max_bytes is not None and self._kept > rules.max_bytes
                if not (over_count or over_bytes):
                    return
                reason = "over the finished-job limit" if over_count else "over the disk limit"
                if not self._prune([(job_id, kept)], reason).jobs:
                    return  # closed meanwhile, or deleted by someone else: look again later

    def _recover(self, reattached: MutableSequence[Job]) -> tuple[str, ...]:
        """Kill and record as lost what a dead previous owner left running.

        Processes of this machine (recorded with a pid, whichever executor
        ran them) are killed, never a process that reused the pid.  Jobs
        this pool's executor runs elsewhere are not lost: they are appended
        to ``reattached``, to be watched again.  Jobs of another executor
        are lost to this pool, but left running where they run.
        """
        lost = []
        ours = self._executor_name
        for leftover in self._records.incarnations():
            here = leftover.pid is not None or (
                leftover.executor == ours and self._processes is not None)
            if not here:
                if leftover.executor == ours:
                    if leftover.handle is None:  # the pool ended before it recorded one
                        leftover = attrs.evolve(leftover,
                                                handle=self._executor.find(leftover.id))
                    if leftover.handle is not None:
                        reattached.append(self._reattach(leftover))
                        continue
                self._lose_remote(leftover)
                lost.append(leftover.id)
                continue
            lost.append(leftover.id)
            kill_leftover(leftover.pid, leftover.start, leftover.boot_id, leftover.cgroups)
            stdout, stderr = StreamInfo(closed=True), StreamInfo(closed=True)
            output_error = None
            try:
                backend = self._backend_of(leftover.backend)
            except (JobkitError, TypeError, ValueError):
                backend = None
            if _durable(backend):
                stdout, stderr = (
                    _info(backend.reopen_store(leftover.id, name)) for name in STREAMS
                )
            else:
                output_error = _MEMORY_LOST
            recorded = self._records.status(leftover.id)
            assert recorded is not None
            self._records.finished(attrs.evolve(
                recorded, state=State.LOST, error=LOST_MESSAGE, ended_at=utcnow(),
                output_error=output_error, stdout=stdout, stderr=stderr,
            ))
            log.warning("job %s was lost: its previous pool ended while it ran", leftover.id)
        return tuple(lost)

    def _reattach(self, leftover: Incarnation) -> Job:
        """The live job of one recorded as running on this pool's executor."""
        status = self._records.status(leftover.id)
        assert status is not None
        backend = self._backend_of(status.backend)
        streams: dict[str, OutputStream] = {}
        try:
            for name in STREAMS:
                # Where the backend cannot append to what it kept, the
                # executor hands the stream over again from byte 0.
                store = (backend.resume_store(leftover.id, name)
                         if isinstance(backend, ResumableBackend)
                         else backend.open_store(leftover.id, name))
                streams[name] = OutputStream(name, store)
        except OSError as error:
            raise StorageFailed(f"cannot reopen the output of job {leftover.id}: "
                                f"{error.strerror or error}") from None
        assert leftover.handle is not None
        if status.handle is None:  # found again by its executor: recorded now
            self._records.submitted(leftover.id, leftover.handle, status.enforced_by,
                                    status.unenforced)
        job = Job(leftover.id, status.command, status.args, status.backend, status.created_at,
                  streams, limits=status.limits, network=status.network,
                  enforced_by=status.enforced_by, unenforced=status.unenforced,
                  on_end=self._ended, on_drained=self._drained, on_finished=self._tell,
                  executor=leftover.executor, handle=leftover.handle)
        self._jobs[job.id] = job
        log.info("job %s: re-attached on executor %s (%s)", job.id, job.executor, job.handle)
        return job

    def _lose_remote(self, leftover: Incarnation) -> None:
        """Record as lost a job recorded as running elsewhere that this pool cannot
        follow (another executor's, or one its executor cannot find); it is left
        alone wherever it runs."""
        recorded = self._records.status(leftover.id)
        assert recorded is not None
        if leftover.executor != self._executor_name:
            why = (f"recorded as running on the executor {leftover.executor!r}, which this"
                   f" pool does not use: left as it was there ({leftover.handle})")
        else:
            why = (f"its pool ended before the executor {leftover.executor!r} named it, and"
                   f" the executor cannot find it: if it runs, it was left as it was")
        self._records.finished(attrs.evolve(
            recorded, state=State.LOST, ended_at=utcnow(), error=why,
            stdout=attrs.evolve(recorded.stdout, closed=True),
            stderr=attrs.evolve(recorded.stderr, closed=True),
        ))
        log.warning("job %s was lost: %s", leftover.id, why)

    def _done(self) -> None:
        """One `create` or `delete` less in flight (`close` waits for none)."""
        with self._lock:
            self._busy -= 1
            if not self._busy:
                self._idle.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed

    def _live(self, job_id: str) -> Job | None:
        check_str("job_id", job_id)
        job = self._jobs.get(job_id)  # a dict read is atomic; no lock needed
        if job is None:
            self._check_open()
        return job

    def _recorded(self, job_id: str) -> JobStatus:
        status = self._records.status(job_id)
        if status is None:
            self._check_open()
            raise JobNotFound(job_id)
        return status

    def _stream(self, job_id: str, stream: str) -> OutputStream:
        if stream not in STREAMS:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        job = self._live(job_id)
        if job is not None:
            return job.streams[stream]
        status = self._recorded(job_id)
        backend = self._backend_of(status.backend)
        if _durable(backend):
            store = backend.reopen_store(job_id, stream)
        else:  # its bytes lived in a process that has ended
            info = status.stdout if stream == "stdout" else status.stderr
            store = _GoneStore(info.written)
        out = OutputStream(stream, store)
        out.closed = True
        return out

    def _backend_of(self, name: str) -> OutputBackend:
        """The pool's backend of that name, with default options, for reading back."""
        if name == self._backend_name:
            return self._backend
        backend = self._backends.get(name)
        if backend is None:
            backend = self._backends[name] = self._make_backend(name, None)
        return backend

    def _make_backend(self, name: str, options: Mapping[str, Any] | None) -> OutputBackend:
        backend = _make_backend(name, options)
        if _durable(backend):
            backend.attach(self._state_dir)
        return backend

    def _release_claim(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


class _GoneStore(OutputStore):
    """The output of a non-durable job whose pool has ended: all of it dropped."""

    def __init__(self, written: int) -> None:
        self._written = written

    def append(self, data: bytes) -> None:
        raise AssertionError("a gone store takes no bytes")

    def read(self, offset: int, size: int) -> bytes:
        return b""

    @property
    def written(self) -> int:
        return self._written

    @property
    def dropped(self) -> int:
        return self._written


_durable_types: dict[type, bool] = {}


def _durable(backend: object) -> TypeGuard[DurableBackend]:
    """Is ``backend`` a `DurableBackend`?  (Cached per class: a runtime check of a
    Protocol walks its members each time, and this sits on every job's path.)"""
    kind = type(backend)
    known = _durable_types.get(kind)
    if known is None:
        known = _durable_types[kind] = isinstance(backend, DurableBackend)
    return known


def _info(store: OutputStore) -> StreamInfo:
    return StreamInfo(written=store.written, dropped=store.dropped, closed=True)


def _kept(status: JobStatus) -> int:
    return sum(info.written - info.dropped for info in (status.stdout, status.stderr))


def _claim(directory: Path) -> int:
    """Make the state folder (0700) and take its lock, or raise `StateDirInUse`."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StorageFailed(f"cannot use the state folder {directory}: "
                            f"{error.strerror or error}") from None
    try:
        # flock, not fcntl locks: those are per process, so a second pool in
        # this same process would not be kept out.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirInUse(directory) from None
    return fd


def _make_backend(name: str, options: Mapping[str, Any] | None) -> OutputBackend:
    factory = plugins.backend_factory(check_str("backend", name))
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"backend_options must be a mapping, not {type(options).__name__}")
    try:
        backend = factory(**dict(options or {}))
    except TypeError as exc:
        raise TypeError(f"bad options for backend {name!r}: {exc}") from None
    if not isinstance(backend, OutputBackend):
        raise TypeError(f"backend {name!r} did not return an OutputBackend")
    return backend


def check_executor(name: str, options: Mapping[str, Any] | None) -> None:
    """Make the executor ``name`` once and let it go: raises what a pool would
    (`ExecutorNotFound`, ``TypeError`` for bad options, `ExecutorUnavailable`)."""
    _make_executor(check_str("executor", name, nonempty=True), options).close()


def _make_executor(name: str, options: Mapping[str, Any] | None) -> Executor:
    """The executor registered as ``name``, made with ``options``."""
    factory = plugins.executor_factory(name)
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"executor_options must be a mapping, not {type(options).__name__}")
    try:
        executor = factory(**dict(options or {}))
    except TypeError as exc:
        raise TypeError(f"bad options for executor {name!r}: {exc}") from None
    if not isinstance(executor, Executor):
        raise TypeError(f"executor {name!r} did not return an Executor")
    return executor
