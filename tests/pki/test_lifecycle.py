"""The CA's record of what it issued, listing certificates, and renewing them."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import multiprocessing
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jobkit import pki

CLIENTS = ("alice", "bob")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return pki.init_pki(tmp_path / "pki", clients=CLIENTS)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def listing(root: Path) -> list[tuple[str, str, int, str]]:
    return [(c.certificate.name, c.certificate.kind, c.certificate.serial, c.status)
            for c in pki.list_certificates(root)]


def serial_of(path: Path) -> int:
    return load_cert(path).serial_number


# -- the record ----------------------------------------------------------------------------


def test_init_records_every_certificate_it_issues(root: Path) -> None:
    record = pki.load_record(root)
    assert [(c.name, c.kind, c.folder) for c in record.certificates] == [
        ("localhost", "server", "server"), ("alice", "client", "clients/alice"),
        ("bob", "client", "clients/bob")]
    for entry in record.certificates:
        cert = load_cert(root / entry.folder / "cert.pem")
        assert entry.serial == cert.serial_number
        assert (entry.not_before, entry.not_after) == (cert.not_valid_before_utc,
                                                       cert.not_valid_after_utc)
        assert entry.revoked_at is None
    data = json.loads((root / "ca" / "issued.json").read_text())
    assert data["version"] == 1 and data["crl_number"] == 1
    assert data["certificates"][1]["serial"] == format(record.certificates[1].serial, "x")


def test_issuing_again_keeps_the_replaced_certificate_in_the_record(root: Path) -> None:
    old = serial_of(root / "clients" / "alice" / "cert.pem")
    pki.issue_client(root, "carol")
    pki.issue_client(root, "alice", force=True)
    new = serial_of(root / "clients" / "alice" / "cert.pem")
    rows = listing(root)
    assert ("alice", "client", old, "replaced") in rows
    assert ("alice", "client", new, "current") in rows
    assert rows[-2:] == [("carol", "client", serial_of(root / "clients" / "carol" / "cert.pem"),
                          "current"), ("alice", "client", new, "current")]


def test_list_shows_every_status(tmp_path: Path, root: Path) -> None:
    ca, ca_key = pki.load_ca(root)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    cert, key = pki.issue_certificate(ca, ca_key, common_names=["old"], not_before=past,
                                      not_after=past + dt.timedelta(days=1))
    pki.write_bundle(root / "clients" / "old", cert, key, ca)  # made outside the record
    pki.revoke(root, "bob")
    pki.renew(root, "alice")
    statuses = {(name, status) for name, _, _, status in listing(root)}
    assert statuses == {("localhost", "current"), ("alice", "replaced"), ("alice", "current"),
                        ("bob", "revoked"), ("old", "expired")}
    as_json = {c.certificate.name: c.to_json() for c in pki.list_certificates(root)}
    assert as_json["bob"]["revoked"] is True and as_json["bob"]["revoked_at"].endswith("+00:00")
    assert as_json["old"]["expired"] is True and as_json["old"]["current"] is True


def test_a_certificate_of_another_ca_in_a_folder_is_not_listed(tmp_path: Path,
                                                                root: Path) -> None:
    other = pki.init_pki(tmp_path / "other", clients=["mallory"])
    (root / "clients" / "mallory").mkdir(mode=0o700)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (root / "clients" / "mallory" / name).write_bytes(
            (other / "clients" / "mallory" / name).read_bytes())
    assert "mallory" not in [name for name, *_ in listing(root)]


def test_a_pki_made_before_the_record_is_listed_revoked_and_renewed(root: Path) -> None:
    for old in ("ca/issued.json", "ca/crl.pem", "server/crl.pem"):
        (root / old).unlink()
    assert pki.server_crl(root) is None
    alice = serial_of(root / "clients" / "alice" / "cert.pem")
    assert [(name, status) for name, _, _, status in listing(root)] == [
        ("localhost", "current"), ("alice", "current"), ("bob", "current")]
    assert not (root / "ca" / "issued.json").exists()  # listing writes nothing
    pki.revoke(root, "alice")
    record = pki.load_record(root)
    assert [(c.name, c.revoked) for c in record.certificates] == [
        ("localhost", False), ("alice", True), ("bob", False)]
    assert record.crl_number == 1
    assert pki.server_crl(root) == root / "server" / "crl.pem"
    assert [e.serial_number for e in x509.load_pem_x509_crl(
        (root / "server" / "crl.pem").read_bytes())] == [alice]


def test_a_broken_record_is_named(root: Path) -> None:
    path = root / "ca" / "issued.json"
    for text in ("{", "[]", '{"version": 2}', '{"version": 1, "crl_number": 1, '
                 '"certificates": [{"serial": "zz"}]}'):
        path.write_text(text)
        with pytest.raises(pki.PkiError, match=f"{path} is not a record of issued certificates"):
            pki.list_certificates(root)


def issue_many(root: Path, prefix: str) -> None:
    for number in range(4):
        pki.issue_client(root, f"{prefix}-{number}")


def test_clients_issued_at_once_by_many_processes_are_all_recorded(root: Path) -> None:
    # The record is read, changed and replaced under the CA folder's lock.
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=issue_many, args=(root, f"w{n}")) for n in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    names = [c.name for c in pki.load_record(root).certificates]
    assert sorted(names[3:]) == sorted(f"w{n}-{m}" for n in range(6) for m in range(4))
    assert len(names) == 3 + 24


# -- renew ---------------------------------------------------------------------------------


def test_renew_a_client(root: Path) -> None:
    folder = root / "clients" / "alice"
    old_cert, old_key = load_cert(folder / "cert.pem"), (folder / "key.pem").read_bytes()
    done = pki.renew(root, "alice")
    new_cert = load_cert(folder / "cert.pem")
    assert done.folder == folder
    assert done.certificate.serial == new_cert.serial_number != old_cert.serial_number
    assert done.replaced.serial == old_cert.serial_number and not done.replaced.revoked
    assert (folder / "key.pem").read_bytes() != old_key
    assert new_cert.public_key() != old_cert.public_key()
    assert new_cert.subject == old_cert.subject
    # A full validity of its own, not what was left of the old one.
    assert new_cert.not_valid_after_utc - new_cert.not_valid_before_utc == pki.LEAF_VALIDITY
    assert done.revoked == () and done.crl_files == ()
    assert stat.S_IMODE((folder / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "cert.pem").stat().st_mode) == 0o644
    eku = new_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_renew_revoke_old_revokes_every_earlier_certificate(root: Path) -> None:
    first = serial_of(root / "clients" / "bob" / "cert.pem")
    second = pki.renew(root, "bob").certificate.serial
    third = pki.renew(root, "bob", revoke_old=True)
    assert {c.serial for c in third.revoked} == {first, second}
    assert third.crl_files == (root / "ca" / "crl.pem", root / "server" / "crl.pem")
    crl = x509.load_pem_x509_crl((root / "server" / "crl.pem").read_bytes())
    assert {e.serial_number for e in crl} == {first, second}
    # alice was not touched.
    assert [c.name for c in pki.load_record(root).revoked()] == ["bob", "bob"]


def test_renew_the_server_keeps_its_hosts(tmp_path: Path) -> None:
    hosts = ["jobs.example.org", "*.jobs.example.org", "192.0.2.7", "[::1]"]
    root = pki.init_pki(tmp_path / "pki", hosts)
    old = load_cert(root / "server" / "cert.pem")
    done = pki.renew(root, server=True)
    new = load_cert(root / "server" / "cert.pem")
    assert new.serial_number == done.certificate.serial != old.serial_number
    assert new.subject == old.subject
    assert new.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "jobs.example.org"
    san = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["jobs.example.org", "*.jobs.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7"),
                                                       ipaddress.ip_address("::1")]
    eku = new.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert (done.certificate.kind, done.certificate.name) == ("server", "jobs.example.org")
    assert (root / "server" / "ca.pem").read_bytes() == (root / "ca" / "cert.pem").read_bytes()


def test_renew_refuses_what_is_not_there(root: Path) -> None:
    with pytest.raises(pki.PkiError, match=r"no certificate of this CA to renew in .*carol.*"
                                           r"'jobkit certs client"):
        pki.renew(root, "carol")
    with pytest.raises(pki.InvalidName):
        pki.renew(root, "../bob")
    with pytest.raises(TypeError):
        pki.renew(root)
    with pytest.raises(TypeError):
        pki.renew(root, "alice", server=True)
    (root / "server" / "cert.pem").unlink()
    with pytest.raises(pki.PkiError, match="'jobkit certs init"):
        pki.renew(root, server=True)
