"""Revocation and reload without a restart: real TLS 1.3, real servers, jobkit's own PKI.

Each test has a PKI of its own: revoking a client of the run's shared PKI
would lock it out of every other test.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from jobkit import pki as jobkit_pki
from jobkit.pki.files import write_file
from tests.support.api import ApiClient, client_context
from tests.support.processes import server_process
from tests.support.servers import running_server
from tests.support.waiting import wait_until


@pytest.fixture
def own_pki(tmp_path: Path) -> Path:
    return jobkit_pki.init_pki(tmp_path / "pki", clients=["alice", "bob", "admin"])


def audit_events(path: str | Path, kind: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line["event"] == kind]


def handshake(address: tuple[str, int], folder: Path) -> ssl.SSLSocket:
    """A TLS connection that has sent one request and read its answer's first bytes.

    TLS 1.3 servers check the client's certificate after the client's side of
    the handshake is done: a refusal arrives as an alert on the first read.
    """
    sock = socket.create_connection(address, timeout=10)
    tls = client_context(folder).wrap_socket(sock, server_hostname="localhost")
    try:
        tls.sendall(b"GET /jobs HTTP/1.1\r\nHost: localhost\r\n\r\n")
        if not tls.recv(64):
            raise ConnectionResetError("closed without an answer")
    except BaseException:
        tls.close()
        raise
    return tls


def refused_with(address: tuple[str, int], folder: Path) -> str:
    """The TLS alert a new connection from ``folder``'s client gets.

    Nothing is sent: a request sent into a connection the server already
    closed would be answered with a reset, losing the alert unread.
    """
    with socket.create_connection(address, timeout=10) as sock, \
            client_context(folder).wrap_socket(sock, server_hostname="localhost") as tls:
        assert select.select([tls], [], [], 10)[0], "no alert within 10 s"
        with pytest.raises(ssl.SSLError) as caught:
            tls.recv(64)
    return str(caught.value)


def server_serial(address: tuple[str, int], folder: Path) -> int:
    with handshake(address, folder) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_revoked_client_is_refused_at_once_while_others_work(own_pki: Path,
                                                               tmp_path: Path) -> None:
    clients = own_pki / "clients"
    with running_server(own_pki, threads=8, state_dir=tmp_path / "state") as server:
        alice = ApiClient(server.address, clients / "alice", "alice")
        bob = ApiClient(server.address, clients / "bob", "bob")
        admin = ApiClient(server.address, clients / "admin", "admin")
        job = alice.create("sleep", "1000")
        pid = alice.status(job)["pid"]
        assert server.certificates.checks_revocation

        jobkit_pki.revoke(own_pki, "alice")  # a new server/crl.pem: the next handshake sees it

        assert "certificate revoked" in refused_with(server.address, clients / "alice")
        assert bob.create("true")  # bob works, on a new connection too
        assert ApiClient(server.address, clients / "bob", "bob").get("/jobs").status == 200
        # alice's job is untouched: still running, with the same process.
        status = admin.status(job, "?client=alice")
        assert (status["status"], status["pid"]) == ("running", pid)
        # Her connection made before the revocation is not cut (nothing established is).
        assert alice.get(f"/jobs/{job}/status").status == 200

        log_file = server.audit.path
        assert log_file is not None
        [reloaded] = audit_events(log_file, "certs.reloaded")
        assert (reloaded["trigger"], reloaded["ok"]) == ("crl changed", True)
        assert str(own_pki / "server" / "crl.pem") in reloaded["files"]
        wait_until(lambda: [e for e in audit_events(log_file, "auth.refused")
                            if e["reason"] == "certificate revoked"], what="the refusal")
        for api in (alice, bob, admin):
            api.close()


def test_a_bad_crl_keeps_the_old_context(own_pki: Path, tmp_path: Path) -> None:
    clients = own_pki / "clients"
    crl = own_pki / "server" / "crl.pem"
    with running_server(own_pki, threads=8, state_dir=tmp_path / "state") as server:
        jobkit_pki.revoke(own_pki, "alice")
        assert "certificate revoked" in refused_with(server.address, clients / "alice")
        before = server.certificates.context
        # Replaced (a new inode, as any editor or copy does) with something that is no CRL.
        write_file(crl, b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n",
                   0o644, force=True)
        with handshake(server.address, clients / "bob"):  # bob is still let in...
            pass
        assert "certificate revoked" in refused_with(server.address, clients / "alice")
        assert server.certificates.context is before  # ... by the context kept
        # A CRL signed by another CA is refused too, and so is a missing one.
        other = jobkit_pki.init_pki(tmp_path / "other")
        write_file(crl, (other / "ca" / "crl.pem").read_bytes(), 0o644, force=True)
        assert "certificate revoked" in refused_with(server.address, clients / "alice")
        crl.unlink()
        assert "certificate revoked" in refused_with(server.address, clients / "alice")
        assert server.certificates.context is before
        results = [(e["ok"], e.get("reason", "")) for e in
                   audit_events(server.audit.path or "", "certs.reloaded")]
        assert [ok for ok, _ in results] == [True, False, False, False]
        assert "not a PEM certificate revocation list" in results[1][1]
        assert "not signed by the CA" in results[2][1]  # another CA of the same name
        assert "is gone" in results[3][1]
        # A good CRL again is taken at once.
        jobkit_pki.revoke(own_pki, "bob")
        assert "certificate revoked" in refused_with(server.address, clients / "bob")


def test_a_reload_with_a_bad_key_keeps_the_old_context(own_pki: Path, tmp_path: Path) -> None:
    with running_server(own_pki, threads=4, state_dir=tmp_path / "state") as server:
        before = server.certificates.context
        key = own_pki / "server" / "key.pem"
        key.write_bytes((own_pki / "clients" / "bob" / "key.pem").read_bytes())  # not its key
        result = server.reload_certificates("test")
        assert not result.ok and result.reason
        assert server.certificates.context is before
        with handshake(server.address, own_pki / "clients" / "alice"):
            pass


def test_renew_the_server_certificate_and_sighup(own_pki: Path, tmp_path: Path) -> None:
    alice = own_pki / "clients" / "alice"
    with server_process(own_pki, "--state-dir", str(tmp_path / "state")) as served:
        old = server_serial(served.address, alice)
        kept = ApiClient(served.address, alice, "alice")  # a connection made before the reload
        job = kept.create("sleep", "1000")
        connection = kept.conn.sock
        renewal = jobkit_pki.renew(own_pki, server=True)
        assert renewal.certificate.serial != old
        served.process.send_signal(signal.SIGHUP)
        wait_until(lambda: server_serial(served.address, alice) == renewal.certificate.serial,
                   what="a new connection to see the new certificate")
        # The connection made before still works, on the old certificate, and the job runs.
        assert kept.status(job)["status"] == "running"
        assert kept.conn.sock is connection
        assert served.alive()
        kept.close()
        log_file = tmp_path / "state" / "audit.log"
        [reloaded] = audit_events(log_file, "certs.reloaded")
        assert (reloaded["trigger"], reloaded["ok"]) == ("SIGHUP", True)
