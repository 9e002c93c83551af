"""`JobRecords`: every job's record in one SQLite database.

One store, two uses: the durable record of each job (what it ran, with
which limits, every state change with its time, how it ended, what it used,
how much output it kept), and the crash-recovery ledger of jobs that may
still have processes (leader pid, its start time, the boot id, its
cgroups).  A pool without a ``state_dir`` keeps the same tables in an
in-memory database, so both kinds of pool run the same code.

Durability: the database runs in WAL mode with ``synchronous=NORMAL``.  A
transaction is durable once committed when *this process* dies (SIGKILL, a
crash): the WAL is in the kernel's page cache.  After a power cut the last
transactions before it may be lost, never half-written (SQLite's own
guarantee); see docs/architecture.md.

Threads: one connection, serialised by a lock.  The supervisor thread records
ends; callers' threads record starts, deletes and reads.

Environment values are never written here: they are secrets of many users
(tokens in variables), and a record is read back by whoever holds the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import attrs

from jobkit.core.errors import JobkitError, StorageFailed, StoreVersionError
from jobkit.core.limits import Limits
from jobkit.core.models import JobStatus, State, StreamInfo, Usage

__all__ = [
    "DATABASE_NAME",
    "SCHEMA_VERSION",
    "Incarnation",
    "JobRecords",
]

#: The database file inside a pool's ``state_dir``.
DATABASE_NAME = "jobs.db"


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it commits first, and a migration must be one transaction.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _schema_v1(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE jobs (
            -- AUTOINCREMENT: an id is never handed out twice, even after a delete.
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            command TEXT NOT NULL,
            args TEXT NOT NULL,
            cwd TEXT,
            timeout REAL,
            backend TEXT NOT NULL,
            created_at REAL NOT NULL,
            state TEXT NOT NULL,
            ended_at REAL,
            exit_code INTEGER,
            signal INTEGER,
            error TEXT,
            timed_out INTEGER NOT NULL DEFAULT 0,
            output_error TEXT,
            stdout_written INTEGER NOT NULL DEFAULT 0,
            stdout_dropped INTEGER NOT NULL DEFAULT 0,
            stderr_written INTEGER NOT NULL DEFAULT 0,
            stderr_dropped INTEGER NOT NULL DEFAULT 0,
            -- The crash-recovery ledger: enough to kill what a dead owner left.
            pid INTEGER,
            -- The window of clock ticks since boot in which the leader started.
            pid_start INTEGER,
            pid_start_max INTEGER,
            boot_id TEXT,
            cgroup TEXT
        );
        CREATE INDEX jobs_by_end ON jobs(ended_at) WHERE ended_at IS NOT NULL;
        CREATE TABLE events (
            job_id INTEGER NOT NULL,
            at REAL NOT NULL,
            state TEXT NOT NULL
        );
        CREATE INDEX events_by_job ON events(job_id);
        """
    )


def _schema_v2(db: sqlite3.Connection) -> None:
    """Limits, network isolation, and what each job used (issue 10)."""
    _run_script(
        db,
        """
        -- The job's Limits as JSON (Limits.to_dict), NULL for none.
        ALTER TABLE jobs ADD COLUMN limits TEXT;
        ALTER TABLE jobs ADD COLUMN network INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE jobs ADD COLUMN enforced_by TEXT;
        -- Names of the limits not enforced, space-separated.
        ALTER TABLE jobs ADD COLUMN unenforced TEXT NOT NULL DEFAULT '';
        ALTER TABLE jobs ADD COLUMN oom_killed INTEGER NOT NULL DEFAULT 0;
        -- 'cgroup' or 'rusage', or NULL: nothing known of what it used.
        ALTER TABLE jobs ADD COLUMN usage_source TEXT;
        ALTER TABLE jobs ADD COLUMN cpu_user_s REAL;
        ALTER TABLE jobs ADD COLUMN cpu_system_s REAL;
        ALTER TABLE jobs ADD COLUMN peak_memory INTEGER;
        ALTER TABLE jobs ADD COLUMN io_read_bytes INTEGER;
        ALTER TABLE jobs ADD COLUMN io_write_bytes INTEGER;
        -- Every cgroup of the job (v1 has one per hierarchy), as a JSON list:
        -- records of version 1 have their one v2 cgroup in `cgroup`.
        ALTER TABLE jobs ADD COLUMN cgroups TEXT
        """,
    )


