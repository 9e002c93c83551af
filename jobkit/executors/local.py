"""``local``: jobs run as processes of this machine, supervised by the pool itself."""

from __future__ import annotations

from jobkit.core.executor import LocalExecutor
from jobkit.core.hookspecs import RegisterExecutor, hookimpl

__all__ = ["LocalExecutor"]


@hookimpl(tryfirst=True)  # built-ins claim their names before any plugin
def jobkit_register_executors(register: RegisterExecutor) -> None:
    register("local", LocalExecutor)
