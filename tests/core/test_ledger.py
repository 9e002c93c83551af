"""Crash recovery: a later run kills what a SIGKILLed one left, and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit import JobPool
from jobkit.core import cgroups
from jobkit.core.ledger import Ledger, LedgerInUse
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
    with Ledger(tmp_path) as ledger:
        assert ledger.recover() == [pgid]
    wait_until(lambda: group_members(pgid) == [], what="the leftover group to die")
    assert [p.name for p in tmp_path.iterdir()] == ["lock"]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path) as ledger:
        yield ledger


def test_recover_kills_members_whose_leader_is_gone(ledger: Ledger) -> None:
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


def test_a_reused_pid_is_never_killed(ledger: Ledger, tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
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
    with Ledger(tmp_path) as ledger, JobPool(ledger=ledger) as pool:
        first = pool.create("sleep", ["1000"])
        second = pool.create("true")
        pool.wait(second, 10)
        pids = {pool.status(j).pid for j in (first, second)}
        assert records(tmp_path) == pids
        pool.delete(first)
        assert records(tmp_path) == {pool.status(second).pid}
    assert records(tmp_path) == set()
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
    with Ledger(tmp_path) as ledger:
        ledger.recover()
    wait_until(lambda: not process_alive(escaped), what="the escaped process to die")


def records(folder: Path) -> set[int]:
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()}


def test_one_process_at_a_time_per_ledger_folder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from jobkit.core.ledger import Ledger; "
            "l = Ledger(sys.argv[1]); print('held', flush=True); sys.stdin.read()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(LedgerInUse, match="in use by another process"):
            Ledger(tmp_path)
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    Ledger(tmp_path).close()  # free again once the holder is gone
