"""``jobkit serve`` as a user runs it: a real process, signals, the default PKI."""

from __future__ import annotations

import getpass
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.api import ApiClient
from tests.support.measured import measured
from tests.support.pki import ADMIN
from tests.support.procs import process_alive

STOP_BOUND = 5.0


class ServeProcess:
    """A ``jobkit serve`` subprocess and the URL it printed."""

    def __init__(self, proc: subprocess.Popen[str], lines: list[str], port: int) -> None:
        self.proc = proc
        self.lines = lines
        self.port = port
        self.address = ("127.0.0.1", port)

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
        """Send ``signum``; return (exit code, rest of stdout, stderr) once it exited."""
        start = time.monotonic()
        self.proc.send_signal(signum)
        out, err = self.proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
        assert elapsed < STOP_BOUND, f"jobkit serve took {elapsed:.1f} s to stop"
        return self.proc.returncode, out, err


def _env(data_home: Path) -> dict[str, str]:
    env = measured({**os.environ, "XDG_DATA_HOME": str(data_home), "PYTHONUNBUFFERED": "1"})
    env.pop("JOBKIT_CERTS", None)
    return env


@contextmanager
def serve(args: Sequence[str], data_home: Path) -> Iterator[ServeProcess]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobkit", "serve", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(data_home),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 30
    port = None
    try:
        while port is None:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                pytest.fail(f"jobkit serve printed no address: {lines}")
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"jobkit serve exited: {lines} {proc.stderr.read()}")  # type: ignore[union-attr]
            lines.append(line)
            match = re.search(r"Serving on https://127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
        yield ServeProcess(proc, lines, port)
    finally:
        selector.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def run_serve(args: Sequence[str], data_home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobkit", "serve", *args], capture_output=True,
                          text=True, env=_env(data_home), timeout=60)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_cleanly_on_a_signal_and_kills_every_job(
    pki: Path, tmp_path: Path, signum: int
) -> None:
    with serve(["--certs", str(pki)], tmp_path) as server:
        client = ApiClient(server.address, pki / "clients" / "alice", "alice")
        job_id = client.create("sh", "-c", "echo started; exec sleep 600")
        pid = client.status(job_id)["pid"]
        follow = client.connect()
        follow.request("GET", f"/jobs/{job_id}/stdout?follow=true")
        response = follow.getresponse()
        assert response.read1(100) == b"started\n"
        code, _, err = server.stop(signum)
        assert code == 0, err
        assert "Stopped" in err
        assert not process_alive(pid)
        assert response.read() == b""  # the follow stream ended cleanly
        follow.close()
        client.close()


def test_serve_logs_one_access_line_per_request(pki: Path, tmp_path: Path) -> None:
    with serve(["--certs", str(pki / "server")], tmp_path) as server:
        client = ApiClient(server.address, pki / "clients" / "alice", "alice")
        client.get("/jobs")
        client.get("/jobs/77/status")
        client.close()
        _, _, err = server.stop()
    access = [line for line in err.splitlines() if "jobkit.server.access" in line]
    assert len(access) == 2
    assert re.search(r"alice GET /jobs 200 \d+\.\dms$", access[0]), access[0]
    assert re.search(r"alice GET /jobs/77/status 404 \d+\.\dms$", access[1]), access[1]


def test_quiet_serve_has_no_access_log(pki: Path, tmp_path: Path) -> None:
    with serve(["--certs", str(pki), "--quiet"], tmp_path) as server:
        client = ApiClient(server.address, pki / "clients" / "alice", "alice")
        client.get("/jobs")
        client.close()
        _, _, err = server.stop()
    assert "jobkit.server.access" not in err


def test_serve_without_certs_makes_and_reuses_a_default_pki(tmp_path: Path) -> None:
    user = getpass.getuser()
    folder = tmp_path / "jobkit" / "pki"
    with serve([], tmp_path) as server:
        assert f"Created a new PKI in {folder}" in "".join(server.lines)
        assert str(folder / "clients" / user) in "".join(server.lines)
        client = ApiClient(server.address, folder / "clients" / user, user)
        assert client.get("/jobs").status == 200
        client.close()
        server.stop()
    assert (folder / "clients" / user / "key.pem").stat().st_mode & 0o777 == 0o600
    with serve([], tmp_path) as server:
        assert f"Using the PKI in {folder}" in "".join(server.lines)
        client = ApiClient(server.address, folder / "clients" / user, user)
        assert client.get("/jobs").status == 200
        client.close()
        server.stop()


def test_serve_options_reach_the_server(pki: Path, tmp_path: Path) -> None:
    args = ["--certs", str(pki), "--admin", ADMIN, "--max-jobs", "1", "--backend", "tempfile",
            "--threads", "4", "--max-client-streams", "1"]
    with serve(args, tmp_path) as server:
        alice = ApiClient(server.address, pki / "clients" / "alice", "alice")
        admin = ApiClient(server.address, pki / "clients" / ADMIN, ADMIN)
        job_id = alice.create("sleep", "600")
        assert alice.status(job_id)["backend"] == "tempfile"
        assert alice.request("PUT", "/jobs", {"cmd": "true"}).status == 429
        held = alice.connect()
        held.request("GET", f"/jobs/{job_id}/stdout?follow=true")
        assert held.getresponse().status == 200
        refused = alice.get(f"/jobs/{job_id}/stderr?follow=true")
        assert refused.status == 429 and "(limit 1 " in refused.problem()["detail"]
        held.close()
        listing = admin.get("/jobs?all=true").json()
        assert [(job["client"], job["id"]) for job in listing["jobs"]] == [("alice", job_id)]
        for client in (alice, admin):
            client.close()
        server.stop()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--listen", "localhost"], 2, "port must be a number"),
        (["--listen", "::1:80"], 2, "brackets"),
        (["--listen", "127.0.0.1:70000"], 2, "0 to 65535"),
        (["--threads", "1"], 2, "--threads"),
        (["--max-jobs", "-1"], 2, "--max-jobs"),
        (["--max-streams", "0"], 2, "--max-streams"),
        (["--max-client-streams", "x"], 2, "--max-client-streams"),
        (["--backend", "nope", "--listen", "127.0.0.1:0"], 2, "unknown backend 'nope'"),
    ],
)
def test_bad_options_are_one_clear_line(pki: Path, tmp_path: Path, args: list[str], code: int,
                                        message: str) -> None:
    result = run_serve(["--certs", str(pki), *args], tmp_path)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_folder_without_certificates_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_serve(["--certs", str(tmp_path / "empty"), "--listen", "127.0.0.1:0"], tmp_path)
    assert result.returncode == 1
    assert "missing ca.pem, cert.pem, key.pem" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_serve(["--certs", str(tmp_path / "nowhere"), "--listen", "127.0.0.1:0"],
                       tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_a_busy_port_is_one_clear_line(pki: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(["--certs", str(pki), "--listen", f"127.0.0.1:{port}"], tmp_path)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_option(tmp_path: Path) -> None:
    result = run_serve(["--help"], tmp_path)
    assert result.returncode == 0
    for option in ["--certs", "--listen", "--backend", "--threads", "--admin", "--max-jobs",
                   "--quiet"]:
        assert option in result.stdout


def test_jobkit_serve_keeps_its_jobs_from_the_environment(pki: Path, tmp_path: Path) -> None:
    # Jobs start from the server's environment (plus what the request sets).
    env_marker = "JOBKIT_SERVE_TEST_MARKER"
    os.environ[env_marker] = "from-server"
    try:
        with serve(["--certs", str(pki)], tmp_path) as server:
            client = ApiClient(server.address, pki / "clients" / "bob", "bob")
            job_id = client.create("sh", "-c", f'echo "${env_marker}"')
            client.wait(job_id)
            assert client.get(f"/jobs/{job_id}/output").json()["stdout"] == "from-server\n"
            client.close()
            server.stop()
    finally:
        del os.environ[env_marker]
