"""Authentication: every kind of bad client certificate is refused, and runs nothing.

Each test forges one certificate with our own PKI code, connects with it and
asks the server to create a job that would leave a file behind (``touch``).
The outcome must be a TLS alert during or right after the handshake (OpenSSL
refuses the chain, the dates or the usage), or, for a certificate that is
valid but names no single client, a 403 with a JSON error.  Either way no job
exists afterwards (an admin lists every pool) and the file was never made.
"""

from __future__ import annotations

import datetime as dt
import json
import select
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from jobkit.pki import issue_certificate, load_ca, make_ca
from jobkit.server.serve import JobServer
from jobkit.wire import ProblemKind
from tests.support.api import ApiClient, client_context, problem_document
from tests.support.pki import forge
from tests.support.servers import all_jobs

NOW = dt.datetime.now(dt.timezone.utc)


@attrs.frozen
class Outcome:
    """What the server did with one attempt: a TLS alert, or an HTTP answer."""

    alert: str | None = None  # OpenSSL's reason, e.g. "TLSV1_ALERT_UNKNOWN_CA"
    status: int | None = None
    content_type: str | None = None
    body: bytes = b""


def attempt(address: tuple[str, int], context: ssl.SSLContext, marker: Path, *,
            expect_alert: bool = False) -> Outcome:
    """Connect with ``context`` and ask for a job that would create ``marker``.

    In TLS 1.3 the client finishes its handshake before the server has checked
    the client's certificate, so a refusal is an alert that comes after.  With
    ``expect_alert`` the request waits (up to a deadline) for the server to
    send something first: a request sent into a connection the server already
    closed would make its kernel answer with a reset, and the client would lose
    the alert that sits unread in its buffer.
    """
    body = json.dumps({"cmd": "touch", "args": [str(marker)]}).encode()
    request = (b"PUT /jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    with socket.create_connection(address, timeout=10) as raw:
        try:
            sock = context.wrap_socket(raw, server_hostname="localhost")
        except ssl.SSLError as error:
            return Outcome(alert=error.reason)
        with sock:
            reply = bytearray()
            try:
                if not expect_alert or not select.select([sock], [], [], 10)[0]:
                    sock.sendall(request)
                while chunk := sock.recv(65536):
                    reply += chunk
            except ssl.SSLError as error:
                assert not reply, reply
                return Outcome(alert=error.reason)
    if not reply:
        return Outcome(alert="closed without an answer")
    head, _, payload = bytes(reply).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    return Outcome(status=int(status_line.split()[1]), content_type=headers.get("content-type"),
                   body=payload)


@pytest.fixture
def check_nothing_created(server: JobServer, admin: ApiClient,
                          tmp_path: Path) -> Iterator[Path]:
    """Yield a marker path; afterwards no job was added anywhere and the marker does not exist."""
    before = all_jobs(admin)
    marker = tmp_path / "job-ran"
    yield marker
    assert all_jobs(admin) == before
    assert not marker.exists(), "a refused client's job ran"


def assert_alert(outcome: Outcome, *reasons: str) -> None:
    assert outcome.status is None, outcome
    assert outcome.alert in reasons, outcome


def test_the_control_a_good_certificate_creates_the_job(server: JobServer, admin: ApiClient,
                                                        pki: Path, tmp_path: Path) -> None:
    """The probe can see a success: a valid client gets its job (and its file)."""
    marker = tmp_path / "job-ran"
    outcome = attempt(server.address, client_context(pki / "clients" / "bob"), marker)
    assert (outcome.status, outcome.content_type) == (201, "application/json"), outcome
    job_id = json.loads(outcome.body)["id"]
    assert ("bob", job_id) in all_jobs(admin)
    bob = ApiClient(server.address, pki / "clients" / "bob", "bob")
    assert bob.wait(job_id)["exit_code"] == 0
    assert marker.exists()
    bob.request("DELETE", f"/jobs/{job_id}")
    bob.close()


def test_no_certificate(server: JobServer, pki: Path, check_nothing_created: Path) -> None:
    context = ssl.create_default_context(cafile=str(pki / "clients" / "alice" / "ca.pem"))
    outcome = attempt(server.address, context, check_nothing_created, expect_alert=True)
    assert_alert(outcome, "TLSV13_ALERT_CERTIFICATE_REQUIRED")


def test_a_certificate_from_another_ca(server: JobServer, pki: Path, tmp_path: Path,
                                       check_nothing_created: Path) -> None:
    # Same subject name as our CA, so only the signature tells them apart.
    folder = forge(pki, tmp_path / "c", ca=make_ca("jobkit CA"), common_names=["alice"])
    outcome = attempt(server.address, client_context(folder), check_nothing_created,
                      expect_alert=True)
    assert_alert(outcome, "TLSV1_ALERT_UNKNOWN_CA", "TLSV1_ALERT_DECRYPT_ERROR",
                 "SSLV3_ALERT_BAD_CERTIFICATE")


def test_an_expired_certificate(server: JobServer, pki: Path, tmp_path: Path,
                                check_nothing_created: Path) -> None:
    folder = forge(pki, tmp_path / "c", common_names=["alice"],
                   not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1))
    outcome = attempt(server.address, client_context(folder), check_nothing_created,
                      expect_alert=True)
    assert_alert(outcome, "SSLV3_ALERT_CERTIFICATE_EXPIRED")