def _schema_v3(db: sqlite3.Connection) -> None:
    """Executors (issue 13): what ran each job, its name there, and the pool's own name."""
    _run_script(
        db,
        """
        -- The executor's name ('local', 'ray', a plugin's) and its handle for the
        -- job (ray: the submission id): what a reopened pool re-attaches by.
        ALTER TABLE jobs ADD COLUMN executor TEXT NOT NULL DEFAULT 'local';
        ALTER TABLE jobs ADD COLUMN handle TEXT;
        -- Facts about the pool itself ('id': its name for executors).
        CREATE TABLE pool (key TEXT PRIMARY KEY, value TEXT NOT NULL)
        """,
    )


#: Each step takes the database from version ``i`` to ``i + 1``, in one transaction.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_schema_v1, _schema_v2, _schema_v3]
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    "id, command, args, cwd, timeout, backend, created_at, state, ended_at, exit_code,"
    " signal, error, timed_out, output_error, stdout_written, stdout_dropped,"
    " stderr_written, stderr_dropped, pid, limits, network, enforced_by, unenforced,"
    " oom_killed, usage_source, cpu_user_s, cpu_system_s, peak_memory, io_read_bytes,"
    " io_write_bytes, executor, handle"
)


_LEDGER = "id, pid, pid_start, pid_start_max, boot_id, cgroup, cgroups, backend, executor, handle"


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def _stamp(value: datetime) -> float:
    return value.timestamp()


@attrs.frozen
class Incarnation:
    """What a job that may still run left behind: enough to find and kill it."""

    id: str
    pid: int | None
    #: The first and last clock tick (since boot) in which the leader started.
    start: tuple[int, int] | None
    boot_id: str | None
    #: Every cgroup folder of the job.
    cgroups: tuple[str, ...]
    backend: str
    #: The executor that runs it, and its handle there (None for ``local``).
    executor: str = "local"
    handle: str | None = None


