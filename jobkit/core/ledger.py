"""A record on disk of the process groups a pool runs, for crash recovery.

A pool normally kills its jobs when it closes or the interpreter exits, but a
process killed with SIGKILL (or a crashed machine's power cut, if the disk
survives) cannot.  With a `Ledger`, each job's process group is written down
while it may still have processes, and the next run calls `recover` to kill
whatever the previous one left.

One file per job group, named after the group id and holding the leader's
start time and the boot id, so that a recycled pid is never hit:

* the leader is alive with the recorded start time (same boot): kill the group;
* the leader is alive with another start time: the pid was reused, leave it;
* the leader is gone but processes remain in the group, all started after
  the recorded leader: they are the job's (Linux does not reuse a pid while
  a group of that id exists), kill them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
from pathlib import Path

from jobkit.core.cgroups import CgroupTree
from jobkit.core.errors import JobkitError

__all__ = ["Ledger", "LedgerInUse"]


class LedgerInUse(JobkitError):
    """Another live process holds this ledger folder."""

    def __init__(self, directory: Path) -> None:
        super().__init__(f"the state folder {directory} is in use by another process")
        self.directory = directory


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _stat(pid: int) -> tuple[int, int] | None:
    """(process group, start time in clock ticks) of a live, non-zombie ``pid``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[1].split()
    if fields[0] == b"Z":
        return None
    return int(fields[2]), int(fields[19])


def _group_members(pgid: int, born_since: int) -> list[int]:
    """Live members of group ``pgid`` started no earlier than ``born_since`` (ticks).

    A member of the job's group was forked by the job, so after it; one born
    earlier belongs to a later group that reused the id.
    """
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[0] == pgid and stat[1] >= born_since:
                members.append(int(entry))
    return members


class Ledger:
    """Process groups that may still be running, kept in ``directory`` (made 0700).

    One process at a time may use a ledger folder: it holds an exclusive
    ``flock`` on ``directory/lock`` until `close` (the kernel drops it if the
    process dies), so two servers can never kill each other's jobs.  A
    second user gets `LedgerInUse`.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._boot = _boot_id()
        self._lock = threading.Lock()
        self._lock_fd = os.open(
            self.directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise LedgerInUse(self.directory) from None

    def close(self) -> None:
        """Let another process use the folder (the records stay)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add(self, pid: int, cgroup: Path | None = None) -> None:
        """Record the group led by ``pid``, and its cgroup if it has one."""
        stat = _stat(pid)
        start = stat[1] if stat else -1
        path = self.directory / str(pid)
        tmp = self.directory / f".{pid}.tmp"
        tmp.write_text(f"{pid} {start} {self._boot} {cgroup or '-'}\n")
        tmp.replace(path)  # atomic: `recover` never reads half a record

    def remove(self, pid: int) -> None:
        """Forget the group led by ``pid`` (it was killed and reaped)."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / str(pid)).unlink()

    def recover(self) -> list[int]:
        """Kill every group a previous run left behind; return their ids.

        Clears the ledger.  Call it before the first job of this run starts.
        """
        killed = []
        with self._lock:
            for path in sorted(self.directory.iterdir()):
                if path.name == "lock":
                    continue
                if path.name.isdigit() and self._kill_leftover(path):
                    killed.append(int(path.name))
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return killed

    def _kill_leftover(self, path: Path) -> bool:
        try:
            pid_text, start_text, boot, cgroup_text = path.read_text().split(" ", 3)
            pid, start = int(pid_text), int(start_text)
        except (OSError, ValueError):
            return False  # unreadable: never guess with someone else's pid
        if pid != int(path.name) or boot != self._boot or pid <= 1:
            return False  # another boot: every process of that run is gone
        leader = _stat(pid)
        if leader is not None and leader != (pid, start):
            return False  # the pid was reused, or the process left its group
        killed = self._kill_cgroup(cgroup_text.strip())
        if leader is not None or (start >= 0 and _group_members(pid, start)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            killed = True
        return killed

    @staticmethod
    def _kill_cgroup(text: str) -> bool:
        """Kill a recorded job cgroup, unless the run that made it is still alive."""
        if text == "-":
            return False
        cgroup = Path(text)
        owner = cgroup.parent.name.removeprefix("jobkit-")
        if not cgroup.name.startswith("job-") or not owner.isdigit() or not cgroup.is_dir():
            return False
        if _stat(int(owner)) is not None:
            return False  # its owner (or a process that reused its pid) lives: not ours
        try:
            populated = "populated 1" in (cgroup / "cgroup.events").read_text()
        except OSError:
            return False
        CgroupTree.signal(cgroup, signal.SIGKILL)
        CgroupTree.remove(cgroup)
        with contextlib.suppress(OSError):
            cgroup.parent.rmdir()
        return populated