def test_a_certificate_not_yet_valid(server: JobServer, pki: Path, tmp_path: Path,
                                     check_nothing_created: Path) -> None:
    folder = forge(pki, tmp_path / "c", common_names=["alice"],
                   not_before=NOW + dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=30))
    outcome = attempt(server.address, client_context(folder), check_nothing_created,
                      expect_alert=True)
    assert_alert(outcome, "SSLV3_ALERT_BAD_CERTIFICATE")


def test_a_server_only_certificate(server: JobServer, pki: Path, tmp_path: Path,
                                   check_nothing_created: Path) -> None:
    # Exactly like the server's own certificate: serverAuth, no clientAuth.
    folder = forge(pki, tmp_path / "c", common_names=["alice"], dns_names=["localhost"],
                   extended_usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    outcome = attempt(server.address, client_context(folder), check_nothing_created,
                      expect_alert=True)
    assert_alert(outcome, "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE")


def test_the_servers_own_certificate_is_not_a_client(server: JobServer, pki: Path,
                                                     check_nothing_created: Path) -> None:
    # Someone who stole the server's key still cannot act as a client.
    outcome = attempt(server.address, client_context(pki / "server"), check_nothing_created,
                      expect_alert=True)
    assert_alert(outcome, "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE")


def _json_403(outcome: Outcome, fragment: str) -> None:
    assert outcome.alert is None, outcome
    assert outcome.status == 403, outcome
    error = problem_document(outcome.status, outcome.content_type, outcome.body)
    assert error["type"] == ProblemKind.BAD_CERTIFICATE_IDENTITY.type_uri, error
    assert fragment in error["detail"], error


def test_a_certificate_without_a_cn(server: JobServer, pki: Path, tmp_path: Path,
                                    check_nothing_created: Path) -> None:
    folder = forge(pki, tmp_path / "c", common_names=[], dns_names=["alice.example"])
    _json_403(attempt(server.address, client_context(folder), check_nothing_created),
              "no subject CN")


def test_a_certificate_with_two_cns(server: JobServer, pki: Path, tmp_path: Path,
                                    check_nothing_created: Path) -> None:
    # A client named "bob" that also claims to be "alice" is neither.
    folder = forge(pki, tmp_path / "c", common_names=["alice", "bob"])
    _json_403(attempt(server.address, client_context(folder), check_nothing_created),
              "2 subject CNs")


def test_a_certificate_signed_by_a_client_certificate(server: JobServer, pki: Path,
                                                      tmp_path: Path,
                                                      check_nothing_created: Path) -> None:
    """bob (a client, not a CA) signs a certificate naming alice, and sends his own along."""
    ca_cert, ca_key = load_ca(pki)
    bob_cert, bob_key = issue_certificate(ca_cert, ca_key, common_names=["bob"])
    folder = forge(pki, tmp_path / "c", ca=(bob_cert, bob_key), common_names=["alice"],
                   chain=[bob_cert])
    outcome = attempt(server.address, client_context(folder), check_nothing_created,
                      expect_alert=True)
    assert_alert(outcome, "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
                 "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE")


def test_a_certificate_signed_by_an_intermediate_ca_we_never_made(
    server: JobServer, pki: Path, tmp_path: Path, check_nothing_created: Path
) -> None:
    """Even a real CA certificate under our root would be refused: our root has pathlen 0.

    (Our PKI never issues intermediates; a CA key thief could, but could then
    sign client certificates directly anyway.)
    """
    ca_cert, ca_key = load_ca(pki)
    middle_cert, middle_key = issue_certificate(ca_cert, ca_key, common_names=["middle"],
                                                is_ca=True, extended_usages=[])
    folder = forge(pki, tmp_path / "c", ca=(middle_cert, middle_key), common_names=["alice"],
                   chain=[middle_cert])
    outcome = attempt(server.address, client_context(folder), check_nothing_created,
                      expect_alert=True)
    assert_alert(outcome, "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
                 "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE")
