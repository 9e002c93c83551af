"""Starting a job's process: its own session, pipes for output, a pidfd, its limits.

Nothing here involves a shell: the command and its arguments go to
``execve`` as they are.  (A job with a cgroup v2 group is the one exception,
see below: ``/bin/sh`` runs first, as a fixed start step that never sees
the command's text as code.)

A job with neither limits nor a network namespace (the common case) is
started by glibc's ``posix_spawn`` called through ``ctypes``
(`_PosixSpawn`): ``clone(CLONE_VM|CLONE_VFORK)``, ``setsid``, the pipes
dup'ed onto 1 and 2, ``/dev/null`` onto 0, every other descriptor closed
(``closefrom``: what ``close_fds=True`` does, whatever this process left
inheritable), SIGPIPE and SIGXFSZ back to their defaults (Python ignores
them), ``chdir`` to its ``cwd``, then ``execve`` (``posix_spawnp``,
whose child searches PATH as Popen's does, when the job's PATH is ours;
else the first executable match in the job's PATH).  That skips
``subprocess.Popen``'s Python, and the GIL is released while the kernel
copies the process, so the supervisor runs meanwhile.  Any failure there
(command not found, a bad ``cwd``, ...) starts it again through ``Popen``,
the path below, so that what succeeds and the error people read are
exactly those of ``Popen``; a failed ``posix_spawn`` leaves nothing behind.

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

import ctypes
import errno
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence

import attrs

from jobkit.core import netns
from jobkit.core.cgroups import JobCgroups

__all__ = ["ChildProcess", "SpawnFailed", "Spawned", "raise_fd_limit", "spawn"]


class SpawnFailed(Exception):
    """The process could not be started; the message is meant for people."""


@attrs.define
class ChildProcess:
    """A process started by `spawn`: what ``Popen`` would say of it, and no more.

    Attributes:
        pid: Its pid (also its session and process group id).
        returncode: Its exit status as ``Popen.returncode`` gives it, once
            reaped (by `wait`, or by whoever reaped it and set it).
    """

    pid: int
    returncode: int | None = None

    def wait(self) -> int:
        """Block until it has exited, reap it, and return its ``returncode``."""
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


@attrs.define
class Spawned:
    """A started process and the parent's ends of its plumbing."""

    process: ChildProcess
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
    out_w = err_w = -1

    def start() -> ChildProcess:
        if groups is None and network and out_w > 2 and err_w > 2 and _fast is not None:
            pid = _fast.spawn(command, args, env, cwd, out_w, err_w)
            if pid is not None:
                return ChildProcess(pid)
        moved = [] if groups is None else _join(groups)
        try:
            popen = subprocess.Popen(
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
        # Reaped by whoever watches its pidfd: Popen must never reap it nor
        # list it to reap later (it does both for a Popen dropped unreaped).
        popen.returncode = 0
        return ChildProcess(popen.pid)

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


class _PosixSpawn:
    """glibc's ``posix_spawn`` with the actions a job needs (see the module docstring).

    Through ``ctypes``, since ``os.posix_spawn`` (Python 3.11) can neither
    close inherited descriptors nor change directory.  The attributes are
    made once and only read after; the file actions are a job's own.
    Structures are given more room than glibc's (80 and 336 bytes on
    x86-64): glibc allocates what an action needs itself.
    """

    _SETSIGDEF = 0x04
    _SETSID = 0x80  # glibc >= 2.26
    _FILE_ACTIONS = 512
    _ATTR = 1024
    _SIGSET = 128

    def __init__(self) -> None:
        # posix_spawn itself releases the GIL while the kernel copies us
        # (CDLL); the small calls keep it (PyDLL): a release per call would
        # only hand the GIL around.
        self._libc = ctypes.CDLL(None, use_errno=True)
        quick = ctypes.PyDLL(None)
        self._init = quick.posix_spawn_file_actions_init
        self._destroy = quick.posix_spawn_file_actions_destroy
        self._open = quick.posix_spawn_file_actions_addopen
        self._open.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                               ctypes.c_uint]
        self._dup2 = quick.posix_spawn_file_actions_adddup2
        self._closefrom = quick.posix_spawn_file_actions_addclosefrom_np  # glibc >= 2.34
        self._chdir = quick.posix_spawn_file_actions_addchdir_np  # glibc >= 2.29
        self._chdir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._spawn = self._libc.posix_spawn
        self._spawnp = self._libc.posix_spawnp
        self._getenv = quick.getenv
        self._getenv.argtypes = [ctypes.c_char_p]
        self._getenv.restype = ctypes.c_char_p
        for function in (self._spawn, self._spawnp):
            function.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self._environ = ctypes.c_void_p.in_dll(self._libc, "environ")
        self._attr = ctypes.create_string_buffer(self._ATTR)
        # What Popen's restore_signals resets (Python ignores them, and an
        # ignored signal stays ignored across exec), and glibc's own two
        # (32, 33), which its posix_spawn would otherwise leave ignored in
        # the child.  Bits set by hand: sigaddset refuses glibc's signals.
        bits = ctypes.sizeof(ctypes.c_ulong) * 8
        defaults = (ctypes.c_ulong * (self._SIGSET // ctypes.sizeof(ctypes.c_ulong)))()
        for number in (signal.SIGPIPE, signal.SIGXFSZ, 32, 33):
            defaults[(number - 1) // bits] |= 1 << ((number - 1) % bits)
        if (quick.posix_spawnattr_init(self._attr)
                or quick.posix_spawnattr_setsigdefault(self._attr, defaults)
                or quick.posix_spawnattr_setflags(
                    self._attr, ctypes.c_short(self._SETSID | self._SETSIGDEF))):
            raise OSError("cannot prepare posix_spawn attributes")

    def spawn(
        self,
        command: str,
        args: Sequence[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        stdout: int,
        stderr: int,
    ) -> int | None:
        """Start the job in a session of its own; its pid, or None if that failed
        (nothing is left of it then: glibc reaps a child whose ``execve`` failed)."""
        spawn = self._spawn
        if "/" in command:
            path: bytes | None = os.fsencode(command)
        elif self._searches_our_path(env):
            # glibc's posix_spawnp searches the PATH we have in the child, one
            # execve per folder, as Popen's child does (instead of an access()
            # per folder here).
            spawn, path = self._spawnp, os.fsencode(command)
        else:
            path = _find(command, env, cwd)
        if path is None:
            return None
        try:
            argv = [os.fsencode(arg) for arg in (command, *args)]
            envp = None if env is None else [
                os.fsencode(key) + b"=" + os.fsencode(value) for key, value in env.items()
            ]
            where = None if cwd is None else os.fsencode(cwd)
        except UnicodeError:
            return None
        if any(b"\0" in item for item in (*argv, *(envp or ()), where or b"")):
            return None  # Popen refuses these with its own message
        actions = ctypes.create_string_buffer(self._FILE_ACTIONS)
        if self._init(actions):
            return None
        try:
            if (self._open(actions, 0, b"/dev/null", os.O_RDONLY, 0)
                    or self._dup2(actions, stdout, 1)
                    or self._dup2(actions, stderr, 2)
                    or self._closefrom(actions, 3)
                    or (where is not None and self._chdir(actions, where))):
                return None
            argv_c = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
            if envp is None:
                envp_c: ctypes.c_void_p | ctypes.Array[ctypes.c_char_p] = self._environ
            else:
                envp_c = (ctypes.c_char_p * (len(envp) + 1))(*envp, None)
            pid = ctypes.c_int(0)
            if spawn(ctypes.byref(pid), path, actions, self._attr, argv_c, envp_c):
                return None
            return pid.value
        finally:
            self._destroy(actions)


    def _searches_our_path(self, env: Mapping[str, str] | None) -> bool:
        """True if the PATH Popen would search for the job is the one glibc
        sees in this process (``os.putenv`` may have set another)."""
        wanted = (os.environ if env is None else env).get("PATH")
        return wanted is not None and wanted != "" and self._getenv(b"PATH") == os.fsencode(wanted)


def _find(command: str, env: Mapping[str, str] | None, cwd: str | None) -> bytes | None:
    """The path ``execve`` is given for ``command`` (no ``/`` in it) under the
    job's own PATH, as Popen's search would try it first; None if no
    candidate looks executable (Popen then says why)."""
    for folder in os.get_exec_path(env):
        candidate = os.path.join(folder, command)
        where = candidate if cwd is None else os.path.join(cwd, candidate)
        if os.access(where, os.X_OK, effective_ids=_EFFECTIVE):
            return os.fsencode(candidate)
    return None


_EFFECTIVE = os.access in os.supports_effective_ids


def _make_fast() -> _PosixSpawn | None:
    try:
        return _PosixSpawn()
    except (OSError, AttributeError):  # not glibc, or too old for an action we need
        return None


_fast = _make_fast()
