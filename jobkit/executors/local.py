"""``local``: jobs run as processes of this machine, supervised in this process.

`LocalExecutor` is a `jobkit.core.executor.ProcessExecutor`: each job is
spawned in a session of its own (`jobkit.core.spawn`), inside its cgroups
and network namespace where asked, before its first instruction; the
process's one supervisor thread (`jobkit.core.supervisor`) moves its pipes
straight into the job's output stores, reaps it, and keeps its timeout.
The pool records the job with its `Process` (pid, start time, boot id,
cgroups), from which a later pool on the same ``state_dir`` kills what a
dead one left (`jobkit.core.leftovers`).

It registers through the ``jobkit_register_executors`` hook like any other
executor, and the pool finds it by name like any other.
"""

from __future__ import annotations

import os
import signal as signals
from collections.abc import Callable, Sequence

import attrs

from jobkit.core import supervisor
from jobkit.core.cgroups import JobCgroups, Unenforceable
from jobkit.core.cgroups import detect as cgroup_tree
from jobkit.core.errors import JobkitError
from jobkit.core.executor import ExecutorContext, JobSpec, Process, ProcessExecutor, Started
from jobkit.core.hookspecs import RegisterExecutor, hookimpl
from jobkit.core.job import Job, Outcome, utcnow
from jobkit.core.leftovers import boot_id, boot_ticks, newest_members
from jobkit.core.limits import Limits
from jobkit.core.models import State
from jobkit.core.spawn import Spawned, SpawnFailed, raise_fd_limit, spawn

__all__ = ["LocalExecutor"]

#: How long `LocalExecutor.kill` waits for a SIGKILLed process to be reaped.
_REAP_WAIT = 10.0


@attrs.define
class _Running:
    """What `LocalExecutor.start` hands to `run` or `discard` (`Started.token`)."""

    spawned: Spawned
    groups: JobCgroups | None
    start_ticks: int
    kill_after: float


