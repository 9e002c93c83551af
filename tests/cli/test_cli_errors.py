"""Every expected failure is one line on stderr and a documented exit code."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from jobkit import pki
from tests.support.cli import Jobkit, base_env, run_jobkit
from tests.support.pki import forge

CLIENT_COMMANDS = [["list"], ["status", "1"], ["output", "1"], ["stop", "1"], ["delete", "1"],
                   ["exec", "true"]]
RELAY_COMMANDS = [["wait", "1"], ["exec", "-f", "true"]]


def check_all(env: dict[str, str], code: int, *words: str) -> None:
    """Each client command fails with ``code`` (255 for exec -f and wait), one line naming words."""
    for command in CLIENT_COMMANDS + RELAY_COMMANDS:
        run = run_jobkit(*command, env=env)
        expected = 255 if command in RELAY_COMMANDS else code
        assert run.code == expected, run
        assert run.out == b""
        line = run.error_line()
        assert line.startswith("jobkit: error: ")
        for word in words:
            assert word in line, (line, word)


def test_unreachable_server_names_the_address(certs: Path) -> None:
    env = base_env(JOBKIT_SERVER="127.0.0.1:1", JOBKIT_CERTS=str(certs))
    check_all(env, 4, "127.0.0.1:1", "connection refused")


def test_unresolvable_host(certs: Path) -> None:
    env = base_env(JOBKIT_CERTS=str(certs))
    run = run_jobkit("--server", "no-such-host.invalid:8443", "list", env=env)
    assert run.code == 4
    assert "no-such-host.invalid:8443" in run.error_line()


def test_not_a_tls_server(certs: Path) -> None:
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_plain_http() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer_plain_http, daemon=True)
    thread.start()
    try:
        run = run_jobkit("list", env=base_env(JOBKIT_SERVER=f"127.0.0.1:{port}",
                                              JOBKIT_CERTS=str(certs)))
    finally:
        thread.join(30)
        listener.close()
    assert run.code == 4
    assert f"127.0.0.1:{port}" in run.error_line()


def test_server_from_another_ca(server: str, tmp_path: Path) -> None:
    other = pki.init_pki(tmp_path / "other", clients=["mallory"])
    env = base_env(JOBKIT_SERVER=server, JOBKIT_CERTS=str(other / "clients" / "mallory"))
    check_all(env, 5, "refusing the server", server, "not trusted")


def test_client_certificate_from_another_ca(server: str, pki_root: Path, tmp_path: Path) -> None:
    folder = forge(pki_root, tmp_path / "forged", ca=pki.make_ca(), common_names=["mallory"])
    env = base_env(JOBKIT_SERVER=server, JOBKIT_CERTS=str(folder))
    check_all(env, 5, "refused our client certificate", "unknown ca", server)


def test_expired_client_certificate(server: str, pki_root: Path, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    folder = forge(pki_root, tmp_path / "forged", common_names=["late"],
                   not_before=now - dt.timedelta(days=9),
                   not_after=now - dt.timedelta(days=1))
    env = base_env(JOBKIT_SERVER=server, JOBKIT_CERTS=str(folder))
    check_all(env, 5, "refused our client certificate", "expired")


def test_server_certificate_as_client_certificate(server: str, pki_root: Path) -> None:
    # The server's own certificate has no clientAuth: the server must refuse it.
    env = base_env(JOBKIT_SERVER=server, JOBKIT_CERTS=str(pki_root / "server"))
    run = run_jobkit("list", env=env)
    assert run.code == 5
    assert "refused our client certificate" in run.error_line()


def test_missing_certificate_folder(server: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    check_all(base_env(JOBKIT_SERVER=server, JOBKIT_CERTS=str(missing)), 6,
              str(missing), "does not exist")


@pytest.mark.parametrize("name", ["ca.pem", "cert.pem", "key.pem"])
def test_missing_certificate_file(server: str, certs: Path, tmp_path: Path, name: str) -> None:
    folder = tmp_path / "partial"
    shutil.copytree(certs, folder)
    (folder / name).unlink()
    run = run_jobkit("list", env=base_env(JOBKIT_SERVER=server, JOBKIT_CERTS=str(folder)))
    assert run.code == 6
    assert f"{folder / name} is missing" in run.error_line()


def test_unreadable_and_invalid_certificate_files(server: str, certs: Path,
                                                  tmp_path: Path) -> None:
    import os

    folder = tmp_path / "bad"
    shutil.copytree(certs, folder)
    env = base_env(JOBKIT_SERVER=server, JOBKIT_CERTS=str(folder))
    (folder / "key.pem").write_text("garbage\n")
    run = run_jobkit("list", env=env)
    assert run.code == 6
    assert "key.pem" in run.error_line()
    if os.geteuid() != 0:  # root reads anything
        (folder / "key.pem").chmod(0)
        run = run_jobkit("list", env=env)
        assert run.code == 6
        assert "key.pem is not readable" in run.error_line()
    folder_as_file = tmp_path / "file"
    folder_as_file.write_text("")
    run = run_jobkit("list", env={**env, "JOBKIT_CERTS": str(folder_as_file)})
    assert run.code == 6
    assert str(folder_as_file) in run.error_line()


def test_default_certificate_folder_is_named(server: str, tmp_path: Path) -> None:
    env = base_env(JOBKIT_SERVER=server, XDG_DATA_HOME=str(tmp_path / "data"))
    run = run_jobkit("list", env=env)
    assert run.code == 6
    line = run.error_line()
    assert str(tmp_path / "data" / "jobkit" / "pki" / "clients") in line
    assert "--certs" in line


@pytest.mark.parametrize("address", ["host:port", "::1:8443", "host:0"])
def test_bad_server_address(certs: Path, address: str) -> None:
    run = run_jobkit("--server", address, "list", env=base_env(JOBKIT_CERTS=str(certs)))
    assert run.code == 2
    assert address in run.error_line()


@pytest.mark.parametrize("args", [["bogus"], ["status"], ["status", "1", "2"], ["list", "-x"],
                                  ["stop", "--signal"], ["--nope", "list"]])
def test_usage_errors_are_one_line(jobkit: Jobkit, args: list[str]) -> None:
    run = jobkit(*args)
    assert run.code == 2
    assert run.out == b""
    assert run.error_line().startswith("jobkit: error: ")


def test_server_error_message_is_shown(jobkit: Jobkit, server: str, pki_root: Path,
                                       tmp_path: Path) -> None:
    # A certificate with two CNs verifies, but names no one: the server answers 403.
    folder = forge(pki_root, tmp_path / "forged", common_names=["a", "b"])
    run = run_jobkit("list", env=base_env(JOBKIT_SERVER=server, JOBKIT_CERTS=str(folder)))
    assert run.code == 5
    line = run.error_line()
    assert "CN" in line


def test_flags_override_the_environment(env: dict[str, str], server: str, certs: Path) -> None:
    wrong = {**env, "JOBKIT_SERVER": "127.0.0.1:1", "JOBKIT_CERTS": "/nowhere"}
    assert run_jobkit("list", env=wrong).code == 6  # /nowhere is checked first
    run = run_jobkit("--server", server, "--certs", certs, "list", env=wrong)
    assert (run.code, run.stdout) == (0, "ID  COMMAND  STATE  EXIT  STARTED  DURATION  CPU  MEM\n")
