"""Run the real ``jobkit`` executable against a real server with real certificates."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import pytest

from tests.client.live_server import certs, pki_root, server  # noqa: F401 - fixtures


@attrs.frozen
class Run:
    """What one ``jobkit`` process did."""

    args: tuple[str, ...]
    code: int
    out: bytes
    err: bytes

    @property
    def stdout(self) -> str:
        return self.out.decode()

    @property
    def stderr(self) -> str:
        return self.err.decode()

    def error_line(self) -> str:
        """The one error line; fails unless stderr is exactly one ``jobkit:`` line."""
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self
        assert lines[0].startswith("jobkit: "), self
        assert "Traceback" not in self.stderr
        return lines[0]


Jobkit = Callable[..., Run]


def base_env(**extra: str) -> dict[str, str]:
    """A predictable environment: no colour, a fixed width, no inherited jobkit settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKIT_")}
    env.update(NO_COLOR="1", COLUMNS="100", TERM="dumb")
    env.update(extra)
    return env


def run_jobkit(*args: str | Path, env: Mapping[str, str], input: bytes | None = None,
               timeout: float = 60) -> Run:
    command = [sys.executable, "-m", "jobkit", *map(str, args)]
    done = subprocess.run(command, capture_output=True, input=input, env=dict(env),
                          timeout=timeout, check=False)
    return Run(tuple(map(str, args)), done.returncode, done.stdout, done.stderr)


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
