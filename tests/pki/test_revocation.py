"""Revocation: the CRL the CA signs, and a real TLS 1.3 handshake on 127.0.0.1 that checks it."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from jobkit import pki

CLIENTS = ("alice", "bob")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return pki.init_pki(tmp_path / "pki", clients=CLIENTS)


def load_crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(path.read_bytes())


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def revoked_serials(crl: x509.CertificateRevocationList) -> set[int]:
    return {entry.serial_number for entry in crl}


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


# -- the CRL -----------------------------------------------------------------------------


def test_a_new_pki_has_an_empty_crl_signed_by_its_ca(root: Path) -> None:
    ca, _ = pki.load_ca(root)
    crl = pki.read_crl(root / "ca" / "crl.pem", ca)
    assert revoked_serials(crl) == set()
    assert crl_number(crl) == 1
    assert crl.issuer == ca.subject
    assert isinstance(crl.signature_hash_algorithm, hashes.SHA256)
    # Never "expired" while the CA is valid: nothing fetches a newer one.
    assert crl.next_update_utc == ca.not_valid_after_utc
    assert crl.last_update_utc <= dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=4)
    assert (root / "server" / "crl.pem").read_bytes() == (root / "ca" / "crl.pem").read_bytes()
    for path in (root / "ca" / "crl.pem", root / "server" / "crl.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "ca" / "issued.json").stat().st_mode) == 0o600


def test_revoking_a_client_puts_each_of_its_certificates_on_the_crl(root: Path) -> None:
    first = serial_of(root / "clients" / "alice" / "cert.pem")
    pki.issue_client(root, "alice", force=True)  # alice's old certificate is still valid
    second = serial_of(root / "clients" / "alice" / "cert.pem")
    done = pki.revoke(root, "alice")
    assert {c.serial for c in done.revoked} == {first, second}
    assert done.already == () and not done.unrecorded
    assert done.crl_files == (root / "ca" / "crl.pem", root / "server" / "crl.pem")
    ca, _ = pki.load_ca(root)
    crl = pki.read_crl(root / "server" / "crl.pem", ca)
    assert revoked_serials(crl) == {first, second}
    assert crl_number(crl) == 2
    revoked_at = crl.get_revoked_certificate_by_serial_number(first)
    assert revoked_at is not None
    assert abs(revoked_at.revocation_date_utc - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(
        minutes=1)
    record = pki.load_record(root)
    assert {c.serial for c in record.revoked()} == {first, second}
    assert record.crl_number == 2


def test_revoking_again_changes_nothing_but_writes_the_crl_again(root: Path) -> None:
    pki.revoke(root, "alice")
    (root / "server" / "crl.pem").unlink()  # lost, or never copied
    done = pki.revoke(root, "alice")
    assert done.revoked == ()
    assert [c.name for c in done.already] == ["alice"]
    crl = load_crl(root / "server" / "crl.pem")
    assert revoked_serials(crl) == {serial_of(root / "clients" / "alice" / "cert.pem")}
    assert crl_number(crl) == 3


def test_revoke_by_serial(root: Path) -> None:
    server = serial_of(root / "server" / "cert.pem")
    done = pki.revoke(root, serial=server)
    assert [(c.kind, c.serial) for c in done.revoked] == [("server", server)]
    assert revoked_serials(load_crl(root / "ca" / "crl.pem")) == {server}


def test_a_serial_in_no_record_is_revoked_all_the_same(root: Path) -> None:
    done = pki.revoke(root, serial=0x1234ABCD)
    assert done.unrecorded
    assert [(c.kind, c.name, c.serial) for c in done.revoked] == [("unknown", "", 0x1234ABCD)]
    assert revoked_serials(load_crl(root / "ca" / "crl.pem")) == {0x1234ABCD}
    assert pki.load_record(root).find(0x1234ABCD) is not None


def test_revoke_refuses_what_it_cannot_revoke(root: Path) -> None:
    before = (root / "ca" / "crl.pem").read_bytes()
    with pytest.raises(pki.PkiError, match="no client certificate was issued to 'carol'"):
        pki.revoke(root, "carol")
    with pytest.raises(pki.InvalidName, match="invalid client name"):
        pki.revoke(root, "../alice")
    with pytest.raises(TypeError):
        pki.revoke(root, "alice", serial=1)
    with pytest.raises(TypeError):
        pki.revoke(root)
    assert (root / "ca" / "crl.pem").read_bytes() == before


@pytest.mark.parametrize(("text", "serial"), [
    ("5f3a", 0x5F3A), ("5F:3A", 0x5F3A), ("0x5f3a", 0x5F3A), (" 0005f3a ", 0x5F3A),
    ("f" * 40, int("f" * 40, 16)),
])
def test_serials_are_read_as_hex(text: str, serial: int) -> None:
    assert pki.parse_serial(text) == serial
    assert pki.parse_serial(pki.format_serial(serial)) == serial


@pytest.mark.parametrize("text", ["", "0x", "xyz", "12 34", "f" * 41, "-1", "1.0"])
def test_bad_serials_are_refused(text: str) -> None:
    with pytest.raises(pki.InvalidName, match="invalid serial"):
        pki.parse_serial(text)


# -- checking a CRL before loading it ------------------------------------------------------


def forged_crl(path: Path, ca: x509.Certificate, key: Any, *, days: tuple[int, int]) -> Path:
    now = dt.datetime.now(dt.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
           .last_update(now + dt.timedelta(days=days[0]))
           .next_update(now + dt.timedelta(days=days[1]))
           .sign(key, hashes.SHA256()))
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def test_read_crl_refuses_what_would_shut_every_client_out(tmp_path: Path, root: Path) -> None:
    ca, key = pki.load_ca(root)
    # Every jobkit CA is called "jobkit CA": another PKI's CRL fails on its signature.
    other = pki.init_pki(tmp_path / "other")
    with pytest.raises(pki.PkiError, match="is not signed by the CA's key"):
        pki.read_crl(other / "ca" / "crl.pem", ca)
    named, named_key = pki.make_ca("another CA")
    with pytest.raises(pki.PkiError, match="was not issued by the CA CN=jobkit CA"):
        pki.read_crl(forged_crl(tmp_path / "named.pem", named, named_key, days=(-1, 10)), ca)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN X509 CRL-----\nnope\n-----END X509 CRL-----\n")
    with pytest.raises(pki.PkiError, match="is not a PEM certificate revocation list"):
        pki.read_crl(garbage, ca)
    with pytest.raises(pki.PkiError, match="has expired"):
        pki.read_crl(forged_crl(tmp_path / "old.pem", ca, key, days=(-10, -1)), ca)
    with pytest.raises(pki.PkiError, match="not valid yet"):
        pki.read_crl(forged_crl(tmp_path / "new.pem", ca, key, days=(1, 10)), ca)
    with pytest.raises(pki.PkiError, match="cannot read the CRL"):
        pki.read_crl(tmp_path / "missing.pem", ca)
    fine = pki.read_crl(forged_crl(tmp_path / "fine.pem", ca, key, days=(-1, 10)), ca)
    assert revoked_serials(fine) == set()


def test_server_crl_finds_the_server_folders_crl(root: Path) -> None:
    assert pki.server_crl(root) == root / "server" / "crl.pem"
    assert pki.server_crl(root / "server") == root / "server" / "crl.pem"
    (root / "server" / "crl.pem").unlink()  # a PKI made before jobkit kept a CRL
    assert pki.server_crl(root) is None


def test_apply_crl_loads_crls_only(tmp_path: Path, root: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes((root / "ca" / "crl.pem").read_bytes() + (root / "ca" / "cert.pem")
                      .read_bytes())
    for bad, found in ((root / "ca" / "cert.pem", "CERTIFICATE"),
                       (mixed, "CERTIFICATE, X509 CRL"),
                       (root / "ca" / "issued.json", "nothing in PEM")):
        with pytest.raises(pki.PkiError, match=f"PEM CRLs only \\(found: {found}\\)"):
            pki.apply_crl(context, bad)
    # Nothing was trusted or switched on by the refused files.
    assert context.cert_store_stats()["x509_ca"] == 0
    assert not context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    with pytest.raises(pki.PkiError, match="cannot read the CRL"):
        pki.apply_crl(context, tmp_path / "missing.pem")
    pki.apply_crl(context, root / "server" / "crl.pem")
    assert context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert context.cert_store_stats()["crl"] == 1


# -- a real handshake on 127.0.0.1 -------------------------------------------------------


def server_context(root: Path, crl: Path | None = None) -> ssl.SSLContext:
    """A server context as jobkit's, plus the CRL (the server's own when not given)."""
    folder = pki.server_dir(root)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    context.load_verify_locations(folder / "ca.pem")
    found = crl or pki.server_crl(root)
    assert found is not None
    pki.apply_crl(context, found)
    return context


def client_context(folder: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(folder / "ca.pem")
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


def connect(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[dict[str, Any], Any]:
    """One TLS connection over TCP on 127.0.0.1: (what the server saw, what the client got).

    The client gets the server's certificate (``getpeercert()``) and ``b"ok"``,
    or the error that ended the connection.
    """
    seen: dict[str, Any] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                connection, _ = listener.accept()
                connection.settimeout(10)
                with server.wrap_socket(connection, server_side=True) as tls:
                    seen["peer"] = tls.getpeercert()
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError) as error:
                seen["error"] = error

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                # TLS 1.3: the server judges the client's certificate after the
                # client's side of the handshake is done; a refusal is an alert
                # read with the first bytes.
                certificate = tls.getpeercert()
                got: Any = (certificate, tls.recv(2))
        except (ssl.SSLError, OSError) as error:
            got = error
        finally:
            thread.join(10)
        assert not thread.is_alive()
    return seen, got


def assert_accepted(seen: dict[str, Any], got: Any, name: str) -> dict[str, Any]:
    assert "error" not in seen, seen
    cns = [value for rdn in seen["peer"]["subject"] for key, value in rdn if key == "commonName"]
    assert cns == [name]
    assert isinstance(got, tuple) and got[1] == b"ok", got
    certificate: dict[str, Any] = got[0]
    return certificate


def assert_revoked(seen: dict[str, Any], got: Any) -> None:
    error = seen.get("error")
    assert isinstance(error, ssl.SSLCertVerificationError), seen
    assert error.verify_message == "certificate revoked"
    assert "peer" not in seen
    # The client hears why: the TLS alert "certificate revoked".
    assert isinstance(got, ssl.SSLError), got
    assert got.reason == "SSLV3_ALERT_CERTIFICATE_REVOKED", got


def test_a_revoked_client_is_refused_at_the_handshake_and_another_accepted(root: Path) -> None:
    alice, bob = root / "clients" / "alice", root / "clients" / "bob"
    # The empty CRL is checked too, and lets everyone in.
    before = server_context(root)
    assert before.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert_accepted(*connect(before, client_context(alice)), "alice")
    pki.revoke(root, "alice")
    # A new CRL needs a new context: one only ever adds CRLs.
    after = server_context(root)
    assert_revoked(*connect(after, client_context(alice)))
    assert_accepted(*connect(after, client_context(bob)), "bob")


def test_a_renewed_client_gets_in_again_and_its_old_certificate_does_not(
        tmp_path: Path, root: Path) -> None:
    old = shutil.copytree(root / "clients" / "alice", tmp_path / "stolen-alice")
    pki.revoke(root, "alice")
    assert_revoked(*connect(server_context(root), client_context(old)))
    done = pki.renew(root, "alice")
    assert done.revoked == ()  # the old one was revoked already
    context = server_context(root)
    assert_accepted(*connect(context, client_context(root / "clients" / "alice")), "alice")
    assert_revoked(*connect(context, client_context(old)))


def test_renew_with_revoke_old_shuts_the_old_certificate_out(tmp_path: Path, root: Path) -> None:
    old = shutil.copytree(root / "clients" / "bob", tmp_path / "old-bob")
    done = pki.renew(root, "bob", revoke_old=True)
    assert [c.serial for c in done.revoked] == [serial_of(old / "cert.pem")]
    context = server_context(root)
    assert_revoked(*connect(context, client_context(old)))
    assert_accepted(*connect(context, client_context(root / "clients" / "bob")), "bob")


def test_a_crl_from_another_ca_shuts_every_client_out(tmp_path: Path, root: Path) -> None:
    # Fail closed: with the check on, a client whose CA has no CRL is refused.
    other = pki.init_pki(tmp_path / "other")
    seen, got = connect(server_context(root, other / "ca" / "crl.pem"),
                        client_context(root / "clients" / "bob"))
    error = seen.get("error")
    assert isinstance(error, ssl.SSLCertVerificationError), seen
    assert error.verify_message == "unable to get certificate CRL"
    assert isinstance(got, ssl.SSLError)


def test_a_renewed_server_certificate_is_what_a_new_context_serves(root: Path) -> None:
    old_serial = serial_of(root / "server" / "cert.pem")
    alice = client_context(root / "clients" / "alice")
    first = assert_accepted(*connect(server_context(root), alice), "alice")
    assert int(first["serialNumber"], 16) == old_serial
    done = pki.renew(root, server=True)
    second = assert_accepted(*connect(server_context(root), alice), "alice")
    assert int(second["serialNumber"], 16) == done.certificate.serial != old_serial
    # The hosts it is valid for did not change: the client checked 127.0.0.1 again.
    assert second["subjectAltName"] == first["subjectAltName"]
