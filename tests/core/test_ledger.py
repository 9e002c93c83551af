"""Crash recovery: a later run kills what a SIGKILLed one left, and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jobkit import JobPool
from jobkit.core import cgroups
from jobkit.core.ledger import Ledger
from tests.conftest import group_members, process_alive, wait_until

CRASHING_OWNER = """
import os, signal, sys
import pytest

from jobkit import JobPool
from jobkit.core import cgroups
from jobkit.core.ledger import Ledger
pool = JobPool(ledger=Ledger(sys.argv[1]))
job = pool.create("sh", ["-c", "sleep 1000 & echo up; wait"])
next(iter(pool.follow(job, "stdout")))
print(pool.status(job).pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no close: a crash
"""


def test_recover_kills_the_groups_a_crashed_run_left(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CRASHING_OWNER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == -signal.SIGKILL
    pgid = int(out.stdout)
    assert len(group_members(pgid)) == 2  # survived their owner, as processes do
    assert Ledger(tmp_path).recover() == [pgid]
    wait_until(lambda: group_members(pgid) == [], what="the leftover group to die")
    assert list(tmp_path.iterdir()) == []


def test_recover_kills_members_whose_leader_is_gone(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 1000 >/dev/null & echo $!; read line"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    ledger.add(leader.pid)
    child = int(leader.stdout.readline())
    leader.stdin.close()  # the leader exits; its background child stays in the group
    leader.wait()
    leader.stdout.close()
    assert group_members(leader.pid) == [child]
    assert ledger.recover() == [leader.pid]
    wait_until(lambda: not process_alive(child), what="the orphaned member to die")


def test_a_reused_pid_is_never_killed(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        ledger = Ledger(tmp_path)
        ledger.add(bystander.pid)
        record = tmp_path / str(bystander.pid)
        pid, start, boot, _ = record.read_text().split()
        record.write_text(f"{pid} {int(start) - 1} {boot} -\n")  # a different process, once
        assert ledger.recover() == []
        assert process_alive(bystander.pid)
        ledger.add(bystander.pid)
        record.write_text(f"{pid} {start} another-boot -\n")
        assert ledger.recover() == []
        assert process_alive(bystander.pid)
        record.write_text("garbage\n")
        assert ledger.recover() == []
        assert process_alive(bystander.pid)
        ledger.add(bystander.pid)  # and the very same record is acted on: the checks above matter
        assert ledger.recover() == [bystander.pid]
        wait_until(lambda: not process_alive(bystander.pid), what="the recorded process to die")
    finally:
        bystander.kill()
        bystander.wait()


def test_a_pool_records_running_groups_and_forgets_deleted_ones(tmp_path: Path) -> None:
    with JobPool(ledger=Ledger(tmp_path)) as pool:
        first = pool.create("sleep", ["1000"])
        second = pool.create("true")
        pool.wait(second, 10)
        pids = {pool.status(j).pid for j in (first, second)}
        assert {int(p.name) for p in tmp_path.iterdir()} == pids
        pool.delete(first)
        assert {int(p.name) for p in tmp_path.iterdir()} == {pool.status(second).pid}
    assert list(tmp_path.iterdir()) == []
    assert os.stat(tmp_path).st_mode & 0o777 == 0o700


ESCAPING_OWNER = """
import os, signal, sys
import pytest

from jobkit import JobPool
from jobkit.core import cgroups
from jobkit.core.ledger import Ledger
pool = JobPool(ledger=Ledger(sys.argv[1]), cgroups=True)
job = pool.create("sh", ["-c", "setsid sleep 1000 & sleep 0.05; echo $!; wait"])
print(next(iter(pool.follow(job, "stdout"))).decode().strip(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(cgroups.detect() is None, reason="cgroup v2 is not writable here")
def test_recover_kills_even_escaped_processes_through_the_cgroup(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", ESCAPING_OWNER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    escaped = int(out.stdout)
    assert process_alive(escaped)
    Ledger(tmp_path).recover()
    wait_until(lambda: not process_alive(escaped), what="the escaped process to die")
