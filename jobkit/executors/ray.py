"""``ray``: jobs run on a Ray cluster (`jobkit.executors.ray_executor`).

Only the registration lives here, so that loading the plugins costs a pool
with another executor nothing: the executor's module (asyncio, and Ray
itself) is imported when a ``ray`` executor is made.
"""

from __future__ import annotations

from typing import Any

from jobkit.core.executor import Executor
from jobkit.core.hookspecs import RegisterExecutor, hookimpl

__all__ = ["make_ray_executor"]


def make_ray_executor(**options: Any) -> Executor:
    """A `jobkit.executors.ray_executor.RayExecutor` with ``options``."""
    from jobkit.executors.ray_executor import RayExecutor

    return RayExecutor(**options)


@hookimpl(tryfirst=True)  # built-ins claim their names before any plugin
def jobkit_register_executors(register: RegisterExecutor) -> None:
    register("ray", make_ray_executor)
