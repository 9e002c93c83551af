"""``jobkit certs list / revoke / renew``, run for real in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from jobkit import pki
from tests.cli.conftest import Run, base_env, run_jobkit


def certs(*args: str | Path) -> Run:
    return run_jobkit("certs", *args, env=base_env())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return pki.init_pki(tmp_path / "pki", clients=["alice", "bob"])


def serial_of(path: Path) -> str:
    return format(x509.load_pem_x509_certificate(path.read_bytes()).serial_number, "x")


def crl_serials(root: Path) -> set[str]:
    crl = x509.load_pem_x509_crl((root / "server" / "crl.pem").read_bytes())
    return {format(entry.serial_number, "x") for entry in crl}


def test_list_prints_a_table(root: Path) -> None:
    run = certs("list", root)
    assert (run.code, run.stderr) == (0, "")
    rows = [line.split() for line in run.stdout.splitlines()]
    assert rows[0] == ["NAME", "KIND", "SERIAL", "EXPIRES", "STATUS"]
    alice = serial_of(root / "clients" / "alice" / "cert.pem")
    expires = x509.load_pem_x509_certificate(
        (root / "clients" / "alice" / "cert.pem").read_bytes()).not_valid_after_utc
    assert ["alice", "client", alice, expires.strftime("%Y-%m-%d"), "current"] in rows
    assert [row[:2] for row in rows[1:]] == [["localhost", "server"], ["alice", "client"],
                                             ["bob", "client"]]


def test_list_json(root: Path) -> None:
    pki.revoke(root, "bob")
    run = certs("list", root, "--json")
    assert run.code == 0
    listed = {c["name"]: c for c in json.loads(run.stdout)["certificates"]}
    assert listed["bob"]["status"] == "revoked" and listed["bob"]["revoked"] is True
    assert listed["alice"]["serial"] == serial_of(root / "clients" / "alice" / "cert.pem")
    assert set(listed["alice"]) == {"serial", "name", "kind", "folder", "not_before",
                                    "not_after", "revoked_at", "revoked", "expired", "current",
                                    "status"}


def test_revoke_a_client(root: Path) -> None:
    alice = serial_of(root / "clients" / "alice" / "cert.pem")
    run = certs("revoke", root, "alice")
    assert (run.code, run.stderr) == (0, "")
    assert run.stdout.splitlines() == [
        f"Revoked 'alice' (client, serial {alice})",
        f"Wrote the CRL (1 revoked): {root}/ca/crl.pem, {root}/server/crl.pem",
    ]
    assert crl_serials(root) == {alice}
    again = certs("revoke", root, "alice")
    assert again.code == 0
    assert again.stdout.splitlines()[0] == f"Already revoked: alice (serial {alice})"


def test_revoke_by_serial(root: Path) -> None:
    server = serial_of(root / "server" / "cert.pem")
    run = certs("revoke", root, "--serial", server.upper())
    assert run.code == 0, run
    assert f"Revoked 'localhost' (server, serial {server})" in run.stdout
    assert crl_serials(root) == {server}
    unknown = certs("revoke", root, "--serial", "ab:cd")
    assert unknown.code == 0
    assert unknown.error_line() == ("jobkit: warning: serial ab:cd is in no record of this CA; "
                                    "revoked anyway")
    assert crl_serials(root) == {server, "abcd"}


def test_revoke_into_a_ca_folder_alone_says_to_copy_the_crl(root: Path, tmp_path: Path) -> None:
    offline = tmp_path / "offline"
    offline.mkdir()
    (root / "ca").rename(offline / "ca")
    run = certs("revoke", offline, "--serial", "1f")
    assert run.code == 0, run
    assert run.stderr.splitlines()[-1] == (
        f"jobkit: warning: {offline} has no server/ folder: copy {offline}/ca/crl.pem to the "
        f"server's certificate folder as crl.pem")


def test_renew_a_client(root: Path) -> None:
    old = serial_of(root / "clients" / "alice" / "cert.pem")
    run = certs("renew", root, "alice")
    assert (run.code, run.stderr) == (0, "")
    new = serial_of(root / "clients" / "alice" / "cert.pem")
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"Renewed the client certificate 'alice' in {root}/clients/alice: "
                               f"serial {new}, valid until ")
    assert lines[1].startswith(f"The old certificate (serial {old}) stays valid until ")
    assert lines[1].endswith(f"revoke it with 'jobkit certs revoke {root} --serial {old}'")
    assert lines[2] == f"Give {root}/clients/alice to alice again."
    assert crl_serials(root) == set()


def test_renew_revoke_old_and_the_server(root: Path) -> None:
    old = serial_of(root / "clients" / "bob" / "cert.pem")
    run = certs("renew", root, "bob", "--revoke-old")
    assert run.code == 0, run
    assert f"Revoked the certificate it replaces (serial {old})" in run.stdout
    assert crl_serials(root) == {old}
    server = certs("renew", root, "--server")
    assert server.code == 0, server
    assert server.stdout.startswith(
        f"Renewed the server certificate in {root}/server: serial "
        f"{serial_of(root / 'server' / 'cert.pem')}, valid until ")
    assert server.stdout.splitlines()[-1] == (
        "A running server uses it once reloaded ('kill -HUP' its process) or restarted.")


@pytest.mark.parametrize(("args", "code", "message"), [
    (["revoke", "{root}"], 2, "give either NAME or --serial"),
    (["revoke", "{root}", "alice", "--serial", "1"], 2, "give either NAME or --serial"),
    (["revoke", "{root}", "--serial", "nope"], 2, "invalid serial 'nope'"),
    (["revoke", "{root}", "../alice"], 2, "invalid client name '../alice'"),
    (["revoke", "{root}", "carol"], 1, "no client certificate was issued to 'carol'"),
    (["renew", "{root}"], 2, "give either NAME or --server"),
    (["renew", "{root}", "alice", "--server"], 2, "give either NAME or --server"),
    (["renew", "{root}", "carol"], 1, "no certificate of this CA to renew in"),
    (["list", "{root}/nowhere"], 1, "no CA in"),
    (["revoke", "{root}/nowhere", "alice"], 1, "no CA in"),
])
def test_errors_are_one_line(root: Path, args: list[str], code: int, message: str) -> None:
    before = (root / "ca" / "issued.json").read_bytes()
    run = certs(*(arg.format(root=root) for arg in args))
    assert run.code == code, run
    assert run.stdout == ""
    assert message in run.error_line()
    assert (root / "ca" / "issued.json").read_bytes() == before
