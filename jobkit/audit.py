"""The audit log: who did what to which job, in a file that cannot be edited quietly.

Standard library only: the server writes the log (`AuditLog`) and the CLI
checks and shows it (`check_chain`, `verify`, `read_entries`) without
importing the server.

Format
------
One JSON object per line (UTF-8, in fact ASCII: everything else is ``\\u``
escaped), ending in ``\\n``.  Every line has four fields of its own and the
event's fields (see `EVENTS`)::

    {"seq":7,"time":"2025-01-31T09:12:03.123456Z","event":"job.created",
     "prev":"<sha-256 hex>","cn":"alice","job":"3","command":"make",...}

* ``seq``: the line's number in the whole chain, from 1, across rotations;
* ``time``: when it was written, UTC, ISO 8601 with a ``Z``;
* ``event``: one of `EVENTS`, or ``audit.rotated`` (`ROTATED`);
* ``prev``: the SHA-256 (hex) of the previous line's bytes, without its
  newline; `GENESIS` (64 zeros) on the very first line.

So each line vouches for the one before it: changing, removing, repeating or
reordering a line breaks the chain at that point, and `verify` names the
first line where it breaks.  What a chain cannot show is lines cut off the
*end*: nothing comes after them to vouch for them.  `check_chain` returns the
last line's hash; keep it somewhere else (or ship the log off the machine) to
pin the end.  Nor does an unkeyed chain stop someone who can write the file
from rewriting everything after their edit, hashes included: it catches
quiet edits, and makes loud ones visible against a copy kept elsewhere.

Rotation
--------
When a line would take the file past ``max_bytes``, the file is renamed to
``FILE.000001`` (then ``.000002``...: the next free number, so names sort
oldest first and never change) and a new ``FILE`` starts with an
``audit.rotated`` line naming the previous file, whose ``prev`` is the hash
of the previous file's last line.  The chain runs on across files:
``verify(["audit.log.000001", "audit.log.000002", "audit.log"])``.  A chain
may start at such a line (older files archived away); `check_chain` says so.

Never logged
------------
Job output and environment values.  No event has a field for them, fields
are checked against `EVENTS` (an unknown field raises ``TypeError``), and
no mapping field (``limits``, ``config``) may hold a key named after them
(`FORBIDDEN_KEYS`) or a nested mapping.  Command arguments *are* logged: a
secret put on a command line is in the log, as it is in ``ps``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from jobkit.locations import default_state_dir
from jobkit.wire import DEFAULT_HOST, DEFAULT_PORT, format_time

__all__ = [
    "AUDIT_FILE",
    "DEFAULT_MAX_BYTES",
    "DIR_MODE",
    "EVENTS",
    "FIELDS",
    "FILE_MODE",
    "FORBIDDEN_KEYS",
    "GENESIS",
    "LINE_FIELDS",
    "ROTATED",
    "AuditEntry",
    "AuditLog",
    "BadLine",
    "ChainReport",
    "EventSpec",
    "chain_files",
    "check_chain",
    "default_audit_file",
    "line_hash",
    "read_entries",
    "verify",
]

#: The audit log's file name in the server's state folder.
AUDIT_FILE = "audit.log"
#: The audit log and its rotated files: the server's user only.
FILE_MODE = 0o600
#: A folder the writer creates for the log.
DIR_MODE = 0o700
#: The size past which the log is rotated (64 MiB).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: ``prev`` of the first line of a chain.
GENESIS = "0" * 64
#: The event that starts every file after the first.
ROTATED = "audit.rotated"
#: The fields every line has, whatever its event.
LINE_FIELDS = ("seq", "time", "event", "prev")
#: Keys no mapping field may have (case-insensitive): the log never holds these.
FORBIDDEN_KEYS = frozenset({"env", "environ", "environment", "output", "stdout", "stderr"})

# Rotated files: FILE.NNNNNN, six digits or more.
_ROTATED_SUFFIX = re.compile(r"\.(\d{6,})")


# -- the event vocabulary ----------------------------------------------------------------


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_optional_int(value: object) -> bool:
    return value is None or _is_int(value)


def _is_optional_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def _is_optional_number(value: object) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _is_str_or_int(value: object) -> bool:
    return isinstance(value, str) or _is_int(value)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_str_list(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _is_flat_mapping(value: object, allow_lists: bool) -> bool:
    if not isinstance(value, Mapping):
        return False
    for key, item in value.items():
        if not isinstance(key, str) or key.lower() in FORBIDDEN_KEYS:
            return False
        if _is_scalar(item):
            continue
        if allow_lists and isinstance(item, (list, tuple)) and all(map(_is_scalar, item)):
            continue
        return False
    return True


def _is_limits(value: object) -> bool:
    return value is None or _is_flat_mapping(value, allow_lists=False)


def _is_config(value: object) -> bool:
    return _is_flat_mapping(value, allow_lists=True)


#: Every field an event may carry: what it holds, and its check.
FIELDS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "action": ("what an admin did: 'status', 'output', 'stop', 'delete'...", _is_str),
    "args": ("the command's arguments, a list of strings", _is_str_list),
    "backend": ("the job's output backend", _is_str),
    "cn": ("the client's certificate CN (for job.finished: the job's owner)", _is_str),
    "command": ("the program run", _is_str),
    "config": (
        "the server's settings: option name -> a scalar or a list of scalars", _is_config
    ),
    "cwd": ("the job's working folder, or null", _is_optional_str),
    "exit_code": ("the job's exit status, or null", _is_optional_int),
    "files": ("the files read, a list of strings", _is_str_list),
    "job": ("the job's id", _is_str),
    "limits": ("the job's limits: name -> a scalar, or null", _is_limits),
    "method": ("the HTTP method", _is_str),
    "ok": ("whether it worked", _is_bool),
    "older_than": ("seconds: only jobs that ended this long ago, or null",
                   _is_optional_number),
    "owner": ("the CN of the client whose job it is", _is_str),
    "peer": ("the peer's address, HOST:PORT", _is_str),
    "pid": ("the server's process id", _is_int),
    "reason": ("why, in words", _is_str),
    "route": ("the route template, e.g. /jobs/<id>", _is_str),
    "signal": ("a signal, by name or number", _is_str_or_int),
    "state": ("the job's final state", _is_str),
    "states": ("job states, a list of strings", _is_str_list),
    "trigger": ("what started it: 'SIGHUP', 'crl changed'...", _is_str),
    "version": ("jobkit's version", _is_str),
}


@dataclass(frozen=True)
class EventSpec:
    """What one kind of event records.

    Attributes:
        summary: When the event is written.
        required: Fields it must have.
        optional: Fields it may have.
    """

    summary: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @functools.cached_property
    def fields(self) -> frozenset[str]:
        """Every field it may have: ``required`` and ``optional``."""
        return frozenset((*self.required, *self.optional))


#: The events the server records, with their fields (see `FIELDS`).
EVENTS: dict[str, EventSpec] = {
    "job.created": EventSpec(
        "a client started a job",
        ("cn", "job", "command", "args", "peer"),
        ("cwd", "limits", "backend"),
    ),
    "job.stopped": EventSpec(
        "a client (or an admin: owner) sent a job a signal",
        ("cn", "job", "signal", "peer"), ("owner",),
    ),
    "job.deleted": EventSpec(
        "a client (or an admin: owner) deleted a job", ("cn", "job", "peer"), ("owner",)
    ),
    "jobs.cleaned": EventSpec(
        "a client (or an admin: owner) deleted its finished jobs, all or those matching "
        "older_than and states", ("cn", "peer"), ("owner", "older_than", "states"),
    ),
    "job.finished": EventSpec(
        "a job ended; cn is its owner", ("cn", "job", "state"),
        ("exit_code", "signal", "reason"),
    ),
    "auth.refused": EventSpec(
        "a connection was refused: its TLS handshake failed (reason: what TLS said), "
        "or its certificate's CN cannot be an identity",
        ("reason", "peer"), ("cn",),
    ),
    "authz.refused": EventSpec(
        "an authenticated client was refused (403)",
        ("cn", "peer", "method", "route"), ("job", "reason"),
    ),
    "admin.acted": EventSpec(
        "an admin acted on another client's job",
        ("cn", "owner", "action", "job", "peer"),
    ),
    "server.started": EventSpec(
        "the server started listening", ("config",), ("version", "pid")
    ),
    "server.stopped": EventSpec(
        "the server stopped (every job was killed)", (), ("config", "reason")
    ),
    "certs.reloaded": EventSpec(
        "the server reloaded its certificate, key, CA and CRL (ok false: it kept the old ones)",
        ("trigger", "ok"), ("reason", "files"),
    ),
}


def _check_fields(event: str, fields: Mapping[str, object]) -> None:
    spec = EVENTS.get(event)
    if spec is None:
        raise ValueError(f"unknown audit event {event!r} (known: {', '.join(sorted(EVENTS))})")
    allowed = spec.fields
    if not fields.keys() <= allowed:  # the usual case, on every line: no set, no sort
        unknown = sorted(set(fields) - allowed)
        raise TypeError(
            f"audit event {event!r} has no field {', '.join(map(repr, unknown))} "
            f"(its fields: {', '.join(sorted(allowed))})"
        )
    missing = [name for name in spec.required if name not in fields]
    if missing:
        raise TypeError(f"audit event {event!r} needs {', '.join(missing)}")
    for name, value in fields.items():
        what, check = FIELDS[name]
        if not check(value):
            raise TypeError(f"audit field {name!r} must be {what}, not {value!r:.60}")


# -- lines ----------------------------------------------------------------------------------


def line_hash(line: bytes) -> str:
    """The SHA-256 (hex) of a line's bytes, without its newline: the next line's ``prev``."""
    return hashlib.sha256(line).hexdigest()


# allow_nan=False: NaN is not JSON, and another reader would choke on it.  One encoder
# for every line: json.dumps with options makes a new one on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _encode(record: Mapping[str, Any]) -> bytes:
    return _ENCODER.encode(record).encode("ascii")


def _parse(line: bytes) -> dict[str, Any] | None:
    """The line's record, or None if it is not one (every line field, rightly typed)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError too; "[[[[..." nested deep
        return None
    if not isinstance(record, dict):
        return None
    seq, time, event, prev = (record.get(name) for name in LINE_FIELDS)
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1
            and isinstance(time, str) and isinstance(event, str)
            and isinstance(prev, str) and len(prev) == 64):
        return None
    return record


