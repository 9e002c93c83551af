"""The ``executor`` fixture: one behavioural suite over every built-in executor.

``local`` always; ``ray`` on the session's cluster (`tests.support.ray`),
marked ``ray`` so that ``-m ray`` selects it and ``-m 'not ray'`` leaves it
out.  ``make_pool`` opens pools on the executor under test and closes them
after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobkit import JobPool

EXECUTORS = [pytest.param("local", id="local"),
             pytest.param("ray", id="ray", marks=pytest.mark.ray)]
#: Seconds a job may take to end: a Ray job's start alone takes a second or more.
JOB_WAIT = 90.0

MakePool = Callable[..., JobPool]


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    """Each built-in executor's name in turn."""
    return str(request.param)


@pytest.fixture
def executor_options(executor: str, request: pytest.FixtureRequest) -> dict[str, Any] | None:
    """The options of `executor`: the session cluster's address for ``ray``."""
    if executor != "ray":
        return None
    return {"address": request.getfixturevalue("ray_cluster").address}


@pytest.fixture
def make_pool(executor: str, executor_options: dict[str, Any] | None) -> Iterator[MakePool]:
    """``make_pool(**JobPool options)``: a pool on `executor`, closed after the test."""
    pools: list[JobPool] = []

    def make(**options: Any) -> JobPool:
        pool = JobPool(executor=executor, executor_options=executor_options, **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()
