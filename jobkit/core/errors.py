"""Every exception jobkit raises on purpose.

The tree::

    JobkitError
    ├── JobNotFound        (also LookupError)  unknown or deleted job id
    ├── BackendNotFound    (also LookupError)  no output backend of that name
    ├── ExecutorNotFound   (also LookupError)  no executor of that name
    ├── ExecutorUnavailable                    the executor's cluster cannot be reached
    ├── PoolClosed         (also RuntimeError) the pool was closed
    ├── StateDirInUse                          another pool owns this state_dir
    ├── StoreVersionError                      the state_dir is from a newer jobkit
    ├── StorageFailed      (also OSError)      the state_dir cannot be written (disk full)
    └── ClientError                            raised by jobkit.client only
        ├── ConnectionFailed                   the server could not be reached
        ├── AuthenticationFailed               TLS handshake or certificate refused
        └── ServerError                        the server answered with an error

Wrong argument types raise the built-in ``TypeError`` and bad values
``ValueError``, as Python code expects.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BackendNotFound",
    "ClientError",
    "ConnectionFailed",
    "ExecutorNotFound",
    "ExecutorUnavailable",
    "JobNotFound",
    "JobkitError",
    "PoolClosed",
    "ServerError",
    "StateDirInUse",
    "StorageFailed",
    "StoreVersionError",
]


class JobkitError(Exception):
    """Base class of every error jobkit raises on purpose."""


class JobNotFound(JobkitError, LookupError):
    """No job with this id exists in the pool (never created, or deleted)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no such job: {job_id!r}")
        self.job_id = job_id


class BackendNotFound(JobkitError, LookupError):
    """No output backend is registered under this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown output backend {name!r} (known: {', '.join(sorted(known)) or 'none'})"
        )
        self.name = name


class ExecutorNotFound(JobkitError, LookupError):
    """No executor is registered under this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown executor {name!r} (known: {', '.join(sorted(known)) or 'none'})"
        )
        self.name = name


class ExecutorUnavailable(JobkitError):
    """The executor cannot run jobs now: its cluster cannot be reached, or what it
    needs is not installed.  Nothing was created; the message says what to fix."""


class PoolClosed(JobkitError, RuntimeError):
    """The pool was closed; it accepts no more calls."""

    def __init__(self) -> None:
        super().__init__("the job pool is closed")


class StateDirInUse(JobkitError):
    """Another pool (in this process or another) owns this state folder."""

    def __init__(self, directory: object) -> None:
        super().__init__(f"the state folder {directory} is in use by another jobkit server or pool")
        self.directory = directory


class StoreVersionError(JobkitError):
    """The state folder's database was written by a newer jobkit than this one."""


class StorageFailed(JobkitError, OSError):
    """A pool cannot write its state folder (the disk is full, say): no job was created."""


class ClientError(JobkitError):
    """Base class of the errors the remote client raises."""


class ConnectionFailed(ClientError):
    """The server could not be reached (refused, unreachable, timed out)."""


class AuthenticationFailed(ClientError):
    """TLS failed: the server refused our certificate, or we refused the server's."""


class ServerError(ClientError):
    """The server answered with an error status.

    Attributes:
        status: The HTTP status.
        kind: What kind of error the server said it was (its problem type,
            e.g. ``"quota-exceeded"``; see docs/server.md), or None when it
            said nothing the client understood.
    """

    def __init__(self, message: str, status: int, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
