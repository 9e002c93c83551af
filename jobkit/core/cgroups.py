"""Each job's cgroups: its limits, its whole process tree, what it used.

A process group holds a job's tree only until some descendant calls
``setsid()``; a cgroup holds every descendant whatever it does.  Where this
process may create cgroups, a job with `Limits` (and, in a pool with
``cgroups`` on, every job) gets its own group in each hierarchy it needs:
``<our cgroup>/jobkit-<our pid>/job-<n>``.

Which hierarchy enforces what (`CgroupTree.make`), per controller:

1. cgroup v2, where the controller is enabled for jobkit's groups (in
   ``cgroup.subtree_control`` of the cgroup jobkit runs in, or of its parent
   where that is a delegated subtree and jobkit runs in a leaf of it);
2. else cgroup v1, where the controller is mounted as a v1 hierarchy;
3. else nowhere: a strict job ends in error naming the missing controller.

A job in v1 groups also gets the v1 accounting controllers (``cpuacct``,
``memory``, ``blkio``) and ``pids`` to hold its tree; a job in a v2 group has
``cpu.stat`` in any case.

The job joins its groups before its command's first instruction (see
`jobkit.core.spawn`): v1 ones by moving the spawning *thread* into them
(v1 lets threads of one process sit in different groups, and a child starts
in its forking thread's groups), v2 ones through a start step that writes its
own pid into ``cgroup.procs`` and then execs the command.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import attrs

from jobkit.core import hierarchies
from jobkit.core.cgroup_formats import (
    CONTROLLERS,
    Device,
    parse_blkio_bytes,
    parse_cpuacct_all,
    parse_io_stat,
    parse_keyed,
    v1_limit_files,
    v2_limit_files,
)
from jobkit.core.hierarchies import Hierarchy
from jobkit.core.limits import Limits
from jobkit.core.models import Usage

__all__ = ["CgroupTree", "JobCgroups", "Unenforceable", "block_device", "detect"]

log = logging.getLogger("jobkit.cgroups")

#: v1 controllers every job in v1 groups joins, for its CPU time and peak
#: memory; either one's ``cgroup.procs`` holds its tree.  Each costs two
#: thread migrations per job (see `JobCgroups.join`), so ``pids`` and
#: ``blkio`` are joined only for their limits.
V1_ALWAYS = ("cpuacct", "memory")
#: Whose ``cgroup.procs`` a job's tree is read from, first found first.
_TREE_ORDER = ("pids", *V1_ALWAYS)
#: The v2 controllers jobkit enables for its groups.
V2_WANTED = ("cpu", "memory", "pids", "io")
#: Prefix of the folder of one jobkit process, followed by its pid.
OWNER_PREFIX = "jobkit-"
#: Prefix of one job's group.
JOB_PREFIX = "job-"
#: Prefix of the emptied groups kept for a later job by earlier versions of
#: jobkit (they now keep their ``job-<n>`` name): still removed with a dead run.
SPARE_PREFIX = "spare-"
#: The v2 start step: join the cgroup (``$0``), then become the command.
_V2_START = 'echo $$ >"$0" || exit 125; exec "$@"'
_SH = "/bin/sh"


class Unenforceable(Exception):
    """A strict job asked for a limit this machine cannot enforce; the message says why."""


def _write(path: str | Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path: str | Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def block_device(directory: str | None) -> Device | None:
    """The whole disk behind ``directory`` (default: ours), as (major, minor); None if none.

    Filesystems without one (tmpfs, overlay, NFS, btrfs subvolumes) have an
    anonymous device of major 0.  A partition is throttled through its disk.
    """
    try:
        dev = os.stat(directory or ".").st_dev
    except OSError:
        return None
    major, minor = os.major(dev), os.minor(dev)
    if major == 0:
        return None
    sysfs = Path(f"/sys/dev/block/{major}:{minor}")
    if not sysfs.exists():
        return None
    if (sysfs / "partition").exists():
        try:
            text = (sysfs.resolve().parent / "dev").read_text().strip()
            major_text, _, minor_text = text.partition(":")
            return int(major_text), int(minor_text)
        except (OSError, ValueError):
            return None
    return major, minor


@attrs.define(eq=False)
class JobCgroups:
    """One job's groups: a v2 one and/or one per v1 hierarchy.

    Once the job has ended, `release` hands the folders back to the
    `CgroupTree`, which may give them to a later job (v1 only): every
    method is then a no-op for this object, so that nothing done on behalf
    of a finished job can reach the next one.

    Attributes:
        v2: The job's v2 group, joined by the start step; None if it has none.
        v1: The job's v1 groups, by hierarchy, joined by the spawning thread.
        enforced_by: See `JobStatus.enforced_by`.
        unenforced: Limits asked for but not enforced (best effort only).
        pids_max: The v1 pids limit, made one higher while the spawning
            thread is in the group (see `join`).
        written: ``(hierarchy, file, text)`` of each limit in force
            (hierarchy None: the v2 group); a later job in the same folders
            with the same limits writes nothing.
        oom_base: OOM kills counted in the folders before this job (reused folders).
        io_base: (read, written) bytes counted in the folders before this job:
            ``blkio.reset_stats`` leaves the throttle's byte counts as they are
            (seen on Linux 6.18), so they are subtracted instead.
        memory_limited: True once a memory limit is written: only then can
            the OOM killer act on the job's own limit, and is it asked.
        reused: True for folders that served an earlier job.
        owner: The tree that made the groups and takes them back.
    """

    v2: Path | None
    v1: dict[Hierarchy, Path]
    enforced_by: str | None = None
    unenforced: tuple[str, ...] = ()
    pids_max: int | None = None
    written: list[tuple[Hierarchy | None, str, str]] = attrs.Factory(list)
    oom_base: int = 0
    io_base: tuple[int, int] = (0, 0)
    memory_limited: bool = False
    reused: bool = False
    owner: CgroupTree | None = None
    _released: bool = False
    _tree: Path | None = None
    _lock: threading.Lock = attrs.Factory(threading.Lock)
    #: Files by (controller, name), as strings: these are read for every job.
    _files: dict[tuple[str, str], str | None] = attrs.Factory(dict)
    #: (hierarchy, its tasks file) in the order the spawning thread joins them.
    _order: list[tuple[Hierarchy, str]] | None = None
    #: The OOM kill count `oom_kills` last read (the job's end reads it).
    _oom_seen: int | None = None
    #: The last `usage` read, and when (``time.monotonic()``): for ``max_age``.
    _usage_seen: tuple[float, Usage | None] | None = None

    @property
    def key(self) -> tuple[bool, frozenset[Hierarchy]]:
        """Which hierarchies: jobs with the same key can share spare folders."""
        return self.v2 is not None, frozenset(self.v1)

    @property
    def tree(self) -> Path:
        """The group whose ``cgroup.procs`` is the job's whole tree."""
        if self._tree is None:
            self._tree = self.v2
            for controller in _TREE_ORDER:
                if self._tree is None:
                    self._tree = self.v1_with(controller)
            if self._tree is None:
                self._tree = next(iter(self.v1.values()))
        return self._tree

    def paths(self) -> list[str]:
        """Every group's folder, for the crash-recovery record."""
        return [str(path) for path in self._all()]

    def _all(self) -> list[Path]:
        return ([] if self.v2 is None else [self.v2]) + list(self.v1.values())

    def folder(self, hierarchy: Hierarchy | None) -> Path:
        """The job's group in ``hierarchy`` (None: its v2 group)."""
        group = self.v2 if hierarchy is None else self.v1[hierarchy]
        assert group is not None
        return group

    def v1_with(self, controller: str) -> Path | None:
        """The job's v1 group of ``controller``, if it has one."""
        for hierarchy, path in self.v1.items():
            if controller in hierarchy.controllers:
                return path
        return None

    def _file(self, controller: str, name: str) -> str | None:
        """The v1 ``controller``'s file ``name`` of the job, if it has that group."""
        key = (controller, name)
        if key not in self._files:
            group = self.v1_with(controller)
            self._files[key] = None if group is None else f"{group}/{name}"
        return self._files[key]

    # -- starting: see jobkit.core.spawn ----------------------------------

    def start_argv(self, argv: list[str]) -> list[str]:
        """``argv`` behind the v2 start step, where the job has a v2 group."""
        if self.v2 is None:
            return argv
        return [_SH, "-c", _V2_START, str(self.v2 / "cgroup.procs"), *argv]

    def join(self) -> list[tuple[str, str]]:
        """Move the calling thread into the job's v1 groups; return where it came from.

        The child it forks next starts in them.  With a pids limit the
        thread counts against it, so the limit is one higher until `leave`.
        On an error the thread is back where it was and ``OSError`` raised.
        """
        if not self.v1:
            return []
        if self._order is None:
            # cpu last (and first out): a small quota must not throttle us.
            ordered = sorted(self.v1.items(), key=lambda item: "cpu" in item[0].controllers)
            self._order = [(hierarchy, f"{path}/tasks") for hierarchy, path in ordered]
        tid = str(threading.get_native_id())
        mine = _read("/proc/thread-self/cgroup")
        moved: list[tuple[str, str]] = []
        try:
            pids = self._file("pids", "pids.max")
            if self.pids_max is not None and pids is not None:
                _write(pids, str(self.pids_max + 1))
            for hierarchy, tasks in self._order:
                origin = _tasks_of(hierarchy, mine)
                _write(tasks, tid)
                moved.append((origin, tasks))
        except OSError:
            self.leave(moved)
            raise
        return moved

    def leave(self, moved: list[tuple[str, str]]) -> None:
        """Move the calling thread back to where `join` found it."""
        tid = str(threading.get_native_id())
        pids = self._file("pids", "pids.max")
        if self.pids_max is not None and moved and pids is not None:
            with contextlib.suppress(OSError):
                # Below the count is allowed: forks fail until it is reached.
                _write(pids, str(self.pids_max))
        for origin, _ in reversed(moved):
            try:
                _write(origin, tid)
            except OSError as exc:  # our own cgroup vanished: keep working from where we are
                log.error("cannot move thread %s back to %s: %s", tid, origin, exc)

    # -- watching -----------------------------------------------------------

    def populated(self) -> bool:
        """True while any process of the job's tree is alive (zombies excluded)."""
        key = ("", "populated")
        if key not in self._files:  # v2: its events; v1: its list of processes
            self._files[key] = (f"{self.v2}/cgroup.events" if self.v2 is not None
                                else f"{self.tree}/cgroup.procs")
        with self._lock:
            if self._released:
                return False
            try:
                text = _read(self._files[key] or "")
            except OSError:
                return False  # removed: nothing can be in it
            return "populated 1" in text if self.v2 is not None else bool(text.strip())

    def members(self) -> list[int]:
        """The pids of the job's live processes."""
        with self._lock:
            if self._released:
                return []
            try:
                return [int(pid) for pid in _read(self.tree / "cgroup.procs").split()]
            except OSError:
                return []

    def signal(self, number: int) -> None:
        """Send ``number`` to every process of the job's tree, escaped ones included."""
        with self._lock:
            if not self._released:
                signal_cgroup(self.tree, number)

    def kill(self, wait: float) -> bool:
        """SIGKILL the whole tree and wait up to ``wait`` s until it is gone; True if it is."""
        deadline = time.monotonic() + wait
        while True:
            self.signal(signal.SIGKILL)
            if not self.populated():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)  # dying processes; the kernel sends no event for v1

    def oom_kills(self) -> int:
        """How many processes of the job the OOM killer killed for its memory limit."""
        with self._lock:
            if self._released or not self.memory_limited:
                return 0
            self._oom_seen = self._oom_count()
            return self._oom_seen - self.oom_base

    def _oom_count(self) -> int:
        places = [self._file("memory", "memory.oom_control")]
        if self.v2 is not None:
            places.insert(0, f"{self.v2}/memory.events")
        for path in places:
            if path is not None:
                try:
                    return parse_keyed(_read(path)).get("oom_kill", 0)
                except OSError:
                    continue
        return 0

    def usage(self, max_age: float = 0) -> Usage | None:
        """What the whole tree used so far; None where the groups cannot say (no CPU time).

        ``max_age``: a figure read at most that many seconds ago will do.  A
        running job's status is asked for often (every poll of every
        client), and reading the groups' files is most of what it costs; a
        job's end always reads them anew.
        """
        with self._lock:
            if self._released:
                return None
            now = time.monotonic()
            seen = self._usage_seen
            if max_age > 0 and seen is not None and now - seen[0] <= max_age:
                return seen[1]
            usage = _usage_v2(self.v2) if self.v2 is not None else self._usage_v1()
            self._usage_seen = (now, usage)
            return usage

    def _usage_v1(self) -> Usage | None:
        cpuacct = self._file("cpuacct", "cpuacct.usage_all")
        if cpuacct is None:
            return None
        try:
            user, system = parse_cpuacct_all(_read(cpuacct))
        except (OSError, ValueError):
            return None
        peak = None
        memory = self._file("memory", "memory.max_usage_in_bytes")
        if memory is not None:
            with contextlib.suppress(OSError, ValueError):
                peak = int(_read(memory))
        read = written = None
        with contextlib.suppress(OSError):
            if (io := self._io_bytes()) is not None:
                read, written = (max(0, n - base) for n, base in zip(io, self.io_base))
        return Usage("cgroup", user / 1e9, system / 1e9, peak, read, written)

    def _io_bytes(self) -> tuple[int, int] | None:
        """(read, written) bytes the blkio group has counted, if the job has one."""
        blkio = self._file("blkio", "blkio.throttle.io_service_bytes_recursive")
        return None if blkio is None else parse_blkio_bytes(_read(blkio))

    # -- ending -------------------------------------------------------------

    def release(self) -> None:
        """The job's tree is gone: hand its folders back (kept for reuse, or removed)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        if self.owner is None or not self.owner.take_back(self):
            for path in self._all():
                if not remove_cgroup(path, wait=0.5):  # empty: only dying processes delay it
                    log.warning("cannot remove cgroup %s", path)

    def remove(self, wait: float = 1.0) -> bool:
        """Remove every group of the job (emptied first); True once all are gone."""
        with self._lock:
            if self._released:
                return True
            done = all([remove_cgroup(path, wait) for path in self._all()])
            self._released = done
            return done


#: The tasks file of a hierarchy's cgroup, by (hierarchy, cgroup path as /proc names it).
_TASKS: dict[tuple[Hierarchy, str], str] = {}


def _tasks_of(hierarchy: Hierarchy, proc_cgroup: str) -> str:
    """The tasks file of the cgroup a ``/proc/.../cgroup`` text puts its thread in."""
    for line in proc_cgroup.splitlines():
        _, _, rest = line.partition(":")
        listed, _, path = rest.partition(":")
        if listed == hierarchy.key:
            found = _TASKS.get((hierarchy, path))
            if found is None:
                folder = hierarchy.folder(path) or hierarchy.own
                found = _TASKS[(hierarchy, path)] = f"{folder}/tasks"
            return found
    return f"{hierarchy.own}/tasks"


def _usage_v2(path: Path) -> Usage | None:
    try:
        stat = parse_keyed(_read(path / "cpu.stat"))
    except OSError:
        return None
    peak = read = written = None
    with contextlib.suppress(OSError, ValueError):
        peak = int(_read(path / "memory.peak"))
    with contextlib.suppress(OSError):
        read, written = parse_io_stat(_read(path / "io.stat"))
    return Usage(
        "cgroup",
        stat.get("user_usec", 0) / 1e6,
        stat.get("system_usec", 0) / 1e6,
        peak,
        read,
        written,
    )


def signal_cgroup(path: Path, number: int) -> None:
    """Send ``number`` to every process in the cgroup at ``path`` (v1 or v2), never to us."""
    if number == signal.SIGKILL:
        try:
            _write(path / "cgroup.kill", "1")  # v2, Linux 5.14+: atomic, race-free
            return
        except OSError:
            pass  # v1, or an older kernel: one by one below
    try:
        pids = _read(path / "cgroup.procs").split()
    except OSError:
        return
    me = os.getpid()
    for text in pids:
        pid = int(text)
        if pid != me:  # a thread of ours may be starting a job in there
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, number)


def remove_cgroup(path: Path, wait: float = 1.0) -> bool:
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


def _delegated(path: Path) -> bool:
    """True if systemd delegated ``path`` (``Delegate=yes`` marks it with an xattr)."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name) == b"1":
                return True
        except OSError:
            continue
    return False


