"""Processes as ``/proc`` shows them: alive or not, groups, children, descriptors, threads."""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Iterator


def proc_stat(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] != b"Z"


def process_stats() -> Iterator[tuple[int, list[bytes]]]:
    """``(pid, fields after the command name)`` of every process in /proc."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields is not None:  # else it ended while we looked
                yield int(entry), fields


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    return [pid for pid, fields in process_stats() if fields[0] != b"Z" and int(fields[2]) == pgid]


def children() -> list[int]:
    """Our direct child processes, zombies included (unreaped children leak too)."""
    me = str(os.getpid()).encode()
    return [pid for pid, fields in process_stats() if fields[1] == me]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), zombies included."""
    parents = {child: int(fields[1]) for child, fields in process_stats()}
    found: list[int] = []
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found += sorted(frontier)
    return found


def open_fds() -> int:
    """How many descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def thread_count() -> int:
    """How many Python threads this process runs."""
    return threading.active_count()


def fd_count(pid: int) -> int:
    """How many descriptors process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def task_count(pid: int) -> int:
    """How many threads process ``pid`` runs (all of them, not only Python's)."""
    return len(os.listdir(f"/proc/{pid}/task"))


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's RLIMIT_NOFILE soft limit to ``wanted`` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of process ``pid`` from ``/proc/PID/status`` (``VmRSS``, ``VmHWM``), KiB."""
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise LookupError(f"no {field} for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used so far (all its threads)."""
    fields = proc_stat(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
