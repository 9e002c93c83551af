"""The server's state folder: one durable pool per client, and who owns the folder.

Layout (every folder 0700, every file 0600)::

    STATE/
        lock                    flock: one live server per folder
        audit.log               the audit trail (jobkit.audit)
        clients/
            alice/              one `JobPool` state_dir per client CN:
                jobs.db           its records (SQLite, WAL)
                output/7.stdout   its jobs' output (the ``file`` backend)

A CN becomes a folder name with every byte outside ``[A-Za-z0-9_-]``
written as ``%XX`` (``.`` too), so no name can be ``.``, ``..``, hold a
``/`` or collide with another; a folder name that is not such an encoding
is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path

from jobkit.core.errors import StateDirInUse

__all__ = ["CLIENTS_DIR", "ServerState", "decode_name", "encode_name"]

CLIENTS_DIR = "clients"
_PLAIN = re.compile(rb"[A-Za-z0-9_-]")
_ENCODED = re.compile(r"(?:[A-Za-z0-9_-]|%[0-9A-F]{2})+")


def encode_name(name: str) -> str:
    """A CN as a safe, reversible folder name."""
    return "".join(
        chr(byte) if _PLAIN.fullmatch(bytes([byte])) else f"%{byte:02X}"
        for byte in name.encode("utf-8", "surrogatepass")
    )


def decode_name(folder: str) -> str | None:
    """The CN a folder name encodes, or None if it is not one of ours."""
    if not _ENCODED.fullmatch(folder):
        return None
    raw = re.sub(rb"%([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]), folder.encode())
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name if encode_name(name) == folder else None


class ServerState:
    """A server's state folder, held (flock) from construction to `close`.

    Args:
        root: The folder (created 0700), or None for a private temporary
            one that `close` removes (a server on port 0 without
            ``--state-dir``: its address changes every run anyway).
    """

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.temporary = root is None
        self.root = Path(tempfile.mkdtemp(prefix="jobkit-serve-")) if root is None else Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StateDirInUse(self.root) from None
        (self.root / CLIENTS_DIR).mkdir(mode=0o700, exist_ok=True)

    def client_dir(self, name: str) -> Path:
        """The state_dir of client ``name``'s pool."""
        return self.root / CLIENTS_DIR / encode_name(name)

    def client_names(self) -> list[str]:
        """Every client that has a folder here, by name."""
        names = []
        for entry in sorted(os.listdir(self.root / CLIENTS_DIR)):
            name = decode_name(entry)
            if name is not None and (self.root / CLIENTS_DIR / entry).is_dir():
                names.append(name)
        return names

    def close(self) -> None:
        """Let another server use the folder; remove it if it was temporary."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self.temporary:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.root)
