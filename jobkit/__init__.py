"""jobkit: run commands as jobs, locally as a library or remotely over mutual TLS."""

from jobkit._version import __version__
from jobkit.core.backend import OutputBackend, OutputStore
from jobkit.core.errors import (
    AuthenticationFailed,
    BackendNotFound,
    ClientError,
    ConnectionFailed,
    JobkitError,
    JobNotFound,
    PoolClosed,
    ServerError,
)
from jobkit.core.hookspecs import hookimpl
from jobkit.core.models import JobOutput, JobStatus, State, StreamInfo
from jobkit.core.pool import JobPool
from jobkit.core.stream import Follower

__all__ = [
    "AuthenticationFailed",
    "BackendNotFound",
    "ClientError",
    "ConnectionFailed",
    "Follower",
    "JobNotFound",
    "JobOutput",
    "JobPool",
    "JobStatus",
    "JobkitError",
    "OutputBackend",
    "OutputStore",
    "PoolClosed",
    "ServerError",
    "State",
    "StreamInfo",
    "__version__",
    "hookimpl",
]