class JobRecords:
    """The jobs table of one pool.

    Args:
        path: The database file, or None for a private in-memory database.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        target = ":memory:" if path is None else str(path)
        if path is not None and not path.exists():
            # Made 0600 before SQLite opens it; its -wal and -shm files copy
            # the database file's mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except StoreVersionError:
            self._db.close()
            raise
        except sqlite3.OperationalError as exc:
            self._db.close()
            raise _storage_failed(path, exc) from None
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise JobkitError(f"cannot open the job database {target}: {exc}") from None

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"the job database {self.path} has schema version {version}, but this"
                f" jobkit reads versions up to {SCHEMA_VERSION}: upgrade jobkit to open it"
            )
        for step in range(version, SCHEMA_VERSION):
            with self._transaction():
                MIGRATIONS[step](self._db)
                # PRAGMA takes no parameters; the value is our own integer.
                self._db.execute(f"PRAGMA user_version = {step + 1}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing ------------------------------------------------------------

    class _Tx:
        def __init__(self, records: JobRecords) -> None:
            self.records = records

        def __enter__(self) -> sqlite3.Connection:
            self.records._lock.acquire()
            try:
                self.records._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                self.records._lock.release()
                raise _storage_failed(self.records.path, error) from None
            return self.records._db

        def __exit__(self, exc_type: object, exc: object, *rest: object) -> None:
            try:
                if exc_type is None:
                    self.records._db.execute("COMMIT")
                    return
                self.records._db.execute("ROLLBACK")
            except sqlite3.Error as error:
                with contextlib.suppress(sqlite3.Error):
                    self.records._db.execute("ROLLBACK")
                raise _storage_failed(self.records.path, error) from None
            finally:
                self.records._lock.release()
            if isinstance(exc, sqlite3.OperationalError):
                raise _storage_failed(self.records.path, exc) from None

    def _transaction(self) -> JobRecords._Tx:
        return JobRecords._Tx(self)

    def add(
        self,
        command: str,
        args: Sequence[str],
        cwd: str | None,
        timeout: float | None,
        backend: str,
        created_at: datetime,
        *,
        process: tuple[int, tuple[int, int], str, Sequence[str]] | None = None,
        limits: Limits | None = None,
        network: bool = True,
        enforced_by: str | None = None,
        unenforced: Sequence[str] = (),
        executor: str = "local",
    ) -> str:
        """Record a new job; return its id, never used before in this store.

        ``process`` is what crash recovery needs of a running job: its
        leader's pid, the window of clock ticks it started in, the boot id
        and its cgroup folders; None for a job that never started (it ends
        at once), or one another ``executor`` than ``local`` runs (its
        handle is recorded by `submitted`).  ``limits`` to ``unenforced``:
        see `JobStatus`.
        """
        at = _stamp(created_at)
        pid, start, boot, cgroups = process or (None, (None, None), None, None)
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO jobs (command, args, cwd, timeout, backend, created_at, state,"
                " pid, pid_start, pid_start_max, boot_id, cgroups, limits, network,"
                " enforced_by, unenforced, executor)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (command, json.dumps(list(args)), cwd, timeout, backend, at,
                 State.RUNNING.value, pid, start[0], start[1], boot,
                 None if cgroups is None else json.dumps(list(cgroups)),
                 None if limits is None else json.dumps(limits.to_dict()), int(network),
                 enforced_by, " ".join(unenforced), executor),
            )
            job_id = cursor.lastrowid
            db.execute(
                "INSERT INTO events (job_id, at, state) VALUES (?, ?, ?)",
                (job_id, at, State.RUNNING.value),
            )
        return str(job_id)

    def submitted(self, job_id: str, handle: str, enforced_by: str | None,
                  unenforced: Sequence[str]) -> None:
        """Record the executor's handle of a job (and what enforces its limits)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET handle = ?, enforced_by = ?, unenforced = ? WHERE id = ?",
                (handle, enforced_by, " ".join(unenforced), int(job_id)),
            )

    def pool_id(self) -> str:
        """The pool's name for executors: made once, then the same for every reopening."""
        with self._transaction() as db:
            row = db.execute("SELECT value FROM pool WHERE key = 'id'").fetchone()
            if row is not None:
                return str(row[0])
            value = secrets.token_hex(6)
            db.execute("INSERT INTO pool (key, value) VALUES ('id', ?)", (value,))
            return value

    def finished(self, status: JobStatus) -> None:
        """Record a job's final state, its end, what it used and its output sizes,
        in one transaction."""
        ended = None if status.ended_at is None else _stamp(status.ended_at)
        usage = status.usage
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, ended_at = ?, exit_code = ?, signal = ?, error = ?,"
                " timed_out = ?, output_error = ?, stdout_written = ?, stdout_dropped = ?,"
                " stderr_written = ?, stderr_dropped = ?, oom_killed = ?, usage_source = ?,"
                " cpu_user_s = ?, cpu_system_s = ?, peak_memory = ?, io_read_bytes = ?,"
                " io_write_bytes = ? WHERE id = ?",
                (
                    status.state.value,
                    ended,
                    status.exit_code,
                    status.signal,
                    status.error,
                    int(status.timed_out),
                    status.output_error,
                    status.stdout.written,
                    status.stdout.dropped,
                    status.stderr.written,
                    status.stderr.dropped,
                    int(status.oom_killed),
                    None if usage is None else usage.source,
                    None if usage is None else usage.cpu_user_s,
                    None if usage is None else usage.cpu_system_s,
                    None if usage is None else usage.peak_memory,
                    None if usage is None else usage.io_read_bytes,
                    None if usage is None else usage.io_write_bytes,
                    int(status.id),
                ),
            )
            if ended is not None:
                db.execute(
                    "INSERT INTO events (job_id, at, state) VALUES (?, ?, ?)",
                    (int(status.id), ended, status.state.value),
                )

    def output_settled(self, job_id: str, stdout: StreamInfo, stderr: StreamInfo,
                       output_error: str | None) -> None:
        """Record the final stream sizes once both streams are closed."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET stdout_written = ?, stdout_dropped = ?, stderr_written = ?,"
                " stderr_dropped = ?, output_error = ? WHERE id = ?",
                (stdout.written, stdout.dropped, stderr.written, stderr.dropped,
                 output_error, int(job_id)),
            )

    def remove(self, job_ids: Sequence[str]) -> None:
        """Forget jobs for good (their ids stay used)."""
        ids = [(int(job_id),) for job_id in job_ids]
        with self._transaction() as db:
            db.executemany("DELETE FROM jobs WHERE id = ?", ids)
            db.executemany("DELETE FROM events WHERE job_id = ?", ids)

    # -- reading ------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def status(self, job_id: str) -> JobStatus | None:
        """The recorded status of a job, or None if there is no such job."""
        key = _key(job_id)
        if key is None:
            return None
        # The column list is our own constant; values go as parameters.
        rows = self._query(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (key,))  # noqa: S608
        return _to_status(rows[0]) if rows else None

    def ids(self, *, after: str | None, limit: int | None, newest_first: bool) -> list[str]:
        """Job ids in creation order (or the reverse), past the cursor ``after``."""
        where, params = "", []
        if after is not None:
            key = _key(after)
            if key is None:
                return []  # no id of ours: nothing comes after it
            where = "WHERE id < ?" if newest_first else "WHERE id > ?"
            params.append(key)
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT id FROM jobs {where} ORDER BY id {order}"  # noqa: S608 - our own words
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [str(row[0]) for row in self._query(sql, params)]

    def finished_jobs(self, *, ended_before: float | None = None,
                      states: Sequence[str] | None = None,
                      limit: int | None = None) -> Iterator[tuple[str, int]]:
        """``(id, bytes kept)`` of finished jobs, oldest first (at most ``limit``)."""
        sql = (
            "SELECT id, stdout_written - stdout_dropped + stderr_written - stderr_dropped"
            " FROM jobs WHERE state != ?"
        )
        params: list[object] = [State.RUNNING.value]
        if ended_before is not None:
            sql += " AND ended_at < ?"
            params.append(ended_before)
        if states is not None:
            sql += f" AND state IN ({', '.join('?' * len(states))})"  # placeholders only
            params.extend(states)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        for job_id, kept in self._query(sql, params):
            yield str(job_id), int(kept)  # type: ignore[call-overload]

    def finished_totals(self) -> tuple[int, int]:
        """(number of finished jobs, bytes of output they keep)."""
        rows = self._query(
            "SELECT COUNT(*), COALESCE(SUM(stdout_written - stdout_dropped"
            " + stderr_written - stderr_dropped), 0) FROM jobs WHERE state != ?",
            (State.RUNNING.value,),
        )
        count, kept = rows[0]
        return int(count), int(kept)  # type: ignore[call-overload]

    def incarnation(self, job_id: str) -> Incarnation | None:
        """What the job recorded of its processes, or None if there is no such job."""
        key = _key(job_id)
        rows = [] if key is None else self._query(
            f"SELECT {_LEDGER} FROM jobs WHERE id = ?", (key,)  # noqa: S608
        )
        return _to_incarnation(rows[0]) if rows else None

    def incarnations(self) -> list[Incarnation]:
        """Jobs recorded as running: a previous owner died while they ran."""
        rows = self._query(
            f"SELECT {_LEDGER} FROM jobs WHERE state = ?",  # noqa: S608 - our own words
            (State.RUNNING.value,),
        )
        return [_to_incarnation(row) for row in rows]

    def integrity(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer (``"ok"`` when sound)."""
        return str(self._query("PRAGMA integrity_check")[0][0])


