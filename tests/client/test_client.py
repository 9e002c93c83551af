"""`jobkit.client.Client` against a real server, and side by side with a local `JobPool`."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobkit import (
    AuthenticationFailed,
    BackendNotFound,
    ConnectionFailed,
    JobNotFound,
    JobOutput,
    JobPool,
    JobStatus,
    ServerError,
    State,
    StreamInfo,
)
from jobkit.client import Client, RemoteFollower, transport
from jobkit.server.serve import JobServer
from tests.support.fifos import release
from tests.support.pki import forge, new_client
from tests.support.waiting import wait_until

ALL_BYTES = bytes(range(256)) * 3
WRITE_BYTES = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 3); " \
              "sys.stderr.buffer.write(b'\\xff\\x00err')"


# -- the same behaviour from a JobPool and from a Client ----------------------------------


@pytest.fixture(params=["local", "remote"])
def jobs(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A `JobPool`, or a `Client` of a real server: the tests below run on both."""
    if request.param == "local":
        with JobPool() as pool:
            yield pool
    else:
        yield request.getfixturevalue("client")


def test_create_wait_status(jobs: Any) -> None:
    job_id = jobs.create("sh", ["-c", "exit 3"])
    final = jobs.wait(job_id, timeout=10)
    assert isinstance(final, JobStatus)
    assert final.id == job_id
    assert final.state is State.COMPLETED
    assert final.exit_code == 3
    assert final.command == "sh"
    assert final.args == ("-c", "exit 3")
    assert final.created_at.tzinfo is not None
    assert final.ended_at is not None and final.ended_at >= final.created_at
    assert final.pid is not None
    assert final.stdout == StreamInfo(written=0, dropped=0, closed=True)
    assert jobs.status(job_id) == final


def test_output_is_byte_exact(jobs: Any) -> None:
    job_id = jobs.create(sys.executable, ["-c", WRITE_BYTES])
    jobs.wait(job_id, timeout=10)
    assert jobs.output(job_id) == JobOutput(stdout=ALL_BYTES, stderr=b"\xff\x00err")


def test_read_with_offset_and_size(jobs: Any) -> None:
    job_id = jobs.create(sys.executable, ["-c", WRITE_BYTES])
    jobs.wait(job_id, timeout=10)
    assert jobs.read(job_id, "stdout") == ALL_BYTES
    assert jobs.read(job_id, "stdout", 10) == ALL_BYTES[10:]
    assert jobs.read(job_id, "stdout", 10, 5) == ALL_BYTES[10:15]
    assert jobs.read(job_id, "stdout", 10, 0) == b""
    assert jobs.read(job_id, "stdout", len(ALL_BYTES)) == b""
    assert jobs.read(job_id, "stdout", 10**6) == b""
    assert jobs.read(job_id, "stderr", 1) == b"\x00err"


def test_follow_is_live(jobs: Any, fifo: Path) -> None:
    job_id = jobs.create("sh", ["-c", f"echo one; cat {fifo}; echo three"])
    follower = jobs.follow(job_id, "stdout")
    assert next(follower) == b"one\n"  # while the job waits on the fifo
    assert jobs.status(job_id).running
    release(fifo, b"two\n")
    rest = b"".join(follower)
    assert rest == b"two\nthree\n"
    assert follower.offset == len(b"one\ntwo\nthree\n")
    assert jobs.wait(job_id, timeout=10).exit_code == 0


def test_follow_from_offset(jobs: Any) -> None:
    job_id = jobs.create("echo", ["hello"])
    jobs.wait(job_id, timeout=10)
    follower = jobs.follow(job_id, "stdout", 2)
    assert b"".join(follower) == b"llo\n"
    assert follower.offset == 6


def test_follower_read_timeout_and_cancel(jobs: Any, fifo: Path) -> None:
    job_id = jobs.create("sh", ["-c", f"echo one; cat {fifo}"])
    follower = jobs.follow(job_id, "stdout")
    assert follower.read(10) == b"one\n"
    assert follower.read(0.05) == b""  # the job is blocked on the fifo: nothing comes
    canceller = threading.Thread(target=follower.cancel)
    canceller.start()
    assert follower.read() is None
    canceller.join()
    assert list(follower) == []
    jobs.delete(job_id)


