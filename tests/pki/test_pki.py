"""jobkit.pki: real files in tmp_path, real certificates, a real TLS 1.3 handshake."""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jobkit import pki
from jobkit.core.errors import JobkitError

CLIENTS = ("alice", "bob@example.org")


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    return pki.init_pki(tmp_path / "pki", clients=CLIENTS)


@pytest.fixture
def strict_umask() -> Iterator[None]:
    # The most hostile umask there is: everything must still come out right.
    old = os.umask(0o777)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): mode(p) for p in sorted(root.rglob("*"))}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def common_names(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    return cert.extensions.get_extension_for_class(kind)


def client_verifier(ca: x509.Certificate) -> verification.ClientVerifier:
    # The web PKI profile wants a SAN on client certificates too; ours identify
    # clients by CN only, so a SAN may be absent.
    ee = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
    )
    return (
        verification.PolicyBuilder()
        .store(verification.Store([ca]))
        .extension_policies(
            ee_policy=ee, ca_policy=verification.ExtensionPolicy.webpki_defaults_ca()
        )
        .build_client_verifier()
    )


def server_verifier(
    ca: x509.Certificate, name: x509.DNSName | x509.IPAddress
) -> verification.ServerVerifier:
    return verification.PolicyBuilder().store(verification.Store([ca])).build_server_verifier(name)


# -- layout and modes ---------------------------------------------------------------------


def expected_tree() -> dict[str, int]:
    files = {"ca": 0o700, "ca/cert.pem": 0o644, "ca/key.pem": 0o600, "clients": 0o700,
             # The CA's record of what it issued is its own business; CRLs are public.
             "ca/issued.json": 0o600, "ca/crl.pem": 0o644, "server/crl.pem": 0o644}
    for folder in ("server", *(f"clients/{name}" for name in CLIENTS)):
        files[folder] = 0o700
        files.update({f"{folder}/ca.pem": 0o644, f"{folder}/cert.pem": 0o644})
        files[f"{folder}/key.pem"] = 0o600
    return files


def test_layout_and_modes(tmp_path: Path) -> None:
    root = pki.init_pki(tmp_path / "new" / "pki", clients=CLIENTS)
    assert root == tmp_path / "new" / "pki"
    assert tree(root) == expected_tree()
    assert mode(root) == 0o700
    assert mode(root.parent) == 0o700  # a missing parent is made private too


