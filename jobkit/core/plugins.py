"""Finding output backends and executors: the plugin manager and its registries.

The built-in backends and executors are plugins like any other:
`DEFAULT_PLUGINS` names their modules and they register through the same
hooks a third-party package uses.  Third-party plugins are loaded from the
``jobkit`` entry-point group, lazily (on the first lookup), unless
``JOBKIT_NO_PLUGINS`` is set.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import pluggy

from jobkit.core import hookspecs
from jobkit.core.errors import BackendNotFound, ExecutorNotFound

__all__ = [
    "DEFAULT_PLUGINS",
    "NO_PLUGINS_ENV",
    "backend_factory",
    "backend_names",
    "executor_factory",
    "executor_names",
    "pm",
]

DEFAULT_PLUGINS = (
    "jobkit.backends.memory",
    "jobkit.backends.tempfile",
    "jobkit.backends.ring",
    "jobkit.backends.file",
    "jobkit.executors.local",
    "jobkit.executors.ray",
)

#: Set this environment variable (to anything but "" or "0") to skip entry-point plugins.
NO_PLUGINS_ENV = "JOBKIT_NO_PLUGINS"

pm = pluggy.PluginManager("jobkit")
pm.add_hookspecs(hookspecs)

_lock = threading.Lock()
_loaded = False


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name)
    if os.environ.get(NO_PLUGINS_ENV, "") not in ("", "0"):
        return
    # Like pm.load_setuptools_entrypoints, but one broken plugin must not
    # take the others (or the pool) down with it.
    for ep in entry_points(group="jobkit"):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            warnings.warn(
                f"jobkit: could not load plugin {ep.name!r} ({ep.value}): {exc}",
                RuntimeWarning,
                stacklevel=2,
            )


class _Registry:
    """The factories one hook registers, by name: built once, on the first lookup."""

    def __init__(self, hook: str, what: str, plural: str) -> None:
        self._hook = hook
        self._what = what
        self._plural = plural
        self._found: dict[str, Callable[..., Any]] | None = None

    def get(self) -> dict[str, Callable[..., Any]]:
        with _lock:
            if self._found is None:
                _load_plugins()
                self._found = self._collect()
            return self._found

    def reset(self) -> None:
        with _lock:
            self._found = None

    def _collect(self) -> dict[str, Callable[..., Any]]:
        found: dict[str, Callable[..., Any]] = {}
        what = self._what

        def register(name: str, factory: Callable[..., Any]) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{what} name must be a non-empty string, not {name!r}")
            if name in found:
                # The first one wins (built-ins register first), so a
                # plugin can never hijack a name users already rely on.
                warnings.warn(
                    f"jobkit: {what} {name!r} registered twice; keeping the first",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return
            found[name] = factory

        # One hook implementation at a time: a plugin that raises is
        # reported and skipped, never the end of every other one.
        for impl in reversed(getattr(pm.hook, self._hook).get_hookimpls()):
            try:
                impl.function(register=register)
            except Exception as exc:  # any failure of foreign code
                warnings.warn(
                    f"jobkit: plugin {impl.plugin_name!r} failed to register "
                    f"its {self._plural}: {exc}",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return found


_backends = _Registry("jobkit_register_backends", "output backend", "backends")
_executors = _Registry("jobkit_register_executors", "executor", "executors")


def reset() -> None:
    """Forget the registries so the next lookup asks the hooks again (for tests)."""
    _backends.reset()
    _executors.reset()


def backend_names() -> list[str]:
    """The names of every registered backend, sorted."""
    return sorted(_backends.get())


def backend_factory(name: str) -> Callable[..., Any]:
    """The factory registered under ``name``; `BackendNotFound` if none is."""
    registry = _backends.get()
    try:
        return registry[name]
    except KeyError:
        raise BackendNotFound(name, list(registry)) from None


def executor_names() -> list[str]:
    """The names of every registered executor, sorted."""
    return sorted(_executors.get())


def executor_factory(name: str) -> Callable[..., Any]:
    """The factory registered under ``name``; `ExecutorNotFound` if none is."""
    registry = _executors.get()
    try:
        return registry[name]
    except KeyError:
        raise ExecutorNotFound(name, list(registry)) from None