def test_stop_and_delete(jobs: Any) -> None:
    job_id = jobs.create("sleep", ["30"])
    jobs.stop(job_id, "INT")
    final = jobs.wait(job_id, timeout=10)
    assert final.state is State.KILLED
    assert final.signal == signal.SIGINT
    jobs.delete(job_id)
    assert job_id not in jobs.list()
    with pytest.raises(JobNotFound):
        jobs.status(job_id)


def test_list_oldest_first(jobs: Any) -> None:
    ids = [jobs.create("true") for _ in range(3)]
    assert [job for job in jobs.list() if job in ids] == ids


@pytest.mark.parametrize("call", [
    lambda jobs: jobs.status("nope"),
    lambda jobs: jobs.wait("nope"),
    lambda jobs: jobs.output("nope"),
    lambda jobs: jobs.read("nope", "stdout"),
    lambda jobs: jobs.follow("nope", "stderr"),
    lambda jobs: jobs.stop("nope"),
    lambda jobs: jobs.delete("nope"),
], ids=["status", "wait", "output", "read", "follow", "stop", "delete"])
def test_unknown_job(jobs: Any, call: Any) -> None:
    with pytest.raises(JobNotFound) as caught:
        call(jobs)
    assert caught.value.job_id == "nope"
    assert isinstance(caught.value, LookupError)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"command": 3}, TypeError),
    ({"command": ""}, ValueError),
    ({"command": "a\0b"}, ValueError),
    ({"command": "echo", "args": "hi"}, TypeError),
    ({"command": "echo", "args": [1]}, TypeError),
    ({"command": "echo", "env": {"A=B": "x"}}, ValueError),
    ({"command": "echo", "env": ["A"]}, TypeError),
    ({"command": "echo", "timeout": -1}, ValueError),
    ({"command": "echo", "timeout": "1"}, TypeError),
    ({"command": "echo", "backend": "no-such-backend"}, BackendNotFound),
], ids=lambda value: repr(value)[:40])
def test_bad_arguments(jobs: Any, kwargs: dict[str, Any], error: type[Exception]) -> None:
    arguments = dict(kwargs)
    command = arguments.pop("command")
    with pytest.raises(error):
        jobs.create(command, **arguments)


def test_bad_stream_and_signal(jobs: Any) -> None:
    job_id = jobs.create("true")
    with pytest.raises(ValueError, match="stream"):
        jobs.read(job_id, "stdin")
    with pytest.raises(ValueError, match="signal"):
        jobs.stop(job_id, "SIGNOPE")


def test_error_state(jobs: Any) -> None:
    job_id = jobs.create("/no/such/command")
    final = jobs.wait(job_id, timeout=10)
    assert final.state is State.ERROR
    assert final.error and "/no/such/command" in final.error


def test_env_cwd_and_timeout(jobs: Any, tmp_path: Path) -> None:
    job_id = jobs.create("sh", ["-c", 'echo "$JK_A"; pwd'], env={"JK_A": "a b"}, cwd=tmp_path)
    jobs.wait(job_id, timeout=10)
    assert jobs.output(job_id).stdout == f"a b\n{tmp_path}\n".encode()
    alone = jobs.create("/usr/bin/env", env={"ONLY": "1"}, replace_env=True)
    jobs.wait(alone, timeout=10)
    assert jobs.output(alone).stdout == b"ONLY=1\n"
    slow = jobs.create("sleep", ["30"], timeout=0.1)
    final = jobs.wait(slow, timeout=20)
    assert final.state is State.KILLED
    assert final.timed_out


# -- the remote client only ---------------------------------------------------------------


def test_backend_not_found_names_the_backend(client: Client) -> None:
    with pytest.raises(BackendNotFound) as caught:
        client.create("true", backend="no-such-backend")
    assert caught.value.name == "no-such-backend"
    assert "no-such-backend" in str(caught.value)
    assert "memory" in str(caught.value)


