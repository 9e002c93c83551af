"""Limits as values, and the text of the cgroup files that enforce and account them.

No kernel needed: these run everywhere, including the cgroup v2 formats on
machines where no v2 controller is writable (tests/core/test_limits.py runs
them for real).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobkit import Limits
from jobkit.core import cgroup_formats as formats
from jobkit.core.cgroups import v2_parent
from jobkit.core.hierarchies import Hierarchy, parse

MIB = 1 << 20


def test_limits_take_human_sizes_and_say_what_they_are() -> None:
    limits = Limits(cpu=0.5, memory="256M", pids=100, io_read_bps="10M", io_write_bps=4096)
    assert (limits.cpu, limits.memory, limits.pids) == (0.5, 256 * MIB, 100)
    assert (limits.io_read_bps, limits.io_write_bps, limits.strict) == (10 * MIB, 4096, True)
    assert limits.asked() == ("cpu", "memory", "pids", "io_read_bps", "io_write_bps")
    assert limits.describe() == (
        "cpu 0.5, memory 256 MiB, pids 100, io read 10 MiB/s, io write 4 KiB/s"
    )
    assert Limits(memory="1.5GiB", strict=False).describe() == "memory 1.5 GiB, best effort"
    assert Limits().asked() == () and Limits().describe() == "no limits"
    assert Limits(cpu=2) == Limits(cpu=2.0)  # a value: equal, hashable, frozen
    assert hash(Limits(pids=3)) == hash(Limits(pids=3))
    with pytest.raises(AttributeError):
        limits.cpu = 1  # type: ignore[misc]


def test_limits_round_trip_as_plain_values() -> None:
    limits = Limits(cpu=0.25, memory="64M", strict=False)
    assert limits.to_dict() == {
        "cpu": 0.25, "memory": 64 * MIB, "pids": None,
        "io_read_bps": None, "io_write_bps": None, "strict": False,
    }
    assert Limits.from_dict(limits.to_dict()) == limits
    with pytest.raises(ValueError, match="unknown limit 'swap'"):
        Limits.from_dict({"swap": 1})
    with pytest.raises(TypeError):
        Limits.from_dict(["memory"])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"cpu": 0}, ValueError, "cpu must be between"),
        ({"cpu": -1}, ValueError, "cpu must be between"),
        ({"cpu": float("nan")}, ValueError, "cpu must be between"),
        ({"cpu": float("inf")}, ValueError, "cpu must be between"),
        ({"cpu": 0.001}, ValueError, "cpu must be between 0.01"),
        ({"cpu": "0.5"}, TypeError, "cpu must be a number"),
        ({"cpu": True}, TypeError, "cpu must be a number"),
        ({"memory": 0}, ValueError, "memory must be at least 1 MiB"),
        ({"memory": "512K"}, ValueError, "memory must be at least 1 MiB"),
        ({"memory": -5}, ValueError, "must not be negative"),
        ({"memory": "12Q"}, ValueError, "memory must be a size"),
        ({"memory": "0.5"}, ValueError, "whole number of bytes"),
        ({"memory": 1.5}, TypeError, "memory must be a size"),
        ({"pids": 0}, ValueError, "pids must be at least 1"),
        ({"pids": 1 << 30}, ValueError, "pids must be at most"),
        ({"pids": 2.0}, TypeError, "pids must be a whole number"),
        ({"pids": False}, TypeError, "pids must be a whole number"),
        ({"io_read_bps": 0}, ValueError, "io_read_bps must be at least"),
        ({"io_write_bps": "fast"}, ValueError, "io_write_bps must be a size"),
        ({"strict": "yes"}, TypeError, "strict must be True or False"),
    ],
)
def test_nonsense_is_refused(kwargs: dict[str, object], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        Limits(**kwargs)  # type: ignore[arg-type]


# -- cgroup v2 file formats ---------------------------------------------------


def test_cpu_max_is_quota_and_period_in_microseconds() -> None:
    assert formats.cpu_max(0.5) == "50000 100000"
    assert formats.cpu_max(2) == "200000 100000"
    assert formats.cpu_max(0.25, period_us=200_000) == "50000 200000"
    assert formats.cpu_max(0.01) == "1000 100000"  # the kernel's smallest quota


def test_io_max_names_the_device_by_major_and_minor() -> None:
    assert formats.io_max((8, 16), 1048576, None) == "8:16 rbps=1048576 wbps=max"
    assert formats.io_max((254, 0), None, 4096) == "254:0 rbps=max wbps=4096"


def test_v2_files_for_every_limit() -> None:
    limits = Limits(cpu=0.25, memory="256M", pids=100, io_read_bps="1M", io_write_bps="2M")
    assert formats.v2_limit_files(limits, (8, 0)) == [
        ("cpu", "cpu.max", "25000 100000"),
        ("memory", "memory.max", str(256 * MIB)),
        ("memory", "memory.swap.max", "0"),
        ("pids", "pids.max", "100"),
        ("io", "io.max", f"8:0 rbps={MIB} wbps={2 * MIB}"),
    ]
    # Without a block device there is nothing to write io limits to.
    assert [f for _, f, _ in formats.v2_limit_files(limits, None)] == [
        "cpu.max", "memory.max", "memory.swap.max", "pids.max",
    ]


def test_v1_files_for_every_limit_memory_before_memory_and_swap() -> None:
    limits = Limits(cpu=1.5, memory="64M", pids=50, io_read_bps="1M", io_write_bps="3M")
    assert formats.v1_limit_files(limits, (254, 0)) == [
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "150000"),
        ("memory", "memory.limit_in_bytes", str(64 * MIB)),
        ("memory", "memory.memsw.limit_in_bytes", str(64 * MIB)),
        ("pids", "pids.max", "50"),
        ("blkio", "blkio.throttle.read_bps_device", f"254:0 {MIB}"),
        ("blkio", "blkio.throttle.write_bps_device", f"254:0 {3 * MIB}"),
    ]


def test_usage_files_are_parsed() -> None:
    assert formats.parse_keyed("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n") == {
        "usage_usec": 1500, "user_usec": 1000, "system_usec": 500,
    }
    oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    assert formats.parse_keyed(oom)["oom_kill"] == 3
    events = "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n"
    assert formats.parse_keyed(events)["oom_kill"] == 2
    io_stat = (
        "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
        "254:0 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n"
    )
    assert formats.parse_io_stat(io_stat) == (4196, 8192)
    blkio = "254:0 Read 4096\n254:0 Write 512\n254:0 Sync 0\n254:0 Total 4608\nTotal 4608\n"
    assert formats.parse_blkio_bytes(blkio) == (4096, 512)
    assert formats.parse_io_stat("") == (0, 0) and formats.parse_blkio_bytes("Total 0\n") == (0, 0)
    usage_all = "cpu user system\n0 1000 20\n1 500 5\n"
    assert formats.parse_cpuacct_all(usage_all) == (1500, 25)


# -- where the hierarchies are ------------------------------------------------

HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
7:blkio:/
4:memory:/process_api/466c
2:cpuacct:/
1:cpu:/
0::/
"""


