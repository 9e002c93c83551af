"""Crash recovery: a server killed with SIGKILL leaves jobs; the next start kills them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jobkit import pki
from jobkit.client import Client
from jobkit.core import cgroups
from jobkit.locations import default_state_dir
from tests.support.processes import ServerProcess
from tests.support.procs import group_members, process_alive
from tests.support.waiting import wait_until


def start(certs: Path, state: Path) -> ServerProcess:
    return ServerProcess.start(certs, "--state-dir", str(state))


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    return pki.init_pki(tmp_path / "pki", clients=["alice"])


def test_the_next_start_kills_what_a_crashed_server_left(certs: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start(certs, state)
    with Client(first.host_port, certs / "clients" / "alice") as client:
        job = client.create("sh", ["-c", "setsid sleep 1000 & sleep 1000 & echo $!; wait"])
        escapee = int(next(iter(client.follow(job, "stdout"))))
        pgid = client.status(job).pid
    first.stop(signal.SIGKILL)  # no clean shutdown: the jobs survive it
    assert group_members(pgid) and process_alive(escapee)

    second = start(certs, state)
    assert f"Killed 1 job(s) left running by a previous server (state: {state})\n" in (
        second.printed
    )
    with Client(second.host_port, certs / "clients" / "alice") as client:
        status = client.status(job)
        assert status.state.value == "lost" and "killed or crashed" in (status.error or "")
    wait_until(lambda: group_members(pgid) == [], what="the leftover group to die")
    if cgroups.detect() is not None:  # only a cgroup can catch what left the group
        wait_until(lambda: not process_alive(escapee), what="the escapee to die")
    else:
        os.kill(escapee, signal.SIGKILL)
    second.stop()
    assert sorted(p.name for p in state.iterdir()) == ["audit.log", "clients", "lock"]
    assert [p.name for p in (state / "clients").iterdir()] == ["alice"]


def test_two_servers_cannot_share_a_state_folder(certs: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start(certs, state)
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "jobkit",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--certs",
                str(certs),
                "--state-dir",
                str(state),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        first.stop()
    assert second.returncode == 1
    assert second.stderr.splitlines()[-1] == (
        f"jobkit: error: the state folder {state} is in use by another jobkit server or pool"
    )
    assert "Traceback" not in second.stderr


def test_the_default_state_folder_is_per_address(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir("127.0.0.1", 8443) == tmp_path / "jobkit" / "serve-127.0.0.1-8443"
    assert default_state_dir("::1", 9000) == tmp_path / "jobkit" / "serve-__1-9000"
    assert default_state_dir("127.0.0.1", 0) is None
    monkeypatch.setenv("XDG_STATE_HOME", "relative/path")  # ignored, as XDG says
    assert default_state_dir("h", 1) == Path.home() / ".local" / "state" / "jobkit" / "serve-h-1"
