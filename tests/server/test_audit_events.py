"""The server's audit log: every security-relevant event, as a real server writes it."""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobkit import audit
from jobkit.server.serve import JobServer
from tests.support.api import ApiClient
from tests.support.pki import ADMIN, new_client_folder
from tests.support.procs import process_alive
from tests.support.servers import running_server
from tests.support.waiting import wait_until


def events(path: Path | str, kind: str | None = None) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [line for line in lines if kind is None or line["event"] == kind]


def of_job(path: Path | str, cn: str, job: str) -> list[dict[str, Any]]:
    return [e for e in events(path) if e.get("job") == job
            and cn in (e.get("cn"), e.get("owner"))]


@pytest.fixture(scope="module")
def server(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobServer]:
    state = tmp_path_factory.mktemp("audited") / "state"
    with running_server(pki, threads=8, state_dir=state) as running:
        yield running


@pytest.fixture
def log_file(server: JobServer) -> Path:
    assert server.audit.path is not None
    return Path(server.audit.path)


def test_the_log_is_in_the_state_folder_and_starts_with_the_configuration(
        server: JobServer, log_file: Path) -> None:
    assert log_file == server.state.root / "audit.log"
    assert (log_file.stat().st_mode & 0o777) == 0o600
    first = events(log_file)[0]
    assert first["event"] == "server.started" and first["seq"] == 1
    config = first["config"]
    assert config["listen"] == "{}:{}".format(*server.address)
    assert config["admins"] == [ADMIN] and config["threads"] == 8
    assert config["state_dir"] == str(server.state.root) and config["crl"] is True
    assert first["pid"] == os.getpid()


def test_a_job_is_recorded_created_then_finished_and_never_its_output_or_env(
        client: ApiClient, log_file: Path) -> None:
    job = client.create("sh", "-c", "echo the-output-$SECRET", env={"SECRET": "hunter2"},
                        cwd="/tmp", timeout=30)
    client.wait(job)
    wait_until(lambda: len(of_job(log_file, client.name, job)) == 2, what="two events")
    created, finished = of_job(log_file, client.name, job)
    host, port = client.conn.sock.getsockname()[:2]  # type: ignore[union-attr]
    assert created["event"] == "job.created"
    assert {k: created[k] for k in ("cn", "command", "args", "cwd", "backend", "limits",
                                    "peer")} == {
        "cn": client.name, "command": "sh", "args": ["-c", "echo the-output-$SECRET"],
        "cwd": "/tmp", "backend": "file", "limits": {"timeout_s": 30}, "peer": f"{host}:{port}"}
    assert finished["event"] == "job.finished" and finished["seq"] > created["seq"]
    assert (finished["state"], finished["exit_code"]) == ("completed", 0)
    text = log_file.read_text()
    assert "hunter2" not in text and "the-output-" + "hunter2" not in text


def test_a_job_that_ends_at_once_is_still_created_first(client: ApiClient,
                                                        log_file: Path) -> None:
    jobs = [client.create("true") for _ in range(20)]
    for job in jobs:
        wait_until(lambda job=job: len(of_job(log_file, client.name, job)) == 2,
                   what=f"job {job}'s two events")
        assert [e["event"] for e in of_job(log_file, client.name, job)] == [
            "job.created", "job.finished"]


def test_stop_and_delete_are_recorded_with_the_signal(client: ApiClient,
                                                      log_file: Path) -> None:
    job = client.create("sleep", "1000")
    assert client.request("POST", f"/jobs/{job}/stop", {"signal": "INT"}).status == 200
    client.wait(job)
    assert client.request("DELETE", f"/jobs/{job}").status == 200
    wait_until(lambda: len(of_job(log_file, client.name, job)) == 4, what="four events")
    _, stopped, finished, deleted = of_job(log_file, client.name, job)
    assert (stopped["event"], stopped["signal"], stopped["cn"]) == (
        "job.stopped", "SIGINT", client.name)
    assert "owner" not in stopped
    assert (finished["state"], finished["signal"]) == ("killed", "SIGINT")
    assert deleted["event"] == "job.deleted" and "owner" not in deleted


def test_a_stop_of_an_unknown_job_is_not_recorded(client: ApiClient, log_file: Path) -> None:
    before = len(events(log_file))
    assert client.request("POST", "/jobs/424242/stop").status == 404
    assert client.request("DELETE", "/jobs/424242").status == 404
    assert not [e for e in events(log_file)[before:] if e.get("cn") == client.name]


