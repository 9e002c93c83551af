"""The ``backend`` and ``pool`` fixtures: one behavioural suite over every built-in backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit import JobPool

BACKENDS = ["memory", "tempfile", "ring", "file"]


def pool_for(backend: str, folder: Path) -> JobPool:
    """A pool of ``backend``; a durable one keeps its state in ``folder``."""
    return JobPool(backend, state_dir=folder / "state" if backend == "file" else None)


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each built-in backend's name in turn."""
    return str(request.param)


@pytest.fixture
def pool(backend: str, tmp_path: Path) -> Iterator[JobPool]:
    """A pool of `backend`, closed after the test."""
    with pool_for(backend, tmp_path) as p:
        yield p


@pytest.fixture
def memory_pool() -> Iterator[JobPool]:
    """A pool of the default (memory) backend, closed after the test."""
    with JobPool() as p:
        yield p
