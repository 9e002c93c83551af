"""Starting a job's process: its own session, pipes for output, a pidfd, its limits.

Nothing here involves a shell: the command and its arguments go to
``execve`` as they are.  (A job with a cgroup v2 group is the one exception,
see below: ``/bin/sh`` runs first, as a fixed start step that never sees
the command's text as code.)

A job with limits is inside them before its command's first instruction,
with no extra process for cgroup v1 (`jobkit.core.cgroups.JobCgroups.join`):
the spawning thread moves itself into the job's v1 groups, forks (vfork:
posix_spawn speed), and moves back; the child starts in them.  For a v2
group, which a lone thread cannot join, the start step ``sh -c 'echo $$ >
cgroup.procs; exec "$@"'`` joins it and becomes the command.  A job
without network (`jobkit.core.netns`) is spawned from a thread in a fresh
network namespace.  docs/limits.md gives what each costs.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Mapping

import attrs

from jobkit.core import netns
from jobkit.core.cgroups import JobCgroups

__all__ = ["SpawnFailed", "Spawned", "raise_fd_limit", "spawn"]


class SpawnFailed(Exception):
    """The process could not be started; the message is meant for people."""


@attrs.define
class Spawned:
    """A started process and the parent's ends of its plumbing."""

    process: subprocess.Popen[bytes]
    pidfd: int
    stdout: int
    stderr: int


_limit_lock = threading.Lock()
_limit_raised = False
#: The limits jobs get back, when we raised our own: (soft, hard) as we found them.
_child_nofile: tuple[int, int] | None = None


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit, once per process.

    Every running job holds three descriptors (two pipes and a pidfd), so the
    usual soft limit of 1024 would cap a pool at about 300 jobs.  Jobs get
    the original soft limit back (see `spawn`): programs that loop over every
    possible descriptor, or use ``select()``, expect the usual 1024.
    """
    global _limit_raised, _child_nofile
    with _limit_lock:
        if _limit_raised:
            return
        _limit_raised = True
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                _child_nofile = (soft, hard)
            except (ValueError, OSError):
                pass  # keep what we have; EMFILE then ends single jobs in error


def _close_all(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def spawn(
    command: str,
    args: list[str],
    env: Mapping[str, str] | None,
    cwd: str | None,
    *,
    groups: JobCgroups | None = None,
    network: bool = True,
) -> Spawned:
    """Start ``command`` in a new session with stdin from /dev/null.

    With ``groups``, the process starts inside them; with ``network``
    False, inside a new network namespace with only loopback.  Raise
    `SpawnFailed` with a readable message on any OS-level failure;
    nothing is left open or running then.
    """
    argv = [command, *args]
    if groups is not None and groups.v2 is not None:
        argv = groups.start_argv([_resolve(command, env, cwd), *args])
    fds: list[int] = []

    def start() -> subprocess.Popen[bytes]:
        moved = [] if groups is None else _join(groups)
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                env=env,
                cwd=cwd,
                start_new_session=True,  # own session and process group: pgid == pid
                close_fds=True,
            )
        finally:
            if groups is not None:
                groups.leave(moved)

    try:
        out_r, out_w = os.pipe()
        fds += (out_r, out_w)
        err_r, err_w = os.pipe()
        fds += (err_r, err_w)
        process = start() if network else netns.in_new_namespace(start)
    except OSError as exc:
        _close_all(*fds)
        raise SpawnFailed(describe_spawn_error(exc, command, cwd)) from None
    except (SpawnFailed, netns.NetworkUnavailable) as exc:
        _close_all(*fds)
        raise SpawnFailed(str(exc)) from None
    _close_all(out_w, err_w)
    if _child_nofile is not None:
        # Python cannot set it between fork and exec without giving up vfork;
        # right after exec, a program has had microseconds to look at it.
        try:
            resource.prlimit(process.pid, resource.RLIMIT_NOFILE, _child_nofile)
        except OSError:
            pass  # it has exited already
    try:
        pidfd = os.pidfd_open(process.pid)
    except OSError as exc:
        # Without a pidfd we cannot watch it: do not leave it running unseen.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        _close_all(out_r, err_r)
        raise SpawnFailed(describe_spawn_error(exc, command, cwd)) from None
    os.set_blocking(out_r, False)
    os.set_blocking(err_r, False)
    return Spawned(process, pidfd, out_r, err_r)


def _join(groups: JobCgroups) -> list[tuple[str, str]]:
    try:
        return groups.join()
    except OSError as exc:
        raise SpawnFailed(
            f"cannot put the job into its cgroups: {exc.strerror or exc}"
            f"{f' ({exc.filename})' if exc.filename else ''}"
        ) from None


def _resolve(command: str, env: Mapping[str, str] | None, cwd: str | None) -> str:
    """``command`` as ``execvpe`` would find it, for a start step that execs it later.

    Raise `SpawnFailed` as starting it directly would have.
    """
    if "/" in command:
        target = command if cwd is None else os.path.join(cwd, command)
        if not os.path.exists(target):
            raise SpawnFailed(f"no such file: {command!r}")
        return command
    for folder in os.get_exec_path(env):
        candidate = os.path.join(folder or ".", command)
        where = candidate if cwd is None else os.path.join(cwd, candidate)
        if os.path.isfile(where) and os.access(where, os.X_OK):
            return candidate
    raise SpawnFailed(f"command not found: {command!r} (not in PATH)")


def describe_spawn_error(exc: OSError, command: str, cwd: str | None) -> str:
    """Turn an OSError from starting a process into a sentence for people."""
    reason = exc.strerror or str(exc)
    if cwd is not None and exc.filename == cwd:
        return f"cannot use working directory {cwd!r}: {reason}"
    code = exc.errno
    if code == errno.ENOENT:
        if "/" in command:
            return f"no such file: {command!r}"
        return f"command not found: {command!r} (not in PATH)"
    if code in (errno.EACCES, errno.EISDIR) and "/" in command and os.path.isdir(command):
        return f"cannot execute {command!r}: it is a directory"
    if code == errno.EACCES:
        return f"permission denied: cannot execute {command!r}"
    if code == errno.ENOEXEC:
        return f"cannot execute {command!r}: not a program this system can run"
    if code in (errno.EMFILE, errno.ENFILE):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return f"too many open files (limit {soft}): delete finished jobs or raise the limit"
    if code == errno.EAGAIN:
        return "cannot start a process: the process limit is reached (EAGAIN)"
    if code == errno.ENOMEM:
        return "cannot start a process: not enough memory"
    return f"cannot start {command!r}: {reason}"
