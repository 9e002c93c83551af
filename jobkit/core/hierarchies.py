"""Where the cgroup hierarchies are mounted, and where this process sits in each.

cgroup v2 has one hierarchy (the unified one); the controllers its children
may use are those in ``cgroup.subtree_control`` of the cgroup we run in.
cgroup v1 has one hierarchy per mount, each with its own controllers
(``cpu``, ``memory``, ...), and this process sits somewhere in each.
`parse` reads ``/proc/self/mountinfo`` and ``/proc/self/cgroup``; it is a
pure function, so that every layout (hybrid, v1 only, v2 only, a container's
cgroup namespace) is tested on any machine.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

__all__ = ["USABLE_V1", "Hierarchy", "current", "parse"]

#: The v1 controllers jobkit puts jobs in.  Others are left alone: ``cpuset``
#: needs CPUs and nodes set before a task may join, the rest enforce nothing
#: jobkit offers.
USABLE_V1 = frozenset({"cpu", "cpuacct", "memory", "pids", "blkio", "freezer"})


@attrs.frozen
class Hierarchy:
    """One mounted cgroup hierarchy.

    Attributes:
        version: 1 or 2.
        controllers: v1: the controllers mounted there (of `USABLE_V1`).
            v2: those enabled for the children of ``own`` (its
            ``cgroup.subtree_control``), which jobkit's groups may use.
        own: The folder of the cgroup this process runs in.
        key: How ``/proc/PID/cgroup`` names the hierarchy: ``""`` for v2,
            the controllers as listed there for v1 (``"cpu,cpuacct"``).
        mount_point: Where it is mounted.
        root: The cgroup the mount shows at its top (``"/"`` usually).
    """

    version: int
    controllers: frozenset[str]
    own: Path
    key: str = ""
    mount_point: Path = Path("/")
    root: str = "/"

    @property
    def name(self) -> str:
        """``"cgroup2"``, or the v1 controllers as mounted (``"cpu,cpuacct"``)."""
        return "cgroup2" if self.version == 2 else ",".join(sorted(self.controllers))

    def folder(self, path: str) -> Path | None:
        """The folder of cgroup ``path`` (as ``/proc/PID/cgroup`` names it), if mounted here."""
        return _inside(str(self.mount_point), self.root, path)

    def of(self, proc_cgroup: str) -> Path | None:
        """The folder of the cgroup a ``/proc/.../cgroup`` text puts its process in here."""
        for line in proc_cgroup.splitlines():
            number, _, rest = line.partition(":")
            listed, _, path = rest.partition(":")
            if listed == self.key and (number == "0") == (self.version == 2):
                return self.folder(path)
        return None


_OCTAL = re.compile(r"\\([0-7]{3})")


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """``(fstype, root, mount point, super options)`` of each cgroup mount."""
    found = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        # The kernel escapes spaces and such in paths as octal (\040).
        mount_point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        found.append((tail[0], fields[3], mount_point, set(tail[2].split(","))))
    return found


def _inside(mount_point: str, root: str, path: str) -> Path | None:
    """The folder of cgroup ``path`` in a mount of the hierarchy's ``root``."""
    if root != "/":
        if path != root and not path.startswith(root + "/"):
            return None  # our cgroup is outside what this mount shows
        path = path[len(root):]
    return Path(mount_point) / path.lstrip("/")


def parse(mountinfo: str, proc_cgroup: str) -> list[Hierarchy]:
    """Every cgroup hierarchy this process can reach, with its own cgroup in each.

    A v2 hierarchy's ``controllers`` are left empty here: they are read
    from its ``cgroup.subtree_control`` (see `current`).
    """
    mounts = _mounts(mountinfo)
    found: list[Hierarchy] = []
    for line in proc_cgroup.splitlines():
        number, _, rest = line.partition(":")
        listed, _, path = rest.partition(":")
        if not number.isdigit():
            continue
        if number == "0" and listed == "":
            for fstype, root, mount_point, _ in mounts:
                if fstype == "cgroup2" and (own := _inside(mount_point, root, path)):
                    found.append(Hierarchy(2, frozenset(), own, "", Path(mount_point), root))
                    break
            continue
        names = set(listed.split(","))
        for fstype, root, mount_point, options in mounts:
            if fstype == "cgroup" and names <= options:
                usable = frozenset(names & USABLE_V1)
                if usable and (own := _inside(mount_point, root, path)):
                    found.append(Hierarchy(1, usable, own, listed, Path(mount_point), root))
                break
    return found


def current() -> list[Hierarchy]:
    """This process's hierarchies now, v2 ones with the controllers enabled for children."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        return []
    found = []
    for hierarchy in parse(mountinfo, proc_cgroup):
        if hierarchy.version == 2:
            try:
                enabled = (hierarchy.own / "cgroup.subtree_control").read_text().split()
            except OSError:
                enabled = []
            hierarchy = attrs.evolve(hierarchy, controllers=frozenset(enabled))
        found.append(hierarchy)
    return found