@pytest.mark.parametrize("umask", ["strict_umask", "open_umask"])
def test_modes_do_not_depend_on_the_umask(
    tmp_path: Path, umask: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue(umask)
    root = pki.init_pki(tmp_path / "pki", clients=CLIENTS)
    assert tree(root) == expected_tree()


def test_existing_folder_is_used_but_left_as_it_is(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    pki.init_pki(root)
    assert mode(root) == 0o755
    assert mode(root / "ca" / "key.pem") == 0o600


def test_every_bundle_holds_the_ca(pki_dir: Path) -> None:
    ca = (pki_dir / "ca" / "cert.pem").read_bytes()
    for folder in (pki_dir / "server", *(pki_dir / "clients" / n for n in CLIENTS)):
        assert (folder / "ca.pem").read_bytes() == ca


def test_keys_load_with_the_ssl_module(pki_dir: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(pki_dir / "clients" / "alice" / "cert.pem",
                            pki_dir / "clients" / "alice" / "key.pem")


# -- certificate properties ---------------------------------------------------------------


def assert_p256_sha256(cert: x509.Certificate) -> None:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


def assert_validity(cert: x509.Certificate, days: int) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    assert cert.not_valid_before_utc <= now
    assert now - cert.not_valid_before_utc < dt.timedelta(hours=1)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(lifetime - dt.timedelta(days=days)) < dt.timedelta(days=1)


def test_ca_certificate(pki_dir: Path) -> None:
    ca = load_cert(pki_dir / "ca" / "cert.pem")
    assert_p256_sha256(ca)
    assert_validity(ca, 3650)
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    constraints = extension(ca, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = extension(ca, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature


def test_server_certificate(pki_dir: Path) -> None:
    ca = load_cert(pki_dir / "ca" / "cert.pem")
    cert = load_cert(pki_dir / "server" / "cert.pem")
    assert_p256_sha256(cert)
    assert_validity(cert, 730)
    assert common_names(cert) == ["localhost"]
    assert list(extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not extension(cert, x509.BasicConstraints).value.ca
    san = extension(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    cert.verify_directly_issued_by(ca)
    for name in (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ):
        chain = server_verifier(ca, name).verify(cert, [])
        assert chain == [cert, ca]
    with pytest.raises(verification.VerificationError):
        server_verifier(ca, x509.DNSName("example.org")).verify(cert, [])


@pytest.mark.parametrize("name", CLIENTS)
def test_client_certificate(pki_dir: Path, name: str) -> None:
    ca = load_cert(pki_dir / "ca" / "cert.pem")
    cert = load_cert(pki_dir / "clients" / name / "cert.pem")
    assert_p256_sha256(cert)
    assert_validity(cert, 730)
    assert common_names(cert) == [name]
    assert list(extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    verified = client_verifier(ca).verify(cert, [])
    assert verified.chain == [cert, ca]
    # A client certificate is no good as a server's.
    with pytest.raises(verification.VerificationError):
        server_verifier(ca, x509.DNSName("localhost")).verify(cert, [])


def test_server_for_custom_hosts(tmp_path: Path) -> None:
    hosts = ["jobs.example.org", "10.0.0.7", "[fe80::1]", "*.svc.local", "jobs.example.org"]
    root = pki.init_pki(tmp_path / "pki", hosts)
    cert = load_cert(root / "server" / "cert.pem")
    assert common_names(cert) == ["jobs.example.org"]
    san = extension(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["jobs.example.org", "*.svc.local"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("fe80::1"),
    ]
    assert list((root / "clients").iterdir()) == []


def test_server_cn_when_first_host_is_too_long_for_a_cn(tmp_path: Path) -> None:
    host = ".".join(["a" * 60] * 3)
    root = pki.init_pki(tmp_path / "pki", [host])
    cert = load_cert(root / "server" / "cert.pem")
    assert common_names(cert) == ["jobkit server"]
    assert extension(cert, x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [host]


# -- names --------------------------------------------------------------------------------

GOOD_NAMES = ["alice", "bob@example.org", "a.b", "A-Z_09", "-dash", "x" * 64]
BAD_NAMES = ["", ".", "..", ".hidden", "a/b", "/abs", "../up", "a\x00b", "a\nb", "a\tb",
             "a\x7fb", "a b", "caf\u00e9", "x" * 65, "a\\b", "a:b"]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_client_names(name: str) -> None:
    assert pki.validate_client_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_client_names_are_refused_before_anything_is_written(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(pki.InvalidName) as caught:
        pki.init_pki(tmp_path / "pki", clients=["ok", name])
    assert repr(name) in str(caught.value) or "empty" in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, JobkitError)
    assert not (tmp_path / "pki").exists()


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_issue_client_refuses_bad_names(pki_dir: Path, name: str) -> None:
    before = tree(pki_dir)
    with pytest.raises(pki.InvalidName):
        pki.issue_client(pki_dir, name)
    assert tree(pki_dir) == before


@pytest.mark.parametrize(
    "host", ["", "a b", "b\u00fccher.de", "fe80::1%eth0", "-a.example", "a..b", "a" * 64 + ".com",
             "*", "a.*.b", "a/b", "x" * 254, "10.0.0.256", "1.2.3"],
    ids=repr,
)
def test_bad_hosts_are_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(pki.InvalidName):
        pki.init_pki(tmp_path / "pki", ["localhost", host])
    assert not (tmp_path / "pki").exists()


def test_no_hosts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(pki.InvalidName, match="at least one host"):
        pki.init_pki(tmp_path / "pki", [])


def test_a_string_is_not_a_list_of_hosts(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        pki.init_pki(tmp_path / "pki", "localhost")


# -- never overwrite without force --------------------------------------------------------


def test_init_refuses_to_overwrite(pki_dir: Path) -> None:
    before = snapshot(pki_dir)
    with pytest.raises(pki.AlreadyExists) as caught:
        pki.init_pki(pki_dir)
    assert str(pki_dir / "ca" / "cert.pem") in str(caught.value)
    assert "--force" in str(caught.value)
    assert snapshot(pki_dir) == before


def test_init_refuses_when_only_a_client_folder_exists(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    (root / "clients" / "alice").mkdir(parents=True)
    (root / "clients" / "alice" / "key.pem").write_text("precious")
    with pytest.raises(pki.AlreadyExists, match=re.escape("clients/alice/key.pem")):
        pki.init_pki(root, clients=["alice"])
    # Checked before anything was written: no CA, no server.
    assert not (root / "ca").exists()
    assert not (root / "server").exists()
    assert (root / "clients" / "alice" / "key.pem").read_text() == "precious"


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    root = tmp_path / "pki"
    (root / "ca").mkdir(parents=True)
    (root / "ca" / "key.pem").symlink_to(victim)
    with pytest.raises(pki.AlreadyExists):
        pki.init_pki(root)
    pki.init_pki(root, force=True)
    assert victim.read_text() == "precious"
    assert not (root / "ca" / "key.pem").is_symlink()
    assert mode(root / "ca" / "key.pem") == 0o600


def test_force_replaces_everything(pki_dir: Path) -> None:
    before = snapshot(pki_dir)
    pki.init_pki(pki_dir, clients=CLIENTS, force=True)
    after = snapshot(pki_dir)
    assert after.keys() == before.keys()
    assert all(after[name] != before[name] for name in after)
    assert tree(pki_dir) == expected_tree()  # modes kept, no temporary files left
    ca = load_cert(pki_dir / "ca" / "cert.pem")
    load_cert(pki_dir / "clients" / "alice" / "cert.pem").verify_directly_issued_by(ca)


def test_force_over_a_loosely_moded_key_tightens_it(pki_dir: Path) -> None:
    key = pki_dir / "server" / "key.pem"
    key.chmod(0o644)
    pki.init_pki(pki_dir, force=True)
    assert mode(key) == 0o600


# -- issue_client and load_ca -------------------------------------------------------------


def test_issue_client(pki_dir: Path) -> None:
    ca = load_cert(pki_dir / "ca" / "cert.pem")
    folder = pki.issue_client(pki_dir, "carol")
    assert folder == pki_dir / "clients" / "carol"
    assert tree(folder) == {"ca.pem": 0o644, "cert.pem": 0o644, "key.pem": 0o600}
    assert mode(folder) == 0o700
    cert = load_cert(folder / "cert.pem")
    assert common_names(cert) == ["carol"]
    assert client_verifier(ca).verify(cert, []).chain == [cert, ca]


def test_issue_client_refuses_to_overwrite_and_force_works(pki_dir: Path) -> None:
    alice = pki_dir / "clients" / "alice"
    before = snapshot(alice)
    with pytest.raises(pki.AlreadyExists, match="alice"):
        pki.issue_client(pki_dir, "alice")
    assert snapshot(alice) == before
    pki.issue_client(pki_dir, "alice", force=True)
    assert snapshot(alice)["cert.pem"] != before["cert.pem"]
    assert snapshot(alice)["ca.pem"] == before["ca.pem"]


def test_issue_client_makes_the_clients_folder_if_missing(tmp_path: Path) -> None:
    root = pki.init_pki(tmp_path / "pki")
    (root / "clients").rmdir()
    pki.issue_client(root, "dave")
    assert mode(root / "clients") == 0o700


def test_load_ca_accepts_the_pki_or_its_ca_folder(pki_dir: Path) -> None:
    ca = load_cert(pki_dir / "ca" / "cert.pem")
    assert pki.load_ca(pki_dir)[0] == ca
    assert pki.load_ca(pki_dir / "ca")[0] == ca
    assert pki.load_ca(str(pki_dir))[0] == ca


def test_load_ca_errors(tmp_path: Path, pki_dir: Path) -> None:
    with pytest.raises(pki.PkiError, match="no CA in"):
        pki.load_ca(tmp_path / "missing")
    (pki_dir / "ca" / "key.pem").unlink()
    with pytest.raises(pki.PkiError, match=re.escape("key.pem does not exist")):
        pki.load_ca(pki_dir)
    (pki_dir / "ca" / "key.pem").write_text("garbage")
    with pytest.raises(pki.PkiError, match="not a PEM private key"):
        pki.load_ca(pki_dir)
    # The server's key is a real key, but not the CA's.
    (pki_dir / "ca" / "key.pem").write_bytes((pki_dir / "server" / "key.pem").read_bytes())
    with pytest.raises(pki.PkiError, match="is not the key of"):
        pki.load_ca(pki_dir)
    (pki_dir / "ca" / "cert.pem").write_bytes((pki_dir / "server" / "cert.pem").read_bytes())
    with pytest.raises(pki.PkiError, match="not a CA certificate"):
        pki.load_ca(pki_dir)
    (pki_dir / "ca" / "cert.pem").write_text("garbage")
    with pytest.raises(pki.PkiError, match="not a PEM certificate"):
        pki.load_ca(pki_dir)


def test_issue_client_without_a_ca_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match=re.escape("ca/cert.pem does not exist")):
        pki.issue_client(tmp_path, "alice")
    assert not (tmp_path / "clients").exists()


# -- server_dir ---------------------------------------------------------------------------


def test_server_dir_accepts_both_forms(pki_dir: Path) -> None:
    assert pki.server_dir(pki_dir) == pki_dir / "server"
    assert pki.server_dir(str(pki_dir / "server")) == pki_dir / "server"


def test_server_dir_refuses_a_wrong_folder(tmp_path: Path, pki_dir: Path) -> None:
    with pytest.raises(pki.PkiError, match="does not exist"):
        pki.server_dir(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(pki.PkiError, match=re.escape("missing ca.pem, cert.pem, key.pem")):
        pki.server_dir(tmp_path / "empty")
    # The CA folder has a cert.pem and a key.pem, but it is no server folder.
    with pytest.raises(pki.PkiError, match=re.escape("ca is not a server certificate folder")):
        pki.server_dir(pki_dir / "ca")
    with pytest.raises(pki.PkiError, match="not a folder"):
        pki.server_dir(pki_dir / "ca" / "cert.pem")
    (pki_dir / "server" / "key.pem").unlink()
    message = "server is not a server certificate folder: missing key.pem"
    with pytest.raises(pki.PkiError, match=re.escape(message)):
        pki.server_dir(pki_dir)


# -- the default PKI ----------------------------------------------------------------------


def test_ensure_default_pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    expected = tmp_path / "data" / "jobkit" / "pki"
    assert pki.default_pki_dir() == expected
    assert pki.default_client_dir() == expected / "clients" / getpass.getuser()

    folder, created = pki.ensure_default_pki()
    assert (folder, created) == (expected, True)
    assert pki.server_dir(folder) == expected / "server"
    assert mode(folder) == 0o700
    assert mode(folder.parent) == 0o700
    client = load_cert(pki.default_client_dir() / "cert.pem")
    assert common_names(client) == [getpass.getuser()]
    # Nothing but the PKI is left beside it (the staging folder is renamed away).
    assert [p.name for p in folder.parent.iterdir()] == ["pki"]

    before = snapshot(folder)
    assert pki.ensure_default_pki() == (expected, False)
    assert snapshot(folder) == before


def test_default_pki_refuses_an_unusable_user_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setattr(getpass, "getuser", lambda: "../evil")
    with pytest.raises(pki.PkiError, match="cannot be a client name"):
        pki.ensure_default_pki()
    assert not (tmp_path / "jobkit" / "pki").exists()


# -- forging certificates for tests -------------------------------------------------------


def test_issue_certificate_forges_what_tests_need() -> None:
    ca, ca_key = pki.make_ca("test CA")
    no_cn, _ = pki.issue_certificate(ca, ca_key, common_names=())
    assert common_names(no_cn) == []
    two, _ = pki.issue_certificate(ca, ca_key, common_names=("a", "b"))
    assert common_names(two) == ["a", "b"]
    past = dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc)
    expired, _ = pki.issue_certificate(
        ca, ca_key, not_before=past, not_after=past + dt.timedelta(days=1)
    )
    assert expired.not_valid_after_utc == past + dt.timedelta(days=1)
    server_only, _ = pki.issue_certificate(
        ca, ca_key, extended_usages=[ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert list(extension(server_only, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    no_eku, _ = pki.issue_certificate(ca, ca_key, extended_usages=())
    with pytest.raises(x509.ExtensionNotFound):
        extension(no_eku, x509.ExtendedKeyUsage)
    intermediate, _ = pki.issue_certificate(ca, ca_key, is_ca=True)
    assert extension(intermediate, x509.BasicConstraints).value.ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert, returned = pki.issue_certificate(ca, ca_key, key=key)
    assert returned is key
    assert cert.public_key() == key.public_key()


def test_a_leaf_never_outlives_its_ca() -> None:
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    ca, ca_key = pki.make_ca(not_after=soon)
    cert, _ = pki.issue_certificate(ca, ca_key)
    assert cert.not_valid_after_utc == ca.not_valid_after_utc


def test_write_bundle(tmp_path: Path) -> None:
    ca, ca_key = pki.make_ca()
    cert, key = pki.issue_certificate(ca, ca_key, common_names=("zed",))
    folder = pki.write_bundle(tmp_path / "zed", cert, key, ca)
    assert folder == tmp_path / "zed"
    assert tree(folder) == {"ca.pem": 0o644, "cert.pem": 0o644, "key.pem": 0o600}
    assert load_cert(folder / "cert.pem") == cert
    with pytest.raises(pki.AlreadyExists):
        pki.write_bundle(folder, cert, key, ca)
    pki.write_bundle(folder, cert, key, ca, force=True)


# -- a real TLS 1.3 handshake -------------------------------------------------------------


def server_context(root: Path) -> ssl.SSLContext:
    folder = pki.server_dir(root)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(folder / "ca.pem")
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


def client_context(folder: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(folder / "ca.pem")
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str = "localhost"
) -> tuple[dict[str, Any], BaseException | None]:
    """Connect over a socketpair; return what the server saw and the client's error."""
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)
    client_sock.settimeout(10)
    seen: dict[str, Any] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(server_sock, server_side=True) as tls:
                seen["peer"] = tls.getpeercert()
                seen["version"] = tls.version()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as error:
            seen["error"] = error

    thread = threading.Thread(target=serve)
    thread.start()
    client_error: BaseException | None = None
    try:
        with client.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            # In TLS 1.3 the server judges the client's certificate after the
            # client's handshake is done: a refusal shows up on the first read.
            if tls.recv(2) != b"ok":
                client_error = ConnectionError("no answer")
    except (ssl.SSLError, OSError) as error:
        client_error = error
    finally:
        thread.join(10)
        server_sock.close()
    assert not thread.is_alive()
    return seen, client_error


def peer_cn(peer: dict[str, Any]) -> list[str]:
    return [value for rdn in peer["subject"] for key, value in rdn if key == "commonName"]


@pytest.mark.parametrize("host", pki.DEFAULT_HOSTS)
def test_tls_handshake_identifies_the_client(pki_dir: Path, host: str) -> None:
    seen, client_error = handshake(
        server_context(pki_dir), client_context(pki_dir / "clients" / "alice"), host
    )
    assert client_error is None
    assert "error" not in seen
    assert seen["version"] == "TLSv1.3"
    assert peer_cn(seen["peer"]) == ["alice"]


def forged_client(tmp_path: Path, pki_dir: Path, kind: str) -> Path:
    ca, ca_key = pki.load_ca(pki_dir)
    folder = tmp_path / kind
    if kind == "other-ca":
        other, other_key = pki.make_ca()
        cert, key = pki.issue_certificate(other, other_key, common_names=["alice"])
    elif kind == "expired":
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
        cert, key = pki.issue_certificate(
            ca, ca_key, common_names=["alice"], not_before=past, not_after=past + dt.timedelta(1)
        )
    elif kind == "not-yet-valid":
        future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
        cert, key = pki.issue_certificate(ca, ca_key, common_names=["alice"], not_before=future)
    elif kind == "server-only":
        cert, key = pki.issue_certificate(
            ca, ca_key, common_names=["alice"], extended_usages=[ExtendedKeyUsageOID.SERVER_AUTH]
        )
    elif kind == "signed-by-a-client":
        bob, bob_key = pki.issue_certificate(ca, ca_key, common_names=["bob"])
        cert, key = pki.issue_certificate(bob, bob_key, common_names=["alice"])
        # Send bob's certificate along, so only the "not a CA" rule can refuse it.
        pki.write_bundle(folder, cert, key, ca)
        with (folder / "cert.pem").open("ab") as chain:
            chain.write(bob.public_bytes(serialization.Encoding.PEM))
        return folder
    else:
        raise AssertionError(kind)
    return pki.write_bundle(folder, cert, key, ca)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("other-ca", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("not-yet-valid", "certificate is not yet valid"),
        ("server-only", "unsuitable certificate purpose"),
        ("signed-by-a-client", "invalid CA certificate"),
    ],
)
def test_tls_refuses_bad_client_certificates(
    tmp_path: Path, pki_dir: Path, kind: str, reason: str
) -> None:
    # Each forged folder trusts our CA (its ca.pem), so it is the server that refuses.
    folder = forged_client(tmp_path, pki_dir, kind)
    seen, client_error = handshake(server_context(pki_dir), client_context(folder))
    error = seen.get("error")
    assert isinstance(error, ssl.SSLCertVerificationError), seen
    assert error.verify_message == reason
    assert "peer" not in seen
    assert isinstance(client_error, ssl.SSLError)


def test_tls_client_refuses_a_server_from_another_ca(tmp_path: Path, pki_dir: Path) -> None:
    other = pki.init_pki(tmp_path / "other", clients=["alice"])
    seen, client_error = handshake(
        server_context(other), client_context(pki_dir / "clients" / "alice")
    )
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert "peer" not in seen
