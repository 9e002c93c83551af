"""jobkit: run commands as jobs, locally as a library or remotely over mutual TLS.

The public names below are imported on first use (PEP 562), so that
``import jobkit.client`` and the CLI do not pay for the library they do not
run.  ``from jobkit import JobPool`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobkit._version import __version__

if TYPE_CHECKING:
    from jobkit.core.backend import OutputBackend, OutputStore
    from jobkit.core.errors import (
        AuthenticationFailed,
        BackendNotFound,
        ClientError,
        ConnectionFailed,
        ExecutorNotFound,
        ExecutorUnavailable,
        JobkitError,
        JobNotFound,
        PoolClosed,
        ServerError,
        StateDirInUse,
        StorageFailed,
        StoreVersionError,
    )
    from jobkit.core.executor import Executor
    from jobkit.core.hookspecs import hookimpl
    from jobkit.core.limits import Limits
    from jobkit.core.models import JobOutput, JobStatus, State, StreamInfo, Usage
    from jobkit.core.pool import JobPool
    from jobkit.core.retention import CleanResult, Retention
    from jobkit.core.stream import Follower

__all__ = [
    "AuthenticationFailed",
    "BackendNotFound",
    "CleanResult",
    "ClientError",
    "ConnectionFailed",
    "Executor",
    "ExecutorNotFound",
    "ExecutorUnavailable",
    "Follower",
    "JobNotFound",
    "JobOutput",
    "JobPool",
    "JobStatus",
    "JobkitError",
    "Limits",
    "OutputBackend",
    "OutputStore",
    "PoolClosed",
    "Retention",
    "ServerError",
    "State",
    "StateDirInUse",
    "StorageFailed",
    "StoreVersionError",
    "StreamInfo",
    "Usage",
    "__version__",
    "hookimpl",
]

#: Where each public name lives.
_EXPORTS = {
    "AuthenticationFailed": "jobkit.core.errors",
    "BackendNotFound": "jobkit.core.errors",
    "CleanResult": "jobkit.core.retention",
    "ClientError": "jobkit.core.errors",
    "ConnectionFailed": "jobkit.core.errors",
    "Executor": "jobkit.core.executor",
    "ExecutorNotFound": "jobkit.core.errors",
    "ExecutorUnavailable": "jobkit.core.errors",
    "Follower": "jobkit.core.stream",
    "JobNotFound": "jobkit.core.errors",
    "JobOutput": "jobkit.core.models",
    "JobPool": "jobkit.core.pool",
    "JobStatus": "jobkit.core.models",
    "JobkitError": "jobkit.core.errors",
    "Limits": "jobkit.core.limits",
    "OutputBackend": "jobkit.core.backend",
    "OutputStore": "jobkit.core.backend",
    "PoolClosed": "jobkit.core.errors",
    "Retention": "jobkit.core.retention",
    "ServerError": "jobkit.core.errors",
    "StateDirInUse": "jobkit.core.errors",
    "StorageFailed": "jobkit.core.errors",
    "StoreVersionError": "jobkit.core.errors",
    "State": "jobkit.core.models",
    "StreamInfo": "jobkit.core.models",
    "Usage": "jobkit.core.models",
    "hookimpl": "jobkit.core.hookspecs",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jobkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
