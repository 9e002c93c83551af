"""Mutual TLS 1.3: who gets in, who is refused, and the handshake never stalls the server."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from jobkit.pki import issue_certificate, load_ca, make_ca
from jobkit.server.serve import JobServer
from jobkit.server.tls import UnacceptableCertificate, common_name
from tests.support.api import ApiClient, client_context, raw_tls, read_until_closed
from tests.support.pki import forge
from tests.support.servers import running_server
from tests.support.waiting import wait_until

OPENSSL = "/usr/bin/openssl"
REQUEST = b"GET /jobs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def s_client(address: tuple[str, int], folder: Path, *extra: str,
             with_cert: bool = True) -> subprocess.CompletedProcess[bytes]:
    host, port = address
    args = [OPENSSL, "s_client", "-connect", f"{host}:{port}", "-CAfile", str(folder / "ca.pem"),
            "-quiet", *extra]
    if with_cert:
        args += ["-cert", str(folder / "cert.pem"), "-key", str(folder / "key.pem")]
    return subprocess.run(args, input=REQUEST, capture_output=True, timeout=30)


def refused_by_python(address: tuple[str, int], context: ssl.SSLContext) -> bool:
    """True if the server ends the connection without answering a request."""
    try:
        sock = raw_tls(address, context)
    except (ssl.SSLError, ConnectionResetError):
        return True  # refused during the handshake
    with sock:
        try:
            sock.sendall(REQUEST)
        except (ssl.SSLError, OSError):
            return True
        return b"HTTP/" not in read_until_closed(sock)


# -- who gets in ------------------------------------------------------------------------


def test_a_client_of_our_ca_is_served_over_tls_1_3(server: JobServer, client: ApiClient) -> None:
    response = client.get("/jobs")
    assert response.status == 200
    assert response.json() == {"ids": [], "jobs": [], "next": None}
    assert client.conn.sock.version() == "TLSv1.3"  # type: ignore[union-attr]


def test_openssl_s_client_with_a_good_certificate_is_served(server: JobServer, pki: Path) -> None:
    result = s_client(server.address, pki / "clients" / "alice")
    assert b"HTTP/1.1 200 OK" in result.stdout, result.stderr


def test_openssl_tls_1_2_is_refused(server: JobServer, pki: Path) -> None:
    result = s_client(server.address, pki / "clients" / "alice", "-tls1_2")
    assert b"HTTP/" not in result.stdout
    assert b"protocol version" in result.stderr, result.stderr


def test_python_tls_1_2_is_refused(server: JobServer, pki: Path) -> None:
    context = client_context(pki / "clients" / "alice")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol version"):
        raw_tls(server.address, context)


def test_openssl_without_a_client_certificate_is_refused(server: JobServer, pki: Path) -> None:
    # In TLS 1.3 the client has finished its handshake when the server checks
    # its (absent) certificate: s_client may be writing its request when the
    # alert and the close come, and then report the broken pipe instead of
    # the alert.  Never served; the alert seen in at least one of a few tries.
    stderrs = []
    for _ in range(5):
        result = s_client(server.address, pki / "clients" / "alice", with_cert=False)
        assert b"HTTP/" not in result.stdout
        stderrs.append(result.stderr)
        if b"certificate required" in result.stderr:
            break
    assert any(b"certificate required" in err for err in stderrs), stderrs


def test_python_without_a_client_certificate_is_refused(server: JobServer, pki: Path) -> None:
    context = ssl.create_default_context(cafile=str(pki / "clients" / "alice" / "ca.pem"))
    assert refused_by_python(server.address, context)


def test_a_certificate_from_another_ca_is_refused(server: JobServer, pki: Path,
                                                  tmp_path: Path) -> None:
    folder = forge(pki, tmp_path / "other", ca=make_ca("another CA"), common_names=("alice",))
    result = s_client(server.address, folder)
    assert b"HTTP/" not in result.stdout
    assert b"unknown ca" in result.stderr, result.stderr
    assert refused_by_python(server.address, client_context(folder))


def test_an_expired_client_certificate_is_refused(server: JobServer, pki: Path,
                                                  tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    folder = forge(pki, tmp_path / "expired", common_names=("alice",),
                   not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    result = s_client(server.address, folder)
    assert b"HTTP/" not in result.stdout
    assert b"certificate expired" in result.stderr, result.stderr
    assert refused_by_python(server.address, client_context(folder))


def test_a_server_only_certificate_cannot_be_a_client(server: JobServer, pki: Path,
                                                      tmp_path: Path) -> None:
    folder = forge(pki, tmp_path / "server-eku", common_names=("alice",),
                   extended_usages=(ExtendedKeyUsageOID.SERVER_AUTH,))
    assert refused_by_python(server.address, client_context(folder))


def test_only_our_ca_is_trusted(server: JobServer, pki: Path) -> None:
    context = server.adapter.context
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.cert_store_stats()["x509_ca"] == 1  # no system store
    (ca,) = context.get_ca_certs()
    assert dict(name[0] for name in ca["subject"])["commonName"] == "jobkit CA"


# -- identity = exactly one CN ------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "why"),
    [((), "no subject CN"), (("alice", "bob"), "2 subject CNs")],
    ids=["no-cn", "two-cns"],
)
def test_a_certificate_without_exactly_one_cn_gets_403(
    server: JobServer, pki: Path, tmp_path: Path, names: tuple[str, ...], why: str
) -> None:
    folder = forge(pki, tmp_path / "c", common_names=names, dns_names=("client.example",))
    client = ApiClient(server.address, folder, "?")
    for method, path in [("GET", "/jobs"), ("PUT", "/jobs"), ("GET", "/jobs/1/status"),
                         ("GET", "/openapi.json"), ("GET", "/nowhere")]:
        response = client.request(method, path, {"cmd": "true"} if method == "PUT" else None)
        assert response.status == 403, (method, path, response)
        assert why in response.problem()["detail"]
    client.close()


def test_one_cn_with_a_comma_is_its_own_client(server: JobServer, pki: Path,
                                               tmp_path: Path) -> None:
    # cheroot's SSL_CLIENT_S_DN_CN would show "a,b" for both this and the CNs a and b.
    folder = forge(pki, tmp_path / "comma", common_names=("a,b",))
    client = ApiClient(server.address, folder, "a,b")
    job_id = client.create("true")
    jobs = client.get("/jobs").json()["jobs"]
    assert [(job["id"], job["client"]) for job in jobs] == [(job_id, "a,b")]
    client.close()


def test_common_name_reads_the_certificate_itself(pki: Path) -> None:
    ca_cert, ca_key = load_ca(pki)
    for names, expected in [(("x",), "x"), (("a,b",), "a,b"), (("é ü",), "é ü")]:
        cert, _ = issue_certificate(ca_cert, ca_key, common_names=names)
        assert common_name(cert.public_bytes(Encoding.DER)) == expected
    for names in [(), ("a", "b")]:
        cert, _ = issue_certificate(ca_cert, ca_key, common_names=names,
                                    dns_names=("x.example",))
        with pytest.raises(UnacceptableCertificate):
            common_name(cert.public_bytes(Encoding.DER))
    with pytest.raises(UnacceptableCertificate):
        common_name(b"not a certificate")


# -- the handshake never stalls the server (cheroot issue 748) ------------------------


def _silent_connections(address: tuple[str, int]) -> list[socket.socket]:
    silent = [socket.create_connection(address) for _ in range(3)]
    # One more that starts a TLS record (handshake, 512 bytes announced) and stops.
    partial = socket.create_connection(address)
    partial.sendall(b"\x16\x03\x01\x02\x00")
    return [*silent, partial]


def _time_one_request(address: tuple[str, int], pki: Path) -> float:
    context = client_context(pki / "clients" / "alice")
    start = time.monotonic()
    with raw_tls(address, context) as sock:
        sock.sendall(REQUEST)
        reply = read_until_closed(sock)
    elapsed = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
    return elapsed


def test_silent_connections_do_not_delay_other_clients(server: JobServer, pki: Path) -> None:
    before = len(server.adapter._sockets)
    silent = _silent_connections(server.address)
    try:
        # Wait until the server accepted them all: they now sit in worker threads.
        wait_until(lambda: len(server.adapter._sockets) >= before + len(silent),
                   what="the silent connections to be accepted")
        for _ in range(3):
            assert _time_one_request(server.address, pki) < 0.5
    finally:
        for sock in silent:
            sock.close()


def test_control_cheroots_own_adapter_does_stall(pki: Path) -> None:
    """The check above can fail: cheroot's adapter handshakes in its accept loop."""
    folder = pki / "server"
    adapter = BuiltinSSLAdapter(str(folder / "cert.pem"), str(folder / "key.pem"),
                                str(folder / "ca.pem"))
    adapter.context.verify_mode = ssl.CERT_REQUIRED

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "2")])  # type: ignore[operator]
        return [b"{}"]

    stalled = wsgi.Server(("127.0.0.1", 0), app, timeout=1)
    stalled.ssl_adapter = adapter
    stalled.prepare()
    thread = threading.Thread(target=stalled.serve, daemon=True)
    thread.start()
    silent = [socket.create_connection(stalled.bind_addr)]  # one is enough to stall it
    try:
        assert _time_one_request(stalled.bind_addr, pki) > 0.5
    finally:
        for sock in silent:
            sock.close()
        stalled.stop()
        thread.join(10)


@pytest.fixture
def quick_handshake_server(pki: Path) -> Iterator[JobServer]:
    with running_server(pki, handshake_timeout=0.3, threads=4) as server:
        yield server


def test_a_silent_connection_is_closed_after_the_handshake_timeout(
    quick_handshake_server: JobServer,
) -> None:
    with socket.create_connection(quick_handshake_server.address, timeout=10) as sock:
        start = time.monotonic()
        assert read_until_closed(sock) == b""
        assert 0.2 < time.monotonic() - start < 5


def test_plain_http_on_the_tls_port_is_closed_quickly(server: JobServer,
                                                      client: ApiClient) -> None:
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(REQUEST)
        assert b"200 OK" not in read_until_closed(sock)
    assert client.get("/jobs").status == 200
