"""Run the real ``jobkit`` executable against a real server with real certificates.

The server is `tests.support.processes`'s ``live_server`` (``jobkit serve`` in a
subprocess); each test is a new client of it (``certs``).  `Run`, `Jobkit`,
`base_env` and `run_jobkit` live in `tests.support.cli`; they are re-exported
here only for modules written against the old ``tests.cli.conftest`` path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import Jobkit, Run, base_env, run_jobkit

__all__ = ["Jobkit", "Run", "base_env", "run_jobkit"]


@pytest.fixture(scope="module")
def server(live_server: str) -> str:
    """The CLI's server: ``jobkit serve`` in a subprocess, ``"127.0.0.1:PORT"``."""
    return live_server


@pytest.fixture
def env(server: str, certs: Path) -> dict[str, str]:
    """The environment that points the CLI at the test server as this test's client."""
    return base_env(JOBKIT_SERVER=server, JOBKIT_CERTS=str(certs))


@pytest.fixture
def jobkit(env: dict[str, str]) -> Jobkit:
    """Run ``jobkit ARGS...`` as this test's client of the test server."""

    def run(*args: str | Path, input: bytes | None = None, timeout: float = 60,
            **extra_env: str) -> Run:
        return run_jobkit(*args, env={**env, **extra_env}, input=input, timeout=timeout)

    return run