def test_an_admin_acting_on_another_clients_job(client: ApiClient, admin: ApiClient,
                                                log_file: Path) -> None:
    job = client.create("sleep", "1000")
    assert admin.get(f"/jobs/{job}/status?client={client.name}").status == 200
    assert admin.get(f"/jobs/{job}/stdout?client={client.name}").status == 200
    assert admin.request("POST", f"/jobs/{job}/stop?client={client.name}").status == 200
    client.wait(job)
    assert admin.request("DELETE", f"/jobs/{job}?client={client.name}").status == 200
    wait_until(lambda: len(of_job(log_file, client.name, job)) == 6, what="six events")
    recorded = of_job(log_file, client.name, job)
    assert [(e["event"], e.get("action")) for e in recorded] == [
        ("job.created", None), ("admin.acted", "status"), ("admin.acted", "stdout"),
        ("job.stopped", None), ("job.finished", None), ("job.deleted", None)]
    for event in recorded[1:4] + recorded[5:]:
        assert (event["cn"], event["owner"]) == (ADMIN, client.name)
    # Its own jobs are not "another client's".
    own = admin.create("true")
    admin.status(own)
    assert not [e for e in events(log_file, "admin.acted") if e["job"] == own
                and e["owner"] == ADMIN]


def test_a_refusal_403_is_recorded(client: ApiClient, log_file: Path) -> None:
    assert client.get("/jobs/1/status?client=someone-else").status == 403
    assert client.get("/jobs?all=true").status == 403
    assert client.get("/metrics").status == 403

    def refused_lines() -> list[dict[str, Any]]:
        return [e for e in events(log_file, "authz.refused") if e["cn"] == client.name]

    # A refusal is recorded once its answer was sent: it may trail the client a little.
    wait_until(lambda: len(refused_lines()) == 3, what="three refusals recorded")
    refused = refused_lines()
    assert [(e["method"], e["route"], e.get("job")) for e in refused] == [
        ("GET", "/jobs/<job_id>/status", "1"), ("GET", "/jobs", None), ("GET", "/metrics", None)]
    assert "only an admin" in refused[0]["reason"]


def test_a_refused_handshake_is_recorded(server: JobServer, pki: Path, log_file: Path) -> None:
    before = len(events(log_file))
    context = ssl.create_default_context(cafile=str(pki / "server" / "ca.pem"))  # no client cert
    with socket.create_connection(server.address, timeout=10) as raw:
        tls = context.wrap_socket(raw, server_hostname="localhost")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            tls.sendall(b"GET /jobs HTTP/1.1\r\nHost: x\r\n\r\n")
            assert tls.recv(1024)
        local = "{}:{}".format(*tls.getsockname()[:2])
    wait_until(lambda: [e for e in events(log_file)[before:] if e.get("peer") == local],
               what="the refusal")
    [refusal] = [e for e in events(log_file)[before:] if e.get("peer") == local]
    assert refusal["event"] == "auth.refused"
    assert "certificate" in refusal["reason"]


def test_the_server_stops_with_a_record_and_an_intact_chain(pki: Path, tmp_path: Path) -> None:
    name, folder = new_client_folder(pki)
    with running_server(pki, threads=4, state_dir=tmp_path / "state") as server:
        log_file = server.audit.path
        assert log_file is not None
        api = ApiClient(server.address, folder, name)
        job = api.create("sleep", "1000")
        api.close()
    records = events(log_file)
    assert [r["event"] for r in records] == [
        "server.started", "job.created", "job.finished", "server.stopped"]
    assert records[2]["state"] == "killed" and "closed" in records[2]["reason"]
    assert records[2]["job"] == job
    assert records[3]["config"] == records[0]["config"]
    assert audit.verify([log_file]) is None
    # A restart continues the chain.
    with running_server(pki, threads=4, state_dir=tmp_path / "state"):
        pass
    assert [r["seq"] for r in events(log_file)] == list(range(1, 7))
    assert audit.verify([log_file]) is None


def test_a_log_that_cannot_be_written_refuses_acts_with_507(pki: Path, tmp_path: Path) -> None:
    name, folder = new_client_folder(pki)
    with running_server(pki, threads=4, state_dir=tmp_path / "state") as server:
        api = ApiClient(server.address, folder, name)
        running = api.create("sleep", "1000")
        pid = api.status(running)["pid"]
        log = server.audit.log
        assert log is not None
        # From now on every write to the log fails as on a full disk (ENOSPC, for real).
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, log._fd)
        os.close(full)
        refused = api.request("PUT", "/jobs", {"cmd": "sleep", "args": ["1000"]})
        assert refused.status == 507
        assert refused.problem()["type"].endswith("storage-failed")
        listed = api.get("/jobs").json()["ids"]
        assert listed == [running]  # the job whose creation was not recorded is gone
        stop = api.request("POST", f"/jobs/{running}/stop")
        assert stop.status == 507 and "nothing was done" in stop.problem()["detail"]
        assert api.request("DELETE", f"/jobs/{running}").status == 507
        assert api.status(running)["status"] == "running" and process_alive(pid)
        assert api.get(f"/jobs/{running}/status").status == 200  # reads still work
        api.close()


def test_a_server_that_cannot_write_its_log_does_not_start(pki: Path, tmp_path: Path) -> None:
    server = JobServer(pki, port=0, state_dir=tmp_path / "state", audit_log="/dev/full")
    with pytest.raises(OSError, match="No space left"):
        server.start()
    server.stop()