def _storage_failed(path: Path | None, error: Exception) -> StorageFailed:
    return StorageFailed(f"cannot record jobs in {path or 'memory'}: {error}")


def _key(job_id: str) -> int | None:
    """The row id of a job id, or None for text that is no id this store gives out."""
    if not job_id.isdigit() or len(job_id) > 18 or job_id != str(int(job_id)):
        return None
    return int(job_id)


def _to_incarnation(r: tuple[object, ...]) -> Incarnation:
    job_id, pid, low, high, boot, cgroup, cgroups, backend, executor, handle = r
    start = None if low is None or high is None else (int(low), int(high))  # type: ignore[call-overload]
    folders = tuple(json.loads(str(cgroups))) if cgroups else ()
    if cgroup:  # a record of schema version 1
        folders += (str(cgroup),)
    return Incarnation(str(job_id), pid, start, boot, folders, str(backend),  # type: ignore[arg-type]
                       str(executor), None if handle is None else str(handle))


def _to_status(row: tuple[object, ...]) -> JobStatus:
    (job_id, command, args, _cwd, _timeout, backend, created_at, state, ended_at, exit_code,
     signal, error, timed_out, output_error, out_w, out_d, err_w, err_d, pid, limits, network,
     enforced_by, unenforced, oom_killed, source, cpu_user, cpu_system, peak, io_read,
     io_write, executor, handle) = row
    closed = state != State.RUNNING.value
    usage = None
    if source is not None:
        usage = Usage(
            str(source), float(cpu_user or 0), float(cpu_system or 0),  # type: ignore[arg-type]
            peak, io_read, io_write,  # type: ignore[arg-type]
        )
    return JobStatus(
        id=str(job_id),
        state=State(state),
        command=str(command),
        args=tuple(json.loads(str(args))),
        pid=pid,  # type: ignore[arg-type]
        created_at=_time(created_at),  # type: ignore[arg-type]
        backend=str(backend),
        exit_code=exit_code,  # type: ignore[arg-type]
        signal=signal,  # type: ignore[arg-type]
        error=error,  # type: ignore[arg-type]
        timed_out=bool(timed_out),
        ended_at=_time(ended_at),  # type: ignore[arg-type]
        output_error=output_error,  # type: ignore[arg-type]
        stdout=StreamInfo(written=out_w, dropped=out_d, closed=closed),  # type: ignore[arg-type]
        stderr=StreamInfo(written=err_w, dropped=err_d, closed=closed),  # type: ignore[arg-type]
        limits=None if limits is None else Limits.from_dict(json.loads(str(limits))),
        network=bool(network),
        enforced_by=enforced_by,  # type: ignore[arg-type]
        unenforced=tuple(str(unenforced).split()),
        oom_killed=bool(oom_killed),
        usage=usage,
        executor=str(executor),
        handle=None if handle is None else str(handle),
    )