def test_unsupported_create_options(client: Client) -> None:
    with pytest.raises(ValueError, match="backend_options"):
        client.create("true", backend_options={"size": 1})


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


def test_jobs_in_one_request(client: Client) -> None:
    first = client.create("true")
    second = client.create("sh", ["-c", "exit 4"])
    client.wait(second, timeout=10)
    client.wait(first, timeout=10)
    statuses = client.jobs()
    assert [status.id for status in statuses] == [first, second]
    assert statuses[1].exit_code == 4
    assert client.list_json()["ids"] == [first, second]
    assert client.status_json(second)["exit_code"] == 4


def test_another_clients_job_does_not_exist(client: Client, server: str,
                                            pki_root: Path) -> None:
    job_id = client.create("sleep", ["30"])
    with Client(server, new_client(pki_root), timeout=10) as other:
        for call in (other.status, other.delete, other.output, other.stop):
            with pytest.raises(JobNotFound):
                call(job_id)
        assert other.list() == []
    assert client.status(job_id).running
    client.delete(job_id)


def test_keep_alive_reuses_one_connection(client: Client) -> None:
    client.list()
    idle = list(client._transport._idle)
    assert len(idle) == 1
    client.list()
    client.status(client.create("true"))
    assert client._transport._idle == idle


def test_server_closed_idle_connection_is_replaced(client: Client) -> None:
    client.list()
    (connection,) = client._transport._idle
    assert connection.sock is not None
    # Our side half-closes: the server ends the connection, as after its idle timeout.
    connection.sock.shutdown(1)  # SHUT_WR
    wait_until(lambda: transport._readable(connection.sock), what="the server's close")
    assert client.list() == []
    assert client._transport._idle and client._transport._idle[0] is not connection


