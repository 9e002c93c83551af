"""Containing jobs in cgroup v2, where this process may create cgroups.

A process group holds a job's tree only until some descendant calls
``setsid()`` (a daemon, ``setsid sleep 1000 &``): ``killpg`` then misses it.
A cgroup holds every descendant whatever it does, and ``cgroup.kill`` kills
them all at once.  So, where the unified hierarchy is mounted and writable
(running as root, or in a delegated subtree), each job gets its own cgroup
``<our cgroup>/jobkit-<our pid>/job-<n>``.

Python offers no way to fork straight into a cgroup (``clone3`` with
``CLONE_INTO_CGROUP``) without giving up ``vfork``, so the process is moved
right after ``exec`` succeeded, before ``create`` returns, and then every
process it already forked (found through ``/proc/PID/task/TID/children``),
depth first.  What escapes: a process forked in those microseconds whose
parent died before jobkit listed it (it was reparented away).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import threading
import time
from pathlib import Path

__all__ = ["CgroupTree", "detect"]

_detect_lock = threading.Lock()
_detected: tuple[bool, CgroupTree | None] = (False, None)


def _unified_mount() -> Path | None:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def _own_cgroup() -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None


def _move_descendants(procs_fd: int, pid: int) -> None:
    """Move what ``pid`` forked before it was moved itself (later forks inherit).

    Each process is moved before its children are listed, so a child it forks
    meanwhile is either listed or born in the cgroup.
    """
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", "rb") as f:
                    kids = f.read().split()
            except OSError:
                continue
            for kid in kids:
                try:
                    os.write(procs_fd, kid)
                except OSError:
                    continue  # gone already
                pending.append(int(kid))


class CgroupTree:
    """This process's folder of job cgroups; created on first use, removed on `close`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._ids = itertools.count(1)

    def create(self, pid: int) -> Path | None:
        """Make a cgroup for the job led by ``pid`` and move it there; None if that failed."""
        path = self.base / f"job-{next(self._ids)}"
        try:
            path.mkdir()
        except FileNotFoundError:  # first job, or the last pool closing removed it
            try:
                self.base.mkdir(exist_ok=True)
                path.mkdir()
            except OSError:
                return None
        except OSError:
            return None
        try:
            fd = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(pid).encode())
                _move_descendants(fd, pid)
            finally:
                os.close(fd)
        except OSError:
            # ESRCH: it has already exited, so nothing of it can escape.
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return path

    @staticmethod
    def signal(path: Path, number: int) -> None:
        """Send ``number`` to every process in the cgroup, escaped ones included."""
        if number == signal.SIGKILL:
            try:
                (path / "cgroup.kill").write_text("1")  # Linux 5.14+: atomic, race-free
                return
            except OSError:
                pass  # older kernel: one by one below
        try:
            pids = (path / "cgroup.procs").read_text().split()
        except OSError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), number)

    @staticmethod
    def remove(path: Path, wait: float = 1.0) -> bool:
        """Remove an emptied cgroup, waiting up to ``wait`` s for its last processes to go."""
        deadline = time.monotonic() + wait
        while True:
            try:
                path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    return False
            time.sleep(0.002)  # processes in exit; the kernel gives no event for rmdir

    def close(self) -> None:
        """Remove our folder if no job cgroup is left in it (EBUSY otherwise)."""
        with contextlib.suppress(OSError):
            self.base.rmdir()


def detect() -> CgroupTree | None:
    """This process's `CgroupTree`, or None where cgroup v2 is missing or read-only."""
    global _detected
    with _detect_lock:
        done, tree = _detected
        if done:
            return tree
        tree = None
        mount, own = _unified_mount(), _own_cgroup()
        if mount is not None and own is not None:
            base = mount / own.lstrip("/") / f"jobkit-{os.getpid()}"
            try:  # a probe: the folder is made again by the first job that needs it
                base.mkdir(exist_ok=True)
                base.rmdir()
                tree = CgroupTree(base)
            except OSError:
                tree = None
        _detected = (True, tree)
        return tree


def _forget_after_fork() -> None:
    # Our folder is named after our pid: a forked child must find its own.
    global _detected
    _detected = (False, None)


os.register_at_fork(after_in_child=_forget_after_fork)