def v2_parent(own: Path) -> Path:
    """The v2 cgroup under which jobkit makes its folder.

    Our own cgroup, unless it enables no controller for its children while
    its parent is a subtree systemd delegated to us (``Delegate=yes``, with
    jobkit in a leaf of it such as ``DelegateSubgroup=``): then the parent,
    since a cgroup that holds processes (ours) cannot pass controllers on.
    """
    try:
        enabled = (own / "cgroup.subtree_control").read_text().split()
    except OSError:
        enabled = []
    if not enabled and own.parent != own and _delegated(own.parent):
        return own.parent
    return own


def _v2_controllers(parent: Path, hierarchy: Hierarchy) -> frozenset[str]:
    """The v2 controllers jobkit's folder under ``parent`` can have.

    In a delegated subtree next to our leaf (see `v2_parent`), enable the
    ones it offers but does not pass on yet: it holds no process, and it is
    ours.  Our own cgroup's setting is left alone (the root's is the whole
    machine's).
    """
    if parent == hierarchy.own:
        return hierarchy.controllers
    try:
        offered = set((parent / "cgroup.controllers").read_text().split())
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        missing = (offered & set(V2_WANTED)) - enabled
        if missing:
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))
            enabled = set((parent / "cgroup.subtree_control").read_text().split())
    except OSError as exc:
        log.warning("cannot enable cgroup v2 controllers in %s: %s", parent, exc)
        with contextlib.suppress(OSError):
            return frozenset((parent / "cgroup.subtree_control").read_text().split())
        return frozenset()
    return frozenset(enabled)


