"""Every exception jobkit raises on purpose.

The tree::

    JobkitError
    ├── JobNotFound        (also LookupError)  unknown or deleted job id
    ├── BackendNotFound    (also LookupError)  no output backend of that name
    ├── PoolClosed         (also RuntimeError) the pool was closed
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
    "JobNotFound",
    "JobkitError",
    "PoolClosed",
    "ServerError",
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


class PoolClosed(JobkitError, RuntimeError):
    """The pool was closed; it accepts no more calls."""

    def __init__(self) -> None:
        super().__init__("the job pool is closed")


class ClientError(JobkitError):
    """Base class of the errors the remote client raises."""


class ConnectionFailed(ClientError):
    """The server could not be reached (refused, unreachable, timed out)."""


class AuthenticationFailed(ClientError):
    """TLS failed: the server refused our certificate, or we refused the server's."""


class ServerError(ClientError):
    """The server answered with an error status; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
