"""What everything the CA signs shares: keys, the signing clock, key identifiers.

Certificates (`jobkit.pki.issue`) and revocation lists (`jobkit.pki.crl`)
are both signed by the CA; the choices they must agree on live here.
"""

from __future__ import annotations

import datetime as _dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

__all__ = ["CLOCK_SKEW", "SigningHash", "authority_key_id", "new_key", "now"]

#: Certificates and CRLs start this far in the past, so a peer whose clock is a
#: little behind ours does not see them as "not yet valid".
CLOCK_SKEW = _dt.timedelta(minutes=5)

#: The hashes a certificate may be signed with (all but SHA-256 only for forging).
SigningHash = hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512


def new_key() -> EllipticCurvePrivateKey:
    """A new ECDSA P-256 key: every key jobkit makes."""
    return ec.generate_private_key(ec.SECP256R1())


def now() -> _dt.datetime:
    """The current time, UTC (aware)."""
    return _dt.datetime.now(_dt.timezone.utc)


def authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The authorityKeyIdentifier of what ``issuer`` signs: its subject key id."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.public_key()  # type: ignore[arg-type]
        )
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