class CgroupTree:
    """This process's cgroup folders, one per usable hierarchy, and its jobs' groups.

    Folders are created on first use and removed by `close` once empty.
    Making and removing a cgroup costs more than running ``true`` in it
    (cold kernfs lookups included), so the v1 groups of an ended job are
    kept, their limits undone and counters reset, for the next job that
    needs the same hierarchies (at most `MAX_SPARES` per kind).  Folders
    still charged with more than `REUSE_MAX_MEMORY` (page cache the job
    left, tmpfs files) are removed instead: the next job would start with
    that charge in its peak.
    """

    #: Spare folder sets kept per set of hierarchies.
    MAX_SPARES = 16
    #: A memory group still charged with more than this is not reused.
    REUSE_MAX_MEMORY = 1 << 20

    def __init__(self, v2: Hierarchy | None, v1: Iterable[Hierarchy]) -> None:
        self.v2 = v2
        self.v1 = list(v1)
        owner = f"{OWNER_PREFIX}{os.getpid()}"
        #: jobkit's folder in each hierarchy (None: the v2 one).
        self.bases: dict[Hierarchy | None, Path] = {h: h.own / owner for h in self.v1}
        self._v2_controllers: frozenset[str] = frozenset()
        if v2 is not None:
            self.bases[None] = v2_parent(v2.own) / owner
            self._v2_controllers = v2.controllers & set(V2_WANTED)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._spares: dict[tuple[bool, frozenset[Hierarchy]], list[JobCgroups]] = {}

    @property
    def base(self) -> Path:
        """jobkit's folder in the hierarchy that holds the trees of jobs without limits."""
        for controller in V1_ALWAYS:
            if (hierarchy := self._v1_of(controller)) is not None:
                return self.bases[hierarchy]
        return self.bases[None if self.v2 is not None else self.v1[0]]

    def enforcement(self) -> dict[str, str]:
        """Which cgroup version enforces each limit here (``"cgroup2"``, ``"cgroup1"``).

        Limits missing from the answer cannot be enforced on this machine.
        (io limits also need a block device behind the job's folder.)
        """
        found = {}
        for name in Limits.NAMES:
            if self.v2 is not None and CONTROLLERS[2][name] in self._v2_controllers:
                found[name] = "cgroup2"
            elif self._v1_of(CONTROLLERS[1][name]) is not None:
                found[name] = "cgroup1"
        return found

    def _v1_of(self, controller: str) -> Hierarchy | None:
        for hierarchy in self.v1:
            if controller in hierarchy.controllers:
                return hierarchy
        return None

    def make(self, limits: Limits | None, cwd: str | None, contain: bool) -> JobCgroups | None:
        """Make a job's groups with ``limits`` applied; None if it needs none.

        ``contain``: give it groups even without limits, to hold its tree.
        Raise `Unenforceable` for a strict limit this machine cannot
        enforce, ``OSError`` when the groups cannot be made.
        """
        asked = () if limits is None else limits.asked()
        if not asked and not contain:
            return None
        version: dict[str, int] = {}  # limit name -> the cgroup version enforcing it
        v1_used: set[Hierarchy] = set()
        missing: list[tuple[str, str]] = []
        for name in asked:
            controller2, controller1 = CONTROLLERS[2][name], CONTROLLERS[1][name]
            if self.v2 is not None and controller2 in self._v2_controllers:
                version[name] = 2
            elif (hierarchy := self._v1_of(controller1)) is not None:
                version[name] = 1
                v1_used.add(hierarchy)
            else:
                needs = controller2 if controller1 == controller2 else (
                    f"{controller2} (v2) or {controller1} (v1)")
                missing.append((name, needs))
        device = None
        if limits is not None and (limits.io_read_bps or limits.io_write_bps):
            device = block_device(cwd)
            if device is None:
                for name in ("io_read_bps", "io_write_bps"):
                    if name in version:
                        del version[name]
                        missing.append((name, "a block device"))
        if missing and (limits is None or limits.strict):
            raise Unenforceable(_missing_message(missing, cwd))
        v2_used = 2 in version.values()
        if not v2_used:
            # The tree, and what the job used, in v1 where there is v1.
            for controller in V1_ALWAYS:
                if (hierarchy := self._v1_of(controller)) is not None:
                    v1_used.add(hierarchy)
            if not v1_used and self.v2 is not None:
                v2_used = True  # containment only, in v2
        if not v2_used and not v1_used:
            return None  # best effort, and nothing to hold the tree with
        groups = self._spare((v2_used, frozenset(v1_used))) or self._create(v2_used, v1_used)
        try:
            refused = self._apply(groups, limits, device)
        except BaseException:
            groups.remove(wait=0)
            raise
        if asked:
            for name in refused:
                version.pop(name, None)
            groups.unenforced = tuple(n for n in Limits.NAMES if n in asked and n not in version)
            versions = sorted({f"cgroup{v}" for v in version.values()})
            groups.enforced_by = "+".join(versions) or "none"
        return groups

    def _apply(
        self, groups: JobCgroups, limits: Limits | None, device: Device | None
    ) -> list[str]:
        """Write the limit files; return the names of limits the kernel refused (best effort).

        Raise `Unenforceable` if it refused a strict one.
        """
        # (hierarchy, file, text, controller); hierarchy None: the v2 group
        writes: list[tuple[Hierarchy | None, str, str, str]] = []
        if limits is not None and groups.v2 is not None:
            for controller, file, text in v2_limit_files(limits, device):
                if controller in self._v2_controllers:
                    writes.append((None, file, text, controller))
        for controller, file, text in [] if limits is None else v1_limit_files(limits, device):
            hierarchy = self._v1_of(controller)
            if hierarchy is not None and hierarchy in groups.v1:
                writes.append((hierarchy, file, text, controller))
        if [(h, f, t) for h, f, t, _ in writes] != groups.written:
            # Reused folders with other limits: back to none first (memsw before
            # memory, so that memory never exceeds memory+swap).
            for hierarchy, file, text in reversed(groups.written):
                _write(groups.folder(hierarchy) / file, _UNLIMITED[file](text))
            groups.written = []
        else:
            writes = []  # the same limits as the folders' last job: all in force
        refused: list[str] = []
        for hierarchy, file, text, controller in writes:
            group = groups.folder(hierarchy)
            try:
                _write(group / file, text)
            except FileNotFoundError:
                if file in ("memory.swap.max", "memory.memsw.limit_in_bytes"):
                    continue  # no swap accounting in this kernel: no swap to escape to
                raise
            except OSError as exc:
                assert limits is not None
                names = [n for n in _names_of(controller) if getattr(limits, n) is not None]
                if limits.strict:
                    raise Unenforceable(
                        f"cannot enforce {', '.join(names)}: the kernel refused"
                        f" {file} = {text!r} ({exc.strerror or exc})"
                    ) from None
                refused += names
                continue
            groups.written.append((hierarchy, file, text))
        for hierarchy, file, _ in groups.written:
            if file == "pids.max" and hierarchy is not None:
                assert limits is not None
                groups.pids_max = limits.pids  # `join` makes room for the spawning thread
            if file in ("memory.max", "memory.limit_in_bytes"):
                groups.memory_limited = True
        return refused

    def _create(self, v2: bool, v1: set[Hierarchy]) -> JobCgroups:
        name = f"{JOB_PREFIX}{next(self._ids)}"
        groups = JobCgroups(None, {}, owner=self)
        try:
            if v2:
                groups.v2 = self._mkdir(None, name)
            for hierarchy in sorted(v1, key=lambda h: h.key):
                groups.v1[hierarchy] = self._mkdir(hierarchy, name)
        except BaseException:
            groups.remove(wait=0)
            raise
        return groups

    def _mkdir(self, hierarchy: Hierarchy | None, name: str) -> Path:
        base = self.bases[hierarchy]
        path = base / name
        try:
            path.mkdir()
        except FileNotFoundError:  # first job, or the last pool closing removed it
            self._make_base(hierarchy)
            path.mkdir()
        return path

    def _make_base(self, hierarchy: Hierarchy | None) -> None:
        base = self.bases[hierarchy]
        base.mkdir(exist_ok=True)
        if hierarchy is None and self._v2_controllers:
            # Our folder passes the controllers on to the job groups under it.
            wanted = " ".join(f"+{c}" for c in sorted(self._v2_controllers))
            _write(base / "cgroup.subtree_control", wanted)

    # -- reuse ----------------------------------------------------------------

    def _spare(self, key: tuple[bool, frozenset[Hierarchy]]) -> JobCgroups | None:
        """Spare groups for a new job; None if there are none.

        They keep the name of the job they were made for: renaming them (to
        tell spare groups from running jobs' by name) cost two renames per
        hierarchy per job, about 0.1 ms, and nothing needs the difference
        (a dead run's groups, spare or not, are killed and removed alike).
        """
        with self._lock:
            spares = self._spares.get(key)
            return spares.pop() if spares else None

    def take_back(self, done: JobCgroups) -> bool:
        """Keep the folders of an ended job for a later one; False if they must go.

        Only v1 folders are kept (v2 counters cannot be reset).  Counters are
        reset (the OOM kill count, which cannot be, is noted), the limits
        stay until a job with others comes (`_apply`), and a new
        `JobCgroups` holds the folders, so that the ended job's object can
        reach nothing of the next job.
        """
        if done.v2 is not None:
            return False
        with self._lock:
            if len(self._spares.get(done.key, ())) >= self.MAX_SPARES:
                return False
        try:
            usage = done._file("memory", "memory.usage_in_bytes")
            if usage is not None and int(_read(usage)) > self.REUSE_MAX_MEMORY:
                return False
            for controller, file, text in _RESETS:
                if (path := done._file(controller, file)) is not None:
                    _write(path, text)
            # The ended job's tree is gone: no OOM kill can have come since its end read.
            oom_base = done._oom_count() if done._oom_seen is None else done._oom_seen
            io_base = done._io_bytes() or (0, 0)
            # The same folders, so the same file names (cached: read for every job).
            spare = JobCgroups(None, dict(done.v1), owner=self, reused=True,
                               written=list(done.written), oom_base=oom_base,
                               io_base=io_base, files=dict(done._files), order=done._order,
                               tree=done._tree)
        except (OSError, ValueError) as exc:
            log.debug("not reusing %s: %s", done.paths(), exc)
            return False
        with self._lock:
            self._spares.setdefault(spare.key, []).append(spare)
        return True

    def close(self) -> None:
        """Remove the spare groups, then our folders where no job group is left in them."""
        with self._lock:
            spares = [groups for kept in self._spares.values() for groups in kept]
            self._spares.clear()
        for groups in spares:
            groups.remove(wait=0)
        for base in self.bases.values():
            with contextlib.suppress(OSError):
                base.rmdir()


