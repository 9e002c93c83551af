"""A restarted `jobkit serve` loses nothing it recorded: graceful restarts, and SIGKILLs at
random moments while jobs write and new jobs are created (fault injection)."""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from jobkit import State, pki
from jobkit.client import Client
from jobkit.core.errors import JobkitError
from tests.support.processes import ServerProcess
from tests.support.procs import group_members
from tests.support.waiting import wait_until


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    return pki.init_pki(tmp_path / "pki", clients=["alice"])


def start(certs: Path, state: Path) -> ServerProcess:
    return ServerProcess.start(certs, "--state-dir", str(state))


def expected_output(count: int) -> bytes:
    """What ``seq 0 COUNT`` writes."""
    return b"".join(b"%d\n" % i for i in range(count + 1))


def tenant_databases(state: Path) -> list[Path]:
    return sorted(state.glob("clients/*/jobs.db"))


def test_a_graceful_restart_keeps_every_job_and_byte(certs: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    server = start(certs, state)
    alice = certs / "clients" / "alice"
    with Client(server.host_port, alice) as client:
        done = client.create("seq", ["0", "50000"])
        binary = client.create("head", ["-c", "100000", "/dev/urandom"])
        running = client.create("sh", ["-c", "echo started; exec sleep 1000"])
        client.wait(done, 10)
        client.wait(binary, 10)
        data = client.output(binary).stdout
        next(iter(client.follow(running, "stdout")))
    server.stop()  # SIGTERM: a clean shutdown
    server = start(certs, state)
    try:
        with Client(server.host_port, alice) as client:
            assert client.list() == [done, binary, running]
            assert client.output(done).stdout == expected_output(50000)
            assert client.output(binary).stdout == data
            status = client.status(running)
            assert status.state is State.KILLED and "pool was closed" in (status.error or "")
            assert client.output(running).stdout == b"started\n"
            fresh = client.create("true")
            assert int(fresh) == int(running) + 1  # ids continue, never reused
    finally:
        server.stop()


def crash_rounds(certs: Path, tmp_path: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    state = tmp_path / "state"
    alice = certs / "clients" / "alice"
    acked: dict[str, int] = {}  # job id -> the N of its `seq 0 N`
    pids: list[int] = []
    for _ in range(rounds):
        server = start(certs, state)
        with Client(server.host_port, alice) as client:
            # After the restart: everything acknowledged is there, intact.
            for database in tenant_databases(state):
                with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
                    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            listed = client.list()
            assert set(acked) <= set(listed)
            assert len(listed) == len(set(listed))
            for job_id, count in acked.items():
                status = client.status(job_id)
                assert not status.running
                data = client.output(job_id).stdout
                assert expected_output(count).startswith(data), job_id
            for pid in pids:  # no process of an earlier round survived it
                wait_until(lambda pid=pid: group_members(pid) == [], what=f"group {pid} to die")
            # This round: 20 writing jobs, and a creator still at work when the kill comes.
            fresh: list[str] = []
            for _ in range(20):
                count = rng.randrange(1, 300_000)
                tail = ["sh", "-c", f"seq 0 {count}; exec sleep 1000"]
                job_id = client.create(*([tail[0], tail[1:]] if rng.random() < 0.5 else
                                         ["seq", ["0", str(count)]]))
                acked[job_id] = count
                fresh.append(job_id)
            assert all(int(new) > int(old) for new in fresh for old in listed)
            pids += [p for p in (client.status(j).pid for j in fresh) if p]
        kill_at = rng.randrange(0, 30)
        created = threading.Semaphore(0)
        stop = threading.Event()

        def creator(
            address: str = server.host_port,
            created: threading.Semaphore = created,
            stop: threading.Event = stop,
        ) -> None:
            try:
                with Client(address, alice) as writer:
                    while not stop.is_set():
                        count = rng.randrange(1, 100_000)
                        job_id = writer.create("seq", ["0", str(count)])
                        acked[job_id] = count  # acknowledged with 201: must survive
                        created.release()
            except (JobkitError, OSError):
                pass  # the server died under it: what was not acknowledged may be lost
            finally:
                created.release()

        thread = threading.Thread(target=creator)
        thread.start()
        for _ in range(kill_at):
            assert created.acquire(timeout=30)
        server.stop(signal.SIGKILL)
        stop.set()
        thread.join(30)
    server = start(certs, state)
    server.stop()


def test_sigkill_at_random_moments_loses_nothing_acknowledged(
    certs: Path, tmp_path: Path
) -> None:
    crash_rounds(certs, tmp_path, rounds=3, seed=1)


@pytest.mark.slow
def test_sigkill_at_random_moments_twenty_times(certs: Path, tmp_path: Path) -> None:
    crash_rounds(certs, tmp_path, rounds=20, seed=2)