class LocalExecutor(ProcessExecutor):
    """The built-in ``local`` executor: jobs are processes of this machine.

    It takes no options.  Everything on docs/library.md and docs/limits.md
    about a job's process (sessions, pipes, pidfds, cgroups, network
    namespaces, timeouts, the one supervisor thread) is this executor's.
    """

    def __init__(self) -> None:
        self._supervisor: supervisor.Supervisor | None = None
        self._env: dict[str, str] | None = None
        #: Every job gets cgroups (to hold its tree), not only jobs with limits.
        self._contain = False
        #: Set once a job used cgroups: `close` then tidies our folders.
        self._used_cgroups = False
        self._boot = ""

    def open(self, context: ExecutorContext) -> None:
        self._contain = context.cgroups is not False and cgroup_tree() is not None
        if context.cgroups and not self._contain:
            raise JobkitError("cgroups=True, but this process cannot create cgroups")
        self._env = None if context.env is None else dict(context.env)
        self._boot = boot_id()
        raise_fd_limit()
        self._supervisor = supervisor.acquire()  # last: nothing above may leave it held

    def close(self) -> None:
        if self._supervisor is None:
            return  # never opened (`jobkit.core.pool.check_executor`)
        self._supervisor = None
        supervisor.release()
        tree = cgroup_tree() if self._used_cgroups else None
        if tree is not None:
            tree.close()

    # -- one job ------------------------------------------------------------

    def start(self, spec: JobSpec) -> Started:
        groups = None
        enforced_by: str | None = None
        unenforced: tuple[str, ...] = ()
        try:
            groups, enforced_by, unenforced = self._make_groups(spec.limits, spec.cwd)
            started_after = boot_ticks()
            spawned = spawn(spec.command, list(spec.args), self._job_env(spec), spec.cwd,
                            groups=groups, network=spec.network)
            window = (int(started_after), int(boot_ticks()) + 1)
        except (SpawnFailed, Unenforceable) as exc:
            failure = str(exc)
        except OSError as exc:
            failure = f"cannot make the job's cgroups: {exc.strerror or exc}"
        else:
            process = Process(spawned.process.pid, window, self._boot,
                              () if groups is None else tuple(groups.paths()))
            return Started(process, None, enforced_by, unenforced,
                           _Running(spawned, groups, window[0], spec.kill_after))
        if groups is not None:
            groups.remove(wait=0)
        return Started(None, failure, enforced_by, unenforced)

    def run(self, job: Job, started: Started) -> None:
        running = started.token
        assert isinstance(running, _Running) and self._supervisor is not None
        spawned = running.spawned
        job.process = spawned.process
        job.pidfd = spawned.pidfd
        job.fds.update(stdout=spawned.stdout, stderr=spawned.stderr)
        job.start_ticks = running.start_ticks
        job.groups, job.contained = running.groups, running.groups is not None
        try:
            self._supervisor.watch(job, running.kill_after)
        except Exception as exc:  # epoll's memory, say: still a job
            self._abandon(job, f"cannot watch the process: {exc}")

    def discard(self, started: Started) -> None:
        running = started.token
        assert isinstance(running, _Running)
        spawned, groups = running.spawned, running.groups
        os.killpg(spawned.process.pid, signals.SIGKILL)
        if groups is not None:
            groups.kill(_REAP_WAIT)
        spawned.process.wait()
        for fd in (spawned.pidfd, spawned.stdout, spawned.stderr):
            os.close(fd)
        if groups is not None:
            groups.remove()

    def signal(self, job: Job, signal: int) -> None:
        assert self._supervisor is not None
        job.signal_group(signal)
        self._supervisor.recheck(job)

    def kill_all(self, jobs: Sequence[Job]) -> None:
        # One look at /proc for the leftovers of every finished job, not one
        # per job and signal: a pool with 15,000 finished jobs took minutes
        # to close.
        assert self._supervisor is not None
        newest = newest_members()
        for job in jobs:
            job.signal_group(signals.SIGKILL, newest)
            self._supervisor.recheck(job)
        for job in jobs:
            self._kill(job, signalled=True)

    def kill(self, job: Job) -> None:
        self._kill(job, signalled=False)

    def _kill(self, job: Job, signalled: bool) -> None:
        assert self._supervisor is not None
        if not signalled or not job.leader_gone:
            job.signal_group(signals.SIGKILL)
        groups = job.groups  # None once the supervisor released them
        if groups is not None:
            # Every member, escaped or not, and wait until they are gone:
            # after delete, nothing of the job runs.
            groups.kill(_REAP_WAIT)
            self._supervisor.recheck(job)
        job.ended.wait(_REAP_WAIT)
        self._supervisor.forget(job)
        groups = job.groups
        if groups is not None:  # it did not end (stuck in the kernel): remove what we can
            groups.remove()

    def await_end(self, job: Job, timeout: float | None) -> bool:
        watcher = self._supervisor  # None once the pool closed meanwhile: it ended the job
        if watcher is None:
            return job.ended.wait(timeout)
        return watcher.await_end(job, timeout)

    def call_soon(self, fn: Callable[[], None]) -> None:
        assert self._supervisor is not None
        self._supervisor.call(fn)

    # -- helpers ------------------------------------------------------------

    def _job_env(self, spec: JobSpec) -> dict[str, str] | None:
        """The job's whole environment; None means exactly this process's (no copy)."""
        if spec.replace_env or self._env is not None:
            return dict(spec.env)  # the pool's env (if any) is in it already
        if not spec.env:
            return None
        return {**os.environ, **spec.env}

    def _make_groups(
        self, limits: Limits | None, cwd: str | None
    ) -> tuple[JobCgroups | None, str | None, tuple[str, ...]]:
        """A job's cgroups with its limits applied (None if it needs none), what
        enforces the limits and which are not enforced.

        Raise `Unenforceable` for a strict limit nothing here can enforce,
        ``OSError`` if the groups cannot be made.
        """
        asked = () if limits is None else limits.asked()
        if not asked and not self._contain:
            return None, None, ()
        tree = cgroup_tree()
        if tree is None:
            assert limits is not None
            if limits.strict:
                raise Unenforceable(
                    f"cannot enforce the limits ({limits.describe()}): this process may"
                    " create no cgroup, v2 or v1 (see docs/limits.md)"
                )
            return None, "none", asked
        self._used_cgroups = True
        groups = tree.make(limits, cwd, contain=self._contain)
        if groups is None:
            return None, "none" if asked else None, asked
        return groups, groups.enforced_by, groups.unenforced

    def _abandon(self, job: Job, message: str) -> None:
        """Kill and reap a job's process that cannot be watched; it ends in error."""
        assert job.process is not None
        job.signal_group(signals.SIGKILL)
        job.process.wait()
        with job.lock:
            job.leader_gone = True
            for fd in (job.pidfd, *job.fds.values()):
                os.close(fd)
            job.pidfd = -1
            job.fds.clear()
        groups, job.groups = job.groups, None
        if groups is not None:
            groups.kill(_REAP_WAIT)
            groups.remove()
        for stream in job.streams.values():
            stream.mark_closed()
        job.finish(Outcome(State.ERROR, utcnow(), error=message))
        if job.on_drained is not None:
            job.on_drained(job)


@hookimpl(tryfirst=True)  # built-ins claim their names before any plugin
def jobkit_register_executors(register: RegisterExecutor) -> None:
    register("local", LocalExecutor)