#: Counters set back to zero before a later job uses the folders: cpuacct's
#: time, memory's peak (to what is charged now), blkio's bytes (where the
#: kernel does: `JobCgroups.io_base` counts from what is left).
_RESETS = (
    ("cpuacct", "cpuacct.usage", "0"),
    ("memory", "memory.max_usage_in_bytes", "0"),
    ("blkio", "blkio.reset_stats", "1"),
)


def _no_device_rule(text: str) -> str:
    return f"{text.split()[0]} 0"  # "MAJ:MIN 0" deletes the device's rule


#: What undoes each v1 limit file (given the text written), for reuse.
_UNLIMITED = {
    "cpu.cfs_period_us": lambda text: text,  # the period stays: no quota is set
    "cpu.cfs_quota_us": lambda text: "-1",
    "memory.limit_in_bytes": lambda text: "-1",
    "memory.memsw.limit_in_bytes": lambda text: "-1",
    "pids.max": lambda text: "max",
    "blkio.throttle.read_bps_device": _no_device_rule,
    "blkio.throttle.write_bps_device": _no_device_rule,
}


def _names_of(controller: str) -> list[str]:
    """The limits a controller enforces (v1 or v2 name)."""
    return [name for name, c in CONTROLLERS[1].items() if c == controller] or [
        name for name, c in CONTROLLERS[2].items() if c == controller
    ]


