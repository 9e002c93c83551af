"""Limits enforced by the real kernel: OOM kills, CPU quotas, fork bombs, no network,
accounting, and no cgroup left behind.

These run where jobkit may create cgroups (as root, or in a delegated subtree)
and skip elsewhere, saying why.  On the machines this project is built on the
controllers are cgroup v1 hierarchies; the v2 test runs wherever a v2
controller is enabled for jobkit.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit import JobPool, Limits, State
from jobkit.core import cgroups, records
from jobkit.core.cgroups import JobCgroups
from tests.support.cgroup_v2 import v2_missing
from tests.support.procs import process_alive
from tests.support.waiting import wait_until

MIB = 1 << 20
TREE = cgroups.detect()
ENFORCED = {} if TREE is None else TREE.enforcement()


def enforced(*names: str) -> pytest.MarkDecorator:
    missing = [name for name in names if name not in ENFORCED]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"this machine cannot enforce {', '.join(missing)} for jobkit (it needs the"
        " controller in cgroup v2 or v1, writable: root, or a delegated subtree)",
    )


def groups_of(pool: JobPool, job: str) -> JobCgroups:
    groups = pool._jobs[job].groups
    assert groups is not None
    return groups


def read(path: Path) -> str:
    return path.read_text().strip()


def start_time(pid: int) -> int | None:
    """When a live process started (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else int(fields[19])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a live process, from /proc (not from jobkit)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def pool() -> Iterator[JobPool]:
    with JobPool() as p:
        yield p


# -- memory -------------------------------------------------------------------

GIB_AT_ONCE = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1G", "count=1"]


@enforced("memory")
def test_a_gib_at_once_under_64m_is_oom_killed_and_reported_every_time(pool: JobPool) -> None:
    # dd's first act is to allocate its 1 GiB buffer, then it fills it: a job
    # moved into its cgroup after exec would sometimes get that far unlimited.
    for _ in range(20):
        job = pool.create(GIB_AT_ONCE[0], GIB_AT_ONCE[1:], limits=Limits(memory="64M"))
        status = pool.wait(job, 30)
        assert (status.state, status.signal, status.oom_killed) == (
            State.KILLED, signal.SIGKILL, True
        ), status
        assert status.error == "out of memory (limit 64 MiB)"
        assert status.usage is not None and status.usage.source == "cgroup"
        assert status.usage.peak_memory is not None and status.usage.peak_memory <= 64 * MIB
        assert status.enforced_by == "cgroup1" if ENFORCED["memory"] == "cgroup1" else "cgroup2"
        pool.delete(job)


@enforced("memory")
def test_kill_9_is_not_taken_for_out_of_memory(pool: JobPool) -> None:
    job = pool.create("sh", ["-c", "echo up; exec sleep 1000"], limits=Limits(memory="64M"))
    next(iter(pool.follow(job, "stdout")))
    pool.stop(job, "KILL")
    status = pool.wait(job, 10)
    assert (status.state, status.signal, status.oom_killed, status.error) == (
        State.KILLED, signal.SIGKILL, False, None
    )


@enforced("memory")
def test_a_job_under_its_memory_limit_is_not_disturbed(pool: JobPool) -> None:
    script = "b = b'x' * (16 << 20); print(len(b))"
    job = pool.create(sys.executable, ["-c", script], limits=Limits(memory="128M"))
    status = pool.wait(job, 30)
    assert (status.state, status.exit_code, status.oom_killed) == (State.COMPLETED, 0, False)
    assert pool.output(job).stdout == b"16777216\n"


# -- cpu ----------------------------------------------------------------------


@enforced("cpu")
def test_a_busy_loop_under_a_quarter_cpu_uses_at_most_about_that(pool: JobPool) -> None:
    job = pool.create("sh", ["-c", "while :; do :; done"], limits=Limits(cpu=0.25))
    pid = pool.status(job).pid
    assert pid is not None
    wait_until(lambda: cpu_seconds(pid) > 0, what="the loop to run")
    used, began = cpu_seconds(pid), time.monotonic()
    wait_until(lambda: time.monotonic() - began >= 3, what="3 s of wall time")  # the measure
    rate = (cpu_seconds(pid) - used) / (time.monotonic() - began)
    assert 0.02 < rate <= 0.3, f"{rate:.3f} CPU-s per s"
    live = pool.status(job).usage  # jobkit's own figure agrees: the loop ran, limited
    assert live is not None and live.source == "cgroup" and 0 < live.cpu_s < 3 * 0.3 + 0.5
    pool.delete(job)


# -- pids ---------------------------------------------------------------------


def fork_bomb_held(pool: JobPool, shell: str, script: str, *, lasting: bool) -> None:
    """Run ``script`` under pids=50: at most 50 at any time, then delete kills every one.

    ``lasting``: its processes stay (so the job runs until deleted); otherwise
    they come and go, and the whole tree may die out by itself at any moment
    (then its groups are let go, and there is nothing left to count).
    """
    job = pool.create(shell, ["-c", script], limits=Limits(pids=50))
    seen: set[tuple[int, int]] = set()  # (pid, start time): a bomb recycles pids fast
    try:
        groups = groups_of(pool, job)
        pids = groups.v1_with("pids") or groups.v2
        assert pids is not None and read(pids / "pids.max") == "50"
        refused = "pids.events" if (pids / "pids.events").exists() else None

        def at_limit() -> bool:
            if not pool.status(job).running:
                return True  # died out
            if refused is not None:
                return int(read(pids / refused).split()[-1]) > 0  # "max N": forks refused
            return int(read(pids / "pids.current")) >= 50

        wait_until(at_limit, timeout=30, what="the bomb to reach its limit")
        for _ in range(20):
            members = groups.members()  # [] once the groups are let go
            assert len(members) <= 50
            assert int(read(pids / "pids.current")) <= 50
            seen.update((pid, start) for pid in members if (start := start_time(pid)) is not None)
    except (AssertionError, OSError):
        if lasting or pool.status(job).running:
            raise
        # It died out by itself (its groups are gone): nothing of it can run.
    if lasting:
        assert pool.status(job).running  # its first process is a sleep now
    pool.delete(job)
    assert not [pid for pid, start in seen if start_time(pid) == start]


@enforced("pids")
def test_a_fork_bomb_is_held_at_its_pids_limit_and_delete_removes_every_process(
    pool: JobPool,
) -> None:
    # First a bomb whose processes all stay (each forks two, then becomes a
    # sleep), and which would stop by itself at 2,047: should the limit fail,
    # the machine survives it and the test fails here.
    lasting = (
        "bomb() { if [ $1 -gt 0 ]; then bomb $(($1-1)) & bomb $(($1-1)) & fi;"
        " exec sleep 1000; }; bomb 10"
    )
    fork_bomb_held(pool, "sh", lasting, lasting=True)
    # Then the real one, :(){ :|:& };: written out in full.  bash retries a
    # fork that failed, so it stays at its limit; dash gives up, and the tree
    # usually dies out at once.
    shell = "bash" if shutil.which("bash") else "sh"
    fork_bomb_held(pool, shell, "bomb() { bomb | bomb & }; bomb", lasting=False)


# -- network ------------------------------------------------------------------

NETWORK_PROBE = """
import socket, sys
host = socket.socket()
try:
    host.connect(("127.0.0.1", int(sys.argv[1])))
    print("reached the host")
except OSError as exc:
    print("host unreachable:", type(exc).__name__)
inside = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(inside.getsockname(), timeout=5)
peer, _ = inside.accept()
client.sendall(b"ping")
print("loopback:", peer.recv(4).decode())
print("interfaces:", " ".join(sorted(name for _, name in socket.if_nameindex())))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs CAP_SYS_ADMIN (root)")
def test_without_network_the_job_reaches_only_its_own_loopback(pool: JobPool) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        job = pool.create(sys.executable, ["-c", NETWORK_PROBE, str(port)], network=False)
        status = pool.wait(job, 30)
        assert (status.state, status.exit_code, status.network) == (State.COMPLETED, 0, False)
        assert pool.output(job).stdout.decode().splitlines() == [
            "host unreachable: ConnectionRefusedError",
            "loopback: ping",
            "interfaces: lo",
        ]
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever knocked
        # The same probe with the network: it does reach the host.
        job = pool.create(sys.executable, ["-c", NETWORK_PROBE, str(port)])
        pool.wait(job, 30)
        assert pool.output(job).stdout.startswith(b"reached the host\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping CAP_SYS_ADMIN needs root to have it")
def test_without_network_where_that_is_impossible_is_an_error_not_a_silent_pass() -> None:
    script = (
        "from jobkit import JobPool\n"
        "with JobPool() as pool:\n"
        "    s = pool.wait(pool.create('true', network=False), 10)\n"
        "    print(s.state.value, s.error)\n"
    )
    out = subprocess.run(
        ["setpriv", "--bounding-set=-sys_admin", sys.executable, "-c", script],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("error network=False: cannot make a network namespace:")
    assert "CAP_SYS_ADMIN" in out.stdout


# -- accounting ---------------------------------------------------------------

WORKLOAD = """
import time
block = b"x" * (100 << 20)           # 100 MiB, every page touched
while time.process_time() < 0.5:     # 0.5 s of CPU
    pass
"""


@enforced("memory")
def test_accounting_of_a_known_workload_from_its_cgroups(pool: JobPool) -> None:
    job = pool.create(sys.executable, ["-c", WORKLOAD], limits=Limits(memory="1G"))
    status = pool.wait(job, 60)
    assert status.exit_code == 0
    usage = status.usage
    assert usage is not None and usage.source == "cgroup"
    assert 0.5 <= usage.cpu_s <= 1.5, usage
    assert usage.peak_memory is not None and 100 * MIB <= usage.peak_memory <= 200 * MIB, usage


def test_accounting_without_cgroups_comes_from_rusage(pool: JobPool) -> None:
    ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    big = WORKLOAD.replace("100 << 20", f"{ours + (100 << 20)}")  # more than we ever held
    job = pool.create(sys.executable, ["-c", big])
    status = pool.wait(job, 60)
    usage = status.usage
    assert usage is not None and usage.source == "rusage"
    assert 0.5 <= usage.cpu_s <= 1.5, usage
    assert usage.peak_memory is not None
    assert ours + 100 * MIB <= usage.peak_memory <= ours + 200 * MIB, usage
    # Below our own peak, rusage cannot tell the job's from ours (see Usage).
    small = pool.wait(pool.create("true"), 10).usage
    assert small is not None and small.source == "rusage" and small.peak_memory is None


@enforced("memory")
def test_usage_is_live_while_the_job_runs(pool: JobPool) -> None:
    job = pool.create("sh", ["-c", "echo up; exec sleep 1000"], limits=Limits(memory="64M"))
    next(iter(pool.follow(job, "stdout")))
    usage = pool.status(job).usage
    assert usage is not None and usage.source == "cgroup" and usage.peak_memory
    pool.delete(job)


def test_a_recent_usage_reading_serves_a_status_and_the_end_reads_anew(pool: JobPool) -> None:
    # A busy job's CPU time grows between any two reads of its group; a reading
    # young enough is handed out again (statuses are asked for often), and the
    # end is always read from the group.
    job = pool.create("sh", ["-c", "echo up; while :; do :; done"], limits=Limits(memory="64M"))
    next(iter(pool.follow(job, "stdout")))
    groups = groups_of(pool, job)
    first = groups.usage(max_age=3600)
    assert first is not None and groups.usage(max_age=3600) is first
    wait_until(lambda: groups.usage() != first, what="the busy job's CPU time to grow")
    pool.stop(job, "SIGKILL")
    end = pool.wait(job).usage
    assert end is not None
    assert end.cpu_user_s + end.cpu_system_s > first.cpu_user_s + first.cpu_system_s


@enforced("io_write_bps")
def test_io_limits_go_to_the_device_behind_the_working_directory(
    pool: JobPool, tmp_path: Path
) -> None:
    device = cgroups.block_device(str(tmp_path))
    if device is None:
        pytest.skip(f"{tmp_path} is on no block device (tmpfs?)")
    limits = Limits(io_read_bps="10M", io_write_bps="100M")
    script = "dd if=/dev/zero of=f bs=1M count=8 oflag=direct 2>/dev/null; echo up; exec sleep 1000"
    job = pool.create("sh", ["-c", script], cwd=tmp_path, limits=limits)
    next(iter(pool.follow(job, "stdout")))
    groups = groups_of(pool, job)
    where = f"{device[0]}:{device[1]}"
    if groups.v2 is not None:
        assert f"{where} rbps={10 * MIB} wbps={100 * MIB}" in read(groups.v2 / "io.max")
    else:
        blkio = groups.v1_with("blkio")
        assert blkio is not None
        assert read(blkio / "blkio.throttle.read_bps_device") == f"{where} {10 * MIB}"
        assert read(blkio / "blkio.throttle.write_bps_device") == f"{where} {100 * MIB}"
    usage = pool.status(job).usage
    assert usage is not None and usage.io_write_bytes is not None
    assert usage.io_write_bytes >= 8 * MIB  # direct writes: counted even by v1
    pool.delete(job)


@enforced("io_read_bps", "io_write_bps")
def test_io_reads_are_throttled_on_that_device_and_counted_job_by_job(tmp_path: Path) -> None:
    if cgroups.block_device(str(tmp_path)) is None:
        pytest.skip(f"{tmp_path} is on no block device (tmpfs?)")
    with open(tmp_path / "data", "wb") as data:
        data.write(os.urandom(8 * MIB))
        os.fsync(data.fileno())  # else the job's direct read flushes it, and counts that
    limits = Limits(io_read_bps="200M", io_write_bps="200M")
    script = ("dd if=data of=/dev/null bs=1M iflag=direct 2>/dev/null &&"
              " dd if=/dev/zero of=copy bs=1M count=4 oflag=direct 2>/dev/null")
    with JobPool(cgroups=True) as pool:
        for round in range(3):  # v1: later jobs reuse the groups of earlier ones
            if round and ENFORCED["io_read_bps"] == "cgroup1":
                assert TREE is not None
                wait_until(lambda: any(TREE._spares.values()), timeout=60,
                           what="groups kept for reuse")
            job = pool.create("sh", ["-c", f"{script}; echo done; exec sleep 1000"],
                              cwd=tmp_path, limits=limits)
            assert next(iter(pool.follow(job, "stdout"))) == b"done\n"
            groups = groups_of(pool, job)
            if groups.v1 and round:
                assert groups.reused
            # Its own bytes only: what the reads and direct writes moved, not
            # an earlier job's in the same folders.
            usage = pool.status(job).usage
            assert usage is not None and usage.source == "cgroup"
            assert usage.io_read_bytes is not None and usage.io_write_bytes is not None
            assert 8 * MIB <= usage.io_read_bytes < 12 * MIB, usage
            assert 4 * MIB <= usage.io_write_bytes < 8 * MIB, usage
            pool.delete(job)


# -- what cannot be enforced ----------------------------------------------------


def test_io_limits_without_a_block_device_are_an_error_unless_best_effort(pool: JobPool) -> None:
    if not os.path.isdir("/dev/shm") or cgroups.block_device("/dev/shm") is not None:
        pytest.skip("no tmpfs at /dev/shm")
    job = pool.create("true", cwd="/dev/shm", limits=Limits(io_read_bps="1M"))
    status = pool.wait(job, 10)
    assert status.state is State.ERROR and status.error is not None
    assert "io_read_bps needs a block device" in status.error and "/dev/shm" in status.error
    assert status.limits == Limits(io_read_bps="1M")
    job = pool.create("true", cwd="/dev/shm", limits=Limits(io_read_bps="1M", strict=False))
    status = pool.wait(job, 10)
    assert (status.state, status.exit_code) == (State.COMPLETED, 0)
    assert (status.enforced_by, status.unenforced) == ("none", ("io_read_bps",))


def test_without_cgroups_a_strict_limit_is_an_error_naming_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cgroups, "_detected", (True, None))
    with JobPool() as pool:
        status = pool.wait(pool.create("true", limits=Limits(memory="64M")), 10)
        assert status.state is State.ERROR and status.error is not None
        assert "may create no cgroup" in status.error and "memory 64 MiB" in status.error
        status = pool.wait(pool.create("true", limits=Limits(memory="64M", strict=False)), 10)
        assert (status.state, status.enforced_by, status.unenforced) == (
            State.COMPLETED, "none", ("memory",)
        )
        assert status.usage is not None and status.usage.source == "rusage"


@pytest.mark.skipif(TREE is None or not TREE.v1, reason="no cgroup v1 hierarchy is writable here")
def test_a_missing_controller_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TREE is not None
    without_pids = cgroups.CgroupTree(None, [h for h in TREE.v1 if "pids" not in h.controllers])
    monkeypatch.setattr(cgroups, "_detected", (True, without_pids))
    with JobPool() as pool:
        status = pool.wait(pool.create("true", limits=Limits(pids=10, memory="64M")), 10)
        assert status.state is State.ERROR
        assert status.error == (
            "cannot enforce the limits: pids needs the pids controller, which jobkit cannot"
            " use here (see docs/limits.md)"
        )
        best = Limits(pids=10, memory="64M", strict=False)
        status = pool.wait(pool.create("true", limits=best), 10)
        assert (status.state, status.enforced_by, status.unenforced) == (
            State.COMPLETED, ENFORCED["memory"], ("pids",)
        )


def test_bad_arguments_raise(pool: JobPool) -> None:
    with pytest.raises(TypeError, match="limits must be a Limits"):
        pool.create("true", limits={"memory": "64M"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="network must be True or False"):
        pool.create("true", network=0)  # type: ignore[arg-type]
    assert pool.list() == []


# -- records ------------------------------------------------------------------


@enforced("memory", "cpu")
def test_limits_and_usage_are_recorded_and_shown_by_a_reopened_pool(tmp_path: Path) -> None:
    limits = Limits(cpu=1, memory="64M")
    with JobPool(state_dir=tmp_path) as pool:
        done = pool.create("sh", ["-c", "echo hi"], limits=limits)
        oom = pool.create(GIB_AT_ONCE[0], GIB_AT_ONCE[1:], limits=limits)
        free = pool.create("true", network=False) if os.geteuid() == 0 else None
        before = {job: pool.wait(job, 30) for job in (done, oom)}
    with JobPool(state_dir=tmp_path) as pool:
        for job, status in before.items():
            again = pool.status(job)
            assert again.limits == limits and again.enforced_by == status.enforced_by
            assert again.usage == status.usage and again.usage is not None
            assert (again.oom_killed, again.error) == (status.oom_killed, status.error)
        assert pool.status(oom).oom_killed and pool.status(oom).error == (
            "out of memory (limit 64 MiB)"
        )
        if free is not None:
            assert pool.status(free).network is False and pool.status(free).limits is None


# -- nothing left behind --------------------------------------------------------


def job_folders(owner: int) -> list[Path]:
    """Every folder jobkit process ``owner`` has in any hierarchy."""
    assert TREE is not None
    parents = {base.parent for base in TREE.bases.values()}
    return sorted(p for parent in parents for p in parent.glob(f"jobkit-{owner}*"))


@enforced("memory", "cpu", "pids")
def test_a_closed_pool_leaves_no_cgroup_behind() -> None:
    pool = JobPool(cgroups=True)
    for limits in (Limits(memory="64M"), Limits(cpu=0.5, pids=20), None):
        pool.wait(pool.create("true", limits=limits), 10)  # finished: groups kept for reuse
        pool.create("sh", ["-c", "setsid sleep 1000 & exec sleep 1000"], limits=limits)
    assert job_folders(os.getpid())
    pool.close()
    assert job_folders(os.getpid()) == []


CRASHING_OWNER = """
import os, signal, sys
from jobkit import JobPool, Limits
pool = JobPool(state_dir=sys.argv[1])
job = pool.create("sh", ["-c", "setsid sleep 1000 & echo $!; exec sleep 1000"],
                  limits=Limits(memory="64M", cpu=1, pids=20))
print(next(iter(pool.follow(job, "stdout"))).decode().strip(), os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@enforced("memory", "cpu", "pids")
def test_a_pool_killed_and_reopened_leaves_no_cgroup_behind(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CRASHING_OWNER, str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    escaped, owner = (int(word) for word in out.stdout.split())
    assert process_alive(escaped) and job_folders(owner)  # SIGKILL: nobody tidied up
    with JobPool(state_dir=tmp_path) as pool:
        assert pool.status("1").state is State.LOST
        assert not process_alive(escaped)
        assert job_folders(owner) == []


# -- cgroup v2, wherever a v2 controller is enabled for jobkit --------------------


@pytest.mark.skipif(
    TREE is None or "cgroup2" not in ENFORCED.values(),
    reason=f"no cgroup v2 controller is enabled for jobkit here: {v2_missing()}"
    " (tests/core/test_cgroup_v2_files.py checks what jobkit writes there)",
)
def test_cgroup_v2_enforces_what_it_has(pool: JobPool) -> None:
    names = [name for name, by in ENFORCED.items() if by == "cgroup2"]
    job = pool.create("sh", ["-c", "echo up; exec sleep 1000"],
                      limits=Limits(cpu=0.5, memory="64M", pids=20))
    next(iter(pool.follow(job, "stdout")))
    groups = groups_of(pool, job)
    assert groups.v2 is not None and "cgroup2" in (pool.status(job).enforced_by or "")
    files = {"cpu": ("cpu.max", "50000 100000"), "memory": ("memory.max", str(64 * MIB)),
             "pids": ("pids.max", "20")}
    for name in names:
        if name in files:
            file, text = files[name]
            assert read(groups.v2 / file) == text
    leader = pool.status(job).pid
    assert str(leader) in read(groups.v2 / "cgroup.procs").split()
    pool.delete(job)
    if "memory" in names:
        oom = pool.create(GIB_AT_ONCE[0], GIB_AT_ONCE[1:], limits=Limits(memory="64M"))
        status = pool.wait(oom, 30)
        assert (status.signal, status.oom_killed) == (signal.SIGKILL, True)



# -- groups reused from job to job ------------------------------------------------


@enforced("memory")
def test_groups_kept_for_the_next_job_carry_nothing_over() -> None:
    with JobPool(cgroups=True) as pool:
        # An OOM-killed job with a 64 MiB limit ...
        first = pool.create(GIB_AT_ONCE[0], GIB_AT_ONCE[1:], limits=Limits(memory="64M"))
        assert pool.wait(first, 30).oom_killed
        assert TREE is not None
        if ENFORCED["memory"] == "cgroup1":  # v1 groups are kept (v2 counters cannot be reset)
            wait_until(lambda: any(TREE._spares.values()), what="its groups to be kept")
            (spare,) = (groups for kept in TREE._spares.values() for groups in kept)
            kept = spare.v1_with("memory")
            assert kept is not None and spare.reused
            inode = kept.stat().st_ino
        # ... then jobs in the same kind of groups: no limit, no OOM kill, own figures.
        second = pool.create("sh", ["-c", "echo up; exec sleep 1000"])
        next(iter(pool.follow(second, "stdout")))
        memory = groups_of(pool, second).v1_with("memory")
        if memory is not None:  # v1: the same folders, reset
            assert memory.stat().st_ino == inode and memory == kept
            assert int(read(memory / "memory.limit_in_bytes")) > 1 << 40
        # Stopping the first job must never reach the job now in its old groups.
        pool.stop(first, "KILL")
        assert pool.status(second).running
        pool.delete(second)
        third = pool.create("dd", ["if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"])
        status = pool.wait(third, 30)
        assert (status.state, status.exit_code, status.oom_killed) == (State.COMPLETED, 0, False)
        assert status.usage is not None and status.usage.peak_memory is not None
        assert 100 * MIB <= status.usage.peak_memory < 120 * MIB
        # Each job gets its own limit, whatever the folders' last job had.
        for size in ("128M", "128M", "96M", "256M"):
            if ENFORCED["memory"] == "cgroup1":
                wait_until(lambda: any(TREE._spares.values()), timeout=60,
                           what="groups kept for reuse")
            job = pool.create("sh", ["-c", "echo up; exec sleep 1000"], limits=Limits(memory=size))
            next(iter(pool.follow(job, "stdout")))
            memory = groups_of(pool, job).v1_with("memory")
            if memory is not None:
                wanted = str(Limits(memory=size).memory)
                assert read(memory / "memory.limit_in_bytes") == wanted
                memsw = memory / "memory.memsw.limit_in_bytes"
                assert not memsw.exists() or read(memsw) == wanted
            pool.delete(job)


def test_a_store_of_schema_1_is_migrated_in_place(tmp_path: Path) -> None:
    # A jobs.db as the jobkit before limits wrote it: one finished job, one
    # running (with its one v2 cgroup in the old column).
    db = sqlite3.connect(tmp_path / "jobs.db")
    records.MIGRATIONS[0](db)
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO jobs (command, args, backend, created_at, state, ended_at, exit_code)"
        " VALUES ('echo', '[\"old\"]', 'memory', 1.0, 'completed', 2.0, 0)"
    )
    db.execute(
        "INSERT INTO jobs (command, args, backend, created_at, state, pid, pid_start,"
        " pid_start_max, boot_id, cgroup) VALUES ('sleep', '[\"9\"]', 'memory', 1.0,"
        " 'running', 999999, 1, 2, 'another-boot', '/sys/fs/cgroup/jobkit-1/job-2')"
    )
    db.commit()
    db.close()
    with JobPool(state_dir=tmp_path, backend="memory") as pool:
        old = pool.status("1")
        assert (old.state, old.exit_code, old.limits, old.usage) == (
            State.COMPLETED, 0, None, None
        )
        assert (old.network, old.enforced_by, old.unenforced, old.oom_killed) == (
            True, None, (), False
        )
        assert pool.status("2").state is State.LOST
        new = pool.create("true", limits=Limits(pids=10, strict=False))
        assert pool.wait(new, 10).limits == Limits(pids=10, strict=False)
    db = sqlite3.connect(tmp_path / "jobs.db")
    assert db.execute("PRAGMA user_version").fetchone() == (records.SCHEMA_VERSION,)
    db.close()