def test_a_hybrid_layout_v1_controllers_and_an_empty_unified_hierarchy() -> None:
    found = {h.name: h for h in parse(HYBRID_MOUNTS, HYBRID_CGROUP)}
    assert sorted(found) == ["blkio", "cgroup2", "cpu", "cpuacct", "memory", "pids"]
    assert found["memory"].own == Path("/sys/fs/cgroup/memory/process_api/466c")
    assert found["cpu"].own == Path("/sys/fs/cgroup/cpu")
    assert found["cgroup2"].own == Path("/sys/fs/cgroup/unified")
    # A thread elsewhere in one hierarchy is found there.
    memory = found["memory"]
    assert memory.of("4:memory:/other\n0::/\n") == Path("/sys/fs/cgroup/memory/other")


def test_comounted_controllers_and_a_container_namespace() -> None:
    mounts = (
        "1 0 0:1 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "2 0 0:2 /docker/abc /sys/fs/cgroup/my\\040mem rw - cgroup cgroup rw,memory\n"
    )
    lines = "3:cpu,cpuacct:/docker/abc/sub\n2:memory:/elsewhere\n"
    (cpu,) = parse(mounts, lines)  # memory: our cgroup is outside what the mount shows
    assert cpu.controllers == {"cpu", "cpuacct"} and cpu.name == "cpu,cpuacct"
    assert cpu.own == Path("/sys/fs/cgroup/cpu,cpuacct/sub")
    lines = "3:cpu,cpuacct:/docker/abc\n2:memory:/docker/abc/x\n"
    found = {h.name: h for h in parse(mounts, lines)}
    assert found["memory"].own == Path("/sys/fs/cgroup/my mem/x")  # \040 is a space


def test_v2_only() -> None:
    mounts = "1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
    (unified,) = parse(mounts, "0::/user.slice/app.scope\n")
    assert unified == Hierarchy(
        2, frozenset(), Path("/sys/fs/cgroup/user.slice/app.scope"), "", Path("/sys/fs/cgroup"), "/"
    )


def test_jobkit_makes_its_v2_folder_next_to_its_leaf_in_a_delegated_subtree(
    tmp_path: Path,
) -> None:
    # A directory standing in for cgroupfs: the rule reads two files and an xattr.
    unit = tmp_path / "jobkit.service"
    leaf = unit / "main"
    leaf.mkdir(parents=True)
    (leaf / "cgroup.subtree_control").write_text("")
    assert v2_parent(leaf) == leaf  # not delegated: stay under our own cgroup
    try:
        os.setxattr(unit, "user.delegate", b"1")
    except OSError:
        pytest.skip("this filesystem takes no user xattrs")
    assert v2_parent(leaf) == unit  # delegated: our leaf cannot pass controllers on
    (leaf / "cgroup.subtree_control").write_text("memory pids\n")
    assert v2_parent(leaf) == leaf  # it can: use it
