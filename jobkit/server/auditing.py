"""What the server writes to its audit log (`jobkit.audit`), and what it does when it cannot.

Two kinds of events, two policies:

* **Acts a client asks for** (a job created, stopped, deleted, cleaned; an
  admin reading another client's job) are recorded *before* the client is
  told they worked.  If the line cannot be written (a full or failing disk),
  the request is refused with 507 ``storage-failed`` (`request_event` raises
  the `ApiError`): stop, delete, clean and admin reads are recorded before
  they are done, so nothing is done; a job's creation can only be recorded
  once the job exists (its id is new), so a job whose creation cannot be
  recorded is killed and deleted before the 507 (`created`).  No act a
  client was told about is missing from the log.
* **Things that happen to the server** (a job finished, a TLS handshake or a
  request refused, the certificates reloaded, the server stopping) cannot
  be refused: when their line cannot be written, the server logs the event
  and why as an error on stderr, and goes on (`event`).  Only the first line,
  ``server.started``, is different: a server that cannot write it does not
  start.

A job that ends at once (``true``) may end before its creation is recorded:
its ``job.finished`` line is held back until the ``job.created`` line is
written, so the log always shows a job created before it finished.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from jobkit.audit import AuditLog
from jobkit.core.models import JobStatus
from jobkit.core.signals import signal_name
from jobkit.server.errors import ApiError
from jobkit.wire import ProblemKind

__all__ = ["ServerAudit"]

log = logging.getLogger("jobkit.server.audit")


def _storage_failed() -> ApiError:
    return ApiError(ProblemKind.STORAGE_FAILED,
                    "the server cannot write its audit log now (its disk is full or failing); "
                    "nothing was done")


class ServerAudit:
    """The server's audit trail: `jobkit.audit.AuditLog` with the policies above.

    Args:
        audit_log: Where lines go; None records nothing (a library user's
            `JobApi` without a log).

    Thread-safe: requests, the supervisor thread (``job.finished``) and the
    TLS layer (``auth.refused``) call it at once.
    """

    def __init__(self, audit_log: AuditLog | None) -> None:
        self.log = audit_log
        self._lock = threading.Lock()
        #: Creations in flight, per client CN.
        self._creating: dict[str, int] = {}
        #: ``(cn, job)`` of jobs whose creation is recorded and that have not finished.
        self._created: set[tuple[str, str]] = set()
        #: ``job.finished`` lines held back until their ``job.created`` is written.
        self._held: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def path(self) -> str | None:
        """The log file, or None."""
        return None if self.log is None else self.log.path

    def _write(self, event: str, fields: Mapping[str, Any]) -> None:
        if self.log is not None:
            self.log.record(event, **fields)

    def request_event(self, event: str, /, **fields: Any) -> None:
        """Record an act a client asked for; `ApiError` 507 if the line cannot be written."""
        try:
            self._write(event, fields)
        except OSError as error:
            log.error("cannot write the audit log (refusing the request): %s; event %s %s",
                      error.strerror or error, event, _describe(fields))
            raise _storage_failed() from None

    def event(self, event: str, /, **fields: Any) -> bool:
        """Record something that happened; on failure log an error and return False."""
        try:
            self._write(event, fields)
        except OSError as error:
            log.error("cannot write the audit log: %s; event %s %s",
                      error.strerror or error, event, _describe(fields))
            return False
        return True

    # -- a job's creation and end, in that order -------------------------------------

    def creating(self, cn: str) -> None:
        """A creation for ``cn`` starts: its job's end waits for `created`."""
        with self._lock:
            self._creating[cn] = self._creating.get(cn, 0) + 1

    def created(self, cn: str, job: str | None, **fields: Any) -> None:
        """The creation `creating` announced is over (``job`` None: it failed).

        Records ``job.created``; raises `ApiError` 507 if it cannot (the
        caller then deletes the job).  Either way the job's ``job.finished``,
        if it came already, is written now.
        """
        failure: ApiError | None = None
        with self._lock:
            try:
                if job is not None:
                    self.request_event("job.created", cn=cn, job=job, **fields)
                    self._created.add((cn, job))
            except ApiError as error:
                failure = error
            finally:
                left = self._creating[cn] - 1
                if left:
                    self._creating[cn] = left
                else:
                    del self._creating[cn]
                held = [key for key in self._held
                        if key[0] == cn and (not left or key == (cn, job))]
                for key in held:
                    self._created.discard(key)
                    self.event("job.finished", **self._held.pop(key))
        if failure is not None:
            raise failure

    def finished(self, cn: str, status: JobStatus) -> None:
        """Record that ``cn``'s job ended (`JobPool`'s ``on_finished``)."""
        fields: dict[str, Any] = {"cn": cn, "job": status.id, "state": status.state.value}
        if status.exit_code is not None:
            fields["exit_code"] = status.exit_code
        if status.signal is not None:
            fields["signal"] = signal_name(status.signal)
        reason = "timed out" if status.timed_out else status.error
        if reason:
            fields["reason"] = reason
        key = (cn, status.id)
        with self._lock:
            if key not in self._created and self._creating.get(cn):
                self._held[key] = fields  # its creation is not recorded yet
                return
            self._created.discard(key)
            self.event("job.finished", **fields)

    def close(self) -> None:
        """Close the log file."""
        if self.log is not None:
            self.log.close()


def _describe(fields: Mapping[str, Any]) -> str:
    # For the error on stderr: who and which job, never arguments.
    shown = {name: fields[name] for name in ("cn", "job", "owner", "peer", "state")
             if name in fields}
    return " ".join(f"{name}={value}" for name, value in shown.items())
