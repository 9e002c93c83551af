"""`JobPool`: create, watch, stop and delete jobs."""

from __future__ import annotations

import atexit
import itertools
import os
import signal as signals
import threading
from collections.abc import Mapping, Sequence
from threading import TIMEOUT_MAX
from typing import Any

from jobkit.core import plugins, supervisor
from jobkit.core.backend import OutputBackend
from jobkit.core.cgroups import CgroupTree
from jobkit.core.cgroups import detect as cgroup_tree
from jobkit.core.checks import check_args, check_count, check_env, check_seconds, check_str
from jobkit.core.errors import JobkitError, JobNotFound, PoolClosed
from jobkit.core.job import Job, Outcome, utcnow
from jobkit.core.ledger import Ledger
from jobkit.core.models import STREAMS, JobOutput, JobStatus, State
from jobkit.core.signals import parse_signal
from jobkit.core.spawn import SpawnFailed, raise_fd_limit, spawn
from jobkit.core.stream import Follower, OutputStream

__all__ = ["DEFAULT_BACKEND", "DEFAULT_KILL_AFTER", "JobPool"]

DEFAULT_BACKEND = "memory"
#: Seconds between SIGTERM and SIGKILL when a job's timeout passes.
DEFAULT_KILL_AFTER = 5.0
#: How long `delete` and `close` wait for a SIGKILLed process to be reaped.
_REAP_WAIT = 10.0

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
            says otherwise (``memory``, ``tempfile``, ``ring`` or a plugin's).
        backend_options: Keyword options for that backend,
            e.g. ``{"capacity": 65536}`` for ``ring``.
        env: The environment jobs start from; ``None`` means this process's
            environment at the time of each ``create``.
        kill_after: Seconds between SIGTERM and SIGKILL when a job's timeout passes.
        ledger: Where to record running process groups, so that a later run
            can kill what this one leaves if it is killed itself (see `Ledger`).
        cgroups: Put each job in its own cgroup v2, so that `stop` and
            `delete` also reach processes that left the job's session
            (``setsid``).  False (default): process groups only; None: where
            this process may create cgroups; True: required (``JobkitError``
            if impossible).  It costs about half a millisecond per job.

    Use it as a context manager, or call `close`; either kills and reaps every
    job still running.  So does the interpreter's exit.
    """

    def __init__(
        self,
        backend: str = DEFAULT_BACKEND,
        backend_options: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        kill_after: float = DEFAULT_KILL_AFTER,
        ledger: Ledger | None = None,
        cgroups: bool | None = False,
    ) -> None:
        self._backend_name = check_str("backend", backend)
        self._backend = _make_backend(backend, backend_options)
        self._env = None if env is None else check_env(env)
        self._kill_after = check_seconds("kill_after", kill_after, allow_zero=True)
        self._jobs: dict[str, Job | None] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._closed = False
        self._ledger = ledger
        self._cgroups = None if cgroups is False else cgroup_tree()
        if cgroups and self._cgroups is None:
            raise JobkitError("cgroups=True, but this process cannot create cgroup v2 groups")
        raise_fd_limit()
        self._supervisor = supervisor.acquire()
        _open_pools.add(self)

    def __enter__(self) -> JobPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._jobs)} jobs"
        return f"<JobPool backend={self._backend_name!r} {state}>"

    @property
    def backend(self) -> str:
        """The name of the pool's default output backend."""
        return self._backend_name

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
    ) -> str:
        """Start ``command`` with ``args`` and return the new job's id.

        No shell is involved.  ``command`` is looked up in ``PATH`` (of the
        job's environment) unless it contains a ``/``.  OS-level failures
        (command not found, too many processes, ...) never raise: the job is
        created in `State.ERROR` with a message.  Bad argument types raise
        ``TypeError``; NUL bytes and other bad values raise ``ValueError``.

        Args:
            env: Variables set for the job, over the pool's environment.
            replace_env: Use ``env`` as the whole environment instead.
            cwd: The job's working directory (default: this process's).
            timeout: Seconds after which the job's process group gets
                SIGTERM, then SIGKILL ``kill_after`` seconds later;
                ``JobStatus.timed_out`` then says so.
            backend: The output backend for this job instead of the pool's.
            backend_options: Options for ``backend``.
        """
        command = check_str("command", command, nonempty=True)
        arguments = tuple(check_args(args))
        job_env = self._job_env(env, replace_env)
        workdir = None if cwd is None else check_str("cwd", os.fspath(cwd), nonempty=True)
        if timeout is not None:
            timeout = check_seconds("timeout", timeout)
        if backend is None and backend_options is None:
            backend_name, output = self._backend_name, self._backend
        else:
            backend_name = self._backend_name if backend is None else backend
            output = _make_backend(check_str("backend", backend_name), backend_options)

        with self._lock:
            self._check_open()
            job_id = str(next(self._ids))
            self._jobs[job_id] = None  # hold the place: list() is in creation order
            self._busy += 1
        try:
            try:
                job = self._start(
                    job_id, command, arguments, job_env, workdir, timeout, backend_name, output
                )
            except BaseException:
                with self._lock:
                    self._jobs.pop(job_id, None)
                raise
            with self._lock:
                if not self._closed:
                    self._jobs[job_id] = job
                    return job_id
                self._jobs.pop(job_id, None)
            self._destroy(job)  # closed meanwhile: `close` did not see this one
            raise PoolClosed
        finally:
            self._done()

    def _start(
        self,
        job_id: str,
        command: str,
        args: tuple[str, ...],
        env: dict[str, str] | None,
        cwd: str | None,
        timeout: float | None,
        backend_name: str,
        output: OutputBackend,
    ) -> Job:
        created_at = utcnow()
        streams: dict[str, OutputStream] = {}
        job = Job(job_id, command, args, backend_name, created_at, streams, timeout=timeout)
        try:
            for name in STREAMS:
                streams[name] = OutputStream(name, output.open_store(job_id, name))
            spawned = spawn(command, list(args), env, cwd)
        except (SpawnFailed, OSError) as exc:
            message = (
                str(exc)
                if isinstance(exc, SpawnFailed)
                else (f"cannot open output storage: {exc.strerror or exc}")
            )
            for stream in streams.values():
                stream.mark_closed()
            job.finish(Outcome(State.ERROR, utcnow(), error=message))
            return job
        job.process = spawned.process
        job.pidfd = spawned.pidfd
        job.fds.update(stdout=spawned.stdout, stderr=spawned.stderr)
        try:
            if self._cgroups is not None:
                job.cgroup = self._cgroups.create(spawned.process.pid)
            if self._ledger is not None:
                self._ledger.add(spawned.process.pid, job.cgroup)
            self._supervisor.watch(job, self._kill_after)
        except Exception as exc:  # the ledger's disk, epoll's memory: still a job
            self._abandon(job, f"cannot watch the process: {exc}")
        return job

    @staticmethod
    def _abandon(job: Job, message: str) -> None:
        """Kill and reap a job's process that cannot be watched; it ends in error."""
        assert job.process is not None
        job.signal_group(signals.SIGKILL)
        job.process.wait()
        for fd in (job.pidfd, *job.fds.values()):
            os.close(fd)
        job.pidfd = -1
        job.fds.clear()
        if job.cgroup is not None:
            CgroupTree.remove(job.cgroup)
        for stream in job.streams.values():
            stream.mark_closed()
        job.finish(Outcome(State.ERROR, utcnow(), error=message))

    def list(self) -> list[str]:
        """The ids of every job in the pool, oldest first."""
        with self._lock:
            return [job_id for job_id, job in self._jobs.items() if job is not None]

    def status(self, job_id: str) -> JobStatus:
        """A snapshot of the job's state; `JobNotFound` for an unknown id."""
        return self._get(job_id).status()

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until the job's main process has ended; return its status.

        Everything the main process wrote is readable by then.  Raise
        ``TimeoutError`` if ``timeout`` seconds pass first.
        """
        if timeout is not None:
            timeout = min(check_seconds("timeout", timeout, allow_zero=True), TIMEOUT_MAX)
        job = self._get(job_id)
        if not job.ended.wait(timeout):
            raise TimeoutError(f"job {job_id} still running after {timeout} s")
        return job.status()

    def output(self, job_id: str) -> JobOutput:
        """Everything the job's output backend holds, stdout and stderr."""
        job = self._get(job_id)
        stdout, stderr = (job.streams[name].read(0, None)[1] for name in STREAMS)
        return JobOutput(stdout=stdout, stderr=stderr)

    def read(self, job_id: str, stream: str, offset: int = 0, size: int | None = None) -> bytes:
        """Up to ``size`` bytes (all, if None) of ``stream`` from absolute ``offset``.

        Returns what is there now, without waiting; ``b""`` at or past the
        end.  Bytes the backend dropped (``ring``) are skipped: the result
        then starts at ``StreamInfo.dropped``.
        """
        out = self._stream(job_id, stream)
        check_count("offset", offset)
        if size is not None:
            check_count("size", size)
        return out.read(offset, size)[1]

    def follow(self, job_id: str, stream: str, offset: int = 0) -> Follower:
        """An iterator of ``stream``'s bytes from ``offset`` on, as they arrive.

        It ends when the stream is closed and drained, when the job is
        deleted, or when another thread calls its ``cancel()``.  Any number
        of followers may read one job at once.
        """
        out = self._stream(job_id, stream)
        check_count("offset", offset)
        return Follower(out, offset)

    def stop(self, job_id: str, signal: int | str = signals.SIGTERM) -> JobStatus:
        """Send ``signal`` (default SIGTERM) to the job's whole process group.

        The job stays in the pool; its state changes when its main process
        ends.  Signalling a finished job reaches what is left of its group
        (nothing, usually) and is not an error.  Returns the job's status.
        """
        number = parse_signal(signal)
        job = self._get(job_id)
        job.signal_group(number)
        return job.status()

    def delete(self, job_id: str) -> None:
        """SIGKILL the job's process group, reap it, free its output, forget it."""
        check_str("job_id", job_id)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                self._check_open()
                raise JobNotFound(job_id)
            del self._jobs[job_id]
            self._busy += 1
        try:
            self._destroy(job)
        finally:
            self._done()

    def _done(self) -> None:
        """One `create` or `delete` less in flight (`close` waits for none)."""
        with self._lock:
            self._busy -= 1
            if not self._busy:
                self._idle.notify_all()

    def close(self) -> None:
        """Kill and reap every job, free all output; later calls raise `PoolClosed`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # A create or delete in flight still needs the supervisor.
            while self._busy:
                self._idle.wait()
            jobs = [job for job in self._jobs.values() if job is not None]
            self._jobs.clear()
        for job in jobs:  # signal all first, so they die in parallel
            job.signal_group(signals.SIGKILL)
        for job in jobs:
            self._destroy(job)
        _open_pools.discard(self)
        supervisor.release()
        if self._cgroups is not None:
            self._cgroups.close()

    # -- helpers ------------------------------------------------------------

    def _destroy(self, job: Job) -> None:
        job.signal_group(signals.SIGKILL)  # safe: the leader, even dead, holds the pgid
        job.ended.wait(_REAP_WAIT)
        reaped = self._supervisor.forget(job)
        if job.cgroup is not None:
            # Wait for every member, escaped or not: after delete, nothing runs.
            reaped = CgroupTree.remove(job.cgroup) and reaped
        if self._ledger is not None and job.pid is not None and reaped:
            self._ledger.remove(job.pid)

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed

    def _get(self, job_id: str) -> Job:
        check_str("job_id", job_id)
        job = self._jobs.get(job_id)  # a dict read is atomic; no lock needed
        if job is None:
            self._check_open()
            raise JobNotFound(job_id)
        return job

    def _stream(self, job_id: str, stream: str) -> OutputStream:
        job = self._get(job_id)
        if stream not in STREAMS:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        return job.streams[stream]

    def _job_env(self, env: Mapping[str, str] | None, replace: bool) -> dict[str, str] | None:
        """The job's whole environment; None means exactly this process's (no copy)."""
        extra = {} if env is None else check_env(env)
        if replace:
            return extra
        if self._env is None and not extra:
            return None
        base = dict(os.environ) if self._env is None else dict(self._env)
        base.update(extra)
        return base


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
