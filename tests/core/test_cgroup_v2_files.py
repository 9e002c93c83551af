"""The cgroup v2 path, against a folder standing in for cgroupfs.

The machines this project is built on have their controllers in cgroup v1
hierarchies, so the real v2 tests (tests/core/test_limits.py,
tests/core/test_cgroups.py) skip there.  These run anywhere: `FakeCgroupfs`
gives each group jobkit makes the interface files the kernel would, and the
tests read what jobkit wrote into them, against the formats of the kernel's
Documentation/admin-guide/cgroup-v2.rst.  Nothing is enforced, so the jobs
run here are ones that end by themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit import JobPool, Limits, State
from jobkit.core import cgroups
from jobkit.core.cgroups import CgroupTree, JobCgroups, Unenforceable
from jobkit.core.hierarchies import Hierarchy

#: What a new v2 group holds of what jobkit touches, as the kernel makes it.
NEW_GROUP = {
    "cgroup.procs": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.kill": "",
    "cgroup.subtree_control": "",
    "cpu.max": "max 100000\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.peak": "0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
    "pids.max": "max\n",
    "io.max": "",
    "io.stat": "",
}
#: The period of a CPU quota, in µs, as cgroup-v2.rst gives ``cpu.max``'s default.
PERIOD_US = 100_000
MIB = 1 << 20


class FakeCgroupfs:
    """A v2 hierarchy in a temporary folder: a new group gets `NEW_GROUP`'s files.

    Attributes:
        own: The folder of "our" cgroup; jobkit's folder goes under it.
        files: The files a new group gets (drop one for a kernel without it).
        refused: Files made as folders, so that writing them fails as a
            kernel refusing a value does.
    """

    def __init__(self, own: Path, enabled: frozenset[str]) -> None:
        self.own = own
        self.files = dict(NEW_GROUP)
        self.refused: set[str] = set()
        own.mkdir()
        (own / "cgroup.subtree_control").write_text(" ".join(sorted(enabled)) + "\n")
        self.tree = CgroupTree(Hierarchy(2, enabled, own, "", own, "/"), [])

    def populate(self, group: Path) -> None:
        for name, text in self.files.items():
            if name in self.refused:
                (group / name).mkdir()
            else:
                (group / name).write_text(text)

    def read(self, group: Path, name: str) -> str:
        return (group / name).read_text().strip()


@pytest.fixture
def fake_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCgroupfs]:
    """A fake v2 hierarchy enabling cpu, io, memory and pids for jobkit's groups."""
    fake = FakeCgroupfs(tmp_path / "cgroup", frozenset({"cpu", "io", "memory", "pids"}))
    mkdir, make_base = CgroupTree._mkdir, CgroupTree._make_base

    def fake_mkdir(tree: CgroupTree, hierarchy: Hierarchy | None, name: str) -> Path:
        group = mkdir(tree, hierarchy, name)
        fake.populate(group)
        return group

    def fake_make_base(tree: CgroupTree, hierarchy: Hierarchy | None) -> None:
        base = tree.bases[hierarchy]
        base.mkdir(exist_ok=True)
        fake.populate(base)
        make_base(tree, hierarchy)

    def fake_write(path: str | Path, text: str) -> None:
        if not str(path).startswith(f"{fake.own}/"):
            return write(path, text)
        # A write sets a cgroup file's whole value; a plain file must be truncated for that.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    write = cgroups._write
    monkeypatch.setattr(CgroupTree, "_mkdir", fake_mkdir)
    monkeypatch.setattr(CgroupTree, "_make_base", fake_make_base)
    monkeypatch.setattr(cgroups, "_write", fake_write)
    yield fake


def _device(folder: Path) -> tuple[int, int] | None:
    """The whole disk behind ``folder``, from stat and sysfs (as cgroup-v2.rst's io.max wants)."""
    dev = os.stat(folder).st_dev
    sysfs = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if os.major(dev) == 0 or not sysfs.exists():
        return None
    if (sysfs / "partition").exists():
        major, minor = (sysfs.resolve().parent / "dev").read_text().strip().split(":")
        return int(major), int(minor)
    return os.major(dev), os.minor(dev)


def _made(fake: FakeCgroupfs, limits: Limits | None, cwd: Path | None = None) -> JobCgroups:
    groups = fake.tree.make(limits, None if cwd is None else str(cwd), contain=True)
    assert groups is not None and groups.v2 is not None and groups.v1 == {}
    assert groups.v2.parent == fake.own / f"jobkit-{os.getpid()}"
    return groups


