"""Fixtures and helpers shared by every test package."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobkit import JobPool

BACKENDS = ["memory", "tempfile", "ring", "file"]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.005)


def process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def process_stats() -> Iterator[tuple[int, list[bytes]]]:
    """``(pid, fields after the command name)`` of every process in /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                yield int(entry), f.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended while we looked


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    return [pid for pid, fields in process_stats() if fields[0] != b"Z" and int(fields[2]) == pgid]


def children() -> list[int]:
    """Our direct child processes, zombies included (unreaped children leak too)."""
    me = str(os.getpid()).encode()
    return [pid for pid, fields in process_stats() if fields[1] == me]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def thread_count() -> int:
    return threading.active_count()


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pool_for(backend: str, folder: Path) -> JobPool:
    """A pool of ``backend``; a durable one keeps its state in ``folder``."""
    return JobPool(backend, state_dir=folder / "state" if backend == "file" else None)


@pytest.fixture
def pool(backend: str, tmp_path: Path) -> Iterator[JobPool]:
    with pool_for(backend, tmp_path) as p:
        yield p


@pytest.fixture
def memory_pool() -> Iterator[JobPool]:
    with JobPool() as p:
        yield p
