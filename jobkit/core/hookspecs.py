"""The hooks a jobkit plugin may implement.

A plugin is a module or object with functions marked ``@jobkit.hookimpl``,
registered through the ``jobkit`` entry-point group::

    [project.entry-points.jobkit]
    s3 = "jobkit_s3"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("jobkit")
hookimpl = pluggy.HookimplMarker("jobkit")

#: The signature of the ``register`` callback handed to ``jobkit_register_backends``.
RegisterBackend = Callable[[str, Callable[..., Any]], None]
#: The signature of the ``register`` callback handed to ``jobkit_register_executors``.
RegisterExecutor = Callable[[str, Callable[..., Any]], None]


@hookspec
def jobkit_register_backends(register: RegisterBackend) -> None:
    """Register output backends by calling ``register(name, factory)``.

    Called once, the first time a backend is looked up by name.  ``factory``
    is called with the backend's keyword options (``backend_options``) and
    returns an `jobkit.core.backend.OutputBackend`; it should raise
    ``TypeError`` or ``ValueError`` for options it does not accept.
    A name registered twice keeps its first factory (built-ins register
    first) and gives a ``RuntimeWarning``.
    """


@hookspec
def jobkit_register_executors(register: RegisterExecutor) -> None:
    """Register executors by calling ``register(name, factory)``.

    Called once, the first time an executor is looked up by name.
    ``factory`` is called with the executor's keyword options
    (``executor_options``) and returns an `jobkit.core.executor.Executor`;
    it should raise ``TypeError`` or ``ValueError`` for options it does not
    accept, and `jobkit.core.errors.ExecutorUnavailable` when what it needs
    (a package, a cluster) is missing.  It must not import heavy packages
    before it is called.  A name registered twice keeps its first factory
    (built-ins register first) and gives a ``RuntimeWarning``.
    """