# -- files ----------------------------------------------------------------------------------


def _rotated_index(name: str, base: str) -> int | None:
    if not name.startswith(base):
        return None
    match = _ROTATED_SUFFIX.fullmatch(name[len(base):])
    return int(match.group(1)) if match else None


def _rotated_files(path: str) -> list[tuple[int, str]]:
    folder, base = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        index = _rotated_index(name, base)
        if index is not None:
            found.append((index, os.path.join(os.path.dirname(path), name)))
    return sorted(found)


def chain_files(path: str | os.PathLike[str]) -> list[str]:
    """``path``'s rotated files, oldest first, then ``path``: its whole chain.

    Only files that exist are listed (``path`` itself included).
    """
    live = os.fspath(path)
    files = [name for _, name in _rotated_files(live)]
    if os.path.exists(live):
        files.append(live)
    return files


def default_audit_file(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str | None:
    """``STATE/audit.log`` for the server listening on ``host:port``; None for port 0.

    STATE is the server's default state folder
    (`jobkit.locations.default_state_dir`: ``$XDG_STATE_HOME/jobkit/serve-HOST-PORT``).
    A server on port 0 has no default state folder, so no default audit log.
    """
    folder = default_state_dir(host, port)
    return None if folder is None else os.path.join(folder, AUDIT_FILE)


def _last_line(fd: int, size: int) -> tuple[bytes, bool]:
    """The file's last line (without newline), and whether a newline ends the file."""
    if size == 0:
        return b"", True
    complete = os.pread(fd, 1, size - 1) == b"\n"
    start = size - 1 if complete else size
    data = b""
    while start > 0:
        step = min(1 << 16, start)
        start -= step
        chunk = os.pread(fd, step, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return chunk[cut + 1:] + data, complete
        data = chunk + data
    return data, complete


def _lines(path: str) -> Iterator[tuple[int, bytes, bool]]:
    """``(number, line without newline, ended by a newline)`` for each line of ``path``."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, 1):
            if raw.endswith(b"\n"):
                yield number, raw[:-1], True
            else:
                yield number, raw, False


# -- the writer -----------------------------------------------------------------------------


class AuditLog:
    """Appends audit events to a hash-chained JSON-lines file; thread-safe.

    Opening continues the chain of an existing file (or, if it is empty, of
    its newest rotated file).  Each event is one ``write()`` on a descriptor
    opened with ``O_APPEND``: it reaches the kernel before `record` returns
    (``fsync=True`` also waits for the disk).  The file is made 0600, its
    folder, if missing, 0700.

    Errors writing the file (disk full, ...) are raised from `record`: the
    caller decides whether an event that cannot be audited may go ahead.

    Args:
        path: The log file.
        max_bytes: Rotate before a line would take the file past this size.
        fsync: ``fsync`` after every event.
        clock: Returns the time to write (tests); default now, UTC.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        fsync: bool = False,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self._fsync = fsync
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._seq = 0
        self._prev = GENESIS
        folder = os.path.dirname(self.path) or "."
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=DIR_MODE, exist_ok=True)
            os.chmod(folder, DIR_MODE)  # whatever the umask took away
        self._open()

    # The descriptor: O_NOFOLLOW so a planted symlink is refused, not written through.
    def _open(self) -> None:
        # O_RDWR, not O_WRONLY: the chain goes on from the last line, read with pread.
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.path, flags, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            self._size = os.fstat(fd).st_size
            self._fd = fd
            if self._size:
                self._continue_from(self.path, fd)
                return
            rotated = _rotated_files(self.path)
            if rotated:
                # A rotation that stopped after the rename: start the file as it would have.
                previous = rotated[-1][1]
                with open(previous, "rb") as file:
                    self._continue_from(previous, file.fileno())
                self._write_line(ROTATED, {"previous_file": os.path.basename(previous)},
                                 may_rotate=False)
        except BaseException:
            self._fd = -1
            os.close(fd)
            raise

    def _continue_from(self, path: str, fd: int) -> None:
        size = os.fstat(fd).st_size
        last, complete = _last_line(fd, size)
        if not complete and fd == self._fd:
            # A line cut short (a crash mid-write): end it, so that our lines
            # stand alone; verify reports the cut line.
            os.write(fd, b"\n")
            self._size += 1
        self._prev = line_hash(last)
        record = _parse(last)
        if record is not None:
            self._seq = int(record["seq"])
            return
        # The last line is damaged: number on from the last good one.
        seq, after = 0, 0
        for _, line, _ in _lines(path):
            parsed = _parse(line)
            if parsed is None:
                after += 1
            else:
                seq, after = int(parsed["seq"]), 0
        self._seq = seq + after

    def record(self, event: str, /, **fields: Any) -> None:
        """Append one event; raise ``ValueError``/``TypeError`` if it is not in `EVENTS`.

        ``fields`` are the event's (see `EVENTS` and `FIELDS`); anything else,
        a missing required field, or a value of the wrong type is refused
        before anything is written.
        """
        _check_fields(event, fields)
        with self._lock:
            if self._fd < 0:
                raise ValueError("the audit log is closed")
            self._write_line(event, fields)

    def _write_line(self, event: str, fields: Mapping[str, Any], *, may_rotate: bool = True,
                    ) -> None:
        record = {"seq": self._seq + 1, "time": format_time(self._clock()), "event": event,
                  "prev": self._prev}
        record.update(sorted(fields.items()))
        line = _encode(record)
        if may_rotate and self._size and self._size + len(line) + 1 > self.max_bytes:
            self._rotate()
            # Once, even if this line alone is longer than max_bytes.
            self._write_line(event, fields, may_rotate=False)
            return
        data = line + b"\n"
        written = os.write(self._fd, data)
        while written < len(data):  # a short write (a signal, a full disk)
            written += os.write(self._fd, data[written:])
        if self._fsync:
            os.fsync(self._fd)
        self._size += len(data)
        self._seq += 1
        self._prev = line_hash(line)

    def _rotate(self) -> None:
        rotated = _rotated_files(self.path)
        index = rotated[-1][0] + 1 if rotated else 1
        target = f"{self.path}.{index:06d}"
        os.fsync(self._fd)
        os.rename(self.path, target)
        old, self._fd = self._fd, -1
        os.close(old)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, FILE_MODE)
        os.fchmod(self._fd, FILE_MODE)
        self._size = 0
        folder = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename and the new file survive a crash
        finally:
            os.close(folder)
        self._write_line(ROTATED, {"previous_file": os.path.basename(target)}, may_rotate=False)

    def close(self) -> None:
        """Close the file; later `record` calls raise ``ValueError``."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- reading and checking -------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    """One line of an audit file, as read.

    Attributes:
        path: The file.
        line: Its line number in that file, from 1.
        raw: The line's bytes, without the newline.
        record: The decoded line, or None if it is not an audit record.
    """

    path: str
    line: int
    raw: bytes
    record: dict[str, Any] | None


def read_entries(paths: Iterable[str | os.PathLike[str]]) -> Iterator[AuditEntry]:
    """Every line of ``paths``, in order; `AuditEntry.record` is None for a bad line."""
    for given in paths:
        path = os.fspath(given)
        for number, line, _ in _lines(path):
            yield AuditEntry(path, number, line, _parse(line))


@dataclass(frozen=True)
class BadLine:
    """The first line where a chain breaks: ``str()`` is ``FILE:LINE: why``.

    Attributes:
        path: The file.
        line: The line number in that file, from 1.
        reason: What is wrong: changed, removed before it, out of order.
    """

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class ChainReport:
    """What `check_chain` found.

    Attributes:
        lines: Lines read (up to the first bad one, that one included).
        first_seq: ``seq`` of the first line (0 when there are none).
        last_seq: ``seq`` of the last good line (0 when there is none).
        last_hash: The hash of the last good line (`GENESIS` when there is none):
            keep it elsewhere to pin the end of the log.
        continues: The file named by the first line when the chain starts at
            an ``audit.rotated`` line (its predecessors were not given), else None.
        bad: The first bad line, or None when the chain is intact.
    """

    lines: int
    first_seq: int
    last_seq: int
    last_hash: str
    continues: str | None
    bad: BadLine | None


def _seq_later(entries: Iterator[AuditEntry], seq: int) -> bool:
    return any(entry.record is not None and entry.record["seq"] == seq for entry in entries)


def check_chain(paths: Sequence[str | os.PathLike[str]]) -> ChainReport:
    """Check the hash chain of ``paths`` (in chain order: oldest first); say what was found.

    The first line must be the chain's first (``seq`` 1, ``prev`` `GENESIS`)
    or an ``audit.rotated`` line that starts a file.  After it, each line
    must carry the hash of the line before and the next ``seq``.  The first
    line that does not is reported as:

    * *changed*: not an audit record, or its ``seq`` is wrong though it
      follows its predecessor, or the next line records another hash for it;
    * *N line(s) removed before it*: ``seq`` jumps ahead, and the missing
      numbers never come;
    * *out of order*: ``seq`` jumps ahead to a line that comes later, or
      goes back (a repeated line, too).

    Raises ``OSError`` when a file cannot be read.
    """
    entries = read_entries(paths)
    count = 0
    first_seq = last_seq = 0
    last_hash = GENESIS
    continues: str | None = None
    previous: AuditEntry | None = None

    def report(bad: BadLine) -> ChainReport:
        return ChainReport(count, first_seq, last_seq, last_hash, continues, bad)

    for entry in entries:
        count += 1
        record = entry.record
        if record is None:
            cut = "" if entry.raw.endswith(b"}") else " (cut short?)"
            return report(BadLine(entry.path, entry.line,
                                  f"changed: not an audit record{cut}"))
        seq, prev, event = record["seq"], record["prev"], record["event"]
        if previous is None:
            first_seq = seq
            if seq == 1:
                if prev != GENESIS:
                    return report(BadLine(entry.path, entry.line,
                                          "changed: the first line must have prev 000...0"))
            elif event == ROTATED and entry.line == 1:
                named = record.get("previous_file")
                continues = named if isinstance(named, str) else "?"
            else:
                return report(BadLine(
                    entry.path, entry.line,
                    f"{seq - 1} line(s) removed before it (the chain starts at seq {seq})",
                ))
        else:
            expected = last_seq + 1
            linked = prev == last_hash
            if linked and seq != expected:
                return report(BadLine(entry.path, entry.line,
                                      f"changed: seq is {seq}, expected {expected}"))
            if not linked:
                if seq == expected:
                    return report(BadLine(
                        previous.path, previous.line,
                        "changed: the next line records a different hash for it",
                    ))
                if seq > expected and not _seq_later(entries, expected):
                    where = " (a file left out?)" if entry.line == 1 else ""
                    return report(BadLine(entry.path, entry.line,
                                          f"{seq - expected} line(s) removed before it{where}"))
                return report(BadLine(entry.path, entry.line,
                                      f"out of order: seq {seq} where {expected} belongs"))
            if (event == ROTATED) != (entry.line == 1):
                # Only the writer puts this event first in a file, and only there.
                where = "a rotated file starts with audit.rotated" if entry.line == 1 else (
                    "audit.rotated only starts a file")
                return report(BadLine(entry.path, entry.line, f"changed: {where}"))
        last_seq = seq
        last_hash = line_hash(entry.raw)
        previous = entry
    return ChainReport(count, first_seq, last_seq, last_hash, continues, None)


def verify(paths: Sequence[str | os.PathLike[str]]) -> BadLine | None:
    """The first line of ``paths`` that was changed, removed or reordered, or None.

    See `check_chain`, which also says how far the chain goes.
    """
    return check_chain(paths).bad
