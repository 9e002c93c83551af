"""``jobkit certs``, run for real in a subprocess."""

from __future__ import annotations

import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from jobkit import pki


def jobkit(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobkit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def cn(path: Path) -> list[str]:
    cert = load_cert(path)
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jobkit: error: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture
def made(tmp_path: Path) -> Path:
    # Made in-process to keep the suite fast; `certs init` itself is tested below.
    return pki.init_pki(tmp_path / "pki", clients=["alice", "bob"])


def test_init_with_defaults(tmp_path: Path) -> None:
    result = jobkit("certs", "init", "pki", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    root = tmp_path / "pki"
    # Paths are printed absolute, so they can be pasted anywhere.
    assert str(root / "ca") in result.stdout
    assert str(root / "server") in result.stdout
    assert "localhost, 127.0.0.1, ::1" in result.stdout
    assert f"jobkit serve --certs {root}" in result.stdout
    san = load_cert(root / "server" / "cert.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert list((root / "clients").iterdir()) == []
    assert stat.S_IMODE((root / "server" / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "server").stat().st_mode) == 0o700


def test_init_with_hosts_and_clients(made: Path, tmp_path: Path) -> None:
    root = tmp_path / "custom"
    result = jobkit(
        "certs", "init", root, "--host", "jobs.example.org", "--host", "192.0.2.1",
        "--client", "carol",
    )
    assert result.returncode == 0, result.stderr
    assert str(root / "clients" / "carol") in result.stdout
    assert cn(root / "clients" / "carol" / "cert.pem") == ["carol"]
    cert = load_cert(root / "server" / "cert.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["jobs.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.1")]
    # The fixture's clients are there too.
    assert cn(made / "clients" / "alice" / "cert.pem") == ["alice"]
    assert cn(made / "clients" / "bob" / "cert.pem") == ["bob"]


def test_init_refuses_to_overwrite(made: Path) -> None:
    before = snapshot(made)
    result = jobkit("certs", "init", made)
    assert_one_line_error(result, 1, str(made / "ca" / "cert.pem"), "already exists", "--force")
    assert snapshot(made) == before


def test_init_force_replaces_and_warns_about_stale_clients(made: Path) -> None:
    before = snapshot(made)
    result = jobkit("certs", "init", made, "--client", "alice", "--force")
    assert result.returncode == 0, result.stderr
    after = snapshot(made)
    assert after["ca/cert.pem"] != before["ca/cert.pem"]
    assert after["clients/alice/cert.pem"] != before["clients/alice/cert.pem"]
    # bob was not re-issued: his folder still holds the old CA's certificate.
    assert after["clients/bob/cert.pem"] == before["clients/bob/cert.pem"]
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1
    assert warnings[0].startswith("jobkit: warning: ")
    assert str(made / "clients" / "bob") in warnings[0]
    assert f"jobkit certs client {made} bob --force" in warnings[0]


def test_client(made: Path) -> None:
    result = jobkit("certs", "client", made, "dave@laptop")
    assert result.returncode == 0, result.stderr
    folder = made / "clients" / "dave@laptop"
    assert str(folder) in result.stdout
    assert cn(folder / "cert.pem") == ["dave@laptop"]
    ca = load_cert(made / "ca" / "cert.pem")
    load_cert(folder / "cert.pem").verify_directly_issued_by(ca)
    assert sorted(os.listdir(folder)) == ["ca.pem", "cert.pem", "key.pem"]


def test_client_refuses_to_overwrite_unless_forced(made: Path) -> None:
    before = snapshot(made)
    result = jobkit("certs", "client", made, "alice")
    assert_one_line_error(result, 1, str(made / "clients" / "alice"), "--force")
    assert snapshot(made) == before
    result = jobkit("certs", "client", made, "alice", "--force")
    assert result.returncode == 0, result.stderr
    assert snapshot(made)["clients/alice/cert.pem"] != before["clients/alice/cert.pem"]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["client", "{pki}", "../evil"], 2, ["invalid client name", "'../evil'"]),
        (["client", "{pki}", "a/b"], 2, ["invalid client name"]),
        (["client", "{pki}", ""], 2, ["must not be empty"]),
        (["init", "{tmp}/new", "--client", ".hidden"], 2, ["must not start with '.'"]),
        (["init", "{tmp}/new", "--host", "bad host"], 2, ["invalid host 'bad host'"]),
        (["init"], 2, ["Missing argument 'DIR'", "jobkit certs init --help"]),
        (["init", "{tmp}/new", "--bogus"], 2, ["--bogus"]),
        (["frobnicate"], 2, ["frobnicate"]),
        (["client", "{tmp}/nowhere", "alice"], 1, ["no CA in", "jobkit certs init"]),
        (["client", "{tmp}/garbled", "alice"], 1, ["not a PEM certificate"]),
        (["init", "{tmp}/a-file"], 1, ["a-file"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
)
def test_errors_are_one_line(
    made: Path, tmp_path: Path, args: list[str], code: int, words: list[str]
) -> None:
    (tmp_path / "garbled" / "ca").mkdir(parents=True)
    (tmp_path / "garbled" / "ca" / "cert.pem").write_text("not a certificate")
    (tmp_path / "garbled" / "ca" / "key.pem").write_text("not a key")
    (tmp_path / "a-file").write_text("")
    before = snapshot(tmp_path)
    argv = [arg.format(pki=made, tmp=tmp_path) for arg in args]
    result = jobkit("certs", *argv)
    assert_one_line_error(result, code, *words)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "new").exists()


def test_help_describes_the_layout() -> None:
    result = jobkit("certs", "init", "--help")
    assert result.returncode == 0
    assert "DIR/clients/NAME/{ca,cert,key}.pem" in result.stdout
    assert "--force" in result.stdout
