"""What a review found the client got wrong, each fixed and kept fixed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobkit import ConnectionFailed, JobNotFound
from jobkit.client import Client
from jobkit.server.serve import JobServer
from tests.client.live_server import new_client


def test_following_a_quiet_job_outlasts_the_client_timeout(server: str, certs: Path) -> None:
    # The job itself is quiet for 2.5 s; the client's read timeout is 1 s.
    with Client(server, certs, timeout=1) as client:
        job = client.create("sh", ["-c", "sleep 2.5; echo done"])
        assert b"".join(client.follow(job, "stdout")) == b"done\n"
        assert client.status(job).exit_code == 0  # the pooled connection works again


def test_a_server_stopping_is_not_the_end_of_the_stream(pki_root: Path) -> None:
    server = JobServer(pki_root / "server", port=0)
    server.start()
    host, port = server.address
    with Client(f"{host}:{port}", new_client(pki_root), timeout=5) as client:
        job = client.create("sh", ["-c", "echo start; sleep 1000"])
        follower = client.follow(job, "stdout")
        assert next(follower) == b"start\n"
        server.stop()  # ends the response cleanly, and kills the job
        with pytest.raises(ConnectionFailed):
            list(follower)


def test_text_only_travels_as_utf8(client: Client) -> None:
    undecodable = os.fsdecode(b"\xff\xfe")  # what argv gives for non-UTF-8 bytes
    for kwargs in ({"args": [undecodable]}, {"env": {"A": undecodable}},
                   {"cwd": "/tmp/" + undecodable}):
        with pytest.raises(ValueError, match="not valid UTF-8"):
            client.create("echo", **kwargs)
    assert client.list() == []
    for bad_id in ("", undecodable):
        with pytest.raises(JobNotFound):
            client.status(bad_id)


def test_a_tilde_in_the_certs_folder_is_the_home(server: str, certs: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(certs.parent))
    with Client(server, f"~/{certs.name}") as client:
        assert client.list() == []
