"""TLS posture, as a scanner sees it: only TLS 1.3, no compression, no renegotiation.

``sslscan`` (the Debian package; ``.ci/run`` installs it) scans a running server
and reports in XML (``--xml=-``), which is parsed here rather than its coloured
text.  The certificates are also read from the files with ``cryptography``:
ECDSA on P-256, signed with SHA-256.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from jobkit.server.serve import JobServer
from tests.support.api import client_context, raw_tls

SSLSCAN = shutil.which("sslscan")
OPENSSL = shutil.which("openssl")

needs_sslscan = pytest.mark.skipif(
    SSLSCAN is None, reason="sslscan is not installed (apt-get install sslscan; .ci/run does)"
)


def sslscan(address: tuple[str, int]) -> ET.Element:
    """Scan ``address`` with sslscan; return its ``<ssltest>`` element."""
    assert SSLSCAN is not None
    host, port = address
    # restore_signals=False: sslscan inherits our ignored SIGPIPE.  When the
    # server ends a probe (no client certificate) while sslscan is still
    # writing, sslscan would otherwise die of SIGPIPE with its report unwritten.
    result = subprocess.run(
        [SSLSCAN, "--xml=-", "--no-colour", "--show-sigs", f"{host}:{port}"],
        capture_output=True, timeout=120, restore_signals=False, check=False,
    )
    assert result.returncode == 0, result
    document = ET.fromstring(result.stdout)
    tests = document.findall("ssltest")
    assert len(tests) == 1, result.stdout
    return tests[0]


@pytest.fixture(scope="module")
def scan(server: JobServer) -> ET.Element:
    if SSLSCAN is None:
        pytest.skip("sslscan is not installed (apt-get install sslscan; .ci/run does)")
    return sslscan(server.address)


def protocols(report: ET.Element) -> dict[str, bool]:
    """``{"SSLv2": False, ..., "TLSv1.3": True}`` from the ``<protocol>`` elements."""
    found = {}
    for element in report.findall("protocol"):
        kind = "SSLv" if element.get("type") == "ssl" else "TLSv"
        found[f"{kind}{element.get('version')}"] = element.get("enabled") == "1"
    return found


@needs_sslscan
def test_only_tls_1_3_is_offered(scan: ET.Element) -> None:
    assert protocols(scan) == {
        "SSLv2": False, "SSLv3": False, "TLSv1.0": False, "TLSv1.1": False,
        "TLSv1.2": False, "TLSv1.3": True,
    }
    ciphers = scan.findall("cipher")
    assert ciphers, "sslscan found no cipher suite at all"
    assert {cipher.get("sslversion") for cipher in ciphers} == {"TLSv1.3"}
    # TLS 1.3's suites are all AEAD; none is weak.
    assert {cipher.get("strength") for cipher in ciphers} <= {"strong", "acceptable"}


@needs_sslscan
def test_no_renegotiation_and_no_heartbleed(scan: ET.Element) -> None:
    renegotiation = scan.findall("renegotiation")
    assert len(renegotiation) == 1
    assert renegotiation[0].get("supported") == "0"
    assert all(element.get("vulnerable") == "0" for element in scan.findall("heartbleed"))


@needs_sslscan
def test_no_compression(scan: ET.Element, server: JobServer, pki: Path) -> None:
    # sslscan reports <compression> only when its OpenSSL was built with zlib
    # (Debian's is not); when it does, it must say "not supported".
    for element in scan.findall("compression"):
        assert element.get("supported") == "0"
    # The negotiated session, as a client sees it: no compression method.
    with raw_tls(server.address, client_context(pki / "clients" / "alice")) as sock:
        assert sock.version() == "TLSv1.3"
        assert sock.compression() is None


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_openssl_sees_no_compression(server: JobServer, pki: Path) -> None:
    assert OPENSSL is not None
    folder = pki / "clients" / "alice"
    host, port = server.address
    result = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"{host}:{port}", "-CAfile", str(folder / "ca.pem"),
         "-cert", str(folder / "cert.pem"), "-key", str(folder / "key.pem")],
        input=b"", capture_output=True, timeout=30, check=False,
    )
    text = result.stdout.decode(errors="replace")
    assert "Protocol  : TLSv1.3" in text or "New, TLSv1.3" in text, text
    assert "Compression: NONE" in text, text


@needs_sslscan
def test_the_scanned_certificate_is_ecdsa_p256_sha256(scan: ET.Element) -> None:
    certificates = scan.findall("certificates/certificate")
    assert certificates
    for certificate in certificates:
        assert certificate.findtext("signature-algorithm") == "ecdsa-with-SHA256"
        key = certificate.find("pk")
        assert key is not None
        assert (key.get("type"), key.get("curve_name")) == ("EC", "prime256v1")
        assert certificate.findtext("expired") == "false"
    # The signature the server makes in the handshake, too.
    signatures = {element.get("name") for element in scan.findall(
        "connection-signature-algorithm")}
    assert signatures == {"ecdsa_secp256r1_sha256"}


def _check_certificate(path: Path) -> x509.Certificate:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey), path
    assert isinstance(key.curve, ec.SECP256R1), path
    assert isinstance(certificate.signature_hash_algorithm, hashes.SHA256), path
    assert certificate.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    return certificate


def test_every_certificate_file_is_ecdsa_p256_sha256(pki: Path) -> None:
    paths = sorted(pki.rglob("*.pem"))
    certificates = [path for path in paths if path.name not in ("key.pem", "crl.pem")]
    assert len(certificates) >= 8  # CA, server (2 files), 3 clients (2 files each)
    for path in certificates:
        _check_certificate(path)
    for path in (p for p in paths if p.name == "key.pem"):
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key = load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_the_certificate_the_server_sends_is_the_one_on_disk(server: JobServer,
                                                             pki: Path) -> None:
    with raw_tls(server.address, client_context(pki / "clients" / "alice")) as sock:
        der = sock.getpeercert(binary_form=True)
        cipher, version, bits = sock.cipher()
    assert der is not None
    sent = x509.load_der_x509_certificate(der)
    assert sent == _check_certificate(pki / "server" / "cert.pem")
    assert version == "TLSv1.3" and bits >= 128, cipher


def test_a_client_limited_to_tls_1_2_is_refused(server: JobServer, pki: Path) -> None:
    context = client_context(pki / "clients" / "alice")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol version|unsupported protocol"):
        raw_tls(server.address, context)
