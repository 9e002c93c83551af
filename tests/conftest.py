"""Loads the shared fixtures (tests/support) into every test package.

Helpers are imported from `tests.support`.  The names below are re-exported
only so that modules written against the old ``tests.conftest`` path keep
working; new code imports them from their `tests.support` module.
"""

from __future__ import annotations

import pytest

# Before anything imports them: the helpers' asserts explain themselves too.
pytest.register_assert_rewrite("tests.support")

import tests.support.measured  # noqa: E402, F401 - first: see its docstring
from tests.support.pools import BACKENDS, pool_for  # noqa: E402
from tests.support.procs import (  # noqa: E402
    children,
    group_members,
    open_fds,
    process_alive,
    process_stats,
    thread_count,
)
from tests.support.waiting import wait_until  # noqa: E402

pytest_plugins = [
    "tests.support.pools",
    "tests.support.pki",
    "tests.support.servers",
    "tests.support.processes",
    "tests.support.fifos",
    "tests.support.ray",
    "tests.support.executors",
]

__all__ = [
    "BACKENDS",
    "children",
    "group_members",
    "open_fds",
    "pool_for",
    "process_alive",
    "process_stats",
    "thread_count",
    "wait_until",
]
