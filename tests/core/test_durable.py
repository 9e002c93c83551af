"""Durable pools: records and output survive close, SIGKILL and reopen; ids are never reused;
a dead owner's running jobs are killed and marked lost, and a reused pid is never hit."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from jobkit import CleanResult, JobPool, Retention, State
from jobkit.core import cgroups, records
from jobkit.core.errors import JobNotFound, StateDirInUse, StoreVersionError
from jobkit.core.job import CLOSED_BY_POOL
from jobkit.core.leftovers import kill_leftover, process_start
from jobkit.core.pool import LOST_MESSAGE
from tests.conftest import children, group_members, open_fds, process_alive, wait_until

# The owner writes a known pattern, shows the job runs, then dies without closing.
CRASHING_OWNER = """
import os, signal, sys
from jobkit import JobPool
pool = JobPool(state_dir=sys.argv[1])
done = pool.create("sh", ["-c", "printf 'a%.0s' $(seq 1000); echo err >&2"])
pool.wait(done, 10)
job = pool.create("sh", ["-c", "sleep 1000 & echo up; wait"])
next(iter(pool.follow(job, "stdout")))
print(done, job, pool.status(job).pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no close: a crash
"""


def crash_owner(folder: Path, script: str = CRASHING_OWNER) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    return out.stdout.split()


def test_a_reopened_pool_sees_every_job_with_its_output(tmp_path: Path) -> None:
    with JobPool(state_dir=tmp_path) as pool:
        assert pool.backend == "file"
        first = pool.create("sh", ["-c", "echo out; echo err >&2; exit 3"])
        binary = pool.create("head", ["-c", "300000", "/dev/urandom"])
        pool.wait(first, 10)
        pool.wait(binary, 10)
        data = pool.output(binary).stdout
        created = pool.status(first).created_at
    with JobPool(state_dir=tmp_path) as pool:
        assert pool.list() == [first, binary]
        status = pool.status(first)
        assert (status.state, status.exit_code, status.command) == (State.COMPLETED, 3, "sh")
        assert status.created_at == created and status.ended_at is not None
        assert pool.output(first).stdout == b"out\n"
        assert pool.read(first, "stderr") == b"err\n"
        assert pool.output(binary).stdout == data and len(data) == 300000
        assert b"".join(pool.follow(binary, "stdout")) == data
        assert b"".join(pool.follow(binary, "stdout", 299990)) == data[299990:]
        assert pool.status(binary).stdout.written == 300000
        assert pool.wait(first, 0).exit_code == 3


def test_ids_are_never_reused_after_delete_or_restart(tmp_path: Path) -> None:
    with JobPool(state_dir=tmp_path) as pool:
        ids = [pool.create("true") for _ in range(3)]
        for job in ids:
            pool.delete(job)
        assert pool.list() == []
    with JobPool(state_dir=tmp_path) as pool:
        fresh = pool.create("true")
        assert int(fresh) == int(ids[-1]) + 1
        for job in ids:  # an old id never silently addresses the new job
            with pytest.raises(JobNotFound):
                pool.status(job)
            with pytest.raises(JobNotFound):
                pool.delete(job)
        pool.wait(fresh, 10)
    # a pool without a state_dir never reuses ids within its life either
    with JobPool() as pool:
        job = pool.create("true")
        pool.delete(job)
        assert pool.create("true") == str(int(job) + 1)


def test_a_dead_owners_running_job_is_killed_and_marked_lost(tmp_path: Path) -> None:
    done, job, pid = crash_owner(tmp_path)
    pgid = int(pid)
    assert len(group_members(pgid)) == 2  # survived their owner, as processes do
    with JobPool(state_dir=tmp_path) as pool:
        wait_until(lambda: group_members(pgid) == [], what="the leftover group to die")
        status = pool.status(job)
        assert status.state is State.LOST and status.error == LOST_MESSAGE
        assert status.ended_at is not None and not status.running
        assert pool.output(job).stdout == b"up\n"  # output up to that moment is kept
        assert pool.status(done).state is State.COMPLETED
        assert pool.output(done).stdout == b"a" * 1000
        assert pool.create("true") == str(int(job) + 1)


def test_memory_output_of_a_lost_job_is_reported_gone(tmp_path: Path) -> None:
    script = CRASHING_OWNER.replace("state_dir=sys.argv[1]", "'memory', state_dir=sys.argv[1]")
    done, job, _ = crash_owner(tmp_path, script)
    with JobPool(state_dir=tmp_path) as pool:
        status = pool.status(job)
        assert status.state is State.LOST
        assert status.output_error is not None and "in memory" in status.output_error
        assert pool.output(job).stdout == b""
        # a finished memory job's output went with its process too: the record says so
        finished = pool.status(done)
        assert finished.stdout.written == 1000 and pool.read(done, "stdout") == b""


def test_close_records_running_jobs_as_killed_by_the_close(tmp_path: Path) -> None:
    with JobPool(state_dir=tmp_path) as pool:
        job = pool.create("sh", ["-c", "echo started; exec sleep 1000"])
        next(iter(pool.follow(job, "stdout")))
        pid = pool.status(job).pid
    assert not process_alive(pid)
    with JobPool(state_dir=tmp_path) as pool:
        status = pool.status(job)
        assert (status.state, status.signal, status.error) == (
            State.KILLED, signal.SIGKILL, CLOSED_BY_POOL
        )
        assert pool.output(job).stdout == b"started\n"


def test_one_pool_at_a_time_per_state_dir(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from jobkit import JobPool; "
         "p = JobPool(state_dir=sys.argv[1]); print('held', flush=True); sys.stdin.read()",
         str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(StateDirInUse, match="in use by another jobkit server or pool"):
            JobPool(state_dir=tmp_path)
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    # in this process too: flock, not fcntl locks
    with JobPool(state_dir=tmp_path), pytest.raises(StateDirInUse):
        JobPool(state_dir=tmp_path)
    JobPool(state_dir=tmp_path).close()  # free again


def test_the_state_dir_is_private_and_keeps_no_environment_values(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    with JobPool(state_dir=folder) as pool:
        pool.wait(pool.create("true", env={"TOKEN": "s3cr3t-value"}), 10)
    assert folder.stat().st_mode & 0o777 == 0o700
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o600, path
            assert b"s3cr3t-value" not in path.read_bytes(), path


def test_a_finished_job_holds_no_process_descriptor_or_store(tmp_path: Path) -> None:
    with JobPool(state_dir=tmp_path) as pool:
        pool.wait(pool.create("true"), 10)  # warm up: database, WAL, supervisor
        wait_until(lambda: not pool._jobs, what="the first job to become a record")
        fds, kids = open_fds(), children()
        jobs = [pool.create("sh", ["-c", "echo $$"]) for _ in range(300)]
        for job in jobs:
            pool.wait(job, 10)
        wait_until(lambda: not pool._jobs, what="finished jobs to become records")
        assert children() == kids
        assert open_fds() == fds
        assert all(pool.output(job).stdout.strip().isdigit() for job in jobs[:5])


def test_stop_of_a_finished_job_never_hits_a_reused_pid(tmp_path: Path) -> None:
    with JobPool(state_dir=tmp_path) as pool:
        job = pool.create("true")
        pid = pool.wait(job, 10).pid
        # A stranger now holds a process group of that id (as if the pid were reused).
        assert not process_alive(pid)
        pool.stop(job, "KILL")
        pool.delete(job)
    bystander = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:  # the recovery check: a wrong start time or boot is never acted on
        start = process_start(bystander.pid)
        assert start is not None
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert not kill_leftover(bystander.pid, (start - 5, start - 1), boot, None)
        assert not kill_leftover(bystander.pid, (start + 1, start + 5), boot, None)
        assert not kill_leftover(bystander.pid, (start, start), "another-boot", None)
        assert process_alive(bystander.pid)
        assert kill_leftover(bystander.pid, (start - 1, start + 1), boot, None)  # checks matter
        wait_until(lambda: not process_alive(bystander.pid), what="the recorded group to die")
    finally:
        bystander.kill()
        bystander.wait()


def test_recovery_kills_members_whose_leader_is_gone(tmp_path: Path) -> None:
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 1000 >/dev/null & echo $!; read line"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
    )
    start = process_start(leader.pid)
    child = int(leader.stdout.readline())
    leader.stdin.close()  # the leader exits; its background child stays in the group
    leader.wait()
    leader.stdout.close()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert group_members(leader.pid) == [child]
    late = (start + 10**6, start + 10**6)
    assert not kill_leftover(leader.pid, late, boot, None)  # born before it: not the job's
    assert process_alive(child)
    assert kill_leftover(leader.pid, (start, start), boot, None)
    wait_until(lambda: not process_alive(child), what="the orphaned member to die")


def test_a_newer_store_is_refused_and_an_older_one_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with JobPool(state_dir=tmp_path) as pool:
        job = pool.create("echo", ["kept"])
        pool.wait(job, 10)
    # A newer jobkit (one more migration) opens this store and migrates it.
    steps = [*records.MIGRATIONS, lambda db: db.execute("ALTER TABLE jobs ADD COLUMN note TEXT")]
    monkeypatch.setattr(records, "MIGRATIONS", steps)
    monkeypatch.setattr(records, "SCHEMA_VERSION", len(steps))
    with JobPool(state_dir=tmp_path) as pool:
        assert pool.output(job).stdout == b"kept\n"
    db = sqlite3.connect(tmp_path / "jobs.db")
    version = db.execute("PRAGMA user_version").fetchone()
    columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    db.close()
    assert version == (len(steps),)
    assert "note" in columns
    monkeypatch.undo()
    # ... and this jobkit, now the older one, refuses it with a clear message.
    with pytest.raises(StoreVersionError, match=rf"schema version {len(steps)}.*upgrade jobkit"):
        JobPool(state_dir=tmp_path)


def test_paging_is_by_cursor_in_both_orders(tmp_path: Path) -> None:
    with JobPool(state_dir=tmp_path) as pool:
        ids = [pool.create("true") for _ in range(7)]
        assert pool.list(limit=3) == ids[:3]
        assert pool.list(limit=3, after=ids[2]) == ids[3:6]
        assert pool.list(limit=3, newest_first=True) == ids[::-1][:3]
        assert pool.list(limit=3, after=ids[4], newest_first=True) == ids[3::-1][:3]
        assert pool.list(after="junk") == []
        with pytest.raises(ValueError):
            pool.list(limit=-1)


ESCAPING_OWNER = """
import os, signal, sys
from jobkit import JobPool
pool = JobPool(state_dir=sys.argv[1], cgroups=True)
job = pool.create("sh", ["-c", "setsid sleep 1000 & sleep 0.05; echo $!; wait"])
print(next(iter(pool.follow(job, "stdout"))).decode().strip(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(cgroups.detect() is None, reason="cgroup v2 is not writable here")
def test_recovery_kills_even_escaped_processes_through_the_cgroup(tmp_path: Path) -> None:
    (escaped,) = crash_owner(tmp_path, ESCAPING_OWNER)
    assert process_alive(int(escaped))
    JobPool(state_dir=tmp_path).close()
    wait_until(lambda: not process_alive(int(escaped)), what="the escaped process to die")


def test_retention_prunes_the_oldest_finished_jobs_never_a_running_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="jobkit.pool")
    rules = Retention(max_jobs=3)
    with JobPool(state_dir=tmp_path, retention=rules) as pool:
        runner = pool.create("sleep", ["1000"])
        done = [pool.create("echo", [str(i)]) for i in range(6)]
        wait_until(lambda: pool.list() == [runner, *done[-3:]], what="the oldest to be pruned")
        assert not (tmp_path / "output" / f"{done[0]}.stdout").exists()
        assert "pruned job 2 (over the finished-job limit)" in caplog.text
    # by bytes: each job keeps 100001 bytes; a cap of 250 000 keeps two
    with JobPool(state_dir=tmp_path / "b", retention=Retention(max_bytes=250_000)) as pool:
        jobs = [pool.create("head", ["-c", "100001", "/dev/zero"]) for _ in range(4)]
        wait_until(lambda: pool.list() == jobs[-2:], what="pruning by bytes")
    # by age, checked when the pool opens
    with JobPool(state_dir=tmp_path / "c") as pool:
        old = pool.create("true")
        pool.wait(old, 10)
    with JobPool(state_dir=tmp_path / "c", retention=Retention(max_age=0.0001)) as pool:
        assert pool.list() == []


def test_clean_deletes_finished_jobs_and_reports_what_it_freed(tmp_path: Path) -> None:
    with JobPool(state_dir=tmp_path) as pool:
        runner = pool.create("sleep", ["1000"])
        ok = pool.create("head", ["-c", "1000", "/dev/zero"])
        bad = pool.create("sh", ["-c", "echo oops >&2; kill -9 $$"])
        failed = pool.create("/no/such/program")
        for job in (ok, bad):
            pool.wait(job, 10)
        result = pool.clean(states=["killed", "error"])
        assert (result.jobs, result.bytes) == (2, 5)
        assert pool.list() == [runner, ok]
        assert pool.clean(older_than=3600) == CleanResult(jobs=0, bytes=0)
        assert pool.clean() == CleanResult(jobs=1, bytes=1000)
        assert pool.list() == [runner] and pool.status(runner).running
        with pytest.raises(ValueError):
            pool.clean(states=["running"])
        with pytest.raises(ValueError):
            pool.clean(states=["nonsense"])
        assert failed not in pool.list()