def _missing_message(missing: list[tuple[str, str]], cwd: str | None) -> str:
    parts = []
    for name, needs in missing:
        if needs == "a block device":
            parts.append(
                f"{name} needs a block device behind the working directory"
                f" {cwd or os.getcwd()!r}, and it has none (tmpfs, overlay or network"
                " filesystem)"
            )
        else:
            parts.append(f"{name} needs the {needs} controller, which jobkit cannot use here")
    return "cannot enforce the limits: " + "; ".join(parts) + " (see docs/limits.md)"


_detect_lock = threading.Lock()
_detected: tuple[bool, CgroupTree | None] = (False, None)


def _writable(path: Path) -> bool:
    probe = path / f"{OWNER_PREFIX}{os.getpid()}"
    try:  # a probe: the folder is made again by the first job that needs it
        probe.mkdir(exist_ok=True)
        probe.rmdir()
        return True
    except OSError:
        return False


def detect() -> CgroupTree | None:
    """This process's `CgroupTree`, or None where it may create no cgroup at all."""
    global _detected
    with _detect_lock:
        done, tree = _detected
        if done:
            return tree
        v2, v1 = None, []
        for hierarchy in hierarchies.current():
            if hierarchy.version == 2:
                parent = v2_parent(hierarchy.own)
                if _writable(parent):
                    v2 = attrs.evolve(hierarchy, controllers=_v2_controllers(parent, hierarchy))
            elif _writable(hierarchy.own):
                v1.append(hierarchy)
        tree = CgroupTree(v2, v1) if v2 is not None or v1 else None
        if tree is not None:
            sweep(tree)
        _detected = (True, tree)
        return tree


def sweep(tree: CgroupTree) -> None:
    """Remove the empty folders that dead jobkit processes left next to ours."""
    for base in set(tree.bases.values()):
        try:
            neighbours = list(base.parent.iterdir())
        except OSError:
            continue
        for folder in neighbours:
            owner = folder.name.removeprefix(OWNER_PREFIX)
            if folder == base or not folder.name.startswith(OWNER_PREFIX) or not owner.isdigit():
                continue
            if Path(f"/proc/{owner}").exists():
                continue  # alive (or its pid reused): never touch it
            remove_owner_folder(folder)


def remove_owner_folder(folder: Path) -> None:
    """Remove the folder of a dead jobkit process, with its empty job and spare groups.

    Groups with processes left in them stay (rmdir fails): killing those is
    for whoever knows they are jobs (`jobkit.core.leftovers`).
    """
    try:
        children = list(folder.iterdir())
    except OSError:
        return
    for child in children:
        if child.name.startswith((JOB_PREFIX, SPARE_PREFIX)):
            with contextlib.suppress(OSError):
                child.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _forget_after_fork() -> None:
    # Our folders are named after our pid: a forked child must find its own.
    global _detected
    _detected = (False, None)


os.register_at_fork(after_in_child=_forget_after_fork)
