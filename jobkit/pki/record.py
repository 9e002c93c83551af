"""The CA's record of the certificates it issued: ``ca/issued.json``.

A certificate file is replaced when it is renewed or re-issued, but the old
certificate stays valid until it expires or is revoked: the record is what
remembers it, so that ``jobkit certs list`` can show it and ``jobkit certs
revoke`` can revoke it, and it is what the CRL is made from.

No ``cryptography`` here: the record is JSON (0600, beside the CA key)::

    {"version": 1, "crl_number": 2, "certificates": [
      {"serial": "5f3a...", "name": "alice", "kind": "client",
       "folder": "clients/alice", "not_before": "2025-01-01T00:00:00+00:00",
       "not_after": "2027-01-01T00:00:00+00:00", "revoked_at": null}]}

Serials are lowercase hex strings (they are 159-bit numbers, too big for
many JSON readers), times ISO 8601 in UTC (``2027-01-01T00:00:00+00:00``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jobkit.pki.files import write_file
from jobkit.pki.layout import ISSUED_FILE, ISSUED_MODE, InvalidName, PkiError, ca_dir

__all__ = [
    "CLIENT_KIND",
    "RECORD_VERSION",
    "SERVER_KIND",
    "UNKNOWN_KIND",
    "IssuedCertificate",
    "Record",
    "format_serial",
    "load_record",
    "parse_serial",
    "record_file",
    "save_record",
]

#: The kinds of certificate the record knows.
CLIENT_KIND = "client"
SERVER_KIND = "server"
#: A serial revoked without being in the record (issued before the record existed).
UNKNOWN_KIND = "unknown"
_KINDS = (CLIENT_KIND, SERVER_KIND, UNKNOWN_KIND)

#: The record's format.
RECORD_VERSION = 1

# RFC 5280: a serial is at most 20 octets.
_SERIAL = re.compile(r"[0-9a-f]{1,40}")


def format_serial(serial: int) -> str:
    """A serial as jobkit shows it: lowercase hex, no prefix, no colons."""
    return f"{serial:x}"


def parse_serial(text: str) -> int:
    """A serial in hex (``5F:3A:...``, ``0x5f3a``, any case); raise `InvalidName` otherwise."""
    digits = text.strip().lower().replace(":", "")
    digits = digits.removeprefix("0x")
    if not _SERIAL.fullmatch(digits):
        raise InvalidName(
            f"invalid serial {text!r}: expected up to 40 hex digits (as 'jobkit certs list' "
            f"shows them)"
        )
    return int(digits, 16)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected a time, not {value!r}")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"a time without its offset: {value!r}")
    return moment


@dataclasses.dataclass(frozen=True)
class IssuedCertificate:
    """One certificate the CA issued (or, kind `UNKNOWN_KIND`, revoked unseen).

    Attributes:
        serial: Its serial number.
        name: The client name (its CN), or the server certificate's CN; ``""``
            when unknown.
        kind: `CLIENT_KIND`, `SERVER_KIND` or `UNKNOWN_KIND`.
        folder: Where it was written, relative to the PKI folder
            (``clients/alice``, ``server``); ``""`` when unknown.
        not_before, not_after: Its validity (None when unknown).
        revoked_at: When it was revoked, or None.
    """

    serial: int
    name: str
    kind: str
    folder: str
    not_before: datetime | None
    not_after: datetime | None
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        """Whether it is on the CRL."""
        return self.revoked_at is not None

    def to_json(self) -> dict[str, Any]:
        """The record's JSON form of this certificate."""
        return {"serial": format_serial(self.serial), "name": self.name, "kind": self.kind,
                "folder": self.folder, "not_before": _time(self.not_before),
                "not_after": _time(self.not_after), "revoked_at": _time(self.revoked_at)}

    @classmethod
    def from_json(cls, data: object) -> IssuedCertificate:
        """`to_json` backwards; ``ValueError``/``TypeError``/``KeyError`` if malformed."""
        if not isinstance(data, dict):
            raise TypeError("a certificate must be an object")

        def when(key: str) -> datetime | None:
            value = data[key]
            return None if value is None else _parse_time(value)

        kind = data["kind"]
        if kind not in _KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        name, folder = data["name"], data["folder"]
        if not isinstance(name, str) or not isinstance(folder, str):
            raise TypeError("name and folder must be strings")
        return cls(parse_serial(data["serial"]), name, kind, folder, when("not_before"),
                   when("not_after"), when("revoked_at"))


@dataclasses.dataclass(frozen=True)
class Record:
    """Every certificate the CA issued, oldest first, and the last CRL's number.

    Attributes:
        certificates: The certificates, in the order they were recorded.
        crl_number: The number of the last CRL made (CRLs are numbered 1, 2...).
    """

    certificates: tuple[IssuedCertificate, ...] = ()
    crl_number: int = 0

    def find(self, serial: int) -> IssuedCertificate | None:
        """The certificate with ``serial``, or None."""
        return next((c for c in self.certificates if c.serial == serial), None)

    def named(self, name: str, kind: str = CLIENT_KIND) -> list[IssuedCertificate]:
        """The certificates of ``kind`` issued to ``name``, oldest first."""
        return [c for c in self.certificates if c.name == name and c.kind == kind]

    def add(self, certificate: IssuedCertificate) -> Record:
        """This record with ``certificate`` added (unless its serial is there already)."""
        if self.find(certificate.serial) is not None:
            return self
        return dataclasses.replace(self, certificates=(*self.certificates, certificate))

    def revoke(self, serials: Iterable[int], when: datetime) -> Record:
        """This record with ``serials`` revoked at ``when`` (revoked ones keep their time)."""
        wanted = set(serials)
        return dataclasses.replace(self, certificates=tuple(
            dataclasses.replace(c, revoked_at=when) if c.serial in wanted and not c.revoked else c
            for c in self.certificates
        ))

    def revoked(self) -> list[IssuedCertificate]:
        """The revoked certificates: what the CRL lists."""
        return [c for c in self.certificates if c.revoked]

    def to_json(self) -> dict[str, Any]:
        """The record's JSON document."""
        return {"version": RECORD_VERSION, "crl_number": self.crl_number,
                "certificates": [c.to_json() for c in self.certificates]}


def record_file(directory: str | os.PathLike[str]) -> Path:
    """``DIR/ca/issued.json`` (``DIR`` may be the PKI folder or its ``ca/`` folder)."""
    return ca_dir(directory) / ISSUED_FILE


def load_record(directory: str | os.PathLike[str]) -> Record:
    """The record of the CA in ``directory``; an empty one if there is no record yet.

    Raises `PkiError` naming the file when it cannot be read or is not a record.
    """
    path = record_file(directory)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return Record()
    except OSError as error:
        raise PkiError(f"cannot read {path}: {error.strerror}") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
            raise ValueError(f"not version {RECORD_VERSION}")
        number = data["crl_number"]
        if not isinstance(number, int) or number < 0:
            raise ValueError("bad crl_number")
        certificates = tuple(IssuedCertificate.from_json(c) for c in data["certificates"])
    except (ValueError, TypeError, KeyError) as error:
        raise PkiError(f"{path} is not a record of issued certificates ({error})") from None
    return Record(certificates, number)


def save_record(directory: str | os.PathLike[str], record: Record) -> Path:
    """Replace the record file atomically (0600); return its path."""
    path = record_file(directory)
    data = json.dumps(record.to_json(), indent=1).encode() + b"\n"
    write_file(path, data, ISSUED_MODE, force=True)
    return path
