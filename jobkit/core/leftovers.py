"""Finding and killing what a job left behind, without ever hitting a stranger.

A pool's owner may die (SIGKILL, a crash) while jobs run.  Their records say
who ran them: the leader's pid, its start time in clock ticks and the boot
id.  The next owner kills what is left, checking each fact so that a
recycled pid is never hit:

* another boot: every process of that run is gone already;
* the leader is alive with a start time inside the recorded window: kill its group;
* the leader is alive with another start time: the pid was reused, leave it;
* the leader is gone but processes remain in its group, all started after
  the recorded leader: they are the job's (Linux does not reuse a pid while
  a group of that id exists), kill them.

The same checks make `stop` on a job whose leader was already reaped safe.

The start time is not read from ``/proc`` at spawn (that read waits on the
new process's exec and costs more than the rest of a job's bookkeeping):
`spawn_window` brackets the spawn with ``CLOCK_BOOTTIME``, the clock the
kernel stamps a process's start with, in the same clock ticks.  Our leader
holds its pid throughout that window, so no other process with that pid can
have started inside it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from jobkit.core.cgroups import (
    JOB_PREFIX,
    OWNER_PREFIX,
    remove_cgroup,
    remove_owner_folder,
    signal_cgroup,
)

__all__ = [
    "boot_id",
    "boot_ticks",
    "group_members",
    "kill_leftover",
    "newest_members",
    "process_start",
    "signal_group_since",
]

_HZ = os.sysconf("SC_CLK_TCK")


def boot_ticks() -> float:
    """Now, in clock ticks since boot: the unit of a process's start time."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) * _HZ


def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _stat(pid: int, *, zombies: bool = False) -> tuple[int, int] | None:
    """(process group, start time in clock ticks) of a live (or zombie) ``pid``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[1].split()
    if fields[0] == b"Z" and not zombies:
        return None
    return int(fields[2]), int(fields[19])


def process_start(pid: int) -> int | None:
    """The start time of our unreaped child ``pid`` in clock ticks since boot, or None."""
    stat = _stat(pid, zombies=True)  # it may have exited already: it is still ours
    return None if stat is None else stat[1]


def group_members(pgid: int, born_since: int) -> list[int]:
    """Live members of group ``pgid`` started no earlier than ``born_since`` (ticks).

    A member of a job's group was forked by the job, so after it; one born
    earlier belongs to a later group that reused the id.  A group with no
    member at all (the common case) costs one ``kill(-pgid, 0)``, not a
    look at every process (deletes and retention pay it per job).
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass  # someone else's group now: the look below tells
    return [pid for pid, group, start in _live_processes()
            if group == pgid and start >= born_since]


def newest_members() -> dict[int, int]:
    """The start time (ticks) of the youngest live member of every process group.

    One look at ``/proc`` for many groups (closing a pool with thousands of
    finished jobs).  Good for as long as the caller acts on it: a group with
    no member cannot gain one (only a member of its session can join it),
    and a group that reuses the id later starts after the snapshot.
    """
    newest: dict[int, int] = {}
    for _, group, start in _live_processes():
        if start > newest.get(group, -1):
            newest[group] = start
    return newest


def _live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, process group, start time in ticks) of every live process: one look at /proc."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                yield int(entry), *stat


def signal_group_since(
    pgid: int, born_since: int, number: int, newest: dict[int, int] | None = None
) -> bool:
    """Signal group ``pgid`` if members started since ``born_since`` are left in it.

    For a job whose leader (pid ``pgid``) was reaped: members born after it
    are its leftovers, unless the id now belongs to another group.

    ``newest``: a `newest_members` snapshot to look in instead of ``/proc``.
    """
    if newest is not None:
        if newest.get(pgid, -1) < born_since:
            return False
    elif not group_members(pgid, born_since):
        return False
    leader = _stat(pgid)
    if leader is not None and leader[0] == pgid:
        # Our leader is reaped, so this is a new process with its pid that
        # made a group of its own: the id was reused, and the group is not
        # ours (while ours had a member, no process could lead one with its id).
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, number)
    return True


def kill_leftover(
    pid: int | None,
    start: tuple[int, int] | None,
    boot: str | None,
    cgroups: Sequence[str] | None = None,
) -> bool:
    """Kill what a job left, and remove its cgroups; True if anything was killed.

    ``start`` is the window (first and last clock tick) in which its leader
    ``pid`` started, ``boot`` the boot id then, ``cgroups`` its cgroup
    folders (v2 and v1).
    """
    if pid is None or pid <= 1 or start is None or boot != boot_id():
        return False  # never started, or another boot: every process of that run is gone
    killed = False
    for cgroup in cgroups or ():
        killed = _kill_cgroup(cgroup) or killed
    leader = _stat(pid)
    if leader is not None and (leader[0] != pid or not start[0] <= leader[1] <= start[1]):
        return killed  # the pid was reused, or the process left its group
    if leader is not None or group_members(pid, start[0]):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        killed = True
    return killed


def _kill_cgroup(text: str) -> bool:
    """Kill a recorded job cgroup (v1 or v2) and remove it, unless the run that
    made it is still alive; True if processes were left in it."""
    cgroup = Path(text)
    owner = cgroup.parent.name.removeprefix(OWNER_PREFIX)
    if not cgroup.name.startswith(JOB_PREFIX) or not owner.isdigit() or not cgroup.is_dir():
        return False
    if _stat(int(owner)) is not None:
        return False  # its owner (or a process that reused its pid) lives: not ours
    populated = False
    deadline = time.monotonic() + 10.0
    while True:
        try:
            members = (cgroup / "cgroup.procs").read_text().split()
        except OSError:
            break
        if not members or time.monotonic() > deadline:
            break
        populated = True
        # Again and again: v1 has no atomic kill, and a member may fork meanwhile.
        signal_cgroup(cgroup, signal.SIGKILL)
        time.sleep(0.001)
    remove_cgroup(cgroup)
    remove_owner_folder(cgroup.parent)  # with the spare groups its owner kept
    return populated