def test_dropped_keep_alive_is_retried_for_get_only(client: Client,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The idle check cannot see every drop (the server may close just after
    # it looked): pretend it saw nothing, so requests go out on a dead connection.
    closed = transport._readable
    monkeypatch.setattr(transport, "_readable", lambda sock: False)
    for request, retried in [(client.list, True), (lambda: client.create("true"), False)]:
        client.list()
        (connection,) = client._transport._idle
        connection.sock.shutdown(1)  # SHUT_WR: the server closes its side
        wait_until(lambda c=connection: closed(c.sock), what="the server's close")
        if retried:
            assert request() == []
        else:  # a PUT may have been seen: never sent twice
            with pytest.raises(ConnectionFailed, match="connection"):
                request()


def test_threads_share_a_client(client: Client) -> None:
    job_id = client.create("true")
    client.wait(job_id, timeout=10)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(20):
                assert client.status(job_id).state is State.COMPLETED
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(client._transport._idle) <= transport.MAX_IDLE


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


def test_follower_context_manager_releases_connection(client: Client, fifo: Path) -> None:
    job_id = client.create("sh", ["-c", f"echo one; cat {fifo}"])
    with client.follow(job_id, "stdout") as follower:
        assert isinstance(follower, RemoteFollower)
        assert next(follower) == b"one\n"
    assert follower.read() is None
    release(fifo)
    assert client.wait(job_id, timeout=10).exit_code == 0


def test_follow_many_streams_at_once(client: Client, fifo: Path) -> None:
    job_id = client.create("sh", ["-c", f"echo one; cat {fifo}"])
    followers = [client.follow(job_id, "stdout") for _ in range(4)]
    assert [next(follower) for follower in followers] == [b"one\n"] * 4
    release(fifo, b"two\n")
    assert [b"".join(follower) for follower in followers] == [b"two\n"] * 4


def test_server_error_carries_status(client: Client) -> None:
    with pytest.raises(ServerError) as caught:
        client._json("GET", "/no/such/endpoint")
    assert caught.value.status == 404
    assert "no such endpoint" in str(caught.value)


# -- connecting and authenticating ------------------------------------------------------------


def test_unreachable_server_names_the_address(certs: Path) -> None:
    with Client("127.0.0.1:1", certs, timeout=5) as remote, \
            pytest.raises(ConnectionFailed, match=r"127\.0\.0\.1:1.*refused"):
        remote.list()


def test_server_from_another_ca_is_refused(server: str, tmp_path: Path) -> None:
    from jobkit import pki

    other = pki.init_pki(tmp_path / "other", clients=["mallory"])
    with Client(server, other / "clients" / "mallory", timeout=5) as remote, \
            pytest.raises(AuthenticationFailed, match=r"refusing the server .*not trusted"):
        remote.list()


def test_client_certificate_from_another_ca_is_refused(server: str, pki_root: Path,
                                                       tmp_path: Path) -> None:
    from jobkit import pki

    signer = pki.make_ca()
    folder = forge(pki_root, tmp_path / "forged", ca=signer, common_names=["mallory"])
    for _ in range(5):  # the alert races the reset: it must be found every time
        with Client(server, folder, timeout=5) as remote, \
                pytest.raises(AuthenticationFailed, match="refused our client certificate"):
            remote.list()


def test_expired_client_certificate_is_refused(server: str, pki_root: Path,
                                               tmp_path: Path) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    folder = forge(pki_root, tmp_path / "forged", common_names=["late"],
                   not_before=now - dt.timedelta(days=10),
                   not_after=now - dt.timedelta(days=1))
    with Client(server, folder, timeout=5) as remote, \
            pytest.raises(AuthenticationFailed, match=r"refused our client certificate.*expired"):
        remote.list()


def test_missing_folder_and_files_are_named(tmp_path: Path, certs: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"certificate folder .*nowhere does not exist"):
        Client("127.0.0.1:1", tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("ca.pem", "cert.pem"):
        (partial / name).write_bytes((certs / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"partial/key\.pem is missing") as caught:
        Client("127.0.0.1:1", partial)
    assert caught.value.filename == str(partial / "key.pem")


def test_unusable_files_are_named(tmp_path: Path, certs: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (folder / name).write_bytes((certs / name).read_bytes())
    (folder / "key.pem").write_text("not a key\n")
    with pytest.raises(ValueError, match=r"key\.pem"):
        Client("127.0.0.1:1", folder)
    (folder / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"ca\.pem"):
        Client("127.0.0.1:1", folder)


def test_a_tilde_in_the_certs_folder_is_the_home(server: str, certs: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(certs.parent))
    with Client(server, f"~/{certs.name}") as client:
        assert client.list() == []


def test_context_is_tls13_only_and_trusts_only_our_ca(certs: Path) -> None:
    import ssl

    context = transport.load_tls_context(certs)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert len(context.get_ca_certs()) == 1  # ours; no system store


def _cut(follower: RemoteFollower) -> None:
    """Break the follower's connection under it, as a network failure would."""
    import socket

    connection = follower._reply.connection
    assert connection is not None and connection.sock is not None
    socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)


def test_broken_follow_stream_resumes_where_it_was(client: Client, fifo: Path) -> None:
    job_id = client.create("sh", ["-c", f"echo one; cat {fifo}; echo three"])
    follower = client.follow(job_id, "stdout")
    assert next(follower) == b"one\n"
    _cut(follower)
    release(fifo, b"two\n")
    assert b"".join(follower) == b"two\nthree\n"  # nothing lost, nothing twice
    assert follower.offset == len(b"one\ntwo\nthree\n")


def test_broken_follow_stream_of_a_deleted_job_ends(client: Client, fifo: Path) -> None:
    job_id = client.create("sh", ["-c", f"echo one; cat {fifo}"])
    follower = client.follow(job_id, "stdout")
    assert follower.read(10) == b"one\n"  # through the read-ahead thread this time
    _cut(follower)
    client.delete(job_id)
    assert follower.read(10) is None


def test_broken_plain_read_is_an_error(client: Client) -> None:
    job_id = client.create(sys.executable, ["-c", "print('x' * 1_000_000)"])
    client.wait(job_id, timeout=10)
    chunks = client.chunks(job_id, "stdout")
    assert next(chunks)
    _cut(chunks)
    with pytest.raises(ConnectionFailed, match="connection"):
        b"".join(chunks)