def test_each_limit_is_written_in_the_v2_format(fake_v2: FakeCgroupfs, tmp_path: Path) -> None:
    device = _device(tmp_path)
    io = {} if device is None else {"io_read_bps": "10M", "io_write_bps": "1M"}
    limits = Limits(cpu=0.5, memory="64M", pids=20, **io)  # type: ignore[arg-type]
    groups = _made(fake_v2, limits, tmp_path)
    group = groups.v2
    assert group is not None
    # jobkit's folder passes the controllers on to the job groups under it.
    base = group.parent
    assert sorted(fake_v2.read(base, "cgroup.subtree_control").split()) == [
        "+cpu", "+io", "+memory", "+pids"]
    # "$MAX $PERIOD": half a CPU is half of each period.
    assert fake_v2.read(group, "cpu.max") == f"{PERIOD_US // 2} {PERIOD_US}"
    assert fake_v2.read(group, "memory.max") == str(64 * MIB)
    assert fake_v2.read(group, "memory.swap.max") == "0"  # no escape into swap
    assert fake_v2.read(group, "pids.max") == "20"
    if device is not None:
        assert fake_v2.read(group, "io.max") == (
            f"{device[0]}:{device[1]} rbps={10 * MIB} wbps={MIB}")
    assert (groups.enforced_by, groups.unenforced) == ("cgroup2", ())
    assert groups.memory_limited
    # The v2 start step writes the job's own pid to this group's cgroup.procs.
    argv = groups.start_argv(["/bin/true", "a b"])
    assert argv[0] == "/bin/sh" and argv[-3:] == [str(group / "cgroup.procs"), "/bin/true", "a b"]


def test_only_the_io_limit_asked_is_set(fake_v2: FakeCgroupfs, tmp_path: Path) -> None:
    device = _device(tmp_path)
    if device is None:
        pytest.skip(f"{tmp_path} is on no block device, so io.max has no device to name")
    group = _made(fake_v2, Limits(io_write_bps=4096), tmp_path).v2
    assert group is not None
    assert fake_v2.read(group, "io.max") == f"{device[0]}:{device[1]} rbps=max wbps=4096"
    for name in ("cpu.max", "memory.max", "memory.swap.max", "pids.max"):
        assert fake_v2.read(group, name) == NEW_GROUP[name].strip(), name


def test_without_swap_accounting_the_memory_limit_still_holds(fake_v2: FakeCgroupfs) -> None:
    del fake_v2.files["memory.swap.max"]  # a kernel without swap accounting has no such file
    group = _made(fake_v2, Limits(memory="8M")).v2
    assert group is not None
    assert fake_v2.read(group, "memory.max") == str(8 * MIB)
    assert not (group / "memory.swap.max").exists()


def test_a_controller_not_enabled_is_named_or_left_out_by_best_effort(
    tmp_path: Path,
) -> None:
    fake = FakeCgroupfs(tmp_path / "cgroup", frozenset({"memory", "pids"}))
    with pytest.raises(Unenforceable, match=r"cpu needs the cpu controller"):
        fake.tree.make(Limits(cpu=1), None, contain=False)
    assert fake.tree.enforcement() == {"memory": "cgroup2", "pids": "cgroup2"}


def test_best_effort_runs_without_what_cannot_be_enforced(fake_v2: FakeCgroupfs) -> None:
    fake_v2.tree._v2_controllers = frozenset({"memory"})
    groups = _made(fake_v2, Limits(cpu=1, memory="16M", strict=False))
    assert (groups.enforced_by, groups.unenforced) == ("cgroup2", ("cpu",))
    assert groups.v2 is not None
    assert fake_v2.read(groups.v2, "cpu.max") == NEW_GROUP["cpu.max"].strip()
    assert fake_v2.read(groups.v2, "memory.max") == str(16 * MIB)


def test_a_value_the_kernel_refuses_is_an_error_naming_the_file(
    fake_v2: FakeCgroupfs,
) -> None:
    fake_v2.refused.add("pids.max")
    with pytest.raises(Unenforceable, match=r"cannot enforce pids: the kernel refused pids.max"):
        fake_v2.tree.make(Limits(pids=10), None, contain=False)
    groups = _made(fake_v2, Limits(pids=10, memory="4M", strict=False))
    assert (groups.enforced_by, groups.unenforced) == ("cgroup2", ("pids",))


def test_a_job_joins_its_v2_group_through_the_start_step(
    fake_v2: FakeCgroupfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroups, "_detected", (True, fake_v2.tree))
    with JobPool() as pool:
        job = pool.create("sh", ["-c", "echo $$"], limits=Limits(memory="64M", pids=8))
        status = pool.wait(job, 30)
        assert (status.state, status.exit_code) == (State.COMPLETED, 0)
        assert status.enforced_by == "cgroup2"
        # The start step wrote the pid that then ran the command, and that
        # pid is the job's: the command ran in the group from its start.
        printed = int(pool.output(job).stdout)
        (group,) = [p for p in (fake_v2.own / f"jobkit-{os.getpid()}").iterdir() if p.is_dir()]
        assert fake_v2.read(group, "cgroup.procs") == str(printed) == str(status.pid)
        assert fake_v2.read(group, "memory.max") == str(64 * MIB)
        assert fake_v2.read(group, "pids.max") == "8"
        # Its usage was read from the group's cpu.stat (this fake kernel counts nothing).
        assert status.usage is not None and status.usage.source == "cgroup"
        assert status.usage.cpu_s == 0 and status.usage.peak_memory == 0
